-- Specs for what `kpiwatch check` and `kpiwatch watch` share
-- (kpiwatch.cli.rules_cmd): their options, the rules file loader's
-- one-line errors, and alert.evaluate over no execution at all (a check
-- whose every fetch failed judges nothing, not an empty body).

local cmd = require "kpiwatch.cli.rules_cmd"
local alert = require "kpiwatch.alert"

local ID = "C0FFEE00-0000-4000-8000-000000000001"

describe("rules_cmd.OPTIONS (kpiwatch.cli.args)", function()
  local args = require "kpiwatch.cli.args"
  local SPEC = { options = args.merge(cmd.OPTIONS, { ["--every"] = { check = args.duration },
    ["--json"] = { flag = true } }) }

  it("collects positional arguments, lists, values and flags", function()
    local o = assert(args.parse({ "r.lua", "--id", ID, "--run-test=nightly", "--json", "--every", "5m", "--",
      "--x" }, SPEC))
    assert.same({ "r.lua", "--x" }, o.args)
    assert.same({ ID:lower() }, o.id)
    assert.same({ "nightly" }, o.run_test)
    assert.equal(300, o.every)
    assert.is_true(o.json)
  end)

  it("refuses unknown options, missing values, repeats and bad values in one line", function()
    local cases = {
      { { "--nope" }, "unknown option '--nope'" },
      { { "--id" }, "option '--id' needs a value" },
      { { "--every", "1s", "--every", "2s" }, "option '--every' given twice" },
      { { "--id", "x\n" }, "bad --id 'x ': not a UUID" },
      { { "--run-test", "" }, "bad --run-test '': a run test id or name" },
      { { "--json=yes" }, "option '--json' takes no value" },
    }
    for _, c in ipairs(cases) do
      local o, msg = args.parse(c[1], SPEC)
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
