-- kpiwatch.model: the KPI object, a read-only view over one decoded body of
-- GET /simulate/test-executions/{id}/kpis/.
--
-- The object keeps the decoded table as it came and resolves names lazily in
-- __index: constructing one is a setmetatable and an envelope check, no copy,
-- because a watch or a gate may build tens of thousands of them.
--
-- What the view adds over the raw table:
--   * every documented field is readable under both casings the server has
--     used (callsAttempted / calls_attempted, ...), whichever one was sent;
--     other keys are readable under either casing too;
--   * json.null reads as nil (k:raw() keeps the decoded table, nulls and all);
--   * integer fields are Lua integers even when the JSON had 120.0;
--   * k:evals() collects the dynamic eval metrics (avg_<name> numbers that
--     are not documented fields, and choice objects with a `choices` list).
--
-- Units: avg_response, avg_agent_latency and avg_stop_time_after_interruption
-- are passed through unchanged. The reference page says seconds, the
-- server's code computes milliseconds; kpiwatch does not guess which one a
-- given server sent.

local shared = require "kpiwatch.shared"

local M = {}

---@brief
--- The KPI object (`kpiwatch.Kpi`): a read-only view over one decoded body of
--- `GET /simulate/test-executions/{id}/kpis/`, what `kpis.get` returns.
---
--- - Every documented field reads under both casings (`callsAttempted` /
---   `calls_attempted`, `scenarioGraphs` / `scenario_graphs`, ...), whichever the
---   server sent (snake_case wins when a body has both); other keys too.
--- - `total_calls`, `calls_attempted`, `connected_calls`, `failed_calls`,
---   `total_duration` are Lua integers. JSON `null` reads as `nil`.
--- - The other agent type's fields come back as 0 and mean nothing: `agent_type`
---   says which set applies.
--- - `tostring(k)` is an aligned summary; `pairs(k)` walks the normalized view.
--- - Units: `avg_response`, `avg_agent_latency` and
---   `avg_stop_time_after_interruption` are passed through unchanged (the
---   reference page says seconds, the server computes milliseconds); the
---   summary marks them "(server units)".

local type, next, pairs, rawget = type, next, pairs, rawget
local math_type, tointeger = math.type, math.tointeger
local setmetatable, getmetatable = setmetatable, getmetatable
local concat, sort = table.concat, table.sort
local format = string.format

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
local errors = require "kpiwatch.errors"

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

-- is_invalid(v) -> whether v stands for a non-finite or non-JSON number.
function M.is_invalid(v)
  return getmetatable(v) == Invalid
end


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

local RAW = setmetatable({}, { __name = "kpiwatch.model.raw" })

local KPI = {}
--- A KPI object. Fields read as `k.avg_score`, `k.calls_attempted` or
--- `k.callsAttempted`; `k.execution_id` is the id it was fetched with.
--- Assigning a field raises an error.
---@class kpiwatch.Kpi
---@field execution_id? string
local methods = {}
KPI.__name = "kpiwatch.kpi"

local function body_of(k)
  if getmetatable(k) == KPI then return rawget(k, RAW) end
  return unwrap(k)
end

KPI.__index = function(self, name)
  local m = methods[name]
  if m then return m end
  local v = lookup(rawget(self, RAW), name)
  if v == NULL then return nil end
  return v
end

KPI.__newindex = function(_, name)
  error("KPI objects are read-only (assigning " .. tostring(name) .. ")", 2)
end

-- new(body [, execution_id]) -> KPI object
-- body is the decoded JSON table (enveloped or not). No copy is made.
--- Make a KPI object from a decoded body (enveloped in
--- `{"status": true, "result": {...}}` or not). No copy is made.
---@param body table
---@param execution_id? string
---@return kpiwatch.Kpi kpi
function M.new(body, execution_id)
  if type(body) ~= "table" then
    error("kpiwatch.model.new: expected a table, got " .. type(body), 2)
  end
  if getmetatable(body) == KPI then
    if execution_id == nil then return body end
    body = rawget(body, RAW)
  end
  return setmetatable({ [RAW] = unwrap(body), execution_id = execution_id }, KPI)
end

--- Whether `v` is a KPI object.
---@param v any
---@return boolean
function M.is(v)
  return getmetatable(v) == KPI
end

