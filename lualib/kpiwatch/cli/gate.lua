-- kpiwatch gate: fail a CI pipeline when a simulation run got worse.
--
-- The driver (kpiwatch.cli) calls this module with the arguments after
-- `gate` and the global flags it parsed; the result is the exit status:
-- 0 every check passed, 1 a check failed (or had no data, or could not be
-- evaluated), 2 usage or configuration error, 3 API or network error after
-- the client's retries. Nothing here can turn an error into 0: every path
-- that is not an explicit pass returns non-zero.

local requirement = require "kpiwatch.requirement"
local report = require "kpiwatch.gate_report"
local shared = require "kpiwatch.shared"
local errors = require "kpiwatch.errors"

local M = {}

M.USAGE = [==[
usage: kpiwatch [options] gate ID [checks] [reports]

Fetch the KPIs of test execution ID (a UUID) and check them; the exit
status tells CI whether the run is good enough.

Checks (at least one --require, --rules or --max-drop/--max-rise):
  --require 'FIELD OP NUMBER'
        OP is one of < <= > >= == != (spaces around it are fine).
        FIELD is a KPI field in either casing (avg_score, failed_calls,
        callsConnectedPercentage, ...), eval:NAME for one eval metric
        (the avg_NAME key), or eval:GLOB for every eval metric matching
        the glob (* ? [a-z]); a glob that matches none is an error.
        NUMBER is decimal: 0.8, -1, 1e-3, 95. Repeatable.
  --rules FILE.lua
        alert rules (kpiwatch.alert); a firing rule fails the gate.
        Repeatable.
  --baseline BASE_ID
        also fetch execution BASE_ID (concurrently) to compare against;
        the report shows the baseline value and delta of each check.
  --max-drop 'FIELD=AMOUNT'
        fail when FIELD fell by more than AMOUNT from the baseline
        (AMOUNT% : by more than AMOUNT percent of the baseline value).
        FIELD as for --require, globs included. Repeatable.
  --max-rise 'FIELD=AMOUNT'
        the same for metrics where lower is better (failed_calls,
        avg_agent_latency). Repeatable.
  --baseline previous
        the newest completed execution of the same run test created
        before ID (needs --run-test; `kpiwatch run` knows it). None
        found: every comparison is "no data".
  --baseline median:N
        the median of each metric over the N newest completed executions
        of the run test before ID (needs --run-test), from the history
        file, fetching (and keeping) what it lacks.
  --significance ALPHA
        with --max-drop/--max-rise: a move larger than allowed fails only
        when it is also significant at level ALPHA (e.g. 0.05). avg_score
        is judged on the per-call overall_score values of both sides
        (Welch's t-test, on the exact means, not the server's one-decimal
        rounding); failure_rate and calls_connected_percentage with a
        two-proportion test. Reports show both values, the delta, the
        p-value and a confidence interval.
  --min-calls N
        fewer calls (scored calls for avg_score) on either side is
        "insufficient data": no data, never a pass.
  --run-test RUN_TEST
        the run test of ID (its id, or its name), for --baseline previous
        and median:N, and for the history.
  --allow-missing
        a field the execution lacks, or a null value, is reported as
        skipped instead of failing as "no data".
  An average no call backs (avg_score or an eval average without a
  completed call, a voice latency or interruption average without a
  connected call: the server sends 0) is "no data", never a pass.

Execution status (the KPIs endpoint carries none; the gate reads it first):
  An execution that is not completed fails the gate (exit 1) with one
  line naming its status: pending, running or evaluating ("its KPIs are
  partial; use --wait"), failed or cancelled (with its error_reason).
  --wait[=TIMEOUT]
        wait for a terminal status first (default 30m; 90s, 10m, 1h30m;
        plain numbers are seconds), with progress on stderr. A wait that
        times out exits 3 (kind timeout).
  --allow-incomplete
        judge the KPIs whatever the status (the explicit opt-out; the
        status still shows in every report, as a skipped check).

Reports:
  --format text|json|junit|github|markdown
        the report on stdout (default: github when GITHUB_ACTIONS=true,
        otherwise text).
  --output [FORMAT:]FILE
        also write a report to FILE, e.g. --output junit:report.xml
        --output json:gate.json (repeatable). Without FORMAT: the
        --format given, else guessed from the extension (.xml junit,
        .json json, .md markdown, .txt text). When an --output takes the
        --format, stdout keeps the default (text or github).
  The github format prints ::error annotations and appends the markdown
  table to $GITHUB_STEP_SUMMARY when that is set.
  --comment github|gitlab
        also post the markdown report as one sticky comment on the pull
        (merge) request of the CI job, edited in place on the next run.
        GitHub: GITHUB_TOKEN, GITHUB_REPOSITORY, GITHUB_EVENT_PATH,
        GITHUB_API_URL. GitLab: CI_API_V4_URL, CI_PROJECT_ID,
        CI_MERGE_REQUEST_IID, GITLAB_TOKEN or CI_JOB_TOKEN. Outside a
        pull request, or when posting fails, a note on stderr: the exit
        status is the gate's either way.
  --comment-key KEY
        which sticky comment (default gate): one comment per key, for
        several gates in one pull request.

Connection options go before 'gate' (they are accepted after it too):
  --sandbox, --base-url URL, --timeout S, --retries N, --ca-file FILE,
  --verbose, --allow-insecure-http.
  Credentials: FI_API_KEY and FI_SECRET_KEY.
  -h, --help shows this help.

Exit status:
  0  every check passed (skipped checks allowed)
  1  a check failed, had no data, or could not be evaluated; or the
     execution is not completed
  2  usage error: bad requirement, invalid id, no credentials, bad rules
     file, nothing to check, report file not writable
  3  the API or the network failed (after retries)
  129, 130, 143  stopped by SIGHUP, SIGINT (Ctrl-C) or SIGTERM

Examples:
  kpiwatch gate "$EXECUTION_ID" --require 'avg_score>=0.8' --require 'eval:*>=70'
  kpiwatch gate "$RUN" --baseline "$MAIN_RUN" --max-drop 'avg_score=0.05' \
      --max-drop 'eval:*=5%' --output junit:kpiwatch.xml
  kpiwatch gate "$RUN" --wait=45m --run-test nightly --baseline previous \
      --max-drop 'avg_score=0.05'
]==]

local function show(s)
  return requirement.show(tostring(s))
end

local stderr = io.stderr -- replaced during M.run (tests capture it)
local prog = "kpiwatch gate" -- or "kpiwatch run": the command the messages name
-- Set by M.run once the options parse: writes the --output reports of a
-- usage error, so a CI reading junit.xml sees the error, not "no report".
local report_usage_error

local function usage_error(msg)
  -- one line, whatever the message (a require failure lists every path)
  msg = tostring(msg):gsub("\n.*", "")
  stderr:write(prog, ": ", msg, " (see '", prog, " --help')\n")
  if report_usage_error then report_usage_error(msg) end
  return 2
end

-- Options taking a value, and where parse_args stores it.
local VALUE_OPTS = {
  ["--require"] = "require", ["--rules"] = "rules", ["--baseline"] = "baseline",
  ["--max-drop"] = "max_drop", ["--max-rise"] = "max_rise", ["--format"] = "format",
  ["--output"] = "output", ["--comment"] = "comment", ["--comment-key"] = "comment_key",
  ["--run-test"] = "run_test", ["--significance"] = "significance", ["--min-calls"] = "min_calls",
  -- global flags, also accepted after `gate`
  ["--base-url"] = "base_url", ["--timeout"] = "timeout", ["--retries"] = "retries",
  ["--ca-file"] = "ca_file",
}
local REPEATABLE = { require = true, rules = true, max_drop = true, max_rise = true, output = true }
local GLOBAL_BOOL = { ["--sandbox"] = "sandbox", ["--verbose"] = "verbose",
  ["--allow-insecure-http"] = "allow_insecure_http" }

-- parse_args(args) -> options, or nil and a one-line message. Options:
-- ids, require[], rules[], baseline, max_drop[], max_rise[], format,
-- output[], allow_missing, allow_incomplete, wait (true or the TIMEOUT
-- text), run_test, help, flags (global flags given after gate).
function M.parse_args(args)
  local o = { ids = {}, require = {}, rules = {}, max_drop = {}, max_rise = {}, output = {}, flags = {} }
  local i, n, only_ids = 1, #args, false
  while i <= n do
    local a = args[i]
    if type(a) ~= "string" then return nil, "argument " .. i .. " is not a string" end
    if only_ids or a:sub(1, 1) ~= "-" or a == "-" then
      o.ids[#o.ids + 1] = a
    elseif a == "--" then
      only_ids = true
    elseif a == "-h" or a == "--help" then
      o.help = true
    elseif a == "--allow-missing" then
      o.allow_missing = true
    elseif a == "--allow-incomplete" then
      o.allow_incomplete = true
    elseif a == "--wait" or a:sub(1, 7) == "--wait=" then
      -- the value is optional, so only --wait=TIMEOUT (a separate word
      -- would be the execution ID)
      if o.wait ~= nil then return nil, "option '--wait' given twice" end
      o.wait = a == "--wait" and true or a:sub(8)
    elseif GLOBAL_BOOL[a] then
      o.flags[GLOBAL_BOOL[a]] = true
    else
      local name, val = a:match("^(%-%-[%w-]+)=(.*)$")
      name = name or a
      local key = VALUE_OPTS[name]
      if not key then return nil, "unknown option '" .. show(a) .. "'" end
      if val == nil then
        i = i + 1
        val = args[i]
        if val == nil then return nil, "option '" .. name .. "' needs a value" end
      end
      if key == "base_url" or key == "timeout" or key == "retries" or key == "ca_file" then
        if key ~= "base_url" and key ~= "ca_file" then
          local num = tonumber(val)
          if not num or num < 0 or (key == "retries" and math.type(num) ~= "integer") then
            return nil, "option '" .. name .. "' needs a non-negative number, got '" .. show(val) .. "'"
          end
          val = num
        end
        o.flags[key] = val
      elseif REPEATABLE[key] then
        local list = o[key]
        list[#list + 1] = val
      else
        if o[key] ~= nil then return nil, "option '" .. name .. "' given twice" end
        o[key] = val
      end
    end
    i = i + 1
  end
  return o
end

local EXT_FORMAT = { xml = "junit", json = "json", md = "markdown", markdown = "markdown", txt = "text" }

-- plan_outputs(o, env) -> stdout format, list of {format=, path=}, or nil,
-- message.
function M.plan_outputs(o, getenv)
  getenv = getenv or os.getenv
  if o.format and not report.FORMATS[o.format] then
    return nil, "unknown --format '" .. show(o.format) .. "' (text, json, junit, github or markdown)"
  end
  local terminal = getenv("GITHUB_ACTIONS") == "true" and "github" or "text"
  local files, format_used = {}, false
  for _, spec in ipairs(o.output) do
    local fmt, path = spec:match("^(%a+):(.+)$")
    if fmt and not report.FORMATS[fmt] then
      return nil, "unknown report format '" .. show(fmt) .. "' in --output '" .. show(spec)
        .. "' (text, json, junit, github or markdown; write ./" .. show(spec) .. " for a file name with a colon)"
    end
    if not fmt then
      path = spec
      if o.format then
        fmt = o.format
        format_used = true
      else
        local ext = path:match("%.(%w+)$")
        fmt = ext and EXT_FORMAT[ext:lower()]
        if not fmt then
          return nil, "cannot tell the report format of --output '" .. show(spec)
            .. "': write FORMAT:FILE (e.g. junit:" .. show(spec) .. ") or give --format"
        end
      end
    end
    if path == "" then return nil, "empty file name in --output '" .. show(spec) .. "'" end
    files[#files + 1] = { format = fmt, path = path }
  end
  local stdout_format = (o.format and not format_used) and o.format or terminal
  return stdout_format, files
end

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

-- ---- the run -------------------------------------------------------------------------

local function exit_code_of(err)
  if err.kind == "invalid_id" or err.kind == "config" then return 2 end
  return 3
end

local function error_line(err, id)
  local where = err.execution_id and (" (execution " .. err.execution_id .. ")")
    or (id and (" (execution " .. id .. ")") or "")
  local what = exit_code_of(err) == 2 and "configuration error" or "API error"
  if err.kind == "timeout" or err.kind == "connect" or err.kind == "dns" or err.kind == "tls"
    or err.kind == "network" then what = "network error" end
  -- kpis.wait's timeout: the execution is still going, the network is fine
  if err.kind == "timeout" and err.execution_status then what = "wait" end
  return what .. ": " .. err.kind .. ": " .. tostring(err.message) .. where
end

local function write_file(path, text)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(text)
  if not ok then
    f:close()
    return nil, werr
  end
  local cok, cerr = f:close()
  if not cok then return nil, cerr end
  return true
end

local function append_file(path, text)
  local f, err = io.open(path, "ab")
  if not f then return nil, err end
  local ok, werr = f:write(text)
  f:close()
  if not ok then return nil, werr end
  return true
end

local function is_tty()
  local ok, term = pcall(require, "kpiwatch._term")
  return ok and term.isatty(1)
end

-- Emit every report. Returns the exit code adjusted for write failures.
local function emit(result, stdout_format, files, code, env)
  if env.comment then require("kpiwatch.comment").report(env.comment, result, env) end
  local color = stdout_format == "text" and env.color
  local out = env.stdout
  if result.verdict == "error" then
    -- the one-line error is on stderr already; a machine report still
    -- goes out so a CI reading it sees the error, not nothing
    if stdout_format == "github" then
      local e = result.error
      out:write("::error title=", report.gh_prop("kpiwatch gate: " .. e.kind), "::", report.gh_data(e.message), "\n")
    elseif stdout_format ~= "text" then
      out:write(report.render(stdout_format, result))
    end
  else
    out:write(report.render(stdout_format, result, { color = color }))
    if stdout_format ~= "text" and stdout_format ~= "github" then
      env.stderr:write("kpiwatch ", report.verdict_line(result), "\n")
    end
  end
  out:flush()
  local github_used = stdout_format == "github"
  for _, f in ipairs(files) do
    if f.format == "github" then github_used = true end
    local ok, err = write_file(f.path, report.render(f.format, result))
    if not ok then
      env.stderr:write(prog, ": cannot write the ", f.format, " report: ", tostring(err), "\n")
      code = 2
    end
  end
  local summary = github_used and env.getenv("GITHUB_STEP_SUMMARY")
  if summary and summary ~= "" then
    local ok, err = append_file(summary, report.markdown(result) .. "\n")
    if not ok then
      env.stderr:write(prog, ": cannot append to GITHUB_STEP_SUMMARY: ", tostring(err), "\n")
      code = 2
    end
  end
  return code
end

-- _usage_reports(o, env, msg [, id]): the --output files of a usage error,
-- each an error report with exit code 2 (the --output specs that plan; an
-- unknown --format does not stop them, the terminal prints no report anyway).
-- id: the execution given, when it is one.
function M._usage_reports(o, env, msg, id)
  local _, files = M.plan_outputs(o, env.getenv)
  if type(files) ~= "table" then
    _, files = M.plan_outputs(setmetatable({ format = false }, { __index = o }), env.getenv)
  end
  if type(files) ~= "table" then return end
  local result = {
    execution_id = id and require("kpiwatch.kpis").is_uuid(id) and id:lower() or nil,
    verdict = "error", exit_code = 2, checks = {}, duration = 0,
    error = { kind = "usage", message = msg },
    summary = { total = 0, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 1 },
    started_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  }
  for _, f in ipairs(files) do
    local ok, err = write_file(f.path, report.render(f.format, result))
    if not ok then
      env.stderr:write(prog, ": cannot write the ", f.format, " report: ", tostring(err), "\n")
    end
  end
end

-- _report_usage_errors(o, env [, id]): from now on (until the next
-- setup_env) a usage error also writes o's --output reports (gate and run).
function M._report_usage_errors(o, env, id)
  report_usage_error = function(msg) M._usage_reports(o, env, msg, id) end
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
    env.stderr:write(prog, ": warning: ", w, "\n")
  end
  if #limits > 0 and not o.baseline then
    return nil, usage_error("--max-drop and --max-rise compare with a baseline: give --baseline BASE_ID")
  end
  if #reqs == 0 and #o.rules == 0 and #limits == 0 then
    return nil, usage_error("nothing to check: give --require, --rules or --baseline with --max-drop")
  end
  local stdout_format, files = M.plan_outputs(o, env.getenv)
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
      env.stderr:write(prog, ": ", msg, "\n")
      if report_usage_error then report_usage_error(msg) end
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
    require("kpiwatch.history").configure({ sandbox = true })
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
    started_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
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
    env.stderr:write(prog, ": ", error_line(err, which), "\n")
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
    env.stderr:write(prog, ": ", got.stop.message, " (execution ", id, ")\n")
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
    for _, w in ipairs(h.warnings) do env.stderr:write(prog, ": warning: ", w, "\n") end
    kpi, base = h.kpi, h.base
    if result.status_check then
      checks[1] = result.status_check
      env.stderr:write(prog, ": warning: ", result.status_check.message, "\n")
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

-- setup_env(env [, name]) fills in env's defaults and names the command
-- in messages (name: "kpiwatch run" when run uses the gate's code).
local function setup_env(env, name)
  env = env or {}
  env.stdout = env.stdout or io.stdout
  env.stderr = env.stderr or io.stderr
  stderr = env.stderr
  prog = name or "kpiwatch gate"
  report_usage_error = nil
  env.getenv = env.getenv or os.getenv
  return env
end
M._setup_env = setup_env

-- run(args, flags [, env]) -> exit code. env (tests): stdout, stderr,
-- getenv, color, progress_tty.
function M.run(args, flags, env)
  env = setup_env(env)
  flags = flags or {}

  local o, perr = M.parse_args(args or {})
  if not o then return usage_error(perr) end
  M._report_usage_errors(o, env, o.ids[1])
  if o.help then
    env.stdout:write(M.USAGE)
    return 0
  end
  if #o.ids == 0 then return usage_error("missing execution ID") end
  if #o.ids > 1 then
    return usage_error("expected one execution ID, got " .. #o.ids .. " ('" .. show(o.ids[2])
      .. "' is extra; quote requirements with spaces)")
  end
  local id = o.ids[1]
  if not require("kpiwatch.kpis").is_uuid(id) then
    local msg = "invalid execution ID: not a UUID: '" .. show(id) .. "'"
    env.stderr:write("kpiwatch gate: ", msg, "\n")
    report_usage_error(msg)
    return 2
  end
  local plan, code = M.prepare(o, env, flags)
  if not plan then return code end
  return M.judge(plan, id:lower(), env)
end

return setmetatable(M, {
  __call = function(_, args, flags) return M.run(args, flags) end,
})
