-- kpiwatch.alert.runs: following run tests for watch{run_tests = {...}}.
--
-- One cycle per run test costs, in the steady state, one request (the
-- newest page of its executions list) plus one cheap status read per
-- running execution that is no longer on that page, plus one KPIs request
-- per execution that completed since the last cycle:
--
--   * the list is read newest first and only until an execution already
--     known to be over (completed, failed, cancelled): older pages are
--     read only when a whole page is new;
--   * executions in flight (pending, running, evaluating, cancelling) are
--     followed: by the list while they are on its first page, then by the
--     status read (GET /test-executions/{id}/?limit=1);
--   * KPIs are fetched once, when an execution is completed, never while
--     its KPIs are partial and never again after (they cannot change);
--   * an execution that ended failed or cancelled has no KPIs to judge:
--     its on_status rules are evaluated with its error_reason.
--
-- What is known persists in the watch state (state.runs[run_test]), so a
-- restart neither judges an execution twice nor misses one that finished
-- while the watch was down (it is still known as running, or it is new).
--
-- The first time a run test is seen (no state), its executions that are
-- already over are taken as known without being judged: a watch alerts on
-- the runs that end after it started following the run test.

local errors = require "kpiwatch.errors"
local state = require "kpiwatch.alert.state"

local M = {}

local type, ipairs, pcall = type, ipairs, pcall

--- Executions asked for per list request.
M.PAGE = 10
--- Most executions read from the list in one cycle (a run test that
--- started more runs than this between two cycles is caught up over the
--- next cycles, newest first).
M.MAX_LIST = 50
--- Known executions kept per run test in the state (the oldest that are
--- over are forgotten first: the list stops at the newest known ones).
M.MAX_KNOWN = 200

local TERMINAL = { completed = true, failed = true, cancelled = true }

-- "2026-11-30T21:05:00Z" (or with an offset, or fractions) -> Unix time, or nil.
local iso_epoch = require("kpiwatch.time").parse_iso8601

local function remember(rs, id, status)
  if rs.known[id] == nil then rs.order[#rs.order + 1] = id end
  rs.known[id] = status
end

-- Forget the oldest executions that are over beyond MAX_KNOWN.
local function prune(rs)
  if #rs.order <= M.MAX_KNOWN then return end
  local keep, drop = {}, #rs.order - M.MAX_KNOWN
  for _, id in ipairs(rs.order) do
    if drop > 0 and TERMINAL[rs.known[id]] then
      rs.known[id] = nil
      drop = drop - 1
    else
      keep[#keep + 1] = id
    end
  end
  rs.order = keep
end

-- The newest executions, newest first, down to (without) the first one
-- known to be over: pages are read only while they hold nothing known, at
-- most MAX_LIST executions. A run test seen for the first time: its
-- first page.
local function newest(kpis, rt, rs)
  if not rs then return kpis.executions(rt, { limit = M.PAGE, page_size = M.PAGE }) end
  return kpis.executions(rt, { limit = M.MAX_LIST, page_size = M.PAGE,
    stop = function(e) return TERMINAL[rs.known[e.id]] == true end })
end

local function subject_of(rt)
  return "run-test:" .. rt
end

-- follow(kpis, st, rt, now, items, failed): one cycle of one run test.
local function follow(kpis, st, rt, now, items, failed)
  local rs = st.runs[rt]
  local first = rs == nil
  -- a name is resolved once (get-id-by-name), then kept with the state
  local rt_id = rs and rs.id
  if not rt_id then rt_id = kpis.is_uuid(rt) and rt:lower() or kpis.run_test_id(rt) end
  local list = newest(kpis, rt_id, rs)
  if first then
    rs = { known = {}, order = {}, first_seen = now }
    st.runs[rt] = rs
  end
  rs.id = rt_id
  local subject = subject_of(rt)
  local ended = {} -- executions that are over now, newest first

  local function over(e)
    ended[#ended + 1] = e
  end

  local seen_in_list = {}
  for _, e in ipairs(list) do
    local was = rs.known[e.id]
    seen_in_list[e.id] = true
    if first then
      remember(rs, e.id, e.status)
      if e.status == "completed" and not rs.last_completed then
        local t0 = iso_epoch(e.start_time)
        rs.last_completed = t0 and (t0 + (tonumber(e.duration) or 0)) or now
      end
    elseif TERMINAL[was] then
      break -- everything older is known (the list stops before it anyway)
    elseif TERMINAL[e.status] then
      over(e)
    else
      remember(rs, e.id, e.status)
    end
  end

  -- executions in flight that the list no longer shows: the cheap status
  -- read; completed ones whose KPIs could not be fetched: again
  local stragglers = {}
  for _, id in ipairs(rs.order) do
    local s = rs.known[id]
    if not TERMINAL[s] and not seen_in_list[id] then stragglers[#stragglers + 1] = id end
  end
  for _, id in ipairs(stragglers) do
    if rs.known[id] == "kpis_pending" then
      over({ id = id, status = "completed" })
    else
      local ok, e = pcall(kpis.execution, id)
      if not ok then
        if not errors.is(e) then error(e, 0) end
        failed[id] = e
      elseif TERMINAL[e.status] then
        over(e)
      else
        remember(rs, id, e.status)
      end
    end
  end

  -- judge what ended, oldest first, so that the run test's alerts end on
  -- its newest execution
  for i = #ended, 1, -1 do
    local e = ended[i]
    local ctx = { execution_id = e.id, run_test = rt, status = e.status, subject = subject,
      error_reason = type(e.error_reason) == "string" and e.error_reason or nil }
    if e.status == "completed" then
      local ok, k = pcall(kpis.get, e.id)
      if ok then
        -- completed KPIs are final: kept in the history (best effort: a
        -- history problem never stops a watch)
        require("kpiwatch.history.fetch").record(k, { execution_id = e.id, run_test = rt, status = "completed",
          start_time = e.start_time })
        items[#items + 1] = state.item(k, ctx)
        remember(rs, e.id, "completed")
        rs.last_completed = now
      else
        if not errors.is(k) then error(k, 0) end
        failed[e.id] = k
        remember(rs, e.id, "kpis_pending")
      end
    else
      items[#items + 1] = state.item(nil, ctx)
      remember(rs, e.id, e.status)
    end
  end
  -- the run test itself, for stale rules
  items[#items + 1] = state.item(nil, { run_test = rt, subject = subject,
    stale_age = now - (rs.last_completed or rs.first_seen or now) })
  prune(rs)
end

--- cycle(st, run_tests, now) -> items for Registry:step, the keep set (the
--- run tests' alert subjects) and the failures ({[id or "run test X"] =
--- error}). Advances st.runs in place.
---@param st table the watch state
---@param run_tests string[] run test ids or names
---@param now number the watch clock (Unix time)
---@return table items
---@return table keep
---@return table failed
function M.cycle(st, run_tests, now)
  local kpis = require "kpiwatch.kpis"
  st.runs = st.runs or {}
  local items, keep, failed = {}, {}, {}
  for _, rt in ipairs(run_tests) do
    keep[subject_of(rt)] = true
    local ok, err = pcall(follow, kpis, st, rt, now, items, failed)
    if not ok then
      if not errors.is(err) then error(err, 0) end
      failed["run test " .. rt] = err
    end
  end
  return items, keep, failed
end

return M
