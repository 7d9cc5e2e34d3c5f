-- kpiwatch.cli.rules_cmd: what `kpiwatch check` and `kpiwatch watch` share:
-- their options (kpiwatch.cli.args), loading the rules file (the loader `gate --rules`
-- uses, kpiwatch.alert.rules_file) and the exit statuses of errors and signals.

local errors = require "kpiwatch.errors"

local M = {}

local API_KINDS = require("kpiwatch.cli").API_KINDS

local args = require "kpiwatch.cli.args"
M.show = args.show

--- A usage error: one line on stderr naming the command and its --help.
---@param prog string "kpiwatch check"
---@param msg string
---@return integer 2
M.usage_error = args.usage_error

--- The exit status of an error object: 3 for the API or the network
--- (kpiwatch.cli.API_KINDS) and an address that cannot be bound (as the
--- exporter), 2 for any other kind (config, invalid_id).
---@param e table an error object
---@return integer
function M.code_of(e)
  return (API_KINDS[e.kind] or e.kind == "bind") and 3 or 2
end

--- The options both commands take: --id (repeatable: a UUID, lowercased),
--- --run-test (repeatable: an id or a name, non-empty, one line).
M.OPTIONS = {
  ["--id"] = { repeats = true, check = args.uuid },
  ["--run-test"] = { repeats = true, check = args.run_test },
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
