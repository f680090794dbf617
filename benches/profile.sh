#!/usr/bin/env bash
# CPU profile of the HTTP proxy path: where Mecha's time goes per proxied HTTP/1.1 request.
# Upstream nginx serves 1 KiB on 127.0.0.1:18080; Mecha runs configs/proxy-bench.yaml
# (listener 127.0.0.1:15001 → cluster backend); wrk loads it while `perf record` samples the
# mecha process (cpu-clock, call graphs), then the top self-time symbols are printed.
#
# Usage: benches/profile.sh [MECHA_BINARY]   (default target/release/mecha)
# Environment: DURATION [10] seconds of load, CONNS [32] wrk connections, TOP [25] symbols,
#              OUT [target/bench-out/profile-<UTC timestamp>]
# Needs: perf (linux-perf), wrk, nginx.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/mecha}
DURATION=${DURATION:-10} CONNS=${CONNS:-32} TOP=${TOP:-25}
OUT=${OUT:-$ROOT/target/bench-out/profile-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/www"
for t in perf wrk nginx; do
  command -v "$t" >/dev/null || { echo "error: $t not found (apt-get install linux-perf wrk nginx-light)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "error: $BIN not built (cargo build --release --bin mecha)" >&2; exit 1; }
head -c 1024 /dev/zero | tr '\0' x >"$OUT/www/1k"
cat >"$OUT/nginx.conf" <<CONF
worker_processes 1;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nodelay on;
  keepalive_timeout 300s; keepalive_requests 100000000;
  server { listen 127.0.0.1:18080 backlog=4096; root $OUT/www; }
}
CONF
nginx -p "$OUT" -c "$OUT/nginx.conf" -e "$OUT/nginx-error.log" -g 'daemon off;' &
NGINX=$!
"$BIN" run -c "$ROOT/configs/proxy-bench.yaml" 2>"$OUT/mecha.log" &
MECHA=$!
trap 'kill $MECHA $NGINX 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null http://127.0.0.1:15001/1k && break
  sleep 0.1
done
wrk -t1 -c"$CONNS" -d2s http://127.0.0.1:15001/1k >/dev/null  # warm-up: pools filled
wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency http://127.0.0.1:15001/1k >"$OUT/wrk.txt" &
WRK=$!
sleep 1
perf record -F 999 -e cpu-clock -g -p "$MECHA" -o "$OUT/perf.data" -- sleep $((DURATION - 2)) 2>"$OUT/perf-record.log"
wait $WRK
grep -E 'Requests/sec|99%' "$OUT/wrk.txt"
grep -E 'VmHWM|VmRSS' "/proc/$MECHA/status" | tr -s ' \t' ' ' | tee "$OUT/rss.txt"
perf report -i "$OUT/perf.data" --stdio --no-children --sort symbol --percent-limit 0.5 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -"$TOP" | tee "$OUT/top.txt"
echo "profile: $OUT/perf.data (perf report -i $OUT/perf.data)" >&2
