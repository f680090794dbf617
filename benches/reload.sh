#!/usr/bin/env bash
# Proxied requests during config reloads: a fixed-rate HTTP/1.1 load through Mecha (a router
# in front of 1,000 clusters and 1,000 routes, generated) while nothing changes, and while a
# writer replaces the config file RELOADS_PER_S times a second (one route's timeout, or one
# cluster's connect_timeout, alternating) — A B A B, same process, same load.
#
#   load: h2load --h1 -c CONNS -m 1 --rps RATE/CONNS -D DURATION --warm-up-time WARMUP
#         --log-file LOG   (a constant rate, not saturation: latency is service time, and a
#         reload's pause would show in p99; h2load is what benches/run.sh already uses, and it
#         logs every request's status and latency)
#   per run: p50 / p99 (h2load's log, 2xx rows), h2load's failed requests, non-2xx statuses
#   from the log, 5xx and aborted from Mecha's mecha_route_requests_total, and the reloads
#   applied / rejected in that run from mecha_config_updates_total{source="file"}.
# The file watcher polls the file (proxy-core/src/server.rs RELOAD_POLL): the applied count
# shows how many of the writes it saw.
#
# Usage: benches/reload.sh [--skip-build] [--quick] [--help]
#   --skip-build  use target/release/mecha as it is
#   --quick       smoke run: 3 s per run, 1 s warm-up, 1 round
# Environment (defaults in brackets):
#   DURATION [10] WARMUP [2] ROUNDS [2]   seconds measured per run, warm-up, A B rounds
#   RATE [1000] CONNS [4]                 requests/s in total, keep-alive connections
#   RELOADS_PER_S [10]                    config writes per second during the B runs
#   EDIT [route]                          route: route r0500's timeout 5s/6s;
#                                         cluster: the served cluster's connect_timeout 1s/2s
#   CLUSTERS [1000] ROUTES [1000] THREADS [2]
#   OUT [target/bench-out/reload-<UTC timestamp>]   raw output, configs, results.tsv, section.md
#   MECHA [$CARGO_TARGET_DIR/release/mecha]          the binary (with --skip-build: any build)
# Needs (installed with apt-get when root): h2load (nghttp2-client), nginx, curl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SKIP_BUILD=0
for a in "$@"; do
  case "$a" in
    --skip-build) SKIP_BUILD=1 ;;
    --quick) DURATION=${DURATION:-3} WARMUP=${WARMUP:-1} ROUNDS=${ROUNDS:-1} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-2}
RATE=${RATE:-1000} CONNS=${CONNS:-4} RELOADS_PER_S=${RELOADS_PER_S:-10} EDIT=${EDIT:-route}
CLUSTERS=${CLUSTERS:-1000} ROUTES=${ROUTES:-1000} THREADS=${THREADS:-2}
OUT=${OUT:-$ROOT/target/bench-out/reload-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/raw" "$OUT/www"
log() { printf '[reload-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
case "$EDIT" in route | cluster) ;; *) die "EDIT must be route or cluster, not $EDIT" ;; esac

# --- tools -----------------------------------------------------------------------------------
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have h2load || need+=(nghttp2-client)
have nginx || need+=(nginx-light)
have curl || need+=(curl)
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
if [ "$SKIP_BUILD" = 0 ]; then
  log "cargo build --release --bin mecha"
  (cd "$ROOT" && cargo build --release -q --bin mecha)
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MECHA=${MECHA:-$TARGET_DIR/release/mecha}
[ -x "$MECHA" ] || die "$MECHA missing: run without --skip-build"

# --- processes we start (ended by PID on exit) -----------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
free_port UP_PORT 18180; free_port UP_H2_PORT 18190
free_port MECHA_PORT 15101; free_port MECHA_ADMIN 35099
head -c 1024 /dev/urandom | base64 -w 0 | head -c 1024 >"$OUT/www/1k.bin"

