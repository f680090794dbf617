# Turns benches/run.sh's results.tsv into the RESULTS.md tables.
# Rows: group scenario target round rps p50_ms p99_ms mean_ms cpu_us_per_req ok failed cpu_share
#         mecha_errors other_cores inflight mecha_errors_not_unknown
#       (groups redis-rs, redis-rs-rate, from rt-load: + p999_ms redis_server_cpu_us_per_req)
#       rss  group target idle_kib=… peak_kib=… [errors=… codes=…]
#       admin redis mecha us_per_req=…
#       cold target "summary runs=… ready_ms_median=… … idle_rss_kib_median=…"
# Variables: rounds, redis_status, cold_note.

function kv(s, k,    n, i, a, p) {
  n = split(s, a, /[ \t]+/)
  for (i = 1; i <= n; i++) { split(a[i], p, "="); if (p[1] == k) return p[2] }
  return ""
}
# mean over the rounds of column c for (g, s, t); sets LIST to "a / b"
function mean(g, s, t, c,    r, sum, n, v) {
  sum = 0; n = 0; LIST = ""
  for (r = 1; r <= rounds; r++) {
    if (!((g, s, t, r, c) in V)) continue
    v = V[g, s, t, r, c]
    if (v == "nan" || v == "") continue
    sum += v; n++
    LIST = LIST (LIST == "" ? "" : " / ") fmt(v, c)
  }
  return n ? sum / n : ""
}
function fmt(v, c) {
  if (c == "rps") return sprintf("%.0f", v)
  if (c == "rcpu") return sprintf("%.1f", v)
  if (c == "cpu") return sprintf("%.1f", v)
  if (c == "share") return sprintf("%.3f", v)
  return sprintf("%.2f", v)
}
function unit(c) {
  if (c == "rps") return " req/s"
  if (c == "cpu" || c == "rcpu") return " µs"
  if (c == "share") return " cores"
  return " ms"
}
function cell(m, c, list) {
  if (m == "") return "n/a"
  return fmt(m, c) unit(c) (rounds > 1 ? " (" list ")" : "")
}
# target: ">=0.9" or "<=1.2" or "-"
function row(label, refname, g, s, rt, mt, c, target,    rm, rl, mm, ml, ratio, met, op, lim) {
  rm = mean(g, s, rt, c); rl = LIST
  mm = mean(g, s, mt, c); ml = LIST
  ratio = (rm != "" && mm != "" && rm > 0) ? mm / rm : ""
  met = "—"
  if (target != "-" && ratio != "") {
    op = substr(target, 1, 2); lim = substr(target, 3) + 0
    met = ((op == ">=" && ratio >= lim) || (op == "<=" && ratio <= lim)) ? "yes" : "**no**"
  }
  printf "| %s | %s | %s | %s | %s | %s | %s |\n", label, refname, cell(rm, c, rl), cell(mm, c, ml),
    (ratio == "" ? "n/a" : sprintf("%.2f×", ratio)),
    (target == "-" ? "—" : (substr(target, 1, 2) == ">=" ? "≥ " : "≤ ") substr(target, 3) "×"), met
}
# Latency target t adds over ref, column c: per round (both ran), mean over the rounds;
# "| label | ref | ref figure | t figure | added | target | met? |", lim = "" or a bound in ms
function addrow(label, refname, g, s, ref, t, c, lim,    r, d, n, sum, l, a, rl, tl) {
  n = 0; sum = 0; l = ""
  for (r = 1; r <= rounds; r++) {
    if (!((g, s, ref, r, c) in V) || !((g, s, t, r, c) in V)) continue
    d = V[g, s, t, r, c] - V[g, s, ref, r, c]; n++; sum += d
    l = l (l == "" ? "" : " / ") sprintf("%+.3f", d)
  }
  if (!n) return
  a = sum / n
  mean(g, s, ref, c); rl = LIST; rm = mean(g, s, ref, c)
  mean(g, s, t, c); tl = LIST; tm = mean(g, s, t, c)
  printf "| %s | %s | %s | %s | %+.3f ms%s | %s | %s |\n", label, refname, cell(rm, c, rl), cell(tm, c, tl),
    a, (n > 1 ? " (" l ")" : ""), (lim == "" ? "—" : "added ≤ +" lim " ms"),
    (lim == "" ? "—" : (a <= lim + 0 ? "yes" : "**no**"))
}
function header(title) {
  print ""
  print "### " title
  print ""
  print "| scenario | reference | reference figure | mecha figure | ratio | target | met? |"
  print "| --- | --- | --- | --- | --- | --- | --- |"
}
function total(A, g, t,    k, parts, tot) {
  tot = 0
  for (k in A) { split(k, parts, SUBSEP); if (parts[1] == g && (t == "" || parts[3] == t)) tot += A[k] }
  return tot
}
# Other processes' CPU during group g's runs: "mean X cores, max Y"
function others(g,    k, parts, n, sum, mx) {
  n = 0; sum = 0; mx = 0
  for (k in O) {
    split(k, parts, SUBSEP); if (parts[1] != g) continue
    n++; sum += O[k]; if (O[k] > mx) mx = O[k]
  }
  return n ? sprintf("mean %.2f cores, max %.2f cores", sum / n, mx) : "n/a"
}
# The failed/cut-off/error line under a table of groups g1 (and g2)
function errline(g1, g2, eg,    f, e, oe, bad) {
  f = total(F, g1, "") + (g2 == "" ? 0 : total(F, g2, ""))
  e = total(E, g1, "") + (g2 == "" ? 0 : total(E, g2, ""))
  oe = total(OE, g1, "") + (g2 == "" ? 0 : total(OE, g2, ""))
  bad = oe > 0 || OVER[g1] || (g2 != "" && OVER[g2])
  printf "Failed requests (h2load): %d. Non-OK gRPC statuses Mecha recorded during its runs: %d, of which %d with a code other than UNKNOWN/CANCELLED (whole run: %s)", f, e, oe, (ERR[eg] == "" ? "n/a" : ERR[eg] (CODES[eg] == "" || CODES[eg] == "-" ? "" : ", " CODES[eg]))
  printf "%s", (bad ? " — **not explained by h2load's stop: some calls failed; investigate before trusting these rows**" : (e > 0 ? " — each run's count is within the requests h2load had in flight when its `-D` window closed (h2load resets them; Mecha records a reset stream as UNKNOWN), and the checks before and after the load answered OK" : ""))
  printf ".\nOther processes' CPU during these runs (machine busy − server − h2load): %s%s.\n", others(g1), (g2 == "" ? "" : "; fixed-rate runs: " others(g2))
}

