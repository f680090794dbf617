-- benches/xds.sh churn: wrk counts non-2xx but not which; this prints each non-200 status
-- and the first such body (one line each) after wrk's summary.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; sample = "" end
function response(status, headers, body)
  if status ~= 200 then
    statuses[status] = (statuses[status] or 0) + 1
    if sample == "" then sample = string.sub(body or "", 1, 200) end
  end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do io.write(string.format("status %d: %d\n", k, v)) end
    local s = t:get("sample")
    if s and s ~= "" then io.write("first non-200 body: " .. string.gsub(s, "\n", " ") .. "\n") end
  end
end
