-- Specs for the sandbox API (kpiwatch.sandbox) seen from a plain HTTP
-- client: the shapes of its answers must be the real API's.

local sandbox = require "kpiwatch.sandbox"
local fixtures = require "kpiwatch.fixtures"
local errors = require "kpiwatch.errors"
local http = require "kpiwatch.http"

local ids = fixtures.ids
local OUTBOUND = ids["voice-outbound"]
local UNKNOWN = "0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0e"

local wall = require("kpiwatch.task").now -- monotonic seconds

describe("sandbox", function()
  local sb, auth

  local function path(id) return "/simulate/test-executions/" .. id .. "/kpis/" end

  local function get(p, headers, method)
    local h = {}
    for k, v in pairs(auth) do h[k] = v end
    for k, v in pairs(headers or {}) do h[k] = v end
    return http.request { method = method or "GET", url = sb.url .. p, headers = h, timeout = 10 }
  end

  setup(function()
    sb = sandbox.start {}
    auth = { ["X-Api-Key"] = sb.api_key, ["X-Secret-Key"] = sb.secret_key }
  end)
  teardown(function() sb:close() end)

  it("listens on loopback and reports its URL and credentials", function()
    assert.truthy(sb.url:match("^http://127%.0%.0%.1:%d+$"))
    assert.are.equal(sandbox.API_KEY, sb.api_key)
    assert.are.equal(sandbox.SECRET_KEY, sb.secret_key)
    assert.are.equal(#fixtures.list(), #sb.ids())
  end)

  it("serves each fixture body byte for byte as application/json", function()
    for _, id in ipairs(fixtures.kpi_ids()) do
      local r = get(path(id))
      assert.are.equal(200, r.status)
      assert.are.equal(fixtures.get(id).body, r.body)
      assert.are.equal("application/json", r.headers["content-type"])
    end
  end)

  it("answers 401 with the real bodies and WWW-Authenticate: ApiKey", function()
    for _, h in ipairs({ {}, { ["X-Api-Key"] = sb.api_key }, { ["X-Secret-Key"] = sb.secret_key } }) do
      local r = http.request { url = sb.url .. path(OUTBOUND), headers = h }
      assert.are.equal(401, r.status)
      assert.are.equal("ApiKey", r.headers["www-authenticate"])
      local b = json.decode(r.body)
      assert.are.same({ status = false, type = "authentication_error", code = "not_authenticated",
        detail = "Authentication credentials were not provided." }, b)
    end
    local r = get(path(OUTBOUND), { ["X-Secret-Key"] = "wrong" })
    assert.are.equal(401, r.status)
    assert.are.equal("ApiKey", r.headers["www-authenticate"])
    assert.are.equal("authentication_failed", json.decode(r.body).code)
    assert.are.equal("authentication_error", json.decode(r.body).type)
  end)

  it("answers 404 with the not-found body for unknown ids and routes", function()
    local r = get(path(UNKNOWN))
    assert.are.equal(404, r.status)
    local b = json.decode(r.body)
    assert.are.equal(false, b.status)
    assert.are.equal("not_found", b.code)
    assert.are.equal("Test execution not found.", b.detail)
    -- the API routes the path with its trailing slash only
    r = get("/simulate/test-executions/" .. OUTBOUND .. "/kpis")
    assert.are.equal(404, r.status)
    r = get("/simulate/test-executions/not-a-uuid/kpis/")
    assert.are.equal(404, r.status)
  end)

  it("answers 405 to other methods and an empty 200 to HEAD", function()
    local r = get(path(OUTBOUND), nil, "POST")
    assert.are.equal(405, r.status)
    assert.are.equal("method_not_allowed", json.decode(r.body).code)
    r = get(path(OUTBOUND), nil, "HEAD")
    assert.are.equal(200, r.status)
    assert.are.equal("", r.body)
  end)

  it("answers 413 to a request body over max_body (64 KiB) before buffering it", function()
    local before = sb.requests
    local r = http.request { method = "POST", url = sb.url .. path(OUTBOUND), timeout = 10,
      body = ("x"):rep(sandbox.MAX_BODY + 1) }
    assert.are.equal(413, r.status)
    assert.are.equal(before, sb.requests) -- the handler never ran
    r = http.request { method = "POST", url = sb.url .. path(OUTBOUND), timeout = 10, headers = auth,
      body = ("x"):rep(1000) }
    assert.are.equal(405, r.status) -- a small one reaches the API's answer
  end)

  describe("faults", function()
    it("per request, by header or query", function()
      local r = get(path(OUTBOUND) .. "?fault=500")
      assert.are.equal(500, r.status)
      assert.are.same({ status = false, type = "server_error", code = "server_error",
        detail = "A server error occurred." }, json.decode(r.body))
      r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "502" })
      assert.are.equal(502, r.status)
      assert.are.equal("text/html", r.headers["content-type"])
      assert.truthy(r.body:find("<title>502 Bad Gateway</title>", 1, true))
      r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "503" })
      assert.are.equal(503, r.status)
      r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "504" })
      assert.are.equal(504, r.status)
    end)

    it("429 with Retry-After in seconds or as an HTTP date, and the rate-limit body", function()
      local r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "429:3" })
      assert.are.equal(429, r.status)
      assert.are.equal("3", r.headers["retry-after"])
      local b = json.decode(r.body)
      assert.are.equal(false, b.status)
      assert.are.equal("RATE_LIMITED", b.result.code)
      assert.are.equal(3, b.result.retry_after)
      assert.are.equal("string", type(b.result.message))
      r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "429-date:5" })
      assert.are.equal(429, r.status)
      local wait = require("kpiwatch.http").parse_retry_after(r.headers["retry-after"])
      assert.is_true(wait >= 4 and wait <= 5, r.headers["retry-after"])
    end)

    it("broken JSON, HTML with 200, delay and a combination", function()
      local r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "broken" })
      assert.are.equal(200, r.status)
      assert.is_false(pcall(json.decode, r.body))
      r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "html" })
      assert.are.equal(200, r.status)
      assert.truthy(r.body:find("<html", 1, true))
      local t0 = wall()
      r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "delay:0.3" })
      assert.are.equal(200, r.status)
      assert.is_true(wall() - t0 >= 0.3)
      t0 = wall()
      r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "delay:0.2+500" })
      assert.are.equal(500, r.status)
      assert.is_true(wall() - t0 >= 0.2)
      r = get(path(ids["fault-500"]), { ["X-Sandbox-Fault"] = "ok" })
      assert.are.equal(404, r.status) -- a fault fixture has no body of its own
    end)

    it("drop: no KPIs answer (a dropped connection, or an empty 502 where the server cannot drop)", function()
      local ok, r = pcall(get, path(OUTBOUND), { ["X-Sandbox-Fault"] = "drop" })
      if ok then
        assert.are.equal(502, r.status)
        assert.are.equal("", r.body)
      else
        assert.is_true(errors.is(r))
        assert.truthy(r.kind == "network" or r.kind == "connect", r.kind)
      end
      assert.are.equal(200, get(path(OUTBOUND)).status) -- and it keeps serving
    end)

    it("rejects an unknown fault spec with 400", function()
      local r = get(path(OUTBOUND), { ["X-Sandbox-Fault"] = "explode" })
      assert.are.equal(400, r.status)
      assert.are.equal("invalid_fault", json.decode(r.body).code)
      assert.is_nil(sandbox.parse_fault("429:x"))
      assert.is_nil(sandbox.parse_fault(""))
      assert.is_nil(sandbox.parse_fault("delay:-1"))
      assert.are.equal(2, #sandbox.parse_fault("delay:1+429:2"))
    end)

    it("by fixture: the fault fixtures and flaky", function()
      assert.are.equal(500, get(path(ids["fault-500"])).status)
      assert.are.equal(502, get(path(ids["fault-502-html"])).status)
      assert.are.equal(429, get(path(ids["fault-429"])).status)
      assert.are.equal("1", get(path(ids["fault-429"])).headers["retry-after"])
      assert.are.equal(200, get(path(ids["fault-html-200"])).status)
      sb:reset_counts()
      assert.are.equal(500, get(path(ids.flaky)).status)
      assert.are.equal(200, get(path(ids.flaky)).status)
      assert.are.equal(500, get(path(ids.flaky)).status)
      assert.are.equal(2 + 1, sb:count(ids.flaky))
    end)

    it("queued for an id, then permanent for an id", function()
      sb:inject(OUTBOUND, "500", 2)
      assert.are.equal(500, get(path(OUTBOUND)).status)
      assert.are.equal(500, get(path(OUTBOUND)).status)
      assert.are.equal(200, get(path(OUTBOUND)).status)
      sb:set_fault(OUTBOUND, "404")
      assert.are.equal(404, get(path(OUTBOUND)).status)
      assert.are.equal(404, get(path(OUTBOUND)).status)
      sb:set_fault(OUTBOUND, nil)
      assert.are.equal(200, get(path(OUTBOUND)).status)
      assert.are.equal("config", select(2, pcall(sb.inject, sb, OUTBOUND, "nonsense")).kind)
    end)

    it("at random with a fixed seed: reproducible", function()
      local function run(seed)
        local s = sandbox.start { faults = { rates = { ["500"] = 0.3, ["429:1"] = 0.2 }, seed = seed } }
        local seq = {}
        for i = 1, 60 do
          local r = http.request { url = s.url .. path(OUTBOUND), headers = auth }
          seq[i] = r.status
        end
        s:close()
        return seq
      end
      local a, b, c = run(42), run(42), run(7)
      assert.are.same(a, b)
      assert.are_not.same(a, c)
      local n = { [200] = 0, [500] = 0, [429] = 0 }
      for _, st in ipairs(a) do n[st] = n[st] + 1 end
      assert.is_true(n[500] >= 8 and n[500] <= 30, "500s: " .. n[500])
      assert.is_true(n[429] >= 4 and n[429] <= 22, "429s: " .. n[429])
      assert.is_true(n[200] >= 15, "200s: " .. n[200])
      local bad_rates = { faults = { rates = { ["500"] = 0.8, html = 0.5 } } }
      assert.are.equal("config", select(2, pcall(sandbox.start, bad_rates)).kind)
    end)
  end)

  describe("fixtures folder", function()
    local dir

    local function write(name, text)
      local f = assert(io.open(dir .. "/" .. name, "wb"))
      f:write(text)
      f:close()
    end

    before_each(function()
      local p = io.popen("mktemp -d")
      dir = p:read("l")
      p:close()
    end)
    after_each(function()
      os.execute("rm -rf '" .. dir .. "'")
    end)

    it("serves <uuid>.json files byte for byte and ignores other files", function()
      local body = '{"total_calls": 3, "callsAttempted": 3, "agent_type": "text", "avg_my_eval": 42.5}'
      write(UNKNOWN .. ".json", body)
      write("README.txt", "not a fixture")
      write("notauuid.json", "{}")
      local s = sandbox.start { fixtures_dir = dir, api_key = "k1", secret_key = "s1" }
      local own = { ["X-Api-Key"] = "k1", ["X-Secret-Key"] = "s1" }
      local r = http.request { url = s.url .. path(UNKNOWN), headers = own }
      local r2 = http.request { url = s.url .. path(OUTBOUND), headers = own }
      local r3 = http.request { url = s.url .. path(OUTBOUND), headers = auth }
      s:close()
      assert.are.equal(200, r.status)
      assert.are.equal(body, r.body)
      assert.are.equal(200, r2.status)
      assert.are.equal(401, r3.status)
    end)

    it("names the file that is not a KPIs JSON object", function()
      write(UNKNOWN .. ".json", '{"total_calls": ')
      local ok, e = pcall(sandbox.start, { fixtures_dir = dir })
      assert.is_false(ok)
      assert.is_true(errors.is(e))
      assert.are.equal("config", e.kind)
      assert.truthy(e.message:find(UNKNOWN .. ".json", 1, true))
      ok, e = pcall(sandbox.start, { fixtures_dir = dir .. "/missing" })
      assert.is_false(ok)
      assert.are.equal("config", e.kind)
    end)
  end)
end)