$1 == "rss" { RSS[$2, $3, "idle"] = kv($4, "idle_kib"); RSS[$2, $3, "peak"] = kv($5, "peak_kib")
              if (NF >= 6) ERR[$2] = kv($6, "errors")
              if (NF >= 7) CODES[$2] = kv($7, "codes")
              next }
$1 == "admin" { ADMIN[$2] = kv($4, "us_per_req"); next }
$1 == "cold" { COLD[$2] = $3; next }
{
  g = $1; s = $2; t = $3; r = $4
  V[g, s, t, r, "rps"] = $5; V[g, s, t, r, "p50"] = $6; V[g, s, t, r, "p99"] = $7
  V[g, s, t, r, "mean"] = $8; V[g, s, t, r, "cpu"] = $9; V[g, s, t, r, "share"] = $12
  if (NF >= 18) { V[g, s, t, r, "p999"] = $17; V[g, s, t, r, "rcpu"] = $18 }
  F[g, s, t, r] = $11 + 0
  if ($13 != "-" && $13 != "") { E[g, s, t, r] = $13 + 0; OE[g, s, t, r] = $16 + 0
                                 if ($13 + 0 > $15 + 0) OVER[g] = 1 }
  if ($14 != "-" && $14 != "") O[g, s, t, r] = $14 + 0
  SEEN[g] = 1
}
END {
  if (SEEN["mem"]) {
    header("Capability API, in-memory components: saturation (bare tonic vs Mecha)")
    for (i = 1; i <= 2; i++) {
      s = (i == 1 ? "SayHello" : "GetState")
      row(s " throughput", "bare tonic", "mem", s, "bare-tonic", "mecha", "rps", ">=0.9")
      row(s " p50 latency", "bare tonic", "mem", s, "bare-tonic", "mecha", "p50", "-")
      row(s " p99 latency", "bare tonic", "mem", s, "bare-tonic", "mecha", "p99", "<=1.2")
      row(s " server CPU per request", "bare tonic", "mem", s, "bare-tonic", "mecha", "cpu", "-")
    }
  }
  if (SEEN["mem-rate"]) {
    header("Capability API, in-memory components: latency at a fixed rate (bare tonic vs Mecha)")
    for (i = 1; i <= 2; i++) {
      s = (i == 1 ? "SayHello" : "GetState")
      row(s " p50 latency", "bare tonic", "mem-rate", s, "bare-tonic", "mecha", "p50", "-")
      row(s " p99 latency", "bare tonic", "mem-rate", s, "bare-tonic", "mecha", "p99", "<=1.2")
      row(s " server CPU (cores busy)", "bare tonic", "mem-rate", s, "bare-tonic", "mecha", "share", "-")
    }
  }
  if (SEEN["mem"]) { print ""; errline("mem", (SEEN["mem-rate"] ? "mem-rate" : ""), "mem") }
  if (("mecha" in COLD) || (("mem", "mecha", "idle") in RSS)) {
    header("Start-up and memory")
    mc = COLD["mecha"]; bc = COLD["bare-tonic"]
    if (mc != "") {
      m = kv(mc, "ready_ms_median") + 0; b = kv(bc, "ready_ms_median") + 0
      printf "| cold start, exec → /ready 200, embedded default %s(median of %s; min %s, max %s) | bare tonic, exec → port accepts | %.2f ms | %.2f ms | %.2f× | ≤ 20 ms | %s |\n",
        (cold_note == "" ? "" : cold_note " "), kv(mc, "runs"), kv(mc, "ready_ms_min"), kv(mc, "ready_ms_max"), b, m, (b > 0 ? m / b : 0), (m <= 20 ? "yes" : "**no**")
      m = kv(mc, "idle_rss_kib_median") / 1024; b = kv(bc, "idle_rss_kib_median") / 1024
      printf "| idle RSS 0.5 s after ready, embedded default (median) | bare tonic, idle | %.1f MiB | %.1f MiB | %.2f× | ≤ 10 MiB | %s |\n",
        b, m, (b > 0 ? m / b : 0), (m <= 10 ? "yes" : "**no**")
    }
    b = RSS["mem", "bare-tonic", "idle"] / 1024; m = RSS["mem", "mecha", "idle"] / 1024
    if (m > 0) printf "| idle RSS, benchmark config, after the pre-check calls | bare tonic | %.1f MiB | %.1f MiB | %.2f× | ≤ 10 MiB | %s |\n", b, m, (b > 0 ? m / b : 0), (m <= 10 ? "yes" : "**no**")
    b = RSS["mem", "bare-tonic", "peak"] / 1024; m = RSS["mem", "mecha", "peak"] / 1024
    if (m > 0) printf "| peak RSS under load (VmHWM after every in-memory run) | bare tonic | %.1f MiB | %.1f MiB | %.2f× | ≤ 20 MiB | %s |\n", b, m, (b > 0 ? m / b : 0), (m <= 20 ? "yes" : "**no**")
  }
  print ""
  print "### Redis-backed (issue 4): Mecha vs the same work sent straight to Redis"
  print ""
  print "Redis: " redis_status "."
  if (SEEN["redis"]) {
    print ""
    print "| scenario | reference | reference figure | mecha figure | ratio | target | met? |"
    print "| --- | --- | --- | --- | --- | --- | --- |"
    row("GetState throughput", "`GET` direct (redis-benchmark)", "redis", "GetState", "GET", "mecha", "rps", ">=0.6")
    row("GetState p99", "`GET` direct", "redis", "GetState", "GET", "mecha", "p99", "<=1.5")
    row("GetState throughput", "`HMGET key data version` direct", "redis", "GetState", "HMGET", "mecha", "rps", ">=0.6")
    row("GetState p99", "`HMGET` direct", "redis", "GetState", "HMGET", "mecha", "p99", "<=1.5")
    row("GetState throughput", "bare tonic, same state.redis", "redis", "GetState", "bare-tonic", "mecha", "rps", "-")
    row("GetState p99", "bare tonic, same state.redis", "redis", "GetState", "bare-tonic", "mecha", "p99", "-")
    row("GetState Mecha CPU per request", "bare tonic, same state.redis", "redis", "GetState", "bare-tonic", "mecha", "cpu", "-")
    row("SaveState throughput", "`SET` direct", "redis", "SaveState", "SET", "mecha", "rps", ">=0.6")
    row("SaveState p99", "`SET` direct", "redis", "SaveState", "SET", "mecha", "p99", "<=1.5")
    row("SaveState throughput", "`EVALSHA` of Mecha's state_set.lua direct", "redis", "SaveState", "EVALSHA", "mecha", "rps", ">=0.6")
    row("SaveState p99", "`EVALSHA` state_set.lua direct", "redis", "SaveState", "EVALSHA", "mecha", "p99", "<=1.5")
    row("SaveState throughput", "bare tonic, same state.redis", "redis", "SaveState", "bare-tonic", "mecha", "rps", "-")
    row("SaveState p99", "bare tonic, same state.redis", "redis", "SaveState", "bare-tonic", "mecha", "p99", "-")
    row("PublishEvent throughput", "`XADD … MAXLEN ~ 10000 * data … contentType …` direct", "redis", "PublishEvent", "XADD", "mecha", "rps", ">=0.6")
    row("PublishEvent p99", "`XADD` direct", "redis", "PublishEvent", "XADD", "mecha", "p99", "<=1.5")
    row("PublishEvent throughput", "bare tonic, same pubsub.redis", "redis", "PublishEvent", "bare-tonic", "mecha", "rps", "-")
    row("PublishEvent p99", "bare tonic, same pubsub.redis", "redis", "PublishEvent", "bare-tonic", "mecha", "p99", "-")
    print ""
    errline("redis", "", "redis")
    printf "Mecha peak RSS (VmHWM) over the Redis runs: %.1f MiB. CPU of Mecha's `admin` thread per Mecha request in the Redis runs: %s µs (should be ~0: /ready's health pings have their own Redis connection since commit ae9c613; before, the shared connection's I/O ran on the admin thread).\n", RSS["redis", "mecha", "peak"] / 1024, (ADMIN["redis"] == "" ? "n/a" : ADMIN["redis"])
  }
  if (SEEN["redis-rs"] || SEEN["redis-rs-rate"]) {
    print ""
    print "### Redis-backed (issue 10, item 5): Mecha vs the same Rust `redis` client sent straight to Redis"
    print ""
    print "Both sides driven by `rt-load` (`benches/src/rt_load.rs`, one current-thread runtime): *direct* = the `redis` crate on one shared `ConnectionManager` (RESP3) sending the commands Mecha's component sends; *mecha* = tonic calls to Mecha's Runtime API (one connection per worker); *bare tonic* = the same calls to the bare tonic server over the same `state.redis`. Server CPU = the sidecar's (direct: none)."
    print ""
    print "| scenario | reference | reference figure | mecha figure | ratio / added | target | met? |"
    print "| --- | --- | --- | --- | --- | --- | --- |"
    if (SEEN["redis-rs"]) {
      for (i = 1; i <= 3; i++) {
        s = (i == 1 ? "GetState" : (i == 2 ? "SaveState" : "PublishEvent"))
        ref = (i == 1 ? "direct `HMGET`+`PTTL` pipeline" : (i == 2 ? "direct `EVALSHA` state_set.lua" : "direct `XADD`"))
        row(s " throughput (saturation)", ref, "redis-rs", s, "direct", "mecha", "rps", ">=0.6")
        row(s " p50 latency (saturation)", ref, "redis-rs", s, "direct", "mecha", "p50", "-")
        row(s " p99 latency (saturation)", ref, "redis-rs", s, "direct", "mecha", "p99", "<=1.5")
        row(s " Mecha CPU per request", "redis-server CPU per request, direct", "redis-rs", s, "direct", "mecha", "rcpu", "-")
      }
      row("GetState throughput (saturation)", "bare tonic, same state.redis", "redis-rs", "GetState", "bare-tonic", "mecha", "rps", "-")
      row("GetState p99 latency (saturation)", "bare tonic, same state.redis", "redis-rs", "GetState", "bare-tonic", "mecha", "p99", "-")
      row("GetState sidecar CPU per request", "bare tonic, same state.redis", "redis-rs", "GetState", "bare-tonic", "mecha", "cpu", "-")
    }
    if (SEEN["redis-rs-rate"]) {
      addrow("GetState added p50 at the fixed rate (mecha − direct, same round)", "direct `HMGET`+`PTTL`", "redis-rs-rate", "GetState", "direct", "mecha", "p50", "0.1")
      addrow("GetState added p99 at the fixed rate", "direct `HMGET`+`PTTL`", "redis-rs-rate", "GetState", "direct", "mecha", "p99", "0.3")
      addrow("GetState added p99.9 at the fixed rate", "direct `HMGET`+`PTTL`", "redis-rs-rate", "GetState", "direct", "mecha", "p999", "")
      addrow("GetState added p50 at the fixed rate (bare tonic − direct)", "direct `HMGET`+`PTTL`", "redis-rs-rate", "GetState", "direct", "bare-tonic", "p50", "")
      addrow("GetState added p99 at the fixed rate (bare tonic − direct)", "direct `HMGET`+`PTTL`", "redis-rs-rate", "GetState", "direct", "bare-tonic", "p99", "")
      addrow("GetState added p99.9 at the fixed rate (bare tonic − direct)", "direct `HMGET`+`PTTL`", "redis-rs-rate", "GetState", "direct", "bare-tonic", "p999", "")
      row("GetState achieved rate", "direct", "redis-rs-rate", "GetState", "direct", "mecha", "rps", "-")
      row("GetState sidecar cores busy at the fixed rate", "bare tonic", "redis-rs-rate", "GetState", "bare-tonic", "mecha", "share", "-")
    }
    print ""
    errline("redis-rs", (SEEN["redis-rs-rate"] ? "redis-rs-rate" : ""), "redis")
  }
}
