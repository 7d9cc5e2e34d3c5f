-- kpiwatch.cli.gate_history: the gate's (and run's) use of the history,
-- between fetching the KPIs and judging them: record the completed
-- execution, read the derived metrics (failure_rate), and gather the two
-- sides --significance and --min-calls test (kpiwatch.significance).

local history = require "kpiwatch.history"
local hg = require "kpiwatch.history.fetch"
local significance = require "kpiwatch.significance"

local M = {}

local function needs_scores(plan)
  if not (plan.significance or plan.min_calls) then return false end
  for _, l in ipairs(plan.limits) do
    if l.target.kind == "field" and (l.target.name == "avg_score") then return true end
  end
  return false
end

---After the fetch: records, and prepares both sides of the checks. Raises API errors (per-call scores).
---@param plan table the gate's plan
---@param id string the judged execution
---@param got table what the gate's fetch returned (exec, rid, median, median_info, base_id)
---@param kpi table KPI object of id
---@param base table|nil KPI object of the baseline execution
---@return table h {kpi=, base=, cur=, base_side=, warnings=}
function M.after_fetch(plan, id, got, kpi, base)
  local warnings = {}
  local exec = got.exec or {}
  local completed = exec.status == "completed"
  if completed then
    local w = hg.record(kpi, { execution_id = id, run_test = got.rid, status = "completed",
      start_time = exec.start_time or (got.median_info and got.median_info.start_time) })
    if w then warnings[#warnings + 1] = w end
  end
  local info = got.median_info
  if info then
    for _, w in ipairs(info.warnings) do warnings[#warnings + 1] = w end
    base = got.median
  end
  local h = { warnings = warnings, kpi = history.with_derived(kpi) }
  h.base = base and history.with_derived(base) or nil
  h.cur = { kpi = h.kpi }
  h.base_side = { kpi = h.base, counts = info and info.counts or nil }
  if h.base and needs_scores(plan) then
    if completed then h.cur.scores = hg.scores(id, got.rid, warnings) end
    if info then
      h.base_side.scores = info.scores
    elseif got.base_id then
      h.base_side.scores = hg.scores(got.base_id, got.rid, warnings)
    end
  end
  return h
end

---A --max-drop/--max-rise check with --significance and --min-calls applied.
---@param c table the check
---@param limit table its limit
---@param h table from after_fetch
---@param plan table
---@return table c
function M.refine(c, limit, h, plan)
  if not (plan.significance or plan.min_calls) or not h.base then return c end
  return significance.refine(c, limit, h.cur, h.base_side, { alpha = plan.significance, min_calls = plan.min_calls })
end

return M
