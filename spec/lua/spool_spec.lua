-- Specs for kpiwatch.spool: the shared spool of undeliverable notifications.
-- Several spool objects on one path stand for several processes (each has
-- its own claim token, and an flock taken twice in one process conflicts as
-- between two: the lock belongs to the open file description).
-- Run: busted --lua=build/kpiwatch spec/lua/spool_spec.lua

local spool = require "kpiwatch.spool"
local fs = require "kpiwatch._fs"
local json = require "kpiwatch.json"
local task = require "kpiwatch.task"
local alert = require "kpiwatch.alert"
local util = require "spec.lua.helpers.util"

local slurp, write = util.read, util.write

local function ev(id) return { id = id, rule = "r", state = "firing" } end

local function ids(entries)
  local out = {}
  for _, e in ipairs(entries) do out[#out + 1] = e.hook .. ":" .. e.event.id end
  table.sort(out)
  return out
end

describe("kpiwatch.spool", function()
  local dir, path
  before_each(function()
    dir = util.tmpdir()
    path = dir .. "/sub/spool.json"
  end)
  after_each(function()
    spool._set_clock()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("merges what two writers add, never overwriting the other's", function()
    local a, b = spool.open(path), spool.open(path)
    assert(a:add("ops", ev("m1"), { attempts = 4, last_error = "down" }))
    assert(b:add("ops", ev("m2")))
    assert(a:add_all({ { hook = "ops", event = ev("m3") }, { hook = "chat", event = ev("m1") } }))
    assert.are.same({ "chat:m1", "ops:m1", "ops:m2", "ops:m3" }, ids(b:entries()))
    assert.are.equal(tonumber("600", 8), fs.stat(path).mode)
    local doc = json.decode(slurp(path))
    assert.are.equal(1, doc.version)
  end)

  it("keeps one entry per hook and event id, adding the attempts", function()
    local a = spool.open(path)
    assert(a:add("ops", ev("m1"), { attempts = 4, last_error = "503" }))
    assert(spool.open(path):add("ops", ev("m1"), { attempts = 1, last_error = "timeout" }))
    local e = a:entries()
    assert.are.equal(1, #e)
    assert.are.equal(5, e[1].attempts)
    assert.are.equal("timeout", e[1].last_error)
  end)

  it("refuses a JSON file that is not a spool, and a newer spool, leaving them as they are", function()
    os.execute("mkdir -p '" .. dir .. "/sub'")
    for _, text in ipairs({ '{"name": "my settings", "entries": {"a": 1}}\n', '[1, 2, 3]\n',
      '{"version": 1, "entries": {"a": 1}}\n', '{"entries": []}\n' }) do
      write(path, text)
      local ok, err = spool.open(path):add("ops", ev("m1"))
      assert.is_nil(ok)
      assert.are.equal("io", err.kind)
      assert.matches("is not a kpiwatch spool", err.message, 1, true)
      assert.are.equal(text, slurp(path))
    end
    local newer = '{"version": 2, "entries": [], "shiny": true}\n'
    write(path, newer)
    local ok, err = spool.open(path):add("ops", ev("m1"))
    assert.is_nil(ok)
    assert.matches("newer kpiwatch (version 2", err.message, 1, true)
    assert.are.equal(newer, slurp(path))
    assert.has_error(function() spool.open(path):claim({ ops = true }) end)
    assert.are.equal(newer, slurp(path))
  end)

  it("lets one replay claim an entry: another skips it until it is settled", function()
    local a, b = spool.open(path), spool.open(path)
    assert(a:add_all({ { hook = "ops", event = ev("m1") }, { hook = "ops", event = ev("m2") },
      { hook = "other", event = ev("m3") } }))
    local got, info = a:claim({ ops = true })
    assert.are.same({ "ops:m1", "ops:m2" }, ids(got))
    assert.are.same({ other = 1 }, info.unknown)
    assert.are.same({}, (b:claim({ ops = true })))
    -- delivered: it leaves the file at once; failed: back to claimable
    assert(a:settle(got[1], { status = "delivered", attempts = 1 }))
    assert(a:settle(got[2], { status = "failed", attempts = 1, error = "503" }))
    assert.are.same({ "ops:m2", "other:m3" }, ids(b:entries()))
    local again = b:claim({ ops = true })
    assert.are.same({ "ops:m2" }, ids(again))
    assert.are.equal(1, again[1].attempts)
  end)

  it("takes over a claim whose process is gone", function()
    local a, b = spool.open(path), spool.open(path)
    assert(a:add("ops", ev("m1")))
    assert.are.equal(1, #a:claim({ ops = true }))
    assert.are.equal(0, #b:claim({ ops = true })) -- this process lives
    -- the claim of a process that no longer exists (pid above pid_max)
    local doc = json.decode(slurp(path))
    doc.entries[1].claim = "99999999-dead-1"
    write(path, json.encode(doc))
    assert.are.equal(1, #b:claim({ ops = true }))
  end)

  it("takes over a claim left by a run that died an hour ago", function()
    local a, b = spool.open(path), spool.open(path)
    assert(a:add("ops", ev("m1")))
    local now = os.time()
    spool._set_clock(function() return now end)
    assert.are.equal(1, #a:claim({ ops = true }))
    assert.are.equal(0, #b:claim({ ops = true }))
    spool._set_clock(function() return now + 3601 end)
    assert.are.equal(1, #b:claim({ ops = true }))
  end)

  it("moves entries past their attempts or age to the dead-letter file", function()
    local sp = spool.open(path, { max_attempts = 5, max_age = 3600 })
    local now = os.time()
    spool._set_clock(function() return now end)
    assert(sp:add_all({ { hook = "ops", event = ev("tried"), attempts = 5, last_error = "400" },
      { hook = "ops", event = ev("old") }, { hook = "ops", event = ev("fresh") } }))
    spool._set_clock(function() return now + 1800 end)
    assert(sp:add("ops", ev("fresh2")))
    spool._set_clock(function() return now + 3600 end)
    local got, info = sp:claim({ ops = true })
    assert.are.equal(3, info.dead) -- tried 5 times; spooled an hour ago (twice)
    assert.are.same({ "ops:fresh2" }, ids(got))
    local dead = json.decode(slurp(path .. ".dead"))
    assert.are.equal(1, dead.version)
    assert.are.same({ "ops:fresh", "ops:old", "ops:tried" }, ids(dead.entries))
    for _, e in ipairs(dead.entries) do assert.is_string(e.dead_reason) end
    assert.are.same({ "ops:fresh2" }, ids(sp:entries()))
  end)

  it("waits for a lock held elsewhere, and gives up with a clear error", function()
    local sp = spool.open(path, { lock_timeout = 0.3 })
    assert(sp:add("ops", ev("m1")))
    local held = assert(fs.lock(path .. ".lock"))
    local ok, err = sp:add("ops", ev("m2"))
    assert.is_nil(ok)
    assert.matches("stayed locked by another process", err.message, 1, true)
    -- released while the writer waits: the write goes through
    task.spawn(function() task.sleep(0.1) held:unlock() end)
    assert(sp:add("ops", ev("m2")))
    assert.are.same({ "ops:m1", "ops:m2" }, ids(sp:entries()))
    local again, _, code = fs.lock(path .. ".lock")
    assert.is_truthy(again, tostring(code))
    again:unlock()
  end)

  it("delivers each replayed entry once when two runs replay at the same time", function()
    local seed = spool.open(path)
    local list = {}
    for i = 1, 12 do list[i] = { hook = "ops", event = ev("m" .. i) } end
    assert(seed:add_all(list))
    local got = {}
    local function registry()
      local reg = alert.registry()
      reg:configure { quiet = true, retries = 0, exit_on_lost = false, spool = path, concurrency = 3 }
      reg:hook("ops", function(e)
        task.sleep(0.01)
        got[#got + 1] = e.id
      end)
      return reg
    end
    local r1, r2 = registry(), registry()
    local t1 = task.spawn(function() return r1:_replay(spool.open(path)) end)
    local t2 = task.spawn(function() return r2:_replay(spool.open(path)) end)
    local n1, n2 = task.wait(t1), task.wait(t2)
    assert.are.equal(12, n1 + n2)
    assert.are.equal(12, #got)
    local seen = {}
    for _, id in ipairs(got) do
      assert.is_nil(seen[id], id .. " delivered twice")
      seen[id] = true
    end
    assert.are.same({}, seed:entries())
  end)

  it("writes each delivered entry out of the file as it ends, not after the whole replay (issue 13 item 1)", function()
    local seed = spool.open(path)
    assert(seed:add_all({ { hook = "ops", event = ev("quick1") }, { hook = "ops", event = ev("quick2") },
      { hook = "ops", event = ev("slow") } }))
    local release, got = false, {}
    local reg = alert.registry()
    reg:configure { quiet = true, retries = 0, exit_on_lost = false, spool = path, concurrency = 3 }
    reg:hook("ops", function(e)
      while e.id == "slow" and not release do task.sleep(0.01) end
      got[#got + 1] = e.id
    end)
    local t = task.spawn(function() return reg:_replay(spool.open(path)) end)
    for _ = 1, 500 do
      if #got == 2 then break end
      task.sleep(0.01)
    end
    assert.are.same({ "quick1", "quick2" }, got)
    -- the slow one is still in flight: a run killed now re-sends only it
    assert.are.same({ "ops:slow" }, ids(seed:entries()))
    release = true
    assert.are.equal(3, task.wait(t))
    assert.are.same({}, seed:entries())
  end)

  it("gives up a receiver refusing on every run after spool_max_attempts, with a warning (item 3)", function()
    assert(spool.open(path):add("ops", ev("refused")))
    local calls, lines = 0, {}
    local reg = alert.registry()
    reg:configure { quiet = true, retries = 0, exit_on_lost = false, spool = path, spool_max_attempts = 2 }
    reg._log = function(_, msg) lines[#lines + 1] = msg end
    reg:hook("ops", function()
      calls = calls + 1
      error(require("kpiwatch.errors").new("webhook", "HTTP 400 Bad Request", { retryable = false }))
    end)
    local open_spool = require("kpiwatch.alert.deliver").open_spool
    for _ = 1, 4 do reg:_replay(open_spool(reg, path)) end -- four runs
    assert.are.equal(2, calls)
    assert.are.same({}, spool.open(path):entries())
    local dead = json.decode(slurp(path .. ".dead"))
    assert.are.same({ "ops:refused" }, ids(dead.entries))
    assert.are.equal(1, #lines, table.concat(lines, "\n"))
    assert.matches("1 spooled notification given up %(after 2 attempts", lines[1])
    assert.truthy(lines[1]:find(path .. ".dead", 1, true), lines[1])
  end)
end)
