-- wrk script: replays pre-signed fal webhooks from $FALHOOK_BENCH_REQUESTS, one per line:
-- request_id \t user_id \t timestamp \t signature \t body. Each wrk thread takes every
-- Nth line, so every request_id is sent once; `wrapped` in the summary says if a thread ran
-- out and began repeating (repeats are duplicates: cheaper, so the figure would flatter us).
local requests = {}
counter = 0
wrapped = 0  -- globals: done() reads them through thread:get
local next_id = 0
local threads = {}

function setup(thread)
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
  for _, t in ipairs(threads) do
    w = w + (t:get("wrapped") or 0)
  end
  io.write(string.format("wrapped %d\n", w))
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
