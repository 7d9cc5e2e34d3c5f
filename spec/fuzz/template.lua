-- fuzz_template: alert summary and label templates, rendered the way the
-- alert engine renders them: kpiwatch.template.render with the engine's
-- lookup (alert fields, then the KPI object's fields and eval metrics,
-- dotted paths into tables) over each fixture execution.
--
-- Documented: render never raises on any text and gives a string, with a
-- bounded amount of output per placeholder; names() lists placeholders.

local template = require "kpiwatch.template"
local alert = require "kpiwatch.alert"
local check, show = fuzz.check, fuzz.show

local kpis = fuzz.fixture_kpis()
local lookups = {}
for i, k in ipairs(kpis) do
  local a = { rule = "score-low", execution_id = k.execution_id, metric = "avg_score", value = k.avg_score,
    threshold = 0.8, op = "below", severity = "critical", state = "firing", labels = { team = "voice" } }
  lookups[i] = alert._lookup_for(a, k)
end
-- The longest text a single value can render to, JSON-encoded tables
-- included: the bound on what one placeholder may produce (plus its width).
local longest = 0
for _, k in ipairs(kpis) do longest = math.max(longest, #json.encode(k:raw())) end

return function(text)
  for _, lookup in ipairs(lookups) do
    local ok, out = pcall(template.render, text, lookup)
    check(ok, "render raised %s", show(out))
    check(type(out) == "string", "render gave %s", show(out))
    local placeholders = select(2, text:gsub("{", "{"))
    check(#out <= #text + placeholders * (longest + 100), "render of %d bytes gave %d", #text, #out)
    if not text:find("[{}]") then check(out == text, "text without braces changed: %s", show(out)) end
  end
  local ok, out = pcall(template.render, text, function() return nil, false end)
  check(ok and type(out) == "string", "render with nothing known raised %s", show(out))
  local ok2, names = pcall(template.names, text)
  check(ok2 and type(names) == "table", "names raised %s", show(names))
end
