-- Specs for what `kpiwatch check` and `kpiwatch watch` share
-- (kpiwatch.cli.rules_cmd): the option parser, the rules file loader's
-- one-line errors, and alert.evaluate over no execution at all (a check
-- whose every fetch failed judges nothing, not an empty body).

local cmd = require "kpiwatch.cli.rules_cmd"
local alert = require "kpiwatch.alert"

local SPEC = { ["--run-test"] = "list", ["--id"] = "list", ["--every"] = "value", ["--json"] = "flag" }
local ID = "C0FFEE00-0000-4000-8000-000000000001"

describe("rules_cmd.parse", function()
  it("collects positional arguments, lists, values and flags", function()
    local o = assert(cmd.parse({ "r.lua", "--id", ID, "--run-test=nightly", "--json", "--every", "5m", "--",
      "--x" }, SPEC, cmd.CHECKS))
    assert.same({ "r.lua", "--x" }, o.args)
    assert.same({ ID:lower() }, o.id)
    assert.same({ "nightly" }, o["run-test"])
    assert.equal("5m", o.every)
    assert.is_true(o.json)
  end)

  it("refuses unknown options, missing values, repeats and bad values in one line", function()
    local cases = {
      { { "--nope" }, "unknown option '--nope'" },
      { { "--id" }, "option '--id' needs a value" },
      { { "--every", "1s", "--every", "2s" }, "option '--every' given twice" },
      { { "--id", "x\n" }, "bad --id 'x?': not a UUID" },
      { { "--run-test", "" }, "bad --run-test '': a run test id or name" },
      { { "--json=yes" }, "option '--json' takes no value" },
    }
    for _, c in ipairs(cases) do
      local o, msg = cmd.parse(c[1], SPEC, cmd.CHECKS)
      assert.is_nil(o)
      assert.equal(c[2], msg)
      assert.is_nil(msg:find("\n"))
    end
  end)
end)

describe("rules_cmd.load", function()
  local path = os.tmpname()
  after_each(function() os.remove(path) end)

  local function write(text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
  end

  it("returns the file's registry with its rules and hooks", function()
    write('alert.hook("h", function() end)\nalert.rule{ name = "r", metric = "avg_score", below = 1 }\n')
    local reg = assert(cmd.load(path))
    assert.equal("r", reg.rules[1].name)
    assert.same({ "h" }, reg.hook_names)
  end)

  it("refuses a file without rules, and one that ends the process", function()
    write("-- nothing\n")
    local reg, msg = cmd.load(path)
    assert.is_nil(reg)
    assert.equal("rules file " .. path .. " defines no rule", msg)
    write("os.exit(0)\n")
    reg, msg = cmd.load(path)
    assert.is_nil(reg)
    assert.truthy(msg:find("os.exit", 1, true))
  end)
end)

describe("alert.evaluate over an empty list", function()
  it("judges no execution", function()
    local reg = alert.registry()
    reg:rule { name = "r", metric = "avg_score", below = 0.8 }
    local rep = reg:evaluate({})
    assert.same({}, rep.executions)
    assert.same({}, rep.no_data)
    assert.is_true(rep.ok)
  end)
end)
