-- wrk script for the single-record import benchmark.
-- Arguments: <path with ?secret=...> <run prefix>. Every request carries a unique event_id
-- ("<prefix>-<thread>-<seq>"); mobiles, event names and values come from a fixed seed.
local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local names = {"purchase", "view_item", "add_to_cart", "login", "share"}

function init(args)
  path = args[1]
  prefix = args[2]
  seq = 0
  acked = 0
  failed = 0
  math.randomseed(1000 + tid)
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  seq = seq + 1
  local body = string.format(
    '{"type":"event","event":"%s","properties":{"mobile":"1%010d","event_id":"%s-%d-%d",' ..
    '"create_time":"2024-03-%02d %02d:%02d:%02d","amount":%d.%02d,"channel":"c%d"}}',
    names[math.random(1, 5)], math.random(1, 200000), prefix, tid, seq,
    math.random(1, 28), math.random(0, 23), math.random(0, 59), math.random(0, 59),
    math.random(1, 999), math.random(0, 99), math.random(1, 20))
  return wrk.format("POST", path, nil, body)
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"errcode":0', 1, true) then
    acked = acked + 1
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
