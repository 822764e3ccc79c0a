-- wrk script for ThinkingData's batch endpoint, as its server SDKs call it.
-- Arguments: <appid> <run prefix> <records per request>. Every record carries a unique #uuid
-- ("<prefix>-<thread>-<seq>-<i>"); account ids, event names and values come from a fixed seed.
-- The body is sent uncompressed (compress: none), as the SDKs do with compress=False.
local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local names = {"purchase", "view_item", "add_to_cart", "login", "share"}

function init(args)
  appid = args[1]
  prefix = args[2]
  batch = tonumber(args[3])
  seq = 0
  acked = 0
  failed = 0
  math.randomseed(2000 + tid)
  wrk.headers["appid"] = appid
  wrk.headers["compress"] = "none"
  wrk.headers["TA-Integration-Type"] = "python-sdk"
  wrk.headers["TA-Integration-Count"] = tostring(batch)
end

function request()
  seq = seq + 1
  local records = {}
  for i = 1, batch do
    records[i] = string.format(
      '{"#type":"track","#account_id":"a%d","#event_name":"%s","#uuid":"%s-%d-%d-%d",' ..
      '"#time":"2024-03-%02d %02d:%02d:%02d.%03d","properties":{"amount":%d.%02d,' ..
      '"#os":"os%d","channel":"c%d"}}',
      math.random(1, 200000), names[math.random(1, 5)], prefix, tid, seq, i,
      math.random(1, 28), math.random(0, 23), math.random(0, 59), math.random(0, 59),
      math.random(0, 999), math.random(1, 999), math.random(0, 99), math.random(1, 3),
      math.random(1, 20))
  end
  return wrk.format("POST", "/sync_server", nil, "[" .. table.concat(records, ",") .. "]")
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"code":0', 1, true) then
    acked = acked + batch
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local a, f = 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("acked")
    f = f + t:get("failed")
  end
  io.write(string.format(
    'RESULT {"requests":%d,"acked":%d,"failed":%d,"duration_us":%d,"p50_us":%d,' ..
    '"p99_us":%d,"socket_errors":%d}\n',
    summary.requests, a, f, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
