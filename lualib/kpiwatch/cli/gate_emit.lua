-- The reports of kpiwatch gate and kpiwatch run: where they go (--format,
-- --output), the one-line usage and API errors, and writing every report
-- (stdout, --output files, GITHUB_STEP_SUMMARY, --comment). Also holds the
-- command's name and stderr for the messages (setup_env), so the gate's
-- modules (kpiwatch.cli.gate, kpiwatch.cli.gate_judge) name the same command.

local requirement = require "kpiwatch.requirement"
local report = require "kpiwatch.gate_report"

local M = {}

local function show(s)
  return requirement.show(tostring(s))
end

local stderr = io.stderr -- replaced during M.run (tests capture it)
local prog = "kpiwatch gate" -- or "kpiwatch run": the command the messages name
-- Set by M.run once the options parse: writes the --output reports of a
-- usage error, so a CI reading junit.xml sees the error, not "no report".
local report_usage_error

local function usage_error(msg)
  -- one line, whatever the message (a require failure lists every path)
  msg = tostring(msg):gsub("\n.*", "")
  require("kpiwatch.cli.args").usage_error(prog, msg, stderr)
  if report_usage_error then report_usage_error(msg) end
  return 2
end

local EXT_FORMAT = { xml = "junit", json = "json", md = "markdown", markdown = "markdown", txt = "text" }

