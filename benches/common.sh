# Shell helpers shared by benches/run.sh and benches/proxy.sh (sourced, not run).

# Percent of the machine idle over $1 seconds, from /proc/stat.
machine_idle_pct() {
  local a b
  a=$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit}' /proc/stat)
  sleep "$1"
  b=$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " ")
    busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.0f\n", (busy + idle) ? 100 * idle / (busy + idle) : 100}'
}
