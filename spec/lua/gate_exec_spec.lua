-- Specs for the gate and `kpiwatch run` over executions that move (the
-- sandbox's run tests): the gate fails closed on a status other than
-- completed, --wait, --allow-incomplete, --baseline previous, and run's
-- start, id output, wait, failed runs, timeouts and the POST that must not
-- start a second run.

local gate = require "kpiwatch.cli.gate"
local runcmd = require "kpiwatch.cli.run"
local fixtures = require "kpiwatch.fixtures"
local jsonlib = require "kpiwatch.json"
local task = require "kpiwatch.task"
local util = require "spec.lua.helpers.util"

local RT = fixtures.run_test_ids
local NIGHTLY, BROKEN, INFLIGHT = RT["nightly"], RT["broken-agent"], RT["in-flight"]

-- nightly's past executions, oldest first: 31 failed, 32-34 completed
local function past(rt_index, i)
  return string.format("c0ffee00-0000-4000-9%03x-%012x", rt_index, i)
end

local function call(mod, args, envv)
  local out, err = util.buffer(), util.buffer()
  envv = envv or {}
  local code = mod.run(args, {}, {
    stdout = out, stderr = err, color = false, progress_tty = false,
    getenv = function(k) return envv[k] end,
  })
  return code, out:text(), err:text()
end

local function json_of(text)
  -- run prints the id first; the JSON report is the rest
  return jsonlib.decode(text:match("{.*}"))
end

describe("gate and run over executions that move", function()
  local t = util.sandbox({ speed = 1 })
  setup(t.start)
  teardown(t.stop)
  local sandbox, kpis
  before_each(function() sandbox, kpis = t.sandbox, t.kpis end)

  it("a gate started while the execution runs exits 1 naming the status, in every report", function()
    local id = kpis.run(NIGHTLY)
    local tmp = util.tmpdir()
    local code, out, err = call(gate, { id, "--require", "avg_score>=0", "--format", "json",
      "--output", "junit:" .. tmp .. "/r.xml", "--output", "markdown:" .. tmp .. "/r.md",
      "--output", "text:" .. tmp .. "/r.txt", "--output", "github:" .. tmp .. "/r.gh" })
    assert.equal(1, code)
    assert.matches("^kpiwatch gate: execution is pending: its KPIs are partial; use %-%-wait %(execution "
      .. id:gsub("%-", "%%-") .. "%)\n", err)
    local doc = json_of(out)
    assert.equal("pending", doc.execution_status)
    assert.equal("fail", doc.verdict)
    assert.equal(1, #doc.checks) -- nothing judged on partial KPIs
    assert.equal("status", doc.checks[1].source)
    local f = io.open(tmp .. "/r.xml"):read("a")
    assert.matches('<property name="execution_status" value="pending"/>', f, 1, true)
    assert.matches('type="status"', f, 1, true)
    assert.matches("status `pending`", io.open(tmp .. "/r.md"):read("a"), 1, true)
    assert.matches("status pending", io.open(tmp .. "/r.txt"):read("a"), 1, true)
    assert.matches("::error title=kpiwatch gate%%3A execution status == completed::execution is pending",
      io.open(tmp .. "/r.gh"):read("a"))
  end)

  it("--allow-incomplete judges the partial KPIs and still shows the status", function()
    local id = kpis.run(NIGHTLY)
    task.sleep(1.5) -- running
    local code, out, err = call(gate, { id, "--require", "total_calls>=1", "--allow-incomplete" })
    assert.equal(0, code)
    assert.matches("SKIPPED +execution status +running", out)
    assert.matches("warning: execution is running", err)
  end)

  it("--wait waits for a good run to complete, then passes", function()
    sandbox.runs.set_speed(20)
    local id = kpis.run(NIGHTLY)
    local code, out, err = call(gate, { id, "--wait=60s", "--require", "avg_score>=0.8" })
    sandbox.runs.set_speed(1)
    assert.equal(0, code, err)
    assert.matches("status completed", out)
    assert.matches("execution " .. id:gsub("%-", "%%-") .. ": completed", err) -- progress
  end)

  it("a --wait that times out exits 3 with kind timeout and the execution id", function()
    local id = kpis.run(NIGHTLY)
    local code, _, err = call(gate, { id, "--wait=1", "--require", "avg_score>=0.8" })
    assert.equal(3, code)
    assert.matches("timeout", err)
    assert.matches(id, err, 1, true)
  end)

  it("a failed or cancelled execution exits 1 naming its error_reason", function()
    local code, _, err = call(gate, { past(1, 31), "--require", "avg_score>=0" })
    assert.equal(1, code)
    assert.matches("execution failed: Simulator quota exceeded for this workspace", err, 1, true)
    code, _, err = call(gate, { past(1, 27), "--require", "avg_score>=0" })
    assert.equal(1, code)
    assert.matches("execution cancelled", err, 1, true)
  end)

  it("--baseline previous: the newest completed execution before it (a failed one is skipped)", function()
    local code, _, err = call(gate, { past(1, 32), "--baseline", "previous", "--max-drop", "avg_score=1" })
    assert.equal(2, code)
    assert.matches("%-%-baseline previous needs the run test: give %-%-run%-test", err)
    local out
    code, out = call(gate, { past(1, 32), "--baseline", "previous", "--run-test", "nightly",
      "--max-drop", "avg_score=1", "--format", "json" })
    assert.equal(0, code)
    assert.equal(past(1, 30), json_of(out).baseline_execution_id)
    -- by id as well
    code, out = call(gate, { past(1, 34), "--baseline", "previous", "--run-test", NIGHTLY,
      "--max-drop", "avg_score=1", "--format", "json" })
    assert.equal(0, code)
    assert.equal(past(1, 33), json_of(out).baseline_execution_id)
  end)

  it("--baseline previous without an earlier completed execution is no data, never a pass", function()
    local first_of_inflight = past(4, 1)
    local code, out = call(gate, { first_of_inflight, "--baseline", "previous", "--run-test", INFLIGHT,
      "--max-drop", "avg_score=1", "--require", "avg_score>=0" })
    assert.equal(1, code)
    assert.matches("NO DATA", out)
    assert.matches("no completed execution before", out)
  end)

  it("--baseline previous with a run test the execution is not of: a usage error", function()
    local code, _, err = call(gate, { past(1, 32), "--baseline", "previous", "--run-test", BROKEN,
      "--max-drop", "avg_score=1" })
    assert.equal(2, code)
    assert.matches("is not an execution of run test", err)
  end)

  it("run: prints the id at once, writes GITHUB_OUTPUT, waits, gates with baseline previous", function()
    sandbox.runs.set_speed(20)
    local gh = os.tmpname()
    local code, out, err = call(runcmd, { "--name", "nightly", "--require", "avg_score>=0.8",
      "--baseline", "previous", "--max-drop", "avg_score=0.05", "--timeout", "60" }, { GITHUB_OUTPUT = gh })
    sandbox.runs.set_speed(1)
    assert.equal(0, code, err)
    local id = out:match("^([%x%-]+)\n")
    assert.is_true(kpis.is_uuid(id))
    assert.equal("execution_id=" .. id .. "\n", io.open(gh):read("a"))
    os.remove(gh)
    assert.matches("gate PASS: 2 checks", out)
    -- the baseline: the newest completed execution listed after (before) it
    local base, seen = nil, false
    for _, e in ipairs(kpis.executions(NIGHTLY)) do
      if seen and e.status == "completed" then base = e.id break end
      if e.id == id then seen = true end
    end
    assert.matches("baseline " .. base:gsub("%-", "%%-"), out)
  end)

  it("run: a run that ends failed exits 1 naming its error_reason", function()
    sandbox.runs.set_speed(20)
    local code, out, err = call(runcmd, { BROKEN, "--require", "avg_score>=0.5" })
    sandbox.runs.set_speed(1)
    assert.equal(1, code)
    local last = err:match("[^\n]*\n[^\n]*$") or err -- after the progress lines
    assert.matches("^kpiwatch run: execution failed: Agent websocket closed: connection refused", last)
    assert.matches("failed", out)
  end)

  it("run: a wait that times out exits 3 with the execution id", function()
    local code, out, err = call(runcmd, { "--name", "nightly", "--timeout", "1s", "--require", "avg_score>=0.5" })
    assert.equal(3, code)
    local id = out:match("^([%x%-]+)\n")
    assert.is_true(kpis.is_uuid(id))
    assert.matches("timeout", err)
    assert.matches(id, err, 1, true)
  end)

  it("run: a POST that times out does not start a second run", function()
    local before = #kpis.executions(NIGHTLY)
    -- the execute request answers after 2 s; the per-request timeout is 0.5 s
    kpis._set_flags({ timeout = 0.5, retries = 3 })
    sandbox:inject(NIGHTLY, "delay:2", 1)
    local code, out, err = call(runcmd, { NIGHTLY, "--require", "avg_score>=0.5" })
    kpis._set_flags({ timeout = 30, retries = 0 })
    assert.equal(3, code)
    assert.equal("", out) -- no id: the start did not answer
    assert.matches("timeout", err)
    assert.matches("may have started", err)
    task.sleep(2) -- the delayed answer lands
    assert.equal(before + 1, #kpis.executions(NIGHTLY))
  end)

  it("run refuses bad arguments before starting anything", function()
    local before = #kpis.executions(NIGHTLY)
    for _, args in ipairs({
      { NIGHTLY, "--require", "avg_score>>0.8" },
      { NIGHTLY },
      { "--name", "nightly", NIGHTLY, "--require", "avg_score>=0" },
      { "not-a-uuid", "--require", "avg_score>=0" },
      { NIGHTLY, "--wait", "--require", "avg_score>=0" },
      { NIGHTLY, "--timeout", "soon", "--require", "avg_score>=0" },
      { NIGHTLY, "--scenario", "x", "--require", "avg_score>=0" },
    }) do
      local code, _, err = call(runcmd, args)
      assert.equal(2, code, table.concat(args, " "))
      assert.matches("^kpiwatch run: [^\n]+\n$", err)
    end
    assert.equal(before, #kpis.executions(NIGHTLY))
  end)
end)

describe("kpiwatch.cli.progress", function()
  local progress = require "kpiwatch.cli.progress"

  it("plain lines, one per status change, server text escaped", function()
    local b, t = util.buffer(), 0
    local p = progress.new({ id = "X", stream = b, tty = false, now = function() return t end })
    p:update({ status = "pending" })
    t = 3
    p:update({ status = "pending" }) -- no change, no line
    t = 65
    p:update({ status = "running" })
    t = 3700
    p:update({ status = "failed", error_reason = "boom\27[2J\nagain" })
    p:finish()
    assert.equal("kpiwatch: execution X: pending (0s)\n"
      .. "kpiwatch: execution X: running (1m 05s)\n"
      .. "kpiwatch: execution X: failed (1h 01m 40s): boom?[2J again\n", b:text())
  end)

  it("one line rewritten in place on a terminal, ended by a newline", function()
    local b, t = util.buffer(), 0
    local p = progress.new({ id = "X", stream = b, tty = true, now = function() return t end })
    p:update("pending")
    t = 2
    p:update("completed")
    p:finish()
    local text = b:text()
    assert.equal("\r\27[K", text:sub(1, 4))
    assert.is_nil(text:sub(1, -2):find("\n"))
    assert.equal("\n", text:sub(-1))
    assert.matches("completed %(2s%)\n$", text)
  end)
end)
