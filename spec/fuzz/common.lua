-- spec/fuzz/common.lua: helpers of the fuzz drivers, loaded before each
-- driver (global `fuzz`). A driver raises through fuzz.check when an outcome
-- is not one the code under test documents; the harness aborts on it.

fuzz = {}

local format = string.format

-- A value as a short one-line text for messages.
function fuzz.show(v)
  local s
  if type(v) == "string" then s = format("%q", v) else s = tostring(v) end
  s = s:gsub("\n", "\\n")
  if #s > 200 then s = s:sub(1, 200) .. "..." end
  return s
end

function fuzz.check(cond, fmt, ...)
  if not cond then error("BUG: " .. format(fmt, ...), 2) end
  return cond
end

fuzz.errors = require "kpiwatch.errors"

-- An error object of kpiwatch.errors of one of the kinds, with a one-line
-- message (no control characters but tab).
function fuzz.is_error(e, kinds)
  if not fuzz.errors.is(e) then return false, "not an error object: " .. fuzz.show(e) end
  if kinds and not kinds[e.kind] then return false, "unexpected kind " .. fuzz.show(e.kind) end
  if type(e.message) ~= "string" then return false, "message is not a string" end
  return true
end

function fuzz.set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

-- Printable one-line text: no control bytes (tab allowed).
function fuzz.one_line(s)
  return type(s) == "string" and not s:gsub("\t", " "):find("%c")
end

-- The KPI objects of the sandbox's fixtures (parsed once).
local fixture_kpis
function fuzz.fixture_kpis()
  if not fixture_kpis then
    local model = require "kpiwatch.model"
    fixture_kpis = {}
    for _, f in ipairs(require("kpiwatch.fixtures").list()) do
      if f.body and not f.fault then
        fixture_kpis[#fixture_kpis + 1] = assert(model.parse(f.body, f.id))
      end
    end
  end
  return fixture_kpis
end

-- Split "a\nb\n\nbody": the lines before the first empty line, and the
-- rest (nil when there is no empty line).
function fuzz.split_head(input)
  local head, rest = input:match("^(.-)\n\n(.*)$")
  if not head then head = input end
  local lines = {}
  for line in (head .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  return lines, rest
end

-- Header lines "Name: value" of lines[first..], as an http.serve or
-- http.request headers table: lowercased names, repeats joined by ", ".
function fuzz.headers(lines, first)
  local headers = {}
  for i = first, #lines do
    local name, value = lines[i]:match("^([^:]+):[ \t]*(.*)$")
    if name then
      name = name:lower()
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end
  return headers
end
