-- kpiwatch.notify.alertmanager: alerts to a Prometheus Alertmanager
-- (POST /api/v2/alerts), so that its routing, grouping, inhibition,
-- silences and cluster de-duplication apply to kpiwatch alerts.
--
--   notify.alertmanager{url = "http://am:9093", labels = {team = "agents"},
--                       resend = "1m", generator_url = "https://...", timeout = 10,
--                       headers = {...}}
--
-- Alertmanager identifies an alert by its label set, so the labels carry
-- only what names the alert (alertname = rule, execution_id, metric,
-- severity, run_test, the rule's labels and `labels`): two watchers that
-- see the same execution send identical label sets and Alertmanager
-- notifies once. Per-sender details go into annotations.
--
-- A firing alert is posted without endsAt: Alertmanager resolves it by
-- itself after its resolve_timeout (default 5m) unless it is posted again.
-- A watch re-posts each firing alert not posted for `resend` (default 1m,
-- keep it well under resolve_timeout) through on_cycle; a resolved alert is
-- posted with endsAt.

local errors = require "kpiwatch.errors"
local json = require "kpiwatch.json"

local M = {}

local OPTS = { url = true, labels = true, resend = true, generator_url = true, timeout = true,
  headers = true }

local LABEL_NAME = "^[%a_][%w_]*$"

local function config_error(msg)
  error(errors.new("config", "notify.alertmanager: " .. msg), 3)
end

-- Server text reaches Alertmanager in labels and annotations: valid UTF-8
-- without control characters (shared.clean, as in the metrics exposition).
local function clean(v)
  return (require("kpiwatch.shared").clean(tostring(v)))
end

local function label_name(k)
  k = tostring(k)
  if k:match(LABEL_NAME) then return k end
  k = k:gsub("[^%w_]", "_")
  if k:match("^%d") then k = "_" .. k end
  return k
end

---The Alertmanager alert (API v2) for a kpiwatch event or firing alert.
---@param ev table a hook event (or an entry of a report's `firing` list)
---@param opts table {labels=, generator_url=}
---@return table alert {labels=, annotations=, startsAt=, endsAt=, generatorURL=}
function M.to_alert(ev, opts)
  local labels = {}
  if type(ev.labels) == "table" then
    for k, v in pairs(ev.labels) do labels[label_name(k)] = clean(v) end
  end
  for k, v in pairs(opts.labels or {}) do labels[k] = clean(v) end
  labels.alertname = clean(ev.rule or "kpiwatch")
  if ev.execution_id then labels.execution_id = clean(ev.execution_id) end
  if ev.metric then labels.metric = clean(ev.metric) end
  if ev.severity then labels.severity = clean(ev.severity) end
  local rt = ev.run_test or (type(ev.labels) == "table" and ev.labels.run_test)
  if rt then labels.run_test = clean(rt) end
  local annotations = { summary = clean(ev.summary or ev.rule or "") }
  local desc = ev.description or ev.reason
  if desc then annotations.description = clean(desc) end
  if ev.value ~= nil and type(ev.value) ~= "table" then annotations.value = clean(ev.value) end
  if ev.threshold ~= nil then annotations.threshold = clean(ev.threshold) end
  local a = { labels = labels, annotations = annotations }
  if type(ev.fired_at) == "string" then a.startsAt = ev.fired_at end
  if ev.state == "resolved" then
    a.endsAt = type(ev.resolved_at) == "string" and ev.resolved_at
      or require("kpiwatch.time").rfc3339()
  end
  if opts.generator_url then
    local url = opts.generator_url:gsub("{execution_id}", ev.execution_id or "")
    a.generatorURL = url
  end
  return a
end

local Notifier = {}
Notifier.__index = Notifier

function Notifier:_post(alerts)
  if #alerts == 0 then return end
  local headers = { ["content-type"] = "application/json" }
  for k, v in pairs(self.headers) do headers[k] = v end
  require("kpiwatch.notify")._post("alertmanager", self.endpoint, json.encode(json.array(alerts)),
    headers, self.timeout)
end

-- Alertmanager's identity of an alert: its label set.
local function identity(labels)
  local names = {}
  for k in pairs(labels) do names[#names + 1] = k end
  table.sort(names)
  local parts = {}
  for i, k in ipairs(names) do parts[i] = k .. "=" .. labels[k] end
  return table.concat(parts, "\0")
end

-- Called as a hook: one event, or a group ({alerts = {events}}): one POST.
function Notifier:__call(ev)
  local list = type(ev.alerts) == "table" and ev.alerts or { ev }
  local alerts = {}
  for i, e in ipairs(list) do alerts[i] = M.to_alert(e, self) end
  self:_post(alerts)
  -- Remembered for on_cycle: an alert posted by this cycle's delivery must
  -- not be re-posted by its on_cycle (the first cycle of a watch posted
  -- every firing alert twice), nor counted from an older re-send.
  for _, a in ipairs(alerts) do
    local id = identity(a.labels)
    if a.endsAt then self.sent[id], self.fresh[id] = nil, nil else self.fresh[id] = true end
  end
end

---Re-posts each firing alert that has not been posted for `resend` (by
---this hook or a previous re-send), so that Alertmanager does not resolve
---it by its resolve_timeout. The watch calls it after each cycle with the
---alerts firing for this hook.
---@param firing table[] the watch report's firing alerts that notify this hook
---@param now number|nil epoch seconds
---@return boolean|nil sent true when it posted, nil when none was due
function Notifier:on_cycle(firing, now)
  now = now or os.time()
  local due, ids, firing_now = {}, {}, {}
  for _, a in ipairs(firing or {}) do
    local ev = {}
    for k, v in pairs(a) do ev[k] = v end
    ev.state = "firing"
    local al = M.to_alert(ev, self)
    local id = identity(al.labels)
    firing_now[id] = true
    if self.fresh[id] then
      self.sent[id] = now -- posted during this cycle: its resend counts from now
    elseif not self.sent[id] or now - self.sent[id] >= self.resend then
      due[#due + 1] = al
      ids[#due] = id
    end
  end
  self.fresh = {}
  for id in pairs(self.sent) do
    if not firing_now[id] then self.sent[id] = nil end
  end
  if #due == 0 then return nil end
  self:_post(due)
  for _, id in ipairs(ids) do self.sent[id] = now end
  return true
end

---A hook posting to Alertmanager's API v2.
---@param opts table {url=, labels=, resend="1m", generator_url=, timeout=10, headers=}
---@return table notifier callable as a hook, with on_cycle(firing, now)
function M.new(opts)
  if type(opts) ~= "table" then config_error("expected a table of options, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTS[k] then config_error("unknown option '" .. tostring(k) .. "'") end
  end
  local url = opts.url
  if type(url) ~= "string" or not url:match("^https?://[^/]") then
    config_error("'url' must be the Alertmanager's http(s) URL, e.g. http://127.0.0.1:9093")
  end
  local labels = {}
  if opts.labels ~= nil then
    if type(opts.labels) ~= "table" then config_error("'labels' must be a table") end
    for k, v in pairs(opts.labels) do
      if type(k) ~= "string" or not k:match(LABEL_NAME) then
        config_error("label name '" .. tostring(k) .. "' is not a Prometheus label name")
      end
      if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
        config_error("label '" .. k .. "' must have a string value")
      end
      labels[k] = tostring(v)
    end
  end
  local resend = 60
  if opts.resend ~= nil then
    local d, msg = require("kpiwatch.alert").parse_duration(opts.resend)
    if not d or d <= 0 then config_error("'resend' " .. (msg or "must be positive")) end
    resend = d
  end
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    config_error("'timeout' must be a positive number of seconds")
  end
  if opts.generator_url ~= nil and type(opts.generator_url) ~= "string" then
    config_error("'generator_url' must be a string")
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then config_error("'headers' must be a table") end
  return setmetatable({
    url = url,
    endpoint = url:gsub("/+$", "") .. "/api/v2/alerts",
    labels = labels,
    resend = resend,
    generator_url = opts.generator_url,
    timeout = opts.timeout or 10,
    headers = opts.headers or {},
    sent = {},  -- alert identity -> when on_cycle last counted it posted
    fresh = {}, -- alert identities the hook posted since the last on_cycle
  }, Notifier)
end

M.Notifier = Notifier
return M
