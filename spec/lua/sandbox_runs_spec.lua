-- Specs for the sandbox's run tests, executions and calls
-- (kpiwatch.sandbox_runs) seen from a plain HTTP client: the shapes of
-- ../shared/api/FIELD-NOTES.md, "Executions, run tests and calls".

local sandbox = require "kpiwatch.sandbox"
local fixtures = require "kpiwatch.fixtures"
local http = require "kpiwatch.http"
local task = require "kpiwatch.task"
local json = require "kpiwatch.json"

local NIGHTLY = fixtures.run_test_ids["nightly"]
local BROKEN = fixtures.run_test_ids["broken-agent"]
local TREND = fixtures.run_test_ids["voice-trend"]
local UNKNOWN = "0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0e"

describe("sandbox run tests", function()
  local sb, auth

  local function req(p, method, body, headers)
    local h = {}
    for k, v in pairs(auth) do h[k] = v end
    for k, v in pairs(headers or {}) do h[k] = v end
    local url = p:match("^http") and p or (sb.url .. p)
    return http.request { method = method or "GET", url = url, headers = h, body = body, timeout = 10 }
  end
  local function get_json(p)
    local r = req(p)
    assert.are.equal(200, r.status, r.body)
    return json.decode(r.body)
  end
  local function execs(rt) return "/simulate/run-tests/" .. rt .. "/executions/" end
  local function start(rt, body)
    local r = req("/simulate/run-tests/" .. rt .. "/execute/", "POST", body or "{}")
    assert.are.equal(200, r.status, r.body)
    return json.decode(r.body)
  end
  -- Wait (on the sandbox's fast clock) until id's detail status is one of
  -- `want`; returns the statuses seen in order.
  local function follow(id, until_status)
    local seen = {}
    for _ = 1, 400 do
      local b = get_json("/simulate/test-executions/" .. id .. "/?limit=1")
      if seen[#seen] ~= b.status then seen[#seen + 1] = b.status end
      if b.status == until_status then return seen end
      task.sleep(0.005)
    end
    error("never reached " .. until_status .. ": " .. table.concat(seen, ","))
  end

  setup(function()
    sb = sandbox.start { speed = 40 }
    auth = { ["X-Api-Key"] = sb.api_key, ["X-Secret-Key"] = sb.secret_key }
  end)
  teardown(function() sb:close() end)

  it("lists a run test's executions newest first, Title-cased status, upper-case agent_type", function()
    local b = get_json(execs(NIGHTLY))
    assert.are.equal(34, b.count)
    assert.are.equal(4, b.total_pages)
    assert.are.equal(1, b.current_page)
    assert.are.equal(10, #b.results)
    assert.are.equal(json.null, b.previous)
    assert.are.equal(sb.url .. execs(NIGHTLY) .. "?limit=10&page=2", b.next)
    local first = b.results[1]
    assert.are.equal("c0ffee00-0000-4000-9001-000000000022", first.id) -- the 34th, newest
    assert.are.equal("Completed", first.status)
    assert.are.equal("VOICE", first.agent_type)
    for _, k in ipairs({ "scenarios", "start_time", "duration", "error_reason", "success_rate",
      "avg_response_time", "calls", "calls_attempted", "connected_calls", "calls_connected_percentage",
      "agent_version", "agent_definition", "source_type" }) do
      assert.is_not_nil(first[k], k)
    end
    assert.is_true(b.results[1].start_time > b.results[2].start_time)
    -- the last page, then past the end
    local last = get_json(execs(NIGHTLY) .. "?page=4")
    assert.are.equal(4, #last.results)
    assert.are.equal(json.null, last.next)
    assert.are.equal(sb.url .. execs(NIGHTLY) .. "?limit=10&page=3", last.previous)
    assert.are.equal(404, req(execs(NIGHTLY) .. "?page=5").status)
    assert.are.equal(400, req(execs(NIGHTLY) .. "?limit=0").status)
    assert.are.equal(400, req(execs(NIGHTLY) .. "?page=x").status)
  end)

  it("filters by status in any casing and keeps the filter in next", function()
    local b = get_json(execs(NIGHTLY) .. "?status=failed&limit=1")
    assert.are.equal(2, b.count)
    assert.are.equal("Failed", b.results[1].status)
    assert.are.equal("Simulator quota exceeded for this workspace", b.results[1].error_reason)
    assert.truthy(b.next:find("status=failed", 1, true))
    assert.are.equal(1, get_json(execs(NIGHTLY) .. "?status=Cancelled").count)
  end)

  it("serves an execution's detail: lowercase status, a page of calls, unknown query fields 400", function()
    local id = "c0ffee00-0000-4000-9003-00000000000c" -- voice-trend's newest: 40 calls
    local b = get_json("/simulate/test-executions/" .. id .. "/")
    assert.are.equal("completed", b.status)
    assert.are.equal(40, b.count)
    assert.are.equal(30, #b.results) -- default limit 30
    assert.are.equal(2, b.total_pages)
    assert.are.equal("voice", b.agent_type)
    assert.are.equal("retell", b.provider)
    local call = b.results[1]
    assert.are.equal("completed", call.status)
    assert.are.equal("number", type(call.overall_score))
    local n = 0
    for _, ev in pairs(call.eval_outputs) do
      n = n + 1
      for _, k in ipairs({ "value", "reason", "type", "name", "error", "status", "skipped" }) do
        assert.is_not_nil(ev[k], k)
      end
    end
    assert.are.equal(2, n)
    b = get_json("/simulate/test-executions/" .. id .. "/?limit=1")
    assert.are.equal(1, #b.results)
    assert.are.equal(400, req("/simulate/test-executions/" .. id .. "/?bogus=1").status)
    assert.are.equal(404, req("/simulate/test-executions/" .. UNKNOWN .. "/").status)
  end)

  it("draws the same per-call scores every time: a real regression and a noisy drop", function()
    local function mean(xs)
      local s = 0
      for _, x in ipairs(xs) do s = s + x end
      return s / #xs
    end
    local newest = sb.runs.scores("c0ffee00-0000-4000-9003-00000000000c")
    local noisy = sb.runs.scores("c0ffee00-0000-4000-9003-000000000009")
    assert.are.equal(40, #newest)
    assert.are.equal(8, #noisy)
    assert.are.near(0.688, mean(newest), 1e-9)
    assert.are.near(0.77, mean(noisy), 1e-9)
    local other = sandbox.start {}
    assert.are.same(newest, other.runs.scores("c0ffee00-0000-4000-9003-00000000000c"))
    other:close()
  end)

  it("resolves a name with the {status, result} wrapper, and searches run tests", function()
    assert.are.same({ status = true, result = { run_test_id = NIGHTLY } },
      get_json("/simulate/run-tests/get-id-by-name/nightly/"))
    local r = req("/simulate/run-tests/get-id-by-name/no%20such/")
    assert.are.equal(404, r.status)
    assert.are.equal("not_found", json.decode(r.body).code)
    local b = get_json("/simulate/run-tests/?search=TREND")
    assert.are.equal(1, b.count)
    assert.are.equal(TREND, b.results[1].id)
    assert.are.equal("voice-trend", b.results[1].name)
    assert.are.equal("2026-11-12T03:00:00Z", b.results[1].last_run_at)
  end)

  it("starts a run that moves pending -> running -> evaluating -> completed with partial KPIs", function()
    sb.runs.set_speed(1e-6) -- pending until the clock runs again
    local a = start(NIGHTLY)
    assert.are.equal("started", a.status)
    assert.are.equal(NIGHTLY, a.run_test_id)
    assert.are.equal(12, a.total_calls)
    assert.are.equal(2, a.total_scenarios)
    local id = a.execution_id
    local list = get_json(execs(NIGHTLY) .. "?limit=1")
    assert.are.equal(id, list.results[1].id) -- newest first
    assert.are.equal(35, list.count)
    local kp = get_json("/simulate/test-executions/" .. id .. "/kpis/")
    assert.are.equal(0, kp.total_calls)
    assert.are.equal("pending", get_json("/simulate/test-executions/" .. id .. "/?limit=1").status)
    sb.runs.set_speed(4) -- a call every 0.08 s, evaluating 0.5 s: slow enough to watch on a busy machine
    local seen = follow(id, "running")
    assert.are.equal("pending", seen[1])
    -- wait for a few calls, then stop the clock to look at a partial run
    for _ = 1, 200 do
      if get_json("/simulate/test-executions/" .. id .. "/kpis/").calls_attempted > 2 then break end
      task.sleep(0.002)
    end
    sb.runs.set_speed(1e-6)
    local partial = get_json("/simulate/test-executions/" .. id .. "/kpis/")
    local d = get_json("/simulate/test-executions/" .. id .. "/")
    assert.are.equal("running", d.status)
    assert.is_true(partial.calls_attempted > 2 and partial.calls_attempted < 12)
    assert.are.equal(12, partial.total_calls)
    local statuses = {}
    for _, c in ipairs(d.results) do statuses[c.status] = (statuses[c.status] or 0) + 1 end
    assert.are.equal(1, statuses.ongoing)
    assert.is_true(statuses.queued > 0)
    assert.is_true(statuses.completed > 0)
    sb.runs.set_speed(4)
    follow(id, "evaluating")
    sb.runs.set_speed(1e-6)
    local ev = get_json("/simulate/test-executions/" .. id .. "/")
    assert.are.equal("evaluating", ev.status)
    assert.are.equal(12, ev.count)
    local analyzing = 0
    for _, c in ipairs(ev.results) do
      if c.status == "analyzing" then
        analyzing = analyzing + 1
        assert.are.equal(json.null, c.overall_score)
      end
    end
    assert.is_true(analyzing > 0)
    local evk = get_json("/simulate/test-executions/" .. id .. "/kpis/")
    assert.are.equal(12, evk.calls_attempted)
    sb.runs.set_speed(40)
    follow(id, "completed")
    local final = get_json("/simulate/test-executions/" .. id .. "/kpis/")
    assert.are.equal(12, final.total_calls)
    assert.are.equal(0.9, final.avg_score)
    assert.are.equal("Completed", get_json(execs(NIGHTLY) .. "?limit=1").results[1].status)
  end)

  it("a run of broken-agent ends failed with its error_reason", function()
    local id = start(BROKEN).execution_id
    follow(id, "failed")
    local d = get_json("/simulate/test-executions/" .. id .. "/")
    assert.are.same({ "Agent websocket closed: connection refused (code 1006)" }, d.error_messages)
    local item = get_json(execs(BROKEN) .. "?limit=1").results[1]
    assert.are.equal("Failed", item.status)
    assert.are.equal("Agent websocket closed: connection refused (code 1006)", item.error_reason)
    task.sleep(0.3) -- past the other phases: still failed
    assert.are.equal("failed", sb.runs.status(id))
  end)

  it("gives runs started by execute random UUIDs: two sandboxes never hand out the same ids", function()
    -- counted per sandbox, they did: a history file then mixed two sandboxes' runs
    local one, two = sandbox.start { speed = 40 }, sandbox.start { speed = 40 }
    finally(function() one:close() two:close() end)
    assert.are.same({ one.api_key, one.secret_key }, { sb.api_key, sb.secret_key })
    local function run(box)
      local id = json.decode(req(box.url .. "/simulate/run-tests/" .. NIGHTLY .. "/execute/", "POST", "{}").body)
        .execution_id
      for _ = 1, 400 do
        local b = json.decode(req(box.url .. "/simulate/test-executions/" .. id .. "/?limit=100").body)
        if b.status == "completed" then
          local calls = {}
          for i, c in ipairs(b.results) do calls[i] = c.id end
          return id, calls
        end
        task.sleep(0.005)
      end
      error("never completed: " .. id)
    end
    local a, ca = run(one)
    local b, cb = run(two)
    assert.is_nil(a:find("^c0ffee00")) -- not a fixture's
    assert.is_true(require("kpiwatch.kpis").is_uuid(a))
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", a)
    assert.are_not.equal(a, b)
    assert.are.equal(#ca, #cb)
    for i = 1, #ca do assert.are_not.equal(ca[i], cb[i]) end
  end)

  it("execute rejects unknown fields, bad scenario ids, other methods", function()
    local p = "/simulate/run-tests/" .. NIGHTLY .. "/execute/"
    local r = req(p, "POST", '{"scenario_ids": [], "bogus": 1}')
    assert.are.equal(400, r.status)
    assert.truthy(json.decode(r.body).detail:find("bogus", 1, true))
    assert.are.equal(400, req(p, "POST", '{"scenario_ids": ["' .. UNKNOWN .. '"]}').status)
    assert.are.equal(400, req(p, "POST", "[1]").status)
    assert.are.equal(405, req(p, "GET").status)
    assert.are.equal(404, req("/simulate/run-tests/" .. UNKNOWN .. "/execute/", "POST", "{}").status)
    -- one scenario of two: half the calls
    local sc = fixtures.run_test(NIGHTLY).scenarios[2].id
    local a = start(NIGHTLY, '{"scenario_ids": ["' .. sc .. '"], "simulator_id": "s1", "select_all": false}')
    assert.are.equal(6, a.total_calls)
    assert.are.same({ sc }, a.scenario_ids)
  end)

  it("cancels a running execution: cancelling, then cancelled", function()
    sb.runs.set_speed(1e-6)
    local id = start(NIGHTLY).execution_id
    local r = req("/simulate/test-executions/" .. id .. "/cancel/", "POST", "")
    assert.are.equal(200, r.status)
    assert.are.equal("cancelling", sb.runs.status(id))
    sb.runs.set_speed(40)
    follow(id, "cancelled")
    task.sleep(0.3)
    assert.are.equal("cancelled", sb.runs.status(id))
    assert.are.equal(400, req("/simulate/test-executions/" .. id .. "/cancel/", "POST", "").status)
  end)

  it("injects faults into one page of a list, and per run test", function()
    sb:inject(NIGHTLY .. "/page/2", "500")
    assert.are.equal(200, req(execs(NIGHTLY)).status)
    assert.are.equal(500, req(execs(NIGHTLY) .. "?page=2").status)
    assert.are.equal(200, req(execs(NIGHTLY) .. "?page=2").status)
    sb:inject(NIGHTLY, "502")
    assert.are.equal(502, req(execs(NIGHTLY) .. "?page=3").status)
    assert.are.equal(503, req(execs(NIGHTLY), nil, nil, { ["X-Sandbox-Fault"] = "503" }).status)
    local r = req(execs(NIGHTLY) .. "?fault=broken")
    assert.are.equal(200, r.status)
    assert.is_false(pcall(json.decode, r.body))
  end)

  it("requires the credentials on every route", function()
    for _, p in ipairs({ execs(NIGHTLY), "/simulate/run-tests/", "/simulate/run-tests/get-id-by-name/nightly/",
      "/simulate/test-executions/c0ffee00-0000-4000-9001-000000000001/" }) do
      local r = http.request { url = sb.url .. p }
      assert.are.equal(401, r.status)
      assert.are.equal("ApiKey", r.headers["www-authenticate"])
    end
    assert.are.equal(401, http.request { url = sb.url .. "/simulate/run-tests/" .. NIGHTLY .. "/execute/",
      method = "POST", body = "{}" }.status)
  end)

  it("serves the KPIs of run test executions; the KPI fixtures are unchanged", function()
    local kp = get_json("/simulate/test-executions/c0ffee00-0000-4000-9003-00000000000c/kpis/")
    assert.are.equal(40, kp.total_calls)
    assert.are.equal(0.7, kp.avg_score) -- ROUND(AVG(overall_score), 1) of a 0.688 mean
    assert.are.equal(#fixtures.list(), #sb.ids())
  end)

  it("starts the in-flight run test's execution with the sandbox", function()
    local ids = sb.runs.executions("in-flight")
    assert.are.equal(3, #ids)
    assert.are.equal("c0ffee00-0000-4000-a000-000000000001", ids[1])
  end)
end)
