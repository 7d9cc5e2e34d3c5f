-- kpiwatch.cli.args: the one option parser of the commands (get, gate,
-- run, sandbox, compare, exporter, executions, check, watch, history).
--
-- Each command declares its options in a table; the grammar is the same
-- everywhere: `--opt VALUE` and `--opt=VALUE`, optional values (`--wait`,
-- `--wait=30m`), repeatable options, flags, `-h`/`--help`, `--` (the rest
-- are positional) and positionals anywhere. Errors are one line without
-- the command's name: the command writes them with M.usage_error and
-- decides the exit status (2). The lua.c-compatible options before the
-- command (kpiwatch.cli.parse) follow lua.c's grammar, not this one; it
-- reads its connection options (kpiwatch.cli.GLOBAL_OPTIONS) with M.option.

local shared = require "kpiwatch.shared"

local M = {}

--- Server or user text as it appears in a message: control characters
--- neutralised, at most 60 bytes.
---@param s any
---@return string
function M.show(s)
  return shared.clean(tostring(s), 60)
end
local show = M.show

--- The message of a value an option refuses: "bad --id 'x': not a UUID".
---@param name string the option (--id)
---@param value string
---@param why string
---@return string
function M.bad(name, value, why)
  return "bad " .. name .. " '" .. show(value) .. "': " .. why
end

---@class kpiwatch.cli.args.Option
---@field flag? boolean takes no value: true when given
---@field optional? boolean the value is optional: only `--opt=VALUE` gives one; bare `--opt` is true
---@field repeats? boolean repeatable: the values in a list, in order (several options may share one key)
---@field key? string where the value goes (default: the name without dashes, `-` as `_`)
---@field into? string a table of the result the value goes in (`flags`) instead of the result itself
---@field check? fun(value: string, name: string): any, string? converts the value, or returns nil and the whole message

---@class kpiwatch.cli.args.Spec
---@field options table<string, kpiwatch.cli.args.Option> by name (with its dashes)
---@field positionals? boolean false: the command takes none, and every word it does not know is an "unknown argument"
---@field prog? string for M.command: the prefix of its errors, "kpiwatch gate" (or "kpiwatch: get")
---@field usage? string for M.command: the text of --help

local function key_of(name, opt)
  return opt.key or name:gsub("^%-+", ""):gsub("%-", "_")
end

--- Reads the option at argv[i] (a word starting with "-"), and its value
--- from the word (`--opt=V`) or the next one: what M.parse does with each
--- option, for kpiwatch.cli.parse too. On an error: nil, the message and
--- its kind: "unknown" (no option of `options`), "inline" (a value given
--- to a flag), "missing" (no value) or "bad" (refused by the check).
---@param argv string[]
---@param i integer
---@param options table<string, kpiwatch.cli.args.Option>
---@return kpiwatch.cli.args.Option|nil opt
---@return any value true for a flag or a bare optional value, else the checked value; or the message
---@return integer|string next the index of the last word read; or the kind of error
---@return string|nil name the option's name, without any =VALUE
function M.option(argv, i, options)
  local a = argv[i]
  local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
  name = name or a
  local opt = options[name]
  if not opt then return nil, "unknown option '" .. show(a) .. "'", "unknown" end
  local v = inline
  if opt.flag then
    if inline then return nil, "option '" .. name .. "' takes no value", "inline" end
    v = true
  elseif opt.optional then
    if v == nil then v = true end
  elseif v == nil then
    i = i + 1
    v = argv[i]
    if v == nil then return nil, "option '" .. name .. "' needs a value", "missing" end
  end
  if opt.check and v ~= true then
    local conv, msg = opt.check(v, name)
    if conv == nil then return nil, msg, "bad" end
    v = conv
  end
  return opt, v, i, name
end

