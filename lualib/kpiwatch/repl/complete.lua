-- TAB completion at the interactive prompt (kpiwatch.repl): globals,
-- fields and methods, keywords, and fixture ids inside a string with
-- --sandbox. kpiwatch.repl re-exports complete.

local type, pairs, next = type, pairs, next
local getmetatable, rawget, pcall = getmetatable, rawget, pcall
local sort = table.sort

local M = {}

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do
  KEYWORDS[w] = true
end

-- The globals embed.c loads on first use: not in _G until touched.
local LAZY_GLOBALS = { "task", "json", "http", "kpis" }

local function is_ident(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil and not KEYWORDS[s]
end

local function fixture_ids()
  local sb = package.loaded["kpiwatch.sandbox"]
  if not sb then return {} end
  for _, key in ipairs({ "current", "running" }) do
    local cur = type(sb) == "table" and rawget(sb, key)
    if type(cur) == "table" and type(cur.ids) == "function" then
      local ok, ids = pcall(cur.ids)
      if ok and type(ids) == "table" then return ids end
    end
  end
  local ok, fx = pcall(require, "kpiwatch.fixtures")
  local out = {}
  if ok then
    for _, f in ipairs(fx.list()) do out[#out + 1] = f.id end
  end
  return out
end

-- The text of the string literal the cursor is in, or nil when it is not
-- in one (quotes and backslash escapes are followed; long strings are not).
local function open_string(before)
  local q, start, i = nil, nil, 1
  while i <= #before do
    local c = before:sub(i, i)
    if q then
      if c == "\\" then i = i + 1
      elseif c == q then q = nil end
    elseif c == '"' or c == "'" then
      q, start = c, i
    elseif c == "-" and before:sub(i + 1, i + 1) == "-" then
      return nil -- a comment
    end
    i = i + 1
  end
  if q then return before:sub(start + 1) end
  return nil
end

local function index(v, name)
  local ok, x = pcall(function() return v[name] end)
  if ok then return x end
  return nil
end

local function callable(x)
  if type(x) == "function" then return true end
  local mt = getmetatable(x)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

-- Names readable on v: its own string keys and those of the __index
-- tables of its metatables; for a KPI object, its fields (documented ones,
-- the body's keys, i.e. the dynamic eval metrics too) and methods.
local function names_of(v, methods_only)
  local out = {}
  local m = package.loaded["kpiwatch.model"]
  if m and m.is(v) then
    if not methods_only then
      local ok, fields = pcall(function() return v:fields() end)
      if ok and type(fields) == "table" then
        for _, n in ipairs(fields) do out[n] = true end
      end
    end
    for n in pairs(m.methods or {}) do out[n] = true end
    return out
  end
  local t, hops = v, 0
  while t ~= nil and hops < 8 do
    if type(t) == "table" then
      for key, x in next, t do
        if is_ident(key) and (not methods_only or callable(x)) then
          out[key] = true
        end
      end
    end
    local mt = getmetatable(t)
    if type(mt) ~= "table" then break end
    local idx = rawget(mt, "__index")
    if type(idx) ~= "table" then break end
    t, hops = idx, hops + 1
  end
  return out
end

local function global_names()
  local out = {}
  for key in next, _G do
    if is_ident(key) then out[key] = true end
  end
  for _, n in ipairs(LAZY_GLOBALS) do out[n] = true end
  for w in pairs(KEYWORDS) do out[w] = true end
  return out
end

-- complete(before, word) -> sorted list of replacements for word.
-- before is the line up to the word; word runs back from the cursor to the
-- previous separator and keeps '.' and ':' (`kpis.ge`, `k:ev`, `k.avg_`).
--- Completions for the word before the cursor (`kpis.ge`, `k:ev`, `k.avg_`).
---@param before string the line up to the word
---@param word string the word, with its `.` and `:`
---@return string[] replacements sorted
function M.complete(before, word)
  local out = {}
  local str = open_string(before)
  if str then
    -- inside a string: fixture ids of the sandbox. The word libedit will
    -- replace starts after the last separator (a '-' inside the id), so
    -- candidates are cut to what follows the text already in `before`.
    local typed = str .. word
    for _, id in ipairs(fixture_ids()) do
      if id:sub(1, #typed) == typed then out[#out + 1] = id:sub(#str + 1) end
    end
    sort(out)
    if #out == 1 then out[1] = out[1] .. before:sub(#before - #str, #before - #str) end
    return out
  end
  local path, sep, partial = word:match("^(.-)([.:])([%w_]*)$")
  local names, prefix
  if path then
    local v = _G
    for name in (path .. "."):gmatch("([^.]*)%.") do
      if not is_ident(name) then return out end
      v = index(v, name)
      if v == nil then return out end
    end
    names = names_of(v, sep == ":")
    prefix = path .. sep
  else
    if not word:match("^[%a_]?[%w_]*$") then return out end
    names, partial, prefix = global_names(), word, ""
  end
  local hide_private = partial:sub(1, 1) ~= "_"
  for n in pairs(names) do
    if n:sub(1, #partial) == partial and not (hide_private and n:sub(1, 1) == "_") then
      out[#out + 1] = prefix .. n
    end
  end
  sort(out)
  return out
end

-- Also what the pretty printer asks: can this key print bare?
M.is_ident = is_ident

return M
