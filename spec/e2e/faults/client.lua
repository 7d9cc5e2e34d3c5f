-- The client side of spec/e2e/test_fault_injection.py: kpis.get_all over
-- N executions of the fault-injecting sandbox, in BATCHES calls of N/BATCHES
-- ids each (memory is sampled after each, results dropped in between).
--
--   kpiwatch client.lua URL N BATCHES TIMEOUT OUT.json
--
-- Credentials come from FI_API_KEY / FI_SECRET_KEY. Writes, as each batch
-- ends, one JSON line per execution to OUT.json.results (nothing of a batch
-- is kept in memory after it): {id=, ok=true, match=bool} or
-- {id=, kind=, status=, attempts=, retry_after=, retryable=, message=}.
-- At the end, OUT.json:
--   attempts execution id -> kpis.get attempts seen by kpiwatch.http
--   rss_kb   VmRSS after each batch (after a full GC); hwm_kb VmHWM at the end
--   stats    kpis.stats();  options: the client options used
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local docs = dofile(dir .. "/docs.lua")
local json = require "kpiwatch.json"
local errors = require "kpiwatch.errors"
local model = require "kpiwatch.model"
local http = require "kpiwatch.http"

local url, n, batches, timeout, out = arg[1], math.tointeger(tonumber(arg[2])),
  math.tointeger(tonumber(arg[3])), tonumber(arg[4]), arg[5]
assert(url and n and batches and timeout and out, "usage: client.lua URL N BATCHES TIMEOUT OUT.json")

local options = {
  base_url = url, timeout = timeout, retries = 3, backoff = 0.05, backoff_max = 0.4,
  max_retry_after = 5, concurrency = 64,
}
kpis.configure(options)

-- Count the attempts kpis.get makes per id (each is one http.request; what
-- libcurl does underneath, such as resending a request that died on a
-- reused connection, is the sandbox's count to see).
local attempts = {}
local request = http.request
http.request = function(req)
  local id = req.url:match("/test%-executions/([^/]+)/kpis/$")
  attempts[id] = (attempts[id] or 0) + 1
  return request(req)
end

local function deep_equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function status_kb(field)
  local f = assert(io.open("/proc/self/status"))
  local text = f:read("a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+)"))
end

local results = assert(io.open(out .. ".results", "w"))
local rss = {}
local per = (n + batches - 1) // batches
local t0 = task.now()

-- Fetches one batch and writes its results; the results die with the call,
-- so the collection after it leaves only what the client itself keeps.
local function fetch_batch(ids)
  local got = kpis.get_all(ids)
  assert(#got == #ids, "get_all returned " .. #got .. " results for " .. #ids .. " ids")
  for j, r in ipairs(got) do
    local id = ids[j]
    if errors.is(r) then
      results:write(json.encode {
        id = id, kind = r.kind, status = r.status, attempts = r.attempts,
        retry_after = r.retry_after, retryable = r.retryable, message = tostring(r.message),
        execution_id = r.execution_id,
      }, "\n")
    elseif model.is(r) then
      local want = json.decode(docs.body(docs.index(id))).result
      local match = deep_equal(r:raw(), want) and r.execution_id == id
      results:write(json.encode { id = id, ok = true, match = match }, "\n")
    else
      results:write(json.encode { id = id, kind = "not a result: " .. type(r) }, "\n")
    end
  end
end

for b = 0, batches - 1 do
  local ids = {}
  for i = b * per + 1, math.min(n, (b + 1) * per) do ids[#ids + 1] = docs.id(i) end
  fetch_batch(ids)
  collectgarbage()
  collectgarbage()
  rss[#rss + 1] = status_kb("VmRSS")
end

results:close()
local f = assert(io.open(out, "w"))
f:write(json.encode {
  attempts = attempts, rss_kb = rss, hwm_kb = status_kb("VmHWM"),
  stats = kpis.stats(), options = options, elapsed = task.now() - t0,
})
f:close()
