-- kpiwatch.notify: built-in notification hooks for kpiwatch.alert.
--
-- A hook is any function(event); it reports a failure by raising, ideally
-- an error object (kpiwatch.errors) whose `retryable` says whether trying
-- again can help and whose `retry_after` (seconds) says when. The alert
-- engine does the retrying, the backoff and the spooling; these functions
-- make one attempt each.
--
--   notify.webhook{url=, secret=, headers=, timeout=10}
--       JSON POST of the event. With a secret, signed per Standard Webhooks:
--       webhook-id (= event.id, also sent as Idempotency-Key),
--       webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256 of
--       "id.timestamp.body">, the key being the base64 secret after an
--       optional "whsec_" prefix. 2xx is delivered; 408, 429 (Retry-After
--       honoured), 5xx and the transport errors http.retryable names
--       (timeout, connect, network; not dns) are retryable; other failures
--       are not (the event is spooled all the same).
--   notify.slack{url=, channel=, username=, icon_emoji=, timeout=10}
--       Slack incoming-webhook payload: `text` plus Block Kit `blocks`.
--   notify.exec{"prog", "arg", ..., timeout=30, env={K=V}, cwd=}
--       Runs prog with the arguments, never through a shell, the event as
--       JSON on stdin. Arguments are templates ("{summary}", "{value:%.2f}").
--       KPIWATCH_EVENT_ID, KPIWATCH_ALERT_STATE and KPIWATCH_ALERT_RULE are
--       added to the environment. Exit 0 is delivered, 75 (EX_TEMPFAIL) and
--       a timeout are retryable, any other status is a failure.
--   notify.file(path | {path=, mode=0600, sync=true})
--       Appends the event as one JSON line (fsync'ed unless sync=false).
--   notify.stdout{format = "text" | "json"}
--       One line per event on stdout (text: one line per alert of a group).
--   notify.alertmanager{url=, labels=, resend="1m", generator_url=}
--       POST /api/v2/alerts of a Prometheus Alertmanager
--       (kpiwatch.notify.alertmanager).
--
-- webhook and slack without a url (an unset environment variable) make a
-- disabled hook: its notifications are reported as skipped, once, on stderr.

---@brief
--- Built-in notification hooks for `kpiwatch.alert`. Each makes one attempt;
--- the alert engine does the retrying, the backoff and the spooling. A hook
--- reports failure by raising an error object whose `retryable` says whether
--- trying again can help and `retry_after` (seconds) when. `webhook` and
--- `slack` without a URL (an unset environment variable) make a disabled hook:
--- its notifications are reported as skipped, once, on stderr.

local errors = require "kpiwatch.errors"
local json = require "kpiwatch.json"
local template = require "kpiwatch.template"
local shared = require "kpiwatch.shared"

local M = {}

local format, concat = string.format, table.concat

local crypto
local function C()
  crypto = crypto or require "kpiwatch._crypto"
  return crypto
end

-- A configuration error names the user's line (the first frame outside
-- this file), as alert's do: "rules.lua:12: notify.webhook: ...".
local SELF = { [debug.getinfo(1, "S").source] = true }
local function config_error(msg)
  shared.config_error(shared.caller_where(SELF), msg)
end

