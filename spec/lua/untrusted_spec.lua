-- Text from the server is untrusted (issue 13, items 5 to 8): a local
-- server answers 200 with hostile KPI bodies, and every output of kpiwatch
-- (get, the gate's reports) must stay clean: no control character from the
-- server, no workflow command at column 0, valid UTF-8 in JSON, no echoed
-- credential, and no check passing on a number JSON does not have.

local http = require "kpiwatch.http"
local kpis = require "kpiwatch.kpis"
local model = require "kpiwatch.model"
local jsonlib = require "kpiwatch.json"

local API_KEY, SECRET_KEY = "kw-test-api-key-4711", "kw-test-secret-key-0815"

-- id -> body the server answers with 200
local BODIES = {
  ["00000000-0000-4000-8000-000000000001"] =
    '{"avg_score": 0.9, "total_calls": 3, "avg_x\\n::error title=PWNED::owned": 1,'
    .. ' "avg_esc\\u001b[2J\\u001b]0;t\\u0007": 2, "agent_type": "voice\\u001b[31m", "avg_c1\\u009b": 3}',
  ["00000000-0000-4000-8000-000000000002"] =
    '{"avg_score": 0.9, "total_calls": 3, "agent_type": "v\255\254oice", "avg_bad\192\175": 1}',
  ["00000000-0000-4000-8000-000000000003"] =
    '{"avg_score": 0.9, "total_calls": 3, "agent_type": "' .. SECRET_KEY .. '", "avg_'
    .. API_KEY .. '": 1, "note": "\\u006bw-test-secret-key-0815"}',
  ["00000000-0000-4000-8000-000000000004"] = '{"avg_score": 1e400, "total_calls": 3}',
  ["00000000-0000-4000-8000-000000000005"] = '{"avg_score": Infinity, "total_calls": 3}',
  ["00000000-0000-4000-8000-000000000006"] = '{"avg_score": 0x1, "total_calls": 3}',
  ["00000000-0000-4000-8000-000000000007"] = '{"avg_score": 0.5, "avg_score": 0x1, "total_calls": 3}',
  ["00000000-0000-4000-8000-000000000008"] = '{"avg_score": NaN, "total_calls": 3, "avg_tone": 90}',
}
local HOSTILE, BAD_UTF8, ECHO = "00000000-0000-4000-8000-000000000001",
  "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000003"

local run = require("spec.lua.helpers.util").run_gate

local util = require "spec.lua.helpers.util"
local tmpname = util.tmpname

-- a report's text; the file is removed
local function read(path)
  local s = util.read(path)
  os.remove(path)
  return s
end

-- No C0 (but LF), DEL or C1 control character anywhere in s.
local function assert_clean(s, what)
  assert.is_nil(s:find("[%z\1-\9\11-\31\127]"), what .. " has a control character: " .. s)
  assert.is_nil(s:find("\194[\128-\159]"), what .. " has a C1 control: " .. s)
end

describe("text from the server", function()
  local srv
  setup(function()
    srv = http.serve{
      port = 0,
      handler = function(req)
        local id = req.path:match("test%-executions/([^/]+)/kpis/")
        local sid = req.path:match("test%-executions/([^/]+)/$")
        if sid and BODIES[sid] then -- the status read the gate makes first
          return { status = 200, headers = { ["Content-Type"] = "application/json" },
            body = '{"count": 0, "next": null, "previous": null, "results": [], "status": "completed"}' }
        end
        local body = id and BODIES[id]
        if not body then return { status = 404, body = '{"detail": "not found"}' } end
        return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = body }
      end,
    }
    kpis._set_flags({ base_url = "http://127.0.0.1:" .. srv.port, retries = 0,
      api_key = API_KEY, secret_key = SECRET_KEY })
  end)
  teardown(function()
    kpis._reset()
    if srv then srv:close() end
  end)

  it("never puts a workflow command at column 0 of --format github (item 5)", function()
    local code, out = run({ HOSTILE, "--require", "eval:*>=5", "--format", "github" })
    assert.equal(1, code)
    for line in out:gmatch("[^\n]+") do
      if line:sub(1, 2) == "::" then
        -- ours; the key is data inside it, escaped
        assert.matches("^::error title=kpiwatch gate%%3A ", line)
      end
    end
    assert.truthy(out:find("PWNED", 1, true), "the key is shown, made harmless")
    assert_clean(out, "github report")
  end)

  it("neutralises ESC and C1 in the text report, the verdict line and get (item 5)", function()
    local _, out = run({ HOSTILE, "--require", "eval:*>=5" })
    assert_clean(out, "text report")
    assert.matches("gate FAIL", out)
    local k = kpis.get(HOSTILE)
    assert_clean(tostring(k), "get's summary")
    assert_clean(model.format_value(k.agent_type), "a value")
  end)

  it("replaces invalid UTF-8 in get --json and the JSON report (item 6)", function()
    local k = kpis.get(BAD_UTF8)
    local j = model.encode_json(k, jsonlib.encode)
    assert.truthy(utf8.len(j), j)
    assert.truthy(j:find("v\239\191\189\239\191\189oice", 1, true), j)
    local path = tmpname()
    run({ BAD_UTF8, "--require", "eval:*>=5", "--output", "json:" .. path })
    local rep = read(path)
    assert.truthy(utf8.len(rep), rep)
    assert.truthy(rep:find("bad\239\191\189\239\191\189", 1, true), rep)
  end)

  it("redacts a configured secret echoed in a 200 body, as a key or a value (item 7)", function()
    local k = kpis.get(ECHO)
    local outs = { tostring(k), model.encode_json(k, jsonlib.encode) }
    for _, f in ipairs({ "text", "json", "junit", "markdown", "github" }) do
      local path = tmpname()
      local _, out = run({ ECHO, "--require", "eval:*>=5", "--output", f .. ":" .. path })
      outs[#outs + 1] = out
      outs[#outs + 1] = read(path)
    end
    for _, s in ipairs(outs) do
      assert.is_nil(s:find(API_KEY, 1, true), s)
      assert.is_nil(s:find(SECRET_KEY, 1, true), s)
    end
    assert.truthy(outs[2]:find("[REDACTED]", 1, true))
  end)

  it("never passes on 1e400, Infinity, NaN or 0x1 (item 8)", function()
    for n = 4, 8 do
      local id = string.format("00000000-0000-4000-8000-%012d", n)
      local path = tmpname()
      local code, out = run({ id, "--require", "avg_score>=0.8", "--output", "json:" .. path })
      assert.equal(1, code, out)
      local rep = jsonlib.decode(read(path))
      assert.equal("error", rep.checks[1].status)
      assert.matches("not a finite JSON number", rep.checks[1].message)
    end
  end)

  it("keeps the other fields of such a body usable (item 8)", function()
    local code = run({ "00000000-0000-4000-8000-000000000008", "--require", "eval:tone>=80" })
    assert.equal(0, code)
    local k = kpis.get("00000000-0000-4000-8000-000000000006")
    assert.equal(3, k.total_calls)
    assert.has_error(function() return k.avg_score >= 0.8 end)
  end)
end)
