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
local runs = require "kpiwatch.alert.runs"
local group = require "kpiwatch.alert.group"

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
---@param now number|nil epoch seconds: groups whose group_wait runs past it stay
---@return integer lost notifications (only when neither file can be written)
function M.flush_outbox(self, st, sp, ctx, rep, state_path, now)
  if #st.outbox == 0 then return 0 end
  local jobs, waiting, unregistered = {}, {}, {}
  for _, o in ipairs(st.outbox) do
    if not group.due(o, now) then
      waiting[#waiting + 1] = o
    elseif self.hooks[o.hook] then
      jobs[#jobs + 1] = { hook = o.hook, event = o.event }
    else
      unregistered[#unregistered + 1] = { hook = o.hook, event = o.event, attempts = 0,
        last_error = "hook not registered" }
    end
  end
  if #jobs == 0 and #waiting == #st.outbox then return 0 end
  local unspooled, cancelled = self:_deliver(jobs, sp, ctx, rep, state_path)
  if #unregistered > 0 then
    local ok, err = sp:add_all(unregistered)
    if not ok then
      self:_log("cannot spool notifications for unregistered hooks (" .. tostring(err)
        .. "); kept in " .. tostring(state_path or "memory"), true)
      for _, u in ipairs(unregistered) do unspooled[#unspooled + 1] = u end
    end
  end
  st.outbox = waiting
  for _, job in ipairs(unspooled) do st.outbox[#st.outbox + 1] = { hook = job.hook, event = job.event } end
  -- cancelled (task.cancel of the watch's task): raised once the outbox holds
  -- only what is neither delivered nor spooled, and is saved
  if not state_path then
    if cancelled then error(cancelled, 0) end
    return #unspooled
  end
  local ok, err = save_state(state_path, st)
  if cancelled then
    if not ok then self:_log("cannot save the alert state: " .. tostring(err), true) end
    error(cancelled, 0)
  end
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

-- After a cycle, hooks with an on_cycle method (notify.alertmanager's
-- re-sends) get the alerts firing for them; a failure is logged, not fatal.
local function hook_cycles(self, rep, now)
  for _, name in ipairs(self.hook_names) do
    local h = self.hooks[name]
    local on_cycle = type(h) == "table" and h.on_cycle
    if on_cycle then
      local mine = {}
      for _, a in ipairs(rep.firing) do
        for _, hn in ipairs(self:_hooks_of(self.by_name[a.rule])) do
          if hn == name then mine[#mine + 1] = a break end
        end
      end
      local ok, e = pcall(on_cycle, h, mine, now)
      if not ok then self:_log("hook '" .. name .. "': re-sending firing alerts failed: " .. tostring(e)) end
    end
  end
end

--- Polls executions and notifies alerts as they fire and resolve, until
--- SIGINT/SIGTERM, max_cycles or on_cycle returning false (Registry:watch).
--- With run_tests, follows each run test's executions (alert/runs.lua):
--- only the newest page of its list, status reads for those in flight,
--- KPIs once per completed execution; on_status and stale rules apply.
---@param self table the registry
---@param opts table {ids = list or function returning one, run_tests = list of run
--- test ids or names (ids, run_tests or both), every = duration (60),
--- state = file, spool = file, max_cycles = n, on_cycle = function(report, n),
--- concurrency = n, clock = function, metrics = "ADDR:PORT" (serve /metrics, kpiwatch.metrics)}
---@return table summary {cycles=, delivered=, spooled=, lost=, interrupted=, last=, spool=}
function M.watch(self, opts)
  local where = caller_where()
  if type(opts) ~= "table" then config_error(where, "alert.watch expects a table of options") end
  for k in pairs(opts) do
    if not ({ ids = 1, every = 1, state = 1, spool = 1, max_cycles = 1, on_cycle = 1,
      concurrency = 1, clock = 1, run_tests = 1, metrics = 1 })[k] then
      config_error(where, "alert.watch: unknown option '" .. tostring(k) .. "'")
    end
  end
  if opts.ids == nil and opts.run_tests == nil then
    config_error(where, "alert.watch: 'ids' or 'run_tests' is required")
  end
  local run_tests = opts.run_tests
  if run_tests ~= nil then
    if type(run_tests) == "string" then run_tests = { run_tests } end
    if type(run_tests) ~= "table" or #run_tests == 0 then
      config_error(where, "alert.watch: 'run_tests' must be a list of run test ids or names")
    end
    for i, rt in ipairs(run_tests) do
      if type(rt) ~= "string" or rt == "" or rt:find("%c") then
        config_error(where, "alert.watch: run_tests entry " .. i .. " must be a run test id or name")
      end
    end
  end
  local every, msg = parse_duration(opts.every or 60)
  if not every then config_error(where, "alert.watch: 'every' " .. msg) end
  if opts.state ~= nil and (type(opts.state) ~= "string" or opts.state == "") then
    config_error(where, "alert.watch: 'state' must be a file path")
  end
  if opts.max_cycles ~= nil and math_type(opts.max_cycles) ~= "integer" then
    config_error(where, "alert.watch: 'max_cycles' must be an integer")
  end
  self:_check_hooks()
  local collector, metrics_server
  if opts.metrics ~= nil then
    local metrics = require "kpiwatch.metrics"
    if not metrics.parse_listen(opts.metrics) then
      config_error(where, "alert.watch: 'metrics' " .. select(2, metrics.parse_listen(opts.metrics)))
    end
    collector = metrics.collector()
    metrics_server = metrics.serve(collector, opts.metrics)
    require("kpiwatch.kpis")._observer = collector:observer()
  end
  local clock = opts.clock or os.time
  local state_path = opts.state
  local st = state_path and load_state(state_path) or state.new()
  local sp = deliver.open_spool(self, opts.spool or self.config.spool or
    (state_path and (state_path .. ".spool")) or spool.default_path())
  local ctx = deliver.stop_context({ "int", "term" })
  local summary = { cycles = 0, delivered = 0, spooled = 0, lost = 0, spool = sp.path }

  local said -- the problem lines of the previous cycle

  local function add(rep)
    summary.delivered = summary.delivered + rep.delivered
    summary.spooled = summary.spooled + rep.spooled
  end

  local ok, err = pcall(function()
    if #st.outbox > 0 then
      local rep = new_report()
      summary.lost = summary.lost + self:_flush_outbox(st, sp, ctx, rep, state_path, clock())
      add(rep)
    end
    while not ctx.stopping do
      summary.cycles = summary.cycles + 1
      local now = clock()
      local list, failed, keep = {}, {}, nil
      local judged = {} -- the KPI objects judged this cycle (for the metrics)
      if run_tests then
        -- first: the run tests' executions that ended, judged once each
        local items, kept, rfailed = runs.cycle(st, run_tests, now)
        for _, it in ipairs(items) do
          list[#list + 1] = it
          if it.k then judged[#judged + 1] = it.k end
        end
        for id, e in pairs(rfailed) do failed[id] = e end
        keep = kept
      end
      if opts.ids ~= nil then
        local got, failed_list = require("kpiwatch.kpis").resolve(resolve_ids(opts.ids),
          { concurrency = opts.concurrency })
        for _, k in ipairs(got) do
          list[#list + 1] = k
          judged[#judged + 1] = k
        end
        for _, f in ipairs(failed_list) do failed[f.execution_id] = f.error end
      end
      local rep = self:step(st, list, now, { failed = failed, keep = keep })
      -- the same no-data or error line once per change, not every cycle
      said = print_problems(self, rep, said)
      -- cancelled during the replay (task.cancel of the watch's task): this
      -- cycle's events still go to the outbox and, untried, to the spool (as
      -- on a signal), then the cancellation is raised; raised at once, the
      -- alerts were saved firing with their notifications nowhere
      local replayed, rerr = pcall(self._replay, self, sp, ctx, rep)
      if not replayed then ctx.stopping = true end
      group.enqueue(self, st.outbox, rep.events, clock())
      if state_path then
        local saved, serr = save_state(state_path, st)
        if not saved then self:_log("cannot save the alert state: " .. tostring(serr), true) end
      end
      summary.lost = summary.lost + self:_flush_outbox(st, sp, ctx, rep, state_path, clock())
      add(rep)
      if not replayed then error(rerr, 0) end
      hook_cycles(self, rep, clock())
      if collector then require("kpiwatch.metrics").watch_cycle(collector, judged, failed, rep, clock()) end
      summary.last = rep
      if opts.on_cycle and opts.on_cycle(rep, summary.cycles) == false then break end
      if opts.max_cycles and summary.cycles >= opts.max_cycles then break end
      if ctx.stopping then break end
      ctx_sleep(ctx, every)
    end
    -- groups still in their group_wait go now rather than wait for a next run
    local holding = false
    for _, o in ipairs(st.outbox) do if o.not_before then holding = true end end
    if holding then
      local rep = new_report()
      summary.lost = summary.lost + self:_flush_outbox(st, sp, ctx, rep, state_path)
      add(rep)
    end
  end)
  deliver.stop_end(ctx)
  if metrics_server then
    require("kpiwatch.kpis")._observer = nil
    metrics_server:close()
  end
  if state_path then
    local saved, serr = save_state(state_path, st)
    if not saved then self:_log("cannot save the alert state: " .. tostring(serr), true) end
  end
  summary.interrupted = ctx.signal
  if not ok then error(err, 0) end
  return summary
end

return M
