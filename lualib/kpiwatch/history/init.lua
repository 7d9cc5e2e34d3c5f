-- kpiwatch.history: every completed execution kept in one SQLite file, for
-- trends, median baselines and significance tests.
--
-- The store is kpiwatch._sqlite (prepared statements only). One file serves
-- several processes at once (parallel CI jobs, a watch): WAL journal, a busy
-- timeout, and each write is one short IMMEDIATE transaction. The schema is
-- versioned with PRAGMA user_version; MIGRATIONS[n] takes a file from
-- version n-1 to n, inside the same transaction that bumps the version, so
-- two processes opening a new file at once migrate it once.
--
-- What is kept: an execution's id, run test (when known), status, start
-- time, fetch time and its KPIs body as the server sent it, plus every
-- numeric KPI as a row of `metrics` (so reading one metric of 10,000
-- executions never decodes a body) and, when fetched, the per-call scores.
-- Only completed executions are recorded: the KPIs of a running one are
-- partial (FIELD-NOTES) and completed KPIs never change, so each execution
-- is stored once; a later record of the same execution only fills what was
-- missing (its run test, its calls).
--
-- Where: --history FILE, else $KPIWATCH_HISTORY, else
-- $XDG_DATA_HOME/kpiwatch/history.db (~/.local/share when unset); off with
-- --no-history (or KPIWATCH_HISTORY=off). The file and its WAL are mode 0600.

---@brief
--- The history: every completed execution whose KPIs kpiwatch fetched, kept
--- in one SQLite file (see doc/history.md). `history.series(run_test,
--- metric)` prints as a sparkline; `history.executions(run_test)` gives KPI
--- objects; `history.open(path)` a store of your own.

local sqlite = require "kpiwatch._sqlite"
local json = require "kpiwatch.json"
local model = require "kpiwatch.model"

local M = {}

local concat, sort, floor = table.concat, table.sort, math.floor
local type, tostring, setmetatable = type, tostring, setmetatable

-- How long a writer waits for another process's transaction (ms).
M.BUSY_TIMEOUT_MS = 30000

-- Derived metrics: stored beside the server's numbers so series and
-- baselines treat them alike.
M.DERIVED = {
  -- failed calls over all calls: the rate the two-proportion test judges
  failure_rate = function(k)
    local total, failed = k.total_calls, k.failed_calls
    if type(total) == "number" and total > 0 and type(failed) == "number" then return failed / total end
    return nil
  end,
}

---A KPI object that also reads the derived metrics (failure_rate), so requirement checks can name them.
---@param k table KPI object
---@return table KPI object (a shallow copy of the body plus the derived values)
function M.with_derived(k)
  if not model.is(k) then k = model.new(k) end
  local body = {}
  for key, v in pairs(k:raw()) do body[key] = v end
  for name, f in pairs(M.DERIVED) do
    if body[name] == nil then body[name] = f(k) end
  end
  return model.new(body, k.execution_id)
end

