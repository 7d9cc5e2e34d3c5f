-- Specs for notify.alertmanager: the alert built from an event (labels that
-- name the alert only, server text cleaned), its options, one POST per
-- group, and on_cycle's re-send interval. The real Alertmanager is in
-- spec/e2e/test_alertmanager.py.

local notify = require "kpiwatch.notify"
local am = require "kpiwatch.notify.alertmanager"
local http_server = require "kpiwatch.http_server"
local json = require "kpiwatch.json"

local EVENT = {
  id = "msg_1", rule = "score-floor", execution_id = "c0ffee00-0000-4000-8000-000000000005",
  metric = "avg_score", value = 0.62, threshold = 0.8, severity = "critical", state = "firing",
  summary = "avg_score is 0.62,\nbelow 0.8\27[31m", fired_at = "2026-11-30T10:00:00Z",
  labels = { service = "voice bot", ["bad-name"] = "x" }, description = "score \255 floor",
}

describe("notify.alertmanager", function()
  it("labels name the alert; per-sender details are annotations", function()
    local a = am.to_alert(EVENT, { labels = { team = "agents", severity = "ignored" } })
    assert.are.same({ alertname = "score-floor", execution_id = EVENT.execution_id, metric = "avg_score",
      severity = "critical", team = "agents", service = "voice bot", bad_name = "x" }, a.labels)
    assert.is_nil(a.labels.id)
    assert.are.equal("2026-11-30T10:00:00Z", a.startsAt)
    assert.is_nil(a.endsAt)
    assert.are.equal("0.62", a.annotations.value)
    assert.are.equal("0.8", a.annotations.threshold)
    -- newline and escape sequences from server text neutralised, UTF-8 kept valid
    assert.is_nil(a.annotations.summary:find("[%c]"))
    assert.truthy(utf8.len(a.annotations.description))
  end)

  it("a resolved alert carries endsAt", function()
    local ev = {}
    for k, v in pairs(EVENT) do ev[k] = v end
    ev.state, ev.resolved_at = "resolved", "2026-11-30T10:05:00Z"
    assert.are.equal("2026-11-30T10:05:00Z", am.to_alert(ev, {}).endsAt)
  end)

  it("refuses bad options with a config error", function()
    for _, opts in ipairs({
      {}, { url = "127.0.0.1:9093" }, { url = "http://x", labels = { ["bad-name"] = "v" } },
      { url = "http://x", resend = "soon" }, { url = "http://x", nope = 1 },
      { url = "http://x", labels = { a = {} } }, { url = "http://x", timeout = 0 },
    }) do
      local ok, e = pcall(notify.alertmanager, opts)
      assert.is_false(ok)
      assert.are.equal("config", e.kind, tostring(e))
    end
  end)

  describe("posting", function()
    local srv, posts, status
    setup(function()
      posts, status = {}, 200
      srv = http_server.serve { handler = function(req)
        posts[#posts + 1] = { path = req.path, body = json.decode(req.body), ctype = req.headers["content-type"] }
        return { status = status, body = status == 200 and "" or "bad alert" }
      end }
    end)
    teardown(function() srv:close() end)
    before_each(function() posts, status = {}, 200 end)

    it("posts one event, or a whole group, in one request to /api/v2/alerts", function()
      local hook = notify.alertmanager { url = srv.url .. "/" }
      hook(EVENT)
      hook({ alerts = { EVENT, EVENT } })
      assert.are.equal(2, #posts)
      assert.are.equal("/api/v2/alerts", posts[1].path)
      assert.are.equal("application/json", posts[1].ctype)
      assert.are.equal(1, #posts[1].body)
      assert.are.equal(2, #posts[2].body)
    end)

    it("raises a non-retryable error on 400", function()
      status = 400
      local ok, e = pcall(notify.alertmanager { url = srv.url }, EVENT)
      assert.is_false(ok)
      assert.are.equal(400, e.status)
      assert.is_false(e.retryable)
    end)

    it("on_cycle re-posts the firing alerts once per resend interval", function()
      local hook = notify.alertmanager { url = srv.url, resend = "30s" }
      assert.is_true(hook:on_cycle({ EVENT }, 1000))
      assert.is_nil(hook:on_cycle({ EVENT }, 1020))
      assert.is_true(hook:on_cycle({ EVENT }, 1030))
      assert.is_nil(hook:on_cycle({}, 1100))
      assert.are.equal(2, #posts)
      assert.is_nil(posts[2].body[1].endsAt)
    end)

    it("on_cycle does not re-post what the hook posted in the same cycle", function()
      local hook = notify.alertmanager { url = srv.url, resend = "30s" }
      local other = {}
      for k, v in pairs(EVENT) do other[k] = v end
      other.metric = "failed_calls"
      hook(EVENT)                                        -- cycle 1: fires, posted once
      assert.is_nil(hook:on_cycle({ EVENT }, 1000))
      hook(other)                                        -- cycle 2: another fires
      assert.is_nil(hook:on_cycle({ EVENT, other }, 1020))
      assert.is_true(hook:on_cycle({ EVENT, other }, 1030)) -- EVENT's resend is due
      assert.are.equal(3, #posts)
      assert.are.equal(1, #posts[3].body)
      assert.are.equal("avg_score", posts[3].body[1].labels.metric)
      assert.is_true(hook:on_cycle({ EVENT, other }, 1050)) -- then other's
      assert.are.equal("failed_calls", posts[4].body[1].labels.metric)
    end)
  end)
end)
