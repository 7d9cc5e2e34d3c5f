-- kpiwatch compare A B: two executions side by side with deltas (b - a),
-- the REPL's kpis.compare as a command, for CI logs, scripts and PR text.

local USAGE = [[
usage: kpiwatch [options] compare A B [--format text|json|markdown]

Fetch the KPIs of executions A and B (UUIDs) at once and print every
field of both with the delta b - a (and the relative change).
  --format text      aligned columns (default)
  --format json      {"a": ID, "b": ID, "rows": [{"section", "name", "a", "b", "delta"}]}
  --format markdown  a table, for a pull request comment or step summary
  -h, --help         show this help
Global options (--sandbox, --base-url, --timeout, --retries, --ca-file,
--verbose) go before 'compare'. Credentials: FI_API_KEY and FI_SECRET_KEY.
Exit status: 0 printed, 2 usage / bad id / missing credentials,
3 API or network error.
]]

local args = require "kpiwatch.cli.args"

local FORMATS = { text = true, json = true, markdown = true }

local OPTIONS = {
  ["--format"] = { check = function(v)
    if not FORMATS[v] then return nil, "--format takes text, json or markdown" end
    return v
  end },
}

local function usage_error(msg)
  return args.usage_error("kpiwatch: compare", msg)
end

local function markdown(rows, a, b)
  local report = require "kpiwatch.gate_report"
  local compare = require "kpiwatch.compare"
  local out = {
    "### kpiwatch compare",
    "",
    "a: " .. report.md_code(a.execution_id) .. ", b: " .. report.md_code(b.execution_id),
    "",
    "| Section | Field | a | b | Delta (b - a) |",
    "|---|---|---:|---:|---:|",
  }
  for _, r in ipairs(rows) do
    out[#out + 1] = "| " .. table.concat({ r.section, report.md_code(r.name), report.md(compare.cell(r.a, r.a_present)),
      report.md(compare.cell(r.b, r.b_present)), report.md(compare.delta_text(r)) }, " | ") .. " |"
  end
  return table.concat(out, "\n") .. "\n"
end

local function as_json(rows, a, b)
  local json = require "kpiwatch.json"
  local list = {}
  for i, r in ipairs(rows) do
    list[i] = { section = r.section, name = r.name, a = r.a_present and r.a or json.null,
      b = r.b_present and r.b or json.null, delta = r.delta or json.null }
  end
  return json.encode({ a = a.execution_id, b = b.execution_id, rows = json.array(list) }) .. "\n"
end

return function(argv)
  local errors = require "kpiwatch.errors"
  local kpis = require "kpiwatch.kpis"
  local o, stop = args.command(argv, { prog = "kpiwatch: compare", usage = USAGE, options = OPTIONS })
  if not o then return stop end
  local ids, fmt = o.args, o.format or "text"
  if #ids ~= 2 then return usage_error("expected two execution IDs, got " .. #ids) end
  for _, id in ipairs(ids) do
    if not kpis.is_uuid(id) then
      return usage_error("invalid execution ID: not a UUID: '" .. kpis._show_id(id) .. "'")
    end
  end
  local compare = require "kpiwatch.compare"
  local ok, rows, a, b = pcall(compare.rows, ids[1]:lower(), ids[2]:lower(), kpis.get)
  if not ok then
    local e = rows
    if not errors.is(e) then error(e, 0) end
    local where = e.execution_id and (" (execution " .. e.execution_id .. ")") or ""
    io.stderr:write("kpiwatch: ", e.kind, ": ", e.message, where, "\n")
    return (e.kind == "invalid_id" or e.kind == "config") and 2 or 3
  end
  if fmt == "json" then
    io.stdout:write(as_json(rows, a, b))
  elseif fmt == "markdown" then
    io.stdout:write(markdown(rows, a, b))
  else
    io.stdout:write(compare.format_rows(rows, a, b), "\n")
  end
  io.stdout:flush()
  return 0
end