-- plan_outputs(o, env) -> stdout format, list of {format=, path=}, or nil,
-- message.
function M.plan_outputs(o, getenv)
  getenv = getenv or os.getenv
  if o.format and not report.FORMATS[o.format] then
    return nil, "unknown --format '" .. show(o.format) .. "' (text, json, junit, github or markdown)"
  end
  local terminal = getenv("GITHUB_ACTIONS") == "true" and "github" or "text"
  local files, format_used = {}, false
  for _, spec in ipairs(o.output) do
    local fmt, path = spec:match("^(%a+):(.+)$")
    if fmt and not report.FORMATS[fmt] then
      return nil, "unknown report format '" .. show(fmt) .. "' in --output '" .. show(spec)
        .. "' (text, json, junit, github or markdown; write ./" .. show(spec) .. " for a file name with a colon)"
    end
    if not fmt then
      path = spec
      if o.format then
        fmt = o.format
        format_used = true
      else
        local ext = path:match("%.(%w+)$")
        fmt = ext and EXT_FORMAT[ext:lower()]
        if not fmt then
          return nil, "cannot tell the report format of --output '" .. show(spec)
            .. "': write FORMAT:FILE (e.g. junit:" .. show(spec) .. ") or give --format"
        end
      end
    end
    if path == "" then return nil, "empty file name in --output '" .. show(spec) .. "'" end
    files[#files + 1] = { format = fmt, path = path }
  end
  local stdout_format = (o.format and not format_used) and o.format or terminal
  return stdout_format, files
end

-- ---- the run -------------------------------------------------------------------------

local function exit_code_of(err)
  if err.kind == "invalid_id" or err.kind == "config" then return 2 end
  return 3
end

local function error_line(err, id)
  local where = err.execution_id and (" (execution " .. err.execution_id .. ")")
    or (id and (" (execution " .. id .. ")") or "")
  local what = exit_code_of(err) == 2 and "configuration error" or "API error"
  if err.kind == "timeout" or err.kind == "connect" or err.kind == "dns" or err.kind == "tls"
    or err.kind == "network" then what = "network error" end
  -- kpis.wait's timeout: the execution is still going, the network is fine
  if err.kind == "timeout" and err.execution_status then what = "wait" end
  return what .. ": " .. err.kind .. ": " .. tostring(err.message) .. where
end

local function write_file(path, text)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(text)
  if not ok then
    f:close()
    return nil, werr
  end
  local cok, cerr = f:close()
  if not cok then return nil, cerr end
  return true
end

local function append_file(path, text)
  local f, err = io.open(path, "ab")
  if not f then return nil, err end
  local ok, werr = f:write(text)
  f:close()
  if not ok then return nil, werr end
  return true
end

local function is_tty()
  return require("kpiwatch.shared").isatty(1)
end

-- Emit every report. Returns the exit code adjusted for write failures.
local function emit(result, stdout_format, files, code, env)
  if env.comment then require("kpiwatch.comment").report(env.comment, result, env) end
  local color = stdout_format == "text" and env.color
  local out = env.stdout
  if result.verdict == "error" then
    -- the one-line error is on stderr already; a machine report still
    -- goes out so a CI reading it sees the error, not nothing
    if stdout_format == "github" then
      local e = result.error
      out:write("::error title=", report.gh_prop("kpiwatch gate: " .. e.kind), "::", report.gh_data(e.message), "\n")
    elseif stdout_format ~= "text" then
      out:write(report.render(stdout_format, result))
    end
  else
    out:write(report.render(stdout_format, result, { color = color }))
    if stdout_format ~= "text" and stdout_format ~= "github" then
      env.stderr:write("kpiwatch ", report.verdict_line(result), "\n")
    end
  end
  out:flush()
  local github_used = stdout_format == "github"
  for _, f in ipairs(files) do
    if f.format == "github" then github_used = true end
    local ok, err = write_file(f.path, report.render(f.format, result))
    if not ok then
      env.stderr:write(prog, ": cannot write the ", f.format, " report: ", tostring(err), "\n")
      code = 2
    end
  end
  local summary = github_used and env.getenv("GITHUB_STEP_SUMMARY")
  if summary and summary ~= "" then
    local ok, err = append_file(summary, report.markdown(result) .. "\n")
    if not ok then
      env.stderr:write(prog, ": cannot append to GITHUB_STEP_SUMMARY: ", tostring(err), "\n")
      code = 2
    end
  end
  return code
end

-- _usage_reports(o, env, msg [, id]): the --output files of a usage error,
-- each an error report with exit code 2 (the --output specs that plan; an
-- unknown --format does not stop them, the terminal prints no report anyway).
-- id: the execution given, when it is one.
function M._usage_reports(o, env, msg, id)
  local _, files = M.plan_outputs(o, env.getenv)
  if type(files) ~= "table" then
    _, files = M.plan_outputs(setmetatable({ format = false }, { __index = o }), env.getenv)
  end
  if type(files) ~= "table" then return end
  local result = {
    execution_id = id and require("kpiwatch.kpis").is_uuid(id) and id:lower() or nil,
    verdict = "error", exit_code = 2, checks = {}, duration = 0,
    error = { kind = "usage", message = msg },
    summary = { total = 0, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 1 },
    started_at = require("kpiwatch.time").rfc3339(),
  }
  for _, f in ipairs(files) do
    local ok, err = write_file(f.path, report.render(f.format, result))
    if not ok then
      env.stderr:write(prog, ": cannot write the ", f.format, " report: ", tostring(err), "\n")
    end
  end
end

-- _report_usage_errors(o, env [, id]): from now on (until the next
-- setup_env) a usage error also writes o's --output reports (gate and run).
function M._report_usage_errors(o, env, id)
  report_usage_error = function(msg) M._usage_reports(o, env, msg, id) end
end

-- setup_env(env [, name]) fills in env's defaults and names the command
-- in messages (name: "kpiwatch run" when run uses the gate's code).
local function setup_env(env, name)
  env = env or {}
  env.stdout = env.stdout or io.stdout
  env.stderr = env.stderr or io.stderr
  stderr = env.stderr
  prog = name or "kpiwatch gate"
  report_usage_error = nil
  env.getenv = env.getenv or os.getenv
  return env
end
M._setup_env = setup_env

M.show, M.usage_error, M.error_line, M.exit_code_of, M.emit, M.is_tty =
  show, usage_error, error_line, exit_code_of, emit, is_tty

-- prog() -> the command the messages name ("kpiwatch gate" or "kpiwatch run").
function M.prog() return prog end

-- report_usage(msg): writes the --output reports of a usage error, once
-- _report_usage_errors armed it (nothing before the options parse).
function M.report_usage(msg)
  if report_usage_error then report_usage_error(msg) end
end

return M
