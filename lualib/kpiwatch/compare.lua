-- kpiwatch.compare: two executions side by side, with deltas (kpis.compare).
--
--   compare(a, b, get)  prints the comparison, returns nothing
--   text(a, b, get)     -> the same text
--   rows(a, b, get)     -> list of {section=, name=, a=, b=, delta=} (a, b: values,
--                          nil when null or absent; delta: b - a when both are numbers)
--
-- a and b are KPI objects or execution ids; ids are fetched with get (the
-- client's kpis.get: kpis.compare passes it), both at once. This module does
-- not know the client: kpis requires it, never the other way round.
-- Rows: the documented core fields, the voice and/or text fields (by the
-- agent types of the two), the union of the dynamic eval metrics, and the
-- number of scenario graphs. The delta is b - a, with the
-- relative change when a is not 0.

local M = {}

local model = require "kpiwatch.model"
local shared = require "kpiwatch.shared"

local format, concat = string.format, table.concat
local math_type = math.type

local function fetch(a, b, get)
  if model.is(a) and model.is(b) then return a, b end
  if type(get) ~= "function" then
    require("kpiwatch.errors").raise("config",
      "compare: an execution id needs a fetch function (kpis.compare passes kpis.get)")
  end
  -- both at once (the one worker pool); the first error is raised
  local r = require("kpiwatch.task").map({ a, b }, function(x)
    if model.is(x) then return x end
    return get(x)
  end, { concurrency = 2 })
  return r[1], r[2]
end

local function agent_type(k)
  local t = model.get(k, "agent_type")
  return type(t) == "string" and t:lower() or nil
end

local function groups_for(a, b)
  local ta, tb = agent_type(a), agent_type(b)
  local voice = ta == "voice" or tb == "voice"
  local text = ta == "text" or tb == "text"
  if not voice and not text then voice, text = true, true end
  local out = {}
  if voice then out[#out + 1] = "voice" end
  if text then out[#out + 1] = "text" end
  return out
end

local function count_graphs(k)
  local g = model.get(k, "scenario_graphs")
  if type(g) ~= "table" then return nil end
  local n = 0
  for _ in pairs(g) do n = n + 1 end
  return n
end

function M.rows(a, b, get)
  a, b = fetch(a, b, get)
  local rows = {}
  local function row(section, name, va, vb, pa, pb)
    local r = { section = section, name = name, a = va, b = vb, a_present = pa, b_present = pb }
    if type(va) == "number" and type(vb) == "number" then r.delta = vb - va end
    rows[#rows + 1] = r
  end
  local function field(section, name)
    local va, pa = model.get(a, name)
    local vb, pb = model.get(b, name)
    row(section, name, va, vb, pa, pb)
  end
  for _, name in ipairs(model.field_names("core")) do
    if name ~= "scenario_graphs" then field("core", name) end
  end
  for _, g in ipairs(groups_for(a, b)) do
    for _, name in ipairs(model.field_names(g)) do field(g, name) end
  end
  local ea, eb = model.evals(a), model.evals(b)
  local names, seen = {}, {}
  for _, list in ipairs({ model.eval_names(a), model.eval_names(b) }) do
    for _, n in ipairs(list) do
      if not seen[n] then
        seen[n] = true
        names[#names + 1] = n
      end
    end
  end
  table.sort(names)
  for _, n in ipairs(names) do
    local _, pa = model.eval(a, n)
    local _, pb = model.eval(b, n)
    row("evals", n, ea[n], eb[n], pa, pb)
  end
  local ga, gb = count_graphs(a), count_graphs(b)
  row("scenarios", "scenario_graphs", ga, gb, ga ~= nil, gb ~= nil)
  return rows, a, b
end

-- The text of one value of a row ("-" when the execution lacks the field).
local function cell(v, present)
  if not present then return "-" end
  return model.format_value(v)
end

local function delta_text(r)
  local d = r.delta
  if d == nil then return "" end
  if d == 0 then return "=" end
  local s
  if math_type(d) == "integer" then
    s = format("%+d", d)
  else
    s = model.format_value(math.abs(d))
    s = (d < 0 and "-" or "+") .. s
  end
  if r.a ~= 0 and d == d then
    s = s .. format(" (%+.1f%%)", d / math.abs(r.a) * 100)
  end
  return s
end

local function title(k, letter)
  local id = rawget(k, "execution_id")
  local t = agent_type(k)
  local inbound = model.get(k, "is_inbound")
  local what = t or "unknown agent type"
  if inbound == true then what = what .. ", inbound"
  elseif inbound == false then what = what .. ", outbound" end
  return format("%s: %s (%s)", letter, id and tostring(id) or "(unknown id)", what)
end

M.cell, M.delta_text = cell, delta_text

-- format_rows(rows, a, b) -> the aligned text of rows() (a, b: KPI objects).
function M.format_rows(rows, a, b)
  local wname, wa, wb = 0, 1, 1
  local cells = {}
  local names = {}
  for i, r in ipairs(rows) do
    local c = { cell(r.a, r.a_present), cell(r.b, r.b_present), delta_text(r) }
    cells[i] = c
    names[i] = shared.clean(r.name, 60) -- eval names come from the server
    if #names[i] > wname then wname = #names[i] end
    if #c[1] > wa then wa = #c[1] end
    if #c[2] > wb then wb = #c[2] end
  end
  local lines = { title(a, "a"), title(b, "b"), "" }
  local function line(name, ca, cb, cd)
    local s = "  " .. name .. string.rep(" ", wname - #name + 2) .. ca .. string.rep(" ", wa - #ca + 2)
      .. cb
    if cd ~= "" then s = s .. string.rep(" ", wb - #cb + 2) .. cd end
    lines[#lines + 1] = s
  end
  lines[#lines + 1] = string.rep(" ", wname + 4) .. "a" .. string.rep(" ", wa + 1) .. "b"
    .. string.rep(" ", wb + 1) .. "delta (b - a)"
  local section
  for i, r in ipairs(rows) do
    if r.section ~= section then
      section = r.section
      lines[#lines + 1] = section
    end
    line(names[i], cells[i][1], cells[i][2], cells[i][3])
  end
  return concat(lines, "\n")
end

function M.text(a, b, get)
  return M.format_rows(M.rows(a, b, get))
end

function M.compare(a, b, get)
  io.stdout:write(M.text(a, b, get), "\n")
  io.stdout:flush()
end

return M
