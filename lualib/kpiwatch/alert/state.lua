-- kpiwatch.alert.state: the watch state machine. Pure: step advances a
-- state table from one evaluation and says what to notify, sending
-- nothing; load and save move a state to and from its file.
--
-- State file (version 1):
--   {"version": 1, "saved_at": "...", "alerts": {"<fingerprint>": record},
--    "outbox": [{"hook": "...", "event": {...}}],
--    "runs": {"<run test>": {...}}}   (a watch of run tests: alert/runs.lua)

local errors = require "kpiwatch.errors"
local json = require "kpiwatch.json"
local spool = require "kpiwatch.spool"
local rule = require "kpiwatch.alert.rule"
local report = require "kpiwatch.alert.report"

local M = {}

rule.internal(debug.getinfo(1, "S").source)

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local sort = table.sort
local rfc3339, make_event = report.rfc3339, report.make_event
local as_kpi, exec_id, eval_rule, make_alert = rule.as_kpi, rule.exec_id, rule.eval_rule, rule.make_alert
local fingerprint, short_error = rule.fingerprint, rule.short_error
local new_report, finish_report = report.new, report.finish

--- A fresh watch state: no alert, an empty outbox.
---@return table state {alerts = {[fingerprint] = record}, outbox = {}}
function M.new()
  return { alerts = {}, outbox = {} }
end

local REC_FIELDS = { "value", "threshold", "op", "severity", "labels", "summary", "description", "reason",
  "run_test", "status", "error_reason", "stale_for" }

-- An item of step's list that carries what a watch of run tests knows
-- besides the KPIs (see rule.eval_rule's ctx): the execution's status and
-- error reason, its run test, and `subject`, what its alerts are keyed by
-- (the run test, so that a new run of it resolves or fires the same
-- alert).
local ITEM = { __name = "kpiwatch.alert.item" }

--- item(k, ctx) -> an entry for step's list: KPI object k (nil when there
--- are no KPIs to judge) with the context ctx = {execution_id=, run_test=,
--- status=, error_reason=, stale_age=, subject=}.
---@param k table|nil
---@param ctx table
---@return table
function M.item(k, ctx)
  return setmetatable({ k = k, ctx = ctx }, ITEM)
end

local function holds_long_enough(r, rec, now)
  if r.after_count then return rec.count >= r.after_count end
  if r.after_duration then return now - rec.active_since >= r.after_duration end
  return true
end

local function rec_alert(rec, state)
  local a = { rule = rec.rule, execution_id = rec.execution_id, metric = rec.metric, state = state }
  for _, f in ipairs(REC_FIELDS) do a[f] = rec[f] end
  a.active_since = rec.active_since and rfc3339(rec.active_since) or nil
  a.fired_at = rec.fired_at and rfc3339(rec.fired_at) or nil
  return a
end

