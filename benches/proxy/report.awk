# Turns benches/proxy.sh's results.tsv into the RESULTS.md tables.
# Rows: kind(h1|h2) target round rps p50_ms p99_ms cpu_us_per_req requests non2xx errors
#       error_detail upstream_cpu_us_per_req mecha_non2xx_by_metrics upstream_conns_opened
#       bounded kind done=N 2xx=N non2xx=N failed=N metrics=…
#       rss target idle=KiB h1=KiB all=KiB procs=N
#       log target key=N
BEGIN { FS = "\t" }
$1 == "h1" || $1 == "h2" {
  k = $1 SUBSEP $2
  n[k]++
  for (i = 4; i <= 7; i++) { sum[k, i] += $i; each[k, i] = each[k, i] (n[k] > 1 ? " / " : "") fmt(i, $i) }
  req[k] += $8; non2xx[k] += $9; err[k] += $10; detail[k] = detail[k] (n[k] > 1 ? " + " : "") $11
  ucpu[k] += $12; mnon[k] = mnon[k] (n[k] > 1 ? " / " : "") $13; upc[k] = upc[k] (n[k] > 1 ? " / " : "") $14
  next
}
$1 == "rss" { for (i = 3; i <= NF; i++) { split($i, kv, "="); rss[$2, kv[1]] = kv[2] } next }
$1 == "bounded" { b = $2; for (i = 3; i <= NF; i++) { split($i, kv, "="); bnd[b, kv[1]] = substr($i, length(kv[1]) + 2) } next }
$1 == "log" { split($3, kv, "="); logn[$2] = kv[2]; logk[$2] = kv[1]; next }

