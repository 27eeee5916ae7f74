-- wrk script for `make bench`: a closed loop of page views by many signed-in users.
--
--   wrk -t1 -c8 -d15s -s bench/rotate_cookies.lua http://127.0.0.1:PORT/call_downstream_api -- COOKIE_FILE [N]
--
-- COOKIE_FILE holds one `Cookie:` header value a line (one signed-in user each). Every
-- request takes the next one, so consecutive requests on a connection belong to
-- different users. Requests are built once in init(): request() only picks one.
--
-- Every Nth request (default 16) asks for `Connection: close`, so each connection is
-- re-opened every N or so of its requests, as browsers and load balancers do. Without it,
-- gunicorn's gthread workers keep the connections they happened to accept in the first
-- millisecond: often one worker gets all 8 and the other idles, and a run measures luck.
--
-- response() checks what wrk alone cannot: a 302 to /login is "success" to wrk, but a
-- failed page view here. It also counts Set-Cookie headers and their bytes.
-- done() prints one line, `BENCH_JSON {...}`, that bench/run.py reads.

local requests = {}
local closing = {}
local next_index = 1
local close_every = 16
local sent = 0
local id = 0
local threads = {}

-- Per-thread tallies, read by done() through thread:get().
ok = 0
not_ok = 0
set_cookie_count = 0
set_cookie_bytes = 0
responses = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path = wrk.path
  local cookies = {}
  if args[1] then
    for line in io.lines(args[1]) do
      if #line > 0 then
        table.insert(cookies, line)
      end
    end
  end
  if #cookies == 0 then
    table.insert(cookies, false)
  end
  if args[2] then
    close_every = tonumber(args[2])
  end
  for _, cookie in ipairs(cookies) do
    local headers = {}
    if cookie then
      headers["Cookie"] = cookie
    end
    table.insert(requests, wrk.format("GET", path, headers))
    headers["Connection"] = "close"
    table.insert(closing, wrk.format("GET", path, headers))
  end
  -- Threads start on different users.
  next_index = (id * 7) % #requests + 1
end

function request()
  local i = next_index
  next_index = next_index % #requests + 1
  sent = sent + 1
  if close_every > 0 and sent % close_every == 0 then
    return closing[i]
  end
  return requests[i]
end

function response(status, headers, body)
  responses = responses + 1
  if status == 200 then
    ok = ok + 1
  else
    not_ok = not_ok + 1
  end
  for name, value in pairs(headers) do
    if string.lower(name) == "set-cookie" then
      set_cookie_count = set_cookie_count + 1
      -- "Set-Cookie: " + value + CRLF, as on the wire
      set_cookie_bytes = set_cookie_bytes + #name + 2 + #value + 2
    end
  end
end

local function sum(name)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get(name) or 0)
  end
  return total
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors_connect":%d', e.connect),
    string.format('"errors_read":%d', e.read),
    string.format('"errors_write":%d', e.write),
    string.format('"errors_status":%d', e.status),
    string.format('"errors_timeout":%d', e.timeout),
    string.format('"ok":%d', sum("ok")),
    string.format('"not_ok":%d', sum("not_ok")),
    string.format('"responses":%d', sum("responses")),
    string.format('"set_cookie_count":%d', sum("set_cookie_count")),
    string.format('"set_cookie_bytes":%d', sum("set_cookie_bytes")),
    string.format('"latency_mean_us":%.1f', latency.mean),
    string.format('"latency_max_us":%d', latency.max),
  }
  for _, p in ipairs({ 50, 75, 90, 95, 99, 99.9 }) do
    table.insert(parts, string.format('"p%s_us":%d', string.gsub(tostring(p), "%.", "_"), latency:percentile(p)))
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
