-- kpiwatch.cli: the command line, run as the main task.
--
-- Two shapes share one parser:
--   kpiwatch [options] [script [args]]      lua.c-compatible
--   kpiwatch [options] COMMAND [args]       get, gate, sandbox
-- The returned integer is the process exit status (doc/kpiwatch.1: 0 ok,
-- 1 a check failed, 2 usage/config/script error, 3 API or network error).

local args = require "kpiwatch.cli.args"

local M = {}

local VERSION = "kpiwatch 0.1.0"

M.commands = {
  get = "kpiwatch.cli.get",
  gate = "kpiwatch.cli.gate",
  run = "kpiwatch.cli.run",
  sandbox = "kpiwatch.cli.sandbox",
  compare = "kpiwatch.cli.compare",
  exporter = "kpiwatch.cli.exporter",
  executions = "kpiwatch.cli.executions",
  check = "kpiwatch.cli.check",
  watch = "kpiwatch.cli.watch",
  history = "kpiwatch.cli.history",
}

M.usage = [==[
usage: kpiwatch [options] [script [args]]
       kpiwatch [options] get ID [--json]
       kpiwatch [options] gate ID --require 'avg_score>=0.8' [...]
       kpiwatch [options] run RUN_TEST_ID|--name NAME --require ... [...]
       kpiwatch [options] sandbox [--port N] [--fixtures DIR] [--list]
       kpiwatch [options] compare A B [--format text|json|markdown]
       kpiwatch [options] exporter [--run-test RT|--id ID]... --listen A:P
       kpiwatch [options] executions RUN_TEST [--status S] [--limit N] [--json]
       kpiwatch [options] check RULES.lua [ID...] [--id ID]... [--run-test RT]... [--json]
       kpiwatch [options] watch RULES.lua [--run-test RT]... [--id ID]...
                          [--every DUR] [--state FILE] [--metrics A:P]
       kpiwatch [options] history RUN_TEST|--name NAME [--html FILE] [...]

Lua options (as lua):
  -e stat       execute string 'stat'
  -i            enter interactive mode after running the script
  -l mod        require library 'mod' into global 'mod' (-l g=mod: into 'g')
  -v            show version information
  -E            ignore environment variables (LUA_INIT, LUA_PATH, LUA_CPATH)
  -W            turn warnings on
  --            stop handling options
  -             execute stdin and stop handling options

kpiwatch options:
  --sandbox             start the built-in sandbox API in this process and
                        point the KPIs client at it (no account needed)
  --base-url URL        API base URL (default $FI_BASE_URL or
                        https://api.futureagi.com)
  --timeout SECONDS     per-request timeout (default 30)
  --retries N           retries on 5xx, 429, timeouts and connection errors
                        (default 3)
  --ca-file FILE        trust the CA certificates of FILE (PEM) for TLS
                        instead of the system's (default $KPIWATCH_CA_FILE)
  --verbose             trace each request on stderr (never the secrets)
  --allow-insecure-http allow plain http:// to a host other than loopback
  --history FILE        keep completed executions in FILE (default
                        $KPIWATCH_HISTORY or $XDG_DATA_HOME/kpiwatch/history.db)
  --no-history          record nothing and read no history
  -h, --help            show this help
  --version             show the version

Commands:
  get ID [--json]       print the KPIs of one execution (summary or JSON)
  gate ID ...           gate a CI pipeline (kpiwatch gate --help)
  run RUN_TEST ...      start a run, wait for it, gate it (kpiwatch run --help)
  sandbox [--port N]    serve the sandbox API on loopback until Ctrl-C
                        (--list: the fixtures and what each is for)
  compare A B           two executions side by side, with deltas
  exporter ...          serve KPIs as Prometheus metrics (kpiwatch exporter --help)
  executions RUN_TEST   list a run test's executions (id or name), newest first
  check RULES.lua ...   run a rules file's rules and hooks once (kpiwatch check --help)
  watch RULES.lua ...   watch executions and run tests with a rules file until
                        Ctrl-C or SIGTERM (kpiwatch watch --help)
  history RUN_TEST      trends of a run test's completed executions, as a
                        table, JSON, CSV or an HTML chart (kpiwatch history --help)

Environment:
  FI_API_KEY, FI_SECRET_KEY  credentials (headers X-Api-Key, X-Secret-Key)
  FI_BASE_URL                API base URL
  KPIWATCH_CA_FILE           CA certificates (PEM) to verify the API's TLS with
  LUA_INIT_5_4, LUA_INIT     run before the script (as lua does; not with -E)
  KPIWATCH_LUALIB            load lualib/ from this folder, not the binary
  KPIWATCH_HISTORY           history file ('off': none); see kpiwatch history --help

Exit status: 0 ok, 1 a check failed, 2 usage/config/script error,
             3 API or network error, 129 hangup (SIGHUP),
             130 interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM).
]==]

