-- kpiwatch.alert.watch: the watch loop. Each cycle fetches the executions,
-- steps the state machine (state.lua), saves the state with the events it
-- decided (the outbox), then delivers them (deliver.lua); SIGINT/SIGTERM
-- stop it between or during deliveries, whose failures are spooled.

local errors = require "kpiwatch.errors"
local spool = require "kpiwatch.spool"
local rule = require "kpiwatch.alert.rule"
local report = require "kpiwatch.alert.report"
local state = require "kpiwatch.alert.state"
local deliver = require "kpiwatch.alert.deliver"

local M = {}

local type, pairs, ipairs, tostring, pcall, error = type, pairs, ipairs, tostring, pcall, error
local math_type = math.type
local caller_where, config_error, parse_duration = rule.caller_where, rule.config_error,
  rule.parse_duration
local load_state, save_state = state.load, state.save
local new_report, print_problems, ctx_sleep = report.new, report.print_problems, deliver.sleep

rule.internal(debug.getinfo(1, "S").source)

--- Delivers the outbox (events decided and saved with the state, not yet
--- sent). Failures go to the spool; when the spool cannot be written they
--- stay in the outbox, that is in the state file, for the next cycle.
---@param self table the registry
---@param st table the state
---@param sp table the spool object
---@param ctx table|nil the watch's stop context
---@param rep table|nil report the deliveries are recorded in
---@param state_path string|nil the state file
---@return integer lost notifications (only when neither file can be written)
function M.flush_outbox(self, st, sp, ctx, rep, state_path)
  if #st.outbox == 0 then return 0 end
  local jobs = {}
  for _, o in ipairs(st.outbox) do
    if self.hooks[o.hook] then
      jobs[#jobs + 1] = { hook = o.hook, event = o.event }
    else
      sp:add(o.hook, o.event, { attempts = 0, last_error = "hook not registered" })
    end
  end
  local unspooled = self:_deliver(jobs, sp, ctx, rep, state_path)
  st.outbox = {}
  for _, job in ipairs(unspooled) do st.outbox[#st.outbox + 1] = { hook = job.hook, event = job.event } end
  if not state_path then return #unspooled end
  local ok, err = save_state(state_path, st)
  if ok then return 0 end
  self:_log("cannot save the alert state: " .. tostring(err), true)
  if #unspooled > 0 and rep then
    for _, d in ipairs(rep.deliveries) do
      if d.status == "outbox" then
        d.status = "lost"
        rep.lost = rep.lost + 1
      end
    end
  end
  return #unspooled
end

local function resolve_ids(ids)
  if type(ids) == "function" then ids = ids() end
  if type(ids) == "string" then ids = { ids } end
  if type(ids) ~= "table" then
    error(errors.new("config", "alert.watch: ids must be a list of execution ids or a function " ..
      "returning one, got " .. type(ids)), 0)
  end
  return ids
end

--- Polls executions and notifies alerts as they fire and resolve, until
--- SIGINT/SIGTERM, max_cycles or on_cycle returning false (Registry:watch).
---@param self table the registry
---@param opts table {ids = list or function returning one, every = duration (60),
--- state = file, spool = file, max_cycles = n, on_cycle = function(report, n),
--- concurrency = n, clock = function}
---@return table summary {cycles=, delivered=, spooled=, lost=, interrupted=, last=, spool=}
function M.watch(self, opts)
  local where = caller_where()
  if type(opts) ~= "table" then config_error(where, "alert.watch expects a table of options") end
  for k in pairs(opts) do
    if not ({ ids = 1, every = 1, state = 1, spool = 1, max_cycles = 1, on_cycle = 1,
      concurrency = 1, clock = 1 })[k] then
      config_error(where, "alert.watch: unknown option '" .. tostring(k) .. "'")
    end
  end
  if opts.ids == nil then config_error(where, "alert.watch: 'ids' is required") end
  local every, msg = parse_duration(opts.every or 60)
  if not every then config_error(where, "alert.watch: 'every' " .. msg) end
  if opts.state ~= nil and (type(opts.state) ~= "string" or opts.state == "") then
    config_error(where, "alert.watch: 'state' must be a file path")
  end
  if opts.max_cycles ~= nil and math_type(opts.max_cycles) ~= "integer" then
    config_error(where, "alert.watch: 'max_cycles' must be an integer")
  end
  self:_check_hooks()
  local clock = opts.clock or os.time
  local state_path = opts.state
  local st = state_path and load_state(state_path) or state.new()
  local sp = spool.open(opts.spool or self.config.spool or
    (state_path and (state_path .. ".spool")) or spool.default_path())
  local T = require "kpiwatch.task"
  local ctx = { stopping = false, sleepers = {} }
  local summary = { cycles = 0, delivered = 0, spooled = 0, lost = 0, spool = sp.path }

  local sigtasks = {}
  for _, sig in ipairs({ "int", "term" }) do
    sigtasks[#sigtasks + 1] = T.spawn(function()
      -- A watch that never yielded ends before this task first runs, and
      -- cancelling a task that has not started is not reliable: check.
      if ctx.done then return end
      T.wait_signal(sig)
      ctx.stopping, ctx.signal = true, sig
      for t in pairs(ctx.sleepers) do pcall(T.cancel, t, "stopping") end
    end)
  end

  local function add(rep)
    summary.delivered = summary.delivered + rep.delivered
    summary.spooled = summary.spooled + rep.spooled
  end

  local ok, err = pcall(function()
    if #st.outbox > 0 then
      local rep = new_report()
      summary.lost = summary.lost + self:_flush_outbox(st, sp, ctx, rep, state_path)
      add(rep)
    end
    while not ctx.stopping do
      summary.cycles = summary.cycles + 1
      local list, failed_list = require("kpiwatch.kpis").resolve(resolve_ids(opts.ids),
        { concurrency = opts.concurrency })
      local failed = {}
      for _, f in ipairs(failed_list) do failed[f.execution_id] = f.error end
      local rep = self:step(st, list, clock(), { failed = failed })
      print_problems(self, rep)
      self:_replay(sp, ctx, rep)
      for _, e in ipairs(rep.events) do
        for _, h in ipairs(e.hooks) do st.outbox[#st.outbox + 1] = { hook = h, event = e.event } end
      end
      if state_path then
        local saved, serr = save_state(state_path, st)
        if not saved then self:_log("cannot save the alert state: " .. tostring(serr), true) end
      end
      summary.lost = summary.lost + self:_flush_outbox(st, sp, ctx, rep, state_path)
      add(rep)
      summary.last = rep
      if opts.on_cycle and opts.on_cycle(rep, summary.cycles) == false then break end
      if opts.max_cycles and summary.cycles >= opts.max_cycles then break end
      if ctx.stopping then break end
      ctx_sleep(ctx, every)
    end
  end)
  ctx.done = true
  for _, t in ipairs(sigtasks) do pcall(T.cancel, t) end
  for t in pairs(ctx.sleepers) do pcall(T.cancel, t) end
  if state_path then
    local saved, serr = save_state(state_path, st)
    if not saved then self:_log("cannot save the alert state: " .. tostring(serr), true) end
  end
  summary.interrupted = ctx.signal
  if not ok then error(err, 0) end
  return summary
end

return M
