-- spec/valgrind/smoke.lua: one end-to-end run touching every C module, for
-- tools/valgrind.sh (run as `kpiwatch --sandbox smoke.lua TMPDIR`): the
-- sandbox server and the HTTP client (keep-alive, faults, retries), JSON,
-- the KPI model, the gate's requirements, alert rules with a signed
-- webhook to a local receiver, an exec hook (a child process), the spool
-- and state files, a timer and task cancellation. Exits non-zero when an
-- outcome is wrong; memcheck judges the memory.

local alert = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"
local requirement = require "kpiwatch.requirement"
local fixtures = require "kpiwatch.fixtures"
local sandbox = require "kpiwatch.sandbox"

local dir = assert(arg[1], "usage: kpiwatch --sandbox smoke.lua TMPDIR")

-- fetch every fixture, some through injected faults (retried)
local ids = fixtures.kpi_ids()
local sb = sandbox.current
sb:inject(ids[1], "500")
sb:inject(ids[2], "429:0")
sb:inject(ids[3], "drop")
local results = kpis.get_all(ids, { backoff = 0.01, retries = 2 })
for i, k in ipairs(results) do
  assert(not require("kpiwatch.errors").is(k), tostring(k))
  assert(k.execution_id == ids[i])
  assert(#tostring(k) > 0 and #json.encode(k:normalize()) > 0)
end
local ok, e = pcall(kpis.get, "c0ffee00-0000-4000-8000-00000000dead")
assert(not ok and e.kind == "not_found", tostring(e))

-- the gate's checks
local req = assert(requirement.parse("eval:* >= 50"))
local checks = requirement.evaluate(req, results[1])
assert(#checks > 0)

-- a receiver for the webhook
local got = 0
local srv = http.serve { port = 0, handler = function(r)
  assert(r.headers["webhook-signature"] and json.decode(r.body).rule)
  got = got + 1
  return { status = 204 }
end }

local reg = alert.registry()
reg:configure { spool = dir .. "/spool.jsonl", quiet = true }
reg:hook("hook", notify.webhook { url = srv.url .. "/hook",
  secret = "whsec_" .. ("a"):rep(32) })
reg:hook("exec", notify.exec { "/bin/sh", "-c", "cat >/dev/null" })
reg:rule { name = "low", metric = "avg_score", below = 0.99, notify = { "hook", "exec" },
  summary = "{metric} is {value:.2f}" }
local rep = reg:check(results)
assert(got >= 1, "the webhook was not delivered")
assert(type(rep) == "table")

-- a cancelled sleeper and a timer
local t = task.spawn(function() task.sleep(60) end)
task.sleep(0.01)
task.cancel(t)
assert(not pcall(task.wait, t))
srv:close()
print("smoke: ok")