# --- configs ---------------------------------------------------------------------------------
# gen FLIP → the config: routes /rNNNN/ → cNNNN, a catch-all (`catchall`, what the load hits)
# → cluster `backend`; every cluster points at the upstream. FLIP 0/1 selects the edit's form.
gen() {
  awk -v flip="$1" -v edit="$EDIT" -v nc="$CLUSTERS" -v nr="$ROUTES" -v th="$THREADS" \
    -v up="127.0.0.1:$UP_PORT" -v lis="127.0.0.1:$MECHA_PORT" -v adm="127.0.0.1:$MECHA_ADMIN" 'BEGIN {
    printf "threads: %d\nadmin:\n  address: %s\nlisteners:\n  - name: outbound\n    address: %s\n", th, adm, lis
    print "    filters:\n      - type: router\n        virtual_hosts:\n          - name: all\n            domains: [\"*\"]\n            routes:"
    er = int(nr / 2)
    for (i = 0; i < nr; i++) {
      t = (edit == "route" && i == er && flip) ? "6s" : "5s"
      printf "              - match: { prefix: /r%04d/ }\n                cluster: c%04d\n                timeout: %s\n", i, i % nc, t
    }
    print "              - name: catchall\n                match: { prefix: / }\n                cluster: backend\nclusters:"
    ct = (edit == "cluster" && flip) ? "2s" : "1s"
    printf "  - name: backend\n    protocol: http1\n    connect_timeout: %s\n    endpoints:\n      - address: %s\n", ct, up
    for (i = 0; i < nc; i++)
      printf "  - name: c%04d\n    protocol: http1\n    endpoints:\n      - address: %s\n", i, up
  }'
}
gen 0 >"$OUT/config-a.yaml"
gen 1 >"$OUT/config-b.yaml"
cp "$OUT/config-a.yaml" "$OUT/mecha.yaml"
"$MECHA" validate "$OUT/config-b.yaml" >"$OUT/raw/validate.txt" 2>&1 \
  || die "mecha rejects $OUT/config-b.yaml: $(cat "$OUT/raw/validate.txt")"

sed -e "s|@OUT@|$OUT|g" -e "s|@UP_WORKERS@|1|g" -e "s|@UP_PORT@|$UP_PORT|g" \
  -e "s|@UP_H2_PORT@|$UP_H2_PORT|g" -e "s|@H2_LISTEN@||g" -e "s|@H2_ON@||g" \
  "$ROOT/benches/proxy/upstream-nginx.conf" >"$OUT/upstream-nginx.conf"
log "upstream nginx on $UP_PORT"
nginx -p "$OUT" -e "$OUT/upstream-error.log" -c "$OUT/upstream-nginx.conf" -g 'daemon off;' \
  >"$OUT/raw/upstream.stdout" 2>&1 &
PIDS+=("$!")
log "mecha on $MECHA_PORT (admin $MECHA_ADMIN), threads $THREADS, $CLUSTERS clusters, $ROUTES routes"
NO_COLOR=1 "$MECHA" run -c "$OUT/mecha.yaml" >"$OUT/raw/mecha.stdout" 2>"$OUT/raw/mecha.stderr" &
M_PID=$!; PIDS+=("$M_PID")
wait_tcp "$UP_PORT" 10 || die "upstream nginx did not start (see $OUT/upstream-error.log)"
wait_tcp "$MECHA_PORT" 20 || die "mecha did not start (see $OUT/raw/mecha.stderr)"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MECHA_PORT/1k.bin") || true
[ "$code" = 200 ] || die "GET /1k.bin through mecha answered $code, not 200"

metric_sum() { # regex over /metrics lines → sum of their values
  curl -s "http://127.0.0.1:$MECHA_ADMIN/metrics" | awk -v re="$1" '$0 ~ re {s += $NF} END {printf "%d\n", s}'
}
snap() { # → "applied rejected 5xx aborted 2xx"
  local m
  m=$(curl -s "http://127.0.0.1:$MECHA_ADMIN/metrics")
  awk '
    /^mecha_config_updates_total/ && /source="file"/ && /result="applied"/ {a += $NF}
    /^mecha_config_updates_total/ && /source="file"/ && /result="rejected"/ {r += $NF}
    /^mecha_route_requests_total/ && /class="5xx"/ {f += $NF}
    /^mecha_route_requests_total/ && /class="aborted"/ {x += $NF}
    /^mecha_route_requests_total/ && /class="2xx"/ {o += $NF}
    END {printf "%d %d %d %d %d\n", a, r, f, x, o}' <<<"$m"
}

