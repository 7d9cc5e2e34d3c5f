-- kpiwatch.alert.rules_file: loading a rules file (gate --rules,
-- alert.load_rules) into a fresh registry.

local errors = require "kpiwatch.errors"
local rule = require "kpiwatch.alert.rule"

local M = {}

local type, ipairs, tostring, pcall, error = type, ipairs, tostring, pcall, error
local compile, config_error = rule.compile, rule.config_error

rule.internal(debug.getinfo(1, "S").source)

--- Runs a rules file with `alert` functions bound to a fresh registry.
---@param alert table the kpiwatch.alert module
---@param path string
---@param use function(reg) -> previous: makes reg the default registry
---@return table registry
function M.load(alert, path, use)
  if type(path) ~= "string" then
    error(errors.new("config", "alert.load_rules: expected a file path, got " .. type(path)), 2)
  end
  -- A rules file sees `alert` and `notify` without requiring them (a file
  -- written for `gate --rules` need not know the module names); its own
  -- globals stay in its environment.
  local env = setmetatable({ alert = alert, notify = require "kpiwatch.notify" }, { __index = _G })
  local chunk, msg = loadfile(path, "t", env)
  if not chunk then
    local f = io.open(path, "r")
    if not f then
      error(errors.new("config", "cannot read rules file " .. path .. ": " ..
        tostring(msg):gsub("^cannot open ", ""), { file = path }), 0)
    end
    f:close()
    local line = tostring(msg):match(":(%d+):")
    error(errors.new("config", "syntax error in rules file " .. tostring(msg),
      { file = path, line = tonumber(line) }), 0)
  end
  local reg = alert.registry()
  local saved = use(reg)
  local ok, res = pcall(chunk)
  use(saved)
  if not ok then
    if errors.is(res) then
      res.file = res.file or path
      error(res, 0)
    end
    local line = tostring(res):match(":(%d+):")
    error(errors.new("config", "error in rules file " .. tostring(res),
      { file = path, line = tonumber(line) }), 0)
  end
  if type(res) == "table" and not getmetatable(res) then
    for i, spec in ipairs(res) do
      local where = path .. ": rule #" .. i
      if type(spec) == "table" and type(spec.name) == "string" then
        where = path .. ": rule #" .. i .. " ('" .. spec.name .. "')"
      end
      local r = compile(spec, where)
      if reg.by_name[r.name] then
        config_error(where, "rule '" .. r.name .. "' is defined twice", { field = "name", file = path })
      end
      reg.rules[#reg.rules + 1] = r
      reg.by_name[r.name] = r
    end
  end
  return reg
end

return M
