-- The sandbox side of spec/e2e/test_fault_injection.py, run as its own
-- process: kpiwatch.sandbox serving N generated executions with random
-- faults drawn from a fixed seed, and a control server on another port.
--
--   kpiwatch sandbox.lua N SEED DELAY
--
-- Prints one JSON line {"url": ..., "control": ...}. The control server
-- answers GET /records with every request the sandbox saw per execution
-- id, in arrival order, as [arrival time, outcome] (outcome: ok, 500, 429,
-- drop, delay, broken, or other:STATUS), and GET /quit by closing both
-- servers, which ends the process.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local docs = dofile(dir .. "/docs.lua")
local sandbox = require "kpiwatch.sandbox"
local hs = require "kpiwatch.http_server"
local json = require "kpiwatch.json"

local n, seed, delay = math.tointeger(tonumber(arg[1])), math.tointeger(tonumber(arg[2])), tonumber(arg[3])
assert(n and seed and delay, "usage: sandbox.lua N SEED DELAY")

local fixtures, bodies = {}, {}
for i = 1, n do
  local id = docs.id(i)
  bodies[id] = docs.body(i)
  fixtures[i] = { id = id, body = bodies[id] }
end

local ROUTE = "^/simulate/test%-executions/([^/]+)/kpis/$"
local records = {}
local pending = 0

-- Wrap the sandbox's handler (it is handed to http_server.serve) to see
-- each request on arrival and what it was answered.
local serve = hs.serve
hs.serve = function(o)
  local handler = o.handler
  o.handler = function(req)
    local id = req.path:match(ROUTE)
    local rec
    if id then
      rec = { task.now(), "pending" }
      local list = records[id]
      if not list then list = {}; records[id] = list end
      list[#list + 1] = rec
      pending = pending + 1
    end
    local res = handler(req)
    if rec then
      local outcome
      if res == hs.DROP then
        outcome = "drop"
      elseif type(res) ~= "table" then
        outcome = "other:" .. tostring(res)
      elseif res.status == 200 and res.body == bodies[id] then
        outcome = (task.now() - rec[1] >= delay * 0.9) and "delay" or "ok"
      elseif res.status == 200 then
        outcome = "broken"
      elseif res.status == 500 or res.status == 429 then
        outcome = tostring(res.status)
      else
        outcome = "other:" .. tostring(res.status)
      end
      rec[2] = outcome
      pending = pending - 1
    end
    return res
  end
  return serve(o)
end

local rates = {
  ["500"] = 0.10,
  ["429:1"] = 0.05,
  drop = 0.05,
  ["delay:" .. delay] = 0.02,
  broken = 0.01,
}
local sb = sandbox.start { builtin = false, fixtures = fixtures, faults = { rates = rates, seed = seed } }
hs.serve = serve

local control
control = http.serve { handler = function(req)
  if req.path == "/records" then
    -- a slow answer to a request the client gave up on may still be asleep
    local t0 = task.now()
    while pending > 0 and task.now() - t0 < delay + 5 do task.sleep(0.05) end
    return { json = records }
  elseif req.path == "/quit" then
    sb:close()
    control:close()
    return "bye"
  end
  return { status = 404 }
end }

print(json.encode { url = sb.url, control = control.url, api_key = sb.api_key, secret_key = sb.secret_key })
io.stdout:flush()
control:wait()
