#!/usr/bin/env bash
# Service invocation through two sidecars (HTTP form): app A → A's sidecar (runtime listener,
# capability filter, `dapr-app-id: app-b`) → the mesh → B's sidecar (inbound listener) → app B,
# against the same client calling app B directly (the floor). App B is nginx serving a static
# 1 KiB file (benches/proxy/upstream-nginx.conf, as in benches/proxy.sh). In-memory components
# only (no Redis); B has no `grpc_port`, so no AppCallback traffic.
#
#   fixed rate:  h2load --h1 -t 1 -c RATE_CONNS -m 1 --rps RATE/RATE_CONNS -D DURATION
#                       --warm-up-time WARMUP --log-file LOG URL       (1,000 req/s in total)
#   saturation:  h2load --h1 -t 1 -c SAT_CONNS -m 1 -D DURATION --warm-up-time WARMUP
#                       --log-file LOG URL
#   direct URL:  http://127.0.0.1:UP_PORT/1k.bin
#   mecha URL:   http://127.0.0.1:A_PORT/1k.bin  with  -H 'dapr-app-id: app-b'
# Runs alternate direct / mecha (odd rounds direct first, even rounds mecha first: A B B A …),
# ROUNDS times per mode, all servers up for the whole run. Per run: rps (h2load's summary),
# p50/p99 (h2load's per-request log, 2xx rows), h2load's failed requests and non-2xx statuses,
# CPU per request of A's sidecar, B's sidecar and nginx (utime+stime, /proc/PID/stat, over the
# measured part), non-2xx invocations from A's mecha_invocations_total and non-2xx from B's
# mecha_route_requests_total.
#
# Usage: benches/invoke.sh [--record] [--skip-build] [--no-wait] [--quick] [--help]
#   --record      also append the section to benches/RESULTS.md
#   --skip-build  use target/release/mecha as it is
#   --no-wait     do not wait for a quiet machine
#   --quick       smoke run: 3 s per run, 1 s warm-up, 1 round
# Environment (defaults in brackets):
#   DURATION [10] WARMUP [2] ROUNDS [2]   seconds measured per run, warm-up, rounds
#   RATE [1000] RATE_CONNS [4]            fixed-rate load: req/s in total, connections
#   SAT_CONNS [32]                        saturation load: connections (1 request in flight each)
#   THREADS [1]                           worker threads of each sidecar (`threads:`)
#   UP_WORKERS [1]                        app B (nginx) worker_processes
#   WAIT_QUIET [120]                      seconds to wait for no rustc before measuring anyway
#   OUT [target/bench-out/invoke-<UTC timestamp>]   raw output, configs, results.tsv, section.md
#   MECHA [$CARGO_TARGET_DIR/release/mecha]
# Needs: h2load (nghttp2-client), nginx, curl — installed with apt-get when root; otherwise
# the script says what is missing and exits 0 without measuring.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RECORD=0 SKIP_BUILD=0 NO_WAIT=0
for a in "$@"; do
  case "$a" in
    --record) RECORD=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --no-wait) NO_WAIT=1 ;;
    --quick) DURATION=${DURATION:-3} WARMUP=${WARMUP:-1} ROUNDS=${ROUNDS:-1} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-2}
