-- kpiwatch.stats: the significance tests behind `--significance`.
--
-- Per-call scores (overall_score of each call of two executions) are
-- compared with Welch's t-test, not Mann-Whitney: the question a gate asks
-- is about the mean (avg_score is the mean of those scores), Welch's test
-- comes with a confidence interval for the difference of means in the same
-- unit as the threshold, and it does not assume equal variances (a
-- regression often changes the spread too). Scores are bounded and often
-- discrete (1.0/0.0 success evaluations), so the t approximation leans on
-- sample size: that is what --min-calls is for.
--
-- Rates (failed_calls / total_calls) are compared with the two-proportion
-- z-test: pooled proportion for the statistic, unpooled (Wald) standard
-- error for the confidence interval, as statistics texts and statsmodels'
-- defaults do.
--
-- The distributions: Student's t CDF through the regularized incomplete
-- beta function (continued fraction evaluated with the modified Lentz
-- method, Numerical Recipes 6.4), the normal CDF through the regularized
-- incomplete gamma function (erf(x) = P(1/2, x^2), series and continued
-- fraction, NR 6.2), ln Gamma by Stirling's series after shifting x up to
-- 15 (Lanczos' common 9-term form is off by 1e-8, too much for p-values). Quantiles are found by bisection on the CDFs.
-- spec/e2e/test_stats_scipy.py checks all of it against SciPy.

---@brief
--- Welch's t-test and the two-proportion z-test with p-values and confidence
--- intervals, and the distributions under them (t, normal, incomplete beta
--- and gamma), checked against SciPy.

local M = {}

local exp, log, sqrt, abs, huge, pi = math.exp, math.log, math.sqrt, math.abs, math.huge, math.pi

local EPS = 1e-15
local FPMIN = 1e-300
local MAXIT = 1000

-- Stirling's series terms B_2k / (2k (2k-1)), k = 1..8
local STIRLING = { 1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156, -3617 / 122400 }

---ln Gamma(x) for x > 0.
---@param x number
---@return number
function M.lgamma(x)
  if x < 0.5 then
    -- reflection: Gamma(x) Gamma(1-x) = pi / sin(pi x)
    return log(pi / abs(math.sin(pi * x))) - M.lgamma(1 - x)
  end
  -- shift up to x >= 15, where the series' next term is below 1e-19
  local shift = 0
  while x < 15 do
    shift = shift + log(x)
    x = x + 1
  end
  local inv, inv2 = 1 / x, 1 / (x * x)
  local sum, pow = 0, inv
  for i = 1, #STIRLING do
    sum = sum + STIRLING[i] * pow
    pow = pow * inv2
  end
  return (x - 0.5) * log(x) - x + 0.5 * log(2 * pi) + sum - shift
end

-- Continued fraction of the incomplete beta function (modified Lentz).
local function betacf(a, b, x)
  local qab, qap, qam = a + b, a + 1, a - 1
  local c, d = 1, 1 - qab * x / qap
  if abs(d) < FPMIN then d = FPMIN end
  d = 1 / d
  local h = d
  for m = 1, MAXIT do
    local m2 = 2 * m
    local aa = m * (b - m) * x / ((qam + m2) * (a + m2))
    d = 1 + aa * d
    if abs(d) < FPMIN then d = FPMIN end
    c = 1 + aa / c
    if abs(c) < FPMIN then c = FPMIN end
    d = 1 / d
    h = h * d * c
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
    d = 1 + aa * d
    if abs(d) < FPMIN then d = FPMIN end
    c = 1 + aa / c
    if abs(c) < FPMIN then c = FPMIN end
    d = 1 / d
    local del = d * c
    h = h * del
    if abs(del - 1) < EPS then return h end
  end
  return h -- converged as far as double precision allows
end

---The regularized incomplete beta function I_x(a, b).
---@param x number in [0, 1]
---@param a number > 0
---@param b number > 0
---@return number
function M.betainc(x, a, b)
  if x <= 0 then return 0 end
  if x >= 1 then return 1 end
  local lbt = M.lgamma(a + b) - M.lgamma(a) - M.lgamma(b) + a * log(x) + b * log(1 - x)
  -- the continued fraction converges fast for x < (a+1)/(a+b+2); use the
  -- symmetry I_x(a,b) = 1 - I_{1-x}(b,a) on the other side
  if x < (a + 1) / (a + b + 2) then return exp(lbt) * betacf(a, b, x) / a end
  return 1 - exp(lbt) * betacf(b, a, 1 - x) / b
end

-- P(a, x) by its series (x < a + 1) and Q(a, x) by its continued fraction.
local function gser(a, x)
  local ap, sum = a, 1 / a
  local del = sum
  for _ = 1, MAXIT do
    ap = ap + 1
    del = del * x / ap
    sum = sum + del
    if abs(del) < abs(sum) * EPS then break end
  end
  return sum * exp(-x + a * log(x) - M.lgamma(a))
end

local function gcf(a, x)
  local b = x + 1 - a
  local c, d = 1 / FPMIN, 1 / b
  local h = d
  for i = 1, MAXIT do
    local an = -i * (i - a)
    b = b + 2
    d = an * d + b
    if abs(d) < FPMIN then d = FPMIN end
    c = b + an / c
    if abs(c) < FPMIN then c = FPMIN end
    d = 1 / d
    local del = d * c
    h = h * del
    if abs(del - 1) < EPS then break end
  end
  return exp(-x + a * log(x) - M.lgamma(a)) * h
end

---The regularized lower incomplete gamma function P(a, x) and its complement Q(a, x).
---@param a number > 0
---@param x number >= 0
---@return number P, number Q
function M.gammainc(a, x)
  if x <= 0 then return 0, 1 end
  if x < a + 1 then
    local p = gser(a, x)
    return p, 1 - p
  end
  local q = gcf(a, x)
  return 1 - q, q
end

---The standard normal CDF.
---@param z number
---@return number
function M.norm_cdf(z)
  if z ~= z then return z end
  -- Phi(z) = erfc(-z/sqrt2)/2; for z < 0 that is Q(1/2, z^2/2)/2, which
  -- keeps tail precision (no 1 - p cancellation)
  local _, q = M.gammainc(0.5, z * z / 2)
  if z < 0 then return q / 2 end
  return 1 - q / 2
end

---The standard normal survival function 1 - CDF, precise in the upper tail.
---@param z number
---@return number
function M.norm_sf(z)
  return M.norm_cdf(-z)
end

---Student's t CDF with df degrees of freedom (df may be fractional).
---@param t number
---@param df number > 0
---@return number
function M.t_cdf(t, df)
  if t ~= t then return t end
  if t == huge then return 1 end
  if t == -huge then return 0 end
  local t2 = t * t
  if t2 < df then
    -- near the centre df/(df+t^2) rounds to 1 and the tail loses its
    -- digits: use the complementary form, 1 - 2 tail = I_{t^2/(df+t^2)}(1/2, df/2)
    local c = 0.5 * M.betainc(t2 / (df + t2), 0.5, df / 2)
    if t > 0 then return 0.5 + c end
    return 0.5 - c
  end
  local tail = 0.5 * M.betainc(df / (df + t2), df / 2, 0.5)
  if t > 0 then return 1 - tail end
  return tail
end

---Student's t survival function 1 - CDF.
---@param t number
---@param df number
---@return number
function M.t_sf(t, df)
  return M.t_cdf(-t, df)
end

-- The x where cdf(x) = p, by bisection (cdf increasing).
local function quantile(cdf, p)
  if p <= 0 then return -huge end
  if p >= 1 then return huge end
  local lo, hi = -1, 1
  while cdf(lo) > p do lo = lo * 2 end
  while cdf(hi) < p do hi = hi * 2 end
  for _ = 1, 200 do
    local mid = (lo + hi) / 2
    if mid == lo or mid == hi then break end
    if cdf(mid) < p then lo = mid else hi = mid end
  end
  return (lo + hi) / 2
end

---The standard normal quantile (inverse CDF).
---@param p number
---@return number
function M.norm_ppf(p)
  return quantile(M.norm_cdf, p)
end

---Student's t quantile (inverse CDF).
---@param p number
---@param df number
---@return number
function M.t_ppf(p, df)
  return quantile(function(t) return M.t_cdf(t, df) end, p)
end

---Mean and sample variance (n - 1) of a list.
---@param xs number[]
---@return number mean, number variance, integer n
function M.mean_var(xs)
  local n = #xs
  local sum = 0
  for i = 1, n do sum = sum + xs[i] end
  local mean = n > 0 and sum / n or 0 / 0
  local ss = 0
  for i = 1, n do
    local d = xs[i] - mean
    ss = ss + d * d
  end
  return mean, n > 1 and ss / (n - 1) or 0 / 0, n
end

local function p_of(alternative, cdf_at_stat, sf_at_stat)
  if alternative == "less" then return cdf_at_stat end
  if alternative == "greater" then return sf_at_stat end
  return math.min(1, 2 * math.min(cdf_at_stat, sf_at_stat))
end

local function check_alt(alternative)
  alternative = alternative or "two-sided"
  if alternative ~= "two-sided" and alternative ~= "less" and alternative ~= "greater" then
    error("alternative must be 'two-sided', 'less' or 'greater'", 3)
  end
  return alternative
end

---Welch's two-sample t-test of mean(b) - mean(a) (b the new sample, a the baseline), as scipy.stats.ttest_ind(b, a, equal_var=False).
---@param a number[] baseline sample
---@param b number[] new sample
---@param opts? {alternative?: "two-sided"|"less"|"greater", confidence?: number}
---@return table result {mean_a=, mean_b=, n_a=, n_b=, delta=, t=, df=, p=, ci={lo, hi}, confidence=}
function M.welch(a, b, opts)
  opts = opts or {}
  local alternative = check_alt(opts.alternative)
  local conf = opts.confidence or 0.95
  local ma, va, na = M.mean_var(a)
  local mb, vb, nb = M.mean_var(b)
  local r = { test = "welch", mean_a = ma, mean_b = mb, n_a = na, n_b = nb, delta = mb - ma, confidence = conf,
    alternative = alternative }
  if na < 2 or nb < 2 then
    r.insufficient = true
    return r
  end
  local sa, sb = va / na, vb / nb
  local se = sqrt(sa + sb)
  r.se = se
  if se == 0 then
    -- both samples constant: a difference is certain, none is nothing
    r.t = r.delta == 0 and 0 or (r.delta > 0 and huge or -huge)
    r.df = na + nb - 2
    r.p = p_of(alternative, r.delta < 0 and 0 or 1, r.delta > 0 and 0 or 1)
    if r.delta == 0 then r.p = 1 end
    r.ci = { r.delta, r.delta }
    return r
  end
  local df = (sa + sb) ^ 2 / (sa * sa / (na - 1) + sb * sb / (nb - 1))
  local t = r.delta / se
  r.t, r.df = t, df
  r.p = p_of(alternative, M.t_cdf(t, df), M.t_sf(t, df))
  local lo, hi
  if alternative == "two-sided" then
    local q = M.t_ppf(1 - (1 - conf) / 2, df)
    lo, hi = r.delta - q * se, r.delta + q * se
  elseif alternative == "less" then
    lo, hi = -huge, r.delta + M.t_ppf(conf, df) * se
  else
    lo, hi = r.delta - M.t_ppf(conf, df) * se, huge
  end
  r.ci = { lo, hi }
  return r
end

---Two-proportion z-test of p_b - p_a, with x successes (e.g. failed calls) out of n.
---@param xa integer baseline count
---@param na integer baseline total
---@param xb integer new count
---@param nb integer new total
---@param opts? {alternative?: "two-sided"|"less"|"greater", confidence?: number}
---@return table result {p_a=, p_b=, n_a=, n_b=, delta=, z=, p=, ci={lo, hi}, confidence=}
function M.two_proportions(xa, na, xb, nb, opts)
  opts = opts or {}
  local alternative = check_alt(opts.alternative)
  local conf = opts.confidence or 0.95
  local r = { test = "two-proportion", n_a = na, n_b = nb, confidence = conf, alternative = alternative }
  if na < 1 or nb < 1 then
    r.insufficient = true
    return r
  end
  local pa, pb = xa / na, xb / nb
  r.p_a, r.p_b, r.delta = pa, pb, pb - pa
  local pool = (xa + xb) / (na + nb)
  local se0 = sqrt(pool * (1 - pool) * (1 / na + 1 / nb))
  if se0 == 0 then
    r.z, r.p = 0, 1
  else
    r.z = r.delta / se0
    r.p = p_of(alternative, M.norm_cdf(r.z), M.norm_sf(r.z))
  end
  local se = sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
  r.se = se
  if alternative == "two-sided" then
    local q = M.norm_ppf(1 - (1 - conf) / 2)
    r.ci = { r.delta - q * se, r.delta + q * se }
  elseif alternative == "less" then
    r.ci = { -huge, r.delta + M.norm_ppf(conf) * se }
  else
    r.ci = { r.delta - M.norm_ppf(conf) * se, huge }
  end
  return r
end

return M
