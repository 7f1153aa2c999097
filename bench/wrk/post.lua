-- wrk script: POST one body from a file with extra headers, and print the results as one JSON line.
-- usage: wrk -s bench/wrk/post.lua URL -- BODY_FILE ["Header: value" ...]
-- "requests" is every response completed in the run: bench/measure.py divides the server's CPU time over the
-- run by it (CPU per inference); requests still in flight when wrk stops are not counted.

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  for i = 2, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "rate": %.3f, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout))
end