RATE=${RATE:-1000} RATE_CONNS=${RATE_CONNS:-4} SAT_CONNS=${SAT_CONNS:-32}
THREADS=${THREADS:-1} UP_WORKERS=${UP_WORKERS:-1} WAIT_QUIET=${WAIT_QUIET:-120}
OUT=${OUT:-$ROOT/target/bench-out/invoke-$(date -u +%Y%m%dT%H%M%SZ)}
log() { printf '[invoke-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools (skip cleanly when they cannot be had) ----------------------------------------------
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have h2load || need+=(nghttp2-client)
have nginx || need+=(nginx-light)
have curl || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    log "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/dev/null 2>&1 || true
  fi
  miss=()
  have h2load || miss+=(h2load)
  have nginx || miss+=(nginx)
  have curl || miss+=(curl)
  if [ ${#miss[@]} -gt 0 ]; then
    log "SKIPPED: missing ${miss[*]} (Debian/Ubuntu: apt-get install nghttp2-client nginx-light curl); nothing measured"
    exit 0
  fi
fi
mkdir -p "$OUT/raw" "$OUT/www"
RESULTS=$OUT/results.tsv
: >"$RESULTS"
if [ "$SKIP_BUILD" = 0 ]; then
  log "cargo build --release --bin mecha"
  (cd "$ROOT" && cargo build --release -q --bin mecha)
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MECHA=${MECHA:-$TARGET_DIR/release/mecha}
[ -x "$MECHA" ] || die "$MECHA missing: run without --skip-build"
CLK_TCK=$(getconf CLK_TCK)

# --- processes we start (ended by PID on exit) -----------------------------------------------
PIDS=()
LOADGEN=""
cleanup() {
  local p
  if [ -n "$LOADGEN" ]; then kill "$LOADGEN" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
vm_of() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$2/status" 2>/dev/null || echo 0; }
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
other_bench() {
  { pgrep -f 'benches/(run|proxy|reload)\.sh' || true; pgrep -x h2load || true; pgrep -x wrk || true
    pgrep -x redis-benchmark || true; } | grep -vx "$$" | wc -l
}

# --- configs and servers ---------------------------------------------------------------------
free_port UP_PORT 27002; free_port UP_H2_PORT 27003
free_port A_PORT 27004; free_port A_ADMIN 27099
free_port B_PORT 27006; free_port B_ADMIN 27199
PATH_REQ=/1k.bin
head -c 1024 /dev/urandom | base64 -w 0 | head -c 1024 >"$OUT/www/1k.bin"
sed -e "s|@OUT@|$OUT|g" -e "s|@UP_WORKERS@|$UP_WORKERS|g" -e "s|@UP_PORT@|$UP_PORT|g" \
  -e "s|@UP_H2_PORT@|$UP_H2_PORT|g" -e "s|@H2_LISTEN@||g" -e "s|@H2_ON@||g" \
  "$ROOT/benches/proxy/upstream-nginx.conf" >"$OUT/app-b-nginx.conf"
# configs/demo-a.yaml and demo-b.yaml on ports of their own, in-memory components, B without
# grpc_port (no AppCallback)
cat >"$OUT/sidecar-a.yaml" <<EOF
threads: $THREADS
app:
  id: app-a
admin:
  address: 127.0.0.1:$A_ADMIN
listeners:
  - name: runtime
    address: 127.0.0.1:$A_PORT
    filters:
      - type: capability
        apis: [layotto]
apps:
  app-b:
    address: 127.0.0.1:$B_PORT   # B's sidecar, inbound listener
invocation:
  timeout: 5s
components:
  - name: statestore
    type: state.memory
EOF
cat >"$OUT/sidecar-b.yaml" <<EOF
threads: $THREADS
app:
  id: app-b
  http_port: $UP_PORT
admin:
  address: 127.0.0.1:$B_ADMIN
listeners:
  - name: inbound
    address: 127.0.0.1:$B_PORT
    filters:
      - type: inbound
components:
  - name: statestore
    type: state.memory
EOF
for s in a b; do
  "$MECHA" validate "$OUT/sidecar-$s.yaml" >"$OUT/raw/validate-$s.txt" 2>&1 \
    || die "mecha rejects $OUT/sidecar-$s.yaml: $(cat "$OUT/raw/validate-$s.txt")"
done

log "app B: nginx on $UP_PORT, $UP_WORKERS worker(s)"
nginx -p "$OUT" -e "$OUT/app-b-error.log" -c "$OUT/app-b-nginx.conf" -g 'daemon off;' \
  >"$OUT/raw/app-b.stdout" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
log "B's sidecar: inbound $B_PORT (admin $B_ADMIN); A's sidecar: runtime $A_PORT (admin $A_ADMIN); threads $THREADS each"
NO_COLOR=1 "$MECHA" run -c "$OUT/sidecar-b.yaml" >"$OUT/raw/b.stdout" 2>"$OUT/raw/b.stderr" &
B_PID=$!; PIDS+=("$B_PID")
NO_COLOR=1 "$MECHA" run -c "$OUT/sidecar-a.yaml" >"$OUT/raw/a.stdout" 2>"$OUT/raw/a.stderr" &
A_PID=$!; PIDS+=("$A_PID")
for p in "$UP_PORT" "$B_PORT" "$A_PORT"; do
  wait_tcp "$p" 20 || die "nothing listens on $p (see $OUT/raw, $OUT/app-b-error.log)"
done
sleep 0.3
UP_FAM="$UP_PID $(pgrep -P "$UP_PID" | tr '\n' ' ')"

check() { curl -s -o /dev/null -w '%{http_code} %{size_download}' "$@" || true; }
r=$(check "http://127.0.0.1:$UP_PORT$PATH_REQ")
[ "$r" = "200 1024" ] || die "direct GET $PATH_REQ answered '$r', want '200 1024'"
r=$(check -H 'dapr-app-id: app-b' "http://127.0.0.1:$A_PORT$PATH_REQ")
[ "$r" = "200 1024" ] || die "GET $PATH_REQ via A's sidecar (dapr-app-id: app-b) answered '$r', want '200 1024'"
log "direct and invoked GET $PATH_REQ answer 200 + 1024 bytes"
IDLE_A=$(vm_of VmRSS "$A_PID") IDLE_B=$(vm_of VmRSS "$B_PID")

# --- wait for a quiet machine ----------------------------------------------------------------
WAITED=0 QUIET=yes
if [ "$NO_WAIT" = 0 ]; then
  while [ "$(pgrep -c rustc || true)" != 0 ] || [ "$(other_bench)" != 0 ]; do
    if [ "$WAITED" -ge "$WAIT_QUIET" ]; then QUIET=no; break; fi
    [ $((WAITED % 30)) = 0 ] && log "machine busy (rustc: $(pgrep -c rustc || true), other benchmarks: $(other_bench)); waiting (${WAITED}s/${WAIT_QUIET}s)"
    sleep 5; WAITED=$((WAITED + 5))
  done
fi
IDLE_PCT=$(machine_idle_pct 3)
QUIET_NOTE="rustc processes at start: $(pgrep -c rustc || true), other benchmarks running: $(other_bench), machine ${IDLE_PCT} % idle over 3 s, load average $(cut -d' ' -f1-3 /proc/loadavg); waited ${WAITED} s"
[ "$QUIET" = no ] && QUIET_NOTE="NOT QUIET: measured anyway after waiting ${WAITED} s — $QUIET_NOTE"
log "$QUIET_NOTE"

# --- measurement -----------------------------------------------------------------------------
# non-2xx so far: A's invocations (mecha_invocations_total, outcome ≠ 2xx), B's inbound
# requests (mecha_route_requests_total, class ≠ 2xx)
bad_a() {
  curl -s "http://127.0.0.1:$A_ADMIN/metrics" |
    awk '/^mecha_invocations_total/ && !/outcome="2xx"/ {s += $NF} END {printf "%d\n", s}'
}
bad_b() {
  curl -s "http://127.0.0.1:$B_ADMIN/metrics" |
    awk '/^mecha_route_requests_total/ && !/class="2xx"/ {s += $NF} END {printf "%d\n", s}'
}
hop_sums() { # → "A_invocation_seconds_sum A_count B_inbound_seconds_sum B_count"
  local a b
  a=$(curl -s "http://127.0.0.1:$A_ADMIN/metrics" |
    awk '/^mecha_invocation_duration_seconds_sum/ {s += $NF} /^mecha_invocation_duration_seconds_count/ {n += $NF} END {printf "%.6f %d", s, n}')
  b=$(curl -s "http://127.0.0.1:$B_ADMIN/metrics" |
    awk '/^mecha_route_request_duration_seconds_sum/ {s += $NF} /^mecha_route_request_duration_seconds_count/ {n += $NF} END {printf "%.6f %d", s, n}')
  echo "$a $b"
}
pctl() { # log → "p50_ms p99_ms n_2xx n_other" (h2load log: start_us status duration_us)
  awk -F'\t' '{ if ($2 >= 200 && $2 < 300) print $3; else bad++ } END { print "BAD", bad + 0 }' "$1" |
    sort -n | awk '
      $1 == "BAD" {bad = $2; next}
      {v[++n] = $1}
      END {
        if (n == 0) { printf "nan nan 0 %d\n", bad; exit }
        i50 = int(n * 0.50 + 0.999999); i99 = int(n * 0.99 + 0.999999)
        printf "%.3f %.3f %d %d\n", v[i50] / 1000, v[i99] / 1000, n, bad
      }'
}

# results.tsv: mode target round rps p50_ms p99_ms n_2xx non2xx_log failed non2xx_summary
#              cpu_a_us cpu_b_us cpu_app_us bad_a bad_b hop_a_ms hop_b_ms
run() { # mode(rate|sat) target(direct|mecha) round
  local mode=$1 t=$2 r=$3 name="$1-$2-$3" raw lg url hdr=() args=() a0 a1 b0 b1 h0 h1
  local ca0 ca1 cb0 cb1 cu0 cu1 pc
  raw=$OUT/raw/$name.txt lg=$OUT/raw/$name.log
  if [ "$t" = direct ]; then url="http://127.0.0.1:$UP_PORT$PATH_REQ"
  else url="http://127.0.0.1:$A_PORT$PATH_REQ"; hdr=(-H 'dapr-app-id: app-b'); fi
  if [ "$mode" = rate ]; then args=(-c "$RATE_CONNS" --rps $((RATE / RATE_CONNS)))
  else args=(-c "$SAT_CONNS"); fi
  a0=$(bad_a); b0=$(bad_b); h0=$(hop_sums)
  h2load --h1 -t 1 "${args[@]}" -m 1 -D "$DURATION" --warm-up-time "$WARMUP" "${hdr[@]}" \
    --log-file "$lg" "$url" >"$raw" 2>&1 &
  LOADGEN=$!
  sleep "$WARMUP"
  ca0=$(ticks "$A_PID"); cb0=$(ticks "$B_PID"); cu0=$(ticks $UP_FAM)
  wait "$LOADGEN" || log "h2load exited non-zero ($name, see $raw)"
  LOADGEN=""
  ca1=$(ticks "$A_PID"); cb1=$(ticks "$B_PID"); cu1=$(ticks $UP_FAM)
  a1=$(bad_a); b1=$(bad_b); h1=$(hop_sums)
  pc=$(pctl "$lg")
  awk -v m="$mode" -v t="$t" -v r="$r" -v pc="$pc" -v hz="$CLK_TCK" \
    -v da=$((ca1 - ca0)) -v db=$((cb1 - cb0)) -v du=$((cu1 - cu0)) \
    -v ba=$((a1 - a0)) -v bb=$((b1 - b0)) -v h0="$h0" -v h1="$h1" '
    /^finished in/ {rps = $4}
    /^requests:/ {gsub(/,/, ""); failed = $10 + $12 + $14}
    /^status codes:/ {gsub(/,/, ""); bad = $5 + $7 + $9}
    END {
      split(pc, p, " "); split(h0, x, " "); split(h1, y, " ")
      n = p[3]; k = 1e6 / hz
      ha = (y[2] - x[2]) ? 1000 * (y[1] - x[1]) / (y[2] - x[2]) : 0
      hb = (y[4] - x[4]) ? 1000 * (y[3] - x[3]) / (y[4] - x[4]) : 0
      printf "%s\t%s\t%s\t%.1f\t%.3f\t%.3f\t%d\t%d\t%d\t%d\t%.2f\t%.2f\t%.2f\t%d\t%d\t%.3f\t%.3f\n",
        m, t, r, rps, p[1], p[2], n, p[4], failed, bad,
        n ? da * k / n : 0, n ? db * k / n : 0, n ? du * k / n : 0, ba, bb, ha, hb
    }' "$raw" >>"$RESULTS"
  log "$name: rps p50 p99 n2xx = $(tail -1 "$RESULTS" | cut -f4-7 | tr '\t' ' '); non-2xx log/summary $(tail -1 "$RESULTS" | cut -f8,10 | tr '\t' '/'), failed $(tail -1 "$RESULTS" | cut -f9)"
}
order() { if [ $(($1 % 2)) = 1 ]; then echo "direct mecha"; else echo "mecha direct"; fi; }
for mode in rate sat; do
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(order "$round"); do run "$mode" "$t" "$round"; done
  done
done
HWM_A=$(vm_of VmHWM "$A_PID") HWM_B=$(vm_of VmHWM "$B_PID")
printf 'rss\tidle_a=%s\tidle_b=%s\thwm_a=%s\thwm_b=%s\n' "$IDLE_A" "$IDLE_B" "$HWM_A" "$HWM_B" >>"$RESULTS"
for s in a b; do sed -i 's/\x1b\[[0-9;]*m//g' "$OUT/raw/$s.stderr"; done
WARN_A=$(grep -cE '(WARN|ERROR)' "$OUT/raw/a.stderr" || true)
WARN_B=$(grep -cE '(WARN|ERROR)' "$OUT/raw/b.stderr" || true)

# --- report ----------------------------------------------------------------------------------
SHA=$(git -C "$ROOT" rev-parse --short HEAD)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no | awk '{print $2}' | cut -d/ -f1 | sort -u | tr '\n' ' ')
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
{
  echo "## $(date -u +%F) — service invocation, HTTP form (commit $SHA)"
  echo
  echo "Run by \`benches/invoke.sh\`; raw output in \`target/bench-out/$(basename "$OUT")/\`."
  echo
  echo "- machine: $(nproc) cores ($CPU_MODEL)${DIRTY:+; uncommitted changes at the time in: $DIRTY}"
  echo "- shared: $QUIET_NOTE"
  echo "- versions: $(h2load --version | head -1), nginx $(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p'), $(rustc --version | awk '{print $1, $2}')"
  echo "- command: \`DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS RATE=$RATE RATE_CONNS=$RATE_CONNS SAT_CONNS=$SAT_CONNS THREADS=$THREADS UP_WORKERS=$UP_WORKERS benches/invoke.sh\`"
  echo "- app B: nginx, $UP_WORKERS worker, static 1024-byte file, HTTP/1.1 keep-alive; sidecars: \`mecha run\` ×2, \`threads: $THREADS\` each, in-memory components, configs as \`configs/demo-a.yaml\` / \`demo-b.yaml\` on other ports without Redis and without \`grpc_port\` (generated: \`sidecar-a.yaml\`, \`sidecar-b.yaml\` in the raw output)"
  echo "- direct: \`h2load --h1 -t 1 … http://127.0.0.1:$UP_PORT$PATH_REQ\`; through both sidecars: the same with \`-H 'dapr-app-id: app-b'\` to A's runtime listener \`http://127.0.0.1:$A_PORT$PATH_REQ\`"
  echo "- fixed rate: \`-c $RATE_CONNS -m 1 --rps $((RATE / RATE_CONNS)) -D $DURATION --warm-up-time $WARMUP\` ($RATE req/s in total); saturation: \`-c $SAT_CONNS -m 1 -D $DURATION --warm-up-time $WARMUP\`"
  echo "- order: $ROUNDS rounds per load, odd rounds direct → mecha, even rounds mecha → direct; figures are the mean of the rounds, each round in brackets; p50/p99 from h2load's per-request log (2xx rows), rps from its summary"
  echo
  awk -F'\t' -v rate="$RATE" '
    $1 == "rss" {for (i = 2; i <= NF; i++) {split($i, kv, "="); rss[kv[1]] = kv[2]}; next}
    {
      key = $1 SUBSEP $2
      k[key]++; rps[key] += $4; p50[key] += $5; p99[key] += $6
      rr[key] = rr[key] sprintf("%s%.0f", rr[key] == "" ? "" : " / ", $4)
      r50[key] = r50[key] sprintf("%s%.3f", r50[key] == "" ? "" : " / ", $5)
      r99[key] = r99[key] sprintf("%s%.3f", r99[key] == "" ? "" : " / ", $6)
      bad[key] += $9 + $10; cut[key] += $8; mb[key] += $14 + $15; n[key] += $7
      ca[key] += $11; cb[key] += $12; cu[key] += $13; ha[key] += $16; hb[key] += $17
    }
    function m(a, key) { return k[key] ? a[key] / k[key] : 0 }
    END {
      d = "rate" SUBSEP "direct"; x = "rate" SUBSEP "mecha"
      D = "sat" SUBSEP "direct"; X = "sat" SUBSEP "mecha"
      a50 = m(p50, x) - m(p50, d); a99 = m(p99, x) - m(p99, d)
      tr = m(rps, D) ? m(rps, X) / m(rps, D) : 0
      print "| scenario | reference (direct) | reference figure | mecha figure (two sidecars) | added / ratio | target | met? |"
      print "| --- | --- | --- | --- | --- | --- | --- |"
      printf "| p50 at %d req/s | client → app B | %.3f ms (%s) | %.3f ms (%s) | +%.3f ms | ≤ +0.3 ms (Dapr: +1.06) | %s |\n",
        rate, m(p50, d), r50[d], m(p50, x), r50[x], a50, (a50 <= 0.3 ? "yes" : "**no**")
      printf "| p99 at %d req/s | client → app B | %.3f ms (%s) | %.3f ms (%s) | +%.3f ms | ≤ +1.0 ms (Dapr: +2.90) | %s |\n",
        rate, m(p99, d), r99[d], m(p99, x), r99[x], a99, (a99 <= 1.0 ? "yes" : "**no**")
      printf "| throughput at saturation | client → app B | %.0f req/s (%s) | %.0f req/s (%s) | %.2f× | ≥ 0.5× | %s |\n",
        m(rps, D), rr[D], m(rps, X), rr[X], tr, (tr >= 0.5 ? "yes" : "**no**")
      printf "| p50 / p99 at saturation | client → app B | %.3f / %.3f ms | %.3f / %.3f ms | %.2f× / %.2f× | — | — |\n",
        m(p50, D), m(p99, D), m(p50, X), m(p99, X), (m(p50, D) ? m(p50, X) / m(p50, D) : 0), (m(p99, D) ? m(p99, X) / m(p99, D) : 0)
      printf "| CPU per request at %d req/s: A sidecar + B sidecar (app B) | app B alone | %.1f µs | %.1f + %.1f µs (app B %.1f) | — | — | — |\n",
        rate, m(cu, d), m(ca, x), m(cb, x), m(cu, x)
      printf "| CPU per request at saturation: A + B (app B) | app B alone | %.1f µs | %.1f + %.1f µs (app B %.1f) | — | — | — |\n",
        m(cu, D), m(ca, X), m(cb, X), m(cu, X)
      printf "| mean time in the sidecars at %d req/s (metrics): A invocation (incl. B) / B inbound (incl. app B) | — | — | %.3f / %.3f ms | — | — | — |\n",
        rate, m(ha, x), m(hb, x)
      printf "| errors: h2load failed + non-2xx (summary); sidecar non-2xx (A invocations, B inbound) | — | %d | %d; %d | — | 0 | %s |\n",
        bad[d] + bad[D], bad[x] + bad[X], mb[x] + mb[X], (bad[x] + bad[X] + mb[x] + mb[X] == 0 ? "yes" : "**no**")
      printf "| log rows without a 2xx status (status 0: in flight when the window closed, cut by h2load) | — | %d | %d | — | — | — |\n",
        cut[d] + cut[D], cut[x] + cut[X]
      printf "| RSS: idle / peak (VmHWM), A and B | — | — | A %.1f / %.1f MiB, B %.1f / %.1f MiB | — | ≤ 20 MiB under load | %s |\n",
        rss["idle_a"] / 1024, rss["hwm_a"] / 1024, rss["idle_b"] / 1024, rss["hwm_b"] / 1024, (rss["hwm_a"] <= 20480 && rss["hwm_b"] <= 20480 ? "yes" : "**no**")
    }' "$RESULTS"
  echo
  echo "WARN/ERROR lines in the sidecars' logs: A $WARN_A, B $WARN_B."
} >"$OUT/section.md"
cat "$OUT/section.md"
if [ "$RECORD" = 1 ]; then
  { echo; cat "$OUT/section.md"; } >>"$ROOT/benches/RESULTS.md"
  log "appended to benches/RESULTS.md"
fi
log "raw output: $OUT"
