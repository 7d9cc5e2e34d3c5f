-- kpiwatch.shared: the helpers every module uses, each idea once (as
-- Neovim's vim/shared.lua): globs, the escape for text from the server,
-- the value formatter, backoff, operator words, option validation and the
-- position of a configuration error.
--
-- No state; nothing loaded at require time but kpiwatch.errors and the C
-- scans of kpiwatch._text (utf8.len without them, under a plain lua5.4).

---@brief
--- The helpers every module uses, each idea once (as Neovim's vim/shared.lua):
--- globs (`evals = "..."` of alert rules and `--require 'eval:...'`), the one
--- escape for text from the server (`clean`), invalid UTF-8 replacement,
--- secret redaction, the value formatter, backoff, the operator words,
--- option validation (like vim.validate) and the position of a
--- configuration error.

local errors = require "kpiwatch.errors"

local M = {}

local type, tostring = type, tostring
local byte, sub, format, concat = string.byte, string.sub, string.format, table.concat
local math_type = math.type
-- The C scans of kpiwatch._text in the binary; under a plain lua5.4 (the
-- model's specs run there) the same answers from Lua's library.
-- utf8_invalid(s [, i]): the first invalid byte of s from i on, or nil.
-- uuid(s): s in lower case when it is a canonical UUID, else nil.
local utf8_invalid, uuid
do
  local ok, text = pcall(require, "kpiwatch._text")
  if ok then
    utf8_invalid, uuid = text.utf8_invalid, text.uuid
  else
    utf8_invalid = function(s, i)
      local valid, bad = utf8.len(s, i)
      if not valid then return bad end
    end
    local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
    uuid = function(s)
      if type(s) == "string" and #s == 36 and s:find(UUID) then return s:lower() end
    end
  end
end

-- ---- text from the server ------------------------------------------------------

---Replace every invalid UTF-8 sequence of `s` by U+FFFD, one per bad byte.
---Valid text (the common case) is returned as is, at the cost of one scan
---in C (kpiwatch._text: ASCII is skipped a word at a time). Surrogates,
---overlong forms and code points above U+10FFFF are invalid (Lua's strict
---decoder, utf8.len), so the result is accepted by any strict JSON or XML
---parser.
---@param s string
---@return string
function M.fix_utf8(s)
  local bad = utf8_invalid(s)
  if not bad then return s end
  local out, from = {}, 1
  while bad do
    out[#out + 1] = sub(s, from, bad - 1)
    out[#out + 1] = "\239\191\189"
    from = bad + 1
    bad = utf8_invalid(s, from)
  end
  out[#out + 1] = sub(s, from)
  return concat(out)
end

-- What a terminal, a CI log or a chat message must never receive raw:
-- C0 controls and DEL (ESC starts every terminal sequence), the C1
-- controls U+0080-U+009F (8-bit CSI), the line and paragraph separators
-- and the bidirectional overrides (text that displays differently from
-- what it is).
local C0 = "[%z\1-\31\127]"
local C1 = "\194[\128-\159]"
local UNI = "\226\128[\168-\174]"
local ISOL = "\226\129[\166-\169]"
local WS = { ["\t"] = " ", ["\n"] = " ", ["\r"] = " ", ["\v"] = " ", ["\f"] = " " }

---Text from the server (or any untrusted text) made safe to print or
---forward as one line: invalid UTF-8 replaced by U+FFFD, tab, CR, LF, VT
---and FF by a space, every other control character (C0, DEL, C1, ESC,
---hence every escape sequence) and the Unicode line separators and bidi
---overrides by "?". With `max`, cut to at most `max` bytes on a character
---boundary, ending in "..." when cut. The one escape of kpiwatch: every
---place that prints or forwards server text calls it.
---@param s any  converted with tostring
---@param max? integer  byte limit (at least 4)
---@return string
function M.clean(s, max)
  if type(s) ~= "string" then s = tostring(s) end
  s = M.fix_utf8(s)
  if s:find("[%c\127\194\226]") then
    s = s:gsub(C0, function(c) return WS[c] or "?" end)
      :gsub(C1, "?"):gsub(UNI, "?"):gsub(ISOL, "?")
  end
  if max and #s > max then
    local cut = max - 3
    -- back to the start of a character: continuation bytes are 10xxxxxx
    while cut > 0 and (byte(s, cut + 1) or 0) >= 128 and (byte(s, cut + 1) or 0) < 192 do
      cut = cut - 1
    end
    s = sub(s, 1, cut) .. "..."
  end
  return s
end

---`clean` over every string of a decoded JSON value, keys included, but
---only replacing invalid UTF-8 (control characters are legal JSON and
---the encoder escapes them). Tables are copied only where something
---changed; json.null and other values are kept.
---@param v any
---@param depth? integer  internal
---@return any
function M.fix_utf8_tree(v, depth)
  local t = type(v)
  if t == "string" then return M.fix_utf8(v) end
  if t ~= "table" or (depth or 0) > 100 then return v end
  local changed
  for k, x in pairs(v) do
    local nk, nx = M.fix_utf8_tree(k, (depth or 0) + 1), M.fix_utf8_tree(x, (depth or 0) + 1)
    if nk ~= k or nx ~= x then
      changed = changed or {}
      changed[#changed + 1] = { k, nk, nx }
    end
  end
  if not changed then return v end
  local copy = {}
  for k, x in pairs(v) do copy[k] = x end
  for _, c in ipairs(changed) do
    copy[c[1]] = nil
    copy[c[2]] = c[3]
  end
  return setmetatable(copy, getmetatable(v))
end

---Replace every occurrence of `needle` in `s` (plain text, no pattern).
---@param s string
---@param needle string  not empty
---@param with string
---@return string
function M.replace_plain(s, needle, with)
  local a, b = s:find(needle, 1, true)
  if not a then return s end
  local out, i = {}, 1
  while a do
    out[#out + 1] = sub(s, i, a - 1)
    out[#out + 1] = with
    i = b + 1
    a, b = s:find(needle, i, true)
  end
  out[#out + 1] = sub(s, i)
  return concat(out)
end

---Replace every plain occurrence of each secret in `s` by "[REDACTED]".
---Secrets shorter than 3 bytes are ignored (they would redact ordinary
---text and protect nothing).
---@param s string
---@param secrets string[]|nil
---@return string
function M.redact(s, secrets)
  if not secrets or type(s) ~= "string" then return s end
  for _, secret in ipairs(secrets) do
    if type(secret) == "string" and #secret >= 3 then s = M.replace_plain(s, secret, "[REDACTED]") end
  end
  return s
end

---`redact` over every string of a decoded JSON value, keys included; the
---table is changed in place (it is the caller's fresh decode) and
---returned.
---@param v any
---@param secrets string[]|nil
---@return any
---@param depth? integer  internal
function M.redact_tree(v, secrets, depth)
  if type(v) == "string" then return M.redact(v, secrets) end
  if type(v) ~= "table" or not secrets or #secrets == 0 or (depth or 0) > 100 then return v end
  local moves = {}
  for k, x in pairs(v) do
    local nk = M.redact_tree(k, secrets, (depth or 0) + 1)
    local nx = M.redact_tree(x, secrets, (depth or 0) + 1)
    if nk ~= k then moves[#moves + 1] = { k, nk, nx }
    elseif nx ~= x then v[k] = nx end
  end
  for _, m in ipairs(moves) do
    v[m[1]] = nil
    v[m[2]] = m[3]
  end
  return v
end

-- ---- the value formatter -------------------------------------------------------

---A number as people read it: integers as is, other numbers with up to 4
---decimals and trailing zeros trimmed, "nan", "inf", "-inf".
---@param v number
---@return string
function M.format_number(v)
  if math_type(v) == "integer" then return tostring(v) end
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" end
  if v == -math.huge then return "-inf" end
  local s = format("%.4f", v):gsub("0+$", ""):gsub("%.$", "")
  if s == "-0" then s = "0" end
  return s
end
local format_number = M.format_number

local function is_choice(v)
  return type(v) == "table" and type(rawget(v, "choices")) == "table"
end

local json = (function()
  local ok, j = pcall(require, "kpiwatch.json")
  if ok and type(j) == "table" then return j end
  ok, j = pcall(require, "cjson")
  return ok and j or nil
end)()
local NULL = json and json.null

---The one value formatter of reports, summaries and notifications: nil
---and json.null as "null", numbers by format_number, booleans as
---true/false, strings through `clean` (one line, at most `max` bytes),
---choice evals as "a 3, b 1" (counts the choice list does not name
---follow, sorted), other tables as compact JSON through `clean` (or
---"{N keys}" when they do not encode).
---@param v any
---@param max? integer  byte limit of a string (default 60; false: none)
---@return string
function M.format_value(v, max)
  if max == nil then max = 60 end
  if v == nil or v == NULL then return "null" end
  local t = type(v)
  if t == "number" then return format_number(v) end
  if t == "boolean" then return tostring(v) end
  if t == "string" then return M.clean(v, max or nil) end
  if is_choice(v) then
    local parts, listed = {}, {}
    for _, c in ipairs(v.choices) do
      if type(c) == "string" or type(c) == "number" then
        local n = v[c]
        listed[c] = true
        parts[#parts + 1] = M.clean(tostring(c), 40) .. " " .. (type(n) == "number" and format_number(n) or "0")
      end
    end
    local extra = {}
    for key, n in pairs(v) do
      if key ~= "choices" and not listed[key] and type(n) == "number" then
        extra[#extra + 1] = M.clean(tostring(key), 40) .. " " .. format_number(n)
      end
    end
    table.sort(extra)
    for _, e in ipairs(extra) do parts[#parts + 1] = e end
    return concat(parts, ", ")
  end
  if t == "table" then
    local mt = getmetatable(v)
    if mt and mt.__tostring then return M.clean(tostring(v), max or nil) end
    if json then
      local ok, s = pcall(json.encode, v)
      if ok then return M.clean(s, max or nil) end
    end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    return format("{%d keys}", n)
  end
  return M.clean(tostring(v), max or nil)
end

-- ---- globs -----------------------------------------------------------------------
-- One semantics for alert rules (`evals = "..."`) and `--require 'eval:...'`:
-- `*` any run of characters (also none), `?` one character, `[abc]`,
-- `[a-z]` a set or range, `[!a-z]` or `[^a-z]` its complement, a `]` first
-- in a set is literal, every other character literal. Matching is
-- case-insensitive (ASCII): the server lowercases eval names, people type
-- them in any case. A pattern is compiled to tokens, never to a Lua
-- pattern, so no input can make a pattern error.

local function lower_byte(c)
  if c >= 65 and c <= 90 then return c + 32 end
  return c
end

local function show(s)
  return M.clean(s, 60)
end

---Compile a glob to its token list.
---@param pat string
---@return table|nil tokens
---@return string? message  "unclosed '[' in glob '...'", "bad range ..."
function M.glob_compile(pat)
  if type(pat) ~= "string" then return nil, "glob must be a string, got " .. type(pat) end
  local toks, i, n = {}, 1, #pat
  while i <= n do
    local c = byte(pat, i)
    if c == 42 then -- *
      if toks[#toks] ~= "*" then toks[#toks + 1] = "*" end
      i = i + 1
    elseif c == 63 then -- ?
      toks[#toks + 1] = "?"
      i = i + 1
    elseif c == 91 then -- [
      local set = { neg = false, ranges = {} }
      local j = i + 1
      local first = byte(pat, j)
      if first == 33 or first == 94 then -- ! or ^
        set.neg = true
        j = j + 1
      end
      local start, closed = j, false
      while j <= n do
        local d = byte(pat, j)
        if d == 93 and j > start then -- ]
          closed = true
          break
        end
        local lo, hi = lower_byte(d), lower_byte(d)
        if byte(pat, j + 1) == 45 and j + 2 <= n and byte(pat, j + 2) ~= 93 then -- a-z
          hi = lower_byte(byte(pat, j + 2))
          if hi < lo then return nil, "bad range in glob '" .. show(pat) .. "'" end
          j = j + 2
        end
        set.ranges[#set.ranges + 1] = { lo, hi }
        j = j + 1
      end
      if not closed then return nil, "unclosed '[' in glob '" .. show(pat) .. "'" end
      toks[#toks + 1] = set
      i = j + 1
    else
      toks[#toks + 1] = lower_byte(c)
      i = i + 1
    end
  end
  return toks
end

local function set_has(set, c)
  for _, r in ipairs(set.ranges) do
    if c >= r[1] and c <= r[2] then return not set.neg end
  end
  return set.neg
end

---Match a name against compiled tokens: iterative, one backtrack point per
---star, O(#toks * #s) at worst, no recursion.
---@param toks table  from glob_compile
---@param s string
---@return boolean
function M.glob_match(toks, s)
  local p, i, nt, ns = 1, 1, #toks, #s
  local star_p, star_i
  while i <= ns do
    local t = toks[p]
    local c = lower_byte(byte(s, i))
    if t == "*" then
      star_p, star_i = p, i
      p = p + 1
    elseif p <= nt and (t == "?" or t == c or (type(t) == "table" and set_has(t, c))) then
      p, i = p + 1, i + 1
    elseif star_p then
      p = star_p + 1
      star_i = star_i + 1
      i = star_i
    else
      return false
    end
  end
  while toks[p] == "*" do p = p + 1 end
  return p > nt
end

---A matcher for a glob (see the semantics above).
---@param pattern string
---@return (fun(name: string): boolean)|nil
---@return string? message
function M.glob(pattern)
  local toks, err = M.glob_compile(pattern)
  if not toks then return nil, err end
  return function(name) return M.glob_match(toks, name) end
end

---Whether `s` uses a glob character (`*`, `?` or `[`), i.e. names a set
---of evals rather than one.
---@param s string
---@return boolean
function M.is_glob(s)
  return s:find("[%*%?%[]") ~= nil
end

-- ---- operators -------------------------------------------------------------------

---The words of the alert rules' threshold operators, as messages say
---them: below, above, at most, at least, equal to.
M.OP_WORDS = {
  below = "below", above = "above", at_most = "at most", at_least = "at least", equals = "equal to",
}

-- ---- terminals -------------------------------------------------------------------

--- Whether file descriptor `fd` is a terminal (false where the runtime has
--- no terminal module, as outside the kpiwatch binary).
---@param fd integer 0, 1 or 2
---@return boolean
function M.isatty(fd)
  local ok, term = pcall(require, "kpiwatch._term")
  return ok and term.isatty(fd) or false
end

-- ---- backoff ---------------------------------------------------------------------

---The delay before retry number `attempt` (1-based): full jitter over an
---exponential ceiling, `random() * min(cap, base * 2^(attempt-1))`.
---@param attempt integer
---@param base number  first ceiling, seconds
---@param cap number  largest ceiling, seconds
---@param random? fun(): number  in [0, 1) (default math.random)
---@return number seconds
function M.backoff(attempt, base, cap, random)
  local ceiling = base * 2 ^ (attempt - 1)
  if ceiling > cap then ceiling = cap end
  return (random or math.random)() * ceiling
end

-- ---- random ids --------------------------------------------------------------------

---`n` random bytes from the CSPRNG (kpiwatch._crypto) as 2n lowercase hex digits:
---ids that no other process hands out (event ids, the sandbox's new runs).
---@param n integer
---@return string hex
function M.random_hex(n)
  return (require("kpiwatch._crypto").random_bytes(n):gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

---`s` in lower case when it is a UUID in its canonical text form (8-4-4-4-12
---hexadecimal digits, either case), else nil: the one check of execution,
---run test and fixture ids.
---@param s any
---@return string|nil uuid
M.uuid = uuid

---A random UUID (version 4, RFC 9562), lowercase: the shape of the API's ids.
---@return string uuid
function M.uuid4()
  local h = M.random_hex(16)
  local variant = string.format("%x", 8 + tonumber(h:sub(17, 17), 16) % 4)
  return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-4" .. h:sub(14, 16) .. "-" .. variant
    .. h:sub(18, 20) .. "-" .. h:sub(21, 32)
end

-- ---- configuration errors ----------------------------------------------------------

---"file:line" of the first stack frame that is Lua code outside the
---files `skip` names (a set of chunk sources, e.g. "@.../alert/rule.lua",
---or a function(source) -> boolean): where the user's call is.
---@param skip table<string, boolean>|fun(source: string): boolean
---@return string where  "?" when no such frame
---@return string? file
---@return integer? line
function M.caller_where(skip)
  local skipped = type(skip) == "function" and skip or function(src) return skip[src] end
  for level = 2, 40 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.what ~= "C" and not skipped(info.source) then
      return info.short_src .. ":" .. tostring(info.currentline or "?"), info.short_src, info.currentline
    end
  end
  return "?", nil, nil
end

---Raise a `config` error object whose message starts with `where`
---("file:line: ") when known. The one shape of a configuration error's
---position.
---@param where string|nil
---@param msg string
---@param fields? table  copied into the error
function M.config_error(where, msg, fields)
  error(errors.new("config", (where and where ~= "?" and (where .. ": ") or "") .. msg, fields or {}), 0)
end

local function type_text(v)
  if v ~= v then return "NaN" end
  return type(v)
end

---Validate options, like vim.validate: `spec` maps a name to
---`{value, want, optional}` where want is a type name ("string",
---"number" (not NaN), "table", "function", "boolean", "integer",
---"callable"), a list of them, or a function(value) -> ok, expected-text. A
---wrong value raises a `config` error "<prefix>: '<name>' must be
---<expected>, got <type>" (names checked in sorted order), positioned by
---config_error. `how` is the position "file:line", or a table {where=,
---noun= (a word before the name, e.g. "field"), fields= (copied into the
---error besides `field`)}.
---@param prefix string  e.g. "notify.webhook"
---@param spec table<string, {[1]: any, [2]: string|string[]|function, [3]: boolean?}>
---@param how? string|{where?: string, noun?: string, fields?: table}
function M.validate(prefix, spec, how)
  local where, noun, extra = how, nil, nil
  if type(how) == "table" then where, noun, extra = how.where, how.noun, how.fields end
  local names = {}
  for name in pairs(spec) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local s = spec[name]
    local v, want, optional = s[1], s[2], s[3]
    if not (v == nil and optional) then
      local ok, expected
      if type(want) == "function" then
        ok, expected = want(v)
        expected = expected or "valid"
      else
        local list = type(want) == "table" and want or { want }
        for _, w in ipairs(list) do
          if w == "integer" then ok = math_type(v) == "integer"
          elseif w == "callable" then
            local mt = getmetatable(v)
            ok = type(v) == "function" or (type(mt) == "table" and mt.__call ~= nil)
          elseif w == "number" then ok = type(v) == "number" and v == v
          else ok = type(v) == w end
          if ok then break end
        end
        expected = "a " .. concat(list, " or a ")
      end
      if not ok then
        local fields = { field = name }
        for k, x in pairs(extra or {}) do fields[k] = x end
        M.config_error(where, format("%s: %s'%s' must be %s, got %s", prefix, noun and (noun .. " ") or "",
          name, expected, type_text(v)), fields)
      end
    end
  end
end

return M
