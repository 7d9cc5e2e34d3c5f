-- Specs for kpiwatch.notify (webhook, slack, file, stdout) and for the
-- delivery machinery of kpiwatch.alert (retries, Retry-After, spooling,
-- replay), each against a real receiver started with http.serve.
-- Run: busted --lua=build/kpiwatch spec/lua/notify_spec.lua

local notify = require "kpiwatch.notify"
local alert = require "kpiwatch.alert"
local http = require "kpiwatch.http"
local json = require "kpiwatch.json"
local process = require "kpiwatch._process"
local fs = require "kpiwatch._fs"
local crypto = require "kpiwatch._crypto"
local util = require "spec.lua.helpers.util"

local KEY = "kpiwatch test key \0\1\2 bytes"
local SECRET = "whsec_" .. crypto.base64_encode(KEY)

local now = require("kpiwatch.kpis")._now

local tmpdir = util.tmpdir

local kpi = util.kpi

local function event(over)
  local e = {
    id = alert.new_id(), state = "firing", rule = "score-floor",
    execution_id = "c0ffee00-0000-4000-8000-000000000005", metric = "avg_score",
    value = 0.62, threshold = 0.8, op = "below", severity = "critical",
    labels = { team = "voice" }, summary = "avg_score is 0.62, below 0.8",
    fired_at = "2024-05-01T10:00:00Z",
  }
  for k, v in pairs(over or {}) do e[k] = v end
  return e
end

