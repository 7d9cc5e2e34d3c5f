-- kpiwatch.comment: one sticky comment on the pull or merge request a CI job
-- runs for, created on the first run and edited in place on the next.
--
-- The comment is found again by a hidden marker on its first line
-- (<!-- kpiwatch:KEY -->), so a job that runs again never adds a second
-- comment, and two gates of one pipeline (two keys) keep one each.
--
-- Why not fail the job when posting fails: the comment is a courtesy to the
-- reviewer; the verdict is the exit status. So post() returns nil and a
-- message the CLI prints as a warning, and never raises for API trouble.
--
-- The token only ever goes to the API origin of the environment
-- (GITHUB_API_URL / CI_API_V4_URL): pagination links pointing elsewhere are
-- not followed, and it is never part of a message.

local errors = require "kpiwatch.errors"
local json = require "kpiwatch.json"

local M = {}

local format = string.format

---@class kpiwatch.comment.Context
---@field provider string "github" or "gitlab"
---@field api string API root, without a trailing slash
---@field headers table<string,string> request headers, the token among them
---@field token string the token (for redaction)
---@field list_url string first page of the request's comments
---@field create_url string where a new comment is posted
---@field edit_url fun(id: any): string where comment `id` is edited
---@field edit_method string PATCH (GitHub) or PUT (GitLab)
---@field target string "pull request #N" or "merge request !N", for messages

local function env_of(getenv)
  return function(name)
    local v = getenv(name)
    if v == "" then return nil end
    return v
  end
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- The pull request number of a GitHub event payload: pull_request and
-- pull_request_target events carry pull_request.number, issue_comment
-- events on a pull request carry issue.number with issue.pull_request.
local function github_pr_number(event)
  if type(event) ~= "table" then return nil end
  local pr = event.pull_request
  if type(pr) == "table" and math.type(pr.number) == "integer" then return pr.number end
  local issue = event.issue
  if type(issue) == "table" and type(issue.pull_request) == "table" and math.type(issue.number) == "integer" then
    return issue.number
  end
  return nil
end

-- "owner/repo" as GitHub spells them: letters, digits, '-', '_', '.'.
local function valid_repo(s)
  return type(s) == "string" and s:match("^[%w_.-]+/[%w_.-]+$") ~= nil and not s:find("..", 1, true)
end

local PROVIDERS = {}

function PROVIDERS.github(env)
  local token = env("GITHUB_TOKEN")
  local repo = env("GITHUB_REPOSITORY")
  local event_path = env("GITHUB_EVENT_PATH")
  if not event_path then return nil, "not in a GitHub Actions pull request (GITHUB_EVENT_PATH is not set)" end
  local text = read_file(event_path)
  if not text then return nil, "cannot read GITHUB_EVENT_PATH" end
  local ok, event = pcall(json.decode, text)
  local number = ok and github_pr_number(event)
  if not number then
    return nil, "not a pull request event (" .. (env("GITHUB_EVENT_NAME") or "unknown event") .. "): no comment to post"
  end
  if not valid_repo(repo) then return nil, "GITHUB_REPOSITORY is not set to owner/repo" end
  if not token then return nil, "GITHUB_TOKEN is not set (give the job `permissions: pull-requests: write`)" end
  local api = (env("GITHUB_API_URL") or "https://api.github.com"):gsub("/+$", "")
  local base = format("%s/repos/%s/issues", api, repo)
  return {
    provider = "github",
    api = api,
    token = token,
    headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Accept"] = "application/vnd.github+json",
      ["X-GitHub-Api-Version"] = "2022-11-28",
      ["Content-Type"] = "application/json",
    },
    list_url = format("%s/%d/comments?per_page=100", base, number),
    create_url = format("%s/%d/comments", base, number),
    edit_url = function(id) return format("%s/comments/%s", base, id) end,
    edit_method = "PATCH",
    target = "pull request #" .. number,
  }
end