---A KPI object for x: x itself when it is one, a decoded body (enveloped
---or not) as a KPI object with the execution_id it carries, nil otherwise.
---@param x any
---@return table|nil
function M.as_kpi(x)
  if getmetatable(x) == KPI then return x end
  if type(x) ~= "table" then return nil end
  local id = rawget(x, "execution_id")
  if type(id) ~= "string" and type(rawget(x, "result")) == "table" then
    id = rawget(rawget(x, "result"), "execution_id")
  end
  return M.new(x, type(id) == "string" and id or nil)
end

-- get(k, name) -> value, present
-- Works on a KPI object or a plain table (decoded body, enveloped or not),
-- so rule engines treat both alike. value is nil for null; present tells a
-- field that is null (true) from one the execution does not have (false).
--- Read a field of a KPI object or of a plain decoded body alike, telling a
--- null field from a missing one.
---@param k kpiwatch.Kpi|table
---@param name string a field in either casing
---@return any value `nil` for null or missing
---@return boolean present `true` for a null field, `false` for one the execution does not have
function M.get(k, name)
  local body = body_of(k)
  local v, present = lookup(body, name)
  if v == NULL then return nil, present end
  if v == nil and name == "execution_id" and getmetatable(k) == KPI then
    v = rawget(k, "execution_id")
    return v, v ~= nil
  end
  return v, present
end

-- eval(k, name) -> value, present: one dynamic eval metric by its name
-- (the avg_<name> number, or the <name> choice object).
--- Read one dynamic eval metric by its name: the `avg_<name>` number, or the
--- `<name>` choice object.
---@param k kpiwatch.Kpi|table
---@param name string e.g. `"task_completion"`, `"tone"`
---@return number|table|nil value
---@return boolean present
function M.eval(k, name)
  local body = body_of(k)
  local v = body["avg_" .. name]
  if v == nil and not FIELDS[name] then
    local c = body[name]
    if type(c) == "table" and type(c.choices) == "table" then v = c end
  end
  if v == nil or FIELDS["avg_" .. name] then return nil, false end
  if v == NULL then return nil, true end
  return nonfinite("avg_" .. name, v), true
end

--- unbacked(k, name [, is_eval]) -> why the average `name` (a field in
--- either casing, or an eval name when is_eval) has no data because no call
--- backs it (see kpiwatch.backing for which count backs which field), or
--- nil when it is backed, not an average, or the body does not tell.
---@param k table a KPI object or a decoded body
---@param name string
---@param is_eval? boolean
---@return string|nil
function M.unbacked(k, name, is_eval)
  local body = body_of(k)
  if not is_eval then
    local f = FIELDS[name]
    if not f then return nil end
    name = f.snake
  end
  return require("kpiwatch.backing").reason(function(n)
    local v = lookup(body, n)
    if v == NULL then return nil end
    return v
  end, name, is_eval)
end

local function is_choice(v)
  return type(v) == "table" and type(rawget(v, "choices")) == "table"
end

