-- kpiwatch gate: fail a CI pipeline when a simulation run got worse.
--
-- The driver (kpiwatch.cli) calls this module with the arguments after
-- `gate` and the global flags it parsed; the result is the exit status:
-- 0 every check passed, 1 a check failed (or had no data, or could not be
-- evaluated), 2 usage or configuration error, 3 API or network error after
-- the client's retries. Nothing here can turn an error into 0: every path
-- that is not an explicit pass returns non-zero.

local args = require "kpiwatch.cli.args"
local out = require "kpiwatch.cli.gate_emit"
local judge = require "kpiwatch.cli.gate_judge"

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

local show, usage_error = out.show, out.usage_error

-- The gate's options (kpiwatch.cli.args); kpiwatch run takes them too.
M.OPTIONS = args.merge({
  ["--require"] = { repeats = true }, ["--rules"] = { repeats = true }, ["--baseline"] = {},
  ["--max-drop"] = { repeats = true }, ["--max-rise"] = { repeats = true }, ["--format"] = {},
  ["--output"] = { repeats = true }, ["--comment"] = {}, ["--comment-key"] = {}, ["--run-test"] = {},
  ["--significance"] = {}, ["--min-calls"] = {},
  ["--allow-missing"] = { flag = true }, ["--allow-incomplete"] = { flag = true },
  -- the value is optional, so only --wait=TIMEOUT (a separate word would
  -- be the execution ID)
  ["--wait"] = { optional = true },
})
-- the connection options, also accepted after `gate`, go to o.flags
for name, opt in pairs(require("kpiwatch.cli").GLOBAL_OPTIONS) do
  if opt.key ~= "history" and opt.key ~= "no_history" then
    M.OPTIONS[name] = args.merge(opt, { into = "flags" })
  end
end

-- parse_args(args) -> options, or nil and a one-line message. Options:
-- ids, require[], rules[], baseline, max_drop[], max_rise[], format,
-- output[], allow_missing, allow_incomplete, wait (true or the TIMEOUT
-- text), run_test, help, flags (global flags given after gate).
function M.parse_args(argv, options)
  local o, err = args.parse(argv, { options = options or M.OPTIONS })
  if not o then return nil, err end
  o.ids, o.args = o.args, nil
  return o
end

-- What kpiwatch run and the specs use, where it lives now.
M.plan_outputs, M._usage_reports, M._report_usage_errors, M._setup_env =
  out.plan_outputs, out._usage_reports, out._report_usage_errors, out._setup_env
M.prepare, M.judge, M.status_reason, M._load_rules =
  judge.prepare, judge.judge, judge.status_reason, judge._load_rules
M.DEFAULT_WAIT = judge.DEFAULT_WAIT

-- run(args, flags [, env]) -> exit code. env (tests): stdout, stderr,
-- getenv, color, progress_tty.
function M.run(argv, flags, env)
  env = out._setup_env(env)
  flags = flags or {}

  local o, perr = M.parse_args(argv or {})
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
    out.report_usage(msg)
    return 2
  end
  local plan, code = M.prepare(o, env, flags)
  if not plan then return code end
  return M.judge(plan, id:lower(), env)
end

return setmetatable(M, {
  __call = function(_, argv, flags) return M.run(argv, flags) end,
})
