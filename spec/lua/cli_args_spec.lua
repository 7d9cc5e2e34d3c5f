-- Specs for the commands' one option parser (kpiwatch.cli.args): values as
-- --opt V and --opt=V, optional values, repeats, flags, --, positionals and
-- the one-line errors; and that every command parses the same way.

local args = require "kpiwatch.cli.args"

local SPEC = { options = {
  ["--require"] = { repeats = true },
  ["--format"] = {},
  ["--max-drop"] = { repeats = true },
  ["--wait"] = { optional = true },
  ["--json"] = { flag = true },
  ["--log"] = { flag = true },
  ["--verbose"] = { flag = true, key = "log" },
  ["--limit"] = { check = function(v, name)
    local n = math.tointeger(tonumber(v))
    if not n then return nil, "bad " .. name end
    return n
  end },
  ["-x"] = { key = "ex" },
  ["--timeout"] = { into = "flags", check = args.non_negative },
} }

describe("cli.args.parse", function()
  it("takes values as --opt V and --opt=V, keyed with _ for -", function()
    local o = assert(args.parse({ "--format", "json", "--max-drop=a=1", "-x", "y" }, SPEC))
    assert.equal("json", o.format)
    assert.same({ "a=1" }, o.max_drop)
    assert.equal("y", o.ex)
  end)

  it("keeps the values of a repeatable option in order, and an empty list when none", function()
    local o = assert(args.parse({ "--require", "a>1", "--require=b<2", "--require", "" }, SPEC))
    assert.same({ "a>1", "b<2", "" }, o.require)
    assert.same({}, o.max_drop)
  end)

  it("gives an optional value only with =, a bare option is true", function()
    local o = assert(args.parse({ "--wait", "ID" }, SPEC))
    assert.is_true(o.wait)
    assert.same({ "ID" }, o.args)
    o = assert(args.parse({ "--wait=45m" }, SPEC))
    assert.equal("45m", o.wait)
    assert.is_nil(assert(args.parse({}, SPEC)).wait)
  end)

  it("sets flags, aliases share a key, checks convert, into groups", function()
    local o = assert(args.parse({ "--json", "--verbose", "--limit", "7", "--timeout=2.5" }, SPEC))
    assert.is_true(o.json)
    assert.is_true(o.log)
    assert.equal(7, o.limit)
    assert.same({ timeout = 2.5 }, o.flags)
  end)

  it("collects positionals anywhere, - is one, everything after -- is one", function()
    local o = assert(args.parse({ "a", "--json", "-", "b", "--", "--format", "-h" }, SPEC))
    assert.same({ "a", "-", "b", "--format", "-h" }, o.args)
    assert.is_nil(o.format)
    assert.is_nil(o.help)
  end)

  it("stops at -h or --help", function()
    for _, h in ipairs({ "-h", "--help" }) do
      local o = assert(args.parse({ "a", h, "--bogus" }, SPEC))
      assert.is_true(o.help)
    end
  end)

  it("refuses in one line: unknown option, missing value, value of a flag, twice, bad value", function()
    local cases = {
      { { "--bogus" }, "unknown option '--bogus'" },
      { { "--bogus=1" }, "unknown option '--bogus=1'" },
      { { "--\27[2J" }, "unknown option '--?[2J'" },
      { { "-q" }, "unknown option '-q'" },
      { { "a", "--format" }, "option '--format' needs a value" },
      { { "--json=1" }, "option '--json' takes no value" },
      { { "--format", "a", "--format=b" }, "option '--format' given twice" },
      { { "--wait", "--wait=1m" }, "option '--wait' given twice" },
      { { "--limit", "x" }, "bad --limit" },
      { { "--timeout", "-1" }, "option '--timeout' needs a non-negative number, got '-1'" },
      { { "a", 1 }, "argument 2 is not a string" },
    }
    for _, c in ipairs(cases) do
      local o, msg = args.parse(c[1], SPEC)
      assert.is_nil(o, c[2])
      assert.equal(c[2], msg)
    end
  end)

  it("names every word an unknown argument for a command without positionals", function()
    local spec = { options = SPEC.options, positionals = false }
    assert.equal("unknown argument 'x'", select(2, args.parse({ "--json", "x" }, spec)))
    assert.equal("unknown argument '--bogus'", select(2, args.parse({ "--bogus" }, spec)))
  end)

  it("reads one option for the lua.c-style driver", function()
    local opt, v, last, name = args.option({ "--timeout", "3", "x" }, 1, require("kpiwatch.cli").GLOBAL_OPTIONS)
    assert.equal("timeout", opt.key)
    assert.equal(3, v)
    assert.equal(2, last)
    assert.equal("--timeout", name)
    local none, msg, kind = args.option({ "--sandbox=1" }, 1, require("kpiwatch.cli").GLOBAL_OPTIONS)
    assert.is_nil(none)
    assert.equal("option '--sandbox' takes no value", msg)
    assert.equal("inline", kind)
    assert.equal("unknown", select(3, args.option({ "--nope" }, 1, require("kpiwatch.cli").GLOBAL_OPTIONS)))
    assert.equal("missing", select(3, args.option({ "--retries" }, 1, require("kpiwatch.cli").GLOBAL_OPTIONS)))
    assert.equal("bad", select(3, args.option({ "--retries", "1.5" }, 1, require("kpiwatch.cli").GLOBAL_OPTIONS)))
  end)
end)

describe("cli.args.usage_error", function()
  local function capture(prog, msg)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    local code = args.usage_error(prog, msg, f)
    f:close()
    f = assert(io.open(path))
    local text = f:read("a")
    f:close()
    os.remove(path)
    return code, text
  end

  it("writes one line naming the command and its --help, and returns 2", function()
    local code, text = capture("kpiwatch gate", "option '--max-drop' needs a value\nmore")
    assert.equal(2, code)
    assert.equal("kpiwatch gate: option '--max-drop' needs a value (see 'kpiwatch gate --help')\n", text)
    local _, t2 = capture("kpiwatch: get", "unknown option '--foo'")
    assert.equal("kpiwatch: get: unknown option '--foo' (see 'kpiwatch get --help')\n", t2)
  end)
end)

describe("every command parses options the same way", function()
  local cli = require "kpiwatch.cli"

  -- run(command, argv) -> exit status, stderr text
  local function run(name, argv)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    local saved = io.stderr
    io.stderr = f -- luacheck: ignore 122
    local ok, code = pcall(require(cli.commands[name]), argv, {})
    io.stderr = saved -- luacheck: ignore 122
    f:close()
    f = assert(io.open(path))
    local text = f:read("a")
    f:close()
    os.remove(path)
    assert(ok, code)
    return code, text
  end

  it("refuses an unknown option and a missing value with exit 2, in one line", function()
    for name in pairs(cli.commands) do
      local code, text = run(name, { "--no-such-option" })
      assert.equal(2, code, name)
      assert.matches("unknown %a+ '%-%-no%-such%-option' %(see 'kpiwatch " .. name .. " %-%-help'%)\n$", text, 1)
      local _, lines = text:gsub("\n", "")
      assert.equal(1, lines, name .. ": " .. text)
    end
    for name, opt in pairs({ gate = "--require", run = "--scenario", sandbox = "--port", compare = "--format",
        exporter = "--listen", executions = "--limit", check = "--id", watch = "--every", history = "--metric" }) do
      local code, text = run(name, { opt })
      assert.equal(2, code, name)
      assert.matches("option '" .. opt:gsub("%-", "%%-") .. "' needs a value %(see", text, 1)
    end
  end)
end)
