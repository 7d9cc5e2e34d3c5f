-- What several specs need: fixture KPI objects and scratch files.
-- require "spec.lua.helpers.util" (busted runs from the repository root).

local fixtures = require "kpiwatch.fixtures"
local model = require "kpiwatch.model"

local M = {}

-- kpi(name) -> the KPI object of the sandbox fixture `name` ("failing", ...)
function M.kpi(name)
  local f = fixtures.get(fixtures.ids[name])
  return assert(model.parse(f.body, f.id))
end

-- tmpdir() -> a new empty directory's path
function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

function M.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function M.exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

return M
