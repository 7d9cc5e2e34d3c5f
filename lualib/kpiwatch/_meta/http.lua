---@meta
-- Annotations of the objects kpiwatch.http hands out, which C (runtime/
-- http_client.c, http_server.c) and kpiwatch.http_server implement: read
-- by tools/gen_lua_api.lua and language servers, never loaded.
-- luacheck: ignore
error("kpiwatch._meta files are documentation; require \"kpiwatch.http\"")

local http = {}

---@brief
--- HTTP on the event loop (global `http`): a client on libcurl's multi interface
--- and a server on libh2o, so a script can serve and fetch at once. Connections
--- are reused; HTTP/2 is used over TLS where the server offers it. TLS
--- certificates are always verified.
---
--- A transport failure raises an error object `{kind, message, url, curl_code}`
--- that prints as `kind: message`. Kinds: `timeout`, `connect`, `network`,
--- `dns` (worth a retry), `tls`, `too_large`, `invalid_url` (not). An HTTP error
--- status (404, 500, ...) is a response, not an error. Malformed options raise a
--- plain error.

--- The options of `http.request`.
---@class kpiwatch.http.RequestOptions
---@field url string http:// or https:// URL
---@field method? string default `GET`, or `POST` when there is a body
---@field headers? table<string, string|string[]>|kpiwatch.http.Headers a list value sends repeated header lines; or a list from `http.headers`
---@field body? string the request body
---@field timeout? number seconds for the whole transfer (default 30; 0: none)
---@field max_body? integer the largest response body kept (default 8 MiB; more is kind `too_large`)
---@field ca_file? string CA certificates (PEM) to verify TLS with, instead of the system's
---@field follow? boolean follow redirects (default false)
local RequestOptions = {}

--- A header list `http.headers` prepared once for many requests.
---@class kpiwatch.http.Headers
local Headers = {}

--- What `http.request` returns.
---@class kpiwatch.http.Response
---@field status integer the HTTP status
---@field body string the whole body
---@field headers table<string, string> lower-cased names; repeated headers joined with `", "`
---@field header_list {[1]: string, [2]: string}[] every header line in order, as `{name, value}`
---@field raw_headers string the header block as received
---@field time number seconds the transfer took
---@field http_version string e.g. `"1.1"`, `"2"`
---@field url? string the final URL (with `follow = true` only)
local Response = {}

--- The options of `http.serve`.
---@class kpiwatch.http.ServeOptions
---@field handler fun(req: kpiwatch.http.Request): (table|string|nil) runs in its own task per request
---@field host? string the address to bind (default `127.0.0.1`)
---@field port? integer the port (default 0: any free port)
---@field max_body? integer the largest request body (default 64 MiB; more gets a 413)
---@field background? boolean do not keep the process alive (as the `--sandbox` server)
local ServeOptions = {}

--- A request as a handler of `http.serve` sees it. The handler returns
--- `{status = 200, headers = {}, body = ""}` (all optional; `json = value`
--- instead of `body` encodes it as JSON), a string (the body of a 200), or
--- nothing (an empty 200). A handler that raises, or returns something
--- malformed, gets a 500 and the server keeps serving.
---@class kpiwatch.http.Request
---@field method string
---@field path string the target before `?`, not percent-decoded
---@field query string the raw query (`""` when none)
---@field params table<string, string> the decoded query (first value wins)
---@field headers table<string, string> lower-cased names; repeated fields joined with `", "`
---@field body string
---@field http_version string
local Request = {}

--- A server started by `http.serve`. It keeps the script running until closed
--- (unless started with `background = true`); at exit it is closed for you.
---@class kpiwatch.http.Server
---@field host string
---@field port integer the bound port
---@field url string `http://host:port`
local Server = {}

--- Stop accepting at once and free the port. Requests still waiting for their
--- handler get a 503 and those handlers are cancelled; connections close once
--- their response is sent. Called from a handler, it spares that handler's request.
function Server:close() end

--- Suspend the calling task until the server is closed and its last
--- connection is gone.
---@async
function Server:wait() end

--- Counters of the server; keep-alive reuse shows as `connections < requests`.
---@return {connections: integer, open_connections: integer, requests: integer, responses: integer, in_flight: integer, state: string} stats
function Server:stats() end

return http
