-- kpiwatch.alert.rules_file: loading a rules file (gate --rules,
-- alert.load_rules) into a fresh registry.

local errors = require "kpiwatch.errors"
local rule = require "kpiwatch.alert.rule"

local M = {}

local type, pairs, ipairs, tostring, pcall, error = type, pairs, ipairs, tostring, pcall, error
local compile, config_error = rule.compile, rule.config_error

rule.internal(debug.getinfo(1, "S").source)

local function refuse(what)
  return function()
    errors.raise("config", "a rules file must only define rules: it called " .. what
      .. " (keep alert.check/os.exit in the script that uses the rules)")
  end
end

-- A read-only view of t where the keys of over replace t's.
local function overlay(t, over)
  return setmetatable({}, {
    __index = function(_, k)
      local v = over[k]
      if v ~= nil then return v end
      return t[k]
    end,
    __newindex = function(_, k) error("cannot assign " .. tostring(k) .. " here", 2) end,
    __pairs = function() return pairs(t) end,
  })
end

-- The environment a rules file runs in. It sees `alert` and `notify` without
-- requiring them (a file written for `gate --rules` need not know the module
-- names), its own globals stay in it, and it has no way to end the process
-- or to check and notify on its own: whoever loads the rules decides what
-- they mean (the gate: the exit status). The functions it defines keep this
-- environment, so a `when` predicate or a task it spawns is held to it too.
-- Every door to the real globals leads back here: _G, require, package.loaded,
-- load/loadfile/dofile (their default environment); debug has traceback only.
-- A task it spawns that fails (os.exit raises) is a warning on stderr.
local function environment(alert, path)
  local env = {}
  -- A task the file spawns that fails is a warning: a failed task would
  -- otherwise make the process exit 2 behind the loader's back.
  local real_spawn = require("kpiwatch._task").spawn
  local function spawn(fn, ...)
    return real_spawn(function(...)
      local ok, e = pcall(fn, ...)
      if not ok then
        io.stderr:write("kpiwatch: a task of rules file ", path, " failed: ", tostring(e), "\n")
      end
    end, ...)
  end
  local safe = {
    os = overlay(os, { exit = refuse("os.exit") }),
    ["kpiwatch.alert"] = overlay(alert, { check = refuse("alert.check"), watch = refuse("alert.watch") }),
    ["kpiwatch.task"] = overlay(require "kpiwatch.task", { spawn = spawn }),
    ["kpiwatch._task"] = overlay(require "kpiwatch._task", { spawn = spawn }),
    _G = env,
  }
  local loaded = overlay(package.loaded, safe)
  local real_load, real_require = load, require
  local function env_load(chunk, name, mode, e)
    return real_load(chunk, name, mode, e == nil and env or e)
  end
  local function env_loadfile(file, mode, e)
    return loadfile(file, mode, e == nil and env or e)
  end
  local over = {
    _G = env,
    os = safe.os,
    alert = safe["kpiwatch.alert"],
    notify = real_require "kpiwatch.notify",
    require = function(name)
      local v = safe[name]
      if v ~= nil then return v end
      return real_require(name)
    end,
    package = overlay(package, { loaded = loaded }),
    load = env_load,
    loadfile = env_loadfile,
    dofile = function(file)
      local f = assert(env_loadfile(file))
      return f()
    end,
    debug = { traceback = debug.traceback },
  }
  return setmetatable(env, {
    __index = function(_, k)
      local v = over[k]
      if v ~= nil then return v end
      return _G[k]
    end,
  })
end

--- Runs a rules file with `alert` functions bound to a fresh registry.
--- The file cannot end the process: os.exit, alert.check and alert.watch
--- raise a config error there, also later from the functions it defines.
---@param alert table the kpiwatch.alert module
---@param path string
---@param use function(reg) -> previous: makes reg the default registry
---@return table registry
function M.load(alert, path, use)
  if type(path) ~= "string" then
    error(errors.new("config", "alert.load_rules: expected a file path, got " .. type(path)), 2)
  end
  local chunk, msg = loadfile(path, "t", environment(alert, path))
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
