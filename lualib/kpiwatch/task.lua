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
  wait_signal = core.wait_signal, -- wait_signal("int" | "term"): take over that signal
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

return M
