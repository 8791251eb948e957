-- wrk script: replays pre-signed fal webhooks from $FALHOOK_BENCH_REQUESTS, one per line:
-- request_id \t user_id \t timestamp \t signature \t body. Each wrk thread takes every
-- Nth line, so every request_id is sent once; `wrapped` in the summary says if a thread ran
-- out and began repeating (repeats are duplicates: cheaper, so the figure would flatter us).
-- Optional $FALHOOK_BENCH_PORTS ("8001,8002"): thread i connects to 127.0.0.1 on the
-- (i mod n)th port, so one wrk spreads its threads, and their connections, over n servers.
local requests = {}
counter = 0
wrapped = 0  -- globals: done() reads them through thread:get
loaded = 0
local next_id = 0
local threads = {}

function setup(thread)
  local ports = {}
  for port in string.gmatch(os.getenv("FALHOOK_BENCH_PORTS") or "", "%d+") do
    ports[#ports + 1] = port
  end
  if #ports > 0 then
    thread.addr = wrk.lookup("127.0.0.1", ports[next_id % #ports + 1])[1]
  end
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(os.getenv("FALHOOK_BENCH_THREADS"))
  local route = os.getenv("FALHOOK_BENCH_ROUTE") or "default"
  local i = 0
  for line in io.lines(os.getenv("FALHOOK_BENCH_REQUESTS")) do
    if i % nthreads == id then
      local rid, uid, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", "/webhooks/" .. route, {
        ["Content-Type"] = "application/json",
        ["X-Fal-Webhook-Request-Id"] = rid,
        ["X-Fal-Webhook-User-Id"] = uid,
        ["X-Fal-Webhook-Timestamp"] = ts,
        ["X-Fal-Webhook-Signature"] = sig,
      }, body)
    end
    i = i + 1
  end
  loaded = #requests
end

function request()
  counter = counter + 1
  if counter > #requests then
    counter = 1
    wrapped = wrapped + 1
  end
  return requests[counter]
end

function done(summary, latency, requests)
  local w = 0
  for i, t in ipairs(threads) do
    local tw = t:get("wrapped") or 0
    w = w + tw
    -- requests this thread sent (with any still in flight when wrk stopped)
    io.write(string.format("sent %d %d\n", i - 1, tw * (t:get("loaded") or 0) + (t:get("counter") or 0)))
  end
  io.write(string.format("wrapped %d\n", w))
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