local MIGRATIONS = {
  [1] = {
    -- `at` orders an execution in time: its start time when the server gave
    -- one, else the fetch time (both ISO 8601 UTC, so text order is time
    -- order). `n` is the row's integer key: the other tables refer to it
    -- (small keys; rows recorded together stay together).
    [[CREATE TABLE executions(
        n INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        run_test TEXT,
        status TEXT NOT NULL,
        start_time TEXT,
        fetched_at TEXT NOT NULL,
        at TEXT NOT NULL)]],
    [[CREATE INDEX executions_by_run_test ON executions(run_test, at, id, n)]],
    -- the KPIs body apart: a series read never reads pages of bodies
    [[CREATE TABLE bodies(
        n INTEGER PRIMARY KEY REFERENCES executions(n),
        kpis TEXT NOT NULL)]],
    -- by (execution, name): recording writes one or two pages (keyed by
    -- name first, it wrote one page per metric, 40 per record); a series
    -- read is one lookup per execution
    [[CREATE TABLE metrics(
        n INTEGER NOT NULL REFERENCES executions(n),
        name TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY(n, name)) WITHOUT ROWID]],
    [[CREATE TABLE calls(
        n INTEGER NOT NULL REFERENCES executions(n),
        call_id TEXT NOT NULL,
        status TEXT,
        overall_score REAL,
        PRIMARY KEY(n, call_id)) WITHOUT ROWID]],
  },
  [2] = {
    -- the exact value of a metric the server rounds, from the stored calls
    -- (avg_score: the mean of the per-call overall_score), kept per
    -- execution so a series read never averages every call again (30 calls
    -- each over 10,000 executions tripled a read); `calls` is how many
    -- scored calls it is the mean of
    [[CREATE TABLE exact(
        n INTEGER NOT NULL REFERENCES executions(n),
        name TEXT NOT NULL,
        value REAL NOT NULL,
        calls INTEGER NOT NULL,
        PRIMARY KEY(n, name)) WITHOUT ROWID]],
    [[INSERT INTO exact(n, name, value, calls)
        SELECT n, 'avg_score', avg(overall_score), count(overall_score) FROM calls
        WHERE overall_score IS NOT NULL GROUP BY n]],
  },
}
-- PRAGMA user_version takes no bound parameter: one fixed text per version.
local SET_VERSION = { [1] = "PRAGMA user_version = 1", [2] = "PRAGMA user_version = 2" }
M.SCHEMA_VERSION = #MIGRATIONS

-- ---- where ----------------------------------------------------------------

-- The sandbox has no place of its own: its executions go to the default
-- file like the API's, as their ids never meet the account's (its run tests'
-- ids are its own, and runs it starts get random UUIDs).
local config = { path = nil, disabled = false }

---Sets where history goes for this process (the CLI's --history and --no-history).
---@param t {path?: string|false, disabled?: boolean}
function M.configure(t)
  if t.path ~= nil then config.path = t.path or nil end
  if t.disabled ~= nil then config.disabled = t.disabled end
  if M._default then
    M._default:close()
    M._default = nil
  end
end

---The history file this process uses, or nil when history is off.
---@return string|nil path
function M.path()
  if config.disabled then return nil end
  if config.path then return config.path end
  local env = os.getenv("KPIWATCH_HISTORY")
  if env == "off" then return nil end
  if env and env ~= "" then return env end
  local base = os.getenv("XDG_DATA_HOME")
  if not base or base == "" or base:sub(1, 1) ~= "/" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    base = home .. "/.local/share"
  end
  return base .. "/kpiwatch/history.db"
end

-- ---- the store ------------------------------------------------------------

---@class kpiwatch.history.Store
---@field path string the file
local Store = {}
Store.__index = Store
Store.__name = "kpiwatch.history"

-- check(what, ok, message, code): ok, or raise "history: what: message (code)".
local function check(what, ok, msg, code)
  if ok == nil then error(("history: %s: %s (%s)"):format(what, tostring(msg), tostring(code)), 0) end
  return ok
end

-- Run fn(db) in one IMMEDIATE transaction; rolled back on error.
local function transaction(self, fn)
  local db = self.db
  local ok, msg, code = db:exec("BEGIN IMMEDIATE")
  if not ok then check("begin", nil, msg, code) end
  local okf, res = pcall(fn, db)
  if not okf then
    db:exec("ROLLBACK")
    error(res, 0)
  end
  local okc, cmsg, ccode = db:exec("COMMIT")
  if not okc then
    db:exec("ROLLBACK")
    check("commit", nil, cmsg, ccode)
  end
  return res
end

local function user_version(db)
  local st <close> = check("user_version", db:prepare("PRAGMA user_version"))
  check("user_version", st:step())
  return (st:values())
end

local function migrate(self)
  local v = user_version(self.db)
  if v >= M.SCHEMA_VERSION then return end
  -- WAL is a property of the file: set once, when the schema is created
  -- (outside a transaction, as SQLite requires)
  if v == 0 then check(self.path, self.db:exec("PRAGMA journal_mode=WAL")) end
  transaction(self, function(db)
    -- another process may have migrated while this one waited for the lock
    for to = user_version(db) + 1, M.SCHEMA_VERSION do
      for _, sql in ipairs(MIGRATIONS[to]) do check("migration " .. to, db:exec(sql)) end
      check("migration " .. to, db:exec(SET_VERSION[to]))
    end
  end)
end

local function mkdirs_for(path)
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    local fs = require "kpiwatch._fs"
    local ok, _, msg = fs.mkdirs(dir, 448) -- 0700
    if not ok then return nil, msg end
  end
  return true
end

-- sqlite.open, creating the file (and its folder) only when it is missing:
-- a gate records into a file that exists nearly always, and the folder
-- checks and the creating open cost system calls on every record.
local function open_db(path, readonly)
  if readonly then return sqlite.open(path, "ro") end
  local db, msg, code = sqlite.open(path, "rw")
  if db or code ~= "cantopen" then return db, msg end
  local ok, err = mkdirs_for(path)
  if not ok then return nil, err end
  return sqlite.open(path, "rwc", 384) -- 0600
end

---Opens (creating it 0600 when missing) a history file and brings its schema up to date.
---@param path string
---@param opts? {readonly?: boolean}
---@return table|nil store, string|nil message
function M.open(path, opts)
  opts = opts or {}
  local db, msg = open_db(path, opts.readonly)
  if not db then return nil, "history: " .. msg end
  db:busy_timeout(M.BUSY_TIMEOUT_MS)
  local self = setmetatable({ db = db, path = path, stmts = {} }, Store)
  local ok, err = pcall(function()
    -- NORMAL is durable in WAL mode up to the last checkpoint-free commit
    -- on power loss; a lost last record is re-imported, never corrupt.
    check(path, db:exec("PRAGMA synchronous=NORMAL"))
    if not opts.readonly then
      -- Each gate opens the file, records one execution and closes it. The
      -- last connection to close checkpoints, so the file alone always holds
      -- every record (a CI cache of history.db loses nothing). Persistent
      -- WAL keeps the -wal and -shm files, the WAL emptied to 0 bytes
      -- (journal_size_limit=0), rather than deleting and creating both on
      -- every record: creating, chowning and unlinking them was a tenth of
      -- a record's CPU. (Not checkpointing on close was slower still: the
      -- first connection of each process rebuilds the WAL index by reading
      -- the whole WAL, and the file alone would lack the newest records.)
      db:persist_wal(true)
      check(path, db:exec("PRAGMA journal_size_limit=0"))
      migrate(self)
    elseif user_version(db) ~= M.SCHEMA_VERSION then
      error("history: " .. path .. " has schema version " .. user_version(db) .. ", expected " ..
        M.SCHEMA_VERSION, 0)
    end
  end)
  if not ok then
    db:close()
    return nil, tostring(err)
  end
  return self