function fmt(i, v) {
  if (i == 4) return sprintf("%.0f", v)
  if (i == 5 || i == 6) return sprintf("%.2f", v)
  return sprintf("%.1f", v)
}
function unit(i) { return i == 4 ? " req/s" : (i == 7 ? " µs" : " ms") }
function mean(k, i) { return sum[k, i] / n[k] }
function fig(k, i) { return fmt(i, mean(k, i)) unit(i) (n[k] > 1 ? " (" each[k, i] ")" : "") }
function mib(kib) { return sprintf("%.1f MiB", kib / 1024) }
function yn(ok) { return ok ? "yes" : "**no**" }
# one row: scenario, reference name, kind, reference target, column, target text, check
#   check: "ge:X" ratio ≥ X; "le:X" ratio ≤ X; "" none
function row(scen, refname, kind, ref, i, target, check,   kr, km, r, met) {
  kr = kind SUBSEP ref; km = kind SUBSEP "mecha"
  if (!n[kr] || !n[km]) return
  r = mean(kr, i) ? mean(km, i) / mean(kr, i) : 0
  met = "—"
  if (check ~ /^ge:/) met = yn(r >= substr(check, 4) + 0)
  if (check ~ /^le:/) met = yn(r <= substr(check, 4) + 0)
  printf "| %s | %s | %s | %s | %.2f× | %s | %s |\n", scen, refname, fig(kr, i), fig(km, i), r, target, met
}
function header() {
  print "| scenario | reference | reference figure | mecha figure | ratio | target | met? |"
  print "| --- | --- | --- | --- | --- | --- | --- |"
}
function block(kind, label, tput_target, tput_check, p99_target, p99_check) {
  row(label " throughput", "nginx", kind, "nginx", 4, tput_target, tput_check)
  row(label " p50 latency", "nginx", kind, "nginx", 5, "—", "")
  row(label " p99 latency", "nginx", kind, "nginx", 6, p99_target, p99_check)
  row(label " proxy CPU per request", "nginx", kind, "nginx", 7, "—", "")
  row(label " throughput", "HAProxy", kind, "haproxy", 4, "—", "")
  row(label " p50 latency", "HAProxy", kind, "haproxy", 5, "—", "")
  row(label " p99 latency", "HAProxy", kind, "haproxy", 6, "—", "")
  row(label " proxy CPU per request", "HAProxy", kind, "haproxy", 7, "—", "")
  row(label " throughput", "upstream direct (floor)", kind, "direct", 4, "—", "")
  row(label " p50 latency", "upstream direct (floor)", kind, "direct", 5, "—", "")
  row(label " p99 latency", "upstream direct (floor)", kind, "direct", 6, "—", "")
}
function failures(kind, label,   t, k, s, sep, j, ts) {
  s = ""; sep = ""
  split("direct nginx haproxy mecha", ts, " ")
  for (j = 1; j <= 4; j++) {
    t = ts[j]; k = kind SUBSEP t
    if (!n[k]) continue
    s = s sep sprintf("%s %d of %d", t, non2xx[k] + err[k], req[k] + non2xx[k] + err[k])
    if (err[k]) s = s sprintf(" (%s: %s)", kind == "h1" ? "connect/read/write/timeout" : "failed/errored/timeout", detail[k])
    sep = "; "
  }
  printf "%s: non-2xx responses + socket errors — %s.", label, s
  k = kind SUBSEP "mecha"
  if (n[k]) printf " Non-2xx in Mecha's `mecha_route_requests_total` over the measured runs (per round; Mecha files status 0, no answer sent, under 1xx): %s.", mnon[k]
  if (bnd[kind, "done"] != "")
    printf " Bounded run against Mecha: %s requests done, %s 2xx, %s non-2xx, %s failed/errored; Mecha's metrics: non-2xx %s.",
      bnd[kind, "done"], bnd[kind, "2xx"], bnd[kind, "non2xx"], bnd[kind, "failed"], bnd[kind, "metrics"]
  printf " Upstream connections opened during each run (upstream nginx's accept count; per round): "
  sep = ""
  for (j = 1; j <= 4; j++) { t = ts[j]; k = kind SUBSEP t; if (n[k]) { printf "%s%s %s", sep, t, upc[k]; sep = "; " } }
  printf ". Upstream nginx CPU per request: "
  sep = ""
  for (j = 1; j <= 4; j++) { t = ts[j]; k = kind SUBSEP t; if (n[k]) { printf "%s%s %.1f µs", sep, t, ucpu[k] / n[k]; sep = ", " } }
  print "."
}
END {
  print "### HTTP/1.1 keep-alive (wrk): Mecha vs nginx, HAProxy and the upstream directly"
  print ""
  header()
  block("h1", "HTTP/1.1", "≥ 1.1×", "ge:1.1", "≤ nginx (≤ 1.00×)", "le:1.0")
  print ""
  failures("h1", "HTTP/1.1")
  print ""
  print "### h2c, prior knowledge (h2load): Mecha vs nginx, HAProxy and the upstream directly"
  print ""
  header()
  block("h2", "h2c", "≥ 1.0× (≥ nginx)", "ge:1.0", "—", "")
  print ""
  failures("h2", "h2c")
  print ""
  print "### Memory"
  print ""
  header()
  split("nginx haproxy", rs, " ")
  for (j = 1; j <= 2; j++) {
    t = rs[j]; nm = (t == "nginx" ? sprintf("nginx (%d processes, summed)", rss[t, "procs"]) : "HAProxy")
    printf "| peak RSS under load (VmHWM after all runs) | %s | %s | %s | %.2f× | ≤ 20 MiB | %s |\n", nm,
      mib(rss[t, "all"]), mib(rss["mecha", "all"]), rss["mecha", "all"] / rss[t, "all"], yn(rss["mecha", "all"] <= 20480)
  }
  for (j = 1; j <= 2; j++) {
    t = rs[j]; nm = (t == "nginx" ? sprintf("nginx (%d processes, summed)", rss[t, "procs"]) : "HAProxy")
    printf "| peak RSS after the HTTP/1.1 runs only | %s | %s | %s | %.2f× | ≤ 20 MiB | %s |\n", nm,
      mib(rss[t, "h1"]), mib(rss["mecha", "h1"]), rss["mecha", "h1"] / rss[t, "h1"], yn(rss["mecha", "h1"] <= 20480)
  }
  for (j = 1; j <= 2; j++) {
    t = rs[j]; nm = (t == "nginx" ? sprintf("nginx (%d processes, summed)", rss[t, "procs"]) : "HAProxy")
    printf "| RSS idle, before any load (VmRSS) | %s | %s | %s | %.2f× | ≤ 10 MiB | %s |\n", nm,
      mib(rss[t, "idle"]), mib(rss["mecha", "idle"]), rss["mecha", "idle"] / rss[t, "idle"], yn(rss["mecha", "idle"] <= 10240)
  }
  print ""
  printf "Logs: Mecha stderr WARN/ERROR lines: %d; nginx error log lines: %d; HAProxy output lines: %d.\n",
    logn["mecha"], logn["nginx"], logn["haproxy"]
}
