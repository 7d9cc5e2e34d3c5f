-- kpiwatch history: trends of a run test from the history file, and
-- `kpiwatch history import` to back-fill it from the executions list.
--
-- Exit status: 0 ok (also when there is nothing stored yet: a note on
-- stderr says how to import); 2 usage, or no usable history file; 3 an API
-- or network error (import, --name).

local M = {}

M.USAGE = [[
usage: kpiwatch [options] history RUN_TEST|--name NAME [--metric M]... [--last N]
                                  [--format table|json|csv] [--html FILE] [--require EXPR]...
       kpiwatch [options] history import RUN_TEST|--name NAME [--calls]

Show how the KPIs of a run test's completed executions moved over time, from
the history file every get, gate, run, watch and script records into.
RUN_TEST is the run test's id, or its name (as --name; one request).
  --name NAME       the run test by its name (one request)
  --metric M        a metric to show: a KPI field (avg_score, failed_calls, ...),
                    failure_rate (failed_calls / total_calls), eval:NAME, or a
                    glob (eval:*, avg_*); repeatable. Default: avg_score,
                    failure_rate and every eval.
  --last N          only the newest N executions (default: all)
  --format F        table (default; with a sparkline per metric on a terminal),
                    json (one object) or csv (one row per execution)
  --html FILE       also write a self-contained HTML report: one SVG line chart
                    per metric, each point labelled with its execution id and
                    date, no scripts or external files
  --require EXPR    a threshold to draw on the charts, as gate's --require
                    ('avg_score>=0.8'); repeatable
  -h, --help        show this help

import back-fills the history from the run test's executions list (every
page): the KPIs of each completed execution not stored yet, with --calls
also its per-call scores (the significance tests use them).

History file: --history FILE, $KPIWATCH_HISTORY, else
$XDG_DATA_HOME/kpiwatch/history.db (~/.local/share/kpiwatch/history.db);
--no-history or KPIWATCH_HISTORY=off turn it off. See doc/history.md.
Exit status: 0 ok, 2 usage or no usable history file, 3 API or network error.
]]

local DEFAULT_METRICS = { "avg_score", "failure_rate", "eval:*" }

local function show(s)
  return require("kpiwatch.requirement").show(s)
end

local args = require "kpiwatch.cli.args"

local OPTIONS = {
  ["--name"] = {},
  ["--metric"] = { repeats = true, key = "metrics" },
  ["--last"] = { check = function(v)
    local n = tonumber(v)
    if not n or math.type(n) ~= "integer" or n < 1 then
      return nil, "--last needs a positive integer, got '" .. show(v) .. "'"
    end
    return n
  end },
  ["--format"] = { check = function(v)
    if v ~= "table" and v ~= "json" and v ~= "csv" then
      return nil, "--format must be table, json or csv, got '" .. show(v) .. "'"
    end
    return v
  end },
  ["--html"] = {},
  ["--require"] = { repeats = true },
  ["--calls"] = { flag = true },
}

-- parse_args(argv [, env]) -> options (positional: the arguments), or nil
-- and the exit status (a usage error or --help, written)
local function parse_args(argv, env)
  local o, stop = args.command(argv, { prog = "kpiwatch history", usage = M.USAGE, options = OPTIONS }, env)
  if not o then return nil, stop end
  o.positional, o.args = o.args, nil
  return o
end
M.parse_args = parse_args

