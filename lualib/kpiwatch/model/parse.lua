-- kpiwatch.model.parse: a response body into a KPI object, with the
-- limits on its size and the numbers the JSON grammar does not have.

local shared = require "kpiwatch.shared"
local errors = require "kpiwatch.errors"
local M = require "kpiwatch.model.api"
local invalid = require "kpiwatch.model.invalid"
local fields = require "kpiwatch.model.fields"
local kpi = require "kpiwatch.model.kpi"

local type, next, pairs, rawget = type, next, pairs, rawget
local setmetatable = setmetatable
local format, find = string.format, string.find
local Invalid = invalid.Invalid
local json, NULL, FIELD_ORDER, unwrap = fields.json, fields.NULL, fields.FIELD_ORDER, fields.unwrap
local RAW, KPI = kpi.RAW, kpi.KPI
-- kpiwatch's json: decode that also says whether a number was not JSON's
local decode_odd = rawget(json, "_decode")

-- A server's text made fit for a one-line message: at most 300 bytes.
local function one_line(s)
  return shared.clean(s, 300)
end

-- The server's own message in an error body: detail, then message, then
-- result (a string, or an object with a message), then error.
---@private
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
  for i = 1, #FIELD_ORDER do
    local rec = FIELD_ORDER[i]
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
-- Only when the text holds a number the grammar refuses are the values'
-- tokens checked one by one (a cost only hostile bodies pay): kpiwatch's
-- json._decode says whether the decoder read one. Under a plain lua5.4
-- with lua-cjson, the text is searched for one instead: each pattern a
-- plain string (memchr-fast) and the whole value it starts, delimited on
-- both sides, so times and prose in strings rarely count; a hex prefix
-- from its letter (memchr stops at every 0 of a KPIs body).
-- Leading zeros (01) are not looked for: they read as the number written.
local HEX, HEX_UPPER = "[:,%[]%s*[+-]?0x%x*%s*[,}%]]", "[:,%[]%s*[+-]?0X%x*%s*[,}%]]"
local INFINITY, NAN, PLUS = "[:,%[]%s*[+-]?Infinity%s*[,}%]]", "[:,%[]%s*[+-]?NaN%s*[,}%]]", "[:,%[]%s*%+[%d.]"


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

-- Whether text may hold a number the grammar refuses, from the text alone.
local function odd_numbers_in(text)
  -- each test a memchr-fast plain search first, the pattern only on a hit
  return find(text, "x", 1, true) and find(text, "0x", 1, true) and find(text, HEX)
      or find(text, "X", 1, true) and find(text, "0X", 1, true) and find(text, HEX_UPPER)
      or find(text, "Infinity", 1, true) and find(text, INFINITY)
      or find(text, "NaN", 1, true) and find(text, NAN)
      or find(text, "+", 1, true) and find(text, PLUS)
end

-- Non-finite values (1e400, a NaN not seen here) are found where they are
-- read (nonfinite), at no cost to a parse.
local function check_numbers(text, inner)
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
  local ok, body, odd
  if decode_odd then
    ok, body, odd = pcall(decode_odd, text)
  else
    ok, body = pcall(json.decode, text)
  end
  if not ok then
    local what = text:match("^%s*<") and "an HTML or XML page" or "invalid JSON"
    return nil, errors.new("protocol",
      format("expected a JSON object, got %s: '%s'", what, snippet(text)),
      { execution_id = execution_id, retryable = false })
  end
  -- a decoded array has its elements from 1 (json.null for a null): a
  -- table without [1] is an object, or an empty array
  if type(body) ~= "table" or (rawlen(body) > 0) then
    local what = type(body) == "table" and "a JSON array" or ("a JSON " .. (body == NULL and "null" or type(body)))
    return nil, errors.new("protocol", "expected a JSON object, got " .. what,
      { execution_id = execution_id, retryable = false })
  end
  -- a decoded object has no metatable: plain reads
  local status = body.status
  if status == false then
    local msg = M.server_message(body) or "error body without a message"
    return nil, errors.new("protocol", "server answered with an error body: " .. msg,
      { execution_id = execution_id, retryable = false })
  end
  local inner = status == nil and body or unwrap(body)
  if odd or odd == nil and odd_numbers_in(text) then check_numbers(text, inner) end
  if not has_documented_field(inner) then
    return nil, errors.new("protocol",
      "expected a KPIs object, got a JSON object with none of its fields: '" .. snippet(text) .. "'",
      { execution_id = execution_id, retryable = false })
  end
  return setmetatable({ [RAW] = inner, execution_id = execution_id }, KPI)
end

return {}
