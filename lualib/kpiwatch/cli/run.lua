-- kpiwatch run: start a run of a run test, wait for it, then gate it.
--
-- The judgement is the gate's own (kpiwatch.cli.gate: prepare, then judge
-- with the wait): the same checks, the same reports, the same exit
-- statuses. What this adds: the POST that starts the run (never retried
-- once it may have reached the server: a second run would start), the
-- execution id on stdout at once and in $GITHUB_OUTPUT, and the progress
-- of the wait on stderr.

local args = require "kpiwatch.cli.args"
local gate = require "kpiwatch.cli.gate"
local gate_emit = require "kpiwatch.cli.gate_emit"
local errors = require "kpiwatch.errors"

local M = {}

M.USAGE = [==[
usage: kpiwatch [options] run RUN_TEST_ID [run options] [checks] [reports]
       kpiwatch [options] run --name NAME [run options] [checks] [reports]

Start a run of a run test, print its execution id at once, wait until it
is completed (or failed, or cancelled), then check its KPIs exactly as
`kpiwatch gate` does; the exit status tells CI whether the run is good
enough. It cannot go green on a partial run: an execution that does not
end completed fails (exit 1), naming its status and error_reason.

Run options:
  RUN_TEST_ID        the run test to start (a UUID), or:
  --name NAME        the run test by its name
  --scenario ID      run only this scenario (repeatable; default: the run
                     test's own selection)
  --timeout DUR      give up waiting after DUR (default 30m; 90s, 10m,
                     1h30m; plain numbers are seconds): exit 3, kind
                     timeout, with the execution id in the message (the
                     run goes on; look at it with `kpiwatch gate ID --wait`).
                     The per-request timeout is the global --timeout,
                     before 'run'.

Checks and reports: every option of `kpiwatch gate` (see kpiwatch gate
--help): --require, --rules, --max-drop, --max-rise, --allow-missing,
--allow-incomplete, --format, --output, --comment, --comment-key.
--baseline previous is the
newest completed execution of this run test before the new one (none:
"no data", never a pass); --baseline BASE_ID works too.

Output:
  stdout  the execution id on the first line, as soon as the run started;
          then the report.
  stderr  the wait's progress: status changes and elapsed time (one line
          rewritten in place on a terminal, plain lines otherwise).
  $GITHUB_OUTPUT  gets `execution_id=<id>` when that variable is set.

Starting a run is not idempotent: when the request to start it fails
after it may have reached the server (a timeout, a 5xx), kpiwatch does not
try again (it could start a second run): exit 3, and the message says to
look at `kpiwatch executions RUN_TEST` first.

Exit status: as `kpiwatch gate`: 0 every check passed, 1 a check failed
or the execution did not end completed, 2 usage error, 3 API or network
error, the wait's timeout included.

Example (one CI step):
  kpiwatch run --name nightly --require 'avg_score>=0.8' \
      --baseline previous --max-drop 'avg_score=0.05' --output junit:kpiwatch.xml
]==]

local show = args.show

