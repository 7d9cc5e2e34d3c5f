-- Specs for the KPIs client (kpiwatch.kpis) against the in-process sandbox
-- and against small http.serve servers that answer what the sandbox never
-- does. Run by the binary: busted --lua=build/kpiwatch spec/lua/kpis_spec.lua

local kpis = require "kpiwatch.kpis"
local sandbox = require "kpiwatch.sandbox"
local fixtures = require "kpiwatch.fixtures"
local model = require "kpiwatch.model"
local errors = require "kpiwatch.errors"
local http = require "kpiwatch.http"
local task = require "kpiwatch.task"

local ids = fixtures.ids
local OUTBOUND = ids["voice-outbound"]
local UNKNOWN = "0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0e"

local wall = require("kpiwatch.task").now -- monotonic seconds

local raises = require("spec.lua.helpers.util").raises

-- Capture what is written to io.stderr while fn runs.
local function capture_stderr(fn)
  local buf = {}
  local real = io.stderr
  io.stderr = { write = function(self, ...)
    for _, s in ipairs({ ... }) do buf[#buf + 1] = tostring(s) end
    return self
  end, flush = function() end }
  local ok, e = pcall(fn)
  io.stderr = real
  return table.concat(buf), ok, e
end

describe("kpis", function()
  local sb

  setup(function()
    sb = sandbox.start {}
  end)

  teardown(function()
    sb:close()
    kpis._reset()
  end)

  before_each(function()
    kpis._reset()
    kpis._random = math.random
    kpis.configure {
      base_url = sb.url, api_key = sb.api_key, secret_key = sb.secret_key,
      backoff = 0.01, backoff_max = 0.05,
    }
    sb:reset_counts()
  end)

  describe("get", function()
    it("returns a KPI object for a fixture", function()
      local k = kpis.get(OUTBOUND)
      assert.is_true(model.is(k))
      assert.are.equal(OUTBOUND, k.execution_id)
      assert.are.equal(120, k.calls_attempted)
      assert.are.equal(120, k.callsAttempted)
      assert.are.equal(91.1, k:evals().task_completion)
      assert.are.equal(1, sb:count(OUTBOUND))
    end)

    it("accepts an upper-case UUID and asks for the canonical one", function()
      local k = kpis.get(OUTBOUND:upper())
      assert.are.equal(OUTBOUND, k.execution_id)
      assert.are.equal(1, sb:count(OUTBOUND))
    end)

    it("reads every fixture in both casings", function()
      for _, id in ipairs(fixtures.kpi_ids()) do
        local k = kpis.get(id)
        assert.are.equal(k.calls_attempted, k.callsAttempted)
        assert.are.equal(k.scenario_graphs, k.scenarioGraphs)
        assert.are.equal("integer", math.type(k.total_calls))
      end
    end)

    it("works from a foreign coroutine and from separate tasks at once", function()
      local k = coroutine.wrap(function() return kpis.get(ids["text-agent"]) end)()
      assert.is_true(k:is_text())
      local ts = {}
      for i = 1, 5 do
        ts[i] = task.spawn(function()
          return kpis.get(ids["voice-inbound"], { headers = { ["X-Sandbox-Fault"] = "delay:0.5" } })
        end)
      end
      local t0 = wall()
      local rs = task.all(ts)
      -- one after another they would take 2.5 s
      assert.is_true(wall() - t0 < 1.5, "five 0.5 s requests in separate tasks ran one after another")
      for _, r in ipairs(rs) do assert.are.equal(64, r[1].total_calls) end
    end)
  end)

  describe("errors", function()
    it("invalid_id: no request is sent and the message stays one short line", function()
      local bad = { "", "abc", OUTBOUND .. "x", " " .. OUTBOUND, "../../etc/passwd",
        "c0ffee00%2D0000-4000-8000-000000000001", "c0ffee00-0000-4000-8000-00000000000é",
        "c0ffee00-0000-4000-8000-000000000001/kpis", string.rep("a", 10 * 1024 * 1024),
        "g0ffee00-0000-4000-8000-000000000001", 42, nil, {} }
      for i = 1, 13 do
        local e = raises(function() return kpis.get(bad[i]) end)
        assert.are.equal("invalid_id", e.kind)
        assert.is_false(e.retryable)
        assert.is_true(#e.message < 120, "message too long for input " .. i)
        assert.falsy(e.message:find("\n"))
      end
      assert.are.equal(0, sb:count())
    end)

    it("config: no credentials names FI_API_KEY and FI_SECRET_KEY", function()
      if (os.getenv("FI_API_KEY") or "") ~= "" or (os.getenv("FI_SECRET_KEY") or "") ~= "" then
        pending("FI_API_KEY / FI_SECRET_KEY are set in this environment")
        return
      end
      kpis._reset()
      kpis.configure { base_url = sb.url }
      local e = raises(function() return kpis.get(OUTBOUND) end)
      assert.are.equal("config", e.kind)
      assert.truthy(e.message:find("FI_API_KEY", 1, true))
      assert.truthy(e.message:find("FI_SECRET_KEY", 1, true))
      kpis.configure { api_key = "only-the-key" }
      e = raises(function() return kpis.get(OUTBOUND) end)
      assert.are.equal("config", e.kind)
      assert.truthy(e.message:find("missing FI_SECRET_KEY", 1, true))
      assert.are.equal(0, sb:count())
    end)

    it("config: unknown or ill-typed options", function()
      assert.are.equal("config", raises(function() kpis.configure { timeot = 3 } end).kind)
      assert.are.equal("config", raises(function() kpis.configure { retries = -1 } end).kind)
      assert.are.equal("config", raises(function() kpis.configure { rate = "fast" } end).kind)
      assert.are.equal("config", raises(function() kpis.get(OUTBOUND, { timeout = "soon" }) end).kind)
    end)

    it("auth: 401 quotes the server and is never retried", function()
      local e = raises(function() return kpis.get(OUTBOUND, { secret_key = "wrong-secret" }) end)
      assert.are.equal("auth", e.kind)
      assert.are.equal(401, e.status)
      assert.is_false(e.retryable)
      assert.truthy(e.message:find("Invalid API key or secret key.", 1, true))
      assert.are.equal(OUTBOUND, e.execution_id)
      assert.are.equal(1, sb:count(OUTBOUND))
    end)

    it("not_found: 404 quotes the server and is never retried", function()
      local e = raises(function() return kpis.get(UNKNOWN) end)
      assert.are.equal("not_found", e.kind)
      assert.are.equal(404, e.status)
      assert.are.equal("Test execution not found.", e.message)
      assert.are.equal("not_found", e.code)
      assert.are.equal(UNKNOWN, e.execution_id)
      assert.are.equal("not_found: Test execution not found.", tostring(e))
      assert.are.equal(1, sb:count(UNKNOWN))
    end)

    it("server: 500 is retried `retries` times, then raised", function()
      local e = raises(function() return kpis.get(ids["fault-500"], { retries = 2 }) end)
      assert.are.equal("server", e.kind)
      assert.are.equal(500, e.status)
      assert.is_true(e.retryable)
      assert.are.equal("A server error occurred.", e.message)
      assert.are.equal(3, e.attempts)
      assert.are.equal(3, sb:count(ids["fault-500"]))
    end)

    it("server: an HTML 502 gateway page", function()
      local e = raises(function() return kpis.get(ids["fault-502-html"], { retries = 1 }) end)
      assert.are.equal("server", e.kind)
      assert.are.equal(502, e.status)
      assert.truthy(e.message:find("502 Bad Gateway", 1, true))
      assert.are.equal(2, sb:count(ids["fault-502-html"]))
    end)

    it("protocol: broken JSON and an HTML page with 200, not retried", function()
      local e = raises(function() return kpis.get(ids["fault-broken-json"]) end)
      assert.are.equal("protocol", e.kind)
      assert.are.equal(200, e.status)
      assert.are.equal(1, sb:count(ids["fault-broken-json"]))
      e = raises(function() return kpis.get(ids["fault-html-200"]) end)
      assert.are.equal("protocol", e.kind)
      assert.truthy(e.message:find("HTML", 1, true))
    end)

    it("rate_limited: 429 with its body and Retry-After", function()
      local e = raises(function() return kpis.get(ids["fault-429"], { retries = 0 }) end)
      assert.are.equal("rate_limited", e.kind)
      assert.are.equal(429, e.status)
      assert.are.equal(1, e.retry_after)
      assert.are.equal("RATE_LIMITED", e.code)
      assert.truthy(e.message:find("Rate limit exceeded", 1, true))
      assert.is_true(e.retryable)
    end)

    it("timeout: a slow server, retried", function()
      local t0 = wall()
      local e = raises(function()
        return kpis.get(OUTBOUND, { timeout = 0.2, retries = 1, headers = { ["X-Sandbox-Fault"] = "delay:2" } })
      end)
      assert.are.equal("timeout", e.kind)
      assert.is_true(e.retryable)
      assert.are.equal(2, e.attempts)
      assert.are.equal(2, sb:count(OUTBOUND))
      assert.is_true(wall() - t0 < 3) -- without the timeout: 4 s
    end)

    it("connect: nobody listening, retried", function()
      local s = http.serve { port = 0, handler = function() return "" end }
      local port = s.port
      s:close()
      local e = raises(function()
        return kpis.get(OUTBOUND, { base_url = "http://127.0.0.1:" .. port, retries = 2 })
      end)
      assert.are.equal("connect", e.kind)
      assert.is_true(e.retryable)
      assert.are.equal(3, e.attempts)
    end)

    it("refuses plain http to a non-loopback host unless allowed", function()
      local e = raises(function() return kpis.get(OUTBOUND, { base_url = "http://api.example.com" }) end)
      assert.are.equal("config", e.kind)
      assert.truthy(e.message:find("http://", 1, true))
      assert.has_no.errors(function() kpis._check_base_url("http://api.example.com", true) end)
      assert.has_no.errors(function() kpis._check_base_url("http://localhost:8000/", false) end)
      assert.has_no.errors(function() kpis._check_base_url("http://[::1]:8000", false) end)
      assert.has_no.errors(function() kpis._check_base_url("https://api.futureagi.com", false) end)
      assert.are.equal(0, sb:count())
    end)

    it("rejects malformed base URLs without echoing credentials", function()
      for _, url in ipairs({ "ftp://host", "api.futureagi.com", "https://", "https://host:99999",
        "https://host/p?q=1", "https://user:hunter2@host", "" }) do
        local e = raises(function() return kpis.get(OUTBOUND, { base_url = url }) end)
        assert.are.equal("config", e.kind, url)
        assert.falsy(e.message:find("hunter2", 1, true))
      end
    end)
  end)

  describe("retries", function()
    it("a flaky id succeeds on the retry", function()
      local k = kpis.get(ids.flaky)
      assert.are.equal(120, k.total_calls)
      assert.are.equal(2, sb:count(ids.flaky))
    end)

    it("makes 1 + retries attempts, call options over configure", function()
      kpis.configure { retries = 0 }
      raises(function() return kpis.get(ids["fault-500"]) end)
      assert.are.equal(1, sb:count(ids["fault-500"]))
      sb:reset_counts()
      raises(function() return kpis.get(ids["fault-500"], { retries = 3 }) end)
      assert.are.equal(4, sb:count(ids["fault-500"]))
    end)

    it("never retries 4xx other than 429", function()
      for _, spec in ipairs({ "401", "404" }) do
        sb:reset_counts()
        raises(function() return kpis.get(OUTBOUND, { retries = 3, headers = { ["X-Sandbox-Fault"] = spec } }) end)
        assert.are.equal(1, sb:count(OUTBOUND), spec)
      end
    end)

    it("backs off exponentially with full jitter, capped", function()
      -- the jitter at its maximum: delays 0.1, 0.2, 0.4
      kpis._random = function() return 1 end
      local t0 = wall()
      raises(function() return kpis.get(ids["fault-500"], { retries = 3, backoff = 0.1, backoff_max = 10 }) end)
      local dt = wall() - t0
      assert.is_true(dt >= 0.7, "waited " .. dt)
      assert.is_true(dt < 2.0, "waited " .. dt)
      -- capped at backoff_max: 0.2 + 0.25 + 0.25 (uncapped: 1.4)
      t0 = wall()
      raises(function() return kpis.get(ids["fault-500"], { retries = 3, backoff = 0.2, backoff_max = 0.25 }) end)
      dt = wall() - t0
      assert.is_true(dt >= 0.7 and dt < 1.3, "waited " .. dt)
      -- the jitter at its minimum: no wait at all
      kpis._random = function() return 0 end
      t0 = wall()
      raises(function() return kpis.get(ids["fault-500"], { retries = 3, backoff = 1, backoff_max = 10 }) end)
      dt = wall() - t0
      assert.is_true(dt < 2, "waited " .. dt) -- without jitter: 7 s
    end)

    it("waits at least Retry-After (seconds) after a 429", function()
      sb:inject(OUTBOUND, "429:1")
      local t0 = wall()
      local k = kpis.get(OUTBOUND, { backoff = 0 })
      local dt = wall() - t0
      assert.are.equal(120, k.total_calls)
      assert.are.equal(2, sb:count(OUTBOUND))
      assert.is_true(dt >= 1.0, "waited " .. dt)
      assert.is_true(dt < 3.0, "waited " .. dt)
    end)

    it("waits for an HTTP-date Retry-After", function()
      sb:inject(OUTBOUND, "429-date:2")
      local t0 = wall()
      kpis.get(OUTBOUND, { backoff = 0 })
      local dt = wall() - t0
      -- the date has whole-second precision: 2 s from a moment within the current second
      assert.is_true(dt >= 0.9, "waited " .. dt)
      assert.is_true(dt < 3.0, "waited " .. dt)
    end)

    it("gives up at once when Retry-After exceeds max_retry_after", function()
      sb:inject(OUTBOUND, "429:30")
      local t0 = wall()
      local e = raises(function() return kpis.get(OUTBOUND, { max_retry_after = 2 }) end)
      assert.are.equal("rate_limited", e.kind)
      assert.are.equal(30, e.retry_after)
      assert.are.equal(1, sb:count(OUTBOUND))
      assert.is_true(wall() - t0 < 1)
    end)
  end)

  describe("http.parse_retry_after", function()
    local P = require("kpiwatch.http").parse_retry_after
    local T = 784111777 -- Sun, 06 Nov 1994 08:49:37 GMT

    it("reads delay-seconds", function()
      assert.are.equal(120, P("120"))
      assert.are.equal(5, P(" 5 "))
      assert.are.equal(0, P("0"))
      assert.are.equal(1.5, P("1.5"))
      assert.are.equal(7, P(7))
      assert.are.equal(2 ^ 31, P("99999999999999999999999"))
    end)

    it("reads the three HTTP date forms", function()
      assert.are.equal(10, P("Sun, 06 Nov 1994 08:49:37 GMT", T - 10))
      assert.are.equal(10, P("Sunday, 06-Nov-94 08:49:37 GMT", T - 10))
      assert.are.equal(10, P("Sun Nov  6 08:49:37 1994", T - 10))
      assert.are.equal(0, P("Sun, 06 Nov 1994 08:49:37 GMT", T + 100))
      assert.are.equal(86400 + 1, P("Thu, 01 Jan 1970 00:00:01 GMT", -86400))
      assert.are.equal(951782400 - 1, P("Tue, 29 Feb 2000 00:00:00 GMT", 1))
      local now = os.time()
      local d = P(require("kpiwatch.time").http_date(now + 30))
      assert.is_true(d >= 29 and d <= 30)
    end)

    it("returns nil for anything else, and never raises", function()
      for _, v in ipairs({ "", "-1", "soon", "1e3", "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Xyz 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 PST",
        string.rep("9", 1000000), "\0", "12 34" }) do
        assert.is_nil(P(v), v:sub(1, 40))
      end
      assert.is_nil(P(nil))
      assert.is_nil(P({}))
      assert.is_nil(P(-3))
      assert.is_nil(P(0 / 0))
      math.randomseed(7)
      for _ = 1, 2000 do
        local n = math.random(0, 40)
        local b = {}
        for j = 1, n do b[j] = string.char(math.random(0, 255)) end
        local ok, r = pcall(P, table.concat(b))
        assert.is_true(ok)
        assert.is_true(r == nil or (type(r) == "number" and r >= 0))
      end
    end)
  end)

  describe("server messages", function()
    local srv, url
    local answers = {}

    setup(function()
      srv = http.serve { port = 0, handler = function(req)
        local id = req.path:match("/test%-executions/([^/]+)/kpis/$")
        local a = answers[id]
        if type(a) == "function" then return a(req) end
        return a or { status = 404, body = "" }
      end }
      url = srv.url
    end)
    teardown(function() srv:close() end)

    local function answer(status, body, headers)
      answers[UNKNOWN] = { status = status, body = body, headers = headers }
      return raises(function() return kpis.get(UNKNOWN, { base_url = url, retries = 0 }) end)
    end

    it("takes detail, then message, then result, then error", function()
      assert.are.equal("D", answer(500, '{"detail": "D", "message": "M", "result": "R", "error": "E"}').message)
      assert.are.equal("M", answer(500, '{"message": "M", "result": "R", "error": "E"}').message)
      assert.are.equal("R", answer(500, '{"result": "R", "error": "E"}').message)
      assert.are.equal("RM", answer(500, '{"result": {"message": "RM"}, "error": "E"}').message)
      assert.are.equal("E", answer(500, '{"error": "E"}').message)
      assert.are.equal("HTTP 500 Internal Server Error", answer(500, '{}').message)
      assert.are.equal("HTTP 503 Service Unavailable", answer(503, '').message)
    end)

    it("a 404 without the API's error JSON says the URL may be wrong, not 'execution not found'", function()
      for _, body in ipairs({ "", "<html><title>404 Not Found</title></html>", "{}", "Not Found" }) do
        local e = answer(404, body)
        assert.are.equal("not_found", e.kind)
        assert.is_nil(e.message:find("Test execution not found", 1, true), e.message)
        assert.truthy(e.message:find("the URL may be wrong (check FI_BASE_URL; requested " .. url, 1, true), e.message)
        assert.truthy(e.message:find("/test-executions/" .. UNKNOWN .. "/kpis/", 1, true), e.message)
      end
      assert.truthy(answer(404, "").message:find("HTTP 404 Not Found with an empty body:", 1, true))
      -- the API's own 404 is quoted as it is
      local e = answer(404, '{"status": false, "code": "not_found", "message": "Test execution not found."}')
      assert.are.equal("Test execution not found.", e.message)
    end)

    it("classifies other 4xx as `request` and redirects as `protocol`", function()
      local e = answer(400, '{"detail": "Bad id."}')
      assert.are.equal("request", e.kind)
      assert.are.equal("Bad id.", e.message)
      e = answer(301, '', { location = "https://elsewhere.example/" })
      assert.are.equal("protocol", e.kind)
    end)

    it("unwraps an enveloped 200 body and sends both credential headers", function()
      local seen
      answers[UNKNOWN] = function(req)
        seen = req.headers
        return { status = 200, body = '{"status": true, "result": {"total_calls": 9, "callsAttempted": 9}}' }
      end
      local k = kpis.get(UNKNOWN, { base_url = url })
      assert.are.equal(9, k.calls_attempted)
      assert.are.equal(sb.api_key, seen["x-api-key"])
      assert.are.equal(sb.secret_key, seen["x-secret-key"])
    end)

    it("treats a 200 error body and a non-KPI object as protocol errors", function()
      answers[UNKNOWN] = { status = 200, body = '{"status": false, "detail": "nope"}' }
      assert.are.equal("protocol", raises(function() return kpis.get(UNKNOWN, { base_url = url }) end).kind)
      answers[UNKNOWN] = { status = 200, body = '[{"total_calls": 1}]' }
      assert.are.equal("protocol", raises(function() return kpis.get(UNKNOWN, { base_url = url }) end).kind)
    end)

    it("never lets a secret through, even when the server echoes it", function()
      answers[UNKNOWN] = function(req)
        return { status = 401,
          body = '{"detail": "bad key ' .. req.headers["x-secret-key"] .. ' / ' .. req.headers["x-api-key"] .. '"}' }
      end
      local e = raises(function() return kpis.get(UNKNOWN, { base_url = url, retries = 0 }) end)
      answers[UNKNOWN] = function(req)
        return { status = 401, body = '{"detail": "bad key ' .. req.headers["x-secret-key"] .. '"}' }
      end
      local out, ok, e2 = capture_stderr(function() return kpis.get(UNKNOWN, { base_url = url, verbose = true }) end)
      assert.is_false(ok)
      for _, text in ipairs({ tostring(e), e.message, out, tostring(e2) }) do
        assert.falsy(text:find(sb.secret_key, 1, true), text)
        assert.falsy(text:find(sb.api_key, 1, true), text)
      end
      assert.truthy(e.message:find("[REDACTED]", 1, true))
    end)
  end)

  describe("secrets and traces", function()
    it("never shows the secret in errors, traces or the printed config", function()
      local secret = "s3cr3t-" .. tostring(math.random(1e9))
      local key = "k3y-" .. tostring(math.random(1e9))
      local texts = {}
      local out = capture_stderr(function()
        for _, id in ipairs({ OUTBOUND, UNKNOWN, ids["fault-500"], ids["fault-429"], ids["fault-502-html"],
          ids["fault-broken-json"], "not-a-uuid" }) do
          local _, e = pcall(kpis.get, id, { secret_key = secret, api_key = key, verbose = true, retries = 1,
            max_retry_after = 0 })
          texts[#texts + 1] = tostring(e)
          if errors.is(e) then
            for _, v in pairs(e) do texts[#texts + 1] = tostring(v) end
          end
        end
        local _, e = pcall(kpis.get, OUTBOUND, { verbose = true, secret_key = secret, api_key = key,
          base_url = "https://user:" .. secret .. "@example.com" })
        texts[#texts + 1] = tostring(e)
      end)
      texts[#texts + 1] = out
      kpis.configure { secret_key = secret, api_key = key }
      local cfg = kpis.config()
      texts[#texts + 1] = tostring(cfg)
      for _, v in pairs(cfg) do texts[#texts + 1] = tostring(v) end
      local all = table.concat(texts, "\n")
      assert.falsy(all:find(secret, 1, true))
      assert.falsy(all:find(key, 1, true))
      assert.truthy(tostring(cfg):find("[REDACTED]", 1, true))
      -- and the trace did say something useful
      assert.truthy(out:find("GET " .. sb.url .. "/simulate/test-executions/" .. UNKNOWN .. "/kpis/ -> 401", 1, true))
    end)

    it("traces method, URL, status, timing and retries with verbose", function()
      local out = capture_stderr(function()
        kpis.get(ids.flaky, { verbose = true })
      end)
      local url = sb.url .. "/simulate/test-executions/" .. ids.flaky .. "/kpis/"
      assert.truthy(out:find("GET " .. url .. " -> 500 server (", 1, true), out)
      assert.truthy(out:find("retry 1/3 in", 1, true), out)
      assert.truthy(out:find("GET " .. url .. " -> 200 (", 1, true), out)
      assert.truthy(out:match("%d+%.%d ms"), out)
      local quiet = capture_stderr(function() kpis.get(OUTBOUND) end)
      assert.are.equal("", quiet)
    end)
  end)

  describe("configuration precedence", function()
    it("call options > configure > flags > environment > default", function()
      kpis._reset()
      local env = os.getenv("FI_BASE_URL")
      assert.are.equal((env and env ~= "") and env or "https://api.futureagi.com", kpis.config().base_url)
      kpis._set_flags { base_url = "http://127.0.0.1:1", timeout = 7 }
      assert.are.equal("http://127.0.0.1:1", kpis.config().base_url)
      assert.are.equal(7, kpis.config().timeout)
      kpis.configure { base_url = sb.url }
      assert.are.equal(sb.url, kpis.config().base_url)
      assert.are.equal(7, kpis.config().timeout)
      assert.are.equal("http://127.0.0.1:2", kpis.config { base_url = "http://127.0.0.1:2" }.base_url)
      assert.are.equal(3, kpis.config().retries)
      -- and requests follow it: the flags' credentials, configure's URL
      kpis._set_flags { api_key = sb.api_key, secret_key = sb.secret_key }
      assert.are.equal(120, kpis.get(OUTBOUND).total_calls)
    end)

    it("a call's options win over a configuration that requests already used", function()
      assert.are.equal(120, kpis.get(OUTBOUND).total_calls) -- the cached configuration, prepared
      assert.are.equal("auth", raises(function() return kpis.get(OUTBOUND, { api_key = "not-the-key" }) end).kind)
      local e = raises(function() return kpis.get(OUTBOUND, { base_url = "http://127.0.0.1:1", retries = 0 }) end)
      assert.are.equal("connect", e.kind)
      assert.are.equal("auth", kpis.get_all({ OUTBOUND }, { api_key = "not-the-key", concurrency = 1 })[1].kind)
      assert.are.equal(120, kpis.get(OUTBOUND).total_calls)
    end)

    it("point_at points the client at a sandbox, below kpis.configure", function()
      kpis._reset()
      local sb2 = sandbox.start_for_client()
      -- starting a sandbox does not touch the client
      assert.are_not.equal(sb2.url, kpis.config().base_url)
      kpis.point_at(sb2)
      assert.are.equal(sb2.url, kpis.config().base_url)
      kpis.configure { base_url = sb.url }
      assert.are.equal(sb.url, kpis.config().base_url)
      kpis._reset()
      kpis.point_at { base_url = sb2.url, api_key = sb2.api_key, secret_key = sb2.secret_key }
      assert.has_error(function() kpis.point_at { api_key = "k" } end)
      local ok, k = pcall(kpis.get, OUTBOUND)
      sb2:close()
      assert.is_true(ok, tostring(k))
      assert.are.equal(1, sb2:count(OUTBOUND))
      assert.are.equal(0, sb:count(OUTBOUND))
    end)
  end)

  describe("rate limit", function()
    it("spaces requests to the configured rate across tasks", function()
      kpis.configure { rate = "20/s" }
      local list = {}
      for i = 1, 11 do list[i] = OUTBOUND end
      local t0 = wall()
      local rs = kpis.get_all(list, { concurrency = 11 })
      local dt = wall() - t0
      for i = 1, 11 do assert.is_true(model.is(rs[i])) end
      -- 11 requests at 20/s with a burst of 1: 10 intervals of 50 ms
      assert.is_true(dt >= 0.45, "took " .. dt)
      assert.is_true(dt < 3, "took " .. dt)
    end)

    it("lets a burst through at once, then the rate", function()
      kpis.configure { rate = "5/s", burst = 5 }
      local list = {}
      for i = 1, 5 do list[i] = OUTBOUND end
      local t0 = wall()
      kpis.get_all(list, { concurrency = 5 })
      assert.is_true(wall() - t0 < 0.6) -- one at a time at 5/s: 0.8 s
      kpis.get(OUTBOUND) -- the burst is spent: waits for the slot at t0 + 0.2
      assert.is_true(wall() - t0 >= 0.15)
    end)

    it("is off by default", function()
      local list = {}
      for i = 1, 20 do list[i] = OUTBOUND end
      local t0 = wall()
      kpis.get_all(list, { concurrency = 20 })
      assert.is_true(wall() - t0 < 2)
    end)
  end)

  describe("get_all", function()
    it("returns results in order with an error object in place of each failure", function()
      local list = { OUTBOUND, "nope", UNKNOWN, ids["text-agent"], ids["fault-500"], ids.empty }
      local rs = kpis.get_all(list, { concurrency = 3, retries = 1 })
      assert.are.equal(6, #rs)
      assert.are.equal(OUTBOUND, rs[1].execution_id)
      assert.are.equal("invalid_id", rs[2].kind)
      assert.are.equal("not_found", rs[3].kind)
      assert.are.equal(UNKNOWN, rs[3].execution_id)
      assert.is_true(rs[4]:is_text())
      assert.are.equal("server", rs[5].kind)
      assert.is_nil(rs[6].avg_score)
      assert.are.same({}, kpis.get_all({}))
    end)

    it("raises a config error once instead of one per id", function()
      local e = raises(function() return kpis.get_all({ OUTBOUND }, { base_url = "gopher://x" }) end)
      assert.are.equal("config", e.kind)
      assert.are.equal("config", raises(function() kpis.get_all({ OUTBOUND }, { concurrency = 0 }) end).kind)
    end)

    it("each() hands every result over as it arrives", function()
      local list = { OUTBOUND, UNKNOWN, ids["text-agent"], "bad-id" }
      local seen = {}
      local fetched, failed = kpis.each(list, function(r, id, i)
        assert.are.equal(list[i], id)
        seen[i] = model.is(r) and "ok" or r.kind
      end, { concurrency = 2 })
      assert.are.equal(2, fetched)
      assert.are.equal(2, failed)
      assert.are.same({ "ok", "not_found", "ok", "invalid_id" }, seen)
      local e = select(2, pcall(kpis.each, { OUTBOUND, OUTBOUND, OUTBOUND }, function() error("stop here") end))
      assert.truthy(tostring(e):find("stop here", 1, true))
    end)

    it("fetches 100 executions with concurrency 20", function()
      local many = {}
      local body = fixtures.get(OUTBOUND).body
      local list = {}
      for i = 1, 100 do
        local id = string.format("aaaaaaaa-0000-4000-8000-%012d", i)
        many[i] = { id = id, body = body:gsub('"total_calls": 120', '"total_calls": ' .. i) }
        list[i] = id
      end
      local big = sandbox.start { builtin = false, fixtures = many, faults = { rates = { ["delay:0.05"] = 1 } } }
      local t0 = wall()
      local ok, rs = pcall(kpis.get_all, list, { concurrency = 20, base_url = big.url })
      local dt = wall() - t0
      local max_in_flight, served = big.max_in_flight, big:count()
      big:close()
      assert.is_true(ok, tostring(rs))
      assert.are.equal(100, #rs)
      for i = 1, 100 do
        assert.is_true(model.is(rs[i]), tostring(rs[i]))
        assert.are.equal(list[i], rs[i].execution_id)
        assert.are.equal(i, rs[i].total_calls)
      end
      assert.are.equal(100, served)
      assert.is_true(max_in_flight <= 20, "in flight: " .. max_in_flight)
      assert.is_true(max_in_flight >= 10, "in flight: " .. max_in_flight)
      -- 100 x 50 ms: 5 s one at a time, 0.25 s twenty at a time
      assert.is_true(dt >= 0.25 and dt < 4, "took " .. dt)
    end)
  end)
end)