local function check_opts(name, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    config_error("notify." .. name .. ": expected a table of options, got " .. type(opts))
  end
  for k in pairs(opts) do
    if type(k) ~= "number" and not allowed[k] then
      config_error("notify." .. name .. ": unknown option '" .. tostring(k) .. "'")
    end
  end
  return opts
end

local function opt_type(name, opts, field, want)
  local v = opts[field]
  shared.validate("notify." .. name, { [field] = { v, want, true } }, shared.caller_where(SELF))
  return v
end

-- An event as JSON that strict parsers accept: invalid UTF-8 (from a
-- decoded body that did not go through model.parse) replaced.
local function encode_event(event)
  return json.encode(shared.fix_utf8_tree(event))
end

-- ---- Standard Webhooks ----------------------------------------------------------

-- decode_secret("whsec_<base64>" | "<base64>") -> key bytes, or nil, message.
-- The message never contains the secret.
--- The key bytes of a Standard Webhooks secret.
---@param secret string `whsec_<base64>` or `<base64>`
---@return string|nil key
---@return string? err why not (never containing the secret)
function M.decode_secret(secret)
  if type(secret) ~= "string" or secret == "" then return nil, "the secret is empty" end
  local b64 = secret:gsub("^whsec_", "")
  local key = C().base64_decode(b64)
  if not key or key == "" then
    return nil, "the secret is not a Standard Webhooks secret (whsec_ followed by base64)"
  end
  return key
end

-- sign(key, id, timestamp, body) -> "v1,<base64>"
--- A Standard Webhooks signature.
---@param key string the key bytes (`notify.decode_secret`)
---@param id string the `webhook-id`
---@param timestamp integer|string the `webhook-timestamp`
---@param body string
---@return string signature `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
function M.sign(key, id, timestamp, body)
  local c = C()
  return "v1," .. c.base64_encode(c.hmac_sha256(key, id .. "." .. tostring(timestamp) .. "." .. body))
end

-- verify(secret, headers, body [, tolerance=300 [, now]]) -> true | nil, reason
-- For receivers written with kpiwatch (headers with lowercase names).
--- Check a Standard Webhooks signature, for receivers written with kpiwatch.
---@param secret string
---@param headers table<string, string> with lower-case names (as `http.serve` gives them)
---@param body string
---@param tolerance? number seconds the timestamp may differ from now (default 300)
---@param now? number epoch seconds (default the current time)
---@return true|nil ok
---@return string? reason why it does not verify
function M.verify(secret, headers, body, tolerance, now)
  local key, msg = M.decode_secret(secret)
  if not key then return nil, msg end
  local id, ts, sigs = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
  if not (id and ts and sigs) then return nil, "missing webhook-id, webhook-timestamp or webhook-signature" end
  local t = tonumber(ts)
  if not t then return nil, "bad webhook-timestamp" end
  if math.abs((now or os.time()) - t) > (tolerance or 300) then return nil, "timestamp out of tolerance" end
  local want = M.sign(key, id, ts, body)
  for sig in sigs:gmatch("%S+") do
    if C().equal(sig, want) then return true end
  end
  return nil, "no matching signature"
end

-- ---- HTTP delivery ----------------------------------------------------------------

-- scheme://host[:port] of a URL, without userinfo, path or query: hook URLs
-- carry tokens (Slack's do), so messages show only this much.
local function redact(url)
  local scheme, rest = tostring(url):match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return "(url)" end
  local authority = rest:match("^([^/?#]*)") or ""
  authority = authority:gsub("^.*@", "")
  local more = #rest > #(rest:match("^([^/?#]*)") or "") and "/..." or ""
  return scheme .. "://" .. authority .. more
end
M._redact = redact

local replace_plain = shared.replace_plain

-- The start of a response body for an error message. A receiver may echo
-- the request's path ("Cannot POST /services/T0/B0/token"), and a hook
-- URL's path and query are its secret: they never reach a message.
local function snippet(body, url)
  if type(body) ~= "string" or body == "" then return "" end
  local tail = url and tostring(url):match("^%a[%w+.-]*://[^/?#]*([/?].*)$")
  if tail and #tail > 1 then
    body = replace_plain(body, tail, "/[REDACTED]")
    local path = tail:match("^([^?#]*)")
    if path and #path > 1 then body = replace_plain(body, path, "/[REDACTED]") end
  end
  return ": " .. shared.clean(body:sub(1, 120))
end

local function post(what, url, body, headers, timeout)
  local http = require "kpiwatch.http"
  local ok, resp = pcall(http.request, {
    method = "POST", url = url, headers = headers, body = body, timeout = timeout,
    max_body = 1024 * 1024,
  })
  if not ok then
    local e = resp
    if errors.is(e) then
      errors.raise(e.kind, format("%s to %s: %s", what, redact(url), tostring(e.message)),
        { retryable = http.retryable(e.kind) })
    end
    error(e, 0)
  end
  local st = resp.status
  if st >= 200 and st < 300 then return resp end
  local retry = st >= 500 or st == 429 or st == 408
  errors.raise("http", format("%s to %s answered %d%s", what, redact(url), st, snippet(resp.body, url)),
    { status = st, retryable = retry,
      retry_after = retry and http.parse_retry_after(resp.headers and resp.headers["retry-after"]) or nil })
end
M._post = post

local function disabled(what, why)
  errors.raise("hook_disabled", what .. " has no url" .. (why or ""), { retryable = false })
end

local WEBHOOK_OPTS = { url = true, secret = true, headers = true, timeout = true }

--- A hook that POSTs the event as JSON. With a secret, it is signed per
--- Standard Webhooks: `webhook-id` (the event id, also sent as
--- `Idempotency-Key`), `webhook-timestamp`, `webhook-signature`. 2xx is
--- delivered; 408, 429 (Retry-After honoured), 5xx and transport errors are
--- retryable; other statuses are not.
---@param opts {url: string?, secret?: string, headers?: table<string, string>, timeout?: number} timeout defaults to 10 s
---@return fun(event: table) hook for `alert.hook`
function M.webhook(opts)
  opts = check_opts("webhook", opts, WEBHOOK_OPTS)
  local url = opt_type("webhook", opts, "url", "string")
  local secret = opt_type("webhook", opts, "secret", "string")
  local extra = opt_type("webhook", opts, "headers", "table") or {}
  local timeout = opt_type("webhook", opts, "timeout", "number") or 10
  if url == "" then url = nil end
  local key
  if secret and secret ~= "" then
    local msg
    key, msg = M.decode_secret(secret)
    if not key then config_error("notify.webhook: " .. msg) end
  end
  return function(event)
    if not url then disabled("notify.webhook", " (is its URL variable, e.g. ALERT_WEBHOOK_URL, set?)") end
    local body = encode_event(event)
    local id = tostring(event.id)
    local ts = tostring(os.time())
    local headers = {}
    for k, v in pairs(extra) do headers[k] = v end
    headers["content-type"] = "application/json"
    headers["webhook-id"] = id
    headers["webhook-timestamp"] = ts
    headers["idempotency-key"] = id
    if key then headers["webhook-signature"] = M.sign(key, id, ts, body) end
    post("webhook", url, body, headers, timeout)
  end
end

-- ---- Slack ----------------------------------------------------------------------

-- Slack mrkdwn of event text (server text among it): one clean line,
-- then Slack's three control characters escaped.
local function mrkdwn(s)
  return (shared.clean(s, 2000):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"))
end

local function fmt(v)
  return template.format_value(v)
end

-- One line for people: "FIRING [critical] score-floor: avg_score is 0.62,
-- below 0.8 (execution c0ffee00-...)".
--- One line for people: `FIRING [critical] score-floor: avg_score is 0.62,
--- below 0.8 (execution ...)`, control characters replaced.
---@param event table
---@return string line
function M.format_text(event)
  if M.is_group(event) then return M.format_group_text(event) end
  local parts = { (event.state or "firing"):upper() }
  if event.severity then parts[#parts + 1] = "[" .. tostring(event.severity) .. "]" end
  parts[#parts + 1] = tostring(event.rule) .. ":"
  parts[#parts + 1] = tostring(event.summary or "")
  local s = concat(parts, " ")
  if event.execution_id then s = s .. " (execution " .. tostring(event.execution_id) .. ")" end
  return shared.clean(s)
end

--- The Slack incoming-webhook payload for an event: `text` and Block Kit `blocks`.
---@param event table
---@param opts? {channel?: string, username?: string, icon_emoji?: string}
---@return table payload
function M.slack_payload(event, opts)
  if M.is_group(event) then return M.slack_group_payload(event, opts) end
  opts = opts or {}
  local firing = event.state ~= "resolved"
  local title = shared.clean((firing and "Firing: " or "Resolved: ") .. tostring(event.rule), 150)
  local fields = {
    { type = "mrkdwn", text = "*Severity*\n" .. mrkdwn(event.severity or "-") },
    { type = "mrkdwn", text = "*Execution*\n`" .. mrkdwn(event.execution_id or "-") .. "`" },
  }
  if event.metric then
    fields[#fields + 1] = { type = "mrkdwn", text = "*Metric*\n" .. mrkdwn(event.metric) }
  end
  if event.value ~= nil then
    local v = fmt(event.value)
    if event.threshold ~= nil then
      v = v .. " (" .. tostring(event.op or "threshold"):gsub("_", " ") .. " " .. fmt(event.threshold) .. ")"
    end
    fields[#fields + 1] = { type = "mrkdwn", text = "*Value*\n" .. mrkdwn(v) }
  end
  local context = "kpiwatch · " .. (firing and "fired at " .. tostring(event.fired_at)
    or "resolved at " .. tostring(event.resolved_at or event.fired_at)) .. " · " .. tostring(event.id)
  local payload = {
    text = (firing and ":rotating_light: " or ":white_check_mark: ") .. mrkdwn(M.format_text(event)),
    blocks = json.array({
      { type = "header", text = { type = "plain_text", text = title } },
      { type = "section", text = { type = "mrkdwn", text = mrkdwn(event.summary or "") } },
      { type = "section", fields = json.array(fields) },
      { type = "context", elements = json.array({ { type = "mrkdwn", text = mrkdwn(context) } }) },
    }),
  }
  if opts.channel then payload.channel = opts.channel end
  if opts.username then payload.username = opts.username end
  if opts.icon_emoji then payload.icon_emoji = opts.icon_emoji end
  return payload
end

-- ---- groups (kpiwatch.alert.group) --------------------------------------------------

---Whether an event is a group of several alerts (a group of one is
---formatted as its alert).
---@param event table
---@return boolean
function M.is_group(event)
  return type(event.alerts) == "table" and #event.alerts > 1
end

---One line for a group: its state, count and execution, then each alert.
---@param event table a group event
---@return string
function M.format_group_text(event)
  local names = {}
  for i, a in ipairs(event.alerts) do names[i] = tostring(a.rule) .. (a.state == "resolved" and " (resolved)" or "") end
  local s = (event.state or "firing"):upper() .. " " .. tostring(event.summary) .. ": " .. concat(names, ", ")
  return (s:gsub("[%c]", " "))
end

-- Slack allows 50 blocks a message: header, context, and up to this many
-- alerts of 2 blocks each (the rest are counted).
local SLACK_MAX_ALERTS = 20

---The Slack payload of a group: one message, a section per alert.
---@param event table a group event
---@param opts table|nil {channel=, username=, icon_emoji=}
---@return table payload
function M.slack_group_payload(event, opts)
  opts = opts or {}
  local firing = event.state ~= "resolved"
  local title = shared.clean((firing and "Firing: " or "Resolved: ") .. tostring(event.summary), 150)
  local blocks = { { type = "header", text = { type = "plain_text", text = title } } }
  for i, a in ipairs(event.alerts) do
    if i > SLACK_MAX_ALERTS then
      blocks[#blocks + 1] = { type = "section", text = { type = "mrkdwn",
        text = format("_and %d more_", #event.alerts - SLACK_MAX_ALERTS) } }
      break
    end
    local mark = a.state == "resolved" and ":white_check_mark:" or ":rotating_light:"
    local line = format("%s *%s* [%s] %s", mark, mrkdwn(a.rule or "?"), mrkdwn(a.severity or "-"),
      mrkdwn(a.summary or ""))
    local fields = {}
    if a.metric then fields[#fields + 1] = { type = "mrkdwn", text = "*Metric*\n" .. mrkdwn(a.metric) } end
    if a.value ~= nil then fields[#fields + 1] = { type = "mrkdwn", text = "*Value*\n" .. mrkdwn(fmt(a.value)) } end
    local section = { type = "section", text = { type = "mrkdwn", text = line } }
    if #fields > 0 then section.fields = json.array(fields) end
    blocks[#blocks + 1] = section
    blocks[#blocks + 1] = { type = "divider" }
  end
  local exec = event.execution_id and ("execution `" .. mrkdwn(event.execution_id) .. "` · ") or ""
  local context = "kpiwatch · " .. exec .. tostring(event.id)
  blocks[#blocks + 1] = { type = "context", elements = json.array({ { type = "mrkdwn", text = context } }) }
  local payload = {
    text = (firing and ":rotating_light: " or ":white_check_mark: ") .. mrkdwn(M.format_group_text(event)),
    blocks = json.array(blocks),
  }
  if opts.channel then payload.channel = opts.channel end
  if opts.username then payload.username = opts.username end
  if opts.icon_emoji then payload.icon_emoji = opts.icon_emoji end
  return payload
end

local SLACK_OPTS = { url = true, channel = true, username = true, icon_emoji = true, timeout = true }

--- A hook that posts to a Slack incoming webhook.
---@param opts {url: string?, channel?: string, username?: string, icon_emoji?: string, timeout?: number}
---@return fun(event: table) hook for `alert.hook`
function M.slack(opts)
  opts = check_opts("slack", opts, SLACK_OPTS)
  local url = opt_type("slack", opts, "url", "string")
  for _, f in ipairs({ "channel", "username", "icon_emoji" }) do opt_type("slack", opts, f, "string") end
  local timeout = opt_type("slack", opts, "timeout", "number") or 10
  if url == "" then url = nil end
  return function(event)
    if not url then disabled("notify.slack", " (is its URL variable, e.g. SLACK_WEBHOOK_URL, set?)") end
    post("slack", url, json.encode(M.slack_payload(event, opts)),
      { ["content-type"] = "application/json" }, timeout)
  end
end

-- ---- exec ----------------------------------------------------------------------

local EXEC_OPTS = { argv = true, timeout = true, env = true, cwd = true }

local function event_lookup(event)
  return function(name)
    local v = event
    for part in name:gmatch("[^.]+") do
      if type(v) ~= "table" then return nil, false end
      local nv = v[part]
      if nv == nil and v == event and type(event.kpis) == "table" then nv = event.kpis[part] end
      v = nv
      if v == nil then return nil, false end
    end
    if v == json.null then return nil, true end
    return v, true
  end
end
M._event_lookup = event_lookup

--- A hook that runs a program directly (never through a shell) with the event as
--- JSON on stdin. Arguments are templates (`"{summary}"`, `"{value:%.2f}"`);
--- `KPIWATCH_EVENT_ID`, `KPIWATCH_ALERT_STATE` and `KPIWATCH_ALERT_RULE` are
--- added to its environment. Exit 0 is delivered; 75 (EX_TEMPFAIL) and a
--- timeout are retryable; any other status is a failure.
---@param spec {[integer]: string, argv?: string[], timeout?: number, env?: table<string, string>, cwd?: string} the program and its arguments (or `argv`); timeout defaults to 30 s
---@return fun(event: table) hook for `alert.hook`
function M.exec(spec)
  spec = check_opts("exec", spec, EXEC_OPTS)
  local argv = {}
  local src = spec.argv or spec
  if type(src) ~= "table" then config_error("notify.exec: 'argv' must be a list of strings") end
  for i, a in ipairs(src) do
    if type(a) ~= "string" then
      config_error(format("notify.exec: argument %d must be a string, got %s", i, type(a)))
    end
    argv[i] = a
  end
  if #argv == 0 or argv[1] == "" then config_error("notify.exec: needs a program to run") end
  local timeout = opt_type("exec", spec, "timeout", "number") or 30
  local env = opt_type("exec", spec, "env", "table")
  local cwd = opt_type("exec", spec, "cwd", "string")
  if env then
    for k, v in pairs(env) do
      if type(k) ~= "string" or k == "" or k:find("=", 1, true) or
        (type(v) ~= "string" and type(v) ~= "number") then
        config_error("notify.exec: env must map NAME to a string value")
      end
    end
  end
  return function(event)
    local process = require "kpiwatch._process"
    local lookup = event_lookup(event)
    local args = {}
    local dashdash = false
    for i, a in ipairs(argv) do
      if i == 1 then
        args[i] = a
      else
        args[i] = template.render(a, lookup)
        -- an option from the event's data (a metric or a value the server
        -- chose) could change what the program does: only after "--"
        if not dashdash and args[i]:sub(1, 1) == "-" and a:sub(1, 1) ~= "-" then
          errors.raise("exec", format("%s: argument %d would start with '-' from the event's data "
            .. "('%s'); put \"--\" before it in argv, or read the event from stdin", argv[1], i - 1,
            shared.clean(args[i], 40)), { retryable = false })
        end
        if a == "--" then dashdash = true end
      end
    end
    local vars, order = {}, {}
    -- The API credentials stay with kpiwatch: by name, and any variable
    -- holding a configured secret. A hook that needs one gets it in env.
    local kpis = package.loaded["kpiwatch.kpis"]
    local secrets = kpis and kpis._secrets() or {}
    local function secret(k, kv)
      if k == "FI_API_KEY" or k == "FI_SECRET_KEY" then return true end
      for _, s in ipairs(secrets) do
        if s ~= "" and kv:find(s, #k + 2, true) then return true end
      end
      return false
    end
    for _, kv in ipairs(process.environ()) do
      local k = kv:match("^([^=]*)=")
      if k and not secret(k, kv) then
        if not vars[k] then order[#order + 1] = k end
        vars[k] = kv
      end
    end
    local function set(k, v)
      if not vars[k] then order[#order + 1] = k end
      vars[k] = k .. "=" .. tostring(v)
    end
    if env then
      local keys = {}
      for k in pairs(env) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do set(k, env[k]) end
    end
    set("KPIWATCH_EVENT_ID", event.id or "")
    set("KPIWATCH_ALERT_STATE", event.state or "")
    set("KPIWATCH_ALERT_RULE", event.rule or "")
    local envlist = {}
    for _, k in ipairs(order) do envlist[#envlist + 1] = vars[k] end
    local r, msg = process.spawn(args, {
      stdin = encode_event(event) .. "\n", env = envlist, cwd = cwd, timeout = timeout,
    })
    if not r then errors.raise("exec", msg, { retryable = false }) end
    if r.timed_out then
      errors.raise("exec", format("%s timed out after %gs", argv[1], timeout), { retryable = true })
    end
    if r.signal then
      errors.raise("exec", format("%s was killed by signal %d", argv[1], r.signal), { retryable = true })
    end
    if r.status ~= 0 then
      errors.raise("exec", format("%s exited with status %d%s", argv[1], r.status, snippet(r.stderr)),
        { retryable = r.status == 75, status = r.status })
    end
    return r
  end
end

-- ---- file, stdout ------------------------------------------------------------------

--- A hook that appends each event as one JSON line (fsync'ed unless `sync = false`).
---@param opts string|{path: string, mode?: integer, sync?: boolean} the path, or options (mode defaults to 0600)
---@return fun(event: table) hook for `alert.hook`
function M.file(opts)
  if type(opts) == "string" then opts = { path = opts } end
  opts = check_opts("file", opts, { path = true, mode = true, sync = true })
  local path = opt_type("file", opts, "path", "string")
  if not path or path == "" then config_error("notify.file: needs a path") end
  local mode = opt_type("file", opts, "mode", "number") or tonumber("600", 8)
  local sync = opts.sync ~= false
  return function(event)
    local fs = require "kpiwatch._fs"
    local ok, msg = fs.append(path, encode_event(event) .. "\n", mode, sync)
    if not ok then errors.raise("io", msg, { retryable = true }) end
  end
end

--- A hook that prints one line per event on stdout (`notify.format_text`, or JSON).
---@param opts? {format?: "text"|"json"}
---@return fun(event: table) hook for `alert.hook`
function M.stdout(opts)
  opts = check_opts("stdout", opts, { format = true })
  local f = opts.format or "text"
  if f ~= "text" and f ~= "json" then config_error("notify.stdout: format must be \"text\" or \"json\"") end
  return function(event)
    local line
    if f == "json" then
      line = encode_event(event)
    elseif M.is_group(event) then
      -- a group prints as its alerts' lines, written at once
      local lines = {}
      for i, a in ipairs(event.alerts) do lines[i] = M.format_text(a) end
      line = concat(lines, "\n")
    else
      line = M.format_text(event)
    end
    io.stdout:write(line, "\n")
    io.stdout:flush()
  end
end

---A hook posting alerts to a Prometheus Alertmanager (API v2); see
---kpiwatch.notify.alertmanager.
---@param opts table {url=, labels=, resend="1m", generator_url=, timeout=10, headers=}
---@return table notifier
function M.alertmanager(opts)
  return require("kpiwatch.notify.alertmanager").new(opts)
end

return M
