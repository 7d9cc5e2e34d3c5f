-- kpiwatch.repl: the interactive prompt (`kpiwatch -i`, or `kpiwatch` with
-- no script on a terminal).
--
-- Policy over kpiwatch._repl (runtime/repl.c: libedit driven by the event
-- loop, so tasks keep running while the user types):
--   * a line is first tried as an expression (`return <line>`), then as a
--     statement, as lua.c does; an incomplete chunk (a syntax error at
--     <eof>) asks for more lines with the continuation prompt;
--   * each chunk runs in its own task, so `k = kpis.get(id)` just works and
--     prints when the answer arrives; `_` holds the last result;
--   * results are pretty-printed (M.format): KPI objects as their summary,
--     tables sorted and indented with a depth limit and cycle detection,
--     strings quoted, several values on one line;
--   * Ctrl-C cancels the running chunk (its in-flight op, a fetch or a
--     sleep, is cancelled; Lua spinning in a loop is interrupted by the
--     scheduler's hook) and returns to the prompt; at the prompt it clears
--     the line; Ctrl-D exits with status 0;
--   * an error prints one line; `.traceback` or traceback() shows where;
--   * TAB completes globals, fields and methods (M.complete), fixture ids
--     inside a string when the sandbox runs;
--   * history persists in $XDG_STATE_HOME/kpiwatch/history (default
--     ~/.local/state/kpiwatch/history).

local M = {}

---@brief
--- The interactive prompt: `kpiwatch` with no script on a terminal, or
--- `kpiwatch -i`. A line is tried as an expression first (its value is
--- printed), then as a statement; an unfinished chunk continues at the `>>`
--- prompt. Each chunk runs in its own task, so `kpis.get` just works and tasks
--- you start keep running while you type; `_` holds the last value. Locals do
--- not survive from one line to the next (use globals). TAB completes globals,
--- fields and methods (and fixture ids with `--sandbox`). Ctrl-C cancels the
--- running line, Ctrl-D exits with status 0. The history is kept in
--- `$XDG_STATE_HOME/kpiwatch/history`, without lines that may hold a credential.
--- The settings below (`repl.prompt`, ...) may be changed from the prompt.

local rl = require "kpiwatch._repl"
local task = require "kpiwatch.task"
local shared = require "kpiwatch.shared"

local type, tostring, next, select = type, tostring, next, select
local getmetatable, rawget, pcall = getmetatable, rawget, pcall
local format, concat, sort = string.format, table.concat, table.sort

--- The prompt.
---@type string
M.prompt = "> "
--- The prompt of a continued chunk.
---@type string
M.prompt2 = ">> "
--- Tables nested deeper than this print as `{...}`.
---@type integer
M.max_depth = 4      -- nested tables deeper than this print as {...}
--- Entries shown per table.
---@type integer
M.max_items = 100    -- entries shown per table
--- A table that fits in this many columns prints on one line.
---@type integer
M.width = 78         -- a table fitting in this many columns prints on one line
--- Lines kept in the history file.
---@type integer
M.history_size = 1000
M.last_traceback = nil

local complete = require "kpiwatch.repl.complete"
local is_ident = complete.is_ident

local function model()
  return package.loaded["kpiwatch.model"]
end

local function is_kpi(v)
  local m = model()
  return m ~= nil and m.is(v)
end

local json_null
local function is_null(v)
  if json_null == nil then
    local ok, j = pcall(require, "kpiwatch.json")
    json_null = ok and type(j) == "table" and j.null or false
  end
  return json_null ~= false and v == json_null
end

-- ---- pretty printing ----------------------------------------------------------

local ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\" }

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or format("\\%03d", c:byte())
  end) .. '"'
end
M.quote = quote

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

