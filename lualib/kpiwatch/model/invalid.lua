-- kpiwatch.model.invalid: the invalid-number object, standing for a number
-- the body gave that is not finite or not JSON: comparing or doing
-- arithmetic with it raises a `protocol` error.

local shared = require "kpiwatch.shared"
local errors = require "kpiwatch.errors"
local M = require "kpiwatch.model.api"

local setmetatable, getmetatable = setmetatable, getmetatable

local Invalid = { __name = "kpiwatch.model.invalid_number" }
Invalid.__index = Invalid
local function invalid_raise(a, b)
  local v = getmetatable(a) == Invalid and a or b
  errors.raise("protocol", v.field .. " is not a JSON number in the server's answer ('" .. v.text .. "')",
    { retryable = false, field = v.field })
end
for _, mm in ipairs({ "__lt", "__le", "__add", "__sub", "__mul", "__div", "__mod", "__pow", "__unm",
  "__idiv", "__concat" }) do
  Invalid[mm] = invalid_raise
end
Invalid.__tostring = function(v) return "invalid number " .. v.text end

-- v, or an invalid-number object for name when v is NaN or infinite.
local huge = math.huge
local function nonfinite(name, v)
  if v ~= v or v == huge or v == -huge then
    return setmetatable({ field = name, text = shared.format_number(v) }, Invalid)
  end
  return v
end

--- Whether `v` stands for a number the body gave that is not finite or not
--- JSON (`1e400`, `Infinity`, `0x1`): such a field is a protocol error, never
--- a pass; comparing or doing arithmetic with it raises a `protocol` error.
---@param v any
---@return boolean
function M.is_invalid(v)
  return getmetatable(v) == Invalid
end

return { Invalid = Invalid, nonfinite = nonfinite }
