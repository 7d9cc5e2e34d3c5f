-- kpiwatch.alert.deliver: sending events to hooks. Each (event, hook) pair
-- runs in its own task with retries and backoff for retryable failures (an
-- error object with retryable ~= false, or any other error); what still
-- fails is spooled (kpiwatch.spool) and sent again, one attempt each, on
-- the next run or cycle (replay).

local errors = require "kpiwatch.errors"
local shared = require "kpiwatch.shared"
local spool = require "kpiwatch.spool"
local rule = require "kpiwatch.alert.rule"

local M = {}

rule.internal(debug.getinfo(1, "S").source)

local type, pairs, ipairs, tostring, pcall = type, pairs, ipairs, tostring, pcall
local format = string.format
local short_error = rule.short_error

local task -- loaded when first needed, so rule evaluation needs no event loop
local function tasks()
  if not task then task = require "kpiwatch.task" end
  return task
end

local function retryable(e)
  if errors.is(e) then return e.retryable ~= false end
  return true
end

local function backoff_delay(cfg, attempt)
  return shared.backoff(attempt, cfg.backoff, cfg.max_backoff)
end

--- Sleeps in a task that a stop can cancel.
---@param ctx table|nil {stopping=, sleepers={}}
---@param secs number
---@return boolean false when woken (or prevented) by a stop
local function ctx_sleep(ctx, secs)
  if ctx and ctx.stopping then return false end
  if secs <= 0 then return true end
  local T = tasks()
  local t = T.spawn(T.sleep, secs)
  if ctx then ctx.sleepers[t] = true end
  local ok = pcall(T.wait, t)
  if ctx then ctx.sleepers[t] = nil end
  -- the waiter was cancelled: its sleep must not outlive it (it would hold
  -- the loop, and the process, for the rest of the delay)
  if not ok then pcall(T.cancel, t) end
  return ok and not (ctx and ctx.stopping)
end
M.sleep = ctx_sleep

--- A stop context for deliveries: tasks wait for the given signals (taking
--- over their default action); the first to arrive sets ctx.stopping and
--- ctx.signal and cancels the sleeps and the deliveries in flight, whose
--- failures are then spooled. End it with stop_end.
---@param signals table list of "int", "term", "hup"
---@return table ctx {stopping=, signal=, sleepers={}, tasks={}}
function M.stop_context(signals)
  local T = tasks()
  local ctx = { stopping = false, sleepers = {}, tasks = {}, sigtasks = {} }
  for _, sig in ipairs(signals) do
    ctx.sigtasks[#ctx.sigtasks + 1] = T.spawn(function()
      -- A caller that never yielded ends before this task first runs, and
      -- cancelling a task that has not started is not reliable: check.
      if ctx.done then return end
      T.wait_signal(sig)
      ctx.stopping, ctx.signal = true, sig
      for t in pairs(ctx.sleepers) do pcall(T.cancel, t, "stopping") end
      for t in pairs(ctx.tasks) do pcall(T.cancel, t, "stopping") end
    end)
  end
  return ctx
end

--- Ends a stop context: its signals get their default action back.
---@param ctx table
function M.stop_end(ctx)
  local T = tasks()
  ctx.done = true
  for _, t in ipairs(ctx.sigtasks) do pcall(T.cancel, t) end
  for t in pairs(ctx.sleepers) do pcall(T.cancel, t) end
end

-- deliver_one(reg, job, opts, stopped) -> {status = delivered|failed|skipped,
-- attempts=, error=}. Never raises; stops retrying once stopped() is true.
local function deliver_one(reg, job, opts, stopped)
  local cfg = reg.config
  local fn = reg.hooks[job.hook]
  local retries = opts.retries or cfg.retries
  local attempts, last = 0
  while true do
    attempts = attempts + 1
    local ok, e = pcall(fn, job.event)
    if ok then return { status = "delivered", attempts = attempts } end
    last = e
    if errors.is(e) and e.kind == "hook_disabled" then
      return { status = "skipped", attempts = attempts, error = tostring(e.message) }
    end
    if not retryable(e) or attempts > retries or stopped() then break end
    local delay = (errors.is(e) and type(e.retry_after) == "number") and e.retry_after
      or backoff_delay(cfg, attempts)
    if delay > cfg.max_retry_wait then break end
    if not ctx_sleep(opts.ctx, delay) then break end
  end
  return { status = "failed", attempts = attempts, error = short_error(last) }
end