--- Parses a command's arguments (those after its name) by spec. The result
--- holds `args` (the positionals, in order), `help` (true after -h or
--- --help, which ends the parse), a list for each repeatable option's key
--- (empty when not given) and the value of each option given, by key. An
--- option given twice that does not repeat is an error.
---@param argv string[]
---@param spec kpiwatch.cli.args.Spec
---@return table|nil opts
---@return string|nil message one line, e.g. "option '--require' needs a value"
function M.parse(argv, spec)
  local options = spec.options
  local o = { args = {} }
  for name, opt in pairs(options) do
    if opt.into then o[opt.into] = o[opt.into] or {} end
    if opt.repeats then
      local t = opt.into and o[opt.into] or o
      t[key_of(name, opt)] = {}
    end
  end
  local unknown = spec.positionals == false and "unknown argument '" or "unknown option '"
  local i, n, only_pos = 1, #argv, false
  while i <= n do
    local a = argv[i]
    if type(a) ~= "string" then return nil, "argument " .. i .. " is not a string" end
    if only_pos or a:sub(1, 1) ~= "-" or a == "-" then
      if spec.positionals == false then return nil, unknown .. show(a) .. "'" end
      o.args[#o.args + 1] = a
    elseif a == "--" then
      only_pos = true
    elseif a == "-h" or a == "--help" then
      o.help = true
      return o
    else
      local opt, v, last, name = M.option(argv, i, options)
      if not opt then
        if last == "unknown" then return nil, unknown .. show(a) .. "'" end
        return nil, v
      end
      i = last
      local t, key = opt.into and o[opt.into] or o, key_of(name, opt)
      if opt.repeats then
        local list = t[key]
        list[#list + 1] = v
      else
        if t[key] ~= nil then return nil, "option '" .. name .. "' given twice" end
        t[key] = v
      end
    end
    i = i + 1
  end
  return o
end

--- Writes a usage error in one line, "PROG: MESSAGE (see 'kpiwatch CMD
--- --help')", and returns 2, the exit status of a usage error.
---@param prog string the prefix naming the command: "kpiwatch gate" (or "kpiwatch: get")
---@param msg any only its first line is written
---@param out? file* default io.stderr
---@return integer 2
function M.usage_error(prog, msg, out)
  msg = tostring(msg):gsub("\n.*", "")
  local cmd = prog:gsub("^kpiwatch: ", "kpiwatch ")
  out = out or io.stderr
  out:write(prog, ": ", msg, " (see '", cmd, " --help')\n")
  return 2
end

--- What each command does first: parses argv by spec (M.parse); a usage
--- error is one line on stderr (M.usage_error with spec.prog), -h or --help
--- writes spec.usage on stdout. Returns the options, or nil and the exit
--- status to end with (2 or 0).
---@param argv string[]
---@param spec kpiwatch.cli.args.Spec
---@param env? {stdout?: file*, stderr?: file*} default io.stdout, io.stderr
---@return table|nil opts
---@return integer|nil code
function M.command(argv, spec, env)
  local o, err = M.parse(argv, spec)
  if not o then return nil, M.usage_error(spec.prog, err, env and env.stderr) end
  if o.help then
    (env and env.stdout or io.stdout):write(spec.usage)
    return nil, 0
  end
  return o
end

--- A check: a number >= 0 ("option '--timeout' needs a non-negative number, got 'x'").
---@param v string
---@param name string
---@return number|nil
---@return string|nil
function M.non_negative(v, name)
  local num = tonumber(v)
  if not num or num < 0 then
    return nil, "option '" .. name .. "' needs a non-negative number, got '" .. show(v) .. "'"
  end
  return num
end

--- A check: an integer >= 0.
---@param v string
---@param name string
---@return integer|nil
---@return string|nil
function M.non_negative_integer(v, name)
  local num = tonumber(v)
  if not num or num < 0 or math.type(num) ~= "integer" then
    return nil, "option '" .. name .. "' needs a non-negative number, got '" .. show(v) .. "'"
  end
  return num
end

--- A check: a positive duration (30s, 5m, 1h30m; plain numbers are seconds), in seconds.
---@param v string
---@param name string
---@return number|nil
---@return string|nil
function M.duration(v, name)
  local d, msg = require("kpiwatch.alert").parse_duration(v)
  if not d or d <= 0 then return nil, M.bad(name, v, msg or "must be positive") end
  return d
end

--- A check: an address to listen on, ADDR:PORT.
---@param v string
---@param name string
---@return string|nil
---@return string|nil
function M.listen(v, name)
  local ok, msg = require("kpiwatch.metrics").parse_listen(v)
  if not ok then return nil, M.bad(name, v, msg) end
  return v
end

--- A check: an execution id (a UUID), lowercased.
---@param v string
---@param name string
---@return string|nil
---@return string|nil
function M.uuid(v, name)
  local ok, id = pcall(require("kpiwatch.kpis").check_id, v)
  if not ok then return nil, M.bad(name, v, "not a UUID") end
  return id
end

--- A check: a run test, by id or name (non-empty, no control character).
---@param v string
---@param name string
---@return string|nil
---@return string|nil
function M.run_test(v, name)
  if v == "" or v:find("%c") then return nil, M.bad(name, v, "a run test id or name") end
  return v
end

--- Merges option tables into a new one (later ones win).
---@param ... table<string, kpiwatch.cli.args.Option>
---@return table<string, kpiwatch.cli.args.Option>
function M.merge(...)
  local out = {}
  for i = 1, select("#", ...) do
    for k, v in pairs((select(i, ...))) do out[k] = v end
  end
  return out
end

return M