--- One watch evaluation (Registry:step). Advances the state in place and
--- sends nothing. Executions in opts.failed ({[execution_id] = error}) could
--- not be fetched this time: their alerts keep their state. So do the
--- alerts whose subject is in opts.keep ({[subject] = true}): a watch of
--- run tests judges each execution once, and its alerts live on until the
--- run test's next execution is judged. An alert keyed by a subject that
--- fires again for another execution is notified again (a new bad run).
---@param self table the registry
---@param st table the state (alert.new_state, alert.load_state)
---@param kpis_in table list of KPI objects or decoded bodies
---@param now number|nil Unix time of this evaluation (default os.time())
---@param opts table|nil {failed = {[execution_id] = error}, keep = {[subject] = true}}
---@return table report with `events` (what to notify, each {event=, hooks={names}}),
--- `pending`, `resolved` and `firing` (every alert firing after this evaluation)
function M.step(self, st, kpis_in, now, opts)
  opts = opts or {}
  now = now or os.time()
  st.alerts = st.alerts or {}
  local rep = new_report()
  rep.pending, rep.resolved, rep.events = {}, {}, {}
  local seen = {}

  local function emit(rec, state, k, r)
    local a = rec_alert(rec, state)
    local ev = make_event(a, state, rec.fired_at or now, k, state == "resolved" and now or nil)
    ev.active_since = nil
    rep.events[#rep.events + 1] = { event = ev, hooks = self:_hooks_of(r) }
  end

  local function resolve(fp, rec, r, k, res, ctx)
    if rec.state == "firing" then
      if r and (k or ctx) and res then
        local a = make_alert(r, k, res, "resolved", ctx)
        for _, f in ipairs(REC_FIELDS) do if a[f] ~= nil then rec[f] = a[f] end end
      elseif not (r and (k or ctx)) then
        rec.summary = "resolved: " .. tostring(rec.summary)
      end
      emit(rec, "resolved", k, r or { notify = rec.notify })
      rep.resolved[#rep.resolved + 1] = rec_alert(rec, "resolved")
    end
    st.alerts[fp] = nil
  end

  -- the condition does not hold (or the alert's execution / rule is gone)
  local function release(fp, r, now_, k, res, ctx)
    local rec = st.alerts[fp]
    if not rec then return false end
    if rec.state == "pending" then
      st.alerts[fp] = nil
      return false
    end
    if r and r.keep_firing_for > 0 and now_ - (rec.last_true or now_) < r.keep_firing_for then
      rec.kept = true
      local a = rec_alert(rec, "firing")
      a.kept = true
      rep.firing[#rep.firing + 1] = a
      return true
    end
    resolve(fp, rec, r, k, res, ctx)
    return false
  end

  for _, item in ipairs(kpis_in) do
    local k, ctx
    if getmetatable(item) == ITEM then
      k, ctx = item.k ~= nil and as_kpi(item.k) or nil, item.ctx
    else
      k = as_kpi(item)
    end
    local id = (ctx and ctx.execution_id) or (k and exec_id(k)) or nil
    local subject = ctx and ctx.subject or id
    rep.executions[#rep.executions + 1] = id or (ctx and ctx.run_test and ("run test " .. ctx.run_test))
      or "(unknown)"
    for _, r in ipairs(self.rules) do
      for _, res in ipairs(eval_rule(r, k, ctx)) do
        local fp = fingerprint(r.name, subject, res.metric)
        seen[fp] = true
        if res.status == "firing" then
          local rec = st.alerts[fp]
          if not rec then
            rec = { rule = r.name, execution_id = id, metric = res.metric, state = "pending",
              active_since = now, count = 0, subject = ctx and subject or nil }
            st.alerts[fp] = rec
          end
          -- keyed by its run test, the alert fires again for each new bad run
          local new_run = ctx ~= nil and id ~= nil and rec.execution_id ~= id
          rec.execution_id = id
          rec.count = (rec.count or 0) + 1
          rec.last_true = now
          rec.kept = nil
          rec.notify = r.notify
          local a = make_alert(r, k, res, "firing", ctx)
          for _, f in ipairs(REC_FIELDS) do rec[f] = a[f] end
          if rec.state == "pending" and holds_long_enough(r, rec, now) then
            rec.state, rec.fired_at, rec.last_sent, rec.sends = "firing", now, now, 1
            emit(rec, "firing", k, r)
          elseif rec.state == "firing" and (new_run or now - (rec.last_sent or 0) >= r.repeat_interval) then
            rec.last_sent, rec.sends = now, (rec.sends or 1) + 1
            emit(rec, "firing", k, r)
          end
          if rec.state == "firing" then
            rep.firing[#rep.firing + 1] = rec_alert(rec, "firing")
          else
            rep.pending[#rep.pending + 1] = rec_alert(rec, "pending")
          end
        elseif res.status == "ok" then
          if st.alerts[fp] and id then st.alerts[fp].execution_id = id end
          if not release(fp, r, now, k, res, ctx) then
            rep.passed[#rep.passed + 1] = { rule = r.name, execution_id = id, metric = res.metric,
              value = res.value, threshold = r.threshold, op = r.op, no_data = res.no_data }
          end
        else
          local list = res.status == "no_data" and rep.no_data or rep.errors
          list[#list + 1] = { rule = r.name, execution_id = id, metric = res.metric,
            reason = res.reason, message = res.status ~= "no_data" and res.reason or nil,
            severity = r.severity }
          -- unknown now: an alert keeps its state (and still shows as firing)
          local rec = st.alerts[fp]
          if rec and rec.state == "firing" then rep.firing[#rep.firing + 1] = rec_alert(rec, "firing") end
        end
      end
    end
  end

  -- alerts not evaluated this time
  local failed, keep = opts.failed or {}, opts.keep or {}
  local unseen = {}
  for fp in pairs(st.alerts) do if not seen[fp] then unseen[#unseen + 1] = fp end end
  sort(unseen)
  for _, fp in ipairs(unseen) do
    local rec = st.alerts[fp]
    if not failed[rec.execution_id] and not (rec.subject and keep[rec.subject]) then
      local r = self.by_name[rec.rule]
      if not r then
        resolve(fp, rec, nil, nil, nil) -- the rule was removed
      else
        release(fp, r, now, nil, nil)
      end
    elseif rec.state == "firing" then
      rep.firing[#rep.firing + 1] = rec_alert(rec, "firing")
    end
  end
  for id, e in pairs(failed) do
    rep.errors[#rep.errors + 1] = { execution_id = id, kind = errors.is(e) and e.kind or nil,
      reason = short_error(e), message = short_error(e) }
  end
  return finish_report(rep)
end

-- ---- state persistence ------------------------------------------------------------

--- Reads a watch state file; a missing file is a fresh state.
---@param path string
---@return table state
local function load_state(path)
  local doc = spool.read(path)
  local st = M.new()
  if not doc then return st end
  if type(doc.alerts) == "table" then
    for fp, rec in pairs(doc.alerts) do
      if type(fp) == "string" and type(rec) == "table" and type(rec.rule) == "string"
        and (rec.state == "pending" or rec.state == "firing") then
        if rec.execution_id == json.null then rec.execution_id = nil end
        st.alerts[fp] = rec
      end
    end
  end
  if type(doc.runs) == "table" then st.runs = doc.runs end
  if type(doc.outbox) == "table" then
    for _, o in ipairs(doc.outbox) do
      if type(o) == "table" and type(o.hook) == "string" and type(o.event) == "table" then
        st.outbox[#st.outbox + 1] = o
      end
    end
  end
  return st
end
M.load = load_state

--- Writes a watch state file atomically.
---@param path string
---@param st table the state
---@return boolean|nil ok
---@return table|nil err an error object (kind io)
local function save_state(path, st)
  return spool.write(path, {
    version = 1,
    saved_at = rfc3339(os.time()),
    alerts = st.alerts,
    outbox = json.array(st.outbox),
    runs = st.runs,
  })
end
M.save = save_state
return M
