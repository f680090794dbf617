# Shell helpers shared by the bench scripts (sourced, not run).

# Percent of the machine idle over $1 seconds, from /proc/stat.
machine_idle_pct() {
  local a b
  a=$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit}' /proc/stat)
  sleep "$1"
  b=$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " ")
    busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.0f\n", (busy + idle) ? 100 * idle / (busy + idle) : 100}'
}

# --- ports and process accounting (needs `have` from the sourcing script) ---
port_in_use() { (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_busy() {
  port_in_use "$1" && return 0
  have ss && [ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ] && return 0
  return 1
}
TAKEN=" "
free_port() { # VAR start: VAR = first free port from start up, not handed out before in this run
  local p=$2
  while port_busy "$p" || [[ "$TAKEN" == *" $p "* ]]; do p=$((p + 1)); done
  TAKEN+="$p "
  printf -v "$1" '%s' "$p"
}
wait_tcp() { # port timeout_s
  local i
  for ((i = 0; i < $2 * 100; i++)); do port_in_use "$1" && return 0; sleep 0.01; done
  return 1
}
ticks() { # pids… → utime+stime ticks summed
  local p s=0 v
  for p in "$@"; do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    s=$((s + ${v:-0}))
  done
  echo "$s"
}