# The writer: every 1/RELOADS_PER_S s, the other config replaces the file (write + rename, so
# the watcher never reads half a file), on a fixed schedule (no drift).
writer() { # seconds
  local n=$((RELOADS_PER_S * $1)) i t0 due now flip=1
  t0=$(date +%s%N)
  for ((i = 1; i <= n; i++)); do
    if [ "$flip" = 1 ]; then cp "$OUT/config-b.yaml" "$OUT/mecha.yaml.tmp"; flip=0
    else cp "$OUT/config-a.yaml" "$OUT/mecha.yaml.tmp"; flip=1; fi
    mv "$OUT/mecha.yaml.tmp" "$OUT/mecha.yaml"
    due=$((t0 + i * 1000000000 / RELOADS_PER_S)); now=$(date +%s%N)
    if [ "$due" -gt "$now" ]; then sleep "$(awk -v d=$((due - now)) 'BEGIN {printf "%.6f", d / 1e9}')"; fi
  done
}

latency_stats() { # log → "n p50_ms p99_ms max_ms non2xx" (p over 2xx rows)
  awk -F'\t' '{ if ($2 >= 200 && $2 < 300) print $3; else bad++ } END { print "BAD", bad + 0 }' "$1" |
    sort -n | awk '
      $1 == "BAD" {bad = $2; next}
      {v[++n] = $1}
      END {
        if (n == 0) { printf "0 nan nan nan %d\n", bad; exit }
        i50 = int(n * 0.50 + 0.999999); i99 = int(n * 0.99 + 0.999999)
        printf "%d %.3f %.3f %.3f %d\n", n, v[i50] / 1000, v[i99] / 1000, v[n] / 1000, bad
      }'
}

RESULTS=$OUT/results.tsv
: >"$RESULTS"
run() { # mode(quiet|reloads) round
  local mode=$1 round=$2 name="$1-$2" wpid="" s0 s1 txt lg
  txt=$OUT/raw/$name.txt lg=$OUT/raw/$name.log
  if [ "$mode" = reloads ]; then cp "$OUT/config-a.yaml" "$OUT/mecha.yaml"; sleep 0.5; fi
  s0=$(snap)
  if [ "$mode" = reloads ]; then writer $((DURATION + WARMUP + 1)) & wpid=$!; fi
  h2load --h1 -c "$CONNS" -m 1 --rps $((RATE / CONNS)) -D "$DURATION" --warm-up-time "$WARMUP" \
    --log-file "$lg" "http://127.0.0.1:$MECHA_PORT/1k.bin" >"$txt" 2>&1 || true
  if [ -n "$wpid" ]; then wait "$wpid"; fi
  sleep 0.3 # the watcher's last poll
  s1=$(snap)
  local st failed
  st=$(latency_stats "$lg")
  failed=$(awk '/^requests:/ {print $10 + $12 + $14}' "$txt")
  read -r a0 r0 f0 x0 o0 <<<"$s0"; read -r a1 r1 f1 x1 o1 <<<"$s1"
  printf '%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n' "$mode" "$round" "$st" "${failed:-nan}" \
    $((a1 - a0)) $((r1 - r0)) $((f1 - f0)) $((x1 - x0)) $((o1 - o0)) | tr ' ' '\t' >>"$RESULTS"
  log "$name: n p50 p99 max non2xx = $st; h2load failed ${failed:-?}; applied $((a1 - a0)), rejected $((r1 - r0)); mecha 5xx $((f1 - f0)), aborted $((x1 - x0))"
}
for ((r = 1; r <= ROUNDS; r++)); do run quiet "$r"; run reloads "$r"; done

