-- What several specs need: fixture KPI objects and scratch files.
-- require "spec.lua.helpers.util" (busted runs from the repository root).

local fixtures = require "kpiwatch.fixtures"
local model = require "kpiwatch.model"

local M = {}

-- offline(code) -> stdout, exit status of `kpiwatch -e code` run in a
-- network namespace of its own (unshare -n, as root): a name lookup there
-- fails at once with no packet leaving the machine, so tests of the dns
-- error kind never ask a real resolver about any host.
function M.offline(code)
  local process = require "kpiwatch._process"
  local kw = os.getenv("KPIWATCH") or "build/kpiwatch"
  local r = assert(process.spawn({ "unshare", "-n", kw, "-e", code }))
  assert(r.status == 0, "unshare -n kpiwatch failed: " .. tostring(r.stderr))
  return r.stdout
end

-- kpi(name) -> the KPI object of the sandbox fixture `name` ("failing", ...)
function M.kpi(name)
  local f = fixtures.get(fixtures.ids[name])
  return assert(model.parse(f.body, f.id))
end

-- raises(fn) -> the error object fn raises (fails the test when fn does not
-- raise, or raises something else than a kpiwatch error object)
function M.raises(fn)
  local ok, e = pcall(fn)
  assert(not ok, "expected an error, got success")
  assert(require("kpiwatch.errors").is(e), "expected an error object, got " .. tostring(e))
  return e
end

-- tmpdir() -> a new empty directory's path
function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

-- tmpname() -> a fresh path that does not exist yet
function M.tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

-- read(path) -> the file's bytes
function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function M.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

function M.exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

-- buffer() -> a sink with write(...) and flush() like a file, and text()
-- for what was written (a command's stdout or stderr in a spec)
function M.buffer()
  local b = { parts = {} }
  function b:write(...)
    for _, s in ipairs({ ... }) do self.parts[#self.parts + 1] = tostring(s) end
    return self
  end
  function b:flush() return self end
  function b:text() return table.concat(self.parts) end
  return b
end

-- sandbox([opts]) -> t with t.start and t.stop for a describe block's
-- setup and teardown: the sandbox in this process for the KPIs client (no
-- retries), as t.sandbox (t.kpis the client).
function M.sandbox(opts)
  local t = {}
  function t.start()
    t.kpis = require "kpiwatch.kpis"
    t.sandbox = require("kpiwatch.sandbox").start_for_client(opts)
    t.kpis.point_at(t.sandbox)
    t.kpis._set_flags({ retries = 0 })
  end
  function t.stop()
    if t.sandbox then t.sandbox:close() end
    t.kpis._reset()
  end
  return t
end

-- run_gate(args [, env]) -> exit code, stdout text, stderr text of
-- `kpiwatch gate` run in this process (kpiwatch.cli.gate), its output
-- captured; env overrides the environment it sees (nothing else is set).
function M.run_gate(args, env)
  local out, err = M.buffer(), M.buffer()
  env = env or {}
  local code = require("kpiwatch.cli.gate").run(args, {}, {
    stdout = out, stderr = err, color = false,
    getenv = function(k) if env[k] ~= nil then return env[k] or nil end return nil end,
  })
  return code, out:text(), err:text()
end

return M
