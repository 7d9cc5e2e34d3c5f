-- http_bench_server.lua [PORT]: serves one small JSON document (the size of
-- a KPIs response) on loopback with http.serve, prints its URL, and runs
-- until killed. The server of spec/bench/http_bench.sh.
local doc = json.encode{
  status = true,
  result = {
    total_calls = 1200, completed_calls = 1187, failed_calls = 13,
    avg_score = 0.873, avg_response_time = 1.42, success_rate = 0.989,
    agent_type = "voice", avg_agent_latency = 812, avg_customer_latency = 640,
  },
}
local srv = http.serve{
  port = tonumber(arg[1]) or 0,
  handler = function()
    return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = doc }
  end,
}
print(srv.url .. "/doc.json")
io.stdout:flush()
