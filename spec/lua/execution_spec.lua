-- Specs for the executions client (kpiwatch.execution, re-exported as
-- kpis.execution, executions, run_test_id, run, wait, calls, scores)
-- against the in-process sandbox on a fast clock, and small http.serve
-- servers for what the sandbox never answers.

local kpis = require "kpiwatch.kpis"
local execution = require "kpiwatch.execution"
local sandbox = require "kpiwatch.sandbox"
local fixtures = require "kpiwatch.fixtures"
local http = require "kpiwatch.http"
local task = require "kpiwatch.task"
local json = require "kpiwatch.json"

local NIGHTLY = fixtures.run_test_ids["nightly"]
local BROKEN = fixtures.run_test_ids["broken-agent"]
local TREND_NEWEST = "c0ffee00-0000-4000-9003-00000000000c"
local UNKNOWN = "0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0e"

local raises = require("spec.lua.helpers.util").raises

-- A one-route server answering `answer(req)`; returns the server.
local function serve(answer)
  return http.serve { port = 0, handler = answer }
end

describe("executions client", function()
  local sb
  local log = {}

  setup(function()
    sb = sandbox.start { speed = 50, log = function(line) log[#log + 1] = line end }
  end)
  teardown(function()
    sb:close()
    kpis._reset()
  end)
  before_each(function()
    kpis._reset()
    kpis.configure { base_url = sb.url, api_key = sb.api_key, secret_key = sb.secret_key,
      backoff = 0.01, backoff_max = 0.02 }
    sb:reset_counts()
    for i = #log, 1, -1 do log[i] = nil end
  end)

  describe("kpis.execution", function()
    it("reads the status with one request of ?limit=1", function()
      local e = kpis.execution("c0ffee00-0000-4000-9001-000000000014") -- nightly #20, failed
      assert.is_true(execution.is(e))
      assert.are.equal("failed", e.status)
      assert.are.equal("Agent endpoint returned HTTP 503 during call setup", e.error_reason)
      assert.are.equal(12, e.calls)
      assert.are.equal("voice", e.agent_type)
      assert.are.equal("vapi", e.provider)
      assert.is_true(e:is_done())
      assert.are.equal("failed", e:raw().status)
      assert.are.equal(1, #log)
      assert.truthy(log[1]:find(
        "/simulate/test%-executions/c0ffee00%-0000%-4000%-9001%-000000000014/%?limit=1 %-> 200"))
      assert.truthy(tostring(e):find("failed", 1, true))
    end)

    it("lowercases the status whatever the server's casing; evaluating is not done", function()
      local status = "EVALUATING"
      local s = serve(function()
        return { json = { status = status, count = 3, results = {}, agent_type = "TEXT", provider = "vapi" } }
      end)
      local e = kpis.execution(UNKNOWN, { base_url = s.url })
      assert.are.equal("evaluating", e.status)
      assert.are.equal("text", e.agent_type)
      assert.is_false(e:is_done())
      status = "Canceled"
      assert.are.equal("cancelled", kpis.execution(UNKNOWN, { base_url = s.url }).status)
      s:close()
    end)

    it("an invalid id never needs a request; an unknown one is not_found", function()
      assert.are.equal("invalid_id", raises(function() kpis.execution("nope") end).kind)
      assert.are.equal(0, sb:count())
      assert.are.equal("not_found", raises(function() kpis.execution(UNKNOWN) end).kind)
    end)
  end)

  describe("kpis.executions", function()
    it("follows next over every page, newest first", function()
      local l = kpis.executions(NIGHTLY)
      assert.is_true(#l >= 34)
      local ids = sb.runs.executions(NIGHTLY)
      for i, e in ipairs(l) do assert.are.equal(ids[i], e.id) end
      assert.are.equal(math.ceil(#ids / 10), sb:count(NIGHTLY))
      for _, e in ipairs(l) do assert.are.equal(e.status, e.status:lower()) end
      assert.are.equal("voice", l[1].agent_type)
    end)

    it("takes a name, a status in any casing and a limit", function()
      local failed = kpis.executions("nightly", { status = "FAILED" })
      assert.are.equal(2, #failed)
      for _, e in ipairs(failed) do assert.are.equal("failed", e.status) end
      assert.truthy(failed[1].error_reason)
      sb:reset_counts()
      local three = kpis.executions("nightly", { limit = 3 })
      assert.are.equal(3, #three)
      assert.are.equal(1, sb:count(NIGHTLY)) -- one page of 3
      -- stop: the first page only, up to a known execution
      sb:reset_counts()
      local known = sb.runs.executions(NIGHTLY)[4]
      local newer = kpis.executions(NIGHTLY, { stop = function(e) return e.id == known end })
      assert.are.equal(3, #newer)
      assert.are.equal(1, sb:count(NIGHTLY))
      assert.are.equal("config", raises(function() kpis.executions(NIGHTLY, { limit = 0 }) end).kind)
      assert.are.equal("config", raises(function() kpis.executions(NIGHTLY, { bogus = 1 }) end).kind)
    end)

    it("a page that fails is an error, never a truncated list", function()
      sb:inject(NIGHTLY .. "/page/3", "500", 2)
      local e = raises(function() kpis.executions(NIGHTLY, { retries = 1 }) end)
      assert.are.equal("server", e.kind)
      assert.are.equal(500, e.status)
      assert.truthy(e.url:find("page=3", 1, true))
      assert.are.equal(2, sb:count(NIGHTLY .. "/page/3"))
      -- a page that fails once is retried and the list is whole
      sb:inject(NIGHTLY .. "/page/2", "503", 1)
      local l = kpis.executions(NIGHTLY, { retries = 1 })
      assert.are.equal(#sb.runs.executions(NIGHTLY), #l)
    end)

    it("prints as a table with control characters of server text neutralised", function()
      local s = serve(function()
        return { json = { count = 1, next = json.null, results = {
          { id = UNKNOWN, status = "Failed", start_time = "2026-11-01T00:00:00Z", calls = 4, success_rate = 50,
            error_reason = "boom\27[31mred\nline" } } } }
      end)
      local l = kpis.executions(NIGHTLY, { base_url = s.url })
      local t = tostring(l)
      assert.truthy(t:find("^ID%s+STATUS%s+START%s+CALLS%s+SUCCESS%s+ERROR\n"))
      assert.truthy(t:find(UNKNOWN .. "  failed  2026-11-01T00:00:00Z  4      50%      boom?[31mred line", 1, true))
      assert.is_nil(t:find("\27", 1, true))
      s:close()
    end)

    it("never keeps a credential the server echoes", function()
      local s = serve(function(req)
        return { json = { count = 1, next = json.null, results = {
          { id = UNKNOWN, status = "Failed", error_reason = "bad key " .. req.headers["x-api-key"] } } } }
      end)
      local l = kpis.executions(NIGHTLY, { base_url = s.url })
      assert.are.equal("bad key [REDACTED]", l[1].error_reason)
      assert.is_nil(tostring(l):find(sb.api_key, 1, true))
      s:close()
    end)

    it("follows next by its query on the configured base only", function()
      local n = 0
      local s
      s = serve(function(req)
        n = n + 1
        local page = tonumber(req.params.page or "1")
        local nxt = page < 3 and ("http://evil.invalid:9" .. req.path .. "?page=" .. (page + 1)) or json.null
        return { json = { count = 3, next = nxt, results = { { id = UNKNOWN, status = "Completed" } } } }
      end)
      local l = kpis.executions(NIGHTLY, { base_url = s.url })
      assert.are.equal(3, #l)
      assert.are.equal(3, n)
      s:close()
      -- a next that leaves the list's path is a protocol error
      s = serve(function()
        return { json = { count = 2, next = "http://127.0.0.1/elsewhere/?page=2", results = {} } }
      end)
      assert.are.equal("protocol", raises(function() kpis.executions(NIGHTLY, { base_url = s.url }) end).kind)
      s:close()
    end)
  end)

  describe("kpis.run_test_id", function()
    it("unwraps {status, result}; an unknown name is not_found", function()
      assert.are.equal(NIGHTLY, kpis.run_test_id("nightly"))
      local e = raises(function() kpis.run_test_id("no such test") end)
      assert.are.equal("not_found", e.kind)
      assert.truthy(e.message:find("no such test", 1, true))
      assert.are.equal("config", raises(function() kpis.run_test_id("") end).kind)
    end)
  end)

  describe("kpis.run_test_name", function()
    it("finds the name in the list of run tests; an unknown id is not_found", function()
      assert.are.equal("nightly", kpis.run_test_name(NIGHTLY))
      assert.are.equal("broken-agent", kpis.run_test_name(BROKEN:upper()))
      local e = raises(function() kpis.run_test_name("c0ffee00-0000-4000-8000-00000000ffff") end)
      assert.are.equal("not_found", e.kind)
      assert.are.equal("config", raises(function() kpis.run_test_name("nightly") end).kind)
    end)
  end)

  describe("kpis.run", function()
    it("starts a run and returns the new execution id", function()
      local before = sb.runs.started
      local id, answer = kpis.run("nightly")
      assert.truthy(kpis.is_uuid(id))
      assert.are.equal("started", answer.status)
      assert.are.equal(before + 1, sb.runs.started)
      assert.are.equal(id, sb.runs.executions(NIGHTLY)[1])
      local sc = fixtures.run_test(NIGHTLY).scenarios[1].id
      local _, a2 = kpis.run(NIGHTLY, { scenario_ids = { sc:upper() }, select_all = false })
      assert.are.same({ sc }, a2.scenario_ids)
      assert.are.equal("config", raises(function() kpis.run(NIGHTLY, { scenario_ids = { "x" } }) end).kind)
      assert.are.equal("config", raises(function() kpis.run(NIGHTLY, { select_all = "yes" }) end).kind)
    end)

    it("a POST that times out does not start a second run", function()
      local before = sb.runs.started
      local e = raises(function()
        kpis.run(NIGHTLY, { timeout = 0.2, retries = 3, headers = { ["X-Sandbox-Fault"] = "delay:0.5" } })
      end)
      assert.are.equal("timeout", e.kind)
      assert.are.equal(1, e.attempts)
      assert.are.equal(1, sb:count(NIGHTLY))
      task.sleep(0.6) -- the server finishes the one request it got
      assert.are.equal(before + 1, sb.runs.started)
    end)

    it("a 5xx is not retried; a connect failure is", function()
      local before = sb.runs.started
      local e = raises(function()
        kpis.run(NIGHTLY, { retries = 3, headers = { ["X-Sandbox-Fault"] = "502" } })
      end)
      assert.are.equal("server", e.kind)
      assert.are.equal(1, e.attempts)
      assert.are.equal(1, sb:count(NIGHTLY))
      assert.are.equal(before, sb.runs.started)
      local s = serve(function() return "" end)
      local port = s.port
      s:close()
      e = raises(function() kpis.run(NIGHTLY, { base_url = "http://127.0.0.1:" .. port, retries = 2 }) end)
      assert.are.equal("connect", e.kind)
      assert.are.equal(3, e.attempts)
    end)
  end)

  describe("kpis.wait", function()
    it("returns once completed, reporting each status change", function()
      sb.runs.set_speed(10) -- each phase lasts 0.1 s or more: no poll misses one
      local id = kpis.run(NIGHTLY)
      local seen = {}
      local e = kpis.wait(id, { every = 0.01, max_every = 0.02, on_status = function(x, prev)
        seen[#seen + 1] = (prev or "-") .. ">" .. x.status
      end })
      sb.runs.set_speed(50)
      assert.are.equal("completed", e.status)
      assert.is_true(e:is_done())
      assert.are.same({ "->pending", "pending>running", "running>evaluating", "evaluating>completed" }, seen)
      assert.are.equal(0.9, kpis.get(id).avg_score)
    end)

    it("returns a failed execution with its error_reason", function()
      local e = kpis.wait(kpis.run(BROKEN), { every = 0.01 })
      assert.are.equal("failed", e.status)
      assert.are.equal("Agent websocket closed: connection refused (code 1006)", e.error_reason)
    end)

    it("times out with an error of kind timeout naming the execution", function()
      sb.runs.set_speed(1e-6)
      local id = kpis.run(NIGHTLY)
      local e = raises(function() kpis.wait(id, { every = 0.01, timeout = 0.1 }) end)
      sb.runs.set_speed(50)
      assert.are.equal("timeout", e.kind)
      assert.are.equal(id, e.execution_id)
      assert.are.equal("pending", e.execution_status)
      assert.truthy(e.message:find(id, 1, true))
    end)

    it("backs off between polls and honours Retry-After", function()
      sb.runs.set_speed(1e-6)
      local id = kpis.run(NIGHTLY)
      sb:reset_counts()
      pcall(kpis.wait, id, { every = 0.02, max_every = 0.1, timeout = 0.5 })
      -- 0.02, 0.03, 0.045, 0.0675, 0.1, 0.1 ...: about 8 polls, not 25
      local n = sb:count(id)
      assert.is_true(n >= 3 and n <= 10, "polls: " .. n)
      -- the client's rate limit spaces the polls too
      kpis.configure { rate = "20/s" }
      sb:reset_counts()
      pcall(kpis.wait, id, { every = 0.001, max_every = 0.001, timeout = 0.3 })
      n = sb:count(id)
      assert.is_true(n >= 2 and n <= 8, "polls under 20/s in 0.3 s: " .. n)
      kpis.configure { rate = false }
      sb:inject(id, "429:0.3")
      local t0 = task.now()
      pcall(kpis.wait, id, { every = 0.01, timeout = 0.01 })
      assert.is_true(task.now() - t0 >= 0.3)
      sb.runs.set_speed(50)
    end)

    it("stops when its task is cancelled", function()
      sb.runs.set_speed(1e-6)
      local id = kpis.run(NIGHTLY)
      local t = task.spawn(function() return kpis.wait(id, { every = 0.01 }) end)
      task.sleep(0.05)
      task.cancel(t, "interrupted!")
      local ok, err = pcall(task.wait, t)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("interrupted!", 1, true))
      sb:reset_counts()
      task.sleep(0.05)
      assert.are.equal(0, sb:count(id))
      sb.runs.set_speed(50)
    end)

    it("rejects unknown options", function()
      assert.are.equal("config", raises(function() kpis.wait(UNKNOWN, { bogus = 1 }) end).kind)
      assert.are.equal("config", raises(function() kpis.wait(UNKNOWN, { every = 0 }) end).kind)
    end)
  end)

  describe("kpis.calls and kpis.scores", function()
    it("read every page of the detail endpoint", function()
      local calls, status = kpis.calls(TREND_NEWEST, { page_size = 7 })
      assert.are.equal("completed", status)
      assert.are.equal(40, #calls)
      assert.are.equal(6, sb:count(TREND_NEWEST))
      assert.are.equal("number", type(calls[1].overall_score))
      assert.is_table(calls[1].eval_outputs)
      local scores = kpis.scores(TREND_NEWEST)
      assert.are.same(sb.runs.scores(TREND_NEWEST), scores)
    end)

    it("a failing page is an error", function()
      sb:inject(TREND_NEWEST .. "/page/2", "500", 5)
      assert.are.equal("server", raises(function() kpis.scores(TREND_NEWEST, { page_size = 30, retries = 0 }) end).kind)
    end)
  end)
end)
