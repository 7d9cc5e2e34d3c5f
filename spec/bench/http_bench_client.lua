-- http_bench_client.lua URL N C: N GETs of URL from C tasks, each a loop
-- over http.request, as a script fetching many documents would be written.
-- Wall and CPU time are measured from outside (spec/bench/http_bench.sh).
local url, n, c = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert(url and n and c, "usage: kpiwatch http_bench_client.lua URL N C")
if c > n then c = n end
http.configure{ max_concurrent = c }
local issued, ok = 0, 0
local function worker()
  while issued < n do
    issued = issued + 1
    local r = http.request{ url = url }
    if r.status == 200 and #r.body > 0 then ok = ok + 1 end
  end
end
local tasks = {}
for i = 1, c do tasks[i] = task.spawn(worker) end
for i = 1, c do task.wait(tasks[i]) end
print(string.format("requests=%d ok=%d connections=%d", n, ok, http.stats().connections))
os.exit(ok == n and 0 or 1)
