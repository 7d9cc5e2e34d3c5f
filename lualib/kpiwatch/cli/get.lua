-- kpiwatch get ID [--json]: print the KPIs of one execution.
--
-- The readable summary by default; with --json the normalized object on
-- one line (snake_case keys, integers as integers, nulls as null,
-- execution_id first). Exit status: 0 ok; 2 usage, an invalid id or
-- missing credentials; 3 any API or network error (after retries). Errors
-- are one line on stderr: "kpiwatch: <kind>: <message> (execution <id>)".

local USAGE = [[
usage: kpiwatch [options] get ID [--json]

Print the KPIs of the test execution ID (a UUID), and its status: the
KPIs of an execution that is not completed (pending, running, evaluating;
failed or cancelled) are partial, and a warning on stderr says so.
  --json      print the normalized JSON object instead of the summary
  -h, --help  show this help
Global options (--base-url, --timeout, --retries, --ca-file, --verbose,
--sandbox, --allow-insecure-http) go before 'get'. Credentials: FI_API_KEY and FI_SECRET_KEY.
Exit status: 0 ok, 2 bad id / usage / missing credentials, 3 API or network error.
]]

local args = require "kpiwatch.cli.args"

local OPTIONS = { ["--json"] = { flag = true } }

local function usage_error(msg)
  return args.usage_error("kpiwatch: get", msg)
end

return function(argv)
  local errors = require "kpiwatch.errors"
  local o, stop = args.command(argv, { prog = "kpiwatch: get", usage = USAGE, options = OPTIONS })
  if not o then return stop end
  local ids, as_json = o.args, o.json
  if #ids ~= 1 then
    return usage_error(#ids == 0 and "missing execution ID" or "expected one execution ID")
  end

  local kpis = require "kpiwatch.kpis"
  -- The status first: KPIs read after it are at least as new. A status
  -- that cannot be read does not hide the KPIs; it is a warning.
  local sok, exec = true, nil
  if kpis.is_uuid(ids[1]) then sok, exec = pcall(kpis.execution, ids[1]) end
  if not sok and not errors.is(exec) then error(exec, 0) end
  local ok, k = pcall(kpis.get, ids[1])
  if not ok then
    if not errors.is(k) then error(k, 0) end
    local code = (k.kind == "invalid_id" or k.kind == "config") and 2 or 3
    local where = k.execution_id and (" (execution " .. k.execution_id .. ")") or ""
    io.stderr:write("kpiwatch: ", k.kind, ": ", k.message, where, "\n")
    return code
  end
  local model = require "kpiwatch.model"
  local shared = require "kpiwatch.shared"
  local status
  if not sok then
    io.stderr:write("kpiwatch: warning: cannot read the execution's status (", exec.kind, ": ",
      tostring(exec.message), "): the KPIs may be partial\n")
  else
    status = shared.clean(tostring(exec.status), 300)
    if exec.status ~= "completed" then
      io.stderr:write("kpiwatch: warning: execution ", k.execution_id or ids[1], " is ", status,
        ": its KPIs are partial\n")
    else
      -- completed KPIs are final: keep them in the history
      local w = require("kpiwatch.history.fetch").record(k, { execution_id = exec.id, status = "completed",
        start_time = exec.start_time })
      if w then io.stderr:write("kpiwatch: warning: ", w, "\n") end
    end
  end
  if as_json then
    io.stdout:write(model.encode_json(k, require("kpiwatch.json").encode), "\n")
  else
    if status then io.stdout:write("status  ", status, "\n") end
    io.stdout:write(tostring(k), "\n")
  end
  io.stdout:flush()
  return 0
end