function PROVIDERS.gitlab(env)
  local iid = env("CI_MERGE_REQUEST_IID")
  if not iid then return nil, "not in a GitLab merge request pipeline (CI_MERGE_REQUEST_IID is not set)" end
  if not iid:match("^%d+$") then return nil, "CI_MERGE_REQUEST_IID is not a number" end
  local project = env("CI_PROJECT_ID")
  if not project or not project:match("^%d+$") then return nil, "CI_PROJECT_ID is not set to a project id" end
  local api = env("CI_API_V4_URL")
  if not api then return nil, "CI_API_V4_URL is not set" end
  api = api:gsub("/+$", "")
  local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
  -- A project or personal access token (api scope) can write notes; the
  -- job token can on GitLab versions that allow it, so it comes second.
  local token = env("GITLAB_TOKEN")
  if token then
    headers["PRIVATE-TOKEN"] = token
  else
    token = env("CI_JOB_TOKEN")
    if not token then return nil, "neither GITLAB_TOKEN nor CI_JOB_TOKEN is set" end
    headers["JOB-TOKEN"] = token
  end
  local base = format("%s/projects/%s/merge_requests/%s/notes", api, project, iid)
  return {
    provider = "gitlab",
    api = api,
    token = token,
    headers = headers,
    list_url = base .. "?per_page=100&sort=asc",
    create_url = base,
    edit_url = function(id) return format("%s/%s", base, id) end,
    edit_method = "PUT",
    target = "merge request !" .. iid,
  }
end

--- Where a comment would go: the pull or merge request of the CI
--- environment.
---@param provider string "github" or "gitlab"
---@param getenv? fun(name: string): string? defaults to os.getenv
---@return kpiwatch.comment.Context? ctx nil when there is no request to comment on
---@return string? note why not (one line, no secret)
function M.context(provider, getenv)
  local make = PROVIDERS[provider]
  if not make then
    errors.raise("config", "unknown --comment provider '" .. tostring(provider) .. "' (github or gitlab)")
  end
  return make(env_of(getenv or os.getenv))
end

--- The hidden first line that identifies kpiwatch's comment.
---@param key? string distinguishes several gates commenting on one request (default "gate")
---@return string
function M.marker(key)
  key = tostring(key or "gate"):gsub("[^%w_.:-]", "_")
  return "<!-- kpiwatch:" .. key .. " -->"
end

-- scheme://host[:port] of a URL, lowercased: two URLs may share a token
-- only when these match.
local function origin(url)
  local o = tostring(url):match("^(%a[%w+.-]*://[^/?#]*)")
  return o and o:lower()
end

-- The next page's URL of a GitHub Link header, a GitLab X-Next-Page.
local function next_page(ctx, resp, url)
  if ctx.provider == "github" then
    local link = resp.headers["link"]
    if not link then return nil end
    for target, params in link:gmatch("<([^>]*)>([^,]*)") do
      if params:find('rel="?next"?') then return target end
    end
    return nil
  end
  local n = resp.headers["x-next-page"]
  if not n or not n:match("^%d+$") then return nil end
  local u = url:gsub("[?&]page=%d+", "")
  return u .. (u:find("?", 1, true) and "&" or "?") .. "page=" .. n
end

local MAX_PAGES = 50 -- 5000 comments: a request with more is not worth walking

local function failure(ctx, what, resp_or_err)
  local why
  if errors.is(resp_or_err) then
    why = resp_or_err.kind .. ": " .. tostring(resp_or_err.message)
  elseif type(resp_or_err) ~= "table" then
    why = tostring(resp_or_err)
  else
    why = "HTTP " .. tostring(resp_or_err.status)
    local ok, body = pcall(json.decode, resp_or_err.body or "")
    local msg = ok and type(body) == "table" and (body.message or body.error)
    if type(msg) == "table" then msg = json.encode(msg) end
    if type(msg) == "string" then why = why .. ": " .. msg end
  end
  why = why:gsub(ctx.token:gsub("%p", "%%%0"), "[REDACTED]")
  local model = require "kpiwatch.model"
  return nil, format("cannot %s the %s comment on %s: %s", what, ctx.provider, ctx.target, model.snippet(why))
