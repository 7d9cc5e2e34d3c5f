-- The task scheduler as scripts see it (runtime/scheduler.c, lualib/kpiwatch/task.lua).
local task = require "kpiwatch.task"

describe("task", function()
  it("finishes sleeping tasks in time order, not spawn order", function()
    local order = {}
    local slow = task.spawn(function() task.sleep(0.05) order[#order + 1] = "slow" end)
    local fast = task.spawn(function() task.sleep(0.01) order[#order + 1] = "fast" end)
    task.all({ slow, fast })
    assert.same({ "fast", "slow" }, order)
  end)

  it("runs ten 0.1 s sleeps concurrently, well under 1 s of wall time", function()
    local t0 = task.now()
    local ts = {}
    for i = 1, 10 do ts[i] = task.spawn(function() task.sleep(0.1) return i end) end
    local results = task.all(ts)
    local elapsed = task.now() - t0
    assert.is_true(elapsed >= 0.1, "slept at least 0.1 s")
    assert.is_true(elapsed < 0.5, "took " .. elapsed .. " s")
    assert.equal(10, results[10][1])
  end)

  it("passes arguments and returns every result", function()
    local t = task.spawn(function(a, b) task.sleep(0) return a + b, nil, "z" end, 2, 3)
    local a, b, c = task.wait(t)
    assert.equal(5, a)
    assert.is_nil(b)
    assert.equal("z", c)
    assert.equal("done", task.status(t))
  end)

  it("isolates errors: a failing task does not stop the others", function()
    local bad = task.spawn(function() task.sleep(0.01) error("boom") end)
    local good = task.spawn(function() task.sleep(0.02) return "still here" end)
    assert.equal("still here", task.wait(good))
    local ok, err = pcall(task.wait, bad)
    assert.is_false(ok)
    assert.matches("task_spec.lua:%d+: boom", err)
    assert.equal("failed", task.status(bad))
  end)

  it("re-raises error objects unchanged", function()
    local obj = setmetatable({ kind = "x" }, { __tostring = function() return "x!" end })
    local ok, err = pcall(task.wait, task.spawn(function() error(obj) end))
    assert.is_false(ok)
    assert.equal(obj, err)
  end)

  it("all() raises the first error after every task ended", function()
    local finished = false
    local ts = {
      task.spawn(function() error("first", 0) end),
      task.spawn(function() task.sleep(0.02) finished = true end),
    }
    local ok, err = pcall(task.all, ts)
    assert.is_false(ok)
    assert.equal("first", err)
    assert.is_true(finished)
  end)

  it("cancels a waiting task with a reason", function()
    local t = task.spawn(function() task.sleep(30) end)
    task.sleep(0.01)
    local t0 = task.now()
    task.cancel(t, "enough")
    local ok, err = pcall(task.wait, t)
    assert.is_false(ok)
    assert.equal("enough", err)
    assert.is_true(task.now() - t0 < 1)
  end)

  it("cancels a task whose wait already completed but has not resumed", function()
    -- b's sleep(0) completes in the same loop turn as a's; a then cancels b
    -- before b runs: b must raise once, and the scheduler must not spin.
    local b
    local a = task.spawn(function() task.sleep(0) task.cancel(b, "late") task.sleep(0.01) end)
    b = task.spawn(function() task.sleep(0) return "finished" end)
    assert.is_true((pcall(task.wait, a)))
    local ok, err = pcall(task.wait, b)
    assert.is_false(ok)
    assert.equal("late", err)
  end)

  it("cancels a task that has not started, with or without arguments", function()
    local ran = false
    local plain = task.spawn(function() ran = true end)
    local with_args = task.spawn(function(x) ran = x end, "ran")
    task.cancel(plain, "never")
    task.cancel(with_args, "never")
    for _, t in ipairs({ plain, with_args }) do
      local ok, err = pcall(task.wait, t)
      assert.is_false(ok)
      assert.equal("never", err)
    end
    assert.is_false(ran)
  end)

  it("keeps a task cancelled before it started alive until its turn comes", function()
    -- Handles nobody keeps, cancelled while still queued, then collected:
    -- the queue must not point at freed memory (ASan: use after free).
    local ran = 0
    for _ = 1, 50 do task.cancel(task.spawn(function() ran = ran + 1 end), "never") end
    collectgarbage()
    collectgarbage()
    task.sleep(0)
    assert.equal(0, ran)
  end)

  describe("where the caller cannot yield", function()
    it("waits inside a require'd module's top level", function()
      package.loaded["spec.lua.helpers.slow_module"] = nil
      local before = task.now()
      local m = require("spec.lua.helpers.slow_module")
      assert.is_true(m.loaded_at - before >= 0.009)
    end)

    it("waits inside a table.sort comparator", function()
      local t = { 3, 1, 2 }
      table.sort(t, function(a, b) task.sleep(0) return a < b end)
      assert.same({ 1, 2, 3 }, t)
    end)

    it("waits inside a script's own coroutine.wrap", function()
      local gen = coroutine.wrap(function()
        task.sleep(0.01)
        coroutine.yield("one")
        task.sleep(0.01)
        return "two"
      end)
      assert.equal("one", gen())
      assert.equal("two", gen())
    end)

    it("keeps other tasks running while it waits", function()
      local ticks = 0
      local ticker = task.spawn(function()
        for _ = 1, 3 do task.sleep(0.005) ticks = ticks + 1 end
      end)
      coroutine.wrap(function() task.sleep(0.05) end)()
      assert.equal(3, ticks)
      task.wait(ticker)
    end)
  end)
end)
