-- Specs for kpiwatch.shared (each idea once: globs, the escape of server
-- text, the value formatter, backoff, validation, a configuration error's
-- position) and task.map, the bounded worker pool.

local shared = require "kpiwatch.shared"
local task = require "kpiwatch.task"
local errors = require "kpiwatch.errors"

describe("shared.glob", function()
  local function m(p, s) return assert(shared.glob(p))(s) end

  it("has one semantics: * ? [set] [a-z] [!a-z] [^a-z], ASCII case-insensitive", function()
    assert.is_true(m("*", ""))
    assert.is_true(m("is_*", "is_polite"))
    assert.is_true(m("t?ne", "tone"))
    assert.is_false(m("t?ne", "tonne"))
    assert.is_true(m("[a-c]*", "completeness"))
    assert.is_false(m("[!a-z]*", "tone"))
    assert.is_true(m("[!a-z]*", "9lives"))
    assert.is_true(m("[^t]*", "is_x"))
    assert.is_true(m("IS_*", "is_polite"))
    assert.is_true(m("is_[A-C]*", "is_concise"))
    assert.is_true(m("[]]x", "]x"))
    assert.is_true(m("a.b", "a.b"))
    assert.is_false(m("a.b", "axb"))
    assert.is_true(m("%d", "%d"))
  end)

  it("refuses an unclosed set or a reversed range with a message", function()
    assert.matches("unclosed '%['", select(2, shared.glob("is_[a")))
    assert.matches("bad range", select(2, shared.glob("[z-a]")))
    assert.is_nil((shared.glob(42)))
  end)

  it("knows a glob from a name", function()
    assert.is_true(shared.is_glob("is_*"))
    assert.is_true(shared.is_glob("[ab]x"))
    assert.is_false(shared.is_glob("is_polite"))
  end)
end)