-- The metrics to show: each --metric (globs over the stored names) in
-- order, each once. Returns a list of stored keys.
local function pick_metrics(store, run_test, wanted)
  local history = require "kpiwatch.history"
  local requirement = require "kpiwatch.requirement"
  local stored = store:metrics(run_test)
  local out, seen = {}, {}
  local function add(key)
    if not seen[key] then
      seen[key] = true
      out[#out + 1] = key
    end
  end
  for _, m in ipairs(wanted) do
    if m:find("[%*%?%[]") then
      local match, err = requirement.glob(m:match("^evals?[%.:](.*)$") or m)
      if not match then return nil, "bad --metric '" .. show(m) .. "': " .. err end
      local eval_only = m:match("^evals?[%.:]") ~= nil
      for _, key in ipairs(stored) do
        local disp = history.display_name(key)
        local ev = disp:match("^eval:(.*)$")
        if eval_only then
          if ev and match(ev) then add(key) end
        elseif match(key) or match(disp) then
          add(key)
        end
      end
    else
      add((history.metric_key(m)))
    end
  end
  return out
end

local function csv_field(s)
  -- server text (eval names): no control bytes, not even in quotes
  s = tostring(s):gsub("%c", "?")
  -- a cell a spreadsheet would run as a formula is quoted with a leading '
  if s:match("^[=+%-@\t\r]") and not tonumber(s) then s = "'" .. s end
  if s:find('[",\n\r]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

-- rows by execution: the union of the series' executions, oldest first
local function by_execution(series)
  local rows, index = {}, {}
  for si, s in ipairs(series) do
    for i = 1, s.n do
      local id = s.ids[i]
      local r = index[id]
      if not r then
        r = { id = id, time = s.times[i], values = {} }
        index[id] = r
        rows[#rows + 1] = r
      end
      r.values[si] = s.values[i]
      local source, server, calls = s:source(i)
      if source then r[si] = { source = source, server = server, calls = calls } end
    end
  end
  table.sort(rows, function(a, b)
    if a.time ~= b.time then return (a.time or "") < (b.time or "") end
    return a.id < b.id
  end)
  return rows
end

local function render_table(series, tty)
  local model = require "kpiwatch.model"
  local history = require "kpiwatch.history"
  local head = { "metric", "last", "median", "min", "max", "n" }
  if tty then head[#head + 1] = "trend" end
  local rows = { head }
  for _, s in ipairs(series) do
    local lo, hi
    for i = 1, s.n do
      lo = lo and math.min(lo, s.values[i]) or s.values[i]
      hi = hi and math.max(hi, s.values[i]) or s.values[i]
    end
    local fv = model.format_value
    local r = { show(s.display), fv(s.values[s.n]), fv(s:median()), fv(lo), fv(hi), tostring(s.n) }
    if tty then r[#r + 1] = history.sparkline(s.values, s.n) end
    rows[#rows + 1] = r
  end
  local widths = {}
  for _, r in ipairs(rows) do
    for c, cell in ipairs(r) do widths[c] = math.max(widths[c] or 0, utf8.len(cell) or #cell) end
  end
  local out = {}
  for _, r in ipairs(rows) do
    local cells = {}
    for c, cell in ipairs(r) do
      local pad = widths[c] - (utf8.len(cell) or #cell)
      if c == 1 or c == #r and tty then
        cells[c] = cell .. string.rep(" ", c == #r and 0 or pad)
      else
        cells[c] = string.rep(" ", pad) .. cell
      end
    end
    out[#out + 1] = table.concat(cells, "  ")
  end
  for _, s in ipairs(series) do
    local note = require("kpiwatch.history").precision_note(s)
    if note then out[#out + 1] = show(s.display) .. ": " .. note end
  end
  return table.concat(out, "\n") .. "\n"
end

local function render_json(run_test, series)
  local json = require "kpiwatch.json"
  local list = {}
  for _, r in ipairs(by_execution(series)) do
    local o = { execution_id = r.id, time = r.time }
    for si, s in ipairs(series) do
      o[s.display] = r.values[si] == nil and json.null or r.values[si]
      -- which points are exact means of per-call scores, which the server's rounding
      local p = r[si]
      if p then
        o[s.display .. "_source"] = p.source
        o[s.display .. "_server"] = p.server
        o[s.display .. "_calls"] = p.calls
      end
    end
    list[#list + 1] = o
  end
  local metrics = {}
  for i, s in ipairs(series) do metrics[i] = s.display end
  if #list == 0 then list = json.array and json.array() or list end
  return json.encode({ run_test = run_test, metrics = metrics, executions = list }) .. "\n"
end

local function render_csv(series)
  local model = require "kpiwatch.model"
  local head = { "execution_id", "time" }
  for _, s in ipairs(series) do
    head[#head + 1] = csv_field(s.display)
    if s.exact_n then head[#head + 1] = csv_field(s.display .. "_source") end
  end
  local out = { table.concat(head, ",") }
  for _, r in ipairs(by_execution(series)) do
    local cells = { csv_field(r.id), csv_field(r.time or "") }
    for si, s in ipairs(series) do
      local v = r.values[si]
      cells[#cells + 1] = v == nil and "" or model.format_value(v)
      if s.exact_n then cells[#cells + 1] = r[si] and r[si].source or "" end
    end
    out[#out + 1] = table.concat(cells, ",")
  end
  return table.concat(out, "\n") .. "\n"
end

-- thresholds to draw, by display name, from --require texts
local function thresholds_of(reqs)
  local history = require "kpiwatch.history"
  local out = {}
  for _, r in ipairs(reqs) do
    local disp
    if r.target.kind == "eval" then
      disp = "eval:" .. r.target.name
    elseif r.target.kind == "field" then
      disp = history.display_name((history.metric_key(r.target.name)))
    end
    if disp then
      out[disp] = out[disp] or {}
      table.insert(out[disp], { threshold = r.threshold, text = r.text })
    end
  end
  return out
end

local function api_error(e, stderr)
  local errors = require "kpiwatch.errors"
  if not errors.is(e) then error(e, 0) end
  stderr:write("kpiwatch history: ", e.kind, ": ", e.message, "\n")
  return (e.kind == "config" or e.kind == "invalid_id") and 2 or 3
end

-- import(store, run_test, o, env) -> exit code
local function import(store, run_test, o, env)
  local kpis = require "kpiwatch.kpis"
  local ok, err = pcall(function()
    local added, known, skipped = 0, 0, 0
    for _, e in ipairs(kpis.executions(run_test)) do
      local status = type(e.status) == "string" and e.status:lower() or nil
      if status ~= "completed" then
        skipped = skipped + 1
      elseif store:has(e.id) and not o.calls then
        store:record({}, { execution_id = e.id, run_test = run_test, status = "completed" })
        known = known + 1
      else
        local k = store:has(e.id) and {} or kpis.get(e.id)
        local calls = o.calls and kpis.calls(e.id) or nil
        if store:record(k, { execution_id = e.id, run_test = run_test, status = "completed", start_time = e.start_time,
            calls = calls }) then
          added = added + 1
        else
          known = known + 1
        end
      end
    end
    env.stdout:write(("imported %d executions of run test %s (%d already stored, %d not completed)\n"):format(added,
      run_test, known, skipped))
  end)
  if not ok then return api_error(err, env.stderr) end
  return 0
end

---Runs `kpiwatch history` with its arguments (after the command name).
---@param args string[]
---@param _? table global flags (applied by kpiwatch.cli before the command)
---@param env? {stdout?: file*, stderr?: file*, tty?: boolean}
---@return integer exit status
function M.run(argv, _, env)
  env = env or {}
  env.stdout = env.stdout or io.stdout
  env.stderr = env.stderr or io.stderr
  local function usage_error(msg)
    return args.usage_error("kpiwatch history", msg, env.stderr)
  end
  local o, stop = parse_args(argv or {}, env)
  if not o then return stop end
  local importing = o.positional[1] == "import"
  if importing then table.remove(o.positional, 1) end
  if #o.positional > 1 then return usage_error("expected one run test, got '" .. show(o.positional[2]) .. "' too") end
  if o.name and #o.positional > 0 then return usage_error("give a run test or --name NAME, not both") end
  if not o.name and #o.positional == 0 then return usage_error("missing RUN_TEST (or --name NAME)") end
  if importing and (#o.metrics > 0 or o.last or o.format or o.html or #o.require > 0) then
    return usage_error("import takes only RUN_TEST or --name NAME (and --calls)")
  end
  if o.calls and not importing then return usage_error("--calls is an import option") end
  local reqs = {}
  for _, text in ipairs(o.require) do
    local r, err = require("kpiwatch.requirement").parse(text)
    if not r then return usage_error("bad --require: " .. err) end
    reqs[#reqs + 1] = r
  end

  local history = require "kpiwatch.history"
  local store, serr = history.default()
  if not store then
    env.stderr:write("kpiwatch history: ", serr == "history is off" and
      "history is off (--no-history or KPIWATCH_HISTORY=off)" or serr, "\n")
    return 2
  end

  local run_test = o.positional[1]
  local kpis = require "kpiwatch.kpis"
  -- the history is keyed by run test id: a name (with --name, or a
  -- RUN_TEST that is no UUID) costs one request
  local name = o.name or (not kpis.is_uuid(run_test) and run_test) or nil
  if name then
    local ok, id = pcall(kpis.run_test_id, name)
    if not ok then return api_error(id, env.stderr) end
    run_test = id
  else
    run_test = run_test:lower()
  end
  if importing then return import(store, run_test, o, env) end

  local keys, merr = pick_metrics(store, run_test, #o.metrics > 0 and o.metrics or DEFAULT_METRICS)
  if not keys then return usage_error(merr) end
  local series = {}
  for _, key in ipairs(keys) do
    local s = store:series(run_test, key, { last = o.last })
    s.display = history.display_name(s.key)
    series[#series + 1] = s
  end
  local title = name or run_test
  if store:count(run_test) == 0 then
    env.stderr:write("kpiwatch history: nothing stored for run test '", show(title),
      "' yet (back-fill it with: kpiwatch history import ",
      o.name and ("--name '" .. show(o.name) .. "'") or show(title), ")\n")
  end
  local fmt = o.format or "table"
  if fmt == "table" then
    local tty = env.tty
    if tty == nil then tty = require("kpiwatch.shared").isatty(1) end
    env.stdout:write(render_table(series, tty))
  elseif fmt == "json" then
    env.stdout:write(render_json(run_test, series))
  else
    env.stdout:write(render_csv(series))
  end
  env.stdout:flush()
  if o.html then
    local html = require("kpiwatch.history.html").render(title, series, thresholds_of(reqs))
    local fs = require "kpiwatch._fs"
    local ok, _, werr = fs.write_atomic(o.html, html, 420) -- 0644: an artifact to share
    if not ok then
      env.stderr:write("kpiwatch history: cannot write ", o.html, ": ", tostring(werr), "\n")
      return 2
    end
  end
  return 0
end

return setmetatable(M, { __call = function(_, argv, flags) return M.run(argv, flags) end })
