-- Specs for kpiwatch.comment: sticky pull/merge request comments against
-- local stand-ins of GitHub's issue-comments API and GitLab's notes API
-- that check method, path, headers and body as the real ones would.
-- Run: busted --lua=build/kpiwatch spec/lua/comment_spec.lua

local comment = require "kpiwatch.comment"
local http = require "kpiwatch.http"
local json = require "kpiwatch.json"
local util = require "spec.lua.helpers.util"

local TOKEN = "ghs_kpiwatchTestToken0123456789abcdef"

local function env(t)
  return function(name) return t[name] end
end

local write = util.write

-- GitHub stand-in: comments of issue 42 of octo/repo, `per_page` pages
-- linked with Link headers. Requests that a real API would refuse (wrong
-- token, wrong path, bad body) answer 401/404/422 and are counted in bad.
local function github(opts)
  opts = opts or {}
  local st = { comments = {}, calls = {}, bad = {}, next_id = 1000 }
  for _, c in ipairs(opts.comments or {}) do
    st.next_id = st.next_id + 1
    st.comments[#st.comments + 1] = { id = st.next_id, body = c, user = { login = "someone" } }
  end
  local per_page = opts.per_page or 100
  local srv
  srv = http.serve {
    handler = function(req)
      st.calls[#st.calls + 1] = req.method .. " " .. req.path .. (req.query ~= "" and ("?" .. req.query) or "")
      if req.headers["authorization"] ~= "Bearer " .. TOKEN then
        st.bad[#st.bad + 1] = "auth"
        return { status = 401, json = { message = "Bad credentials" } }
      end
      if req.headers["accept"] ~= "application/vnd.github+json" or not req.headers["x-github-api-version"] then
        st.bad[#st.bad + 1] = "headers"
        return { status = 400, json = { message = "headers" } }
      end
      if opts.fail and opts.fail(req) then return { status = 500, json = { message = "boom " .. TOKEN } } end
      if req.method == "GET" and req.path == "/repos/octo/repo/issues/42/comments" then
        local page = tonumber(req.params.page or "1")
        local out = {}
        for i = (page - 1) * per_page + 1, math.min(#st.comments, page * per_page) do
          out[#out + 1] = st.comments[i]
        end
        local headers = {}
        if page * per_page < #st.comments then
          local base = opts.next_base or srv.url
          headers.link = '<' .. base .. req.path .. '?per_page=' .. per_page .. '&page=' .. (page + 1)
            .. '>; rel="next", <' .. srv.url .. req.path .. '?page=1>; rel="first"'
        end
        return { status = 200, headers = headers, body = json.encode(out) }
      end
      local ok, body = pcall(json.decode, req.body)
      if not ok or type(body) ~= "table" or type(body.body) ~= "string" then
        st.bad[#st.bad + 1] = "body"
        return { status = 422, json = { message = "Invalid request" } }
      end
      if req.method == "POST" and req.path == "/repos/octo/repo/issues/42/comments" then
        st.next_id = st.next_id + 1
        local c = { id = st.next_id, body = body.body, html_url = srv.url .. "/c/" .. st.next_id }
        st.comments[#st.comments + 1] = c
        return { status = 201, json = c }
      end
      local id = req.path:match("^/repos/octo/repo/issues/comments/(%d+)$")
      if req.method == "PATCH" and id then
        for _, c in ipairs(st.comments) do
          if c.id == tonumber(id) then
            c.body = body.body
            return { status = 200, json = c }
          end
        end
      end
      st.bad[#st.bad + 1] = "path " .. req.method .. " " .. req.path
      return { status = 404, json = { message = "Not Found" } }
    end,
  }
  st.srv = srv
  return st
end

local function github_env(st, over)
  local dir = util.tmpdir()
  local event = dir .. "/event.json"
  write(event, json.encode({ action = "synchronize", number = 42, pull_request = { number = 42 } }))
  local t = {
    GITHUB_TOKEN = TOKEN, GITHUB_REPOSITORY = "octo/repo", GITHUB_EVENT_PATH = event,
    GITHUB_API_URL = st and st.srv.url or nil, GITHUB_EVENT_NAME = "pull_request",
  }
  for k, v in pairs(over or {}) do t[k] = v end
  if t.GITHUB_API_URL == false then t.GITHUB_API_URL = nil end
  return env(t)
end

describe("comment on GitHub", function()
  it("creates the comment once, then edits it in place", function()
    local st = github { comments = { "LGTM", "unrelated" } }
    finally(function() st.srv:close() end)
    local ctx = assert(comment.context("github", github_env(st)))
    local r = assert(comment.post(ctx, "## kpiwatch gate: pass"))
    assert.are.equal("created", r.action)
    assert.are.equal(3, #st.comments)
    assert.are.equal("<!-- kpiwatch:gate -->\n## kpiwatch gate: pass", st.comments[3].body)
    local r2 = assert(comment.post(ctx, "## kpiwatch gate: fail"))
    assert.are.equal("updated", r2.action)
    assert.are.equal(r.id, r2.id)
    assert.are.equal(3, #st.comments)
    assert.are.equal("<!-- kpiwatch:gate -->\n## kpiwatch gate: fail", st.comments[3].body)
    assert.are.same({}, st.bad)
    assert.are.same({
      "GET /repos/octo/repo/issues/42/comments?per_page=100",
      "POST /repos/octo/repo/issues/42/comments",
      "GET /repos/octo/repo/issues/42/comments?per_page=100",
      "PATCH /repos/octo/repo/issues/comments/" .. r.id,
    }, st.calls)
  end)

  it("finds its comment on a later page (Link rel=next) and keys keep one comment each", function()
    local existing = {}
    for i = 1, 5 do existing[i] = "comment " .. i end
    existing[6] = "<!-- kpiwatch:nightly -->\nold"
    local st = github { comments = existing, per_page = 2 }
    finally(function() st.srv:close() end)
    local ctx = assert(comment.context("github", github_env(st)))
    local r = assert(comment.post(ctx, "new", { key = "nightly" }))
    assert.are.equal("updated", r.action)
    assert.are.equal(1006, r.id)
    assert.are.equal("<!-- kpiwatch:nightly -->\nnew", st.comments[6].body)
    assert.are.equal(6, #st.comments)
    -- another key is another comment
    assert.are.equal("created", assert(comment.post(ctx, "other", { key = "smoke" })).action)
    assert.are.equal(7, #st.comments)
    assert.are.same({}, st.bad)
  end)

  it("never follows a pagination link to another origin (the token stays home)", function()
    local other = github {}
    local st = github { comments = { "a", "b", "c" }, per_page = 1, next_base = other.srv.url }
    finally(function()
      st.srv:close()
      other.srv:close()
    end)
    local ctx = assert(comment.context("github", github_env(st)))
    assert.are.equal("created", assert(comment.post(ctx, "x")).action)
    assert.are.same({}, other.calls)
  end)

  it("says why it cannot post, one line, never the token", function()
    local st = github { fail = function(req) return req.method == "POST" end }
    finally(function() st.srv:close() end)
    local ctx = assert(comment.context("github", github_env(st)))
    local r, msg = comment.post(ctx, "x")
    assert.is_nil(r)
    assert.matches("cannot create the github comment on pull request #42: HTTP 500: boom", msg, 1, true)
    assert.is_nil(msg:find(TOKEN, 1, true))
    assert.is_nil(msg:find("\n", 1, true))
  end)

  it("a closed port is an error message, not a raise", function()
    local ctx = assert(comment.context("github", github_env(nil, { GITHUB_API_URL = "http://127.0.0.1:9" })))
    local r, msg = comment.post(ctx, "x", { timeout = 5 })
    assert.is_nil(r)
    assert.matches("^cannot list the github comment on pull request #42: connect", msg)
  end)

  it("refuses to send the token over plain http to a non-loopback host", function()
    local ctx = assert(comment.context("github", github_env(nil, { GITHUB_API_URL = "http://192.0.2.1" })))
    local r, msg = comment.post(ctx, "x", { request = function() error("must not be called") end })
    assert.is_nil(r)
    assert.matches("refusing plain http://", msg, 1, true)
  end)

  it("outside a pull request there is a note, not a context", function()
    assert.is_nil((comment.context("github", env {})))
    local _, note = comment.context("github", env {})
    assert.matches("GITHUB_EVENT_PATH", note)
    local dir = util.tmpdir()
    write(dir .. "/push.json", json.encode({ ref = "refs/heads/main" }))
    local ctx, why = comment.context("github", env {
      GITHUB_EVENT_PATH = dir .. "/push.json", GITHUB_EVENT_NAME = "push", GITHUB_TOKEN = TOKEN,
      GITHUB_REPOSITORY = "octo/repo" })
    assert.is_nil(ctx)
    assert.matches("not a pull request event %(push%)", why)
    local _, no_token = comment.context("github", github_env(nil, { GITHUB_TOKEN = "" }))
    assert.matches("GITHUB_TOKEN is not set", no_token)
    local _, bad_repo = comment.context("github", github_env(nil, { GITHUB_REPOSITORY = "../x" }))
    assert.matches("GITHUB_REPOSITORY", bad_repo)
  end)

  it("defaults the API to api.github.com and takes the PR of an issue_comment event", function()
    local dir = util.tmpdir()
    write(dir .. "/ic.json", json.encode({ issue = { number = 7, pull_request = { url = "x" } } }))
    local ctx = assert(comment.context("github", env {
      GITHUB_EVENT_PATH = dir .. "/ic.json", GITHUB_TOKEN = TOKEN, GITHUB_REPOSITORY = "octo/repo" }))
    assert.are.equal("https://api.github.com", ctx.api)
    assert.are.equal("https://api.github.com/repos/octo/repo/issues/7/comments", ctx.create_url)
  end)

  it("rejects an unknown provider as a config error", function()
    local ok, err = pcall(comment.context, "bitbucket", env {})
    assert.is_false(ok)
    assert.are.equal("config", err.kind)
  end)
end)

-- GitLab stand-in: notes of merge request 5 of project 77; X-Next-Page.
local function gitlab(opts)
  opts = opts or {}
  local st = { notes = {}, calls = {}, bad = {}, next_id = 500 }
  for _, c in ipairs(opts.notes or {}) do
    st.next_id = st.next_id + 1
    st.notes[#st.notes + 1] = { id = st.next_id, body = c }
  end
  local per_page = opts.per_page or 100
  local base = "/api/v4/projects/77/merge_requests/5/notes"
  st.srv = http.serve {
    handler = function(req)
      st.calls[#st.calls + 1] = req.method .. " " .. req.path
      local auth = opts.header or "private-token"
      if req.headers[auth] ~= TOKEN then
        st.bad[#st.bad + 1] = "auth"
        return { status = 401, json = { message = "401 Unauthorized" } }
      end
      if req.method == "GET" and req.path == base then
        local page = tonumber(req.params.page or "1")
        local out = {}
        for i = (page - 1) * per_page + 1, math.min(#st.notes, page * per_page) do out[#out + 1] = st.notes[i] end
        local headers = {}
        if page * per_page < #st.notes then headers["x-next-page"] = tostring(page + 1) end
        return { status = 200, headers = headers, body = json.encode(out) }
      end
      local ok, body = pcall(json.decode, req.body)
      if not ok or type(body) ~= "table" or type(body.body) ~= "string" then
        st.bad[#st.bad + 1] = "body"
        return { status = 400, json = { message = "body is missing" } }
      end
      if req.method == "POST" and req.path == base then
        st.next_id = st.next_id + 1
        local n = { id = st.next_id, body = body.body }
        st.notes[#st.notes + 1] = n
        return { status = 201, json = n }
      end
      local id = req.path:match("^" .. base:gsub("%p", "%%%0") .. "/(%d+)$")
      if req.method == "PUT" and id then
        for _, n in ipairs(st.notes) do
          if n.id == tonumber(id) then
            n.body = body.body
            return { status = 200, json = n }
          end
        end
      end
      st.bad[#st.bad + 1] = "path " .. req.method .. " " .. req.path
      return { status = 404, json = { message = "404 Not found" } }
    end,
  }
  return st
end

describe("comment on GitLab", function()
  local function gl_env(st, over)
    local t = { CI_API_V4_URL = st.srv.url .. "/api/v4", CI_PROJECT_ID = "77", CI_MERGE_REQUEST_IID = "5",
      GITLAB_TOKEN = TOKEN }
    for k, v in pairs(over or {}) do t[k] = v end
    return env(t)
  end

  it("creates a note, then updates it, across pages (X-Next-Page)", function()
    local st = gitlab { notes = { "a", "b", "c" }, per_page = 2 }
    finally(function() st.srv:close() end)
    local ctx = assert(comment.context("gitlab", gl_env(st)))
    assert.are.equal("created", assert(comment.post(ctx, "one")).action)
    local r = assert(comment.post(ctx, "two"))
    assert.are.equal("updated", r.action)
    assert.are.equal(4, #st.notes)
    assert.are.equal("<!-- kpiwatch:gate -->\ntwo", st.notes[4].body)
    assert.are.same({}, st.bad)
    assert.are.equal("PUT /api/v4/projects/77/merge_requests/5/notes/" .. r.id, st.calls[#st.calls])
  end)

  it("uses the job token header when only CI_JOB_TOKEN is set", function()
    local st = gitlab { header = "job-token" }
    finally(function() st.srv:close() end)
    local ctx = assert(comment.context("gitlab", gl_env(st, { GITLAB_TOKEN = "", CI_JOB_TOKEN = TOKEN })))
    assert.are.equal("created", assert(comment.post(ctx, "x")).action)
    assert.are.same({}, st.bad)
  end)

  it("outside a merge request pipeline there is a note", function()
    local ctx, note = comment.context("gitlab", env { CI_PROJECT_ID = "77" })
    assert.is_nil(ctx)
    assert.matches("CI_MERGE_REQUEST_IID", note)
  end)
end)
