-- kpiwatch.template: `{field}` placeholders in alert summaries, labels and
-- exec hook arguments.
--
--   render(text, lookup) -> string
--
-- lookup(name) -> value, found. A placeholder is `{name}` or
-- `{name:fmt}`, name = letters, digits, `_` and `.` (not starting with a
-- digit), fmt = a printf conversion for one number or string such as
-- `%.1f`, `.1f`, `5d` or `s`. `{{` and `}}` are literal braces.
--   * a found value is formatted by kpiwatch.shared.format_value (at most
--     200 bytes, control characters neutralised): integers as is, other
--     numbers with up to 4 decimals, booleans as true/false, nil (a known
--     field that is null) as "null", choice evals as "a 3, b 1", other
--     tables as JSON;
--   * an unknown name is left as written, `{nmae}`, so a typo shows in the
--     message instead of vanishing;
--   * anything else (a lone `{`, `{1x}`, a bad format) is copied literally.
-- Never raises on any text, and never produces more than a bounded amount
-- of output per placeholder (formats are limited to two-digit widths).

local shared = require "kpiwatch.shared"

local M = {}

local format = string.format
local concat = table.concat

-- The one value formatter (kpiwatch.shared): strings are cleaned of
-- control characters and cut at 200 bytes, so a message or an exec
-- argument never carries a raw newline or escape from the server.
local function fmt_value(v)
  return shared.format_value(v, 200)
end
M.format_value = fmt_value
M.format_number = shared.format_number

-- A printf conversion with at most two-digit width and precision.
local function apply_format(spec, v)
  if spec:sub(1, 1) ~= "%" then spec = "%" .. spec end
  local flags, _, _, conv = spec:match("^%%([-+ #0]*)(%d?%d?)(%.?%d?%d?)([dfgeEsxXi])$")
  if not flags then return nil end
  if conv == "s" then
    -- Lua refuses flags other than "-" with %s ("%0s", "%#s"): not a format
    local ok, s = pcall(format, spec, fmt_value(v))
    return ok and s or nil
  end
  if type(v) ~= "number" then return nil end
  if conv == "d" or conv == "i" or conv == "x" or conv == "X" then
    local i = math.tointeger(v)
    if not i then
      if v ~= v or math.abs(v) >= 2 ^ 62 then return nil end
      i = math.floor(v + 0.5) -- an integer in this range
    end
    v = i
  end
  local ok, s = pcall(format, spec, v)
  if ok then return s end
  return nil
end

function M.render(text, lookup)
  if type(text) ~= "string" then text = tostring(text) end
  local out, i, n = {}, 1, #text
  while i <= n do
    local j = text:find("[{}]", i)
    if not j then
      out[#out + 1] = text:sub(i)
      break
    end
    if j > i then out[#out + 1] = text:sub(i, j - 1) end
    local c, nxt = text:sub(j, j), text:sub(j + 1, j + 1)
    if c == "}" then
      out[#out + 1] = "}"
      i = j + (nxt == "}" and 2 or 1)
    elseif nxt == "{" then
      out[#out + 1] = "{"
      i = j + 2
    else
      local name, spec, after = text:match("^{([%a_][%w_%.]*)(:?[^{}]*)}()", j)
      if not name or (spec ~= "" and spec:sub(1, 1) ~= ":") then
        out[#out + 1] = "{"
        i = j + 1
      else
        local v, found = lookup(name)
        local s
        if not found then
          s = text:sub(j, after - 1)
        elseif spec ~= "" then
          s = apply_format(spec:sub(2), v) or fmt_value(v)
        else
          s = fmt_value(v)
        end
        out[#out + 1] = s
        i = after
      end
    end
  end
  return concat(out)
end

-- names(text) -> list of the placeholder names in text (for checks).
function M.names(text)
  local list = {}
  for name in text:gmatch("{([%a_][%w_%.]*)[:}]") do list[#list + 1] = name end
  return list
end

return M