-- The run's own options, then the gate's: the checks and reports (its
-- --timeout is the wait's; the per-request one goes before 'run').
M.OPTIONS = args.merge(gate.OPTIONS, {
  ["--name"] = {}, ["--scenario"] = { repeats = true, key = "scenarios" }, ["--timeout"] = {},
})

local function write_github_output(path, id)
  local f, err = io.open(path, "ab")
  if not f then return nil, err end
  local ok, werr = f:write("execution_id=", id, "\n")
  local cok, cerr = f:close()
  if not ok then return nil, werr end
  if not cok then return nil, cerr end
  return true
end

-- start(run_test, scenarios) -> execution id, or nil and an error object
-- whose message says whether a run may have started.
local function start(run_test, scenarios)
  local kpis = require "kpiwatch.kpis"
  local ok, id = pcall(kpis.run, run_test, { scenario_ids = #scenarios > 0 and scenarios or nil })
  if ok then return id end
  if not errors.is(id) then error(id, 0) end
  local e = id
  -- refused before any request (bad id, no credentials) or answered with
  -- a 4xx: nothing started. Anything else may have started a run.
  local maybe = e.kind == "timeout" or e.kind == "server" or e.kind == "network" or e.kind == "protocol"
  if maybe then
    e.message = tostring(e.message) .. "; the run may have started anyway: look at `kpiwatch executions "
      .. show(run_test) .. "` before starting it again"
  end
  return nil, e
end

--- run(args, flags [, env]) -> exit code (see M.USAGE). env (tests):
--- stdout, stderr, getenv, color, progress_tty.
---@param argv string[] the arguments after `run`
---@param flags? table global flags parsed before the command
---@param env? table
---@return integer
function M.run(argv, flags, env)
  env = gate._setup_env(env, "kpiwatch run")
  local usage = gate_emit.usage_error
  local o, perr = gate.parse_args(argv or {}, M.OPTIONS)
  if not o then return usage(perr) end
  -- from now on a usage error also writes the --output reports
  gate._report_usage_errors(o, env)
  if o.help then
    env.stdout:write(M.USAGE)
    return 0
  end
  if o.wait ~= nil then return usage("'--wait' is gate's: run always waits (set how long with --timeout DUR)") end
  if o.run_test ~= nil then return usage("'--run-test' is gate's: run knows its run test") end

  local kpis = require "kpiwatch.kpis"
  local run_test
  if o.name then
    if #o.ids > 0 then return usage("give RUN_TEST_ID or --name NAME, not both") end
    if o.name == "" or o.name:find("%c") then return usage("bad --name '" .. show(o.name) .. "'") end
    run_test = o.name
  else
    if #o.ids == 0 then return usage("missing RUN_TEST_ID (or --name NAME)") end
    if #o.ids > 1 then
      return usage("expected one RUN_TEST_ID, got " .. #o.ids .. " ('" .. show(o.ids[2]) .. "' is extra)")
    end
    if not kpis.is_uuid(o.ids[1]) then
      return usage("invalid RUN_TEST_ID: not a UUID: '" .. show(o.ids[1]) .. "' (a name goes with --name)")
    end
    run_test = o.ids[1]:lower()
  end
  for _, sc in ipairs(o.scenarios) do
    if not kpis.is_uuid(sc) then return usage("invalid --scenario: not a UUID: '" .. show(sc) .. "'") end
  end
  local timeout = gate.DEFAULT_WAIT
  if o.timeout then
    local d, derr = require("kpiwatch.alert").parse_duration(o.timeout)
    if not d or d <= 0 then
      return usage("bad --timeout '" .. show(o.timeout) .. "': " .. (derr or "must be positive") .. " (e.g. 45m)")
    end
    timeout = d
  end
  o.run_test = run_test -- for --baseline previous
  -- every argument is checked before the run starts
  local plan, code = gate.prepare(o, env, flags or {})
  if not plan then return code end
  plan.wait = timeout

  local id, err = start(run_test, o.scenarios)
  if not id then
    if plan.sandbox then plan.sandbox:close() end
    local c = (err.kind == "invalid_id" or err.kind == "config") and 2 or 3
    env.stderr:write("kpiwatch run: cannot start run test '", show(run_test), "': ", err.kind, ": ",
      tostring(err.message), "\n")
    return c
  end
  env.stdout:write(id, "\n")
  env.stdout:flush()
  local gh = env.getenv("GITHUB_OUTPUT")
  local gh_failed = false
  if gh and gh ~= "" then
    local ok, werr = write_github_output(gh, id)
    if not ok then
      env.stderr:write("kpiwatch run: cannot append to GITHUB_OUTPUT: ", tostring(werr), "\n")
      gh_failed = true
    end
  end
  code = gate.judge(plan, id, env, { run_test = run_test })
  if gh_failed and code == 0 then code = 2 end
  return code
end

return setmetatable(M, {
  __call = function(_, argv, flags) return M.run(argv, flags) end,
})
