-- kpiwatch sandbox: serve the sandbox KPIs API on loopback until Ctrl-C
-- (or SIGTERM), printing its URL, credentials and fixtures.

local USAGE = [[
usage: kpiwatch sandbox [--port N] [--host H] [--fixtures DIR]
                        [--fault-rate SPEC=P ...] [--seed N] [--fault ID=SPEC ...]
                        [--api-key K] [--secret-key S] [--speed X] [--log]
       kpiwatch sandbox --list

Serve a stand-in of GET /simulate/test-executions/{id}/kpis/ with the
built-in fixture executions (and DIR/<uuid>.json files), and the run tests,
executions, calls and execute/cancel routes of the run test fixtures, until Ctrl-C.
  --port N             port to listen on (default 0: any free port)
  --host H             address to bind (default 127.0.0.1)
  --fixtures DIR       also serve the recorded bodies DIR/<uuid>.json
  --fault-rate SPEC=P  inject fault SPEC into a fraction P of requests
                       (e.g. 500=0.1, 429:2=0.05, drop=0.05, delay:3=0.02, broken=0.01)
  --seed N             seed of the fault draws (default 1)
  --fault ID=SPEC      every request for ID gets fault SPEC
  --api-key K, --secret-key S   credentials to accept (default: the sandbox's)
  --speed X            run executions X times faster (default 1: about 7 s from
                       pending to completed; also KPIWATCH_SANDBOX_SPEED for --sandbox)
  --log, --verbose     one line per request on stderr
  --list               print the built-in fixtures (id, name, what each is
                       for) and exit, serving nothing
  -h, --help           show this help
Per request, a client may ask for a fault with the header X-Sandbox-Fault: SPEC
or the query ?fault=SPEC. SPECs: 500 502 503 504 429[:N] 429-date[:N]
delay:S broken html drop flaky 401 404 ok, joined with + (delay:1+500).
]]

local function usage_error(msg)
  io.stderr:write("kpiwatch: sandbox: ", msg, "\n", USAGE)
  return 2
end

return function(args)
  local errors = require "kpiwatch.errors"
  local sandbox = require "kpiwatch.sandbox"
  local task = require "kpiwatch.task"
  local opts = { faults = { ids = {}, rates = {} } }
  local i = 1
  local function value(name)
    i = i + 1
    local v = args[i]
    if v == nil then error({ usage = "option '" .. name .. "' needs a value" }) end
    return v
  end
  local ok, perr = pcall(function()
    while i <= #args do
      local a = args[i]
      local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
      if name then
        a = name
        table.insert(args, i + 1, inline)
      end
      if a == "--port" then
        local p = math.tointeger(tonumber(value(a)))
        if not p or p < 0 or p > 65535 then error({ usage = "--port needs an integer from 0 to 65535" }) end
        opts.port = p
      elseif a == "--host" then
        opts.host = value(a)
      elseif a == "--fixtures" then
        opts.fixtures_dir = value(a)
      elseif a == "--fault-rate" then
        local spec, p = value(a):match("^(.+)=([%d.]+)$")
        if not spec or not tonumber(p) then error({ usage = "--fault-rate needs SPEC=PROBABILITY" }) end
        opts.faults.rates[spec] = tonumber(p)
      elseif a == "--seed" then
        local s = math.tointeger(tonumber(value(a)))
        if not s then error({ usage = "--seed needs an integer" }) end
        opts.faults.seed = s
      elseif a == "--fault" then
        local id, spec = value(a):match("^([^=]+)=(.+)$")
        if not id then error({ usage = "--fault needs ID=SPEC" }) end
        opts.faults.ids[id] = spec
      elseif a == "--api-key" then
        opts.api_key = value(a)
      elseif a == "--secret-key" then
        opts.secret_key = value(a)
      elseif a == "--speed" then
        local x = tonumber(value(a))
        if not x or not (x > 0 and x < math.huge) then error({ usage = "--speed needs a positive number" }) end
        opts.speed = x
      elseif a == "--list" then
        opts.list = true
      elseif a == "--log" or a == "--verbose" then
        opts.log = true
      elseif a == "-h" or a == "--help" then
        error({ help = true })
      else
        error({ usage = "unknown argument '" .. require("kpiwatch.kpis")._show_id(a) .. "'" })
      end
      i = i + 1
    end
  end)
  if not ok then
    if type(perr) == "table" and perr.help then
      io.stdout:write(USAGE)
      return 0
    end
    if type(perr) == "table" and perr.usage then return usage_error(perr.usage) end
    error(perr, 0)
  end

  if opts.list then
    local fixtures = require "kpiwatch.fixtures"
    local out = { string.format("%-36s  %-18s %s", "ID", "NAME", "WHAT IT IS FOR") }
    for _, f in ipairs(fixtures.list()) do
      out[#out + 1] = string.format("%-36s  %-18s %s", f.id, f.name, f.description or "")
    end
    out[#out + 1] = ""
    out[#out + 1] = string.format("%-36s  %-18s %s", "RUN TEST", "NAME", "WHAT IT IS FOR")
    for _, rt in ipairs(fixtures.run_tests()) do
      out[#out + 1] = string.format("%-36s  %-18s %s", rt.id, rt.name, rt.description)
    end
    io.stdout:write(table.concat(out, "\n"), "\n")
    return 0
  end

  local okc, sb = pcall(sandbox.start, opts)
  if not okc then
    if errors.is(sb) then
      io.stderr:write("kpiwatch: sandbox: ", tostring(sb), "\n")
      return (sb.kind == "config") and 2 or 3
    end
    error(sb, 0)
  end

  local fixtures = require "kpiwatch.fixtures"
  local out = {}
  out[#out + 1] = "kpiwatch sandbox: serving the Future AGI KPIs API on " .. sb.url
  out[#out + 1] = "  export FI_BASE_URL=" .. sb.url
  -- The built-in credentials are public; ones given on the command line
  -- are the user's secrets and are not echoed (a CI log keeps stdout).
  local function cred(name, given, builtin, flag)
    if given == builtin then return "  export " .. name .. "=" .. given end
    return "  export " .. name .. "=...  (the value given with " .. flag .. ", not shown)"
  end
  out[#out + 1] = cred("FI_API_KEY", sb.api_key, sandbox.API_KEY, "--api-key")
  out[#out + 1] = cred("FI_SECRET_KEY", sb.secret_key, sandbox.SECRET_KEY, "--secret-key")
  out[#out + 1] = "fixtures (GET " .. sb.url .. "/simulate/test-executions/ID/kpis/):"
  for _, id in ipairs(sb.ids()) do
    local f = fixtures.get(id) or sb.fixture(id) or {}
    out[#out + 1] = string.format("  %s  %-18s %s", id, f.name or "", f.description or "")
  end
  out[#out + 1] = "run tests (GET " .. sb.url .. "/simulate/run-tests/ID/executions/):"
  for _, rt in ipairs(fixtures.run_tests()) do
    out[#out + 1] = string.format("  %s  %-18s %s", rt.id, rt.name, rt.description)
  end
  out[#out + 1] = "Ctrl-C to stop."
  io.stdout:write(table.concat(out, "\n"), "\n")
  io.stdout:flush()

  local me = task.running()
  local term = task.spawn(function()
    task.wait_signal("term")
    if me then task.cancel(me, "terminated") end
  end)
  local got_int = pcall(task.wait_signal, "int")
  if got_int then task.cancel(term) end
  sb:close()
  io.stderr:write("kpiwatch sandbox: stopped after ", tostring(sb.requests), " requests\n")
  return 0
end
