-- kpiwatch.cli.rules_cmd: what `kpiwatch check` and `kpiwatch watch` share:
-- their argument parser, loading the rules file (the loader `gate --rules`
-- uses, kpiwatch.alert.rules_file) and the exit statuses of errors and signals.

local errors = require "kpiwatch.errors"

local M = {}

local API_KINDS = require("kpiwatch.cli").API_KINDS

local function show(s)
  return require("kpiwatch.kpis")._show_id(tostring(s))
end
M.show = show

--- A usage error: one line on stderr naming the command and its --help.
---@param prog string "kpiwatch check"
---@param msg string
---@return integer 2
function M.usage_error(prog, msg)
  msg = tostring(msg):gsub("\n.*", "")
  io.stderr:write(prog, ": ", msg, " (see '", prog, " --help')\n")
  return 2
end

--- The exit status of an error object: 3 for the API or the network
--- (kpiwatch.cli.API_KINDS) and an address that cannot be bound (as the
--- exporter), 2 for any other kind (config, invalid_id).
---@param e table an error object
---@return integer
function M.code_of(e)
  return (API_KINDS[e.kind] or e.kind == "bind") and 3 or 2
end

--- Parses a command's arguments. spec maps each option ("--id") to
--- "list" (repeatable value), "value" (one value) or "flag"; each check
--- (optional) maps an option to function(value) -> converted or nil, message.
--- Values may be given as --opt=V or --opt V; "--" ends the options.
---@param args string[]
---@param spec table<string, string>
---@param checks table<string, function>|nil
---@return table|nil opts keyed by the option without dashes ("run-test"), positional in `args`
---@return string|nil message
function M.parse(args, spec, checks)
  local o, i, only_pos = { args = {} }, 1, false
  for name, kind in pairs(spec) do
    if kind == "list" then o[name:sub(3)] = {} end
  end
  while i <= #args do
    local a = args[i]
    if only_pos or a:sub(1, 1) ~= "-" or a == "-" then
      o.args[#o.args + 1] = a
    elseif a == "--" then
      only_pos = true
    elseif a == "-h" or a == "--help" then
      o.help = true
    else
      local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
      name = name or a
      local kind = spec[name]
      if not kind then return nil, "unknown option '" .. show(a) .. "'" end
      local key = name:sub(3)
      if kind == "flag" then
        if inline then return nil, "option '" .. name .. "' takes no value" end
        o[key] = true
      else
        local v = inline
        if v == nil then
          i = i + 1
          v = args[i]
          if v == nil then return nil, "option '" .. name .. "' needs a value" end
        end
        local check = checks and checks[name]
        if check then
          local conv, msg = check(v)
          if conv == nil then return nil, "bad " .. name .. " '" .. show(v) .. "': " .. msg end
          v = conv
        end
        if kind == "list" then
          o[key][#o[key] + 1] = v
        else
          if o[key] ~= nil then return nil, "option '" .. name .. "' given twice" end
          o[key] = v
        end
      end
    end
    i = i + 1
  end
  return o
end

--- Option checks both commands use: --id (a UUID, lowercased), --run-test
--- (an id or a name: non-empty, one line).
M.CHECKS = {
  ["--id"] = function(v)
    local ok, id = pcall(require("kpiwatch.kpis").check_id, v)
    if not ok then return nil, "not a UUID" end
    return id
  end,
  ["--run-test"] = function(v)
    if v == "" or v:find("%c") then return nil, "a run test id or name" end
    return v
  end,
}

--- Loads a rules file with the loader of `gate --rules`: its rules and the
--- hooks it registers, in a registry of their own.
---@param path string
---@return table|nil registry
---@return string|nil message one line, naming the file
function M.load(path)
  local engine, err = require("kpiwatch.cli.gate")._load_rules({ path })
  if not engine then return nil, err end
  local reg = engine.sets[1].registry
  if #reg.rules == 0 then return nil, "rules file " .. path .. " defines no rule" end
  return reg
end

--- The exit status of a stop by signal `sig` ("int", "term", "hup").
---@param sig string
---@return integer
function M.signal_code(sig)
  return require("kpiwatch.cli").SIGNAL_STATUS[sig] or 130
end

--- Writes an error object's line for a command and returns its exit status.
---@param prog string
---@param e any
---@return integer
function M.fail(prog, e)
  if not errors.is(e) then error(e, 0) end
  local where = e.execution_id and (" (execution " .. tostring(e.execution_id) .. ")") or ""
  local msg = tostring(e.message)
  if where ~= "" and msg:find(tostring(e.execution_id), 1, true) then where = "" end
  io.stderr:write(prog, ": ", e.kind, ": ", require("kpiwatch.shared").clean(msg .. where), "\n")
  return M.code_of(e)
end

return M
