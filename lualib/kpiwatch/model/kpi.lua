-- kpiwatch.model.kpi: the KPI object, a read-only view over one decoded
-- body that resolves names lazily in __index, its methods, the eval
-- metrics and the normalized view.

local M = require "kpiwatch.model.api"
local invalid = require "kpiwatch.model.invalid"
local fields = require "kpiwatch.model.fields"

local type, next, pairs, rawget = type, next, pairs, rawget
local setmetatable, getmetatable = setmetatable, getmetatable
local concat, sort = table.concat, table.sort
local Invalid, nonfinite = invalid.Invalid, invalid.nonfinite
local json, NULL, FIELDS, FIELD_ORDER = fields.json, fields.NULL, fields.FIELDS, fields.FIELD_ORDER
local to_snake, other_casing, fix_int = fields.to_snake, fields.other_casing, fields.fix_int
local lookup, unwrap = fields.lookup, fields.unwrap

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

return { RAW = RAW, KPI = KPI, body_of = body_of, evals_of = evals_of, agent_type = agent_type }
