#!/usr/bin/env bash
# Mecha's benchmark runner: every figure is measured against a reference in the same run
# (A B A B), with the same load generator, concurrency, payload and worker-thread count.
# See benches/README.md for what each number means and the caveats.
#
#   benches/run.sh [--record] [--quick] [--skip-build] [--no-redis] [--no-wait]
#
#   --record      append this run's section to benches/RESULTS.md (otherwise it is only
#                 written to $OUT/results.md)
#   --quick       a smoke run: 3 s runs, 1 round, 5 cold starts (numbers not worth recording)
#   --skip-build  reuse target/release/{mecha,bare-tonic,mkreq,bench-check,coldstart}
#   --no-redis    skip the Redis scenarios
#   --no-wait     do not wait for a quiet machine before measuring
#
# Environment (defaults in brackets):
#   THREADS [1]        worker threads: Mecha's `threads:` and bare tonic's tokio workers
#   DURATION [10]      seconds measured per h2load run, after WARMUP [2] seconds of warm-up
#   ROUNDS [2]         A B rounds per scenario (A = reference, B = Mecha)
#   CONNS [4] STREAMS [16]   h2load connections × concurrent streams each (saturation runs)
#   RATE [1000]        total req/s of the fixed-rate latency runs (over RATE_CONNS [4] conns)
#   REDIS_CONC [16]    in-flight requests in the Redis scenarios: h2load -c REDIS_CONC -m 1 and
#                      redis-benchmark -c REDIS_CONC -P 1
#   REDIS_N [200000]   requests per redis-benchmark run
#   COLD_RUNS [20]     cold starts (median reported)
#   WAIT_QUIET [600]   seconds to wait for a quiet machine (no rustc, ≥ 85 % idle) first
#   REDIS_URL          redis://HOST:PORT of a Redis to use instead of a throw-away one
#   SCENARIOS ["mem cold redis redis-rs"]  which parts run: mem = capability API in memory,
#                      cold = cold start, redis = Redis vs redis-benchmark (h2load), redis-rs =
#                      Redis vs the same Rust `redis` client (rt-load for both: saturation at
#                      REDIS_CONC in flight, and GetState at RATE req/s over RATE_CONNS workers)
#   BIN_DIR [${CARGO_TARGET_DIR:-target}/release]  where the built binaries are
#   MECHA_BIN [BIN_DIR/mecha]  the Mecha binary (with --skip-build, nothing is built)
#   OUT                output directory [target/bench-out/<UTC timestamp>]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RECORD=0 QUICK=0 SKIP_BUILD=0 NO_REDIS=0 NO_WAIT=0
for a in "$@"; do
  case "$a" in
    --record) RECORD=1 ;;
    --quick) QUICK=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --no-redis) NO_REDIS=1 ;;
    --no-wait) NO_WAIT=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $a (see --help)" >&2; exit 2 ;;
  esac
done

THREADS=${THREADS:-1}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-4}
STREAMS=${STREAMS:-16}
RATE=${RATE:-1000}
RATE_CONNS=${RATE_CONNS:-4}
REDIS_CONC=${REDIS_CONC:-16}
REDIS_N=${REDIS_N:-200000}
COLD_RUNS=${COLD_RUNS:-20}
WAIT_QUIET=${WAIT_QUIET:-600}
if [ "$QUICK" = 1 ]; then
  DURATION=3 WARMUP=1 ROUNDS=1 COLD_RUNS=5 REDIS_N=20000
fi
OUT=${OUT:-$ROOT/target/bench-out/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/raw"
REL=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
MECHA=${MECHA_BIN:-$REL/mecha}
SCENARIOS=${SCENARIOS:-mem cold redis redis-rs}
scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }
RESULTS=$OUT/results.tsv
: >"$RESULTS"
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools ---------------------------------------------------------------------------------
"$ROOT/scripts/ensure-deps.sh" bench
if [ ! -x /usr/bin/time ]; then # GNU time: the load generator's own CPU time
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
  else
    die "missing /usr/bin/time: install the 'time' package and re-run"
  fi
fi
command -v redis-cli >/dev/null || NO_REDIS_CLI=1
CLK_TCK=$(getconf CLK_TCK)

# --- build -----------------------------------------------------------------------------------
if [ "$SKIP_BUILD" = 0 ]; then
  log "cargo build --release -p mecha -p mecha-benches"
  cargo build --release -q -p mecha -p mecha-benches
fi
for b in bare-tonic mkreq bench-check coldstart rt-load; do
  [ -x "$REL/$b" ] || die "$REL/$b missing: run without --skip-build"
