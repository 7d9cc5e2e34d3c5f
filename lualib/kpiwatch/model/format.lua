-- kpiwatch.model.format: the aligned summary of a KPI object, which is
-- also what tostring(k) gives.

local shared = require "kpiwatch.shared"
local M = require "kpiwatch.model.api"
local fields = require "kpiwatch.model.fields"
local kpi = require "kpiwatch.model.kpi"

local type, next, pairs, rawget = type, next, pairs, rawget
local math_type = math.type
local getmetatable = getmetatable
local concat = table.concat
local format = string.format
local lookup = fields.lookup
local KPI, body_of, evals_of, agent_type = kpi.KPI, kpi.body_of, kpi.evals_of, kpi.agent_type

local fmt_value = shared.format_value
M.format_value = fmt_value

local function duration_text(secs)
  -- also nil for NaN, inf and floats too large for %d (a hostile body)
  if math_type(secs) == nil or not (secs >= 60 and secs < 2 ^ 53) then return nil end
  secs = math.floor(secs)
  local h, m, s = secs // 3600, (secs % 3600) // 60, secs % 60
  if h > 0 then return format("%dh %02dm %02ds", h, m, s) end
  return format("%dm %02ds", m, s)
end

-- summary(k) -> the readable, aligned multi-line text tostring(k) gives.
--- The aligned summary of a KPI object or body: agent type and direction, call
--- counts, scores, the agent type's own fields, the eval metrics, the scenario count.
---@param k kpiwatch.Kpi|table
---@return string text
function M.summary(k)
  local body = body_of(k)
  local get = function(name)
    local v = lookup(body, name)
    return v
  end
  local atype = agent_type(body)
  local sections = {}
  local width = 0
  local function section(title)
    local s = { title = title, rows = {} }
    sections[#sections + 1] = s
    return s
  end
  local function row(s, name, value, note)
    if #name > width then width = #name end
    s.rows[#s.rows + 1] = { name, value, note }
  end

  local id = getmetatable(k) == KPI and rawget(k, "execution_id") or nil
  local head = section("KPIs of execution " .. (id and tostring(id) or "(unknown id)"))
  local direction = ""
  local inbound = get("is_inbound")
  if inbound == true then direction = ", inbound"
  elseif inbound == false then direction = ", outbound" end
  row(head, "agent_type", fmt_value(get("agent_type")) .. direction)
  for _, name in ipairs(M.field_names("core")) do
    if name ~= "agent_type" and name ~= "is_inbound" and name ~= "scenario_graphs" then
      local v = get(name)
      local text, note = fmt_value(v), nil
      if name == "total_duration" and type(v) == "number" then
        text = text .. " s"
        local d = duration_text(v)
        if d then note = "(" .. d .. ")" end
      elseif M.UNIT_AMBIGUOUS[name] and type(v) == "number" then
        note = "(server units)"
      end
      row(head, name, text, note)
    end
  end

  local groups
  if atype == "voice" then groups = { "voice" }
  elseif atype == "text" then groups = { "text" }
  else groups = { "voice", "text" } end
  for _, g in ipairs(groups) do
    local s = section(g)
    for _, name in ipairs(M.field_names(g)) do
      local v = get(name)
      row(s, name, fmt_value(v),
        (M.UNIT_AMBIGUOUS[name] and type(v) == "number") and "(server units)" or nil)
    end
  end

  local evals, names = evals_of(body)
  local es = section("evals")
  if #names == 0 then
    row(es, "(none)", "")
  else
    for _, name in ipairs(names) do row(es, shared.clean(name, 60), fmt_value(evals[name])) end
  end

  local graphs = get("scenario_graphs")
  if type(graphs) == "table" then
    local n, with = 0, 0
    for _, g in pairs(graphs) do
      n = n + 1
      if type(g) == "table" and next(g) ~= nil then with = with + 1 end
    end
    local s = section("scenarios")
    row(s, "scenario_graphs", format("%d scenario%s, %d with a graph", n, n == 1 and "" or "s", with))
  end

  local lines = {}
  for _, s in ipairs(sections) do
    lines[#lines + 1] = s.title
    for _, r in ipairs(s.rows) do
      local line = "  " .. r[1] .. string.rep(" ", width - #r[1] + 2) .. r[2]
      if r[3] then line = line .. "  " .. r[3] end
      lines[#lines + 1] = line
    end
  end
  return concat(lines, "\n")
end

KPI.__tostring = M.summary

return {}
