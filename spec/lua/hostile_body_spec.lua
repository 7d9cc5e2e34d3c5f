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

describe("a body with 20000 keys", function()
  it("costs bounded work for a requirement on a missing field", function()
    local k = assert(model.parse(wide_body(20000, ("k"):rep(55)), "x"))
    local req = assert(requirement.parse(("z"):rep(60) .. " >= 1"))
    local checks
    -- 9 s and 1.4e9 instructions before suggestions were bounded
    local n = instructions(function() checks = requirement.evaluate(req, k) end)
    assert.are.equal("no_data", checks[1].status)
    assert.is_true(n < 50000, n .. " thousand instructions")
  end)

  it("still suggests a documented field for a typo", function()
    local k = assert(model.parse(wide_body(20000, "x"), "x"))
    local checks = requirement.evaluate(assert(requirement.parse("total_cals >= 1")), k)
    assert.matches("did you mean total_calls", checks[1].message, 1, true)
  end)

  it("bounds eval metric suggestions too", function()
    local k = assert(model.parse(wide_body(20000, "avg_" .. ("e"):rep(50)), "x"))
    local req = assert(requirement.parse("eval:" .. ("q"):rep(55) .. " >= 1"))
    local checks
    local n = instructions(function() checks = requirement.evaluate(req, k) end)
    assert.are.equal("no_data", checks[1].status)
    assert.is_true(n < 50000, n .. " thousand instructions")
  end)
end)