done
[ -x "$MECHA" ] || die "$MECHA missing: run without --skip-build (or set MECHA_BIN)"

# --- processes we start (killed by PID on exit) ----------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Ports below the ephemeral range (32768+), so no client socket can hold them; `port_busy`
# (benches/common.sh) also rules out a port any socket (listening, connected, TIME-WAIT) uses.
have() { command -v "$1" >/dev/null 2>&1; }
wait_ready() { # admin_port timeout_s
  local i
  for ((i = 0; i < $2 * 100; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready")" = 200 ] && return 0
    sleep 0.01
  done
  return 1
}
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
vm() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; } # pid VmRSS|VmHWM → KiB
mecha_errors() { # admin_port → "errors=N<TAB>codes=CODE:n,…" from mecha_api_errors_total
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^mecha_api_errors_total/ {
           n = $NF + 0; s += n
           if (match($0, /code="[A-Z_]+"/)) c[substr($0, RSTART + 6, RLENGTH - 7)] += n
         }
         END {
           out = ""; for (k in c) if (c[k]) out = out (out == "" ? "" : ",") k ":" c[k]
           printf "errors=%d\tcodes=%s\n", s, (out == "" ? "-" : out)
         }'
}
# admin_port → "total other": non-OK statuses so far, and those with a code other than UNKNOWN
# or CANCELLED (a stream the client resets mid-call, as h2load does to every call still in
# flight when its -D window closes, is recorded as UNKNOWN)
mecha_err_pair() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^mecha_api_errors_total/ {n = $NF + 0; s += n; if ($0 !~ /code="(UNKNOWN|CANCELLED)"/) o += n}
         END {printf "%d %d\n", s, o}'
}
# Busy CPU ticks of the whole machine (user nice system irq softirq steal), from /proc/stat.
machine_busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# shellcheck source=benches/common.sh
. benches/common.sh # cwd is the repo root (cd above)
thread_ticks() { # pid comm → CPU ticks of that process's threads named comm
  local t sum=0 v
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ] || continue
    v=$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')
    sum=$((sum + v))
  done
  echo "$sum"
}

# --- wait for a quiet machine ----------------------------------------------------------------
# Quiet = no rustc running and the machine ≥ 85 % idle over 5 s (a test suite is as loud as a
# compiler); after WAIT_QUIET seconds we measure anyway and say so.
IDLE=$(machine_idle_pct 1)
if [ "$NO_WAIT" = 0 ] && [ "$QUICK" = 0 ]; then
  waited=0
  while [ "$waited" -lt "$WAIT_QUIET" ]; do
    IDLE=$(machine_idle_pct 5); waited=$((waited + 5))
    [ "$(pgrep -c rustc || true)" = 0 ] && [ "$IDLE" -ge 85 ] && break
    if [ $((waited % 60)) = 0 ]; then
      log "machine busy (rustc: $(pgrep -c rustc || true), idle $IDLE %); waiting for a quiet moment (${waited}s/${WAIT_QUIET}s)"
    fi
  done
fi
QUIET_NOTE="at start: $(pgrep -c rustc || true) rustc processes, machine $IDLE % idle over 5 s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "$QUIET_NOTE"

# --- request bodies --------------------------------------------------------------------------
REQ=$OUT/req
"$REL/mkreq" "$REQ" >/dev/null