local TYPE_ORDER = { number = 1, string = 2, boolean = 3 }

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return (TYPE_ORDER[ta] or 9) < (TYPE_ORDER[tb] or 9) or
      ((TYPE_ORDER[ta] or 9) == (TYPE_ORDER[tb] or 9) and ta < tb)
  end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function short_kpi(k)
  local id = rawget(k, "execution_id")
  local ok, score = pcall(function() return k.avg_score end)
  local ok2, atype = pcall(function() return k.agent_type end)
  local parts = {}
  if ok2 and type(atype) == "string" then parts[#parts + 1] = atype end
  if ok and type(score) == "number" then parts[#parts + 1] = "avg_score " .. tostring(score) end
  return format("<KPIs %s%s>", id and tostring(id) or "(unknown id)",
    #parts > 0 and ": " .. concat(parts, ", ") or "")
end

local format_value

local function format_table(t, depth, indent, path)
  if path[t] then return "<cycle>" end
  if next(t) == nil then return "{}" end
  if depth >= M.max_depth then return "{...}" end
  path[t] = true
  local n = 0
  while t[n + 1] ~= nil and n < M.max_items do n = n + 1 end -- the array part
  local keys = {}
  for key in next, t do
    if not (math.type(key) == "integer" and key >= 1 and key <= n) then keys[#keys + 1] = key end
  end
  sort(keys, key_less)
  local inner = indent .. "  "
  local items, multiline, total = {}, false, 0
  local shown = 0
  local function add(s)
    items[#items + 1] = s
    total = total + #s + 2
    if s:find("\n", 1, true) then multiline = true end
  end
  for i = 1, n do
    add(format_value(t[i], depth + 1, inner, path))
    shown = shown + 1
  end
  for _, key in ipairs(keys) do
    if shown >= M.max_items then break end
    local kt
    if is_ident(key) then kt = key
    elseif type(key) == "string" then kt = "[" .. quote(key) .. "]"
    else kt = "[" .. format_value(key, M.max_depth, inner, path):gsub("\n.*", "...") .. "]" end
    add(kt .. " = " .. format_value(t[key], depth + 1, inner, path))
    shown = shown + 1
  end
  local total_count = n + #keys
  if shown < total_count then add(format("... (%d more)", total_count - shown)) end
  path[t] = nil
  if not multiline and total + #indent + 4 <= M.width then
    return "{ " .. concat(items, ", ") .. " }"
  end
  return "{\n" .. inner .. concat(items, ",\n" .. inner) .. ",\n" .. indent .. "}"
end

function format_value(v, depth, indent, path)
  local tv = type(v)
  if tv == "string" then return quote(v) end
  if tv == "number" or tv == "boolean" or tv == "nil" then return tostring(v) end
  if is_null(v) then return "json.null" end
  if is_kpi(v) then
    if depth == 0 then return tostring(v) end
    return short_kpi(v)
  end
  if has_tostring(v) then
    local ok, s = pcall(tostring, v)
    if not ok or type(s) ~= "string" then s = "<" .. tv .. " with a failing __tostring>" end
    if depth > 0 then s = s:gsub("\n", "\n" .. indent) end
    return s
  end
  if tv == "table" then return format_table(v, depth, indent, path) end
  return tostring(v)
end

--- The text the REPL prints for a value: KPI objects as their summary, tables
--- sorted and indented (cycles shown as `<cycle>`), strings quoted.
---@param v any
---@return string text
function M.format(v)
  return format_value(v, 0, "", {})
end

--- Several values on one line, as the REPL prints a chunk's results.
---@param ... any
---@return string text
function M.format_results(...)
  local out = {}
  for i = 1, select("#", ...) do out[i] = M.format((select(i, ...))) end
  return concat(out, "\t")
end

-- ---- errors -------------------------------------------------------------------

local function error_text(e)
  if type(e) == "string" then return e end
  if has_tostring(e) then
    local ok, s = pcall(tostring, e)
    if ok and type(s) == "string" then return s end
  end
  if type(e) == "number" then return tostring(e) end
  return format("(error object is a %s value)", type(e))
end

local function is_interrupt(e)
  return type(e) == "string" and e:match("interrupted!$") ~= nil
end
M.is_interrupt = is_interrupt

-- Cut the frames that belong to the REPL (the chunk runs under xpcall in a
-- task): the user's own frames end at the chunk's main function.
local function trim_traceback(tb)
  local out = {}
  for line in tb:gmatch("[^\n]+") do
    if line:find("in function 'xpcall'", 1, true) then break end
    out[#out + 1] = line
  end
  return concat(out, "\n")
end

local function on_error(e)
  M.last_traceback = trim_traceback(debug.traceback(error_text(e), 2))
  return e
end

local function write_error(e)
  io.stdout:flush()
  if is_interrupt(e) then
    -- on a new line: the terminal echoed ^C where the cursor was
    io.stderr:write(rl.isatty() and "\ninterrupted!\n" or "interrupted!\n")
  else
    io.stderr:write("error: ", error_text(e), "\n")
  end
  io.stderr:flush()
end

--- Print where the last error happened (also `.traceback` at the prompt).
function M.traceback()
  io.stdout:write((M.last_traceback or "no error yet"), "\n")
end

-- ---- compiling and running ----------------------------------------------------

local function incomplete(err)
  return type(err) == "string" and err:sub(-5) == "<eof>"
end

-- compile(src) -> fn | nil, err | nil, nil, true (more lines needed)
-- `return <src>` first, as lua.c does, so an expression prints its value;
-- unlike lua.c this is also tried on continued chunks, so a table written
-- over several lines is an expression too.
---@private
function M.compile(src)
  local f, err1 = load("return " .. src, "=stdin", "t")
  if f then return f end
  local g, err2 = load(src, "=stdin", "t")
  if g then return g end
  if incomplete(err2) or incomplete(err1) then return nil, nil, true end
  return nil, err2
end

-- run(fn) -> table.pack(ok, results or error): fn runs in its own task;
-- Ctrl-C while it runs cancels the task (what it waits on is cancelled and
-- it raises "interrupted!" there).
---@private
function M.run_chunk(fn)
  local t = task.spawn(function()
    return table.pack(xpcall(fn, on_error))
  end)
  while true do
    local ok, r = pcall(task.wait, t)
    if ok then return r end
    local st = task.status(t)
    -- the task itself failed (outside its xpcall): that is its outcome
    if st == "failed" or st == "done" or not is_interrupt(r) then return table.pack(false, r) end
    -- SIGINT cancelled our wait: pass it on to the chunk, then wait for it
    -- to end (it may catch the error and go on; another Ctrl-C cancels again)
    rl.clear_interrupt()
    task.cancel(t, "interrupted!")
  end
end

local function show(r)
  if r[1] then
    if r.n > 1 then
      _G._ = r[2]
      io.stdout:write(M.format_results(table.unpack(r, 2, r.n)), "\n")
      io.stdout:flush()
    end
  else
    if is_interrupt(r[2]) then rl.clear_interrupt() end
    write_error(r[2])
  end
end

-- ---- completion -----------------------------------------------------------------

--- Completions for the word before the cursor (`kpis.ge`, `k:ev`, `k.avg_`).
---@param before string the line up to the word
---@param word string the word, with its `.` and `:`
---@return string[] replacements sorted
M.complete = complete.complete

-- ---- help -------------------------------------------------------------------------

M.help_text = [[
kpiwatch adds to Lua:
  kpis.get(id)              fetch the KPIs of one test execution (a KPI object;
                            it prints as an aligned summary)
  kpis.get_all(ids)         fetch several, concurrently
  kpis.compare(a, b)        two executions side by side with deltas (objects or ids)
  kpis.executions(rt)       the executions of a run test (id or name), newest first;
                            prints as a table
  kpis.execution(id)        one execution's status (e:is_done(), e.error_reason)
  kpis.run(rt)              start a run: the new execution id
  kpis.wait(id)             wait until it is completed, failed or cancelled,
                            printing each status change (Ctrl-C stops it)
  kpis.configure{...}       base_url, api_key, secret_key, timeout, retries, ...
  kpis.config()             the effective configuration (secrets redacted)
  k.avg_score, k:evals()    fields of a KPI object; k:fields() lists them all,
                            k:eval_names() the dynamic eval metrics
  task.spawn(fn, ...)       run fn in its own task; task.wait(t), task.sleep(s),
                            task.all{...}, task.cancel(t)
  json.encode / json.decode / json.null
  http.request{...}         HTTP on the event loop

At the prompt:
  an expression prints its value; `_` holds the last one
  TAB completes globals, fields and methods (kpis.<TAB>, k:<TAB>, k.avg_<TAB>),
      and fixture ids inside a string when started with --sandbox
  Ctrl-C cancels the running chunk (or clears the line); Ctrl-D exits
  .traceback or traceback()  where the last error happened
  help()                    this text]]

--- Print what kpiwatch adds to the Lua prompt.
function M.help()
  io.stdout:write(M.help_text, "\n")
end

-- ---- history ------------------------------------------------------------------

-- The history file outlives the session: a line that may hold a
-- credential is not written to it. That is a line that
--   * names one (kpis.configure{secret_key = "..."}, headers = {Authorization
--     = ...}, password, token, ...);
--   * holds a configured secret (FI_API_KEY, FI_SECRET_KEY, the api_key and
--     secret_key given to kpis.configure or the command line);
--   * holds a known key prefix (whsec_, Slack's xox?-, Bearer, GitHub's and
--     GitLab's tokens, AWS key ids, JWTs);
--   * holds a URL whose path or query carries a token-looking part (16 or
--     more letters, digits, `-` or `_` with both letters and digits in it,
--     as Slack's and Discord's webhook URLs do) or userinfo.
local SECRET_WORDS = { "secret", "api_key", "apikey", "api%-key", "token", "password", "passwd",
  "authorization", "bearer", "credential", "private_key" }
local KEY_PREFIXES = { "whsec_", "xox[abposre]%-", "xapp%-", "ghp_", "gho_", "ghs_", "ghu_", "github_pat_",
  "glpat%-", "sk%-[%w_%-]", "AKIA[%u%d]", "eyJ[%w_%-]+%.eyJ", "hooks%.slack%.com", "discord%.com/api/webhooks",
  "discordapp%.com/api/webhooks" }

-- (a UUID, an execution id, is not a secret)
local function token_like(s)
  return #s >= 16 and s:find("%a") ~= nil and s:find("%d") ~= nil and not shared.uuid(s)
end

local function url_has_token(line)
  for url in line:gmatch("%a[%w+.-]*://[^%s'\"]+") do
    local authority, rest = url:match("^%a[%w+.-]*://([^/?#]*)(.*)$")
    if authority and authority:find("@", 1, true) then return true end
    for part in (rest or ""):gmatch("[%w_%-%.~]+") do
      if token_like(part) then return true end
    end
  end
  return false
end

local function configured_secrets()
  local list = {}
  for _, var in ipairs({ "FI_API_KEY", "FI_SECRET_KEY" }) do list[#list + 1] = os.getenv(var) end
  local kpis = package.loaded["kpiwatch.kpis"]
  if kpis and kpis._secrets then
    local ok, s = pcall(kpis._secrets)
    if ok then
      for _, v in ipairs(s) do list[#list + 1] = v end
    end
  end
  return list
end

--- Whether a REPL line must stay out of the history file because it may hold
--- a credential: it names one (`secret`, `api_key`, `token`, `password`,
--- `authorization`, ...), holds a configured secret (`FI_API_KEY`,
--- `FI_SECRET_KEY`, the keys given to `kpis.configure` or the command line), a
--- known key prefix (`whsec_`, Slack's `xox?-`, GitHub's and GitLab's tokens,
--- AWS key ids, JWTs), or a URL with userinfo or a token-looking path or query.
---@param line string
---@return boolean
function M.mentions_secret(line)
  local lower = line:lower()
  for _, w in ipairs(SECRET_WORDS) do
    if lower:find(w) then return true end
  end
  for _, p in ipairs(KEY_PREFIXES) do
    if line:find(p) then return true end
  end
  if url_has_token(line) then return true end
  for _, v in ipairs(configured_secrets()) do
    if type(v) == "string" and #v >= 3 and line:find(v, 1, true) then return true end
  end
  return false
end

--- Where the history is kept.
---@return string|nil path `nil` without `HOME` or `XDG_STATE_HOME`
---@return string? dir its folder
function M.history_path()
  local dir = os.getenv("XDG_STATE_HOME")
  -- the XDG spec: a relative path is invalid and is to be ignored
  if not dir or dir:sub(1, 1) ~= "/" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    dir = home .. "/.local/state"
  end
  return dir .. "/kpiwatch/history", dir .. "/kpiwatch"
end

-- ---- the loop -----------------------------------------------------------------

local COMMANDS = {
  traceback = M.traceback,
  help = M.help,
}

-- print() from a background task while the user edits a line goes above
-- the prompt, which is then drawn again.
local function repl_print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  local s = concat(parts, "\t") .. "\n"
  if rl.reading() then
    rl.print_above(s)
  else
    io.stdout:write(s)
    io.stdout:flush()
  end
end

--- Run the prompt until Ctrl-D (what `kpiwatch -i` does).
---@return integer status 0
function M.run()
  local tty = rl.isatty()
  local hist
  if tty then
    local path, dir = M.history_path()
    if path and rl.mkdir_p(dir) then
      hist = path
      rl.history_load(hist, M.history_size)
    end
    rl.set_completer(function(before, word)
      local ok, r = pcall(M.complete, before, word)
      return ok and r or {}
    end)
    io.stdout:write("Type help() for what kpiwatch adds, Ctrl-D to exit.\n")
  end
  local saved_print = _G.print
  _G.print = repl_print
  M.active = true -- kpis.wait prints its progress when this is set
  _G.help = M.help
  _G.traceback = M.traceback

  local pending -- the lines of an incomplete chunk
  local last_entry

  local function remember(src)
    if not hist or src == last_entry or not src:find("%S") then return end
    if M.mentions_secret(src) then return end
    last_entry = src
    rl.history_add(src)
    rl.history_save(hist, M.history_size)
  end

  local function handle(line)
    if not pending then
      local cmd = line:match("^%s*%.(%a+)%s*$")
      if cmd and COMMANDS[cmd] then
        remember(line)
        return COMMANDS[cmd]()
      end
      if not line:find("%S") then return end
    end
    local src = pending and (pending .. "\n" .. line) or line
    local fn, err, more = M.compile(src)
    if more then
      pending = src
      return
    end
    pending = nil
    remember(src)
    if not fn then
      M.last_traceback = nil
      return write_error(err)
    end
    show(M.run_chunk(fn))
  end

  while true do
    local ok, line = pcall(rl.readline, pending and M.prompt2 or M.prompt)
    if not ok then
      if not is_interrupt(line) then
        write_error(line)
        break
      end
      -- Ctrl-C at the prompt: drop the line (and a pending chunk)
      rl.clear_interrupt()
      io.stdout:write("\n")
      pending = nil
    elseif line == nil then
      io.stdout:write("\n")
      break
    else
      local ok2, err = pcall(handle, line)
      if not ok2 then
        -- an interrupt that landed in the REPL's own code, or a bug in it
        if is_interrupt(err) then rl.clear_interrupt() end
        pending = nil
        write_error(err)
      end
    end
  end
  io.stdout:flush()
  M.active = false
  _G.print = saved_print
  rl.set_completer(nil)
  -- Ctrl-D ends the process: tasks started at the prompt and still running
  -- are abandoned rather than waited for
  rl.end_session()
  return 0
end

return M
