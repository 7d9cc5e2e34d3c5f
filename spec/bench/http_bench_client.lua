-- http_bench_client.lua [-H 'Name: value']... URL[,URL...] N C: N GETs from
-- C tasks, each a loop over http.request, as a script fetching many
-- documents would be written; bodies are checked, not decoded. -H adds a
-- request header to every request; with several comma-separated URLs,
-- request i goes to URL number i modulo their count (as http_bench_curl.c).
-- Wall and CPU time are measured from outside (spec/bench/http_bench.sh,
-- spec/bench/run.sh).
local headers, i = nil, 1
while arg[i] == "-H" and arg[i + 1] do
  local name, value = arg[i + 1]:match("^([^:]+):%s*(.*)$")
  assert(name, "-H needs 'Name: value'")
  headers = headers or {}
  headers[name] = value
  i = i + 2
end
local url_list, n, c = arg[i], tonumber(arg[i + 1]), tonumber(arg[i + 2])
assert(url_list and n and c, "usage: kpiwatch http_bench_client.lua [-H 'Name: value']... URL[,URL...] N C")
local urls = {}
for u in url_list:gmatch("[^,]+") do urls[#urls + 1] = u end
if c > n then c = n end
http.configure{ max_concurrent = c }
local issued, ok = 0, 0
local nurls = #urls
local function worker()
  while issued < n do
    local k = issued
    issued = issued + 1
    local r = http.request{ url = urls[k % nurls + 1], headers = headers }
    if r.status == 200 and #r.body > 0 then ok = ok + 1 end
  end
end
local tasks = {}
for w = 1, c do tasks[w] = task.spawn(worker) end
for w = 1, c do task.wait(tasks[w]) end
print(string.format("requests=%d ok=%d connections=%d", n, ok, http.stats().connections))
os.exit(ok == n and 0 or 1)