# --- one h2load run → one row of results.tsv -------------------------------------------------
# results.tsv: group scenario target round rps p50_ms p99_ms mean_ms cpu_us_per_req ok failed
#              cpu_share (server CPU seconds per wall second) cut (requests in flight when
#              h2load's -D window closed) other (CPU of every other process, cores)
H2_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers')
latency_stats() { # log file → "n p50_ms p99_ms mean_ms" over the 2xx rows
  awk -F'\t' '$2 >= 200 && $2 < 300 {print $3}' "$1" | sort -n |
    awk '{v[NR] = $1; s += $1}
         END {
           if (NR == 0) { print "0 nan nan nan"; exit }
           i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
           printf "%d %.3f %.3f %.3f\n", NR, v[i50] / 1000, v[i99] / 1000, s / NR / 1000
         }'
}
h2run() { # group scenario target round port pid method file [h2load options...]
  local group=$1 scen=$2 target=$3 round=$4 port=$5 pid=$6 method=$7 file=$8
  shift 8
  local name="$group-$scen-$target-$round" c0 c1 t0 t1 e0=- o0=- e1 o1
  [ "$target" = mecha ] && read -r e0 o0 < <(mecha_err_pair "$MECHA_ADMIN")
  local txt="$OUT/raw/$name.txt" lg="$OUT/raw/$name.log"
  # Server CPU over the measured part only: sampled once the warm-up is over (h2load's
  # request counts and log also exclude the warm-up) and again when h2load exits.
  # The machine's busy ticks too, to tell how much CPU other processes took meanwhile.
  (sleep "$WARMUP"; cpu_ticks "$pid" >"$OUT/raw/cpu0"; date +%s.%N >"$OUT/raw/t0"
   machine_busy >"$OUT/raw/busy0") &
  local sampler=$!
  /usr/bin/time -f '%U %S %e' -o "$OUT/raw/h2time" \
    h2load "$@" -d "$file" "${H2_HEADERS[@]}" --log-file "$lg" \
    "http://127.0.0.1:$port/spec.proto.runtime.v1.Runtime/$method" >"$txt" 2>&1 ||
    die "h2load failed, see $txt"
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N); local b1 b0
  b1=$(machine_busy)
  wait "$sampler"
  c0=$(cat "$OUT/raw/cpu0"); t0=$(cat "$OUT/raw/t0"); b0=$(cat "$OUT/raw/busy0")
  # other = machine busy − server − h2load (h2load's CPU scaled to the measured window)
  local other
  other=$(awk -v b=$((b1 - b0)) -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v a="$t0" -v z="$t1" \
    -v h="$(cat "$OUT/raw/h2time")" 'BEGIN {split(h, x, " "); w = z - a
      hl = (x[3] > 0) ? (x[1] + x[2]) * w / x[3] : 0
      o = (b - c) / hz - hl; if (o < 0) o = 0; printf "%.2f", o / w}')
  local rps ok failed stats n p50 p99 mean cpu share
  rps=$(awk '/^finished in/ {print $4}' "$txt")
  # gRPC errors Mecha recorded during this run, all codes / codes other than UNKNOWN|CANCELLED,
  # and the most requests h2load can have in flight (-c × -m) when it stops.
  local errs=- oerrs=- inflight
  if [ "$e0" != - ]; then
    read -r e1 o1 < <(mecha_err_pair "$MECHA_ADMIN")
    errs=$((e1 - e0)) oerrs=$((o1 - o0))
  fi
  inflight=$(awk '/total client\(s\)/ {for (i = 1; i <= NF; i++) if ($i == "total") c = $(i - 1)} END {print c + 0}' "$txt")
  inflight=$((inflight * $(printf '%s\n' "$@" | awk 'p {print; exit} $0 == "-m" {p = 1}')))
  ok=$(awk '/^requests:/ {print $8}' "$txt")
  failed=$(awk '/^requests:/ {print $10 + $12 + $14}' "$txt")
  read -r n p50 p99 mean < <(latency_stats "$lg")
  cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN {printf "%.1f", n ? d / hz * 1e6 / n : 0}')
  share=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", d / hz / (b - a)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$group" "$scen" \
    "$target" "$round" "$rps" "$p50" "$p99" "$mean" "$cpu" "$ok" "$failed" "$share" "$errs" \
    "$other" "$inflight" "$oerrs" >>"$RESULTS"
  log "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms, server CPU $cpu µs/req ($share cores), ok $ok, failed $failed, mecha errors $errs (other than UNKNOWN: $oerrs; in flight at stop ≤ $inflight), other processes $other cores"
  rm -f "$lg" # large; the summary row above keeps what matters
}

# ===== capability API, in-memory: bare tonic vs Mecha ========================================
if scenario mem; then
free_port BT_PORT 25051
free_port M_PORT 25904
free_port M_ADMIN 25999
sed -e "s/^threads: .*/threads: $THREADS/" -e "s/127.0.0.1:25904/127.0.0.1:$M_PORT/" \
  -e "s/127.0.0.1:25999/127.0.0.1:$M_ADMIN/" "$ROOT/benches/mecha-bench.yaml" >"$OUT/mecha-bench.yaml"
"$MECHA" validate "$OUT/mecha-bench.yaml" >/dev/null || die "invalid $OUT/mecha-bench.yaml"
MECHA_ADMIN=$M_ADMIN

