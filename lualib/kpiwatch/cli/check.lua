-- kpiwatch check RULES.lua ID... | --run-test RT: the rules file's rules
-- and hooks, once (alert.check), over executions or the newest completed
-- execution of run tests. The exit status is the verdict.

local errors = require "kpiwatch.errors"
local args = require "kpiwatch.cli.args"
local cmd = require "kpiwatch.cli.rules_cmd"

local PROG = "kpiwatch check"

local USAGE = [[
usage: kpiwatch [options] check RULES.lua [ID...] [--id ID]... [--run-test RT]... [--json]

Evaluate the rules of RULES.lua once over the executions ID... and the
newest completed execution of each run test RT, and notify the hooks the
file registers (alert.hook) of the alerts that fire. RULES.lua is a rules
file as `gate --rules` reads it: alert.rule{...} calls, or a returned list
of rule tables; hooks registered with alert.hook are called here (the gate
ignores them). A notification that cannot be delivered is spooled and sent
again by the next check (KPIWATCH_SPOOL). Without hooks, the firing alerts
are printed on stdout.
  --id ID         also execution ID (the same as an ID argument, as for
                  watch); repeatable
  --run-test RT   also the newest completed execution of run test RT (its
                  id or its name); repeatable
  --json          print a JSON summary on stdout (firing, no_data, errors,
                  delivered, spooled, lost)
  -h, --help      show this help
Global options (--sandbox, --base-url, --timeout, --retries, --verbose) go
before 'check'. Credentials: FI_API_KEY and FI_SECRET_KEY.
Exit status:
  0         no rule fires
  1         a rule fires, or has no data (unless its no_data = "ok"), or a
            run test has no completed execution
  2         usage error, bad or unreadable rules file, invalid ID
  3         the API or the network failed, or a notification could be
            neither delivered nor spooled
  129, 130, 143  stopped by SIGHUP, SIGINT or SIGTERM (SIGHUP and SIGTERM
            during the deliveries: what is left is spooled)
]]

local OPTIONS = args.merge(cmd.OPTIONS, { ["--json"] = { flag = true } })

-- The newest completed execution of each run test -> ids, and the run
-- tests that have none.
local function newest_completed(run_tests)
  local kpis = require "kpiwatch.kpis"
  local ids, none = {}, {}
  for _, rt in ipairs(run_tests) do
    local list = kpis.executions(rt, { status = "completed", limit = 1 })
    if list[1] then ids[#ids + 1] = list[1].id else none[#none + 1] = rt end
  end
  return ids, none
end

local function entry_json(e)
  return { rule = e.rule, execution_id = e.execution_id, metric = e.metric,
    value = type(e.value) == "number" and e.value or nil, severity = e.severity,
    summary = e.summary, reason = e.reason, kind = e.kind }
end

local function write_json(rep, none)
  local json = require "kpiwatch.json"
  local function list(l)
    local out = json.array()
    for i, e in ipairs(l) do out[i] = entry_json(e) end
    return out
  end
  local no_run = json.array()
  for i, rt in ipairs(none) do no_run[i] = rt end
  io.stdout:write(json.encode({
    ok = rep.ok and #none == 0, firing = list(rep.firing), no_data = list(rep.no_data),
    errors = list(rep.errors), no_completed_execution = no_run,
    delivered = rep.delivered, spooled = rep.spooled, lost = rep.lost,
  }), "\n")
end

return function(argv)
  local o, stop = args.command(argv, { prog = PROG, usage = USAGE, options = OPTIONS })
  if not o then return stop end
  local path = table.remove(o.args, 1)
  if not path then return cmd.usage_error(PROG, "missing the rules file") end
  local ids = {}
  for _, id in ipairs(o.args) do
    local conv = args.uuid(id, "--id")
    if not conv then return cmd.usage_error(PROG, "invalid execution ID '" .. cmd.show(id) .. "': not a UUID") end
    ids[#ids + 1] = conv
  end
  table.move(o.id, 1, #o.id, #ids + 1, ids)
  local run_tests = o.run_test
  if #ids == 0 and #run_tests == 0 then
    return cmd.usage_error(PROG, "nothing to check: give execution IDs or --run-test")
  end
  local reg, lerr = cmd.load(path)
  if not reg then return cmd.usage_error(PROG, lerr) end

  local okr, got, none = pcall(newest_completed, run_tests)
  if not okr then return cmd.fail(PROG, got) end
  for _, rt in ipairs(none) do
    io.stderr:write(PROG, ": run test '", cmd.show(rt), "' has no completed execution\n")
  end
  table.move(got, 1, #got, #ids + 1, ids)

  -- SIGINT, SIGTERM or SIGHUP during the deliveries: alert.check spools what is
  -- left and raises kind "interrupted"
  local ok, rep = pcall(reg.check, reg, ids)
  local code
  if not ok then
    local e = rep
    if not (errors.is(e) and (e.kind == "lost" or e.kind == "interrupted") and e.report) then
      return cmd.fail(PROG, e)
    end
    io.stderr:write(PROG, ": ", tostring(e.message), "\n")
    rep, code = e.report, e.kind == "lost" and 3 or cmd.signal_code(e.signal)
  end
  if #reg.hook_names == 0 then
    local notify = require "kpiwatch.notify"
    for _, a in ipairs(rep.firing) do
      io.stdout:write(notify.format_text(a), "\n")
    end
  end
  if o.json then write_json(rep, none) end
  io.stdout:flush()
  if code then return code end
  for _, e in ipairs(rep.errors) do
    if not e.rule then return 3 end -- an execution whose KPIs could not be fetched
  end
  return (rep.ok and #none == 0) and 0 or 1
end