end

---The process's history store (opened on first use), or nil and why when history is off or unusable.
---@return table|nil store, string|nil message
function M.default()
  if M._default then return M._default end
  local path = M.path()
  if not path then return nil, "history is off" end
  local store, err = M.open(path)
  if not store then return nil, err end
  M._default = store
  return store
end

function Store:stmt(sql)
  local st = self.stmts[sql]
  if not st then
    st = check("prepare", self.db:prepare(sql))
    self.stmts[sql] = st
  end
  return st
end

-- Run a prepared statement with params to completion; returns its first row.
function Store:run(sql, ...)
  local st = self:stmt(sql)
  check("bind", st:bind(...))
  local row, msg, code = st:step()
  if row == nil then check("write", nil, msg, code) end
  local a, b, c, d = nil, nil, nil, nil
  if row then a, b, c, d = st:values() end
  st:reset()
  return a, b, c, d
end

-- rows of a prepared statement as a list of arrays
function Store:all(sql, ...)
  local st = self:stmt(sql)
  check("bind", st:bind(...))
  local out = {}
  local ok, err = pcall(function()
    for a, b, c, d, e in st:rows() do out[#out + 1] = { a, b, c, d, e } end
  end)
  st:reset()
  if not ok then error("history: " .. tostring(err), 0) end
  return out
end

---Closes the store (its prepared statements, then the file).
function Store:close()
  for _, st in pairs(self.stmts) do st:finalize() end
  self.stmts = {}
  self.db:close()
end
Store.__close = Store.close

local function iso_now()
  return require("kpiwatch.time").rfc3339()
end

-- `at` of a start time: in UTC, so that text order stays time order when the
-- server writes an offset ("+05:30") or fractions; as given if unreadable.
local function at_of(start)
  return require("kpiwatch.time").to_utc(start) or start
end

-- The numeric metrics of a KPI object: documented numeric fields and eval
-- averages by their snake_case key, plus the derived ones.
local function metrics_of(k)
  local out = {}
  for name, v in pairs(model.normalize(k)) do
    if type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge then out[name] = v end
  end
  for name, f in pairs(M.DERIVED) do
    local v = f(k)
    if v then out[name] = v end
  end
  return out
end
M.metrics_of = metrics_of

local function lower(s)
  return type(s) == "string" and s:lower() or nil
end

---Records one execution's KPIs if it is completed and not yet stored (fills in a missing run test, start time or calls otherwise).
---@param k table KPI object (kpiwatch.model) or decoded body
---@param info {execution_id?: string, run_test?: string, status: string, start_time?: string, calls?: table[]}
---@return boolean recorded true when the execution was new
function Store:record(k, info)
  info = info or {}
  if not model.is(k) then k = model.new(k, info.execution_id) end
  local id = info.execution_id or k.execution_id
  if type(id) ~= "string" or id == "" then error("history.record: no execution id", 2) end
  if lower(info.status) ~= "completed" then return false end
  local start = type(info.start_time) == "string" and info.start_time or nil
  return transaction(self, function()
    -- the insert first: a new execution (a gate's usual case) costs no lookup
    local now = iso_now()
    self:run([[INSERT INTO executions(id, run_test, status, start_time, fetched_at, at) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT(id) DO NOTHING]], id, info.run_test, "completed", start, now, start and at_of(start) or now)
    local new = self.db:changes() == 1
    local n
    if new then
      n = self.db:last_insert_rowid()
      self:run("INSERT INTO bodies(n, kpis) VALUES (?, ?)", n, json.encode(k:raw()))
      for name, v in pairs(metrics_of(k)) do
        self:run("INSERT INTO metrics(n, name, value) VALUES (?, ?, ?)", n, name, v)
      end
    else
      local run_test, known_start
      n, run_test, known_start = self:run("SELECT n, run_test, start_time FROM executions WHERE id = ?", id)
      if run_test == nil and info.run_test then
        self:run("UPDATE executions SET run_test = ? WHERE n = ?", info.run_test, n)
      end
      -- recorded from a status read that had no start time (the detail
      -- endpoint): the list's start time puts it in its place
      if known_start == nil and start then
        self:run("UPDATE executions SET start_time = ?, at = ? WHERE n = ?", start, at_of(start), n)
      end
    end
    if info.calls then
      for _, c in ipairs(info.calls) do
        local score = tonumber(c.overall_score)
        self:run("INSERT OR IGNORE INTO calls(n, call_id, status, overall_score) VALUES (?, ?, ?, ?)",
          n, tostring(c.id), lower(c.status), score)
      end
      self:run([[INSERT OR REPLACE INTO exact(n, name, value, calls)
          SELECT n, 'avg_score', avg(overall_score), count(overall_score) FROM calls
          WHERE n = ? AND overall_score IS NOT NULL GROUP BY n]], n)
    end
    return new
  end)
end

---True when the execution is stored.
---@param id string
---@return boolean
function Store:has(id)
  return self:run("SELECT 1 FROM executions WHERE id = ?", id) ~= nil
end

-- The stored name of a metric as users write it: "avg_score",
-- "task_completion", "eval:task_completion" or "evals.task_completion"
-- (an eval's avg_ key),
-- camelCase documented names.
local function metric_key(name)
  local f = model.FIELDS[name]
  if f then return f.snake end
  if M.DERIVED[name] then return name end
  local ev = name:match("^evals?[%.:](.+)$")
  if ev then return "avg_" .. ev end
  if name:sub(1, 4) ~= "avg_" and not model.FIELDS["avg_" .. name] then return "avg_" .. name, name end
  return name
end
M.metric_key = metric_key

---How a stored metric key is shown: eval averages as eval:NAME (as --require writes them), others as they are.
---@param key string
---@return string
function M.display_name(key)
  if key:sub(1, 4) == "avg_" and not model.FIELDS[key] then return "eval:" .. key:sub(5) end
  return key
end

-- ---- series ----------------------------------------------------------------

local SPARKS = { "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" }

---A sparkline of numbers (nil values as spaces), scaled from their min to max.
---@param values (number|nil)[]
---@param n? integer how many values (default #values)
---@return string
function M.sparkline(values, n)
  n = n or #values
  local lo, hi
  for i = 1, n do
    local v = values[i]
    if v then
      lo = (lo == nil or v < lo) and v or lo
      hi = (hi == nil or v > hi) and v or hi
    end
  end
  local out = {}
  for i = 1, n do
    local v = values[i]
    if v == nil then
      out[i] = " "
    elseif hi == lo then
      out[i] = SPARKS[4]
    else
      out[i] = SPARKS[floor((v - lo) / (hi - lo) * 7 + 0.5) + 1]
    end
  end
  return concat(out)
end

---@class kpiwatch.history.Series
---@field metric string as asked
---@field key string the stored name
---@field values number[] oldest first; for avg_score the exact mean of the stored per-call scores where there are some
---@field ids string[] execution ids, parallel to values
---@field times string[] start (or fetch) times, ISO 8601 UTC
---@field exact_n? integer avg_score only: how many points are exact (see Series:source)
---@field exact? boolean[] avg_score, when some point is exact: true where the value is the exact mean of per-call scores
---@field server? number[] avg_score, when some point is exact: the server's (rounded) value of each point
---@field calls? (integer|false)[] avg_score, when some point is exact: how many scored calls an exact point is the mean of
---@field n integer
local Series = {}
Series.__index = Series
Series.__name = "kpiwatch.history.series"
Series.__len = function(s) return s.n end
Series.__tostring = function(s)
  if s.n == 0 then return s.metric .. " (no data)" end
  local last = s.values[s.n]
  return ("%s %s %s (%d executions)"):format(s.metric, M.sparkline(s.values, s.n),
    model.format_value(last), s.n)
end
M.Series = Series

---A one-line note on where a series' values come from when the server rounds the metric (nil otherwise).
---@param s table a series
---@return string|nil note
function M.precision_note(s)
  if s.exact_n == nil or s.n == 0 then return nil end
  local n = s.exact_n or 0
  local step = require("kpiwatch.significance").PRECISION[s.key]
  local rounded = step and ("rounded to " .. model.format_value(step)) or "rounded"
  if n == s.n then
    return ("exact means of the per-call scores (all %d executions)"):format(s.n)
  elseif n == 0 then
    return ("the server's values, %s (no per-call scores stored; kpiwatch history import --calls adds them)")
      :format(rounded)
  end
  return ("exact means of the per-call scores for %d of %d executions, the server's values (%s) for the rest")
    :format(n, s.n, rounded)
end

---Where point i comes from, for a metric the server rounds (avg_score): "calls" (the exact mean of the stored
---per-call scores), or "server" (the server's rounded value). nil for other metrics.
---@param i integer
---@return string|nil source, number|nil server the server's value, integer|nil calls scored calls of an exact mean
function Series:source(i)
  if self.exact_n == nil then return nil end
  if self.exact and self.exact[i] then return "calls", self.server[i], self.calls[i] end
  return "server", self.values[i], nil
end

---The median of the series' values (nil when empty).
---@return number|nil
function Series:median()
  return M.median(self.values, self.n)
end

---The median of the first n values of a list (nil when there are none).
---@param values number[]
---@param n? integer
---@return number|nil
function M.median(values, n)
  n = n or #values
  if n == 0 then return nil end
  local t = table.move(values, 1, n, 1, {})
  sort(t)
  if n % 2 == 1 then return t[(n + 1) // 2] end
  return (t[n // 2] + t[n // 2 + 1]) / 2
end

local SERIES_SQL = [[SELECT e.id, e.at, m.value FROM executions e
    JOIN metrics m ON m.n = e.n AND m.name = ?
    WHERE e.run_test = ? ORDER BY e.at DESC, e.id DESC LIMIT ?]]

-- Metrics the server rounds that stored per-call scores give exactly: the
-- server sends avg_score as ROUND(AVG(overall_score), 1) (FIELD-NOTES), so
-- where an execution's calls were recorded its point is their exact mean
-- (the table `exact`: the mean --significance judges on, of the scored
-- calls); elsewhere the server's value stands.
local EXACT = {
  avg_score = [[SELECT e.id, e.at, m.value, x.value, x.calls FROM executions e
    JOIN metrics m ON m.n = e.n AND m.name = ?
    LEFT JOIN exact x ON x.n = e.n AND x.name = m.name
    WHERE e.run_test = ? ORDER BY e.at DESC, e.id DESC LIMIT ?]],
}

---One metric of a run test's completed executions, oldest first. avg_score points are the exact mean of the
---execution's stored per-call scores where there are some (the server rounds it to 0.1), marked in `exact`.
---@param run_test string
---@param metric string e.g. "avg_score", "failure_rate", "task_completion"
---@param opts? {last?: integer, before?: string} last N only; before: executions started before this one's
---@return table series {metric=, values=, ids=, times=, n=} printing as a sparkline
function Store:series(run_test, metric, opts)
  opts = opts or {}
  local key, alt = metric_key(metric)
  local limit = opts.last or -1
  local s = setmetatable({ metric = metric, key = key, run_test = run_test, values = {}, ids = {}, times = {}, n = 0 },
    Series)
  -- straight into the series' arrays, newest first, then reversed: no
  -- table per row (a 10,000-execution read spent a third of its time there)
  local function fill(name)
    local exact_sql = EXACT[name]
    local ids, times, values = s.ids, s.times, s.values
    local n, n_exact = 0, 0
    -- no exact value stored at all (no calls ever fetched): the plain read,
    -- without a lookup per point (a sixth of a 10,000-point read)
    local joined = exact_sql and self:run("SELECT 1 FROM exact LIMIT 1") ~= nil
    -- where each value comes from, for a metric the server rounds
    local exact = joined and {} or nil
    local server = joined and {} or nil
    local calls = joined and {} or nil
    s.exact, s.server, s.calls = exact, server, calls
    local st = self:stmt(joined and exact_sql or SERIES_SQL)
    check("bind", st:bind(name, run_test, limit))
    local ok, err = pcall(function()
      if joined then
        for id, at, v, mean, scored in st:rows() do
          n = n + 1
          ids[n], times[n], server[n] = id, at, v
          if mean ~= nil then
            values[n], exact[n], calls[n] = mean, true, scored
            n_exact = n_exact + 1
          else
            values[n], exact[n], calls[n] = v, false, false
          end
        end
      else
        for id, at, v in st:rows() do
          n = n + 1
          ids[n], times[n], values[n] = id, at, v
        end
      end
    end)
    st:reset()
    if not ok then error("history: " .. tostring(err), 0) end
    for i = 1, n // 2 do
      local j = n - i + 1
      ids[i], ids[j] = ids[j], ids[i]
      times[i], times[j] = times[j], times[i]
      values[i], values[j] = values[j], values[i]
      if joined then
        exact[i], exact[j], server[i], server[j] = exact[j], exact[i], server[j], server[i]
        calls[i], calls[j] = calls[j], calls[i]
      end
    end
    s.n = n
    if exact_sql then s.exact_n = n_exact end
  end
  fill(key)
  if s.n == 0 and alt then
    s.key = alt
    fill(alt)
  end
  return s
end

---The stored executions of a run test as KPI objects, oldest first.
---@param run_test string
---@param opts? {last?: integer}
---@return table[] kpis each with .execution_id, plus fields start_time and fetched_at in a parallel `meta` list
function Store:executions(run_test, opts)
  opts = opts or {}
  local rows = self:all([[SELECT e.id, b.kpis, e.start_time, e.fetched_at FROM executions e
      JOIN bodies b ON b.n = e.n WHERE e.run_test = ?
      ORDER BY e.at DESC, e.id DESC LIMIT ?]], run_test, opts.last or -1)
  local out, meta = {}, {}
  local n = #rows
  for i, r in ipairs(rows) do
    out[n - i + 1] = model.new(json.decode(r[2]), r[1])
    meta[n - i + 1] = { execution_id = r[1], start_time = r[3], fetched_at = r[4] }
  end
  return out, meta
end

---One stored execution as a KPI object (nil when it is not stored).
---@param id string
---@return table|nil
function Store:kpi(id)
  local body = self:run("SELECT b.kpis FROM bodies b JOIN executions e ON e.n = b.n WHERE e.id = ?", id)
  if not body then return nil end
  return model.new(json.decode(body), id)
end

---The stored per-call overall scores of an execution (nil when none were recorded).
---@param id string
---@return number[]|nil scores
function Store:calls(id)
  local rows = self:all([[SELECT c.overall_score FROM calls c JOIN executions e ON e.n = c.n
      WHERE e.id = ? AND c.overall_score IS NOT NULL]], id)
  if #rows == 0 then return nil end
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[1] end
  return out
end

---The median of a metric over a run test's last n stored executions (optionally excluding one), of the server's values.
---@param run_test string
---@param metric string
---@param n integer
---@param exclude? string an execution id left out (the one being judged)
---@return number|nil median, table series the values it was taken from
function Store:median(run_test, metric, n, exclude)
  local s = self:series(run_test, metric, { last = n + (exclude and 1 or 0) })
  -- the median is held against the judged execution's value as the server
  -- sent it, so it is taken of the server's values too: an exact mean beside
  -- a rounded one would show a move of up to 0.05 where there is none
  local values = s.server or s.values
  local keep = setmetatable({ metric = s.metric, key = s.key, run_test = run_test, values = {}, ids = {}, times = {},
    n = 0 }, Series)
  for i = 1, s.n do
    if s.ids[i] ~= exclude then
      keep.n = keep.n + 1
      keep.values[keep.n], keep.ids[keep.n], keep.times[keep.n] = values[i], s.ids[i], s.times[i]
    end
  end
  -- at most n, the newest
  while keep.n > n do
    table.remove(keep.values, 1)
    table.remove(keep.ids, 1)
    table.remove(keep.times, 1)
    keep.n = keep.n - 1
  end
  return keep:median(), keep
end

---Metric names stored for a run test, sorted.
---@param run_test string
---@return string[]
function Store:metrics(run_test)
  local rows = self:all([[SELECT DISTINCT m.name FROM metrics m JOIN executions e ON e.n = m.n
      WHERE e.run_test = ? ORDER BY m.name]], run_test)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[1] end
  return out
end

---How many executions are stored (for one run test, or all).
---@param run_test? string
---@return integer
function Store:count(run_test)
  if run_test then return (self:run("SELECT count(*) FROM executions WHERE run_test = ?", run_test)) end
  return (self:run("SELECT count(*) FROM executions"))
end

-- ---- module-level shortcuts on the default store ---------------------------

local function default_or_error()
  local s, err = M.default()
  if not s then error(err, 3) end
  return s
end

---Records into the process's history (see Store:record); returns false, why when history is off.
---@param k table KPI object
---@param info table see Store:record
---@return boolean|nil recorded, string|nil message
function M.record(k, info)
  local s, err = M.default()
  if not s then return false, err end
  return s:record(k, info)
end

---A metric's series from the process's history.
---@param run_test string
---@param metric string
---@param opts? {last?: integer}
---@return table series
function M.series(run_test, metric, opts)
  return default_or_error():series(run_test, metric, opts)
end

---The stored executions of a run test (KPI objects, oldest first) from the process's history.
---@param run_test string
---@param opts? {last?: integer}
---@return table[]
function M.executions(run_test, opts)
  return default_or_error():executions(run_test, opts)
end

---Parses a baseline spec "median:N" into N (nil, message when it is not one).
---@param spec string
---@return integer|nil n, string|nil message
function M.parse_baseline(spec)
  local n = type(spec) == "string" and spec:match("^median:(%d+)$")
  n = n and tonumber(n)
  if not n or n < 1 or n > 10000 then
    return nil, "baseline must be 'median:N' with N from 1 to 10000, got '" .. tostring(spec) .. "'"
  end
  return math.tointeger(n)
end

return M