-- run_jobs(reg, jobs, opts) -> results (same order), cancelled. Each job in
-- a task of its own (which a stop or a cancellation aborts where it waits),
-- at most config.concurrency at once; one failing hook never stops others.
-- A cancellation of the calling task (task.cancel, Ctrl-C: its reason is
-- raised where the caller waits) cancels the deliveries in flight, waits for
-- them and comes back as `cancelled` rather than raised, so that the caller
-- spools or releases what was not delivered and then raises it: swallowed,
-- the caller went on as if nothing happened and the hooks kept retrying.
local function run_jobs(reg, jobs, opts)
  local results = {}
  local ctx = opts.ctx
  local T = tasks()
  local cancelled           -- the caller's cancellation, once it came
  local inflight = {}       -- delivery task -> its job's index
  local function stopped() return cancelled ~= nil or (ctx ~= nil and ctx.stopping) end
  local function finish(i, r)
    results[i] = r
    if opts.on_done then opts.on_done(i, r) end
  end
  local ok, err = pcall(T.map, jobs, function(job, i)
    -- stopping: what is left is not tried, and is spooled as interrupted
    if stopped() then return end
    local t = T.spawn(deliver_one, reg, job, opts, stopped)
    inflight[t] = i
    if ctx and ctx.tasks then ctx.tasks[t] = true end
    local done, r = pcall(T.wait, t)
    if ctx and ctx.tasks then ctx.tasks[t] = nil end
    -- this worker was cancelled with the caller: the delivery is settled below
    if not done and cancelled then return end
    inflight[t] = nil
    finish(i, done and r or { status = "failed", attempts = 0, error = short_error(r) })
  end, { concurrency = reg.config.concurrency })
  if not ok then
    -- T.map raised: the caller was cancelled (or on_done failed); set before
    -- any wait, so the workers resumed by map's cancels see it
    cancelled = err
    for t in pairs(inflight) do pcall(T.cancel, t, tostring(err)) end
    for t, i in pairs(inflight) do
      local done, r = pcall(T.wait, t)
      finish(i, done and r or { status = "failed", attempts = 0, error = short_error(r) })
    end
  end
  for i = 1, #jobs do
    results[i] = results[i] or { status = "failed", attempts = 0, error = "delivery was interrupted" }
  end
  return results, cancelled
end

local function job_label(job)
  local ev = job.event
  local what = type(ev.alerts) == "table" and #ev.alerts > 1 and (#ev.alerts .. " alerts")
    or ("rule '" .. tostring(ev.rule) .. "'")
  return format("hook '%s': %s notification of %s%s", job.hook, ev.state or "?",
    what, ev.execution_id and (" on " .. tostring(ev.execution_id)) or "")
end

local function record(rep, job, res)
  rep.deliveries[#rep.deliveries + 1] = {
    hook = job.hook, event_id = job.event.id, rule = job.event.rule,
    execution_id = job.event.execution_id, metric = job.event.metric, state = job.event.state,
    status = res.status, attempts = res.attempts, error = res.error,
  }
  if res.status == "delivered" then rep.delivered = rep.delivered + 1
  elseif res.status == "spooled" then rep.spooled = rep.spooled + 1
  elseif res.status == "lost" then rep.lost = rep.lost + 1
  elseif res.status == "skipped" then rep.skipped = rep.skipped + 1
  elseif res.status == "outbox" then rep.outbox = (rep.outbox or 0) + 1 end
end

--- The spool file of a delivery: opts.spool, the registry's, or the default.
---@param self table the registry
---@param opts table|nil {spool = path}
---@return string
function M.spool_path(self, opts)
  if opts and opts.spool then return opts.spool end
  if self.config.spool then return self.config.spool end
  return spool.default_path()
end

--- Opens a spool with the registry's retention (spool_max_age, spool_max_attempts).
---@param self table the registry
---@param path string
---@return table spool
function M.open_spool(self, path)
  local cfg = self.config
  return spool.open(path, { max_age = cfg.spool_max_age, max_attempts = cfg.spool_max_attempts })
end

