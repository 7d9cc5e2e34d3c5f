-- kpiwatch.model.fields: the documented fields of the reference page, their
-- two casings, and reading one field of a decoded body under either.

local M = require "kpiwatch.model.api"
local invalid = require "kpiwatch.model.invalid"

local type, rawget = type, rawget
local math_type, tointeger = math.type, math.tointeger
local nonfinite = invalid.nonfinite

-- json.null as the running process defines it: the `json` global inside the
-- kpiwatch binary, lua-cjson's when the module runs under a plain lua5.4.
local json
do
  local ok, j = pcall(function() return _G.json end)
  if ok and type(j) == "table" then
    json = j
  else
    local ok2, m = pcall(require, "kpiwatch.json")
    json = (ok2 and type(m) == "table") and m or require("cjson")
  end
end
local NULL = json.null
--- The value JSON `null` decodes to (`json.null`).
---@type lightuserdata
M.null = NULL

-- The documented fields of the reference page: canonical snake_case name,
-- the camelCase name the page uses where it differs, kind and group.
-- kind: int | num | str | bool | obj. group: core | voice | text.
local FIELD_LIST = {
  { "total_calls", nil, "int", "core" },
  { "calls_attempted", "callsAttempted", "int", "core" },
  { "connected_calls", "connectedCalls", "int", "core" },
  { "calls_connected_percentage", "callsConnectedPercentage", "num", "core" },
  { "failed_calls", nil, "int", "core" },
  { "total_duration", nil, "int", "core" },
  { "agent_type", nil, "str", "core" },
  { "is_inbound", nil, "bool", "core" },
  { "avg_score", nil, "num", "core" },
  { "avg_response", nil, "num", "core" },
  { "scenario_graphs", "scenarioGraphs", "obj", "core" },
  { "avg_agent_latency", nil, "num", "voice" },
  { "avg_user_interruption_count", nil, "num", "voice" },
  { "avg_user_interruption_rate", nil, "num", "voice" },
  { "avg_user_wpm", nil, "num", "voice" },
  { "avg_bot_wpm", nil, "num", "voice" },
  { "avg_talk_ratio", nil, "num", "voice" },
  { "avg_ai_interruption_count", nil, "num", "voice" },
  { "avg_ai_interruption_rate", nil, "num", "voice" },
  { "avg_stop_time_after_interruption", nil, "num", "voice" },
  { "agent_talk_percentage", "agentTalkPercentage", "num", "voice" },
  { "customer_talk_percentage", "customerTalkPercentage", "num", "voice" },
  { "avg_total_tokens", nil, "num", "text" },
  { "avg_input_tokens", nil, "num", "text" },
  { "avg_output_tokens", nil, "num", "text" },
  { "avg_chat_latency_ms", nil, "num", "text" },
  { "avg_turn_count", nil, "num", "text" },
  { "avg_csat_score", nil, "num", "text" },
}

-- name (either casing) -> field record {snake=, camel=, kind=, group=}
local FIELDS = {}
local FIELD_ORDER = {}
for i, f in ipairs(FIELD_LIST) do
  local rec = { snake = f[1], camel = f[2], kind = f[3], group = f[4], order = i }
  FIELDS[f[1]] = rec
  if f[2] then FIELDS[f[2]] = rec end
  FIELD_ORDER[i] = rec
end
M.FIELDS = FIELDS

-- Documented field names, snake_case, in the order of the reference page
-- grouped as core, voice, text.
--- The documented field names, snake_case, in the order of the reference page.
---@param group? "core"|"voice"|"text" only this group (default: all)
---@return string[] names
function M.field_names(group)
  local out = {}
  for _, rec in ipairs(FIELD_ORDER) do
    if group == nil or rec.group == group then out[#out + 1] = rec.snake end
  end
  return out
end

--- Whether `name` is a documented field (in either casing).
---@param name string
---@return boolean
function M.is_documented(name)
  return FIELDS[name] ~= nil
end

-- The fields whose values are passed through in whatever unit the server
-- used (the page says seconds, the server computes milliseconds).
M.UNIT_AMBIGUOUS = {
  avg_response = true,
  avg_agent_latency = true,
  avg_stop_time_after_interruption = true,
}

local function to_snake(name)
  return (name:gsub("(%u)", function(c) return "_" .. c:lower() end))
end

local function to_camel(name)
  return (name:gsub("_(%l)", string.upper))
end

-- The other casing of an undocumented name, or nil when it has only one.
local function other_casing(name)
  if name:find("%u") then
    return to_snake(name)
  elseif name:find("_%l") then
    return to_camel(name)
  end
  return nil
end

M.to_snake = to_snake

local function fix_int(v)
  if math_type(v) == "float" then
    local i = tointeger(v)
    if i then return i end
  end
  return v
end

-- lookup(body, name) -> value (json.null kept), present
-- The one resolution rule for every accessor: documented fields by either
-- casing (snake_case wins when a body carries both), then the name as is,
-- then its other casing.
local function lookup(body, name)
  local f = FIELDS[name]
  if f then
    local v = body[f.snake]
    if v == nil and f.camel then v = body[f.camel] end
    if v == nil then return nil, false end
    if f.kind == "int" then v = fix_int(v) end
    return nonfinite(f.snake, v), true
  end
  local v = body[name]
  if v ~= nil then return nonfinite(name, v), true end
  if type(name) ~= "string" then return nil, false end
  local other = other_casing(name)
  if other then
    v = body[other]
    if v ~= nil then return nonfinite(other, v), true end
  end
  return nil, false
end

-- Unwrap {"status": true|false, "result": {...}}; a bare body is returned as is.
local function unwrap(body)
  if type(body) == "table" and type(rawget(body, "status")) == "boolean"
    and type(rawget(body, "result")) == "table" then
    return rawget(body, "result")
  end
  return body
end
M.unwrap = unwrap

return { json = json, NULL = NULL, FIELDS = FIELDS, FIELD_ORDER = FIELD_ORDER, to_snake = to_snake,
  other_casing = other_casing, fix_int = fix_int, lookup = lookup, unwrap = unwrap }
