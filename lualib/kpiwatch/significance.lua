-- kpiwatch.significance: `--significance ALPHA` and `--min-calls N` on top
-- of the --max-drop / --max-rise checks of kpiwatch.requirement, and the
-- precision warnings for thresholds finer than the server rounds to.
--
-- A limit check (requirement.compare) says whether a metric moved more than
-- allowed. With a significance level, a check that moved too far fails only
-- when the move is also statistically significant; otherwise it passes with
-- a note saying so. What is tested:
--   * avg_score: the per-call overall_score values of both sides (the
--     execution detail endpoint), Welch's t-test, one-sided in the bad
--     direction. The server's avg_score is rounded to one decimal, so the
--     check is judged on the exact means of those scores; the server's
--     values stay in the report beside them.
--   * rates (failure_rate = failed_calls / total_calls,
--     calls_connected_percentage = connected_calls / calls_attempted): the
--     two-proportion z-test on the counts.
-- Other metrics have no per-call sample here: their checks stay as they
-- are, with a note that significance was not tested.
-- --min-calls N: a side with fewer calls is "insufficient data", a no_data
-- check, which fails the verdict like any missing data (never a pass).
--
-- A median:N baseline has no calls of its own: the caller pools the
-- per-call scores and the counts of the N executions it took the median of.

local stats = require "kpiwatch.stats"
local model = require "kpiwatch.model"

local M = {}

local format, abs = string.format, math.abs
local fmt = model.format_value

-- rate metric -> its numerator and denominator fields, and the scale of
-- the value (calls_connected_percentage is a percentage)
M.RATES = {
  failure_rate = { num = "failed_calls", den = "total_calls", scale = 1 },
  calls_connected_percentage = { num = "connected_calls", den = "calls_attempted", scale = 100 },
}

