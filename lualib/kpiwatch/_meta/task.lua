---@meta
-- Annotations of the task functions C implements (runtime/scheduler.c),
-- re-exported by kpiwatch.task: read by tools/gen_lua_api.lua, never loaded.
-- luacheck: ignore
error("kpiwatch._meta files are documentation; require \"kpiwatch.task\"")

local task = {}

---@brief
--- Tasks: coroutines resumed by the one libuv event loop of the process (global
--- `task`). The script's main chunk runs as a task; the process exits when it
--- has ended and no other task or open handle (a server, a pending request)
--- remains. Async calls (`task.sleep`, `http.request`, `kpis.get`, ...) suspend
--- only the calling task; where the caller cannot yield (a `require`d module's
--- top level, a `table.sort` comparator, a script's own coroutine) they turn the
--- loop until their result arrives, and other tasks keep running meanwhile.
---
--- A task that raises is reported on stderr with a traceback; if nobody ever
--- waits for it, the run ends with exit status 2.

--- A task handle, as returned by `task.spawn`. `tostring` shows its status.
---@class kpiwatch.Task
local Task = {}

--- Start `fn(...)` as a task on the next scheduler step.
---@param fn function the task's body
---@param ... any its arguments
---@return kpiwatch.Task t
function task.spawn(fn, ...) end

--- Suspend the calling task only.
---@async
---@param seconds number how long (0 yields to the other tasks)
function task.sleep(seconds) end

--- Wait until `t` has ended.
---@async
---@param t kpiwatch.Task
---@return any ... `t`'s return values; raises `t`'s error (the same value) if it failed
function task.wait(t) end

--- Abort what `t` waits on (a sleep, a request, a signal); `t` raises `reason`
--- there and may handle it.
---@param t kpiwatch.Task
---@param reason? any the error `t` raises (default `"cancelled"`)
function task.cancel(t, reason) end

--- The state of a task.
---@param t kpiwatch.Task
---@return "ready"|"running"|"waiting"|"done"|"failed" status
function task.status(t) end

--- The task running now.
---@return kpiwatch.Task|nil t `nil` outside tasks
function task.running() end

--- Suspend until SIGINT, SIGTERM or SIGHUP arrives. While a task waits for a
--- signal, that signal's default action is off (a watch uses this to stop
--- cleanly; `alert.check` to spool what it was delivering). The default action
--- of SIGTERM and SIGHUP is to stop: exit 143 and 129.
---@async
---@param which "int"|"term"|"hup"
---@return "int"|"term"|"hup" which the signal that arrived
function task.wait_signal(which) end

--- A monotonic clock (libuv's hrtime), for durations and deadlines.
---@return number seconds
function task.now() end

return task
