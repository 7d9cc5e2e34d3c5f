-- A KPIs body from a hostile or broken server costs bounded work: findings
-- of the fuzzing work that a corpus file cannot hold (spec/fuzz holds the
-- others). Work is counted in Lua VM instructions, not seconds, so the
-- bound holds on a loaded machine and under the sanitizers.

local model = require "kpiwatch.model"
local requirement = require "kpiwatch.requirement"

-- instructions(fn) -> how many thousand VM instructions fn ran
local function instructions(fn)
  local n = 0
  debug.sethook(function() n = n + 1 end, "", 1000)
  local ok, err = pcall(fn)
  debug.sethook()
  assert(ok, err)
  return n
end

local function wide_body(nkeys, prefix)
  local parts = { '"total_calls": 1' }
  for i = 1, nkeys do parts[#parts + 1] = string.format('"%s%05d": 1', prefix, i) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- (10000 keys: model.MAX_KEYS, the most a body may have; these ran with
-- 20000 before the cap)
describe("a body with 10000 keys", function()
  it("costs bounded work for a requirement on a missing field", function()
    local k = assert(model.parse(wide_body(model.MAX_KEYS - 1, ("k"):rep(55)), "x"))
    local req = assert(requirement.parse(("z"):rep(60) .. " >= 1"))
    local checks
    -- 9 s and 1.4e9 instructions before suggestions were bounded
    local n = instructions(function() checks = requirement.evaluate(req, k) end)
    assert.are.equal("no_data", checks[1].status)
    assert.is_true(n < 50000, n .. " thousand instructions")
  end)

  it("still suggests a documented field for a typo", function()
    local k = assert(model.parse(wide_body(model.MAX_KEYS - 1, "x"), "x"))
    local checks = requirement.evaluate(assert(requirement.parse("total_cals >= 1")), k)
    assert.matches("did you mean total_calls", checks[1].message, 1, true)
  end)

  it("bounds eval metric suggestions too", function()
    local k = assert(model.parse(wide_body(model.MAX_KEYS - 1, "avg_" .. ("e"):rep(50)), "x"))
    local req = assert(requirement.parse("eval:" .. ("q"):rep(55) .. " >= 1"))
    local checks
    local n = instructions(function() checks = requirement.evaluate(req, k) end)
    assert.are.equal("no_data", checks[1].status)
    assert.is_true(n < 50000, n .. " thousand instructions")
  end)
end)

describe("a body beyond the caps", function()
  it("is a protocol error before decoding, in bounded memory", function()
    -- the issue's body: 600k avg_* keys, 8 MB (833 MB and 17 s decoded)
    local text = wide_body(600000, "avg_")
    collectgarbage()
    local before = collectgarbage("count")
    local k, err = model.parse(text, "x")
    local grew = collectgarbage("count") - before
    assert.is_nil(k)
    assert.are.equal("protocol", err.kind)
    assert.matches("600001 keys (at most 10000)", err.message, 1, true)
    assert.is_true(grew < 1024, grew .. " KB allocated")
  end)

  it("refuses too deep a nesting; a long list in a field is data", function()
    assert.is_truthy(model.parse('{"total_calls": 1, "a": [' .. ("1,"):rep(60000) .. '1]}', "x"))
    local _, err
    -- (padded: bodies of MEASURE_OVER bytes or less are not measured)
    _, err = model.parse('{"pad":"' .. ("x"):rep(model.MEASURE_OVER) .. '","a":' .. ("["):rep(40) .. ("]"):rep(40)
      .. "}", "x")
    assert.matches("nesting 41 deep (at most 32)", err.message, 1, true)
  end)

  it("counts what decoding would build (json.measure)", function()
    assert.are.same({ 2, 5, 2 }, { json.measure('{"a":1,"b":[1,2]}') })
    -- quotes, colons and brackets inside strings are text
    assert.are.same({ 2, 6, 4 }, { json.measure('{"x":"a,b:c{[\\"","y":[[],[{}]]}') })
    assert.are.same({ 0, 1, 0 }, { json.measure("1") })
  end)
end)
