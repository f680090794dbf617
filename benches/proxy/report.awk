# Turns benches/proxy.sh's results.tsv into the RESULTS.md tables.
# Rows: kind(h1|h1big|close|h2) target round rps p50_ms p99_ms cpu_us_per_req requests non2xx
#       errors error_detail upstream_cpu_us_per_req mecha_non2xx_by_metrics upstream_conns_opened
#       rate target round rate_req_s achieved_rps p50_ms p90_ms p99_ms p999_ms cpu_us_per_req
#            requests non2xx errors error_detail upstream_cpu_us_per_req mecha_non2xx upstream_conns
#       grpc|grpcbidi|grpcss: as h1 (grpcbidi/grpcss: + p99.9_ms in column 15; upstream = grpc-echo)
#       bounded kind done=N 2xx=N non2xx=N failed=N metrics=…
#       rss target idle=KiB h1=KiB all=KiB before=KiB held=KiB opened=N still=N failed=N procs=N
#       log target key=N
# Targets: direct (the floor) nginx haproxy envoy bare (bare Pingora) mecha; a target that
# did not run (Envoy when it could not be installed) has no rows and its lines are left out.
BEGIN {
  FS = "\t"
  NT = split("direct nginx haproxy envoy bare mecha", TS, " ")
  NR_ = split("nginx haproxy envoy bare", REFS, " ")
  NAME["direct"] = "upstream direct (floor)"; NAME["nginx"] = "nginx"; NAME["haproxy"] = "HAProxy"
  NAME["envoy"] = "Envoy"; NAME["bare"] = "bare Pingora"; NAME["mecha"] = "Mecha"
}
$1 == "h1" || $1 == "h1big" || $1 == "close" || $1 == "h2" || $1 == "grpc" || $1 == "grpcbidi" || $1 == "grpcss" {
  if (NF >= 15) { p999[$1 SUBSEP $2] += $15; p999e[$1 SUBSEP $2] = p999e[$1 SUBSEP $2] (p999e[$1 SUBSEP $2] == "" ? "" : " / ") sprintf("%.2f", $15) }
  k = $1 SUBSEP $2
  n[k]++
  for (i = 4; i <= 7; i++) { sum[k, i] += $i; each[k, i] = each[k, i] (n[k] > 1 ? " / " : "") fmt(i, $i) }
  req[k] += $8; non2xx[k] += $9; err[k] += $10; detail[k] = detail[k] (n[k] > 1 ? " + " : "") $11
  ucpu[k] += $12; mnon[k] = mnon[k] (n[k] > 1 ? " / " : "") $13; upc[k] = upc[k] (n[k] > 1 ? " / " : "") $14
  next
}
$1 == "rate" {
  rt = $4; if (!(rt in seenrate)) { seenrate[rt] = 1; rates[++nrates] = rt }
  k = "rate" rt SUBSEP $2
  n[k]++
  # columns 5..10: achieved, p50, p90, p99, p99.9, CPU; per round kept for "added over direct"
  for (i = 5; i <= 10; i++) {
    sum[k, i] += $i; each[k, i] = each[k, i] (n[k] > 1 ? " / " : "") rfmt(i, $i); rv[rt, $2, $3, i] = $i
  }
  rounds[rt, $2] = rounds[rt, $2] " " $3
  req[k] += $11; non2xx[k] += $12; err[k] += $13; detail[k] = detail[k] (n[k] > 1 ? " + " : "") $14
  ucpu[k] += $15; mnon[k] = mnon[k] (n[k] > 1 ? " / " : "") $16; upc[k] = upc[k] (n[k] > 1 ? " / " : "") $17
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
function rfmt(i, v) { return i == 5 ? sprintf("%.0f", v) : (i == 10 ? sprintf("%.1f", v) : sprintf("%.3f", v)) }
function unit(i) { return i == 4 ? " req/s" : (i == 7 ? " µs" : " ms") }
function runit(i) { return i == 5 ? " req/s" : (i == 10 ? " µs" : " ms") }
function mean(k, i) { return sum[k, i] / n[k] }
function fig(k, i) { return fmt(i, mean(k, i)) unit(i) (n[k] > 1 ? " (" each[k, i] ")" : "") }
function rfig(k, i) { return rfmt(i, mean(k, i)) runit(i) (n[k] > 1 ? " (" each[k, i] ")" : "") }
function mib(kib) { return sprintf("%.1f MiB", kib / 1024) }
function yn(ok) { return ok ? "yes" : "**no**" }
function commas(v,   s) { s = sprintf("%d", v); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); return s }
function ratio(a, b) { return b ? sprintf("%.2f×", a / b) : "—" }
function met(check, r, v) {
  if (check ~ /^ge:/) return yn(r >= substr(check, 4) + 0)
  if (check ~ /^le:/) return yn(r <= substr(check, 4) + 0)
  if (check ~ /^abs_le:/) return yn(v <= substr(check, 8) + 0)
  return "—"
}
# one row: scenario, reference name, kind, reference target, column, target text, check
#   check: "ge:X" ratio ≥ X; "le:X" ratio ≤ X; "" none
function row(scen, refname, kind, ref, i, target, check,   kr, km, r) {
  kr = kind SUBSEP ref; km = kind SUBSEP "mecha"
  if (!n[kr] || !n[km]) return
  r = mean(kr, i) ? mean(km, i) / mean(kr, i) : 0
  printf "| %s | %s | %s | %s | %.2f× | %s | %s |\n", scen, refname, fig(kr, i), fig(km, i), r, target, met(check, r, 0)
}
function header() {
  print "| scenario | reference | reference figure | mecha figure | ratio | target | met? |"
  print "| --- | --- | --- | --- | --- | --- | --- |"
}
function block(kind, label, tput_target, tput_check, p99_target, p99_check,   j, ref) {
  row(label " throughput", "nginx", kind, "nginx", 4, tput_target, tput_check)
  row(label " p50 latency", "nginx", kind, "nginx", 5, "—", "")
  row(label " p99 latency", "nginx", kind, "nginx", 6, p99_target, p99_check)
  row(label " proxy CPU per request", "nginx", kind, "nginx", 7, "—", "")
  for (j = 2; j <= NR_; j++) {
    ref = REFS[j]
    row(label " throughput", NAME[ref], kind, ref, 4, "—", "")
    row(label " p50 latency", NAME[ref], kind, ref, 5, "—", "")
    row(label " p99 latency", NAME[ref], kind, ref, 6, "—", "")
    row(label " proxy CPU per request", NAME[ref], kind, ref, 7, "—", "")
  }
  row(label " throughput", NAME["direct"], kind, "direct", 4, "—", "")
  row(label " p50 latency", NAME["direct"], kind, "direct", 5, "—", "")
  row(label " p99 latency", NAME["direct"], kind, "direct", 6, "—", "")
}
function failures(kind, label, errnames,   t, k, s, sep, j, bk) {
  s = ""; sep = ""
  for (j = 1; j <= NT; j++) {
    t = TS[j]; k = kind SUBSEP t
    if (!n[k]) continue
    s = s sep sprintf("%s %d of %d", t, non2xx[k] + err[k], req[k] + non2xx[k] + err[k])
    if (err[k]) s = s sprintf(" (%s: %s)", errnames, detail[k])
    sep = "; "
  }
  printf "%s: non-2xx responses + socket errors — %s.", label, s
  k = kind SUBSEP "mecha"
  if (n[k]) printf " Non-2xx in Mecha's `mecha_route_requests_total` over the measured runs (per round; Mecha files status 0, no answer sent, under 1xx): %s.", mnon[k]
  bk = kind == "h1" ? "h1" : (kind == "h2" ? "h2" : "")
  if (bk != "" && bnd[bk, "done"] != "")
    printf " Bounded run against Mecha: %s requests done, %s 2xx, %s non-2xx, %s failed/errored; Mecha's metrics: non-2xx %s.",
      bnd[bk, "done"], bnd[bk, "2xx"], bnd[bk, "non2xx"], bnd[bk, "failed"], bnd[bk, "metrics"]
  printf " Upstream connections opened during each run (upstream nginx's accept count; per round): "
  sep = ""
  for (j = 1; j <= NT; j++) { t = TS[j]; k = kind SUBSEP t; if (n[k]) { printf "%s%s %s", sep, t, upc[k]; sep = "; " } }
  printf ". Upstream nginx CPU per request: "
  sep = ""
  for (j = 1; j <= NT; j++) { t = TS[j]; k = kind SUBSEP t; if (n[k]) { printf "%s%s %.1f µs", sep, t, ucpu[k] / n[k]; sep = ", " } }
  print "."
}
# gRPC tables: Mecha vs nginx grpc_pass and vs direct (the floor)
function gblock(kind, label, what, tput_target, tput_check,   k, t, j, sep) {
  row(label " throughput (" what ")", "nginx `grpc_pass`", kind, "nginx", 4, tput_target, tput_check)
  row(label " p50 latency", "nginx `grpc_pass`", kind, "nginx", 5, "—", "")
  row(label " p99 latency", "nginx `grpc_pass`", kind, "nginx", 6, "—", "")
  row(label " proxy CPU per " (what ~ /message/ ? "message" : "call"), "nginx `grpc_pass`", kind, "nginx", 7, "—", "")
  row(label " throughput (" what ")", NAME["direct"], kind, "direct", 4, "—", "")
  row(label " p50 latency", NAME["direct"], kind, "direct", 5, "—", "")
  row(label " p99 latency", NAME["direct"], kind, "direct", 6, "—", "")
  print ""
  printf "%s: errors — ", label
  sep = ""
  for (j = 1; j <= NT; j++) {
    t = TS[j]; k = kind SUBSEP t
    if (!n[k]) continue
    printf "%s%s %d of %d", sep, t, non2xx[k] + err[k], req[k] + non2xx[k] + err[k]; sep = "; "
  }
  printf " (%s)", (kind == "grpc" ? "h2load: non-2xx + failed/errored/timeout; `rt-load --check` of every gRPC op through every target before and after the load answered OK" : "rt-load: calls that failed or got no answer within 1 s")
  k = kind SUBSEP "mecha"
  if (n[k]) printf ". Non-2xx in Mecha's `mecha_route_requests_total` (per round): %s", mnon[k]
  sep = ""
  printf ". p99.9: "
  for (j = 1; j <= NT; j++) { t = TS[j]; k = kind SUBSEP t; if (n[k] && p999e[k] != "") { printf "%s%s %.2f ms (%s)", sep, t, p999[k] / n[k], p999e[k]; sep = "; " } }
  if (sep == "") printf "n/a (h2load run)"
  printf ". grpc-echo (upstream) CPU per %s: ", (what ~ /message/ ? "message" : "call")
  sep = ""
  for (j = 1; j <= NT; j++) { t = TS[j]; k = kind SUBSEP t; if (n[k]) { printf "%s%s %.1f µs", sep, t, ucpu[k] / n[k]; sep = ", " } }
  print "."
}
# added latency of target t over direct at rate rt, column i: mean over the rounds both ran,
# each round's difference in brackets → "mean|figure text"
function added(rt, t, i,   m, c, s, e, sep, j, r, d, rr) {
  m = split(rounds[rt, t], rr, " "); c = 0; s = 0; e = ""; sep = ""
  for (j = 1; j <= m; j++) {
    r = rr[j]
    if (!((rt, "direct", r, i) in rv)) continue
    d = rv[rt, t, r, i] - rv[rt, "direct", r, i]; c++; s += d
    e = e sep sprintf("%+.3f", d); sep = " / "
  }
  if (!c) return ""
  return (s / c) "|" sprintf("%+.3f ms", s / c) (c > 1 ? " (" e ")" : "")
}
function addrow(rt, scen, ref, i, target, check,   a, b, av, bv, am, bm) {
  a = added(rt, ref, i); b = added(rt, "mecha", i)
  if (a == "" || b == "") return
  split(a, am, "|"); split(b, bm, "|"); av = am[1] + 0; bv = bm[1] + 0
  # a ratio of added latencies means nothing when the reference added none (or less than 0)
  printf "| %s | %s | %s | %s | %s | %s | %s |\n", scen, NAME[ref], am[2], bm[2], (av > 0 ? ratio(bv, av) : "—"), target, met(check, 0, bv)
}
function rrow(rt, scen, ref, i, target, check,   kr, km, r) {
  kr = "rate" rt SUBSEP ref; km = "rate" rt SUBSEP "mecha"
  if (!n[kr] || !n[km]) return
  r = mean(kr, i) ? mean(km, i) / mean(kr, i) : 0
  printf "| %s | %s | %s | %s | %.2f× | %s | %s |\n", scen, NAME[ref], rfig(kr, i), rfig(km, i), r, target, met(check, r, 0)
}
function rate_block(rt,   lab, j, ref, p50t, p99t, k, t, a, s, sep, x) {
  lab = commas(rt) " req/s"
  # the published targets are for 1,000 req/s (one sidecar): added p50 ≤ 0.1 ms, p99 ≤ 0.5 ms
  p50t = rt == 1000 ? "Mecha ≤ +0.10 ms" : "—"; p99t = rt == 1000 ? "Mecha ≤ +0.50 ms" : "—"
  rrow(rt, lab " achieved rate", "direct", 5, "—", "")
  rrow(rt, lab " p50 latency", "direct", 6, "—", "")
  rrow(rt, lab " p99 latency", "direct", 8, "—", "")
  rrow(rt, lab " p99.9 latency", "direct", 9, "—", "")
  for (j = 1; j <= NR_; j++) {
    ref = REFS[j]
    addrow(rt, lab " added p50 (proxy − direct, same round)", ref, 6, j == 1 ? p50t : "—", j == 1 && rt == 1000 ? "abs_le:0.1" : "")
    addrow(rt, lab " added p99 (proxy − direct, same round)", ref, 8, j == 1 ? p99t : "—", j == 1 && rt == 1000 ? "abs_le:0.5" : "")
    addrow(rt, lab " added p99.9 (proxy − direct, same round)", ref, 9, "—", "")
    rrow(rt, lab " proxy CPU per request", ref, 10, "—", "")
  }
  print ""
  print "All targets at " lab " (mean of the rounds; added = minus direct in the same round):"
  print ""
  print "| target | achieved | p50 | p90 | p99 | p99.9 | added p50 | added p99 | added p99.9 | CPU per request | cores busy |"
  print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for (j = 1; j <= NT; j++) {
    t = TS[j]; k = "rate" rt SUBSEP t
    if (!n[k]) continue
    printf "| %s | %.0f req/s | %.3f ms | %.3f ms | %.3f ms | %.3f ms", NAME[t], mean(k, 5), mean(k, 6), mean(k, 7), mean(k, 8), mean(k, 9)
    for (x = 6; x <= 9; x += (x == 6 ? 2 : 1)) {
      if (t == "direct") { printf " | —"; continue }
      a = added(rt, t, x); split(a, am, "|"); printf " | %s", (a == "" ? "—" : sprintf("%+.3f ms", am[1]))
    }
    printf " | %.1f µs | %.2f |\n", mean(k, 10), mean(k, 10) * mean(k, 5) / 1e6
  }
}
function memrow(scen, field, target, limit,   j, t, nm) {
  for (j = 1; j <= NR_; j++) {
    t = REFS[j]
    if (rss[t, field] == "" || rss["mecha", field] == "") continue
    nm = (t == "nginx" ? sprintf("nginx (%d processes, summed)", rss[t, "procs"]) : NAME[t])
    printf "| %s | %s | %s | %s | %s | %s | %s |\n", scen, nm, mib(rss[t, field]), mib(rss["mecha", field]),
      ratio(rss["mecha", field], rss[t, field]), target, (limit ? yn(rss["mecha", field] <= limit) : "—")
  }
}
function perconn(t) { return rss[t, "opened"] ? (rss[t, "held"] - rss[t, "before"]) / rss[t, "opened"] : 0 }
END {
  if (n["h1" SUBSEP "mecha"]) {
    print "### HTTP/1.1 keep-alive, 1 KiB (wrk)"
    print ""
    header()
    block("h1", "HTTP/1.1", "≥ 1.1×", "ge:1.1", "≤ nginx (≤ 1.00×)", "le:1.0")
    print ""
    failures("h1", "HTTP/1.1", "connect/read/write/timeout")
    print ""
  }
  if (n["h1big" SUBSEP "mecha"]) {
    print "### HTTP/1.1 keep-alive, 64 KiB (wrk)"
    print ""
    header()
    block("h1big", "HTTP/1.1 64 KiB", "≥ 1.0×", "ge:1.0", "≤ nginx (≤ 1.00×)", "le:1.0")
    print ""
    failures("h1big", "HTTP/1.1 64 KiB", "connect/read/write/timeout")
    print ""
  }
  if (n["close" SUBSEP "mecha"]) {
    print "### HTTP/1.1, a new connection per request (wrk, `Connection: close`), 1 KiB"
    print ""
    header()
    block("close", "new connection per request", "≥ 1.0×", "ge:1.0", "≤ nginx (≤ 1.00×)", "le:1.0")
    print ""
    failures("close", "New connection per request", "connect/read/write/timeout")
    print ""
  }
  if (n["h2" SUBSEP "mecha"]) {
    print "### h2c, prior knowledge (h2load)"
    print ""
    header()
    block("h2", "h2c", "≥ 1.0× (≥ nginx)", "ge:1.0", "—", "")
    print ""
    failures("h2", "h2c", "failed/errored/timeout")
    print ""
  }
  for (q = 1; q <= nrates; q++) {
    rt = rates[q]
    printf "### Latency at a fixed rate: %s req/s (h2load --h1 --rps, per-request log, 2xx rows)\n", commas(rt)
    print ""
    header()
    rate_block(rt)
    print ""
    failures("rate" rt, commas(rt) " req/s", "failed/errored/timeout")
    print ""
  }
  if (n["grpc" SUBSEP "mecha"]) {
    print "### gRPC unary (h2load, bench.Echo/Unary): nginx `grpc_pass` vs Mecha (router → h2c cluster)"
    print ""
    header()
    gblock("grpc", "gRPC unary", "calls/s", "≥ 1.0× (≥ nginx)", "ge:1.0")
    print ""
  }
  if (n["grpcbidi" SUBSEP "mecha"]) {
    print "### gRPC bidi streaming (rt-load echo-bidi: ping-pong on long-lived streams)"
    print ""
    header()
    gblock("grpcbidi", "gRPC bidi", "messages/s", "≥ 1.0× (≥ nginx)", "ge:1.0")
    print ""
  }
  if (n["grpcss" SUBSEP "mecha"]) {
    print "### gRPC server streaming (rt-load echo-server-stream: latency to the last message)"
    print ""
    header()
    gblock("grpcss", "gRPC server streaming", "calls/s", "≥ 1.0× (≥ nginx)", "ge:1.0")
    print ""
  }
  print "### Memory"
  print ""
  header()
  memrow("peak RSS under load (VmHWM after all load runs)", "all", "≤ 20 MiB", 20480)
  memrow("peak RSS after the HTTP/1.1 1 KiB runs only", "h1", "≤ 20 MiB", 20480)
  memrow("RSS idle, before any load (VmRSS)", "idle", "≤ 10 MiB", 10240)
  memrow(sprintf("RSS with %s idle keep-alive connections (VmRSS, after all load)", commas(rss["mecha", "opened"])), "held", "≤ 32 MiB", 32768)
  for (j = 1; j <= NR_; j++) {
    t = REFS[j]
    if (rss[t, "opened"] == "" || !rss["mecha", "opened"]) continue
    printf "| RSS per idle connection ((with − before) ÷ opened) | %s | %.1f KiB | %.1f KiB | %s | — | — |\n",
      NAME[t], perconn(t), perconn("mecha"), ratio(perconn("mecha"), perconn(t))
  }
  print ""
  printf "Idle connections (opened / still open when the RSS was read / failed; RSS just before them): "
  sep = ""
  for (j = 1; j <= NT; j++) {
    t = TS[j]
    if (rss[t, "opened"] == "") continue
    printf "%s%s %d / %d / %d (%s)", sep, t, rss[t, "opened"], rss[t, "still"], rss[t, "failed"], mib(rss[t, "before"]); sep = "; "
  }
  print "."
  print ""
  printf "Logs: Mecha stderr WARN/ERROR lines: %d; nginx error log lines: %d; HAProxy output lines: %d", logn["mecha"], logn["nginx"], logn["haproxy"]
  if ("envoy" in logn) printf "; Envoy log lines (warn and up): %d", logn["envoy"]
  if ("bare" in logn) printf "; bare Pingora stderr lines past its start line: %d", logn["bare"]
  print "."
}
