-- kpiwatch.spool: durable JSON documents for the alert engine: the watch
-- state file and the spool of notifications that could not be delivered.
--
--   spool.read(path)          -> table | nil (no file) ; raises `io` / `state`
--   spool.write(path, doc)    -> true | nil, error object (kind io)
--   spool.default_path()      -> where undeliverable notifications go by default
--   spool.open(path)          -> a spool object (below)
--
-- Every write replaces the whole file atomically (kpiwatch._fs.write_atomic:
-- temporary file, fsync, rename, fsync of the directory), mode 0600, its
-- directory created 0700 when missing. A kill -9 at any point leaves the
-- previous document or the new one, never a torn file. A file that does not
-- parse all the same (edited by hand, another program) is moved aside to
-- PATH.corrupt-<time> with a message on stderr, and a fresh one starts: a
-- watch must not stop over its own bookkeeping.
--
-- Spool file format (version 1):
--   {"version": 1, "entries": [
--     {"hook": "ops", "event": {...the alert event...}, "attempts": 4,
--      "spooled_at": "2024-05-01T10:00:00Z", "last_error": "server: 503 ..."}]}
-- An entry is keyed by (hook, event.id): adding it twice keeps one.

local fs = require "kpiwatch._fs"
local json = require "kpiwatch.json"
local errors = require "kpiwatch.errors"

local M = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$")
end

local function warn(msg)
  io.stderr:write("kpiwatch: ", msg, "\n")
  io.stderr:flush()
end

function M.default_path()
  local p = os.getenv("KPIWATCH_SPOOL")
  if p and p ~= "" then return p end
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if home and home ~= "" then base = home .. "/.local/state" end
  end
  if base then return base .. "/kpiwatch/spool.json" end
  return "kpiwatch-spool.json"
end

-- read(path) -> decoded table, or nil when the file does not exist.
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then
    if fs.stat(path) == nil then return nil end
    errors.raise("io", "cannot read " .. path .. ": " .. tostring(err), { path = path })
  end
  local text = f:read("a")
  f:close()
  local ok, doc = pcall(json.decode, text)
  if ok and type(doc) == "table" then return doc end
  local aside = path .. ".corrupt-" .. os.time()
  os.rename(path, aside)
  warn(string.format("%s does not parse as a JSON object; moved aside to %s, starting afresh",
    path, aside))
  return nil
end

-- write(path, doc) -> true | nil, error object
function M.write(path, doc)
  local ok, text = pcall(json.encode, doc)
  if not ok then
    return nil, errors.new("io", "cannot encode " .. path .. ": " .. tostring(text), { path = path })
  end
  local dir = dirname(path)
  if dir and dir ~= "" then
    local made, msg = fs.mkdirs(dir, tonumber("700", 8))
    if not made then return nil, errors.new("io", msg, { path = path }) end
  end
  local done, msg = fs.write_atomic(path, text .. "\n", tonumber("600", 8))
  if not done then return nil, errors.new("io", msg, { path = path }) end
  return true
end

-- ---- the spool object -----------------------------------------------------------

local Spool = {}
Spool.__index = Spool

-- open(path) -> spool with .path and .entries (list); the file is read now.
function M.open(path)
  local s = setmetatable({ path = path, entries = {} }, Spool)
  local doc = M.read(path)
  if doc and type(doc.entries) == "table" then
    for _, e in ipairs(doc.entries) do
      if type(e) == "table" and type(e.hook) == "string" and type(e.event) == "table"
        and type(e.event.id) == "string" then
        s.entries[#s.entries + 1] = e
      end
    end
  end
  return s
end

local function key(hook, id)
  return hook .. "\0" .. id
end

-- add(hook, event, info) -> true when it was not already spooled
function Spool:add(hook, event, info)
  local k = key(hook, event.id)
  for _, e in ipairs(self.entries) do
    if key(e.hook, e.event.id) == k then
      e.attempts = (e.attempts or 0) + ((info and info.attempts) or 0)
      e.last_error = info and info.last_error or e.last_error
      return false
    end
  end
  self.entries[#self.entries + 1] = {
    hook = hook,
    event = event,
    attempts = info and info.attempts or 0,
    last_error = info and info.last_error or nil,
    spooled_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  }
  return true
end

-- remove(set) removes the entries e for which set[e] is true.
function Spool:remove(set)
  local keep = {}
  for _, e in ipairs(self.entries) do
    if not set[e] then keep[#keep + 1] = e end
  end
  self.entries = keep
end

function Spool:save()
  local entries = json.array and json.array(self.entries) or self.entries
  return M.write(self.path, { version = 1, entries = entries })
end

return M