-- evals_of(body) -> map name -> number | choice table, and the sorted list
-- of every eval name including the null-valued ones.
local function evals_of(body)
  local out, names = {}, {}
  for key, v in next, body do
    if type(key) == "string" and not FIELDS[key] then
      if key:sub(1, 4) == "avg_" and (type(v) == "number" or v == NULL or getmetatable(v) == Invalid) then
        local name = key:sub(5)
        names[#names + 1] = name
        if v ~= NULL then out[name] = nonfinite(key, v) end
      elseif is_choice(v) then
        names[#names + 1] = key
        out[key] = v
      end
    end
  end
  sort(names)
  return out, names
end

--- The dynamic eval metrics: every `avg_<name>` number that is not a
--- documented field, and choice evals as tables
--- (`tone = {friendly = 96, neutral = 14, rude = 2, choices = {...}}`).
---@param k kpiwatch.Kpi|table
---@return table<string, number|table> evals null ones left out
function M.evals(k)
  return (evals_of(body_of(k)))
end

--- Every eval name, null ones included, sorted.
---@param k kpiwatch.Kpi|table
---@return string[] names
function M.eval_names(k)
  local _, names = evals_of(body_of(k))
  return names
end

local function agent_type(body)
  local t = lookup(body, "agent_type")
  if type(t) == "string" then return t:lower() end
  return nil
end

-- normalize(k) -> plain table for JSON output: snake_case keys (documented
-- fields by their snake_case name, other camelCase keys converted), integer
-- fields as integers, nulls kept as json.null so they survive encoding, and
-- `execution_id` when known. Nested values (scenario graphs, choice
-- objects) are shared with the body, not copied.
--- A plain table for JSON output (what `kpiwatch get --json` prints): snake_case
--- keys, integer fields as integers, nulls kept as `json.null`, and
--- `execution_id` when known. Nested values are shared with the body.
---@param k kpiwatch.Kpi|table
---@return table normalized
function M.normalize(k)
  local body = body_of(k)
  local out = {}
  for key, v in next, body do
    if type(key) == "string" then
      local f = FIELDS[key]
      local name = f and f.snake or (key:find("%u") and to_snake(key)) or key
      -- snake_case wins when a body carries both spellings
      if out[name] == nil or key == name then
        if f and f.kind == "int" then v = fix_int(v) end
        if getmetatable(v) == Invalid then v = NULL end
        out[name] = v
      end
    end
  end
  if out.execution_id == nil and getmetatable(k) == KPI then
    out.execution_id = rawget(k, "execution_id")
  end
  return out
end

-- encode_json(k [, encode]) -> the normalized object as one line of JSON
-- with a stable key order: execution_id, the documented fields in the
-- order of the reference page, then every other key sorted. Each key and
-- value is encoded by the json module (encode defaults to json.encode).
--- The normalized object as one line of JSON with a stable key order:
--- `execution_id`, the documented fields in the order of the reference page,
--- then every other key sorted.
---@param k kpiwatch.Kpi|table
---@param encode? fun(v: any): string the encoder (default `json.encode`)
---@return string json
function M.encode_json(k, encode)
  encode = encode or json.encode
  local n = M.normalize(k)
  local keys, rest = {}, {}
  if n.execution_id ~= nil then keys[1] = "execution_id" end
  for _, rec in ipairs(FIELD_ORDER) do
    if n[rec.snake] ~= nil then keys[#keys + 1] = rec.snake end
  end
  for key in next, n do
    if key ~= "execution_id" and not FIELDS[key] then rest[#rest + 1] = key end
  end
  sort(rest)
  for _, key in ipairs(rest) do keys[#keys + 1] = key end
  local parts = {}
  for i, key in ipairs(keys) do
    parts[i] = encode(key) .. ":" .. encode(n[key])
  end
  return "{" .. concat(parts, ",") .. "}"
end

-- ---- methods ----------------------------------------------------------------

--- The decoded body, unwrapped from its envelope, nulls and all.
---@return table body
function methods.raw(self)
  return rawget(self, RAW)
end

--- `model.evals(k)`: the eval metrics by name.
---@return table<string, number|table> evals
function methods.evals(self)
  return (evals_of(rawget(self, RAW)))
end

--- `model.eval_names(k)`: every eval name, null ones included.
---@return string[] names
function methods.eval_names(self)
  local _, names = evals_of(rawget(self, RAW))
  return names
end

--- `model.eval(k, name)`: one eval metric.
---@param name string
---@return number|table|nil value
---@return boolean present
function methods.eval(self, name)
  return M.eval(self, name)
end

--- `model.get(k, name)`: a field, and whether the execution has it.
---@param name string
---@return any value
---@return boolean present
function methods.get(self, name)
  return M.get(self, name)
end

--- Whether the execution has the field (even if null).
---@param name string
---@return boolean
function methods.has(self, name)
  local _, present = M.get(self, name)
  return present
end

--- Whether `agent_type` is voice.
---@return boolean
function methods.is_voice(self)
  return agent_type(rawget(self, RAW)) == "voice"
end

--- Whether `agent_type` is text.
---@return boolean
function methods.is_text(self)
  return agent_type(rawget(self, RAW)) == "text"
end

--- `model.normalize(k)`.
---@return table normalized
function methods.normalize(self)
  return M.normalize(self)
end

-- Every name readable on the object (documented fields in both casings,
-- the body's keys, methods), sorted: for completion in the REPL.
--- Every name readable on the object (documented fields in both casings, the
--- body's keys, methods), sorted.
---@return string[] names
function methods.fields(self)
  local seen, out = {}, {}
  local function add(n)
    if type(n) == "string" and not seen[n] then
      seen[n] = true
      out[#out + 1] = n
    end
  end
  for name in pairs(FIELDS) do add(name) end
  for key in next, rawget(self, RAW) do
    add(key)
    if type(key) == "string" then
      local o = other_casing(key)
      if o then add(o) end
    end
  end
  add("execution_id")
  sort(out)
  return out
end

--- The aligned multi-line summary `tostring(k)` gives.
---@return string text
function methods.summary(self)
  return M.summary(self)
end

M.methods = methods

-- pairs(k) walks the normalized view, nulls left out (they read as nil).
KPI.__pairs = function(self)
  local view = M.normalize(self)
  for key, v in next, view do
    if v == NULL then view[key] = nil end
  end
  return next, view, nil
end

-- ---- summary ----------------------------------------------------------------

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

-- ---- parsing ----------------------------------------------------------------

-- A server's text made fit for a one-line message: at most 300 bytes.
local function one_line(s)
  return shared.clean(s, 300)
end

-- The server's own message in an error body: detail, then message, then
-- result (a string, or an object with a message), then error.
function M.server_message(body)
  if type(body) ~= "table" then return nil end
  for _, key in ipairs({ "detail", "message", "result", "error" }) do
    local v = rawget(body, key)
    if type(v) == "string" and v ~= "" then return one_line(v) end
    if type(v) == "table" then
      local m = rawget(v, "message") or rawget(v, "detail")
      if type(m) == "string" and m ~= "" then return one_line(m) end
    end
  end
  return nil
end

local function snippet(text)
  return shared.clean(text:sub(1, 80))
end
M.snippet = snippet

local function has_documented_field(body)
  for _, rec in ipairs(FIELD_ORDER) do
    if body[rec.snake] ~= nil or (rec.camel and body[rec.camel] ~= nil) then return true end
  end
  return false
end

-- ---- numbers the JSON grammar does not have ---------------------------------

-- lua-cjson decodes NaN, Infinity, 1e400 (as inf), hex (0x1), a leading
-- `+` and leading zeros. None is a JSON number, and a check must never pass
-- on one, so such a top-level value is replaced by an invalid-number
-- object: comparing or doing arithmetic with it raises a `protocol` error,
-- the gate reports that field as an error, JSON outputs write null.
-- Where a raw text may hold a number the grammar refuses; only then are
-- the values' tokens checked one by one (a cost only hostile bodies pay).
-- Each is a plain string (memchr-fast) and the whole value it starts,
-- delimited on both sides, so times and prose in strings rarely count.
-- Leading zeros (01) are not looked for: they read as the number written.
local SUSPECT = {
  { "0x", "[:,%[]%s*[+-]?0x%x*%s*[,}%]]" }, { "0X", "[:,%[]%s*[+-]?0X%x*%s*[,}%]]" },
  { "Infinity", "[:,%[]%s*[+-]?Infinity%s*[,}%]]" }, { "NaN", "[:,%[]%s*[+-]?NaN%s*[,}%]]" },
  { "+", "[:,%[]%s*%+[%d.]" },
}

-- A strict JSON number followed by the end of the value.
local function json_number_at(text, pos)
  local p = text:match("^%-?()", pos)
  local q = text:match("^0()", p) or text:match("^[1-9]%d*()", p)
  if not q then return false end
  q = text:match("^%.%d+()", q) or q
  q = text:match("^[eE][+-]?%d+()", q) or q
  return text:match("^%s*[,}%]]", q) ~= nil
end

-- The raw tokens of every occurrence of key's value in text (duplicate
-- keys: the decoder keeps the last one, any of them could be it).
local function raw_values(text, key)
  local ok, enc = pcall(json.encode, key)
  if not ok then return nil end
  local out, i = {}, 1
  while true do
    local a, b = text:find(enc, i, true)
    if not a then break end
    local v = text:match("^%s*:%s*()", b + 1)
    if v then out[#out + 1] = v end
    i = b + 1
  end
  return out
end

-- Non-finite values (1e400, a NaN the prefilter did not see) are found
-- where they are read (nonfinite), at no cost to a parse.
local function check_numbers(text, inner)
  local suspect = false
  for _, p in ipairs(SUSPECT) do
    if text:find(p[1], 1, true) and text:find(p[2]) then
      suspect = true
      break
    end
  end
  if not suspect then return end
  local bad
  for key, v in next, inner do
    if type(v) == "number" and type(key) == "string" then
      local positions = raw_values(text, key)
      -- a key written with escapes the encoder does not use: not provable
      local why = positions == nil or #positions == 0
      for _, pos in ipairs(positions or {}) do
        if not json_number_at(text, pos) then why = true break end
      end
      if why then
        local tok = positions and positions[#positions] and text:match("^([^,}%]%s]*)", positions[#positions])
        bad = bad or {}
        bad[key] = shared.clean(tok and tok ~= "" and tok or tostring(v), 40)
      end
    end
  end
  if bad then
    for key, tok in pairs(bad) do
      inner[key] = setmetatable({ field = key, text = tok }, Invalid)
    end
  end
end

-- parse(text [, execution_id]) -> KPI object, or nil and a `protocol` error
-- object when text is not a JSON object carrying KPI fields (an HTML page,
-- truncated JSON, an array, an error body sent with 200, ...).
-- The largest KPI body model.parse decodes (a real one: ~100 keys, depth 3).
M.MAX_KEYS, M.MAX_DEPTH, M.MEASURE_OVER = 10000, 32, 16384

--- Decode a response body into a KPI object.
---@param text string the body
---@param execution_id? string
---@return kpiwatch.Kpi|nil kpi
---@return table? err a `protocol` error object when the text is not a JSON object carrying KPI fields
function M.parse(text, execution_id)
  if type(text) ~= "string" then
    return nil, errors.new("protocol", "expected a response body, got " .. type(text),
      { execution_id = execution_id, retryable = false })
  end
  if #text > M.MEASURE_OVER and json.measure then
    -- A KPIs object has about a hundred keys; decoding a hostile one would
    -- cost ~1.4 KB of tables per key: refused before decoding. A body of
    -- MEASURE_OVER bytes or less cannot hold MAX_KEYS keys (5 bytes each at
    -- least) and is not measured: it would be a tenth of kpiwatch's own
    -- cost per fetch (its nesting is cjson's to bound). Array elements are
    -- not capped: a long list in a field is data (16 bytes an element).
    local keys, _, depth = json.measure(text)
    local too = keys > M.MAX_KEYS and format("%d keys (at most %d)", keys, M.MAX_KEYS)
      or depth > M.MAX_DEPTH and format("nesting %d deep (at most %d)", depth, M.MAX_DEPTH)
    if too then
      return nil, errors.new("protocol", "expected a KPIs object, got a JSON document with " .. too,
        { execution_id = execution_id, retryable = false })
    end
  end
  -- invalid UTF-8 can only be inside strings (elsewhere the decoder
  -- refuses it): replaced there, every output that copies a string stays
  -- valid UTF-8 for strict parsers
  text = shared.fix_utf8(text)
  local ok, body = pcall(json.decode, text)
  if not ok then
    local what = text:match("^%s*<") and "an HTML or XML page" or "invalid JSON"
    return nil, errors.new("protocol",
      format("expected a JSON object, got %s: '%s'", what, snippet(text)),
      { execution_id = execution_id, retryable = false })
  end
  if type(body) ~= "table" or (rawlen(body) > 0) or type(next(body)) == "number" then
    local what = type(body) == "table" and "a JSON array" or ("a JSON " .. (body == NULL and "null" or type(body)))
    return nil, errors.new("protocol", "expected a JSON object, got " .. what,
      { execution_id = execution_id, retryable = false })
  end
  if rawget(body, "status") == false then
    local msg = M.server_message(body) or "error body without a message"
    return nil, errors.new("protocol", "server answered with an error body: " .. msg,
      { execution_id = execution_id, retryable = false })
  end
  local inner = unwrap(body)
  check_numbers(text, inner)
  if not has_documented_field(inner) then
    return nil, errors.new("protocol",
      "expected a KPIs object, got a JSON object with none of its fields: '" .. snippet(text) .. "'",
      { execution_id = execution_id, retryable = false })
  end
  return setmetatable({ [RAW] = inner, execution_id = execution_id }, KPI)
end

M.KPI = KPI
return M
