-- http.serve from a script, fetched by http.request in the same process: the
-- server (libh2o) and the client (libcurl) share the one loop, and every
-- handler runs as its own task.
local http = require "kpiwatch.http"
local hs = require "kpiwatch.http_server"
local errors = require "kpiwatch.errors"
local task = require "kpiwatch.task"

-- Capture what the server logs on stderr while fn runs.
local function capture_stderr(fn)
  local real, lines = io.stderr, {}
  io.stderr = {
    write = function(self, ...)
      for _, s in ipairs{ ... } do lines[#lines + 1] = tostring(s) end
      return self
    end,
    flush = function(self) return self end,
  }
  local ok, err = pcall(fn)
  io.stderr = real
  if not ok then error(err, 0) end
  return table.concat(lines)
end

local function until_true(pred, what)
  local t0 = task.now()
  while not pred() do
    if task.now() - t0 > 5 then error("timed out waiting for " .. what) end
    task.sleep(0.01)
  end
end

describe("http.serve", function()
  local srv, base, seen
  local sleeping, max_sleeping = 0, 0
  local events = {}

  setup(function()
    srv = http.serve{
      max_body = 1024 * 1024,
      handler = function(req)
        seen = req
        local p = req.path
        if p == "/string" then
          return "just a body"
        elseif p == "/nothing" then
          return nil
        elseif p == "/json" then
          return { status = 201, json = { ok = true, list = { 1, 2 } } }
        elseif p == "/headers" then
          return { headers = { ["X-Mixed-Case"] = "v", ["x-list"] = { "a", "b" }, ["x-num"] = 7 } }
        elseif p == "/in-task" then
          return tostring(task.running() ~= nil)
        elseif p == "/sleep" then
          sleeping = sleeping + 1
          if sleeping > max_sleeping then max_sleeping = sleeping end
          task.sleep(tonumber(req.params.s))
          sleeping = sleeping - 1
          return "slept"
        elseif p == "/raise" then
          error("handler exploded")
        elseif p == "/raise-object" then
          errors.raise("upstream", "the API said no", { status = 502 })
        elseif p == "/bad-status" then
          return { status = 42 }
        elseif p == "/bad-header" then
          return { headers = { ["X-Evil"] = "a\r\nInjected: 1" } }
        elseif p == "/bad-body" then
          return { body = { "not", "a", "string" } }
        elseif p == "/bad-return" then
          return 12
        elseif p == "/drop" then
          events[#events + 1] = "drop"
          return hs.DROP
        elseif p == "/record" then
          events[#events + 1] = req.params.n
          return "ok"
        end
        return { status = 404, body = "no route " .. p }
      end,
    }
    base = srv.url
  end)

  teardown(function()
    srv:close()
    srv:wait()
  end)

  it("reports the bound port and url, loopback by default", function()
    assert.is_true(srv.port > 0)
    assert.are.equal("127.0.0.1", srv.host)
    assert.are.equal("http://127.0.0.1:" .. srv.port, srv.url)
    assert.matches("^http server http://127.0.0.1:%d+$", tostring(srv))
  end)

  it("hands the handler method, path, raw query, decoded params, headers and body", function()
    local r = http.request{
      url = base .. "/a/b%20c?x=1&name=J%C3%BCrgen+M&x=2&flag&empty=",
      method = "PUT",
      headers = { ["X-Custom"] = "abc", Cookie = "a=1" },
      body = "payload\0bytes",
    }
    assert.are.equal(404, r.status)
    assert.are.equal("PUT", seen.method)
    assert.are.equal("/a/b%20c", seen.path)
    assert.are.equal("x=1&name=J%C3%BCrgen+M&x=2&flag&empty=", seen.query)
    assert.are.same({ x = "1", name = "Jürgen M", flag = "", empty = "" }, seen.params)
    assert.are.equal("abc", seen.headers["x-custom"])
    assert.is_nil(seen.headers["X-Custom"])
    assert.are.equal("127.0.0.1:" .. srv.port, seen.headers.host)
    assert.are.equal("13", seen.headers["content-length"])
    assert.are.equal("payload\0bytes", seen.body)
    assert.are.equal("1.1", seen.http_version)
    http.request{ url = base .. "/plain" }
    assert.are.equal("", seen.query)
    assert.are.same({}, seen.params)
    assert.are.equal("", seen.body)
    assert.is_nil(seen.headers["content-length"])
  end)

  it("accepts a string, nothing, or a table with json as the response", function()
    local r = http.request{ url = base .. "/string" }
    assert.are.equal(200, r.status)
    assert.are.equal("just a body", r.body)
    r = http.request{ url = base .. "/nothing" }
    assert.are.equal(200, r.status)
    assert.are.equal("", r.body)
    assert.are.equal("0", r.headers["content-length"])
    r = http.request{ url = base .. "/json" }
    assert.are.equal(201, r.status)
    assert.are.equal("application/json", r.headers["content-type"])
    assert.are.same({ ok = true, list = { 1, 2 } }, json.decode(r.body))
  end)

  it("sends response headers lowercased, repeated from a list, with a server name", function()
    local r = http.request{ url = base .. "/headers" }
    assert.are.equal("v", r.headers["x-mixed-case"])
    assert.are.equal("7", r.headers["x-num"])
    local list = {}
    for _, h in ipairs(r.header_list) do
      if h[1] == "x-list" then list[#list + 1] = h[2] end
    end
    assert.are.same({ "a", "b" }, list)
    assert.matches("^kpiwatch/", r.headers.server)
  end)

  it("runs each handler as a task; slow handlers overlap", function()
    assert.are.equal("true", http.request{ url = base .. "/in-task" }.body)
    sleeping, max_sleeping = 0, 0
    local ts = {}
    for i = 1, 10 do
      ts[i] = task.spawn(function() return http.request{ url = base .. "/sleep?s=0.5" }.body end)
    end
    for i = 1, 10 do assert.are.equal("slept", task.wait(ts[i])) end
    -- Counted in the server, so what the client does with its sockets
    -- does not enter into it: handlers were sleeping at the same time.
    assert.is_true(max_sleeping >= 5, "at most " .. max_sleeping .. " handlers at once")
    assert.are.equal(0, sleeping)
  end)

  it("answers 500 for a handler error, logs it with a traceback, and keeps serving", function()
    local r
    local log = capture_stderr(function() r = http.request{ url = base .. "/raise" } end)
    assert.are.equal(500, r.status)
    assert.are.equal("internal server error\n", r.body)
    assert.matches("http handler error %(GET /raise%)", log)
    assert.matches("handler exploded", log)
    assert.matches("stack traceback", log)
    assert.are.equal(200, http.request{ url = base .. "/string" }.status)
    -- an error object is logged through its __tostring
    log = capture_stderr(function() r = http.request{ url = base .. "/raise-object" } end)
    assert.are.equal(500, r.status)
    assert.matches("upstream: the API said no", log)
  end)

  it("answers 500 for a malformed response and says why", function()
    for path, why in pairs{
      ["/bad-status"] = "status must be between 200 and 599",
      ["/bad-header"] = "CR, LF or NUL",
      ["/bad-body"] = "body must be a string",
      ["/bad-return"] = "handler returned a number",
    } do
      local r
      local log = capture_stderr(function() r = http.request{ url = base .. path } end)
      assert.are.equal(500, r.status, path)
      assert.is_nil(r.headers["injected"])
      assert.matches(why, log, 1, true)
    end
    assert.are.equal(200, http.request{ url = base .. "/string" }.status)
  end)

  it("refuses a request body over max_body with 413, without calling the handler", function()
    local calls = 0
    local small = http.serve{ max_body = 100, handler = function(req)
      calls = calls + 1
      return tostring(#req.body)
    end }
    local r = http.request{ url = small.url, body = string.rep("x", 101) }
    assert.are.equal(413, r.status)
    assert.are.equal(0, calls)
    r = http.request{ url = small.url, body = string.rep("x", 100) }
    assert.are.equal(200, r.status)
    assert.are.equal("100", r.body)
    assert.are.equal(1, calls)
    small:close()
    small:wait()
    -- this spec's server takes up to 1 MiB
    r = http.request{ url = base .. "/record?n=fits", body = string.rep("x", 1024 * 1024) }
    assert.are.equal(200, r.status)
    assert.are.equal("fits", events[#events])
  end)

  it("counts connections and requests: keep-alive reuse is visible", function()
    http.request{ url = base .. "/string" }
    local s0 = srv:stats()
    for i = 1, 10 do
      assert.are.equal(200, http.request{ url = base .. "/record?n=" .. i }.status)
    end
    local s1 = srv:stats()
    assert.are.equal(s0.connections, s1.connections)
    assert.are.equal(s0.requests + 10, s1.requests)
    assert.are.equal(s0.responses + 10, s1.responses)
    assert.is_true(s1.open_connections >= 1)
    assert.are.equal(0, s1.in_flight)
    assert.are.equal("open", s1.state)
  end)

  it("drops the connection without a byte of response when the handler returns DROP", function()
    assert.are.equal("http_server.DROP", tostring(hs.DROP))
    local before = #events
    -- libcurl resends a request that died on a reused connection (up to 5
    -- times), then reports it; on a fresh connection it reports at once.
    -- Either way: no response at all (curl's CURLE_GOT_NOTHING or its
    -- give-up SEND_ERROR), a network error, and the server keeps serving.
    local ok, err = pcall(http.request, { url = base .. "/drop", timeout = 5 })
    assert.is_false(ok)
    assert.is_true(errors.is(err), tostring(err))
    assert.are.equal("network", err.kind)
    assert.truthy(err.curl_code == 52 or err.curl_code == 55, tostring(err.curl_code))
    local drops = #events - before
    assert.is_true(drops >= 1 and drops <= 6, "handler ran " .. drops .. " times")
    for i = before + 1, #events do assert.are.equal("drop", events[i]) end
    assert.are.equal("just a body", http.request{ url = base .. "/string" }.body)
    until_true(function() return srv:stats().in_flight == 0 end, "no request left in flight")
  end)

  it("rejects bad options with a plain error and a taken port with kind bind", function()
    assert.has_error(function() http.serve{} end)
    assert.has_error(function() http.serve{ handler = print, port = 70000 } end)
    assert.has_error(function() http.serve{ handler = print, port = "80" } end)
    assert.has_error(function() http.serve("nope") end)
    local ok, err = pcall(http.serve, { port = srv.port, handler = print })
    assert.is_false(ok)
    assert.is_true(errors.is(err))
    assert.are.equal("bind", err.kind)
    assert.are.equal(srv.port, err.port)
    -- in a network namespace of its own: no resolver is asked (util.offline)
    assert.are.equal("false\tdns\n", require("spec.lua.helpers.util").offline(
      "local ok, e = pcall(require('kpiwatch.http').serve, { host = 'no-such-host.invalid', handler = print })"
        .. " print(ok, e.kind)"))
  end)

  it("parses query strings", function()
    assert.are.same({ a = "1", b = "x y", c = "" }, hs.parse_query("a=1&b=x%20y&c"))
    assert.are.same({ ["k y"] = "+" }, hs.parse_query("k+y=%2B"))
    assert.are.same({}, hs.parse_query(""))
  end)
end)

describe("server:close()", function()
  it("answers requests in flight with 503, cancels their handlers, frees the port", function()
    local started, finished = 0, 0
    local s = http.serve{ handler = function(req)
      if req.path == "/slow" then
        started = started + 1
        task.sleep(10)
        finished = finished + 1
      end
      return "fast"
    end }
    local url = s.url
    assert.are.equal("fast", http.request{ url = url .. "/warm" }.body)
    local ts = {}
    for i = 1, 5 do
      ts[i] = task.spawn(function() return http.request{ url = url .. "/slow", timeout = 20 } end)
    end
    until_true(function() return started == 5 end, "5 handlers")
    assert.are.equal(5, s:stats().in_flight)
    local t0 = task.now()
    s:close()
    assert.is_true(s:wait()) -- every connection closed, long before the handlers' 10 s
    assert.is_true(task.now() - t0 < 2, "closing took " .. (task.now() - t0))
    assert.are.equal("closed", s:stats().state)
    for i = 1, 5 do
      local r = task.wait(ts[i])
      assert.are.equal(503, r.status)
    end
    task.sleep(0.05)
    assert.are.equal(0, finished) -- cancelled, not run to the end
    local ok, err = pcall(http.request, { url = url .. "/warm", timeout = 2 })
    assert.is_false(ok)
    assert.are.equal("connect", err.kind)
    s:close() -- closing twice is harmless
  end)

  it("called from a handler, spares that handler's own response", function()
    local s
    s = http.serve{ handler = function(req)
      if req.path == "/quit" then
        s:close()
        task.sleep(0.05)
        return "bye"
      end
      return "hi"
    end }
    assert.are.equal("hi", http.request{ url = s.url .. "/" }.body)
    local r = http.request{ url = s.url .. "/quit" }
    assert.are.equal(200, r.status)
    assert.are.equal("bye", r.body)
    s:wait()
    assert.are.equal("closed", s:stats().state)
  end)

  it("lets several servers run at once and close independently", function()
    local a = http.serve{ handler = function() return "a" end }
    local b = http.serve{ handler = function() return "b" end }
    assert.are_not.equal(a.port, b.port)
    assert.are.equal("a", http.request{ url = a.url }.body)
    assert.are.equal("b", http.request{ url = b.url }.body)
    a:close()
    a:wait()
    assert.are.equal("b", http.request{ url = b.url }.body)
    b:close()
    b:wait()
  end)
end)
