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

local function usage_error(msg)
  io.stderr:write("kpiwatch: executions: ", msg, "\n", USAGE)
  return 2
end

return function(args)
  local errors = require "kpiwatch.errors"
  local kpis = require "kpiwatch.kpis"
  local execution = require "kpiwatch.execution"
  local show = kpis._show_id
  local opts, as_json, positional = {}, false, {}
  local i, only_pos = 1, false
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if name and not only_pos then a = name end
    local function value()
      if inline then return inline end
      i = i + 1
      return args[i]
    end
    if only_pos or a:sub(1, 1) ~= "-" or a == "-" then
      positional[#positional + 1] = args[i]
    elseif a == "--" then
      only_pos = true
    elseif a == "--json" then
      as_json = true
    elseif a == "--status" then
      local v = value()
      if v == nil then return usage_error("option '--status' needs a value") end
      local s = execution.normalize_status(v)
      if not STATUSES[s] then return usage_error("unknown status '" .. show(v) .. "'") end
      opts.status = s
    elseif a == "--limit" then
      local v = value()
      local n = math.tointeger(tonumber(v or ""))
      if not n or n < 1 then
        return usage_error("option '--limit' needs a positive integer, got '" .. show(v or "") .. "'")
      end
      opts.limit = n
    elseif a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      return 0
    else
      return usage_error("unknown option '" .. show(a) .. "'")
    end
    i = i + 1
  end
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
