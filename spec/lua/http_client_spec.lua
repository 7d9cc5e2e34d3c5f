-- http.request against http.serve in the same process: both on the one
-- loop, the handler running as a task while the client waits.
local http = require "kpiwatch.http"
local errors = require "kpiwatch.errors"

local wall = require("kpiwatch.task").now -- monotonic seconds

local BIG = string.rep("0123456789abcdef", 5 * 1024 * 1024 // 16) -- 5 MiB

describe("http.request", function()
  local srv, base
  local max_active = 0 -- client transfers in flight, seen from handlers

  setup(function()
    srv = http.serve{
      port = 0,
      handler = function(req)
        local a = http.stats().active
        if a > max_active then max_active = a end
        local p = req.path
        local code = p:match("^/status/(%d+)$")
        if code then
          return { status = tonumber(code), headers = { ["X-Code"] = code }, body = "status " .. code }
        elseif p == "/echo" then
          return {
            status = 200,
            headers = { ["Content-Type"] = "application/json" },
            body = json.encode{
              method = req.method,
              query = req.query,
              headers = req.headers,
              body = req.body,
            },
          }
        elseif p == "/multi" then
          return { status = 200, headers = { ["Set-Cookie"] = { "a=1", "b=2" }, ["X-One"] = "v" }, body = "" }
        elseif p == "/big" then
          return { status = 200, body = BIG }
        elseif p == "/size" then
          return { status = 200, body = tostring(#req.body) .. " " .. (req.body == BIG and "same" or "diff") }
        elseif p == "/sleep" then
          task.sleep(tonumber(req.query:match("s=([%d.]+)")))
          return { status = 200, body = "slept" }
        elseif p == "/n" then
          return { status = 200, body = req.query }
        elseif p == "/redirect" then
          return { status = 302, headers = { Location = "/n?redirected" }, body = "" }
        end
        return { status = 404, body = "no route" }
      end,
    }
    base = "http://127.0.0.1:" .. srv.port
  end)

  teardown(function()
    srv:close()
  end)

  it("returns every status code, not only 2xx", function()
    for _, code in ipairs{ 200, 201, 204, 301, 400, 404, 418, 500, 503 } do
      local r = http.request{ url = base .. "/status/" .. code }
      assert.are.equal(code, r.status)
      if code ~= 204 then assert.are.equal("status " .. code, r.body) end
    end
  end)

  it("returns lowercased response headers and keeps repeated ones", function()
    local r = http.request{ url = base .. "/multi" }
    assert.are.equal("v", r.headers["x-one"])
    assert.is_nil(r.headers["X-One"])
    assert.are.equal("a=1, b=2", r.headers["set-cookie"])
    local cookies = {}
    for _, h in ipairs(r.header_list) do
      assert.are.equal(h[1]:lower(), h[1])
      if h[1] == "set-cookie" then cookies[#cookies + 1] = h[2] end
    end
    assert.are.same({ "a=1", "b=2" }, cookies)
    assert.are.equal("1.1", r.http_version)
    assert.is_true(r.time > 0 and r.time < 5)
  end)

  it("keeps raw_headers and builds headers tables on first access", function()
    local r = http.request{ url = base .. "/multi" }
    assert.matches("x%-one: v\r\n", r.raw_headers)
    assert.matches("set%-cookie: a=1\r\nset%-cookie: b=2\r\n", r.raw_headers)
    assert.is_nil(rawget(r, "headers"))
    assert.is_nil(rawget(r, "header_list"))
    local h = r.headers
    assert.are.equal(h, rawget(r, "headers"))
    assert.are.equal(h, r.headers)
    assert.are.equal(#r.header_list, select(2, r.raw_headers:gsub("\r\n", "")))
    assert.is_nil(r.nonexistent)
  end)

  it("sends a list of values as repeated header lines", function()
    local r = http.request{ url = base .. "/echo", headers = { ["X-Multi"] = { "1", "2" } } }
    assert.are.equal("1, 2", json.decode(r.body).headers["x-multi"])
  end)

  it("follows redirects only when asked", function()
    local r = http.request{ url = base .. "/redirect" }
    assert.are.equal(302, r.status)
    assert.are.equal("/n?redirected", r.headers.location)
    r = http.request{ url = base .. "/redirect", follow = true }
    assert.are.equal(200, r.status)
    assert.are.equal("redirected", r.body)
    assert.are.equal(base .. "/n?redirected", r.url)
  end)

  it("sends request headers, the User-Agent, the method and the query", function()
    local r = http.request{
      url = base .. "/echo?x=1&y=two",
      method = "delete",
      headers = { ["X-Api-Key"] = "k1", ["X-Empty"] = "", ["X-Num"] = 42 },
    }
    local e = json.decode(r.body)
    assert.are.equal("DELETE", e.method)
    assert.are.equal("x=1&y=two", e.query)
    assert.are.equal("k1", e.headers["x-api-key"])
    assert.are.equal("", e.headers["x-empty"])
    assert.are.equal("42", e.headers["x-num"])
    assert.are.equal(http.user_agent, e.headers["user-agent"])
    assert.matches("^kpiwatch/", http.user_agent)
    -- the caller's User-Agent wins
    r = http.request{ url = base .. "/echo", headers = { ["User-Agent"] = "mine/1" } }
    assert.are.equal("mine/1", json.decode(r.body).headers["user-agent"])
  end)

  it("sends each request its own headers only (handles are recycled)", function()
    for i = 1, 3 do
      local e = json.decode(http.request{ url = base .. "/echo",
        headers = { ["X-Api-Key"] = "k" .. i, ["User-Agent"] = "mine/" .. i } }.body)
      assert.are.equal("k" .. i, e.headers["x-api-key"])
      assert.are.equal("mine/" .. i, e.headers["user-agent"])
      e = json.decode(http.request{ url = base .. "/echo" }.body)
      assert.is_nil(e.headers["x-api-key"])
      assert.are.equal(http.user_agent, e.headers["user-agent"])
      e = json.decode(http.request{ url = base .. "/echo", headers = { ["X-Other"] = "o" } }.body)
      assert.is_nil(e.headers["x-api-key"])
      assert.are.equal("o", e.headers["x-other"])
    end
  end)

  it("sends a list prepared by http.headers, alone, on recycled handles", function()
    local list = http.headers{ ["X-Api-Key"] = "pk", Accept = "application/json", ["X-N"] = 7 }
    local ts = {}
    for i = 1, 8 do
      ts[i] = task.spawn(function() return json.decode(http.request{ url = base .. "/echo", headers = list }.body) end)
    end
    for i = 1, 8 do
      local e = task.wait(ts[i])
      assert.are.equal("pk", e.headers["x-api-key"])
      assert.are.equal("application/json", e.headers["accept"])
      assert.are.equal("7", e.headers["x-n"])
    end
    -- the handles that had it set send nothing of it afterwards
    for _ = 1, 3 do
      local e = json.decode(http.request{ url = base .. "/echo" }.body)
      assert.is_nil(e.headers["x-api-key"])
      e = json.decode(http.request{ url = base .. "/echo", headers = { ["X-Other"] = "o" } }.body)
      assert.is_nil(e.headers["x-api-key"])
      assert.are.equal("o", e.headers["x-other"])
      e = json.decode(http.request{ url = base .. "/echo", headers = list }.body)
      assert.are.equal("pk", e.headers["x-api-key"])
      assert.is_nil(e.headers["x-other"])
    end
    -- with a body (its own copy of the list, with Expect: added)
    local e = json.decode(http.request{ url = base .. "/echo", headers = list, body = "b" }.body)
    assert.are.same({ "POST", "b", "pk" }, { e.method, e.body, e.headers["x-api-key"] })
    assert.is_nil(e.headers["expect"])
    -- closed: refused; handles that still have it set go on safely
    do local _ <close> = list end
    assert.has_error(function() http.request{ url = base .. "/echo", headers = list } end,
      "http.request: headers: the prepared list is closed")
    e = json.decode(http.request{ url = base .. "/echo" }.body)
    assert.is_nil(e.headers["x-api-key"])
    assert.has_error(function() http.headers{ X = "a\r\nInjected: 1" } end)
    assert.has_error(function() http.request{ url = base, headers = io.stdout } end)
  end)

  it("sends request bodies with POST (the default with a body), PUT and PATCH", function()
    local r = http.request{ url = base .. "/echo", body = '{"a":1}',
      headers = { ["Content-Type"] = "application/json" } }
    local e = json.decode(r.body)
    assert.are.equal("POST", e.method)
    assert.are.equal('{"a":1}', e.body)
    assert.are.equal("application/json", e.headers["content-type"])
    assert.is_nil(e.headers["expect"])
    for _, m in ipairs{ "PUT", "PATCH" } do
      e = json.decode(http.request{ url = base .. "/echo", method = m, body = "x\0y" }.body)
      assert.are.equal(m, e.method)
      assert.are.equal("x\0y", e.body)
    end
    -- POST without a body still says Content-Length: 0
    e = json.decode(http.request{ url = base .. "/echo", method = "POST" }.body)
    assert.are.equal("0", e.headers["content-length"])
  end)

  it("HEAD returns headers and no body", function()
    local r = http.request{ url = base .. "/big", method = "HEAD" }
    assert.are.equal(200, r.status)
    assert.are.equal("", r.body)
    assert.are.equal(tostring(#BIG), r.headers["content-length"])
  end)

  it("moves 5 MiB bodies both ways", function()
    local r = http.request{ url = base .. "/big" }
    assert.are.equal(#BIG, #r.body)
    assert.is_true(r.body == BIG)
    r = http.request{ url = base .. "/size", body = BIG }
    assert.are.equal(#BIG .. " same", r.body)
  end)

  it("runs 200 concurrent requests, at most max_concurrent at a time", function()
    http.configure{ max_concurrent = 16 }
    max_active = 0
    local ts = {}
    for i = 1, 200 do
      ts[i] = task.spawn(function() return http.request{ url = base .. "/n?" .. i }.body end)
    end
    for i = 1, 200 do
      assert.are.equal(tostring(i), task.wait(ts[i]))
    end
    http.configure{ max_concurrent = 64 }
    assert.is_true(max_active > 1, "requests overlapped")
    assert.is_true(max_active <= 16, "queued beyond the cap, saw " .. max_active)
    local s = http.stats()
    assert.are.equal(0, s.active)
    assert.are.equal(0, s.queued)
  end)

  it("reuses the keep-alive connection (seen by the server)", function()
    http.request{ url = base .. "/n?warm" }
    local before = srv:stats().connections
    local cbefore = http.stats().connections
    for i = 1, 20 do
      assert.are.equal(200, http.request{ url = base .. "/n?" .. i }.status)
    end
    assert.are.equal(before, srv:stats().connections)
    assert.are.equal(cbefore, http.stats().connections)
  end)

  it("raises timeout when the handler sleeps beyond the client timeout", function()
    local t0 = wall()
    local ok, err = pcall(http.request, { url = base .. "/sleep?s=1.5", timeout = 0.2 })
    local dt = wall() - t0
    assert.is_false(ok)
    assert.is_true(errors.is(err))
    assert.are.equal("timeout", err.kind)
    assert.are.equal(base .. "/sleep?s=1.5", err.url)
    assert.matches("^timeout: ", tostring(err))
    assert.are.equal(28, err.curl_code) -- CURLE_OPERATION_TIMEDOUT
    assert.is_true(dt < 1.2, "took " .. dt)
    -- the server is fine afterwards
    assert.are.equal(200, http.request{ url = base .. "/n?after" }.status)
  end)

  it("raises connect when nothing listens", function()
    local s2 = http.serve{ port = 0, handler = function() return { status = 200 } end }
    local port = s2.port
    s2:close()
    task.sleep(0.05)
    local ok, err = pcall(http.request, { url = "http://127.0.0.1:" .. port .. "/" })
    assert.is_false(ok)
    assert.are.equal("connect", err.kind)
    assert.are.equal("http://127.0.0.1:" .. port .. "/", err.url)
  end)

  it("raises too_large for a body over max_body, per request or configured", function()
    local ok, err = pcall(http.request, { url = base .. "/big", max_body = 1024 * 1024 })
    assert.is_false(ok)
    assert.are.equal("too_large", err.kind)
    assert.matches("1048576", err.message)
    http.configure{ max_body = 4096 }
    ok, err = pcall(http.request, { url = base .. "/big" })
    http.configure{ max_body = 8 * 1024 * 1024 }
    assert.is_false(ok)
    assert.are.equal("too_large", err.kind)
    assert.are.equal(#BIG, #http.request{ url = base .. "/big" }.body)
  end)

  it("raises dns and invalid_url", function()
    -- in a network namespace of its own: no resolver is asked (util.offline)
    assert.are.equal("false\tdns\n", require("spec.lua.helpers.util").offline(
      "local ok, e = pcall(require('kpiwatch.http').request, { url = 'http://no-such-host.invalid/' })"
        .. " print(ok, e.kind)"))
    local ok, err = pcall(http.request, { url = "file:///etc/passwd" })
    assert.is_false(ok)
    assert.are.equal("invalid_url", err.kind)
  end)

  it("raises tls for a server that does not speak TLS", function()
    local ok, err = pcall(http.request, { url = "https://127.0.0.1:" .. srv.port .. "/", timeout = 20 })
    assert.is_false(ok)
    assert.are.equal("tls", err.kind)
  end)

  it("rejects malformed options with a plain error", function()
    assert.has_error(function() http.request{} end)
    assert.has_error(function() http.request{ url = base, timeout = "soon" } end)
    assert.has_error(function() http.request{ url = base, headers = { ["Bad\nName"] = "x" } } end)
    assert.has_error(function() http.request{ url = base, headers = { X = "a\r\nInjected: 1" } } end)
    assert.has_error(function() http.request{ url = base, max_body = 0 } end)
    assert.has_error(function() http.configure{ max_concurrent = 0 } end)
    assert.has_error(function() http.request{ url = base, timout = 1 } end, "http.request: unknown option 'timout'")
    assert.has_error(function() http.request{ url = base, method = "GET X" } end)
  end)

  it("cancels a request in flight and frees its slot", function()
    local t = task.spawn(function() return http.request{ url = base .. "/sleep?s=5" } end)
    task.sleep(0.1)
    assert.are.equal(1, http.stats().active)
    task.cancel(t)
    local ok, err = pcall(task.wait, t)
    assert.is_false(ok)
    assert.matches("cancelled", tostring(err))
    assert.are.equal(0, http.stats().active)
    assert.are.equal(200, http.request{ url = base .. "/n?x" }.status)
  end)

  it("cancels a queued request", function()
    http.configure{ max_concurrent = 1 }
    local t1 = task.spawn(function() return http.request{ url = base .. "/sleep?s=0.3" }.body end)
    local t2 = task.spawn(function() return http.request{ url = base .. "/n?q" }.body end)
    task.sleep(0.05)
    assert.are.equal(1, http.stats().queued)
    task.cancel(t2)
    assert.is_false(pcall(task.wait, t2))
    assert.are.equal(0, http.stats().queued)
    assert.are.equal("slept", task.wait(t1))
    http.configure{ max_concurrent = 64 }
  end)

  it("works where the caller cannot yield", function()
    local bodies = {}
    local keys = { 3, 1, 2 }
    table.sort(keys, function(a, b)
      bodies[#bodies + 1] = http.request{ url = base .. "/n?" .. a }.body
      return a < b
    end)
    assert.are.same({ 1, 2, 3 }, keys)
    assert.is_true(#bodies > 0)
  end)

  it("http.get is a GET with options", function()
    local r = http.get(base .. "/echo", { headers = { ["X-A"] = "b" } })
    local e = json.decode(r.body)
    assert.are.equal("GET", e.method)
    assert.are.equal("b", e.headers["x-a"])
  end)
end)

describe("http.retryable", function()
  it("names the transport failures that may pass on a retry: not dns", function()
    for _, kind in ipairs({ "timeout", "connect", "network" }) do
      assert.is_true(http.retryable(kind), kind)
      assert.is_true(http.retryable(errors.new(kind, "x")), kind)
    end
    for _, kind in ipairs({ "dns", "tls", "too_large", "invalid_url", "server", "nope" }) do
      assert.is_false(http.retryable(kind), kind)
      assert.is_false(http.retryable(errors.new(kind, "x")), kind)
    end
    assert.is_false(http.retryable(nil))
  end)

  it("is the rule of the KPIs client: a closed port is retried", function()
    local kpis = require "kpiwatch.kpis"
    local s = require("kpiwatch.http").serve { port = 0, handler = function() return { status = 200 } end }
    local url = "http://127.0.0.1:" .. s.port
    s:close()
    local ok, e = pcall(kpis.get, "c0ffee00-0000-4000-8000-000000000001",
      { base_url = url, api_key = "k", secret_key = "s", retries = 1, backoff = 0 })
    assert.is_false(ok)
    assert.are.equal("connect", e.kind)
    assert.is_true(e.retryable)
    assert.are.equal(2, e.attempts)
  end)
end)
