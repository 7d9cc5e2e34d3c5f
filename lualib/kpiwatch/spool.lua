-- kpiwatch.spool: durable JSON documents for the alert engine: the watch
-- state file and the spool of notifications that could not be delivered.
--
--   spool.read(path)          -> table | nil (no file) ; raises `io` / `state`
--   spool.write(path, doc)    -> true | nil, error object (kind io)
--   spool.default_path()      -> where undeliverable notifications go by default
--   spool.open(path [, opts]) -> a spool object (below)
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
--      "spooled_at": "2024-05-01T10:00:00Z", "first_spooled": 1714557600,
--      "last_error": "server: 503 ...", "claim": "...", "claimed_at": ...}]}
-- An entry is keyed by (hook, event.id): adding it twice keeps one.
--
-- The spool is shared: every cron and CI run of a user writes the default
-- one, at the same time. Every change is a read-modify-write under an
-- exclusive flock of PATH.lock, merged into what the file holds then, never
-- a rewrite from a copy read earlier. A replay claims its entries under the
-- lock (another replay skips them), delivers them with the lock released,
-- and settles each under the lock as it ends: a delivered entry leaves the
-- file at once, so two runs never deliver it twice. A claim whose process
-- is gone (no /proc/PID: killed mid-replay), or older than an hour where
-- there is no /proc, is taken over.
--
-- A file that is JSON but not a spool (no version, no entries list), or a
-- spool of a newer version, is never rewritten: the operation fails with a
-- clear error. Entries older than max_age, or tried max_attempts times, move
-- to the dead-letter file PATH.dead (the same format) and the caller warns.

local fs = require "kpiwatch._fs"
local json = require "kpiwatch.json"
local errors = require "kpiwatch.errors"

local M = {}

local type, ipairs, tostring, pcall, error = type, ipairs, tostring, pcall, error
local format = string.format

--- The spool file format this version writes; a newer one is refused.
M.VERSION = 1