log "starting bare-tonic on :$BT_PORT and mecha on :$M_PORT (threads $THREADS)"
"$REL/bare-tonic" --addr "127.0.0.1:$BT_PORT" --threads "$THREADS" 2>"$OUT/raw/bare-tonic.err" &
BT_PID=$!; PIDS+=("$BT_PID")
MECHA_LOG=warn "$MECHA" run -c "$OUT/mecha-bench.yaml" >"$OUT/raw/mecha.out" 2>&1 &
M_PID=$!; PIDS+=("$M_PID")
wait_tcp "$BT_PORT" 10 || die "bare-tonic did not listen on :$BT_PORT (see $OUT/raw/bare-tonic.err)"
wait_ready "$M_ADMIN" 10 || die "mecha not ready on :$M_ADMIN (see $OUT/raw/mecha.out)"
for p in "$BT_PORT" "$M_PORT"; do
  "$REL/bench-check" "127.0.0.1:$p" prepare hello get || die "check against :$p failed"
done
BT_IDLE=$(vm "$BT_PID" VmRSS); M_IDLE=$(vm "$M_PID" VmRSS)

SAT=(-t 1 -c "$CONNS" -m "$STREAMS" -D "$DURATION" --warm-up-time "$WARMUP")
PER_CONN=$(( (RATE + RATE_CONNS - 1) / RATE_CONNS ))
FIXED=(-t 1 -c "$RATE_CONNS" -m 1 --rps "$PER_CONN" -D "$DURATION" --warm-up-time "$WARMUP")
for ((r = 1; r <= ROUNDS; r++)); do
  for scen in SayHello:sayhello GetState:getstate; do
    method=${scen%%:*} file=$REQ/${scen#*:}.bin
    h2run mem "$method" bare-tonic "$r" "$BT_PORT" "$BT_PID" "$method" "$file" "${SAT[@]}"
    h2run mem "$method" mecha "$r" "$M_PORT" "$M_PID" "$method" "$file" "${SAT[@]}"
    h2run mem-rate "$method" bare-tonic "$r" "$BT_PORT" "$BT_PID" "$method" "$file" "${FIXED[@]}"
    h2run mem-rate "$method" mecha "$r" "$M_PORT" "$M_PID" "$method" "$file" "${FIXED[@]}"
  done
done
BT_PEAK=$(vm "$BT_PID" VmHWM); M_PEAK=$(vm "$M_PID" VmHWM)
M_ERRORS=$(mecha_errors "$M_ADMIN")
for p in "$BT_PORT" "$M_PORT"; do
  "$REL/bench-check" "127.0.0.1:$p" get hello || die "check after load against :$p failed"
done
kill "$BT_PID" "$M_PID" 2>/dev/null || true
wait "$BT_PID" "$M_PID" 2>/dev/null || true
printf 'rss\tmem\tbare-tonic\tidle_kib=%s\tpeak_kib=%s\n' "$BT_IDLE" "$BT_PEAK" >>"$RESULTS"
printf 'rss\tmem\tmecha\tidle_kib=%s\tpeak_kib=%s\t%s\n' "$M_IDLE" "$M_PEAK" "$M_ERRORS" >>"$RESULTS"
log "RSS idle/peak KiB: bare-tonic $BT_IDLE/$BT_PEAK, mecha $M_IDLE/$M_PEAK; mecha gRPC $M_ERRORS"
fi

# ===== cold start and idle RSS ===============================================================
COLD_NOTE=""
if scenario cold; then
if port_in_use 34904 || port_in_use 34999; then
  # Something (another sidecar) holds the default ports: same default config, other ports.
  free_port CP 26904; free_port CA 26999
  "$MECHA" default-config | sed -e "s/127.0.0.1:34904/127.0.0.1:$CP/" \
    -e "s/127.0.0.1:34999/127.0.0.1:$CA/" >"$OUT/default-other-ports.yaml"
  COLD_CMD=("$MECHA" run -c "$OUT/default-other-ports.yaml")
  COLD_NOTE="(default ports were taken: the embedded default with ports $CP/$CA, from a file)"
else
  CA=34999
  COLD_CMD=("$MECHA" run)
fi
log "cold start: $COLD_RUNS runs of ${COLD_CMD[*]} $COLD_NOTE"
"$REL/coldstart" --runs "$COLD_RUNS" --ready "http://127.0.0.1:$CA/ready" -- "${COLD_CMD[@]}" \
  >"$OUT/raw/coldstart-mecha.txt" || die "coldstart failed, see $OUT/raw/coldstart-mecha.txt"
free_port CB 25052
"$REL/coldstart" --runs "$COLD_RUNS" --ready "tcp:127.0.0.1:$CB" -- \
  "$REL/bare-tonic" --addr "127.0.0.1:$CB" --threads "$THREADS" \
  >"$OUT/raw/coldstart-bare-tonic.txt" || die "coldstart failed, see $OUT/raw/coldstart-bare-tonic.txt"
for t in mecha bare-tonic; do
  printf 'cold\t%s\t%s\n' "$t" "$(grep '^summary' "$OUT/raw/coldstart-$t.txt")" >>"$RESULTS"
done
log "cold start: mecha $(grep '^summary' "$OUT/raw/coldstart-mecha.txt")"
fi

# ===== Redis: redis-benchmark (direct) vs bare tonic vs Mecha ================================
REDIS_STATUS="not run (--no-redis)"
scenario redis || scenario redis-rs || { NO_REDIS=1; REDIS_STATUS="not run (SCENARIOS=\"$SCENARIOS\")"; }
if [ "$NO_REDIS" = 0 ]; then
  if [ -n "${REDIS_URL:-}" ]; then
    hp=${REDIS_URL#redis://}; hp=${hp%%/*}; hp=${hp##*@}
    R_HOST=${hp%%:*} R_PORT=${hp##*:}
    [ "$R_PORT" = "$hp" ] && R_PORT=6379
  else
    R_HOST=127.0.0.1; free_port R_PORT 26379
    redis-server --port "$R_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize no >"$OUT/raw/redis.out" 2>&1 &
    R_PID=$!; PIDS+=("$R_PID")
    wait_tcp "$R_PORT" 10 || die "redis-server did not start on :$R_PORT"
  fi
  RA="$R_HOST:$R_PORT"
  free_port BR_PORT 25053; free_port MR_PORT 25905; free_port MR_ADMIN 25998
  MECHA_ADMIN=$MR_ADMIN
  sed -e "s/^threads: .*/threads: $THREADS/" -e "s/127.0.0.1:25905/127.0.0.1:$MR_PORT/" \
    -e "s/127.0.0.1:25998/127.0.0.1:$MR_ADMIN/" -e "s/127.0.0.1:26379/$RA/" \
    "$ROOT/benches/mecha-bench-redis.yaml" >"$OUT/mecha-bench-redis.yaml"
  "$REL/bare-tonic" --addr "127.0.0.1:$BR_PORT" --threads "$THREADS" --redis "$RA" \
    2>"$OUT/raw/bare-tonic-redis.err" &
  BR_PID=$!; PIDS+=("$BR_PID")
  MECHA_LOG=warn "$MECHA" run -c "$OUT/mecha-bench-redis.yaml" >"$OUT/raw/mecha-redis.out" 2>&1 &
  MR_PID=$!; PIDS+=("$MR_PID")
  if ! wait_tcp "$BR_PORT" 10 || ! wait_ready "$MR_ADMIN" 10; then
    REDIS_STATUS="skipped: a server did not come up (see raw/bare-tonic-redis.err, raw/mecha-redis.out)"
  elif ! "$REL/bench-check" "127.0.0.1:$MR_PORT" prepare get save publish 2>"$OUT/raw/check-redis.err" ||
       ! "$REL/bench-check" "127.0.0.1:$BR_PORT" prepare get save publish 2>>"$OUT/raw/check-redis.err"; then
    REDIS_STATUS="skipped: the Redis components failed the pre-check: $(head -c 300 "$OUT/raw/check-redis.err")"
  else
    for o in get save publish; do # the direct client's answers are checked too
      "$REL/rt-load" --check --op "redis-$o" --addr "$RA" >>"$OUT/raw/check-redis.err" 2>&1 ||
        die "rt-load --check --op redis-$o against $RA failed (see $OUT/raw/check-redis.err)"
    done
    REDIS_STATUS="ran against redis-server $(redis-server --version | awk '{print $3}' | tr -d v=) at $RA"
    RB=(redis-benchmark -h "$R_HOST" -p "$R_PORT" -c "$REDIS_CONC" -n "$REDIS_N" -P 1 --csv)
    SET_SHA=""
    if [ -z "${NO_REDIS_CLI:-}" ]; then
      redis-cli -h "$R_HOST" -p "$R_PORT" SET bench-get-raw bench-value >/dev/null
      SET_SHA=$(redis-cli -h "$R_HOST" -p "$R_PORT" SCRIPT LOAD \
        "$(cat "$ROOT/capabilities/src/redis/scripts/state_set.lua")")
    fi
    rbrun() { # scenario reference round command...
      local scen=$1 ref=$2 round=$3
      shift 3
      local txt="$OUT/raw/redis-$scen-$ref-$round.txt" c0=0 c1=0
      [ -n "${R_PID:-}" ] && c0=$(cpu_ticks "$R_PID")
      "${RB[@]}" "$@" >"$txt" 2>&1 || die "redis-benchmark failed, see $txt"
      [ -n "${R_PID:-}" ] && c1=$(cpu_ticks "$R_PID")
      # --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
      #        "p99_latency_ms","max_latency_ms"
      local row
      row=$(tr -d '"' <"$txt" | awk -F, 'NF >= 8 && $2 ~ /^[0-9.]+$/ {print $2, $5, $7, $3; exit}')
      [ -n "$row" ] || die "cannot parse $txt"
      local rps p50 p99 mean
      read -r rps p50 p99 mean <<<"$row"
      local rcpu
      rcpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$REDIS_N" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
      printf 'redis\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t0\t-\t-\t-\t-\t-\n' "$scen" "$ref" "$round" \
        "$rps" "$p50" "$p99" "$mean" "$rcpu" "$REDIS_N" >>"$RESULTS"
      log "redis $scen $ref r$round: $rps req/s, p50 $p50 ms, p99 $p99 ms (redis-server CPU $rcpu µs/req)"
    }
    RSAT=(-t 1 -c "$REDIS_CONC" -m 1 -D "$DURATION" --warm-up-time "$WARMUP")
    # rt-load: the same Rust client code against Redis directly (the `redis` crate, the
    # commands Mecha sends, one shared ConnectionManager) and against the Runtime API (tonic)
    rtrun() { # group scenario target round addr pid op [rt-load options...]
      local group=$1 scen=$2 target=$3 round=$4 addr=$5 pid=$6 op=$7
      shift 7
      local name="$group-$scen-$target-$round" txt c0 c1 t0 t1 e0=- o0=- e1 o1 errs=- oerrs=-
      txt="$OUT/raw/$name.txt"
      [ "$target" = mecha ] && read -r e0 o0 < <(mecha_err_pair "$MECHA_ADMIN")
      (sleep "$WARMUP"; { [ -n "$pid" ] && cpu_ticks "$pid" || echo 0; } >"$OUT/raw/cpu0"
       date +%s.%N >"$OUT/raw/t0"; machine_busy >"$OUT/raw/busy0"
       { [ -n "${R_PID:-}" ] && cpu_ticks "$R_PID" || echo 0; } >"$OUT/raw/rcpu0") &
      local sampler=$!
      /usr/bin/time -f '%U %S %e' -o "$OUT/raw/rttime" "$REL/rt-load" --op "$op" --addr "$addr" \
        --duration "$DURATION" --warmup "$WARMUP" "$@" >"$txt" 2>&1 || die "rt-load failed, see $txt"
      c1=0; [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
      local rc1=0; [ -n "${R_PID:-}" ] && rc1=$(cpu_ticks "$R_PID")
      t1=$(date +%s.%N); local b1 b0 rc0
      b1=$(machine_busy)
      wait "$sampler"
      c0=$(cat "$OUT/raw/cpu0"); t0=$(cat "$OUT/raw/t0"); b0=$(cat "$OUT/raw/busy0"); rc0=$(cat "$OUT/raw/rcpu0")
      if [ "$e0" != - ]; then
        read -r e1 o1 < <(mecha_err_pair "$MECHA_ADMIN")
        errs=$((e1 - e0)) oerrs=$((o1 - o0))
      fi
      local other
      other=$(awk -v b=$((b1 - b0)) -v c=$((c1 - c0 + rc1 - rc0)) -v hz="$CLK_TCK" -v a="$t0" -v z="$t1" \
        -v h="$(cat "$OUT/raw/rttime")" 'BEGIN {split(h, x, " "); w = z - a
          hl = (x[3] > 0) ? (x[1] + x[2]) * w / x[3] : 0
          o = (b - c) / hz - hl; if (o < 0) o = 0; printf "%.2f", o / w}')
      # row: as h2run's, p99.9 in column 17 and redis-server's CPU per request in column 18;
      # the server CPU (column 9) is the sidecar's (0 for direct)
      awk -F'\t' -v g="$group" -v s="$scen" -v t="$target" -v r="$round" -v dc=$((c1 - c0)) \
        -v drc=$((rc1 - rc0)) -v hz="$CLK_TCK" -v a="$t0" -v z="$t1" -v errs="$errs" -v oerrs="$oerrs" \
        -v other="$other" '
        $1 == "summary" {for (i = 2; i <= NF; i++) {split($i, kv, "="); f[kv[1]] = kv[2]}}
        END {
          n = f["ok"] + 0
          printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%d\t%d\t%.3f\t%s\t%s\t%d\t%s\t%s\t%.1f\n", g, s, t, r,
            f["rps"], f["p50_ms"], f["p99_ms"], f["mean_ms"], n ? dc / hz * 1e6 / n : 0, n, f["errors"] + 0,
            dc / hz / (z - a), errs, other, f["concurrency"], oerrs, f["p999_ms"], n ? drc / hz * 1e6 / n : 0
        }' "$txt" >>"$RESULTS"
      log "$name: $(tail -1 "$RESULTS" | awk -F'\t' '{printf "%s req/s, p50 %s ms, p99 %s ms, p99.9 %s ms, sidecar CPU %s µs/req, redis-server %s µs/req, errors %s, other processes %s cores", $5, $6, $7, $17, $9, $18, $11, $14}')"
    }
    # warm both paths up once (connections, script cache)
    "${RB[@]}" -n 10000 GET bench-get-raw >/dev/null 2>&1 || true
    ADMIN0=$(thread_ticks "$MR_PID" admin); MREQ0=$(curl -s "http://127.0.0.1:$MR_ADMIN/metrics" |
      awk '/^mecha_api_requests_total/ {s += $NF} END {printf "%d\n", s}')
    for ((r = 1; r <= ROUNDS; r++)); do
      scenario redis || break
      rbrun GetState GET "$r" GET bench-get-raw
      rbrun GetState HMGET "$r" HMGET 'app||bench-key' data version
      h2run redis GetState bare-tonic "$r" "$BR_PORT" "$BR_PID" GetState "$REQ/getstate.bin" "${RSAT[@]}"
      h2run redis GetState mecha "$r" "$MR_PORT" "$MR_PID" GetState "$REQ/getstate.bin" "${RSAT[@]}"
      rbrun SaveState SET "$r" SET bench-save-raw 0123456789abcdef
      if [ -n "$SET_SHA" ]; then
        rbrun SaveState EVALSHA "$r" EVALSHA "$SET_SHA" 2 'app||bench-save-raw' \
          'mecha-state-version||bench-raw' 0123456789abcdef '' '' ''
      fi
      h2run redis SaveState bare-tonic "$r" "$BR_PORT" "$BR_PID" SaveState "$REQ/savestate.bin" "${RSAT[@]}"
      h2run redis SaveState mecha "$r" "$MR_PORT" "$MR_PID" SaveState "$REQ/savestate.bin" "${RSAT[@]}"
      rbrun PublishEvent XADD "$r" XADD bench-topic-raw MAXLEN '~' 10000 '*' data 0123456789abcdef \
        contentType text/plain
      h2run redis PublishEvent bare-tonic "$r" "$BR_PORT" "$BR_PID" PublishEvent "$REQ/publish.bin" "${RSAT[@]}"
      h2run redis PublishEvent mecha "$r" "$MR_PORT" "$MR_PID" PublishEvent "$REQ/publish.bin" "${RSAT[@]}"
    done
    # the same Rust client: direct (the `redis` crate) vs Mecha (tonic) [vs bare tonic, GetState]
    RRS=(--concurrency "$REDIS_CONC")
    RRATE=(--concurrency "$RATE_CONNS" --rate "$RATE")
    if scenario redis-rs; then
      for ((r = 1; r <= ROUNDS; r++)); do
        for spec in GetState:get SaveState:save PublishEvent:publish; do
          s=${spec%%:*} o=${spec#*:}
          rtrun redis-rs "$s" direct "$r" "$RA" "" "redis-$o" "${RRS[@]}"
          rtrun redis-rs "$s" mecha "$r" "127.0.0.1:$MR_PORT" "$MR_PID" "grpc-$o" "${RRS[@]}"
          if [ "$s" = GetState ]; then
            rtrun redis-rs "$s" bare-tonic "$r" "127.0.0.1:$BR_PORT" "$BR_PID" grpc-get "${RRS[@]}"
          fi
        done
        rtrun redis-rs-rate GetState direct "$r" "$RA" "" redis-get "${RRATE[@]}"
        rtrun redis-rs-rate GetState mecha "$r" "127.0.0.1:$MR_PORT" "$MR_PID" grpc-get "${RRATE[@]}"
        rtrun redis-rs-rate GetState bare-tonic "$r" "127.0.0.1:$BR_PORT" "$BR_PID" grpc-get "${RRATE[@]}"
      done
    fi
    ADMIN1=$(thread_ticks "$MR_PID" admin); MREQ1=$(curl -s "http://127.0.0.1:$MR_ADMIN/metrics" |
      awk '/^mecha_api_requests_total/ {s += $NF} END {printf "%d\n", s}')
    # Redis I/O runs on the runtime that created the connection; health pings have their own
    # connection, so the admin thread should stay near 0 here (it was not, before).
    printf 'admin\tredis\tmecha\tus_per_req=%s\n' "$(awk -v d=$((ADMIN1 - ADMIN0)) -v hz="$CLK_TCK" \
      -v n=$((MREQ1 - MREQ0)) 'BEGIN {printf "%.1f", n ? d / hz * 1e6 / n : 0}')" >>"$RESULTS"
    printf 'rss\tredis\tmecha\tidle_kib=-\tpeak_kib=%s\t%s\n' "$(vm "$MR_PID" VmHWM)" \
      "$(mecha_errors "$MR_ADMIN")" >>"$RESULTS"
    "$REL/bench-check" "127.0.0.1:$MR_PORT" get save publish || die "check after load failed"
  fi
  log "redis: $REDIS_STATUS"
fi

# ===== the RESULTS.md section ================================================================
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
changes=$(git status --porcelain --untracked-files=no 2>/dev/null || true)
[ -n "$changes" ] && DIRTY=" (+ uncommitted changes in: $(echo "$changes" | awk '{print $2}' | cut -d/ -f1 | sort -u | tr '\n' ' ' | sed 's/ $//'))"
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
{
  echo
  echo "## $(date -u +%Y-%m-%d) — commit $COMMIT$DIRTY"
  echo
  echo "- machine: $(nproc) cores ($CPU_MODEL), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo);" \
    "shared: $QUIET_NOTE"
  echo "- versions: $(h2load --version | head -1), $(redis-benchmark --version | awk '{print "redis-benchmark " $2}'), $(rustc --version | awk '{print $1, $2}')"
  echo "- command: \`SCENARIOS=\"$SCENARIOS\" THREADS=$THREADS DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS CONNS=$CONNS STREAMS=$STREAMS RATE=$RATE REDIS_CONC=$REDIS_CONC REDIS_N=$REDIS_N COLD_RUNS=$COLD_RUNS benches/run.sh$([ "$QUICK" = 1 ] && echo ' --quick')\`"
  echo "- servers: \`bare-tonic --addr … --threads $THREADS\` and \`mecha run -c benches/mecha-bench.yaml\` (threads: $THREADS), both up for the whole run, loaded alternately (A B A B)"
  echo "- saturation runs: \`h2load -t 1 -c $CONNS -m $STREAMS -D $DURATION --warm-up-time $WARMUP -d REQ -H 'content-type: application/grpc' -H 'te: trailers' --log-file LOG URL\`"
  echo "- fixed-rate runs: \`h2load -t 1 -c $RATE_CONNS -m 1 --rps $PER_CONN -D $DURATION --warm-up-time $WARMUP …\` ($((PER_CONN * RATE_CONNS)) req/s in total)"
  if scenario redis-rs && [ "$NO_REDIS" = 0 ]; then
    echo "- Redis, same Rust client (redis-rs): \`rt-load --op redis-get|redis-save|redis-publish --addr REDIS\` (the \`redis\` crate, one shared ConnectionManager, RESP3, the commands Mecha sends: \`HMGET app||bench-key data version\` + \`PTTL\` pipelined; \`EVALSHA\` of state_set.lua; \`XADD bench-topic MAXLEN ~ 10000 * data … contentType text/plain\`) vs \`rt-load --op grpc-get|grpc-save|grpc-publish --addr MECHA\` (tonic, one connection per worker); saturation: \`--concurrency $REDIS_CONC\`; fixed rate: \`--concurrency $RATE_CONNS --rate $RATE\` (each worker on a fixed schedule, one call in flight); \`--duration $DURATION --warmup $WARMUP\`, current-thread runtime; percentiles over every call answered in the window"
  fi
  echo "- p50/p99 from h2load's per-request log (2xx rows, warm-up excluded); rps from h2load's summary; figures are the mean of the $ROUNDS rounds, each round in brackets"
  echo
  awk -F'\t' -v rounds="$ROUNDS" -v redis_status="$REDIS_STATUS" -v cold_note="$COLD_NOTE" -f "$ROOT/benches/report.awk" "$RESULTS"
} >"$OUT/results.md"
cat "$OUT/results.md"
if [ "$RECORD" = 1 ]; then
  cat "$OUT/results.md" >>"$ROOT/benches/RESULTS.md"
  log "appended to benches/RESULTS.md"
fi
log "raw output in $OUT"