-- A receiver: records every request; respond(req, n) decides the answer.
local function receiver(respond, port)
  local got = {}
  local srv = http.serve {
    port = port or 0,
    handler = function(req)
      got[#got + 1] = req
      if respond then return respond(req, #got) end
      return { status = 200, body = "ok" }
    end,
  }
  return srv, got
end

-- The Standard Webhooks signature computed by python3's hmac module: an
-- implementation independent of kpiwatch's.
local function python_signature(secret, id, ts, body)
  local code = [[
import base64, hashlib, hmac, sys
secret = sys.argv[1]
if secret.startswith("whsec_"):
    secret = secret[len("whsec_"):]
key = base64.b64decode(secret)
body = sys.stdin.buffer.read()
msg = sys.argv[2].encode() + b"." + sys.argv[3].encode() + b"." + body
print("v1," + base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode())
]]
  local r = assert(process.spawn({ "python3", "-c", code, secret, id, ts }, { stdin = body }))
  assert.are.equal(0, r.status, r.stderr)
  return (r.stdout:gsub("%s+$", ""))
end

describe("notify.webhook", function()
  it("posts the event as JSON, signed per Standard Webhooks", function()
    local srv, got = receiver()
    finally(function() srv:close() end)
    local ev = event()
    notify.webhook { url = srv.url .. "/hooks/kpi", secret = SECRET } (ev)
    assert.are.equal(1, #got)
    local req = got[1]
    assert.are.equal("POST", req.method)
    assert.are.equal("/hooks/kpi", req.path)
    assert.matches("^application/json", req.headers["content-type"])
    local body = json.decode(req.body)
    assert.are.equal(ev.id, body.id)
    assert.are.equal("firing", body.state)
    assert.are.equal(0.62, body.value)
    assert.are.equal("voice", body.labels.team)
    assert.are.equal(ev.id, req.headers["webhook-id"])
    assert.are.equal(ev.id, req.headers["idempotency-key"])
    local ts = tonumber(req.headers["webhook-timestamp"])
    assert.is_true(math.abs(os.time() - ts) <= 5)
    local want = python_signature(SECRET, req.headers["webhook-id"], req.headers["webhook-timestamp"],
      req.body)
    assert.are.equal(want, req.headers["webhook-signature"])
    assert.is_true(notify.verify(SECRET, req.headers, req.body))
    -- a tampered body does not verify
    assert.is_nil(notify.verify(SECRET, req.headers, req.body .. " "))
  end)

  it("sends valid UTF-8 whatever the event holds (issue 13 item 6)", function()
    local srv, got = receiver()
    finally(function() srv:close() end)
    notify.webhook { url = srv.url .. "/hooks/kpi" } (event { metric = "avg_\255x", labels = { ["k\254"] = "v" } })
    assert.truthy(utf8.len(got[1].body), got[1].body)
    local body = json.decode(got[1].body)
    assert.are.equal("avg_\239\191\189x", body.metric)
  end)

  it("retries the transport failures kpiwatch.http names retryable, and only those", function()
    local errors = require "kpiwatch.errors"
    local real = http.request
    finally(function() http.request = real end)
    for _, kind in ipairs({ "timeout", "connect", "network", "dns", "tls", "too_large" }) do
      http.request = function(o) errors.raise(kind, "simulated", { url = o.url }) end
      local ok, e = pcall(notify.webhook { url = "http://127.0.0.1:9/x" }, event())
      assert.is_false(ok)
      assert.are.equal(kind, e.kind)
      assert.are.equal(http.retryable(kind), e.retryable, kind)
    end
    assert.is_false(http.retryable("dns"))
  end)

  it("accepts a secret without the whsec_ prefix", function()
    local srv, got = receiver()
    finally(function() srv:close() end)
    local plain = crypto.base64_encode(KEY)
    notify.webhook { url = srv.url, secret = plain } (event())
    local h = got[1].headers
    assert.are.equal(python_signature(plain, h["webhook-id"], h["webhook-timestamp"], got[1].body),
      h["webhook-signature"])
  end)

  it("sends no signature without a secret", function()
    local srv, got = receiver()
    finally(function() srv:close() end)
    notify.webhook { url = srv.url } (event())
    assert.is_nil(got[1].headers["webhook-signature"])
    assert.is_not_nil(got[1].headers["webhook-id"])
  end)

  it("classifies failures: 5xx and 429 retryable, 4xx not", function()
    local status, headers = 503, {}
    local srv = receiver(function() return { status = status, headers = headers, body = "nope" } end)
    finally(function() srv:close() end)
    local hook = notify.webhook { url = srv.url .. "/T0001/B0002/secret-token-xyz" }
    local ok, e = pcall(hook, event())
    assert.is_false(ok)
    assert.are.equal("http", e.kind)
    assert.are.equal(503, e.status)
    assert.is_true(e.retryable)
    assert.is_nil(e.message:find("secret-token-xyz", 1, true), "the URL path leaked: " .. e.message)
    status, headers = 429, { ["retry-after"] = "2" }
    ok, e = pcall(hook, event())
    assert.is_false(ok)
    assert.is_true(e.retryable)
    assert.are.equal(2, e.retry_after)
    status, headers = 404, {}
    ok, e = pcall(hook, event())
    assert.is_false(ok)
    assert.are.equal(false, e.retryable)
  end)

  it("never quotes the hook URL's path when the receiver echoes it", function()
    local srv = receiver(function(req)
      return { status = 404, body = "Cannot POST " .. req.path .. "?" .. req.query }
    end)
    finally(function() srv:close() end)
    local hook = notify.webhook { url = srv.url .. "/services/T0001/B0002/tok-echoed-777?sig=abc123" }
    local ok, e = pcall(hook, event())
    assert.is_false(ok)
    assert.are.equal(404, e.status)
    assert.is_nil(e.message:find("tok-echoed-777", 1, true), "the URL path leaked: " .. e.message)
    assert.is_nil(e.message:find("abc123", 1, true), "the URL query leaked: " .. e.message)
    assert.matches("Cannot POST /%[REDACTED%]", e.message)
  end)

  it("reports a receiver that is down as a retryable connect error", function()
    local srv = receiver()
    local url = srv.url
    srv:close()
    local ok, e = pcall(notify.webhook { url = url }, event())
    assert.is_false(ok)
    assert.are.equal("connect", e.kind)
    assert.is_true(e.retryable)
  end)

  it("is disabled without a url, and refuses a bad secret without echoing it", function()
    local ok, e = pcall(notify.webhook { url = nil }, event())
    assert.is_false(ok)
    assert.are.equal("hook_disabled", e.kind)
    local bad = "not base64 !!! hunter2"
    ok, e = pcall(notify.webhook, { url = "http://127.0.0.1:1", secret = bad })
    assert.is_false(ok)
    assert.are.equal("config", e.kind)
    assert.is_nil(tostring(e):find("hunter2", 1, true))
    assert.has_error(function() notify.webhook { url = "x", sekret = "y" } end)
    -- a configuration error names the line that made the hook
    local line = debug.getinfo(1, "l").currentline + 1
    ok, e = pcall(function() return notify.slack { url = 42 } end)
    assert.is_false(ok)
    assert.are.equal("config", e.kind)
    assert.are.equal("notify_spec.lua:" .. line .. ": notify.slack: 'url' must be a string, got number",
      e.message:match("[^/]*$"))
  end)
end)

describe("notify.slack", function()
  it("posts text and blocks", function()
    local srv, got = receiver()
    finally(function() srv:close() end)
    notify.slack { url = srv.url .. "/services/T/B/X", channel = "#alerts" } (event {
      summary = "a < b & c",
    })
    local p = json.decode(got[1].body)
    assert.are.equal("#alerts", p.channel)
    assert.matches("FIRING %[critical%] score%-floor", p.text)
    assert.are.equal("header", p.blocks[1].type)
    assert.are.equal("Firing: score-floor", p.blocks[1].text.text)
    assert.are.equal("a &lt; b &amp; c", p.blocks[2].text.text)
    assert.are.equal("section", p.blocks[3].type)
    assert.is_true(#p.blocks[3].fields >= 3)
    assert.are.equal("context", p.blocks[4].type)
  end)

  it("neutralises control characters of server text in every field (issue 13 item 5)", function()
    local p = notify.slack_payload(event { metric = "avg_x\n\27[31mred", execution_id = "e\r\n*bold*",
      summary = "s\27]8;;http://x\7", rule = "r\194\155" })
    local text = json.encode(p)
    assert.is_nil(text:find("\\u001b", 1, true), text)
    assert.is_nil(text:find("\\r", 1, true), text)
    assert.is_nil(text:find("\194\155", 1, true), text)
    assert.are.equal("*Metric*\navg_x ?[31mred", p.blocks[3].fields[3].text)
    assert.are.equal("*Execution*\n`e  *bold*`", p.blocks[3].fields[2].text)
    assert.are.equal("Firing: r?", p.blocks[1].text.text)
  end)

  it("says resolved for a resolved event", function()
    local p = notify.slack_payload(event { state = "resolved", resolved_at = "2024-05-01T11:00:00Z" })
    assert.are.equal("Resolved: score-floor", p.blocks[1].text.text)
    assert.matches("^:white_check_mark: RESOLVED", p.text)
  end)
end)

describe("notify.file", function()
  it("appends one JSON line per event, mode 0600", function()
    local dir = tmpdir()
    finally(function() os.execute("rm -rf '" .. dir .. "'") end)
    local path = dir .. "/alerts.jsonl"
    local hook = notify.file(path)
    local e1, e2 = event(), event { state = "resolved" }
    hook(e1)
    hook(e2)
    local lines = {}
    for l in io.lines(path) do lines[#lines + 1] = json.decode(l) end
    assert.are.equal(2, #lines)
    assert.are.equal(e1.id, lines[1].id)
    assert.are.equal("resolved", lines[2].state)
    assert.are.equal(tonumber("600", 8), fs.stat(path).mode)
  end)

  it("raises a retryable io error when it cannot write", function()
    local ok, e = pcall(notify.file("/etc/passwd/not-a-dir/x.jsonl"), event())
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.is_true(e.retryable)
  end)

  it("refuses a path that is a symbolic link, leaving its target alone", function()
    local dir = tmpdir()
    finally(function() os.execute("rm -rf '" .. dir .. "'") end)
    local target = dir .. "/precious"
    local f = assert(io.open(target, "w"))
    f:write("keep\n")
    f:close()
    os.execute("ln -s '" .. target .. "' '" .. dir .. "/alerts.jsonl'")
    local ok, e = pcall(notify.file(dir .. "/alerts.jsonl"), event())
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.matches("symbolic link", e.message)
    f = assert(io.open(target))
    assert.are.equal("keep\n", f:read("a"))
    f:close()
  end)
end)

describe("notify.stdout", function()
  local real
  before_each(function() real = io.stdout end)
  after_each(function() io.stdout = real end)

  local function capture(fn)
    local buf = {}
    io.stdout = { write = function(_, ...) for _, s in ipairs({ ... }) do buf[#buf + 1] = s end end,
      flush = function() end }
    fn()
    io.stdout = real
    return table.concat(buf)
  end

  it("prints one readable line", function()
    local out = capture(function() notify.stdout()(event()) end)
    assert.are.equal("FIRING [critical] score-floor: avg_score is 0.62, below 0.8 " ..
      "(execution c0ffee00-0000-4000-8000-000000000005)\n", out)
  end)

  it("prints JSON with format = json", function()
    local ev = event()
    local out = capture(function() notify.stdout { format = "json" } (ev) end)
    assert.are.equal(ev.id, json.decode(out).id)
  end)
end)

describe("delivery", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  local function registry(url, extra)
    local reg = alert.registry()
    reg:configure { retries = 2, backoff = 0.01, max_backoff = 0.05, quiet = true,
      exit_on_lost = false, spool = dir .. "/spool.json" }
    reg:hook("ops", notify.webhook { url = url, secret = SECRET })
    reg:rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
      notify = { "ops" } }
    for k, v in pairs(extra or {}) do reg:hook(k, v) end
    return reg
  end

  it("retries 5xx with backoff until it is delivered, with one webhook-id", function()
    local srv, got = receiver(function(_, n)
      if n <= 2 then return { status = 503, body = "busy" } end
      return { status = 204 }
    end)
    finally(function() srv:close() end)
    local rep = registry(srv.url):check(kpi("failing"))
    assert.are.equal(1, rep.delivered)
    assert.are.equal(0, rep.spooled)
    assert.are.equal(3, rep.deliveries[1].attempts)
    assert.are.equal(3, #got)
    assert.are.equal(got[1].headers["webhook-id"], got[3].headers["webhook-id"])
    assert.are.equal(rep.deliveries[1].event_id, got[3].headers["webhook-id"])
  end)

  it("waits as long as Retry-After says on 429", function()
    local srv, got = receiver(function(_, n)
      if n == 1 then return { status = 429, headers = { ["retry-after"] = "1" }, body = "slow down" } end
      return { status = 200 }
    end)
    finally(function() srv:close() end)
    local t0 = now()
    local rep = registry(srv.url):check(kpi("failing"))
    assert.are.equal(1, rep.delivered)
    assert.are.equal(2, #got)
    assert.is_true(now() - t0 >= 0.95, "did not wait for Retry-After")
  end)

  it("does not retry a 4xx, spools it instead", function()
    local srv, got = receiver(function() return { status = 410 } end)
    finally(function() srv:close() end)
    local rep = registry(srv.url):check(kpi("failing"))
    assert.are.equal(1, #got)
    assert.are.equal(1, rep.spooled)
  end)

  it("spools while the receiver is down and delivers once when it is back", function()
    local probe = receiver()
    local port, url = probe.port, probe.url
    probe:close()
    local reg = registry(url)
    local rep = reg:check(kpi("failing"))
    assert.are.equal(0, rep.delivered)
    assert.are.equal(1, rep.spooled)
    assert.are.equal(3, rep.deliveries[1].attempts) -- 1 + 2 retries
    local spooled_id = rep.deliveries[1].event_id
    local path = dir .. "/spool.json"
    assert.are.equal(tonumber("600", 8), fs.stat(path).mode)
    local doc = json.decode(assert(io.open(path)):read("a"))
    assert.are.equal(1, #doc.entries)
    assert.are.equal(spooled_id, doc.entries[1].event.id)
    assert.are.equal("ops", doc.entries[1].hook)

    -- still down: a second run keeps it (and spools its own new alert)
    rep = reg:check(kpi("failing"))
    assert.are.equal(1, rep.replayed.failed)
    doc = json.decode(assert(io.open(path)):read("a"))
    assert.are.equal(2, #doc.entries)

    -- the receiver is back on the same port: the next run (a fresh
    -- process, as far as the registry knows) delivers both, each once
    local srv, got = receiver(nil, port)
    finally(function() srv:close() end)
    local reg2 = registry(url)
    rep = reg2:check(kpi("voice-outbound"))
    assert.is_true(rep.ok)
    assert.are.equal(2, rep.replayed.delivered)
    assert.are.equal(2, #got)
    local ids = {}
    for _, r in ipairs(got) do
      ids[r.headers["webhook-id"]] = true
      assert.is_true(notify.verify(SECRET, r.headers, r.body))
    end
    assert.is_true(ids[spooled_id])
    doc = json.decode(assert(io.open(path)):read("a"))
    assert.are.equal(0, #doc.entries)
    reg2:check(kpi("voice-outbound"))
    assert.are.equal(2, #got)
  end)

  it("keeps delivering to the other hooks when one fails", function()
    local seen = {}
    local reg = registry(nil)
    reg:hook("broken", function() error("this hook is broken") end)
    reg:hook("good", function(e) seen[#seen + 1] = e end)
    reg:rule { name = "evals", evals = "*", below = 70, notify = { "broken", "good" } }
    local rep = reg:check(kpi("failing"))
    assert.are.equal(1, #seen)                 -- one execution: one group
    assert.are.equal(5, #seen[1].alerts)       -- of five evals under 70
    assert.are.equal(1, rep.spooled)           -- the broken hook's group
    assert.are.equal(1, rep.skipped)           -- ops has no url
    for _, d in ipairs(rep.deliveries) do
      if d.hook == "broken" then assert.are.equal(3, d.attempts) end
    end
  end)

  -- task.cancel of the task running check raises its reason there (kpiwatch.task); the
  -- deliveries' pool swallowed it: check returned, the hook went on retrying behind it
  describe("when the calling task is cancelled", function()
    local task = require "kpiwatch.task"

    local function slow_registry(calls)
      local reg = alert.registry()
      reg:configure { retries = 3, backoff = 0.01, max_backoff = 0.05, quiet = true,
        exit_on_lost = false, spool = dir .. "/spool.json" }
      for _, name in ipairs({ "slow", "slow2" }) do
        reg:hook(name, function()
          calls.n = calls.n + 1
          task.sleep(5)
          calls.finished = true
        end)
      end
      reg:rule { name = "score-floor", metric = "avg_score", below = 0.8, notify = { "slow", "slow2" } }
      return reg
    end

    local function cancelled_check(reg, k)
      local t = task.spawn(function() return reg:check(k) end)
      task.sleep(0.1)
      local t0 = now()
      task.cancel(t, "enough")
      local ok, err = pcall(task.wait, t)
      return ok, err, now() - t0
    end

    local function entries()
      return json.decode(assert(io.open(dir .. "/spool.json")):read("a")).entries
    end

    it("raises the cancellation, stops the delivery and spools it", function()
      local calls = { n = 0 }
      local ok, err, took = cancelled_check(slow_registry(calls), kpi("failing"))
      assert.is_false(ok)
      assert.are.equal("enough", err)
      assert.is_true(took < 1, "did not stop promptly")
      task.sleep(0.1)
      assert.are.equal(2, calls.n) -- no retry after the cancel
      assert.is_nil(calls.finished)
      local e = entries()
      assert.are.equal(2, #e)
      for _, x in ipairs(e) do assert.is_nil(x.claim) end
    end)

    it("during a replay, leaves the spooled notification in the spool, unclaimed", function()
      local calls = { n = 0 }
      local reg = slow_registry(calls)
      reg.hooks.slow = function() error("receiver down") end
      reg.hooks.slow2 = reg.hooks.slow
      reg:check(kpi("failing"))
      local old = {}
      for _, x in ipairs(entries()) do old[x.event.id] = true end
      reg = slow_registry(calls)
      local ok, err = cancelled_check(reg, kpi("failing"))
      assert.is_false(ok)
      assert.are.equal("enough", err)
      assert.are.equal(2, calls.n) -- the two replays; this check's own are not tried
      assert.is_nil(calls.finished)
      -- the replayed two stay, unclaimed; this check's two are spooled
      local e = entries()
      assert.are.equal(4, #e)
      local n_old = 0
      for _, x in ipairs(e) do
        assert.is_nil(x.claim)
        if old[x.event.id] then n_old = n_old + 1 end
      end
      assert.are.equal(2, n_old)
    end)
  end)

  it("reports a notification as lost when it can be neither delivered nor spooled", function()
    local reg = alert.registry()
    reg:configure { retries = 0, quiet = true, exit_on_lost = false,
      spool = "/etc/passwd/not-a-dir/spool.json" }
    reg:hook("down", function() error("receiver down") end)
    reg:rule { name = "score-floor", metric = "avg_score", below = 0.8 }
    local rep = reg:check(kpi("failing"))
    assert.are.equal(1, rep.lost)
    assert.are.equal("lost", rep.deliveries[1].status)
    -- by default the loss is an error of kind "lost" (the CLI exits 3),
    -- carrying the report; the library itself never ends the process
    reg:configure { exit_on_lost = true }
    local ok, e = pcall(reg.check, reg, kpi("failing"))
    assert.is_false(ok)
    assert.are.equal("lost", e.kind)
    assert.matches("1 notification could be neither delivered nor spooled", e.message, 1, true)
    assert.are.equal(1, e.report.lost)
  end)
end)

describe("kpiwatch._crypto", function()
  local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

  it("computes HMAC-SHA256 and SHA-256 test vectors", function()
    -- RFC 4231 test case 2
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      hex(crypto.hmac_sha256("Jefe", "what do ya want for nothing?")))
    -- RFC 4231 test case 6 (a key longer than the block)
    assert.are.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      hex(crypto.hmac_sha256(string.rep("\170", 131), "Test Using Larger Than Block-Size Key - Hash Key First")))
    assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hex(crypto.sha256("")))
  end)

  it("encodes and decodes base64, padded or not, and refuses bad input", function()
    for _, s in ipairs({ "", "f", "fo", "foo", "foob", "fooba", "foobar", "\0\255\1" }) do
      local e = crypto.base64_encode(s)
      assert.are.equal(s, crypto.base64_decode(e))
      assert.are.equal(s, crypto.base64_decode((e:gsub("=+$", ""))))
    end
    assert.are.equal("Zm9vYmFy", crypto.base64_encode("foobar"))
    for _, bad in ipairs({ "Z", "Zm9v!", "Zm=9v", "Zm9v====", "Z===", "Zm 9v" }) do
      local r, msg, code = crypto.base64_decode(bad)
      assert.is_nil(r, bad)
      assert.are.equal("not valid base64", msg)
      assert.are.equal("invalid", code)
    end
  end)

  it("gives random bytes and compares in constant time", function()
    local a, b = crypto.random_bytes(32), crypto.random_bytes(32)
    assert.are.equal(32, #a)
    assert.are_not.equal(a, b)
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "ab"))
  end)
end)

describe("kpiwatch._fs", function()
  it("writes atomically with mode 0600 and leaves no temporary file", function()
    local dir = tmpdir()
    finally(function() os.execute("rm -rf '" .. dir .. "'") end)
    local path = dir .. "/sub/state.json"
    assert(fs.mkdirs(dir .. "/sub", tonumber("700", 8)))
    assert.are.equal(tonumber("700", 8), fs.stat(dir .. "/sub").mode)
    assert(fs.write_atomic(path, "one"))
    assert(fs.write_atomic(path, "two"))
    assert.are.equal("two", assert(io.open(path)):read("a"))
    assert.are.equal(tonumber("600", 8), fs.stat(path).mode)
    local p = io.popen("ls -A '" .. dir .. "/sub'")
    assert.are.equal("state.json\n", p:read("a"))
    p:close()
    local ok, msg, code = fs.write_atomic("/etc/passwd/x", "y")
    assert.is_nil(ok)
    assert.are.equal(20, code) -- ENOTDIR
    assert.matches("Not a directory", msg)
  end)
end)
