-- What kpiwatch gate and kpiwatch run share: prepare (the checks, the
-- outputs and the client from the parsed options) and judge (the
-- execution's status, its KPIs and the baseline's, every check, every
-- report). kpiwatch.cli.gate re-exports both.

local requirement = require "kpiwatch.requirement"
local report = require "kpiwatch.gate_report"
local shared = require "kpiwatch.shared"
local errors = require "kpiwatch.errors"
local emitter = require "kpiwatch.cli.gate_emit"

local show, usage_error, error_line, exit_code_of, emit, is_tty =
  emitter.show, emitter.usage_error, emitter.error_line, emitter.exit_code_of, emitter.emit, emitter.is_tty

local M = {}

-- ---- rules files (kpiwatch.alert) ----------------------------------------------

-- Each rules file is loaded with alert.load_rules into its own registry
-- (the file's alert.rule{...} calls register there; hooks it registers are
-- never called: the gate evaluates, it does not notify). A rule that fires
-- is a failed check, a rule without data is no data.
--
-- A rules file cannot end the process nor run a check of its own (os.exit,
-- alert.check and alert.watch raise there: see kpiwatch.alert.rules_file),
-- so only the gate decides the exit status.
local function load_rules(paths)
  local ok_mod, alert = pcall(require, "kpiwatch.alert")
  if not ok_mod then
    return nil, "cannot load the alert rule engine: " .. tostring(alert)
  end
  local sets = {}
  for _, path in ipairs(paths) do
    local lok, reg = pcall(alert.load_rules, path)
    if not lok then
      local msg = errors.is(reg) and reg.message or tostring(reg)
      if not msg:find(path, 1, true) then msg = path .. ": " .. msg end
      if not msg:find("rules file", 1, true) then msg = "rules file " .. msg end
      return nil, msg
    end
    if type(reg) ~= "table" or type(reg.evaluate) ~= "function" then
      return nil, "rules file " .. path .. ": the alert engine returned no rule registry"
    end
    sets[#sets + 1] = { path = path, registry = reg }
  end
  return { alert = alert, sets = sets }
end
M._load_rules = load_rules

local RULE_WORD = require("kpiwatch.shared").OP_WORDS

local function rule_requirement(r)
  local text = "rule " .. tostring(r.name)
  if r.op and r.threshold ~= nil then
    text = text .. ": fires " .. (RULE_WORD[r.op] or r.op) .. " " .. report.format_value(r.threshold)
  elseif r.kind == "when" then
    text = text .. ": fires when its predicate holds"
  end
  return text
end

-- rule_checks(engine, kpi, opts) -> checks, in the order the rules were
-- defined (file by file), a rule's metrics sorted.
local function rule_checks(engine, kpi, opts)
  local out = {}
  for _, set in ipairs(engine.sets) do
    local reg = set.registry
    local ok, rep = pcall(reg.evaluate, reg, kpi)
    if not ok then
      out[#out + 1] = {
        source = "rule", metric = "rules:" .. set.path, op = "rule", requirement = "rules file " .. set.path,
        status = "error",
        message = "evaluating " .. set.path .. " failed: " .. (errors.is(rep) and rep.message or tostring(rep)),
      }
    else
      local rank, by_name = {}, {}
      for i, r in ipairs(reg.rules or {}) do
        rank[r.name] = i
        by_name[r.name] = r
      end
      local entries = {}
      local function add(list, status)
        for _, e in ipairs(list or {}) do entries[#entries + 1] = { e = e, status = status } end
      end
      add(rep.firing, "firing")
      add(rep.passed, "ok")
      add(rep.no_data, "no_data")
      add(rep.errors, "error")
      table.sort(entries, function(a, b)
        local ra, rb = rank[a.e.rule] or math.huge, rank[b.e.rule] or math.huge
        if ra ~= rb then return ra < rb end
        return tostring(a.e.metric or "") < tostring(b.e.metric or "")
      end)
      for _, it in ipairs(entries) do
        local e, r = it.e, by_name[it.e.rule] or { name = it.e.rule }
        local metric
        if r.kind == "evals" and e.metric then
          metric = "eval:" .. tostring(e.metric)
        elseif e.metric then
          metric = tostring(e.metric)
        else
          metric = "rule:" .. tostring(e.rule)
        end
        local c = {
          source = "rule",
          rule = e.rule,
          metric = metric,
          op = "rule",
          requirement = rule_requirement(r),
          threshold = type(r.threshold) == "number" and r.threshold or nil,
          value = type(e.value) == "number" and e.value or nil,
        }
        if e.value ~= nil and type(e.value) ~= "number" then c.value_text = report.format_value(e.value) end
        if it.status == "firing" then
          c.status = "fail"
          c.message = "rule " .. tostring(e.rule) .. " fired: " .. tostring(e.summary or e.reason or "")
        elseif it.status == "ok" then
          if e.no_data then
            -- the rule itself treats no data as ok: shown, not hidden
            c.status = "skipped"
            c.message = "no data (rule " .. tostring(e.rule) .. " has no_data = \"ok\")"
          else
            c.status = "pass"
            c.message = "rule " .. tostring(e.rule) .. " does not fire"
          end
        elseif it.status == "no_data" then
          c.status = opts.allow_missing and "skipped" or "no_data"
          c.message = (opts.allow_missing and "" or "no data: ") .. tostring(e.reason or "no data")
            .. (opts.allow_missing and " (skipped: --allow-missing)" or "")
        else
          c.status = "error"
          c.message = tostring(e.reason or e.message or "rule error")
        end
        out[#out + 1] = c
      end
    end
  end
  return out
end

-- For the JUnit report's hostname attribute; "localhost" when unknown.
local function hostname()
  local f = io.open("/proc/sys/kernel/hostname", "r")
  if not f then return nil end
  local h = f:read("l")
  f:close()
  if h and h:match("^[%w.-]+$") then return h end
  return nil
end

local function now_fn()
  local kpis = require "kpiwatch.kpis"
  if type(kpis._now) == "function" then return kpis._now end
  return os.time
end

-- ---- the execution's status --------------------------------------------------------

-- Statuses whose KPIs are still moving (evaluating is not done: scores are
-- not final until completed).
local PARTIAL = { pending = true, running = true, evaluating = true, cancelling = true }

--- status_reason(exec) -> the one line that says why an execution that is
--- not completed cannot be judged: its status, and its error_reason when it
--- failed or was cancelled (server text, escaped).
---@param exec {status: string, error_reason?: string}
---@return string
function M.status_reason(exec)
  local st = shared.clean(tostring(exec.status or "unknown"), 300)
  if exec.status == "failed" or exec.status == "cancelled" then
    local why = exec.error_reason
    if type(why) == "string" and why ~= "" then return "execution " .. st .. ": " .. shared.clean(why, 300) end
    return "execution " .. st .. " (the server gives no error_reason)"
  end
  if PARTIAL[exec.status] then return "execution is " .. st .. ": its KPIs are partial; use --wait" end
  return "execution status is '" .. st .. "', not completed: its KPIs may be partial"
end

-- The check that shows a status other than completed in every report.
local function status_check(exec, allowed)
  local reason = M.status_reason(exec)
  return {
    source = "status", metric = "execution status", op = "==", requirement = "== completed",
    value_text = shared.clean(tostring(exec.status or "unknown"), 300),
    status = allowed and "skipped" or "fail",
    message = allowed and (reason .. " (judged anyway: --allow-incomplete)") or reason,
  }
end

-- previous_completed(run_test, id) -> the id of the newest completed
-- execution of run_test created before id (listed after it: the list is
-- newest first), or nil when there is none. Raises a config error when id
-- is not an execution of run_test (a wrong --run-test).
local function previous_completed(run_test, id)
  local kpis = require "kpiwatch.kpis"
  local seen = false
  for _, e in ipairs(kpis.executions(run_test)) do
    if seen and e.status == "completed" then return e.id end
    if e.id == id then seen = true end
  end
  if not seen then
    errors.raise("config", "execution " .. id .. " is not an execution of run test '" .. show(run_test)
      .. "' (check --run-test)", { retryable = false })
  end
  return nil
end

-- ---- the run -------------------------------------------------------------------------

--- prepare(o, env, flags) -> plan, or nil and an exit code (the usage error
--- is written). Everything a judgement needs besides the execution id:
--- the parsed checks, the rules, the report plan, the wait, the baseline.
--- Shared by `kpiwatch gate` and `kpiwatch run` (kpiwatch.cli.run).
---@param o table options from parse_args
---@param env table stdout, stderr, getenv, color
---@param flags table global flags parsed before the command
---@return table|nil plan
---@return integer|nil code
function M.prepare(o, env, flags)
  local reqs, limits = {}, {}
  for _, text in ipairs(o.require) do
    local r, err = requirement.parse(text)
    if not r then return nil, usage_error("bad --require: " .. err) end
    reqs[#reqs + 1] = r
  end
  for _, dir in ipairs({ "drop", "rise" }) do
    for _, text in ipairs(o["max_" .. dir]) do
      local l, err = requirement.parse_limit(text, dir)
      if not l then return nil, usage_error("bad --max-" .. dir .. ": " .. err) end
      limits[#limits + 1] = l
    end
  end
  local median_n
  if o.baseline and o.baseline:match("^median:") then
    local n, merr = require("kpiwatch.history").parse_baseline(o.baseline)
    if not n then return nil, usage_error("bad --baseline: " .. merr) end
    if not o.run_test then
      return nil, usage_error("--baseline median:N needs the run test: give --run-test RUN_TEST (its id or name)")
    end
    median_n = n
  end
  local alpha, min_calls
  if o.significance then
    local a, aerr = require("kpiwatch.significance").parse_alpha(o.significance)
    if not a then return nil, usage_error(aerr) end
    if #limits == 0 then return nil, usage_error("--significance judges --max-drop/--max-rise: give one") end
    alpha = a
  end
  if o.min_calls then
    local m = tonumber(o.min_calls)
    if not m or math.type(m) ~= "integer" or m < 1 then
      return nil, usage_error("--min-calls needs a positive integer, got '" .. show(o.min_calls) .. "'")
    end
    if #limits == 0 then return nil, usage_error("--min-calls judges --max-drop/--max-rise: give one") end
    min_calls = m
  end
  for _, w in ipairs(require("kpiwatch.significance").precision_warnings(reqs, limits, { per_call = alpha ~= nil })) do
    env.stderr:write(emitter.prog(), ": warning: ", w, "\n")
  end
  if #limits > 0 and not o.baseline then
    return nil, usage_error("--max-drop and --max-rise compare with a baseline: give --baseline BASE_ID")
  end
  if #reqs == 0 and #o.rules == 0 and #limits == 0 then
    return nil, usage_error("nothing to check: give --require, --rules or --baseline with --max-drop")
  end
  local stdout_format, files = emitter.plan_outputs(o, env.getenv)
  if not stdout_format then return nil, usage_error(files) end
  if o.comment then
    if o.comment ~= "github" and o.comment ~= "gitlab" then
      return nil, usage_error("unknown --comment '" .. show(o.comment) .. "' (github or gitlab)")
    end
    env.comment = { provider = o.comment, key = o.comment_key }
  end
  if env.color == nil then env.color = stdout_format == "text" and is_tty() and not env.getenv("NO_COLOR") end

  local kpis = require "kpiwatch.kpis"
  local base_id = o.baseline
  if median_n then
    base_id = nil
  elseif base_id == "previous" then
    if not o.run_test then
      return nil, usage_error("--baseline previous needs the run test: give --run-test RUN_TEST (its id or name)")
    end
  elseif base_id then
    if not kpis.is_uuid(base_id) then
      local msg = "invalid baseline ID: not a UUID: '" .. show(base_id) .. "'"
      env.stderr:write(emitter.prog(), ": ", msg, "\n")
      emitter.report_usage(msg)
      return nil, 2
    end
    base_id = base_id:lower()
  end
  if o.run_test ~= nil and (o.run_test == "" or o.run_test:find("%c")) then
    return nil, usage_error("bad --run-test '" .. show(o.run_test) .. "' (a run test id or name)")
  end
  local wait
  if o.wait == true then
    wait = M.DEFAULT_WAIT
  elseif o.wait ~= nil then
    local d, derr = require("kpiwatch.alert").parse_duration(o.wait)
    if not d or d <= 0 then
      return nil, usage_error("bad --wait '" .. show(o.wait) .. "': " .. (derr or "must be positive")
        .. " (e.g. --wait=45m)")
    end
    wait = d
  end

  local engine
  if #o.rules > 0 then
    local e, err = load_rules(o.rules)
    if not e then return nil, usage_error(err) end
    engine = e
  end

  -- connection flags given after the command
  local late = {}
  for k, v in pairs(o.flags) do if k ~= "sandbox" then late[k] = v end end
  if next(late) then
    local ok, err = pcall(kpis._set_flags, late)
    if not ok then return nil, usage_error(errors.is(err) and err.message or tostring(err)) end
  end
  local sandbox
  if o.flags.sandbox and not (flags or {}).sandbox then
    sandbox = require("kpiwatch.sandbox").start_for_client()
    kpis.point_at(sandbox)
  end
  return {
    reqs = reqs, limits = limits, engine = engine, stdout_format = stdout_format, files = files,
    baseline = base_id, run_test = o.run_test, wait = wait, allow_missing = o.allow_missing,
    allow_incomplete = o.allow_incomplete, sandbox = sandbox,
    median = median_n, significance = alpha, min_calls = min_calls,
  }
end

--- The timeout of --wait without a value: 30 minutes.
M.DEFAULT_WAIT = 30 * 60

--- judge(plan, id, env [, ctx]) -> exit code. Reads the execution's status
--- (waiting for a terminal one when plan.wait is set), then, when it is
--- completed (or plan.allow_incomplete), its KPIs and the baseline's, runs
--- every check and emits every report. ctx.run_test overrides
--- plan.run_test (`kpiwatch run` knows it).
---@param plan table from prepare
---@param id string the execution id, a lowercase UUID
---@param env table stdout, stderr, getenv, color
---@param ctx? {run_test?: string}
---@return integer
function M.judge(plan, id, env, ctx)
  ctx = ctx or {}
  local kpis = require "kpiwatch.kpis"
  local run_test = ctx.run_test or plan.run_test
  local stdout_format, files = plan.stdout_format, plan.files
  local clock = now_fn()
  local t0 = clock()
  local result = {
    execution_id = id,
    baseline_id = plan.baseline ~= "previous" and plan.baseline or nil,
    run_test = run_test,
    started_at = require("kpiwatch.time").rfc3339(),
    checks = {},
    hostname = env.getenv("HOSTNAME") or hostname(),
  }

  local function close_sandbox()
    if plan.sandbox then
      plan.sandbox:close()
      plan.sandbox = nil
    end
  end

  local function fail_fetch(err, which)
    local code = exit_code_of(err)
    env.stderr:write(emitter.prog(), ": ", error_line(err, which), "\n")
    result.verdict = "error"
    result.exit_code = code
    result.error = { kind = err.kind, message = tostring(err.message) }
    result.summary = { total = 0, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 1 }
    result.duration = clock() - t0
    return emit(result, stdout_format, files, code, env)
  end

  local stage = id -- whose request failed, for the message
  local ok, got = pcall(function()
    -- The status first, the KPIs after: KPIs read once the status is
    -- terminal are final, while KPIs read beside a status could be older
    -- than it.
    local exec
    if plan.wait then
      local p = require("kpiwatch.cli.progress").new({ id = id, stream = env.stderr, tty = env.progress_tty })
      local okw, e = pcall(kpis.wait, id, { timeout = plan.wait, on_status = function(x) p:update(x) end })
      p:finish()
      if not okw then error(e, 0) end
      exec = e
    else
      exec = kpis.execution(id)
    end
    result.execution_status = exec.status
    result.error_reason = exec.error_reason
    if exec.status ~= "completed" then
      local c = status_check(exec, plan.allow_incomplete)
      if not plan.allow_incomplete then return { stop = c } end
      result.status_check = c
    end
    local hg = require "kpiwatch.history.fetch"
    -- the history is keyed by run test id: a name costs one request
    local rid
    if run_test and (plan.median or require("kpiwatch.history").path()) then
      stage = nil
      rid = hg.run_test_id(run_test)
    end
    local want_scores = plan.significance ~= nil or plan.min_calls ~= nil
    if plan.median then
      local base, info = hg.median_baseline(rid, id, plan.median, { scores = want_scores })
      result.baseline_id = info.ids[1] and ("median:" .. plan.median) or nil
      result.baseline_ids = info.ids
      return { list = { kpis.get(id) }, median = base, median_info = info, exec = exec, rid = rid,
        base_note = info.note and ("run test '" .. show(run_test) .. "' has no completed execution before " .. id) }
    end
    local base_id, base_note = result.baseline_id, nil
    if plan.baseline == "previous" then
      base_id = previous_completed(run_test, id)
      result.baseline_id = base_id
      if not base_id then
        base_note = "run test '" .. show(run_test) .. "' has no completed execution before " .. id
      end
    end
    if base_id then
      stage = nil
      return { list = kpis.get_all({ id, base_id }, { concurrency = 2 }), base_id = base_id, exec = exec, rid = rid }
    end
    return { list = { kpis.get(id) }, base_note = base_note, exec = exec, rid = rid }
  end)
  close_sandbox()
  if not ok then
    if not errors.is(got) then error(got, 0) end
    return fail_fetch(got, stage)
  end

  local checks = result.checks
  if got.stop then
    -- fails closed: nothing else is judged on partial data
    env.stderr:write(emitter.prog(), ": ", got.stop.message, " (execution ", id, ")\n")
    checks[1] = got.stop
  else
    local kpi, base = got.list[1], got.list[2]
    if errors.is(kpi) then return fail_fetch(kpi, id) end
    if got.base_id and errors.is(base) then return fail_fetch(base, got.base_id) end
    -- history: keep what was fetched, take the median baseline, and the
    -- per-call scores of both sides for --significance / --min-calls
    local hist = require "kpiwatch.cli.gate_history"
    local hok, h = pcall(hist.after_fetch, plan, id, got, kpi, base)
    if not hok then
      if not errors.is(h) then error(h, 0) end
      return fail_fetch(h, nil)
    end
    for _, w in ipairs(h.warnings) do env.stderr:write(emitter.prog(), ": warning: ", w, "\n") end
    kpi, base = h.kpi, h.base
    if result.status_check then
      checks[1] = result.status_check
      env.stderr:write(emitter.prog(), ": warning: ", result.status_check.message, "\n")
    end
    local eopts = { allow_missing = plan.allow_missing, baseline = base }
    for _, r in ipairs(plan.reqs) do
      for _, c in ipairs(requirement.evaluate(r, kpi, eopts)) do checks[#checks + 1] = c end
    end
    for _, l in ipairs(plan.limits) do
      local list = base and requirement.compare(l, kpi, base, eopts)
        or { requirement.no_baseline(l, got.base_note, eopts) }
      for _, c in ipairs(list) do checks[#checks + 1] = hist.refine(c, l, h, plan) end
    end
    if plan.engine then
      for _, c in ipairs(rule_checks(plan.engine, kpi, eopts)) do checks[#checks + 1] = c end
    end
    if #checks == 0 then
      -- only rules files that defined no rule: never a silent pass
      return usage_error("nothing to check: the rules files define no rule")
    end
  end

  local summary, verdict = requirement.summarize(checks)
  result.summary, result.verdict = summary, verdict
  local code = verdict == "pass" and 0 or 1
  result.exit_code = code
  result.duration = clock() - t0
  return emit(result, stdout_format, files, code, env)
end

return M
