-- Specs for kpiwatch._process (uv_spawn without a shell) and the exec
-- notifier built on it. Run: busted --lua=build/kpiwatch spec/lua/process_spec.lua

local process = require "kpiwatch._process"
local task = require "kpiwatch.task"
local json = require "kpiwatch.json"
local util = require "spec.lua.helpers.util"

local tmpdir = util.tmpdir

local exists = util.exists

local function lines(s)
  local out = {}
  for l in (s .. "\n"):gmatch("(.-)\n") do out[#out + 1] = l end
  if out[#out] == "" then out[#out] = nil end
  return out
end

describe("process.spawn", function()
  it("passes each argument literally, never through a shell", function()
    local dir = tmpdir()
    local canary = dir .. "/canary"
    assert(io.open(canary, "w")):close()
    local nasty = {
      "two words",
      "it's \"quoted\"",
      "; rm -f " .. canary,
      "$(rm -f " .. canary .. ")",
      "`rm -f " .. canary .. "`",
      "&& rm -f " .. canary .. " || true",
      "| cat /etc/passwd",
      "*",
      "$HOME",
      "",
      "back\\slash",
    }
    local argv = { "printf", "<%s>\\n" }
    for _, a in ipairs(nasty) do argv[#argv + 1] = a end
    local r = assert(process.spawn(argv))
    assert.are.equal(0, r.status)
    local got = lines(r.stdout)
    assert.are.equal(#nasty, #got)
    for i, a in ipairs(nasty) do assert.are.equal("<" .. a .. ">", got[i]) end
    assert.is_true(exists(canary), "a shell ran: the canary file was removed")
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("keeps an argument with a newline as one argument", function()
    local r = assert(process.spawn({ "printf", "[%s]", "a\nb" }))
    assert.are.equal("[a\nb]", r.stdout)
  end)

  it("writes stdin and collects stdout and stderr separately", function()
    local r = assert(process.spawn({ "sh", "-c", "cat; echo oops >&2; exit 4" },
      { stdin = "hello\nworld\n" }))
    assert.are.equal(4, r.status)
    assert.are.equal("hello\nworld\n", r.stdout)
    assert.are.equal("oops\n", r.stderr)
    assert.is_nil(r.signal)
    assert.is_false(r.timed_out)
  end)

  it("survives a child that exits without reading a large stdin", function()
    local big = string.rep("x", 4 * 1024 * 1024)
    local r = assert(process.spawn({ "true" }, { stdin = big }))
    assert.are.equal(0, r.status)
  end)

  it("gives the child /dev/null as stdin when none is given", function()
    local r = assert(process.spawn({ "cat" }))
    assert.are.equal(0, r.status)
    assert.are.equal("", r.stdout)
  end)

  it("uses env as the whole environment, and cwd", function()
    local r = assert(process.spawn({ "env" }, { env = { "FOO=bar baz", "ONLY=1" } }))
    local got = lines(r.stdout)
    table.sort(got)
    assert.are.same({ "FOO=bar baz", "ONLY=1" }, got)
    local dir = tmpdir()
    r = assert(process.spawn({ "pwd" }, { cwd = dir }))
    assert.are.equal(dir, (r.stdout:gsub("\n$", "")))
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("environ() lists the current environment", function()
    local env = process.environ()
    local found = false
    for _, kv in ipairs(env) do
      if kv:match("^PATH=") then found = true end
    end
    assert.is_true(found)
  end)

  it("reports a program that cannot be started", function()
    local r, msg, code = process.spawn({ "/nonexistent/kpiwatch-no-such-program", "x" })
    assert.is_nil(r)
    assert.are.equal(2, code) -- ENOENT
    assert.matches("no such file", msg)
  end)

  it("kills a child that runs past its timeout", function()
    local t0 = os.time()
    local r = assert(process.spawn({ "sleep", "30" }, { timeout = 0.2 }))
    assert.is_true(r.timed_out)
    assert.are.equal(15, r.signal)
    assert.is_true(os.time() - t0 < 5)
  end)

  it("truncates output beyond max_output", function()
    local r = assert(process.spawn({ "head", "-c", "100000", "/dev/zero" }, { max_output = 1000 }))
    assert.are.equal(1000, #r.stdout)
    assert.is_true(r.truncated)
  end)

  it("does not wait for a grandchild that keeps stdout open", function()
    local t0 = os.time()
    local r = assert(process.spawn({ "sh", "-c", "sleep 20 & echo started" }))
    assert.are.equal(0, r.status)
    assert.are.equal("started\n", r.stdout)
    assert.is_true(os.time() - t0 < 5)
  end)

  it("runs children concurrently from separate tasks", function()
    local now = require("kpiwatch.kpis")._now
    local start = now()
    local ts = {}
    for i = 1, 5 do
      ts[i] = task.spawn(function() return assert(process.spawn({ "sleep", "0.4" })).status end)
    end
    local results = task.all(ts)
    for i = 1, 5 do assert.are.equal(0, results[i][1]) end
    assert.is_true(now() - start < 1.5, "took " .. tostring(now() - start) .. "s")
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() process.spawn({}) end)
    assert.has_error(function() process.spawn({ "echo", 1 }) end)
    assert.has_error(function() process.spawn({ "echo", "a\0b" }) end)
    assert.has_error(function() process.spawn({ "echo" }, { env = "x" }) end)
  end)
end)

describe("notify.exec", function()
  local notify = require "kpiwatch.notify"
  local event = {
    id = "msg_0001", state = "firing", rule = "score-floor", execution_id = "c0ffee",
    metric = "avg_score", value = 0.62, threshold = 0.8, severity = "critical",
    summary = "avg_score is 0.62; rm -rf / $(reboot) 'quoted' \"double\"",
    kpis = { avg_score = 0.62, total_calls = 80 },
  }

  it("sends the event as JSON on stdin with templated arguments, no shell", function()
    local dir = tmpdir()
    local out = dir .. "/out"
    local canary = dir .. "/canary"
    assert(io.open(canary, "w")):close()
    local hook = notify.exec {
      "sh", "-c", 'cat > "$0"; printf "%s\\n" "$@" > "$0.args"; env > "$0.env"', out,
      "{summary}", "{value:%.1f}", "{kpis.total_calls}", "; rm -f " .. canary,
      env = { EXTRA = "x y" },
    }
    hook(event)
    local f = assert(io.open(out))
    local got = json.decode(f:read("a"))
    f:close()
    assert.are.equal("msg_0001", got.id)
    assert.are.equal(0.62, got.value)
    f = assert(io.open(out .. ".args"))
    local args = lines(f:read("a"))
    f:close()
    assert.are.same({ event.summary, "0.6", "80", "; rm -f " .. canary }, args)
    f = assert(io.open(out .. ".env"))
    local env = f:read("a")
    f:close()
    assert.matches("KPIWATCH_EVENT_ID=msg_0001", env, 1, true)
    assert.matches("KPIWATCH_ALERT_STATE=firing", env, 1, true)
    assert.matches("EXTRA=x y", env, 1, true)
    assert.matches("\nPATH=", "\n" .. env, 1, true) -- inherited
    assert.is_true(exists(canary))
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("never lets event data start an argument with '-', nor carry control characters (issue 13 item 5)", function()
    local dir = tmpdir()
    local out = dir .. "/args"
    local hostile = { id = "msg_2", state = "firing", rule = "r", metric = "--output=/etc/x\n\27[2J",
      value = -1, summary = "line1\nline2\27]0;title\7" }
    local ok, e = pcall(notify.exec { "sh", "-c", 'printf "%s\\n" "$@" > "$0"', out, "{metric}" }, hostile)
    assert.is_false(ok)
    assert.are.equal("exec", e.kind)
    assert.are.equal(false, e.retryable)
    assert.matches("argument 4 would start with '%-'", e.message)
    assert.is_false(exists(out))
    -- after "--" the program knows it is data
    notify.exec { "sh", "-c", 'printf "%s|" "$@" > "$0"', out, "--", "{metric}", "{value}", "{summary}" }(hostile)
    local f = assert(io.open(out))
    local got = f:read("a")
    f:close()
    assert.are.equal("--|--output=/etc/x ?[2J|-1|line1 line2?]0;title?|", got)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("raises an error object on a non-zero exit, retryable only for 75", function()
    local ok, e = pcall(notify.exec { "sh", "-c", "echo broken >&2; exit 3" }, event)
    assert.is_false(ok)
    assert.are.equal("exec", e.kind)
    assert.are.equal(false, e.retryable)
    assert.matches("status 3: broken", e.message)
    ok, e = pcall(notify.exec { "sh", "-c", "exit 75" }, event)
    assert.is_false(ok)
    assert.are.equal(true, e.retryable)
  end)

  it("raises on a program that does not exist and on a timeout", function()
    local ok, e = pcall(notify.exec { "/nonexistent/notifier" }, event)
    assert.is_false(ok)
    assert.are.equal("exec", e.kind)
    ok, e = pcall(notify.exec { "sleep", "20", timeout = 0.2 }, event)
    assert.is_false(ok)
    assert.matches("timed out", e.message)
    assert.is_true(e.retryable)
  end)

  it("rejects a bad argv at construction", function()
    assert.has_error(function() notify.exec {} end)
    assert.has_error(function() notify.exec { "echo", 3 } end)
    assert.has_error(function() notify.exec { "echo", env = { ["A=B"] = "x" } } end)
  end)
end)