--- Re-sends what the spool holds for the hooks this registry has: one
--- attempt each (the backoff happened when it was spooled; the next run or
--- cycle is the next retry). The entries are claimed under the spool's lock
--- (another run's replay skips them) and each is settled as it ends: a
--- delivered entry leaves the file at once. Entries past the spool's age or
--- attempt limit move to its dead-letter file, with a warning.
---@param self table the registry
---@param sp table the spool object (kpiwatch.spool.open)
---@param ctx table|nil the watch's stop context
---@param rep table|nil report whose `replayed` counts are updated
---@return integer delivered
function M.replay(self, sp, ctx, rep)
  local hooks = {}
  for name in pairs(self.hooks) do hooks[name] = true end
  local ok, claimed, info = pcall(sp.claim, sp, hooks)
  if not ok then
    self:_log("cannot replay the spool: " .. short_error(claimed), true)
    return 0
  end
  if info.dead > 0 then
    self:_log(format("%d spooled notification%s given up (after %d attempts or %gs): moved to %s",
      info.dead, info.dead == 1 and "" or "s", sp.max_attempts, sp.max_age, sp.dead_path), true)
  end
  if not sp.warned_unknown then
    for h, n in pairs(info.unknown) do
      self:_log(format("%d spooled notification%s for hook '%s', which is not registered here, " ..
        "stay in %s", n, n == 1 and "" or "s", h, sp.path))
    end
    sp.warned_unknown = true
  end
  if #claimed == 0 then return 0 end
  local jobs = {}
  for i, e in ipairs(claimed) do jobs[i] = { hook = e.hook, event = e.event, entry = e } end
  local settled = {}
  local function settle(i, res)
    local sok, serr = sp:settle(jobs[i].entry, res)
    if not sok then self:_log("cannot update the spool: " .. short_error(serr)) end
    settled[i] = true
  end
  -- Written back as each ends (on_done), so that a run killed mid-replay
  -- leaves nothing it delivered in the spool.
  local results, cancelled = run_jobs(self, jobs, { retries = 0, ctx = ctx, on_done = settle })
  local delivered = 0
  for i, res in ipairs(results) do
    if not settled[i] then pcall(settle, i, res) end -- interrupted: the claim is released
    if res.status == "delivered" then delivered = delivered + 1 end
    if rep then
      rep.replayed = rep.replayed or { delivered = 0, failed = 0 }
      if res.status == "delivered" then rep.replayed.delivered = rep.replayed.delivered + 1
      else rep.replayed.failed = rep.replayed.failed + 1 end
    end
  end
  if delivered > 0 then
    self:_log(format("delivered %d spooled notification%s from %s", delivered,
      delivered == 1 and "" or "s", sp.path))
  end
  -- every claim is settled: what was not delivered stays in the spool
  if cancelled then error(cancelled, 0) end
  return delivered
end

--- Delivers jobs ({hook=, event=}); failures go to the spool. When the spool
--- cannot be written, a fallback (the watch's state file) may still hold
--- them: their status is then "outbox", else "lost".
---@param self table the registry
---@param jobs table list of {hook = name, event = event}
---@param sp table the spool object
---@param ctx table|nil the watch's stop context
---@param rep table|nil report the deliveries are recorded in
---@param fallback string|nil where unspooled jobs are kept (for messages)
---@return table unspooled the jobs that could not be spooled
---@return any cancelled the calling task's cancellation (task.cancel's reason),
--- which the caller raises once it has kept `unspooled`
function M.deliver(self, jobs, sp, ctx, rep, fallback)
  local results, cancelled = run_jobs(self, jobs, { ctx = ctx })
  local failed, items = {}, {}
  for i, job in ipairs(jobs) do
    local res = results[i]
    if res.status == "failed" then
      items[#items + 1] = { hook = job.hook, event = job.event, attempts = res.attempts,
        last_error = res.error }
      failed[#failed + 1] = { job = job, res = res }
    elseif res.status == "skipped" then
      self._warned_skip = self._warned_skip or {}
      if not self._warned_skip[job.hook] then
        self._warned_skip[job.hook] = true
        self:_log(format("hook '%s' skipped: %s", job.hook, tostring(res.error)))
      end
    end
  end
  local unspooled = {}
  if #failed > 0 then
    local ok, err = sp:add_all(items)
    for _, f in ipairs(failed) do
      local n = f.res.attempts
      local what = format("%s failed after %d attempt%s (%s)", job_label(f.job), n,
        n == 1 and "" or "s", tostring(f.res.error))
      if ok then
        f.res.status = "spooled"
        self:_log(what .. "; spooled to " .. sp.path .. " for the next run")
      else
        f.res.status = fallback and "outbox" or "lost"
        f.res.error = tostring(f.res.error) .. "; spooling failed: " .. short_error(err)
        unspooled[#unspooled + 1] = f.job
        self:_log(what .. " and could not be spooled (" .. short_error(err) .. ")" ..
          (fallback and ("; kept in " .. fallback) or ": the notification is lost"), not fallback)
      end
    end
  end
  if rep then
    for i, job in ipairs(jobs) do record(rep, job, results[i]) end
  end
  return unspooled, cancelled
end

return M
