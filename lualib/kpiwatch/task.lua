-- kpiwatch.task: tasks (coroutines resumed by the event loop).
--
-- The mechanism is C (kpiwatch._task, runtime/sched.c); this module adds
-- the compositions scripts want on top of it.

local core = require "kpiwatch._task"

local M = {
  spawn = core.spawn,             -- spawn(fn, ...) -> task handle
  sleep = core.sleep,             -- sleep(seconds): suspends this task only
  wait = core.wait,               -- wait(t) -> t's results, or raises its error
  cancel = core.cancel,           -- cancel(t [, reason]): t raises reason where it waits
  status = core.status,           -- "ready" | "running" | "waiting" | "done" | "failed"
  running = core.running,         -- the current task handle, or nil outside tasks
  wait_signal = core.wait_signal, -- wait_signal("int" | "term" | "hup"): take over that signal
  now = core.now,                 -- monotonic clock, seconds
}

-- all(tasks) -> { {results of 1}, {results of 2}, ... }: waits for every
-- task; raises the first error met (in list order) after all have ended,
-- so that no task is left running behind the caller's back.
--- Wait for every task. Raises the first error met (in list order) once all
--- have ended, so no task is left running behind the caller's back.
---@async
---@param tasks kpiwatch.Task[]
---@return table[] results `{ {results of tasks[1]}, {results of tasks[2]}, ... }`
function M.all(tasks)
  local results, first_err, failed = {}, nil, false
  for i, t in ipairs(tasks) do
    local r = table.pack(pcall(core.wait, t))
    if r[1] then
      results[i] = table.pack(table.unpack(r, 2, r.n))
    elseif not failed then
      failed, first_err = true, r[2]
    end
  end
  if failed then error(first_err, 0) end
  return results
end

---Run fn(item, i) over list with at most opts.concurrency tasks at once
---(the bounded worker pool), and return the results in the order of list:
---out[i] is fn's first result for list[i]. fn should not raise: an error
---it raises stops the pool (no new items start), every worker is waited
---for, and the first error is raised here. When the calling task is
---cancelled (Ctrl-C, task.cancel), the workers are cancelled too and the
---cancellation is raised. Items never started (after an error or a
---cancellation) have no result.
---@async
---@param list any[]
---@param fn fun(item: any, i: integer): any
---@param opts? {concurrency?: integer}  default 8
---@return any[] results
function M.map(list, fn, opts)
  local conc = opts and opts.concurrency or 8
  if math.type(conc) ~= "integer" or conc < 1 then
    error("task.map: concurrency must be a positive integer, got " .. tostring(conc), 2)
  end
  local n, results = #list, {}
  if n == 0 then return results end
  local nexti, fatal = 0, nil
  local function worker()
    while fatal == nil do
      nexti = nexti + 1
      local i = nexti
      if i > n then return end
      local ok, r = pcall(fn, list[i], i)
      if not ok then
        fatal = fatal or { r }
        return
      end
      results[i] = r
    end
  end
  local workers = {}
  for w = 1, math.min(conc, n) do workers[w] = core.spawn(worker) end
  -- Not M.all: a worker never raises (it catches fn's errors), so a failed
  -- wait is this task's cancellation, and M.all would first wait for the
  -- other workers to finish their items: the cancellation must stop them now.
  for _, w in ipairs(workers) do
    local ok, e = pcall(core.wait, w)
    if not ok then
      fatal = fatal or { e }
      for _, w2 in ipairs(workers) do pcall(core.cancel, w2) end
      error(e, 0)
    end
  end
  if fatal then error(fatal[1], 0) end
  return results
end

return M
