-- The request wrk sends for one benchmark scenario, read from the environment so one
-- script serves them all:
--   BENCH_METHOD, BENCH_PATH, BENCH_TOKEN (a bearer token), BENCH_BODY (optional),
--   BENCH_PATHS (optional: comma-separated paths, requested in turn instead of BENCH_PATH),
--   BENCH_HEADER (optional, "Name: value"), BENCH_MAX_PER_THREAD (each thread stops after
--   this many responses, so a run is bounded in count as well as by wrk's -d),
--   BENCH_OUT (where done() writes the figures as JSON).
wrk.method = os.getenv("BENCH_METHOD")
wrk.path = os.getenv("BENCH_PATH")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
end
local extra = os.getenv("BENCH_HEADER")
if extra and extra ~= "" then
    local name, value = extra:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
end

local paths = {}
for path in (os.getenv("BENCH_PATHS") or ""):gmatch("[^,]+") do
    paths[#paths + 1] = path
end
-- Each thread starts at its own place in the list, so two do not run through it in step.
local threads = 0
function setup(thread)
    thread:set("first_path", threads * 97)
    threads = threads + 1
end

if #paths > 0 then
    local next_path = nil
    function request()
        next_path = ((next_path or first_path or 0) % #paths) + 1
        return wrk.format(nil, paths[next_path])
    end
end

local limit = tonumber(os.getenv("BENCH_MAX_PER_THREAD"))
local seen = 0

function response(status, headers, body)
    seen = seen + 1
    if seen >= limit then
        wrk.thread:stop()
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    local f = assert(io.open(os.getenv("BENCH_OUT"), "w"))
    f:write(string.format(
        '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
        '"status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "p50": %d, "p90": %d, ' ..
        '"p99": %d, "max": %d}}\n',
        summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
        latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.max))
    f:close()
end
