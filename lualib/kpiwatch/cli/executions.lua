-- kpiwatch executions RUN_TEST [--status S] [--limit N] [--json]: the
-- executions of a run test (an id or a name), newest first, as a table or
-- a JSON array. Exit status: 0 ok; 2 usage or configuration; 3 any API or
-- network error (an unknown run test, a page that fails after retries).

local USAGE = [[
usage: kpiwatch [options] executions RUN_TEST [--status S] [--limit N] [--json]

List the executions of a run test (its id, or its name), newest first, from
every page: id, status, start, calls, success rate, error.
  --status S   only executions with this status (pending, running, evaluating,
               cancelling, completed, failed, cancelled; any casing)
  --limit N    at most N executions (the newest)
  --json       a JSON array of execution objects (lowercase status)
  -h, --help   show this help
Global options (--base-url, --timeout, --retries, --verbose, --sandbox) go
before 'executions'. Credentials: FI_API_KEY and FI_SECRET_KEY.
Exit status: 0 ok, 2 usage / missing credentials, 3 API or network error.
]]

local STATUSES = { pending = true, running = true, evaluating = true, cancelling = true, completed = true,
  failed = true, cancelled = true }

local args = require "kpiwatch.cli.args"

local function usage_error(msg)
  return args.usage_error("kpiwatch: executions", msg)
end

local OPTIONS = {
  ["--json"] = { flag = true },
  ["--status"] = { check = function(v)
    local s = require("kpiwatch.execution").normalize_status(v)
    if not STATUSES[s] then return nil, "unknown status '" .. args.show(v) .. "'" end
    return s
  end },
  ["--limit"] = { check = function(v, name)
    local n = math.tointeger(tonumber(v))
    if not n or n < 1 then
      return nil, "option '" .. name .. "' needs a positive integer, got '" .. args.show(v) .. "'"
    end
    return n
  end },
}

return function(argv)
  local errors = require "kpiwatch.errors"
  local execution = require "kpiwatch.execution"
  local o, stop = args.command(argv, { prog = "kpiwatch: executions", usage = USAGE, options = OPTIONS })
  if not o then return stop end
  local opts, as_json, positional = { status = o.status, limit = o.limit }, o.json, o.args
  if #positional ~= 1 then
    return usage_error(#positional == 0 and "missing RUN_TEST (an id or a name)" or "expected one RUN_TEST")
  end

  local ok, list = pcall(execution.executions, positional[1], opts)
  if not ok then
    if not errors.is(list) then error(list, 0) end
    local code = (list.kind == "invalid_id" or list.kind == "config") and 2 or 3
    io.stderr:write("kpiwatch: ", list.kind, ": ", list.message, "\n")
    return code
  end
  if as_json then
    local out = {}
    for n, e in ipairs(list) do out[n] = e:to_json() end
    if #out == 0 then out = require("kpiwatch.json").array() end
    io.stdout:write(require("kpiwatch.json").encode(out), "\n")
  else
    io.stdout:write(tostring(list), "\n")
  end
  io.stdout:flush()
  return 0
end
