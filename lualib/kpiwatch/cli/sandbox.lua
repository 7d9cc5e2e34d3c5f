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

local args = require "kpiwatch.cli.args"

-- check(message, convert): an option check that refuses with `message`
local function check(message, convert)
  return function(v)
    local conv = convert(v)
    if conv == nil then return nil, message end
    return conv
  end
end

local OPTIONS = {
  ["--port"] = { check = check("--port needs an integer from 0 to 65535", function(v)
    local p = math.tointeger(tonumber(v))
    if p and p >= 0 and p <= 65535 then return p end
  end) },
  ["--host"] = {},
  ["--fixtures"] = { key = "fixtures_dir" },
  ["--fault-rate"] = { repeats = true, key = "rates", check = check("--fault-rate needs SPEC=PROBABILITY", function(v)
    local spec, p = v:match("^(.+)=([%d.]+)$")
    if spec and tonumber(p) then return { spec, tonumber(p) } end
  end) },
  ["--seed"] = { check = check("--seed needs an integer", function(v) return math.tointeger(tonumber(v)) end) },
  ["--fault"] = { repeats = true, key = "ids", check = check("--fault needs ID=SPEC", function(v)
    local id, spec = v:match("^([^=]+)=(.+)$")
    if id then return { id, spec } end
  end) },
  ["--api-key"] = {},
  ["--secret-key"] = {},
  ["--speed"] = { check = check("--speed needs a positive number", function(v)
    local x = tonumber(v)
    if x and x > 0 and x < math.huge then return x end
  end) },
  ["--list"] = { flag = true },
  ["--log"] = { flag = true },
  ["--verbose"] = { flag = true, key = "log" },
}

return function(argv)
  local opts, stop = args.command(argv, { prog = "kpiwatch: sandbox", usage = USAGE, options = OPTIONS,
    positionals = false })
  if not opts then return stop end
  local errors = require "kpiwatch.errors"
  local sandbox = require "kpiwatch.sandbox"
  local task = require "kpiwatch.task"
  -- the sandbox's fault table: rates by SPEC, SPECs by ID (the last one given wins)
  opts.faults = { ids = {}, rates = {}, seed = opts.seed }
  for _, r in ipairs(opts.rates) do opts.faults.rates[r[1]] = r[2] end
  for _, f in ipairs(opts.ids) do opts.faults.ids[f[1]] = f[2] end
  opts.rates, opts.ids, opts.seed, opts.args = nil, nil, nil, nil

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
