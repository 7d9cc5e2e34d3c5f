-- kpiwatch.history.fetch: what gate, run, get, watch and scripts do with the
-- history: record what they fetched, `--baseline median:N`, and the per-call scores
-- `--significance` needs. History problems never fail a judgement: they
-- are warnings (a read-only or locked file must not break a CI gate).

local history = require "kpiwatch.history"
local model = require "kpiwatch.model"

local M = {}

-- The counts the significance tests pool over a median baseline.
local COUNTS = { "total_calls", "failed_calls", "connected_calls", "calls_attempted" }

local function etext(err)
  if type(err) == "table" and err.message then return err.message end
  return tostring(err)
end

local function store_or_nil()
  local ok, s = pcall(history.default)
  if ok and s then return s end
  return nil
end

---Records quietly: returns nil, or a one-line warning when the history could not be written.
---@param k table KPI object
---@param info table as Store:record's
---@return string|nil warning
function M.record(k, info)
  local path = history.path()
  if not path then return nil end
  local ok, err = pcall(function()
    local s, msg = history.default()
    if not s then error(msg, 0) end
    s:record(k, info)
  end)
  if not ok then return "history not recorded: " .. etext(err) end
  return nil
end

---The run test's id: a UUID as it is, a name resolved with one request (raises API errors).
---@param run_test string
---@return string
function M.run_test_id(run_test)
  return require("kpiwatch.execution").resolve_run_test(run_test)
end

-- kpi_of(store, id, run_test, e) -> KPI object of a completed execution:
-- from the history when stored, else fetched (and recorded)
local function kpi_of(store, id, run_test, e, warnings)
  if store then
    local k = store:kpi(id)
    if k then return k end
  end
  local k = require("kpiwatch.kpis").get(id)
  if store then
    local ok, err = pcall(store.record, store, k, { execution_id = id, run_test = run_test, status = "completed",
      start_time = e and e.start_time })
    if not ok then warnings[#warnings + 1] = "history not recorded: " .. etext(err) end
  end
  return k
end

---The per-call overall_score values of a completed execution: from the history when stored, else fetched (all pages) and recorded.
---@param id string
---@param run_test? string
---@param warnings? string[] where history problems are appended
---@return number[] scores
function M.scores(id, run_test, warnings)
  warnings = warnings or {}
  local store = store_or_nil()
  if store then
    local got = store:calls(id)
    if got then return got end
  end
  local calls, status = require("kpiwatch.kpis").calls(id)
  local out = {}
  for _, c in ipairs(calls) do
    local s = type(c) == "table" and c.overall_score
    if type(s) == "number" and s == s then out[#out + 1] = s end
  end
  if store and status == "completed" and store:has(id) then
    local ok, err = pcall(store.record, store, {}, { execution_id = id, run_test = run_test, status = status,
      calls = calls })
    if not ok then warnings[#warnings + 1] = "history not recorded: " .. etext(err) end
  end
  return out
end

---The baseline of `--baseline median:N`: the median of every metric over the N newest
---completed executions of the run test before `id` (imported into the history when missing).
---@param run_test string run test id
---@param id string the judged execution (left out)
---@param n integer
---@param opts? {scores?: boolean} also pool the per-call scores of those executions
---@return table|nil base KPI object of medians (nil when there is no earlier completed execution)
---@return table info {ids=, counts=, scores=, warnings=, note=}
function M.median_baseline(run_test, id, n, opts)
  opts = opts or {}
  local kpis = require "kpiwatch.kpis"
  local info = { ids = {}, counts = {}, warnings = {} }
  local list = kpis.executions(run_test)
  -- newest first: the completed ones listed after `id` started before it
  local seen = false
  for _, e in ipairs(list) do
    if e.id == id then
      seen = true
      info.start_time = e.start_time -- the detail endpoint has none
    end
  end
  local picked, after = {}, not seen
  for _, e in ipairs(list) do
    if e.id == id then
      after = true
    elseif after and e.status == "completed" and #picked < n then
      picked[#picked + 1] = e
    end
  end
  if #picked == 0 then
    info.note = "run test has no completed execution before " .. id
    return nil, info
  end
  local store = store_or_nil()
  local per_metric = {}
  for _, e in ipairs(picked) do
    info.ids[#info.ids + 1] = e.id
    local k = kpi_of(store, e.id, run_test, e, info.warnings)
    for name, v in pairs(history.metrics_of(k)) do
      local l = per_metric[name]
      if not l then
        l = {}
        per_metric[name] = l
      end
      l[#l + 1] = v
    end
    for _, f in ipairs(COUNTS) do
      local v = model.get(k, f)
      if type(v) == "number" then info.counts[f] = (info.counts[f] or 0) + v end
    end
  end
  local body = {}
  for name, l in pairs(per_metric) do body[name] = history.median(l) end
  if opts.scores then
    local pooled = {}
    for _, e in ipairs(picked) do
      for _, s in ipairs(M.scores(e.id, run_test, info.warnings)) do pooled[#pooled + 1] = s end
    end
    info.scores = pooled
  end
  info.n = #picked
  return model.new(body), info
end

---The baseline of an alert rule's `vs = "median:N"`: the median of the metric over the run test's last N stored executions, the judged one left out.
---@param n integer
---@param name string the metric (a field, or an eval name when is_eval)
---@param is_eval boolean
---@param run_test? string the run test id (watch{run_tests=} knows it)
---@param exclude? string the judged execution's id
---@return number|nil median, string|nil why there is none
function M.rule_baseline(n, name, is_eval, run_test, exclude)
  if not run_test then return nil, "vs = \"median:" .. n .. "\" needs the run test (watch{run_tests=...})" end
  local store = store_or_nil()
  if not store then return nil, "vs = \"median:" .. n .. "\" needs the history file (history is off)" end
  local key = is_eval and ("avg_" .. name) or (history.metric_key(name))
  local ok, med, s = pcall(store.median, store, run_test, key, n, exclude)
  if not ok then return nil, etext(med) end
  if not med then return nil, "no earlier execution of the run test in the history" end
  return med, s
end

return M