local function fail(msg)
  io.stderr:write("kpiwatch: ", msg, "\n")
  return 2
end

--- The connection options, before any command (M.parse) and,
--- except --history and --no-history, after gate and run: the key of each
--- in the client's flags.
M.GLOBAL_OPTIONS = {
  ["--base-url"] = { key = "base_url" },
  ["--timeout"] = { key = "timeout", check = args.non_negative },
  ["--retries"] = { key = "retries", check = args.non_negative_integer },
  ["--ca-file"] = { key = "ca_file" },
  ["--history"] = { key = "history" },
  ["--sandbox"] = { flag = true, key = "sandbox" },
  ["--verbose"] = { flag = true, key = "verbose" },
  ["--allow-insecure-http"] = { flag = true, key = "allow_insecure_http" },
  ["--no-history"] = { flag = true, key = "no_history" },
}

-- Parse argv (0-based, as C gives it) the way lua.c's collectargs does,
-- plus the kpiwatch long options. Returns a plan or nil, message.
function M.parse(argv)
  local plan = { actions = {}, flags = {}, script = nil }
  local i, n = 1, #argv
  while i <= n do
    local a = argv[i]
    if a:sub(1, 1) ~= "-" then
      break
    elseif a == "--" then
      i = i + 1
      plan.dashdash = true
      break
    elseif a == "-" then
      break
    elseif a == "-E" then
      plan.noenv = true
    elseif a == "-W" then
      plan.warnings = true
    elseif a == "-i" then
      plan.interactive = true
      plan.version = true
    elseif a == "-v" then
      plan.version = true
    elseif a:match("^%-[el]") then
      local opt, val = a:sub(2, 2), a:sub(3)
      if val == "" then
        i = i + 1
        val = argv[i]
        if val == nil or (val:sub(1, 1) == "-" and val ~= "-") then
          return nil, "'-" .. opt .. "' needs argument"
        end
      end
      plan.actions[#plan.actions + 1] = { opt, val }
    elseif a == "-h" or a == "--help" then
      plan.help = true
    elseif a == "--version" then
      plan.version = true
      plan.version_only = true
    else
      -- the connection options, as gate and run take them (kpiwatch.cli.args)
      local opt, val, last = args.option(argv, i, M.GLOBAL_OPTIONS)
      if not opt then
        if last == "unknown" or last == "inline" then
          return nil, "unrecognized option '" .. a .. "' (try 'kpiwatch --help')"
        end
        return nil, val
      end
      i = last
      plan.flags[opt.key] = val
    end
    i = i + 1
  end
  if i <= n then
    plan.script = i
    local a = argv[i]
    if not plan.dashdash and M.commands[a] then plan.command = a end
  end
  return plan
end

-- arg exactly as lua.c's createargtable builds it.
local function make_arg(argv, script)
  local n = #argv
  if not script then script = 0 end
  local t = {}
  for i = 0, n do t[i - script] = argv[i] end
  return t
end

local function pack_args(arg)
  return table.unpack(arg, 1, #arg)
end

-- kpiwatch error kinds that mean the API or the network failed: a script
-- that lets one escape exits 3, like the commands. Any other kpiwatch
-- error (config, invalid_id, ...) is a usage error: 2.
M.API_KINDS = {
  auth = true, not_found = true, request = true, rate_limited = true, server = true,
  protocol = true, timeout = true, connect = true, network = true, dns = true, tls = true,
  too_large = true, invalid_url = true,
  lost = true, -- alert.check: a notification could be neither delivered nor spooled
}

-- The exit status of a stop by a signal (alert.check's "interrupted").
local SIGNAL_STATUS = { int = 130, term = 143, hup = 129 }
M.SIGNAL_STATUS = SIGNAL_STATUS

-- The innermost frame of the user's code (not kpiwatch's lualib, not C) on
-- the stack of an error: "file:line", or nil.
local function user_where(level)
  local lib = os.getenv("KPIWATCH_LUALIB")
  lib = lib and lib ~= "" and ("@" .. lib) or nil
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then return nil end
    local src = info.source
    if info.what ~= "C" and src:sub(1, 8) ~= "@lualib/" and not (lib and src:sub(1, #lib) == lib)
      and (info.currentline or 0) > 0 then
      return info.short_src .. ":" .. info.currentline
    end
    level = level + 1
  end
end

-- Run a user chunk. A kpiwatch error object that escapes it is one line
-- on stderr (the script's file:line, the message, the execution) and exit
-- 3 or 2; any other error is its message and traceback, and exit 2.
-- Returns nil on success.
local function run_user(chunk, ...)
  local errors = require "kpiwatch.errors"
  local where
  local ok, e = xpcall(chunk, function(err)
    if errors.is(err) then
      where = user_where(3)
      return err
    end
    return { message = tostring(err), traceback = debug.traceback("", 2) }
  end, ...)
  if ok then return nil end
  if errors.is(e) then
    local line = tostring(e)
    local id = e.execution_id
    if type(id) == "string" and not line:find(id, 1, true) then
      line = line .. " (execution " .. id .. ")"
    end
    io.stderr:write("kpiwatch: ", where and (where .. ": ") or "", line, "\n")
    if e.kind == "interrupted" then return SIGNAL_STATUS[e.signal] or 130 end
    return M.API_KINDS[e.kind] and 3 or 2
  end
  -- the frames below the chunk are the driver's, not the script's
  local tb = e.traceback:gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  io.stderr:write("kpiwatch: ", e.message, tb, "\n")
  return 2
end

-- LUA_INIT_5_4 or LUA_INIT: "@file" or a chunk, as lua.c's handle_luainit.
local function run_luainit()
  local name = "=LUA_INIT_5_4"
  local init = os.getenv("LUA_INIT_5_4")
  if not init then
    name = "=LUA_INIT"
    init = os.getenv("LUA_INIT")
  end
  if not init then return true end
  local chunk, err
  if init:sub(1, 1) == "@" then
    chunk, err = loadfile(init:sub(2))
  else
    chunk, err = load(init, name)
  end
  if not chunk then return nil, err end
  chunk()
  return true
end

local function apply_flags(flags)
  if next(flags) == nil then return end
  if flags.history or flags.no_history then
    require("kpiwatch.history").configure({ path = flags.history, disabled = flags.no_history })
  end
  local client = {
    base_url = flags.base_url, timeout = flags.timeout, retries = flags.retries,
    verbose = flags.verbose, allow_insecure_http = flags.allow_insecure_http,
    ca_file = flags.ca_file,
  }
  if next(client) then require("kpiwatch.kpis")._set_flags(client) end
end

local function run_repl()
  return require("kpiwatch.repl").run()
end

function M.main(argv)
  local plan, err = M.parse(argv)
  if not plan then
    io.stderr:write("kpiwatch: ", err, "\n", M.usage)
    return 2
  end
  if plan.help then
    io.stdout:write(M.usage)
    return 0
  end
  if plan.version then
    print(VERSION .. " (" .. _VERSION .. ")")
    if plan.version_only then return 0 end
  end
  if plan.warnings then warn("@on") end
  -- A value the parser let through but the client refuses (--timeout 0,
  -- --retries 1000) is a usage error in one line, not a traceback.
  local okf, ferr = pcall(apply_flags, plan.flags)
  if not okf then
    if type(ferr) == "table" and type(ferr.message) == "string" then return fail(ferr.message) end
    error(ferr, 0)
  end

  -- The in-process sandbox serves in the background: tasks the script
  -- leaves running can still use it, and it never keeps the process alive.
  if plan.flags.sandbox then
    require("kpiwatch.kpis").point_at(require("kpiwatch.sandbox").start_for_client())
  end

  if not plan.noenv then
    local ok, e = run_luainit()
    if not ok then return fail(tostring(e)) end
  end

  -- A command: its own arguments follow it; `arg` is built as for a script.
  if plan.command then
    _G.arg = make_arg(argv, plan.script)
    local rest = table.move(argv, plan.script + 1, #argv, 1, {})
    local code = require(M.commands[plan.command])(rest, plan.flags)
    return code or 0
  end

  _G.arg = make_arg(argv, plan.script)
  for _, act in ipairs(plan.actions) do
    if act[1] == "e" then
      local chunk, e = load(act[2], "=(command line)")
      if not chunk then return fail(e) end
      local code = run_user(chunk)
      if code then return code end
    else
      local g, mod = act[2]:match("^([^=]+)=(.+)$")
      if not g then g, mod = act[2], act[2] end
      _G[g] = require(mod)
    end
  end

  if plan.script then
    local fname = argv[plan.script]
    if fname == "-" and argv[plan.script - 1] ~= "--" then fname = nil end
    local chunk, e = loadfile(fname)
    if not chunk then return fail(e) end
    local code = run_user(chunk, pack_args(_G.arg))
    if code then return code end
  end

  if plan.interactive then
    return run_repl() or 0
  elseif not plan.script and #plan.actions == 0 and not plan.version then
    if require("kpiwatch.shared").isatty(0) then
      print(VERSION .. " (" .. _VERSION .. ")")
      return run_repl() or 0
    end
    local chunk, e = loadfile(nil)
    if not chunk then return fail(e) end
    local code = run_user(chunk)
    if code then return code end
  end
  return nil
end

return M
