-- Specs for kpiwatch.history: the SQLite store of completed executions.
-- Run: busted --lua=build/kpiwatch spec/lua/history_spec.lua

local history = require "kpiwatch.history"
local sqlite = require "kpiwatch._sqlite"
local fs = require "kpiwatch._fs"
local json = require "kpiwatch.json"
local model = require "kpiwatch.model"
local util = require "spec.lua.helpers.util"
local KPIWATCH = os.getenv("KPIWATCH") or "build/kpiwatch"

local function uuid(i)
  return ("00000000-0000-4000-8000-%012d"):format(i)
end

local function kpi(score, extra)
  local body = { total_calls = 10, failed_calls = 2, avg_score = score, agent_type = "voice",
    avg_task_completion = 80.5, tone = { a = 1, choices = { "a" } } }
  for k, v in pairs(extra or {}) do body[k] = v end
  return model.new(body)
end

local function start(i)
  return ("2026-01-%02dT10:00:00Z"):format(i)
end

describe("kpiwatch.history", function()
  local dir, store
  before_each(function()
    dir = util.tmpdir()
    store = assert(history.open(dir .. "/sub/h.db"))
  end)
  after_each(function()
    store:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("creates its folder and a 0600 file in WAL mode at the current schema version", function()
    assert.equal(tonumber("600", 8), fs.stat(dir .. "/sub/h.db").mode & tonumber("777", 8))
    local db = assert(sqlite.open(dir .. "/sub/h.db", "ro"))
    local st = assert(db:prepare("PRAGMA journal_mode"))
    assert.is_true(st:step())
    assert.equal("wal", st:values())
    st:finalize()
    st = assert(db:prepare("PRAGMA user_version"))
    assert.is_true(st:step())
    assert.equal(history.SCHEMA_VERSION, st:values())
    st:finalize()
    db:close()
  end)

  it("records a completed execution once, with its body, metrics and calls", function()
    local k = kpi(0.8)
    assert.is_true(store:record(k, { execution_id = uuid(1), run_test = "rt", status = "Completed",
      start_time = start(1), calls = { { id = "c1", status = "completed", overall_score = 0.75 },
        { id = "c2", status = "completed", overall_score = 0.9 } } }))
    assert.is_false(store:record(kpi(0.1), { execution_id = uuid(1), run_test = "rt", status = "completed" }))
    assert.equal(1, store:count("rt"))
    local ks = store:executions("rt")
    assert.equal(1, #ks)
    assert.equal(uuid(1), ks[1].execution_id)
    assert.equal(0.8, ks[1].avg_score)
    assert.same({ a = 1, choices = { "a" } }, ks[1].tone)
    local calls = store:calls(uuid(1))
    table.sort(calls)
    assert.same({ 0.75, 0.9 }, calls)
    assert.equal(0.2, store:series("rt", "failure_rate").values[1])
    assert.equal(80.5, store:series("rt", "task_completion").values[1])
    assert.equal(80.5, store:series("rt", "evals.task_completion").values[1])
  end)

  it("never records an execution that is not completed", function()
    for _, status in ipairs({ "running", "evaluating", "pending", "failed", "cancelled", nil }) do
      assert.is_false(store:record(kpi(0.5), { execution_id = uuid(2), run_test = "rt", status = status }))
    end
    assert.equal(0, store:count())
  end)

  it("fills in a missing run test and calls on a later record, never the KPIs", function()
    assert.is_true(store:record(kpi(0.7), { execution_id = uuid(3), status = "completed" }))
    assert.equal(0, store:count("rt"))
    assert.is_false(store:record(kpi(0.2), { execution_id = uuid(3), run_test = "rt", status = "completed",
      calls = { { id = "x", overall_score = 1 } } }))
    assert.equal(1, store:count("rt"))
    assert.equal(0.7, store:executions("rt")[1].avg_score)
    assert.same({ 1 }, store:calls(uuid(3)))
  end)

  it("gives series oldest first, the last N, medians and a sparkline", function()
    local scores = { 0.5, 0.9, 0.7, 0.6, 0.8 }
    for i, s in ipairs(scores) do
      store:record(kpi(s), { execution_id = uuid(10 + i), run_test = "rt", status = "completed",
        start_time = start(i) })
    end
    local s = store:series("rt", "avg_score")
    assert.same(scores, s.values)
    assert.equal(uuid(11), s.ids[1])
    assert.equal(start(5), s.times[5])
    assert.equal(5, #s)
    assert.equal(0.7, s:median())
    assert.same({ 0.7, 0.6, 0.8 }, store:series("rt", "avg_score", { last = 3 }).values)
    assert.equal("▁█▄▃▆", history.sparkline(s.values))
    assert.matches("avg_score ▁█▄▃▆ 0.8 %(5 executions%)", tostring(s))
    -- the median of the 3 before the newest, leaving the judged one out
    local med, base = store:median("rt", "avg_score", 3, uuid(15))
    assert.equal(0.7, med)
    assert.same({ uuid(12), uuid(13), uuid(14) }, base.ids)
    assert.equal(0.75, history.median({ 0.9, 0.6, 0.7, 0.8 }))
    assert.is_nil(history.median({}))
    assert.equal("avg_score (no data)", tostring(store:series("other", "avg_score")))
  end)

  it("orders executions by their start in time, whatever offset or fraction the server wrote", function()
    -- as text, "2026-01-05T12:00:00+05:30" (06:30Z) sorted after "2026-01-05T10:00:00Z"
    local starts = { "2026-01-05T10:00:00Z", "2026-01-05T12:00:00+05:30", "2026-01-05T09:00:00.250000Z" }
    for i, st in ipairs(starts) do
      store:record(kpi(i / 10), { execution_id = uuid(40 + i), run_test = "tz", status = "completed",
        start_time = st })
    end
    local s = store:series("tz", "avg_score")
    assert.same({ uuid(42), uuid(43), uuid(41) }, s.ids)
    assert.same({ "2026-01-05T06:30:00Z", "2026-01-05T09:00:00Z", "2026-01-05T10:00:00Z" }, s.times)
  end)

  it("lists stored metric names", function()
    store:record(kpi(0.5), { execution_id = uuid(20), run_test = "rt", status = "completed" })
    local names = store:metrics("rt")
    assert.truthy(require("kpiwatch.requirement") and #names >= 5)
    local set = {}
    for _, n in ipairs(names) do set[n] = true end
    assert.truthy(set.avg_score and set.failure_rate and set.avg_task_completion and set.total_calls)
    assert.is_nil(set.tone)
  end)

  it("resolves its path from --history, KPIWATCH_HISTORY and XDG_DATA_HOME, and --no-history", function()
    history.configure({ path = "/x/h.db", disabled = false })
    assert.equal("/x/h.db", history.path())
    history.configure({ disabled = true })
    assert.is_nil(history.path())
    assert.same({ false, "history is off" },
      { history.record(kpi(1), { execution_id = uuid(1), status = "completed" }) })
    history.configure({ disabled = false })
    history.configure({ path = false })
    local out = util.tmpdir() .. "/out"
    local PRINT = "-e 'print(require(\"kpiwatch.history\").path())'"
    local cmd = ("env -u KPIWATCH_HISTORY XDG_DATA_HOME=/data %q " .. PRINT .. " > %q"):format(
      KPIWATCH, out)
    assert(os.execute(cmd))
    assert.equal("/data/kpiwatch/history.db\n", assert(io.open(out)):read("a"))
    cmd = ("env -u KPIWATCH_HISTORY -u XDG_DATA_HOME HOME=/home/u %q " .. PRINT .. " > %q"):format(
      KPIWATCH, out)
    assert(os.execute(cmd))
    assert.equal("/home/u/.local/share/kpiwatch/history.db\n", assert(io.open(out)):read("a"))
    cmd = ("KPIWATCH_HISTORY=/e/h.db %q -e 'print(require(\"kpiwatch.history\").path())' > %q"):format(
      KPIWATCH, out)
    assert(os.execute(cmd))
    assert.equal("/e/h.db\n", assert(io.open(out)):read("a"))
  end)

  it("parses median:N baselines", function()
    assert.equal(5, history.parse_baseline("median:5"))
    for _, bad in ipairs({ "median:0", "median:", "mean:5", "median:x", "median:20000" }) do
      local n, msg = history.parse_baseline(bad)
      assert.is_nil(n)
      assert.matches("median:N", msg)
    end
  end)

  it("loses nothing with 8 processes writing at once", function()
    local path = dir .. "/par.db"
    local script = dir .. "/writer.lua"
    util.write(script, [[
      local h = require "kpiwatch.history"
      local model = require "kpiwatch.model"
      local w = tonumber(arg[2])
      -- odd writers open, record and close each time, as gates do (the
      -- last connection out checkpoints and empties the kept WAL while
      -- others write); even writers keep one connection, as a watch does
      local s = assert(h.open(arg[1]))
      for i = 1, 40 do
        local id = ("00000000-0000-4000-8000-%06d%06d"):format(w, i)
        assert(s:record(model.new({ total_calls = 10, failed_calls = w, avg_score = i / 100 }),
          { execution_id = id, run_test = "par", status = "completed",
            calls = { { id = "a", overall_score = 0.5 }, { id = "b", overall_score = 0.25 } } }) == true)
        if w % 2 == 1 then
          s:close()
          s = assert(h.open(arg[1]))
        end
      end
      s:close()
    ]])
    local cmds = {}
    for w = 1, 8 do
      cmds[#cmds + 1] = ("%q %q %q %d &"):format(KPIWATCH, script, path, w)
    end
    assert(os.execute(table.concat(cmds, " ") .. " wait"))
    -- a failed writer leaves fewer rows: count everything each wrote
    local s = assert(history.open(path))
    assert.equal(320, s:count("par"))
    assert.equal(320, #s:series("par", "avg_score").values)
    local n = s:run("SELECT count(*) FROM calls")
    assert.equal(640, n)
    s:close()
  end)

  it("refuses a file that is not a database with a one-line message", function()
    util.write(dir .. "/junk.db", string.rep("not sqlite ", 200))
    local s, msg = history.open(dir .. "/junk.db")
    assert.is_nil(s)
    assert.matches("^history: .*not a database", msg)
  end)

  it("stores the body as the server sent it", function()
    local body = json.decode('{"avg_score": 0.9, "callsAttempted": 3, "total_calls": 3, "failed_calls": 0}')
    store:record(model.new(body), { execution_id = uuid(30), run_test = "rt", status = "completed" })
    local raw = store:run("SELECT kpis FROM bodies b JOIN executions e ON e.n = b.n WHERE e.id = ?", uuid(30))
    assert.equal(3, json.decode(raw).callsAttempted)
    assert.equal(3, store:series("rt", "calls_attempted").values[1])
  end)

  it("leaves every record in the file itself once closed, keeping an empty WAL", function()
    local path = dir .. "/sub/h.db"
    assert.is_true(store:record(kpi(0.6), { execution_id = uuid(40), run_test = "rt", status = "completed" }))
    store:close()
    -- the last connection out checkpointed: the WAL and its index stay, the WAL empty
    assert.equal(0, fs.stat(path .. "-wal").size)
    assert.equal(tonumber("600", 8), fs.stat(path .. "-wal").mode & tonumber("777", 8))
    assert.equal(tonumber("600", 8), fs.stat(path .. "-shm").mode & tonumber("777", 8))
    -- a copy of the database file alone (a CI cache of history.db) has the record
    local copy = dir .. "/copy.db"
    assert(os.execute(("cp '%s' '%s'"):format(path, copy)))
    local c = assert(history.open(copy, { readonly = true }))
    assert.equal(1, c:count("rt"))
    assert.equal(0.6, c:series("rt", "avg_score").values[1])
    c:close()
    -- and the file reopens for writing where it is, records kept
    store = assert(history.open(path))
    assert.is_false(store:record(kpi(0.1), { execution_id = uuid(40), run_test = "rt", status = "completed" }))
    assert.is_true(store:record(kpi(0.7), { execution_id = uuid(41), run_test = "rt", status = "completed" }))
    assert.same({ 0.6, 0.7 }, store:series("rt", "avg_score").values)
  end)

  it("gives avg_score points as the exact mean of stored per-call scores, marked, the server's value elsewhere",
    function()
      local scored = { { id = "c1", overall_score = 0.81 }, { id = "c2", overall_score = 0.84 },
        { id = "c3", status = "failed" } } -- an unscored call counts for nothing
      store:record(kpi(0.8), { execution_id = uuid(50), run_test = "rt", status = "completed", start_time = start(1),
        calls = scored })
      store:record(kpi(0.8), { execution_id = uuid(51), run_test = "rt", status = "completed", start_time = start(2) })
      store:record(kpi(0.9), { execution_id = uuid(52), run_test = "rt", status = "completed", start_time = start(3) })
      -- calls fetched later (gate --significance, import --calls) make that point exact too
      store:record({}, { execution_id = uuid(52), status = "completed",
        calls = { { id = "d1", overall_score = 0.86 }, { id = "d2", overall_score = 0.87 } } })
      local s = store:series("rt", "avg_score")
      assert.equal(3, s.n)
      assert.near(0.825, s.values[1], 1e-12)
      assert.equal(0.8, s.values[2])
      assert.near(0.865, s.values[3], 1e-12)
      assert.same({ true, false, true }, s.exact)
      assert.same({ 0.8, 0.8, 0.9 }, s.server)
      assert.same({ 2, false, 2 }, s.calls)
      assert.equal(2, s.exact_n)
      assert.matches("exact means of the per%-call scores for 2 of 3 executions.*rounded to 0%.1",
        history.precision_note(s))
      -- newest first then reversed: the last one stays in its place with --last
      local last = store:series("rt", "avg_score", { last = 2 })
      assert.same({ false, true }, last.exact)
      assert.equal(0.9, last.server[2])
      assert.same({ "calls", 0.9, 2 }, { last:source(2) })
      assert.same({ "server", 0.8 }, { last:source(1) })
      -- other metrics have no exact counterpart
      assert.is_nil(store:series("rt", "failure_rate").exact_n)
      assert.is_nil(store:series("rt", "failure_rate"):source(1))
      assert.is_nil(history.precision_note(store:series("rt", "failure_rate")))
      -- a median baseline is held against the server's value of the judged
      -- execution: it is taken of the server's values
      assert.equal(0.8, (store:median("rt", "avg_score", 2, uuid(52))))
    end)

  it("marks every avg_score point as the server's when no per-call scores are stored", function()
    store:record(kpi(0.8), { execution_id = uuid(55), run_test = "rt", status = "completed" })
    local s = store:series("rt", "avg_score")
    assert.equal(0, s.exact_n)
    assert.same({ "server", 0.8 }, { s:source(1) })
    assert.matches("^the server's values, rounded to 0%.1", history.precision_note(s))
  end)

  it("back-fills the exact means of a file written before they were kept (schema 1)", function()
    local path = dir .. "/old.db"
    local s = assert(history.open(path))
    s:record(kpi(0.8), { execution_id = uuid(60), run_test = "rt", status = "completed",
      calls = { { id = "a", overall_score = 0.75 }, { id = "b", overall_score = 0.8 } } })
    -- as schema 1 left it: calls stored, no table of exact values
    assert(s.db:exec("DROP TABLE exact"))
    assert(s.db:exec("PRAGMA user_version = 1"))
    s:close()
    s = assert(history.open(path))
    assert.equal(history.SCHEMA_VERSION, (s:run("PRAGMA user_version")))
    local got = s:series("rt", "avg_score")
    assert.same({ true }, got.exact)
    assert.near(0.775, got.values[1], 1e-12)
    s:close()
  end)
end)