-- The precision the server rounds each field to (FIELD-NOTES, "How the
-- KPIs are computed"): averages of scores one decimal, latencies whole ms,
-- interruption rates two decimals, counts and wpm one decimal; eval
-- averages are percentages with one decimal.
M.PRECISION = {
  avg_score = 0.1,
  avg_response = 1,
  avg_agent_latency = 1,
  avg_stop_time_after_interruption = 1,
  avg_chat_latency_ms = 1,
  avg_user_interruption_rate = 0.01,
  avg_ai_interruption_rate = 0.01,
  avg_user_interruption_count = 0.1,
  avg_ai_interruption_count = 0.1,
  avg_user_wpm = 0.1,
  avg_bot_wpm = 0.1,
  avg_turn_count = 0.1,
}
M.EVAL_PRECISION = 0.1

local function decimals(text)
  local frac = tostring(text):match("^[^eE]*%.(%d+)")
  return frac and #frac or 0
end

local function precision_of(target)
  if target.kind == "eval" or target.kind == "glob" then return M.EVAL_PRECISION, "eval averages" end
  local f = model.FIELDS[target.name]
  local name = f and f.snake or target.name
  local p = M.PRECISION[name]
  if p then return p, name end
  return nil
end

local function step_text(p)
  if p >= 1 then return "whole numbers" end
  local d = decimals(format("%g", p))
  return d == 1 and "one decimal" or (d .. " decimals")
end

---Warnings for --require thresholds and --max-drop/--max-rise amounts finer than the server's rounding of that field.
---@param reqs table[] parsed requirements (requirement.parse)
---@param limits table[] parsed limits (requirement.parse_limit)
---@param opts? {per_call?: boolean} true when avg_score is judged on per-call scores (--significance)
---@return string[] warnings
function M.precision_warnings(reqs, limits, opts)
  opts = opts or {}
  local out = {}
  local pd = function(p) return decimals(format("%g", p)) end
  for _, r in ipairs(reqs or {}) do
    local p, name = precision_of(r.target)
    if p and decimals(r.threshold_text) > pd(p) then
      out[#out + 1] = format("%s: the server rounds %s to %s, so %s cannot tell values either side of %s apart%s",
        r.text, name, step_text(p), r.text, r.threshold_text,
        name == "avg_score" and " (kpiwatch gate --significance judges the exact per-call mean)" or "")
    end
  end
  for _, l in ipairs(limits or {}) do
    local p, name = precision_of(l.target)
    if p and not l.percent and (decimals(l.amount_text) > pd(p) or (l.amount > 0 and l.amount < p)) then
      if not (name == "avg_score" and opts.per_call) then
        out[#out + 1] = format("--max-%s %s: the server rounds %s to %s, finer than the %s allowed%s",
          l.direction, l.text, name, step_text(p), l.amount_text,
          name == "avg_score" and " (add --significance to judge the exact per-call means)" or "")
      end
    end
  end
  return out
end

local function base_name(metric)
  local f = model.FIELDS[metric]
  return f and f.snake or metric
end

-- count(side, field): a count from the side's counts table or KPI object
local function count(side, field)
  local v = side.counts and side.counts[field]
  if v == nil and side.kpi then v = model.get(side.kpi, field) end
  return type(v) == "number" and v or nil
end

local function insufficient(c, why)
  c.status = "no_data"
  c.stats_text = nil
  c.insufficient = true
  c.message = "insufficient data: " .. why
  return c
end

local function pct(p)
  if p < 1e-4 then return format("%.1e", p) end
  return format("%.4f", p):gsub("0+$", ""):gsub("%.$", "")
end

local function verdict(c, r, alpha)
  c.p, c.ci, c.test, c.alpha = r.p, r.ci, r.test, alpha
  local moved_too_far = c.status == "fail"
  local significant = r.p < alpha
  c.significant = significant
  local stat = format("p=%s, %d%% CI of the change [%s, %s]", pct(r.p), math.floor((1 - alpha) * 100 + 0.5),
    fmt(tonumber(format("%.4g", r.ci[1]))), fmt(tonumber(format("%.4g", r.ci[2]))))
  c.stats_text = (c.stats_text and (c.stats_text .. "; ") or "") .. stat
    .. (moved_too_far and (significant and ", significant" or ", not significant: noise") or "")
  if moved_too_far and not significant then
    c.status = "pass"
    c.message = c.message .. format("; not significant at %s (%s): noise", fmt(alpha), stat)
  elseif moved_too_far then
    c.message = c.message .. format("; significant at %s (%s)", fmt(alpha), stat)
  else
    c.message = c.message .. format(" (%s)", stat)
  end
  return c
end

-- Re-judge the amount on exact values (the move and what is allowed).
local function rejudge(c, limit, cur, base)
  local delta = cur - base
  c.value, c.baseline, c.delta = cur, base, delta
  local moved = limit.direction == "drop" and -delta or delta
  local allowed = limit.percent and abs(base) * limit.amount / 100 or limit.amount
  c.allowed = allowed
  local verb = limit.direction == "drop" and "fell" or "rose"
  local sign = delta >= 0 and "+" or ""
  if moved - allowed > 1e-9 * math.max(1, abs(cur), abs(base)) then
    c.status = "fail"
    c.message = format("%s %s from %s to %s (%s%s), more than the %s allowed", c.metric, verb, fmt(base), fmt(cur),
      sign, fmt(delta), limit.amount_text)
  else
    c.status = "pass"
    c.message = format("%s went from %s to %s (%s%s), within %s %s", c.metric, fmt(base), fmt(cur), sign, fmt(delta),
      limit.direction, limit.amount_text)
  end
end

local function mean(xs)
  local s = 0
  for i = 1, #xs do s = s + xs[i] end
  return s / #xs
end

---Refines a --max-drop/--max-rise check with a significance test (see the module comment).
---@param c table a check from requirement.compare (changed in place)
---@param limit table its parsed limit
---@param cur {kpi?: table, scores?: number[], counts?: table} the judged execution
---@param base {kpi?: table, scores?: number[], counts?: table} the baseline (pooled for median:N)
---@param opts {alpha?: number, min_calls?: integer}
---@return table c
function M.refine(c, limit, cur, base, opts)
  if c.status ~= "pass" and c.status ~= "fail" then return c end
  local alpha = opts.alpha
  local metric = base_name(c.metric)
  local alternative = limit.direction == "drop" and "less" or "greater"
  if metric == "avg_score" then
    local a, b = base.scores, cur.scores
    if not a or not b then
      c.message = c.message .. " (per-call scores unavailable: significance not tested)"
      return c
    end
    c.server_value, c.server_baseline = c.value, c.baseline
    c.n, c.n_base = #b, #a
    if opts.min_calls and (#b < opts.min_calls or #a < opts.min_calls) then
      return insufficient(c, format("%d and %d scored calls, fewer than --min-calls %d", #b, #a, opts.min_calls))
    end
    if #a < 2 or #b < 2 then
      return insufficient(c, format("%d and %d scored calls: a test needs at least 2 on each side", #b, #a))
    end
    rejudge(c, limit, mean(b), mean(a))
    c.message = c.message .. format(" (exact per-call means; the server says %s and %s)", fmt(c.server_baseline),
      fmt(c.server_value))
    c.stats_text = format("exact means of %d and %d calls (server %s -> %s)", #a, #b, fmt(c.server_baseline),
      fmt(c.server_value))
    if not alpha then return c end
    local r = stats.welch(a, b, { alternative = alternative })
    -- one-sided p (did it move the bad way?), two-sided interval
    r.ci = stats.welch(a, b, { confidence = 1 - alpha }).ci
    return verdict(c, r, alpha)
  end
  local rate = M.RATES[metric]
  if rate then
    local xa, na = count(base, rate.num), count(base, rate.den)
    local xb, nb = count(cur, rate.num), count(cur, rate.den)
    if not (xa and na and xb and nb) then
      c.message = c.message .. " (call counts unavailable: significance not tested)"
      return c
    end
    c.n, c.n_base = nb, na
    if opts.min_calls and (nb < opts.min_calls or na < opts.min_calls) then
      return insufficient(c, format("%d and %d calls, fewer than --min-calls %d", nb, na, opts.min_calls))
    end
    if not alpha then return c end
    if na < 1 or nb < 1 then return insufficient(c, "no calls on one side") end
    local r = stats.two_proportions(xa, na, xb, nb, { alternative = alternative })
    -- one-sided p, two-sided interval, in the metric's own unit
    local ci = stats.two_proportions(xa, na, xb, nb, { confidence = 1 - alpha }).ci
    r.ci = { ci[1] * rate.scale, ci[2] * rate.scale }
    return verdict(c, r, alpha)
  end
  if alpha then c.message = c.message .. " (no per-call sample for this metric: significance not tested)" end
  if opts.min_calls then
    local n, nb = count(cur, "total_calls"), count(base, "total_calls")
    if n and nb and (n < opts.min_calls or nb < opts.min_calls) then
      return insufficient(c, format("%d and %d calls, fewer than --min-calls %d", n, nb, opts.min_calls))
    end
  end
  return c
end

---Parses --significance ALPHA (0 < ALPHA < 1).
---@param text string
---@return number|nil alpha, string|nil message
function M.parse_alpha(text)
  local a = tonumber(text)
  if not a or a <= 0 or a >= 1 then
    return nil, "--significance needs a level between 0 and 1 (e.g. 0.05), got '" .. tostring(text) .. "'"
  end
  return a
end

return M