describe("shared.clean", function()
  it("neutralises C0, DEL, C1 and escape sequences, keeps text", function()
    assert.are.equal("a?[31mred b", shared.clean("a\27[31mred\nb"))
    assert.are.equal("x?y?z", shared.clean("x\127y\194\155z"))
    assert.are.equal("tab cr lf", shared.clean("tab\tcr\rlf"))
    assert.are.equal("é ✓", shared.clean("é ✓"))
    assert.are.equal("a?b", shared.clean("a\226\128\174b")) -- right-to-left override
    assert.are.equal("nil", shared.clean(nil))
  end)

  it("replaces invalid UTF-8 with U+FFFD", function()
    assert.are.equal("a\239\191\189b", shared.clean("a\255b"))
    assert.are.equal("\239\191\189\239\191\189", shared.fix_utf8("\192\175")) -- overlong '/'
    assert.are.equal("\239\191\189\239\191\189\239\191\189", shared.fix_utf8("\237\160\128")) -- surrogate
    local ok = "plain ascii"
    assert.are.equal(ok, shared.fix_utf8(ok))
  end)

  it("cuts at a character boundary with ...", function()
    assert.are.equal("abcd...", shared.clean("abcdefghij", 7))
    local s = shared.clean(("é"):rep(10), 8)
    assert.truthy(utf8.len(s))
    assert.are.equal("éé...", s)
    assert.are.equal("short", shared.clean("short", 7))
  end)

  it("finds invalid UTF-8 where utf8.len does (kpiwatch._text, the C scan)", function()
    local invalid = require("kpiwatch._text").utf8_invalid
    local function same(s, i)
      local ok, bad = utf8.len(s, i or 1)
      assert.are.equal(not ok and bad or nil, invalid(s, i), ("%q at %s"):format(s, tostring(i)))
    end
    -- each boundary of RFC 3629's ranges, alone, truncated and after ASCII
    local cases = { "", "abc", "\0", "\127", "\128", "\191", "\192\128", "\193\191", "\194\128",
      "\223\191", "\224\159\191", "\224\160\128", "\237\159\191", "\237\160\128", "\237\191\191",
      "\238\128\128", "\239\191\191", "\240\143\191\191", "\240\144\128\128", "\244\143\191\191",
      "\244\144\128\128", "\245\128\128\128", "\248\136\128\128\128", "\255", "\226\130", "\240\159\152" }
    for _, c in ipairs(cases) do
      same(c)
      same(("x"):rep(13) .. c .. "tail")
      same(c .. c, #c + 1)
    end
    -- random bytes, mostly ASCII as a body is, around the skips of 32 and 8 bytes
    math.randomseed(14)
    for n = 1, 3000 do
      local t = {}
      local ascii = n % 2 == 0 and 0.8 or 0.98
      for k = 1, math.random(0, n % 3 == 0 and 40 or 120) do
        t[k] = math.random() < ascii and math.random(32, 126) or math.random(128, 255)
      end
      local s = string.char(table.unpack(t))
      same(s)
      same(s, math.random(1, #s + 1))
    end
    same("abc", -1)
    assert.has_error(function() invalid("abc", 5) end)
  end)

  it("tells a canonical UUID (kpiwatch._text.uuid), lowercased, as the Lua pattern does", function()
    local uuid = require("kpiwatch._text").uuid
    local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
    assert.are.equal("c0ffee00-0000-4000-8000-00000000abcd", uuid("C0FFEE00-0000-4000-8000-00000000AbCd"))
    for _, bad in ipairs({ "", "c0ffee00-0000-4000-8000-00000000abc", "c0ffee00-0000-4000-8000-00000000abcde",
      "c0ffee00_0000-4000-8000-00000000abcd", "g0ffee00-0000-4000-8000-00000000abcd",
      "c0ffee00-0000-4000-8000-00000000abc\0", "c0ffee0-00000-4000-8000-00000000abcd" }) do
      assert.is_nil(uuid(bad), bad)
    end
    assert.is_nil(uuid(42))
    assert.is_nil(uuid({}))
    -- random mutations of a UUID: one verdict with the pattern's
    math.randomseed(14)
    local alphabet = "0123456789abcdefABCDEFgG-_ \0\255"
    for _ = 1, 3000 do
      local t = { ("c0ffee00-0000-4000-8000-00000000abcd"):byte(1, -1) }
      for _ = 1, math.random(0, 2) do
        local k = math.random(1, #alphabet)
        t[math.random(1, 36)] = alphabet:byte(k)
      end
      local s = string.char(table.unpack(t))
      assert.are.equal(s:match(UUID) and s:lower() or nil, uuid(s), ("%q"):format(s))
    end
  end)

  it("falls back to utf8.len without the C module (the model's specs under a plain lua5.4)", function()
    local preload, loaded = package.preload["kpiwatch._text"], package.loaded["kpiwatch._text"]
    package.preload["kpiwatch._text"] = function() error("no C modules here") end
    package.loaded["kpiwatch._text"], package.loaded["kpiwatch.shared"] = nil, nil
    local ok, plain = pcall(require, "kpiwatch.shared")
    package.preload["kpiwatch._text"], package.loaded["kpiwatch._text"] = preload, loaded
    package.loaded["kpiwatch.shared"] = shared
    assert.is_true(ok, tostring(plain))
    assert.are_not.equal(shared, plain)
    assert.are.equal("a\239\191\189b\239\191\189\239\191\189c", plain.fix_utf8("a\255b\192\175c"))
    assert.are.equal("ok", plain.fix_utf8("ok"))
  end)

  it("fixes strings of a decoded tree, keys too, copying only what changed", function()
    local inner = { "ok" }
    local t = { ["k\255"] = "v\254", same = inner }
    local u = shared.fix_utf8_tree(t)
    assert.are.equal("v\239\191\189", u["k\239\191\189"])
    assert.are.equal(inner, u.same)
    assert.are.equal(inner, shared.fix_utf8_tree(inner))
  end)
end)

describe("shared.redact", function()
  it("replaces every configured secret, in strings and in a tree's keys and values", function()
    assert.are.equal("a [REDACTED] b [REDACTED]", shared.redact("a s3cret b s3cret", { "s3cret" }))
    assert.are.equal("ab", shared.redact("ab", { "a" })) -- too short to be a secret
    local t = shared.redact_tree({ ["key-s3cret"] = { "s3cret" }, x = 1 }, { "s3cret" })
    assert.are.same({ ["key-[REDACTED]"] = { "[REDACTED]" }, x = 1 }, t)
  end)
end)

describe("shared.format_value", function()
  it("formats numbers, nulls, booleans, choice evals and tables on one line", function()
    assert.are.equal("120", shared.format_value(120))
    assert.are.equal("93.3333", shared.format_value(93.33333333))
    assert.are.equal("0.5", shared.format_value(0.5))
    assert.are.equal("inf", shared.format_value(math.huge))
    assert.are.equal("null", shared.format_value(nil))
    assert.are.equal("null", shared.format_value(require("kpiwatch.json").null))
    assert.are.equal("true", shared.format_value(true))
    assert.are.equal("friendly 2, rude 1, extra 4",
      shared.format_value({ friendly = 2, rude = 1, extra = 4, choices = { "friendly", "rude" } }))
    assert.are.equal('{"a":1}', shared.format_value({ a = 1 }))
  end)

  it("cleans and cuts strings: 60 bytes by default, as asked", function()
    assert.are.equal(60, #shared.format_value(("x"):rep(100)))
    assert.are.equal(100, #shared.format_value(("x"):rep(100), false))
    assert.are.equal("a?b", shared.format_value("a\27b"))
  end)
end)

describe("shared.backoff", function()
  it("is full jitter under an exponential ceiling, capped", function()
    local top = function() return 0.999999 end
    assert.is_true(math.abs(shared.backoff(1, 0.5, 30, top) - 0.5) < 1e-5)
    assert.is_true(math.abs(shared.backoff(3, 0.5, 30, top) - 2) < 1e-5)
    assert.is_true(math.abs(shared.backoff(20, 0.5, 30, top) - 30) < 1e-4)
    assert.are.equal(0, shared.backoff(5, 0.5, 30, function() return 0 end))
  end)
end)

describe("shared.validate and shared.config_error", function()
  it("raises a config error naming the option, the expected type and the position", function()
    local ok, e = pcall(shared.validate, "notify.x", { url = { 42, "string" } }, "rules.lua:7")
    assert.is_false(ok)
    assert.is_true(errors.is(e))
    assert.are.equal("config", e.kind)
    assert.are.equal("rules.lua:7: notify.x: 'url' must be a string, got number", e.message)
    assert.are.equal("url", e.field)
    local _, e2 = pcall(shared.validate, "o", { n = { 0 / 0, "number" } })
    assert.matches("'n' must be a number, got NaN", e2.message)
  end)

  it("accepts optional nils, lists of types, integers, callables and checkers", function()
    shared.validate("o", {
      a = { nil, "string", true },
      b = { 3, { "string", "integer" } },
      c = { setmetatable({}, { __call = function() end }), "callable" },
      d = { 5, function(v) return v > 1, "more than 1" end },
    })
    local ok, e = pcall(shared.validate, "o", { d = { 0, function(v) return v > 1, "more than 1" end } })
    assert.is_false(ok)
    assert.matches("'d' must be more than 1", e.message)
    ok = pcall(shared.validate, "o", { b = { 1.5, "integer" } })
    assert.is_false(ok)
  end)

  it("names the caller's file:line outside the files it skips", function()
    local here = debug.getinfo(1, "S").source
    local function inner() return shared.caller_where({ [here] = false }) end
    assert.matches("shared_spec.lua:%d+$", (inner()))
    local where = (function() return shared.caller_where(function(src) return src == here end) end)()
    assert.is_string(where)
    assert.is_nil(where:find("shared_spec.lua", 1, true))
  end)
end)

describe("shared.uuid", function()
  it("gives a canonical UUID in lower case, and nil for anything else", function()
    assert.are.equal("c0ffee00-0000-4000-8000-00000000abcd", shared.uuid("C0FFEE00-0000-4000-8000-00000000ABCD"))
    assert.are.equal("c0ffee00-0000-4000-8000-000000000001", shared.uuid("c0ffee00-0000-4000-8000-000000000001"))
    for _, bad in ipairs({ "c0ffee00-0000-4000-8000-00000000000", "c0ffee00-0000-4000-8000-0000000000011",
      "c0ffee00+0000-4000-8000-000000000001", "g0ffee00-0000-4000-8000-000000000001",
      "c0ffee0000000-4000-8000-000000000001", " c0ffee00-0000-4000-8000-00000000001", "", 42, nil, {} }) do
      assert.is_nil(shared.uuid(bad), tostring(bad))
    end
  end)

  it("is the check of the sandbox's fixture ids (either case)", function()
    local sandbox = require "kpiwatch.sandbox"
    local ok, err = pcall(sandbox.start, { fixtures = { { id = "not-a-uuid", body = "{}" } } })
    assert.is_false(ok)
    assert.matches("fixture id is not a UUID: not%-a%-uuid", tostring(err.message or err))
    local s = sandbox.start { fixtures = { { id = "ABCDEF00-0000-4000-8000-000000000001", body = "{}" } } }
    s:close()
  end)
end)

describe("shared.uuid4 and shared.random_hex", function()
  it("give random ids in the API's UUID shape (version 4, RFC 9562 variant)", function()
    local seen = {}
    for _ = 1, 200 do
      local u = shared.uuid4()
      assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", u)
      assert.is_nil(seen[u])
      seen[u] = true
    end
    assert.matches("^%x+$", shared.random_hex(6))
    assert.are.equal(12, #shared.random_hex(6))
  end)
end)

describe("task.map", function()
  it("keeps the order of the list and at most `concurrency` tasks at once", function()
    local active, peak = 0, 0
    local out = task.map({ 5, 1, 4, 2, 3 }, function(v, i)
      active = active + 1
      if active > peak then peak = active end
      task.sleep(v / 1000)
      active = active - 1
      return v * 10 + i
    end, { concurrency = 2 })
    assert.are.same({ 51, 12, 43, 24, 35 }, out)
    assert.are.equal(2, peak)
  end)

  it("stops on an error, waits for the running ones and raises it", function()
    local started = 0
    local ok, err = pcall(task.map, { 1, 2, 3, 4, 5, 6 }, function(v)
      started = started + 1
      if v == 2 then error("bad item", 0) end
      task.sleep(0.01)
      return v
    end, { concurrency = 2 })
    assert.is_false(ok)
    assert.are.equal("bad item", err)
    assert.is_true(started < 6)
  end)

  it("on a cancellation of its caller, cancels every worker at once and raises it", function()
    local finished = 0
    local t = task.spawn(task.map, { 1, 2, 3 }, function()
      task.sleep(5)
      finished = finished + 1
    end, { concurrency = 3 })
    task.sleep(0.05)
    local t0 = task.now()
    task.cancel(t, "enough")
    local ok, err = pcall(task.wait, t)
    assert.is_false(ok)
    assert.are.equal("enough", err)
    assert.is_true(task.now() - t0 < 1, "waited for the other workers")
    task.sleep(0.05)
    assert.are.equal(0, finished)
  end)

  it("refuses a bad concurrency and returns {} for an empty list", function()
    assert.has_error(function() task.map({ 1 }, print, { concurrency = 0 }) end)
    assert.are.same({}, task.map({}, error))
  end)
end)