# --- report ----------------------------------------------------------------------------------
# (escape codes stripped, in case the log is coloured)
sed -i 's/\x1b\[[0-9;]*m//g' "$OUT/raw/mecha.stderr"
took=$(grep -o 'config reload: [^ ]*: applied ([^)]*)[^"]*' "$OUT/raw/mecha.stderr" | tail -1 || true)
took_all=$(grep -c 'config reload: .*: applied' "$OUT/raw/mecha.stderr" || true)
{
  echo "results.tsv columns: mode round n p50_ms p99_ms max_ms non2xx h2load_failed applied rejected mecha_5xx mecha_aborted mecha_2xx"
  cat "$RESULTS"
  echo
  awk -F'\t' -v rps="$RELOADS_PER_S" -v dur="$DURATION" -v warm="$WARMUP" '
    {p99[$1] += $5; p50[$1] += $4; k[$1]++; bad[$1] += $7 + $8; f5[$1] += $11; ap[$1] += $9; rj[$1] += $10
     r99[$1] = r99[$1] sprintf("%s%.2f", r99[$1] == "" ? "" : " / ", $5)}
    END {
      q = p99["quiet"] / k["quiet"]; l = p99["reloads"] / k["reloads"]
      print "| scenario | reference | reference figure | mecha figure | ratio | target | met? |"
      print "| --- | --- | --- | --- | --- | --- | --- |"
      printf "| p99 during %d config writes/s (h2load --h1, fixed rate) | same load, no reloads | %.2f ms (%s) | %.2f ms (%s) | %.2f× | ≤ 1.2× | %s |\n",
        rps, q, r99["quiet"], l, r99["reloads"], (q > 0 ? l / q : 0), ((q > 0 && l / q <= 1.2) ? "yes" : "no")
      printf "| p50 during reloads | same load, no reloads | %.2f ms | %.2f ms | %.2f× | — | — |\n",
        p50["quiet"] / k["quiet"], p50["reloads"] / k["reloads"], (p50["quiet"] > 0 ? (p50["reloads"] / k["reloads"]) / (p50["quiet"] / k["quiet"]) : 0)
      printf "| errors + non-2xx (h2load), 5xx (mecha metrics) during reloads | no reloads | %d, %d | %d, %d | — | 0 5xx | %s |\n",
        bad["quiet"], f5["quiet"], bad["reloads"], f5["reloads"], ((bad["reloads"] == 0 && f5["reloads"] == 0) ? "yes" : "no")
      w = rps * (dur + warm + 1)
      printf "| updates applied (mecha_config_updates_total{source=\"file\"}) | %d writes per run (%d/s × %d s) | %d writes | %d applied, %d rejected per run (%.1f/s) | %.2f | 10/s | %s |\n",
        w, rps, dur + warm + 1, w, ap["reloads"] / k["reloads"], rj["reloads"] / k["reloads"], ap["reloads"] / k["reloads"] / (dur + warm + 1), ap["reloads"] / k["reloads"] / w, ((ap["reloads"] / k["reloads"] / (dur + warm + 1) >= 0.9 * 10 && rj["reloads"] == 0) ? "yes" : "no")
    }' "$RESULTS"
  echo
  echo "log lines \"config reload: … applied\": $took_all; last: ${took:-none}"
  # took= of every applied reload in Mecha's log (Rust Duration Debug: ns, µs, ms or s)
  grep -o 'config reload: .*: applied .*took=[0-9.]*[nµm]*s' "$OUT/raw/mecha.stderr" | sed 's/.*took=//' |
    awk '/ns$/ {v = $0 + 0; v /= 1e6} /µs$/ {v = $0 + 0; v /= 1e3} /ms$/ {v = $0 + 0} /[0-9]s$/ {v = $0 * 1e3} {print v}' |
    sort -n | awk '{v[++n] = $1} END {if (n) printf "apply time in the log (took=): n %d, median %.2f ms, p90 %.2f ms, max %.2f ms\n", n, v[int(n * 0.5 + 0.999999)], v[int(n * 0.9 + 0.999999)], v[n]}' 
} | tee "$OUT/section.md"
log "raw output in $OUT"