end

--- Post `body` as kpiwatch's one comment on the request of `ctx`, or edit
--- the comment posted before (found by its marker).
---@param ctx kpiwatch.comment.Context from comment.context()
---@param body string markdown
---@param opts? {key?: string, timeout?: number, request?: function}
---@return {action: "created"|"updated", id: any, url: string?}? result
---@return string? message one line when it could not be posted
function M.post(ctx, body, opts)
  opts = opts or {}
  local http = require "kpiwatch.http"
  local request = opts.request or http.request
  local kpis = require "kpiwatch.kpis"
  local ok_url, uerr = pcall(kpis._check_base_url, ctx.api, false)
  if not ok_url then
    return nil, "cannot post the " .. ctx.provider .. " comment: "
      .. (errors.is(uerr) and uerr.message or tostring(uerr))
  end
  local timeout = opts.timeout or 30
  local marker = M.marker(opts.key)
  local text = marker .. "\n" .. body
  local function call(method, url, payload)
    local ok, resp = pcall(request, {
      url = url, method = method, headers = ctx.headers, timeout = timeout,
      body = payload and json.encode(payload) or nil,
    })
    return ok, resp
  end

  -- find the comment posted before
  local found
  local url, api_origin, pages = ctx.list_url, origin(ctx.api), 0
  while url and not found and pages < MAX_PAGES do
    pages = pages + 1
    local ok, resp = call("GET", url)
    if not ok or resp.status ~= 200 then return failure(ctx, "list", resp) end
    local dok, list = pcall(json.decode, resp.body)
    if not dok or type(list) ~= "table" then
      return nil, "cannot list the " .. ctx.provider .. " comments on " .. ctx.target
        .. ": the answer is not a JSON list"
    end
    for _, c in ipairs(list) do
      if type(c) == "table" and type(c.body) == "string" and c.body:sub(1, #marker) == marker
        and (math.type(c.id) == "integer" or type(c.id) == "string") then
        found = c
        break
      end
    end
    url = next_page(ctx, resp, url)
    if url and origin(url) ~= api_origin then url = nil end
  end

  if found then
    local ok, resp = call(ctx.edit_method, ctx.edit_url(found.id), { body = text })
    if ok and resp.status >= 200 and resp.status < 300 then
      local dok, c = pcall(json.decode, resp.body)
      return { action = "updated", id = found.id, url = dok and type(c) == "table" and c.html_url or nil }
    end
    return failure(ctx, "update", resp)
  end
  local ok, resp = call("POST", ctx.create_url, { body = text })
  if ok and resp.status >= 200 and resp.status < 300 then
    local dok, c = pcall(json.decode, resp.body)
    return { action = "created", id = dok and type(c) == "table" and c.id or nil,
      url = dok and type(c) == "table" and c.html_url or nil }
  end
  return failure(ctx, "create", resp)
end

--- Post a gate result's markdown report as the sticky comment, for the
--- CLI's --comment: never changes the verdict, says on stderr what it did.
---@param spec {provider: string, key?: string}
---@param result table a gate result (kpiwatch.gate_report)
---@param env {stderr: file*, getenv: fun(name: string): string?}
function M.report(spec, result, env)
  local ctx, note = M.context(spec.provider, env.getenv)
  if not ctx then
    env.stderr:write("kpiwatch: note: no ", spec.provider, " comment: ", note, "\n")
    return
  end
  local body = require("kpiwatch.gate_report").markdown(result)
  local r, err = M.post(ctx, body, { key = spec.key })
  if r then
    env.stderr:write("kpiwatch: ", r.action, " the comment on ", ctx.target, "\n")
  else
    env.stderr:write("kpiwatch: warning: ", err, "\n")
  end
end

return M