--- Retention of spooled notifications, unless spool.open's opts (and
--- alert.configure's spool_max_age, spool_max_attempts) say otherwise:
--- max_age 7 days (seconds), max_attempts 100 (delivery attempts in all,
--- the first run's retries included). Past either, an entry moves to the
--- dead-letter file PATH.dead with a warning.
M.DEFAULTS = { max_age = 7 * 86400, max_attempts = 100, lock_timeout = 30 }

-- A claim older than this belongs to a run that died mid-replay (where
-- /proc cannot tell).
local CLAIM_TTL = 3600

local has_proc = fs.stat("/proc/self") ~= nil

-- Whether the claim of entry e still holds: its process lives (the claim
-- token starts with its pid) and it is younger than CLAIM_TTL.
local function claim_holds(e, now)
  if e.claim == nil then return false end
  if now - (e.claimed_at or 0) >= CLAIM_TTL then return false end
  local pid = type(e.claim) == "string" and e.claim:match("^(%d+)%-")
  if has_proc and pid and fs.stat("/proc/" .. pid) == nil then return false end
  return true
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$")
end

local function warn(msg)
  io.stderr:write("kpiwatch: ", msg, "\n")
  io.stderr:flush()
end

-- The message of a kpiwatch._fs failure, in either of its shapes
-- (nil, "io", message) or (nil, message, errno).
local function fs_message(a, b)
  if a == "io" and type(b) == "string" then return b end
  return tostring(a)
end

local function io_error(path, msg)
  return errors.new("io", msg, { path = path })
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

local function mkdir_for(path)
  local dir = dirname(path)
  if dir and dir ~= "" then
    local made, a, b = fs.mkdirs(dir, tonumber("700", 8))
    if not made then return nil, io_error(path, fs_message(a, b)) end
  end
  return true
end

-- write(path, doc) -> true | nil, error object
function M.write(path, doc)
  local ok, text = pcall(json.encode, doc)
  if not ok then
    return nil, errors.new("io", "cannot encode " .. path .. ": " .. tostring(text), { path = path })
  end
  local made, merr = mkdir_for(path)
  if not made then return nil, merr end
  local done, a, b = fs.write_atomic(path, text .. "\n", tonumber("600", 8))
  if not done then return nil, io_error(path, fs_message(a, b)) end
  return true
end

-- ---- the spool object -----------------------------------------------------------

local Spool = {}
Spool.__index = Spool

local function key(hook, id)
  return hook .. "\0" .. id
end

local function valid_entry(e)
  return type(e) == "table" and type(e.hook) == "string" and type(e.event) == "table"
    and type(e.event.id) == "string"
end

-- The spool document at path: {version=1, entries={...}} (empty when there
-- is no file). Raises an io error for a file that is not a spool or is of
-- a newer version: it is someone else's, and is left as it is.
local function load(path)
  local doc = M.read(path)
  if doc == nil then return { version = M.VERSION, entries = {} } end
  local v = doc.version
  if type(v) == "number" and v > M.VERSION then
    errors.raise("io", format("%s is a spool of a newer kpiwatch (version %d; this one reads %d): "
      .. "left as it is; use that kpiwatch, or another spool (KPIWATCH_SPOOL)", path, v, M.VERSION),
      { path = path })
  end
  if v ~= M.VERSION or type(doc.entries) ~= "table" or (next(doc.entries) ~= nil and doc.entries[1] == nil) then
    errors.raise("io", format("%s is not a kpiwatch spool (a JSON file without version %d and an "
      .. "entries list): refusing to overwrite it; move it away or choose another spool (KPIWATCH_SPOOL)",
      path, M.VERSION), { path = path })
  end
  local entries = {}
  for _, e in ipairs(doc.entries) do
    if valid_entry(e) then entries[#entries + 1] = e end
  end
  doc.entries = entries
  return doc
end

local function save(path, doc)
  return M.write(path, { version = M.VERSION, entries = json.array(doc.entries) })
end

local clock = os.time

-- open(path [, opts]) -> spool. opts: max_age (seconds), max_attempts,
-- lock_timeout (seconds to wait for the lock). Nothing is read yet.
function M.open(path, opts)
  opts = opts or {}
  return setmetatable({
    path = path,
    dead_path = path .. ".dead",
    lock_path = path .. ".lock",
    max_age = opts.max_age or M.DEFAULTS.max_age,
    max_attempts = opts.max_attempts or M.DEFAULTS.max_attempts,
    lock_timeout = opts.lock_timeout or M.DEFAULTS.lock_timeout,
    token = format("%d-%s-%d", fs.getpid(), tostring({}):match("0x(%x+)") or "0", math.random(1e9)),
  }, Spool)
end

-- locked(fn, ...) -> fn's results, run holding PATH.lock. Waits for a lock
-- held elsewhere by sleeping in the task (the loop keeps turning), up to
-- lock_timeout; raises an io error then.
function Spool:locked(fn, ...)
  local made, merr = mkdir_for(self.path)
  if not made then error(merr, 0) end
  local task
  local waited, delay = 0, 0.005
  local lock, a, b
  while true do
    lock, a, b = fs.lock(self.lock_path)
    if lock then break end
    if b ~= fs.EWOULDBLOCK then
      errors.raise("io", "cannot lock " .. self.lock_path .. ": " .. tostring(a), { path = self.path })
    end
    if waited >= self.lock_timeout then
      errors.raise("io", format("%s stayed locked by another process for %gs", self.lock_path,
        self.lock_timeout), { path = self.path })
    end
    task = task or require "kpiwatch.task"
    task.sleep(delay)
    waited = waited + delay
    delay = math.min(delay * 2, 0.1)
  end
  local res = table.pack(pcall(fn, ...))
  lock:unlock()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- Moves the entries past their age or attempts to the dead-letter file
-- (under the spool's lock). Returns how many moved.
function Spool:_expire(doc, now)
  local keep, dead = {}, {}
  for _, e in ipairs(doc.entries) do
    if type(e.first_spooled) ~= "number" then e.first_spooled = now end
    local why
    if (e.attempts or 0) >= self.max_attempts then
      why = format("%d attempts", e.attempts)
    elseif now - e.first_spooled >= self.max_age then
      why = format("spooled for more than %gs", self.max_age)
    end
    if why and not claim_holds(e, now) then
      e.dead_reason, e.dead_at, e.claim, e.claimed_at = why, require("kpiwatch.time").rfc3339(now), nil, nil
      dead[#dead + 1] = e
    else
      keep[#keep + 1] = e
    end
  end
  if #dead == 0 then return 0 end
  local ddoc = load(self.dead_path)
  for _, e in ipairs(dead) do ddoc.entries[#ddoc.entries + 1] = e end
  local ok, err = save(self.dead_path, ddoc)
  if not ok then error(err, 0) end
  doc.entries = keep
  return #dead
end

--- Adds entries to the spool file: a locked read-modify-write, merged with
--- what other processes wrote. An entry already there (same hook and event
--- id) gets the attempts added instead.
---@param list table list of {hook=, event=, attempts=, last_error=}
---@return boolean|nil ok
---@return table|nil err an io error object (the file cannot be written, is not
--- a spool, or is a newer one)
function Spool:add_all(list)
  if #list == 0 then return true end
  local ok, err = pcall(self.locked, self, function()
    local doc = load(self.path)
    local index = {}
    for _, e in ipairs(doc.entries) do index[key(e.hook, e.event.id)] = e end
    local now = clock()
    for _, item in ipairs(list) do
      local k = key(item.hook, item.event.id)
      local e = index[k]
      if e then
        e.attempts = (e.attempts or 0) + (item.attempts or 0)
        e.last_error = item.last_error or e.last_error
      else
        e = { hook = item.hook, event = item.event, attempts = item.attempts or 0,
          last_error = item.last_error, spooled_at = require("kpiwatch.time").rfc3339(now),
          first_spooled = now }
        doc.entries[#doc.entries + 1] = e
        index[k] = e
      end
    end
    local saved, serr = save(self.path, doc)
    if not saved then error(serr, 0) end
  end)
  if ok then return true end
  if not errors.is(err) then err = io_error(self.path, tostring(err)) end
  return nil, err
end

--- Adds one entry (see add_all).
---@return boolean|nil ok
---@return table|nil err
function Spool:add(hook, event, info)
  return self:add_all({ { hook = hook, event = event, attempts = info and info.attempts,
    last_error = info and info.last_error } })
end

--- Claims the entries whose hook is in `hooks` for a replay: marked with this
--- spool object's token under the lock, so that another run's replay skips
--- them. Expired entries move to the dead-letter file first. No file: nothing.
---@param hooks table set of hook names ({[name] = anything})
---@return table claimed the claimed entries (copies)
---@return table info {unknown = {[hook] = n} (entries for other hooks), dead = n moved to dead_path}
function Spool:claim(hooks)
  local info = { unknown = {}, dead = 0 }
  if fs.stat(self.path) == nil then return {}, info end
  local claimed = {}
  self:locked(function()
    local doc = load(self.path)
    local now = clock()
    info.dead = self:_expire(doc, now)
    for _, e in ipairs(doc.entries) do
      if hooks[e.hook] then
        if e.claim == self.token or not claim_holds(e, now) then
          e.claim, e.claimed_at = self.token, now
          claimed[#claimed + 1] = { hook = e.hook, event = e.event, attempts = e.attempts }
        end
      else
        info.unknown[e.hook] = (info.unknown[e.hook] or 0) + 1
      end
    end
    if #claimed > 0 or info.dead > 0 then
      local ok, err = save(self.path, doc)
      if not ok then error(err, 0) end
    end
  end)
  return claimed, info
end

--- Settles a claimed entry under the lock: delivered, it leaves the file;
--- otherwise its attempts and last error are updated and the claim dropped.
---@param entry table a claimed entry (from claim)
---@param res table {status = "delivered"|..., attempts=, error=}
---@return boolean|nil ok
---@return table|nil err
function Spool:settle(entry, res)
  local ok, err = pcall(self.locked, self, function()
    local doc = load(self.path)
    local k = key(entry.hook, entry.event.id)
    for i, e in ipairs(doc.entries) do
      if key(e.hook, e.event.id) == k and e.claim == self.token then
        if res.status == "delivered" then
          table.remove(doc.entries, i)
        else
          e.attempts = (e.attempts or 0) + (res.attempts or 0)
          e.last_error = res.error or e.last_error
          e.claim, e.claimed_at = nil, nil
        end
        local saved, serr = save(self.path, doc)
        if not saved then error(serr, 0) end
        return
      end
    end
  end)
  if ok then return true end
  if not errors.is(err) then err = io_error(self.path, tostring(err)) end
  return nil, err
end

--- The entries the file holds now (read without the lock; for inspection).
---@return table entries
function Spool:entries()
  return load(self.path).entries
end

M._set_clock = function(fn) clock = fn or os.time end -- tests

return M
