-- fuzz_json_kpi: a response body, as the server could send it, through
-- everything that reads one: json.decode (runtime/json.c over lua-cjson),
-- kpiwatch.model (parse, new, every accessor, the summary, normalize and
-- the JSON encoding), the gate's requirements, alert rules and summary
-- templates evaluated over it.
--
-- Documented outcomes: json.decode returns a value or raises "invalid
-- JSON: ..."; model.parse returns a KPI object or (nil, protocol error);
-- everything else returns without raising on any decoded object.

local model = require "kpiwatch.model"
local requirement = require "kpiwatch.requirement"
local alert = require "kpiwatch.alert"
local template = require "kpiwatch.template"
local check, show = fuzz.check, fuzz.show

local ID = "c0ffee00-0000-4000-8000-000000000001"

local REQS = {}
for _, text in ipairs({ "avg_score >= 0.8", "total_calls > 10", "eval:task_completion >= 80", "eval:* >= 50",
  "eval:is_[a-p]* != 3", "agentTalkPercentage < 90", "tone == 1" }) do
  REQS[#REQS + 1] = assert(requirement.parse(text))
end
local LIMITS = {
  assert(requirement.parse_limit("avg_score=0.05")),
  assert(requirement.parse_limit("eval:*=10%", "rise")),
}
local STATUS = fuzz.set({ "pass", "fail", "no_data", "skipped", "error" })

local rules = alert.registry()
rules:rule { name = "score", metric = "avg_score", below = 0.8, summary = "{metric} {value:.2f} {agent_type} {tone}" }
rules:rule { name = "evals", evals = "*", below = 50, summary = "{metric}={value} {scenario_graphs}" }
rules:rule { name = "calls", metric = "failed_calls", above = 3, labels = { t = "{total_calls:5d}" } }
rules:rule { name = "when", when = function(k) return k.connected_calls / k.total_calls < 0.9 end }

local TEMPLATES = { "{avg_score:.1f} {callsAttempted:d} {tone} {is_inbound} {execution_id:s}",
  "{scenario_graphs} {agent_type:>10s} {avg_response:e} {missing.field}" }

local baseline = fuzz.fixture_kpis()[1]

-- Every read-only operation over a KPI object.
local function exercise(k, what)
  check(model.is(k), "%s: not a KPI object", what)
  for _, name in ipairs(model.field_names()) do
    local _ = k[name]
    local _, present = model.get(k, name)
    check(type(present) == "boolean", "%s: get(%s) gave present=%s", what, name, show(present))
  end
  local evals = k:evals()
  check(type(evals) == "table", "%s: evals() is %s", what, type(evals))
  for _, name in ipairs(k:eval_names()) do
    check(type(name) == "string", "%s: eval name %s", what, show(name))
    model.eval(k, name)
  end
  local s = tostring(k)
  check(type(s) == "string" and s:find("^KPIs of execution"), "%s: tostring gave %s", what, show(s))
  local n = model.normalize(k)
  check(type(n) == "table", "%s: normalize gave %s", what, show(n))
  for key in pairs(k) do check(type(key) == "string", "%s: pairs gave key %s", what, show(key)) end
  k:fields()
  k:is_voice()
  local ok, line = pcall(model.encode_json, k)
  check(ok, "%s: encode_json raised %s", what, show(line))
  local ok2, back = pcall(json.decode, line)
  check(ok2 and type(back) == "table", "%s: encode_json gave JSON that does not decode: %s", what, show(back))

  -- A requirement on a field the body lacks only costs the did-you-mean's
  -- edit distances (slow under the coverage hook, and covered by the
  -- requirement target): test fields the body has, whatever their values.
  for _, req in ipairs(REQS) do
    if req.target.kind ~= "field" or k:has(req.target.name) then
      for _, c in ipairs(requirement.evaluate(req, k, { baseline = baseline })) do
        check(STATUS[c.status] and type(c.message) == "string", "%s: requirement %s gave %s", what, req.text,
          show(c.status))
      end
    end
  end
  for _, limit in ipairs(LIMITS) do
    if limit.target.kind ~= "field" or k:has(limit.target.name) then
      for _, c in ipairs(requirement.compare(limit, k, baseline)) do
        check(STATUS[c.status] and type(c.message) == "string", "%s: limit %s gave %s", what, limit.text,
          show(c.status))
      end
    end
  end

  local rep = rules:evaluate(k)
  check(type(rep) == "table", "%s: alert evaluate gave %s", what, show(rep))
  local lookup = alert._lookup_for({ rule = "r", metric = "avg_score", value = k.avg_score }, k)
  for _, tpl in ipairs(TEMPLATES) do
    check(type(template.render(tpl, lookup)) == "string", "%s: template gave no string", what)
  end
end

-- Deep equality of decoded values (json.null compares as itself).
local function same(a, b, depth)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or depth > 1100 then return false end
  for key, v in pairs(a) do
    if not same(v, b[key], depth + 1) then return false end
  end
  for key in pairs(b) do
    if a[key] == nil then return false end
  end
  return true
end

return function(text)
  -- any byte string survives encode then decode, as a value and as a key
  -- (runtime/json.c rewrites the text around cjson: "[]" inside strings)
  local doc = { text, { [text] = text }, json.array() }
  local okr, back = pcall(json.decode, json.encode(doc))
  check(okr and same(doc, back, 0), "json round trip of %s gave %s", show(text), show(back))
  check(getmetatable(back[3]) == json.array_mt, "an empty array lost its mark")

  local ok, body = pcall(json.decode, text)
  if not ok then
    check(type(body) == "string" and body:find("^invalid JSON"), "json.decode raised %s", show(body))
  end

  local k, err = model.parse(text, ID)
  if k then
    check(ok and type(body) == "table", "model.parse accepted a body json.decode refuses")
    check(k.execution_id == ID, "execution_id is %s", show(k.execution_id))
    exercise(k, "model.parse")
  else
    local good, why = fuzz.is_error(err, { protocol = true })
    check(good, "model.parse failed with %s: %s", why, show(err))
    check(fuzz.one_line(err.message), "model.parse message is not one line: %s", show(err.message))
  end

  if ok and type(body) == "table" then
    -- model.new over the same body as model.parse's: exercised once
    if not k then exercise(model.new(body, ID), "model.new") end
  elseif ok then
    local good, e = pcall(model.new, body, ID)
    check(not good and tostring(e):find("expected a table"), "model.new(%s) gave %s", type(body), show(e))
  end
end
