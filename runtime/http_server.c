/*
 * http_server.c - kpiwatch._server: an HTTP/1.1 (and cleartext HTTP/2)
 * server on libh2o, running on the process's libuv loop.
 *
 * h2o parses and writes HTTP; this file owns the sockets' lifetimes and the
 * bridge to Lua. The bridge follows the rule of scheduler.h: h2o's request
 * callback (on_req) runs inside the loop, so it only records the request
 * and posts a job; the job, run between loop turns, calls the Lua side
 * (kpiwatch.http_server), which spawns a task for the handler and later
 * answers through respond().
 *
 * Lifetimes, the delicate part:
 *
 *  - A request record (kw_sreq) is shared by h2o, the job queue and a Lua
 *    userdata, so it is reference counted. h2o tells us when it frees the
 *    request (a client that went away, a closed connection, a completed
 *    response) through a shared chunk in the request's pool whose dispose
 *    function clears rec->req. Answering a request whose client is gone is
 *    therefore a harmless no-op, never a use-after-free.
 *  - Every accepted socket is a kw_conn that h2o closes itself; its close
 *    callback is how we count connections down. To close the server we
 *    never close h2o's sockets under it: we answer the requests still
 *    waiting for Lua with 503 and shutdown(2) the sockets' read side, so
 *    that h2o sees EOF and tears each connection down through its own
 *    path. A grace timer then shuts down both directions for connections
 *    whose client does not read its response.
 *  - h2o_context_dispose ends with uv_run(loop, UV_RUN_NOWAIT) (libh2o 2.2,
 *    to finish its timers' close callbacks), so it must never be called
 *    from inside a libuv callback. Once the listener, the timer and every
 *    connection are closed, the server is "drained" and a static reaper
 *    job disposes of it between loop turns. The reaper being static, a
 *    queued reaper never points at freed memory.
 *  - At exit (kw_sched_atclose) servers still open are closed forcibly and
 *    the loop is turned here until they are drained, then disposed of: the
 *    scheduler's final uv_walk must find none of h2o's handles.
 *
 * C API (lualib/kpiwatch/http_server.lua wraps it):
 *   listen(host, port, on_request, opts) -> server | nil, message, kind (fail.h)
 *       on_request(req_handle, req_table) is called between loop turns,
 *       from a protected call; it must not block (it spawns a task).
 *   port(server) -> integer;  stats(server) -> table
 *   close(server [, spare_req]) -> true when it started closing
 *   wait(server) -> true once the server has closed every connection
 *   respond(req, status, headers, body) -> true, or false when the request
 *       is gone (client left, already answered, server closed)
 *   alive(req) -> boolean
 *   drop(req) -> true once the connection is being closed without a response
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <h2o.h>
#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "fail.h"
#include "scheduler.h"

#ifndef KW_VERSION
#define KW_VERSION "dev"
#endif

#define SERVER_MT "kpiwatch.server"
#define REQUEST_MT "kpiwatch.server.request"

#define LISTEN_BACKLOG 1024
/* How long close() lets in-flight responses finish before it shuts the
 * remaining sockets down in both directions. */
#define CLOSE_GRACE_MS 5000
/* At exit there is nobody to wait for: a short safety net only. */
#define FORCE_GRACE_MS 200
#define FORCE_DEADLINE_MS 3000

typedef struct kw_server kw_server;
typedef struct kw_sreq kw_sreq;

typedef struct kw_conn {
  uv_tcp_t tcp; /* first member: h2o's close callback receives this handle */
  kw_server *srv;
  struct kw_conn *prev, *next;
} kw_conn;

struct kw_sreq {
  kw_job job;     /* first member: posted by on_req, runs the Lua side */
  kw_server *srv; /* NULL once h2o has disposed of the request */
  h2o_req_t *req; /* NULL once h2o has disposed of the request */
  int refs;       /* h2o's pool, the queued job, the Lua userdata */
  int answered;
  kw_sreq *prev, *next; /* the server's live requests */
};

enum { SRV_OPEN, SRV_CLOSING, SRV_DRAINED };

struct kw_server {
  h2o_globalconf_t config;
  h2o_context_t ctx;
  h2o_accept_ctx_t accept;
  uv_tcp_t listener;
  uv_timer_t grace;
  int state;
  int forced;
  int handles;    /* open uv handles of ours: listener, grace, connections */
  int context_up; /* h2o_context_init done */
  int port;
  int handler_ref; /* the Lua on_request function */
  kw_conn *conns;
  kw_sreq *live;           /* requests h2o has not disposed of yet */
  kw_server **box;         /* the Lua userdata's payload, NULL once collected */
  kw_server *next;         /* every server not yet disposed of */
  struct wait_op *waiters; /* wait() calls, completed once drained */
  uint64_t connections, requests, answered;
};

static kw_server *servers;
static int reaper_posted;
static int in_atclose;

/* ---- request records ------------------------------------------------------ */

static void unlink_sreq(kw_sreq *rec) {
  if (rec->prev)
    rec->prev->next = rec->next;
  else if (rec->srv)
    rec->srv->live = rec->next;
  if (rec->next) rec->next->prev = rec->prev;
  rec->prev = rec->next = NULL;
}

static void sreq_unref(kw_sreq *rec) {
  if (--rec->refs == 0) free(rec);
}

/* Dispose function of the shared chunk in the request's pool: h2o is
 * freeing the request (response done, connection closed). */
static void sreq_req_disposed(void *p) {
  kw_sreq *rec = *(kw_sreq **)p;
  unlink_sreq(rec);
  rec->req = NULL;
  rec->srv = NULL;
  sreq_unref(rec);
}

static const char *reason_phrase(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 206:
    return "Partial Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 303:
    return "See Other";
  case 304:
    return "Not Modified";
  case 307:
    return "Temporary Redirect";
  case 308:
    return "Permanent Redirect";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 410:
    return "Gone";
  case 413:
    return "Payload Too Large";
  case 415:
    return "Unsupported Media Type";
  case 422:
    return "Unprocessable Entity";
  case 429:
    return "Too Many Requests";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  default:
    break;
  }
  if (status < 300) return "OK";
  if (status < 400) return "Redirection";
  if (status < 500) return "Client Error";
  return "Server Error";
}

static void answer_503(kw_sreq *rec) {
  h2o_req_t *req = rec->req;
  rec->answered = 1;
  if (rec->srv) rec->srv->answered++;
  h2o_send_error_503(req, "Service Unavailable", "server closing\n", 0);
}

/* ---- closing -------------------------------------------------------------- */

static void reaper_run(lua_State *L, kw_job *job);
static kw_job reaper = {reaper_run, NULL};

static void post_reaper(void) {
  if (reaper_posted || in_atclose) return;
  reaper_posted = 1;
  kw_job_post(&reaper);
}

/* server:wait(): completes when the server has closed every connection. */
typedef struct wait_op {
  kw_op op;
  kw_server *srv; /* NULL once completed */
  struct wait_op *next;
} wait_op;

static void wake_waiters(kw_server *srv) {
  wait_op *w = srv->waiters, *next;
  srv->waiters = NULL;
  for (; w; w = next) {
    next = w->next;
    w->srv = NULL;
    kw_op_done(&w->op);
  }
}

static int wait_push(kw_op *op, lua_State *L) {
  (void)op;
  lua_pushboolean(L, 1);
  return 1;
}

static void wait_cancel(kw_op *op) {
  wait_op *w = (wait_op *)op, **p;
  if (w->srv) {
    for (p = &w->srv->waiters; *p; p = &(*p)->next)
      if (*p == w) {
        *p = w->next;
        break;
      }
    w->srv = NULL;
  }
  op->cancelled = 1;
  kw_op_done(op);
}

static void wait_release(kw_op *op) {
  free(op);
}

static const kw_op_class wait_class = {"http server wait", wait_push, wait_cancel, wait_release};

static void handle_closed(uv_handle_t *h);

static void maybe_drained(kw_server *srv) {
  if (srv->state != SRV_CLOSING) return;
  if (!srv->conns && !uv_is_closing((uv_handle_t *)&srv->grace)) {
    uv_timer_stop(&srv->grace);
    uv_close((uv_handle_t *)&srv->grace, handle_closed);
  }
  if (srv->handles == 0) {
    srv->state = SRV_DRAINED;
    wake_waiters(srv);
    post_reaper();
  }
}

/* Close callback of the listener and the grace timer. */
static void handle_closed(uv_handle_t *h) {
  kw_server *srv = (kw_server *)h->data;
  srv->handles--;
  maybe_drained(srv);
}

static void shutdown_conns(kw_server *srv, int how) {
  kw_conn *c;
  for (c = srv->conns; c; c = c->next) {
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) shutdown(fd, how);
  }
}

/* Answer every request still waiting for Lua, except `spare` (the request
 * whose handler is closing the server). Sending may make h2o dispose of
 * other requests, so restart from the head after each answer. */
static void answer_waiting(kw_server *srv, const kw_sreq *spare) {
  for (;;) {
    kw_sreq *rec;
    for (rec = srv->live; rec; rec = rec->next)
      /* cppcheck-suppress nullPointerRedundantCheck ; rec is the loop's, never NULL here */
      if (!rec->answered && rec != spare && rec->req) break;
    if (!rec) return;
    answer_503(rec);
  }
}

static void grace_expired(uv_timer_t *t) {
  kw_server *srv = (kw_server *)t->data;
  answer_waiting(srv, NULL);
  shutdown_conns(srv, SHUT_RDWR);
}

static void begin_close(kw_server *srv, kw_sreq *spare, int force) {
  if (srv->state == SRV_DRAINED) return;
  if (srv->state == SRV_CLOSING && (!force || srv->forced)) return;
  if (srv->state == SRV_OPEN) {
    srv->state = SRV_CLOSING;
    uv_close((uv_handle_t *)&srv->listener, handle_closed);
    h2o_context_request_shutdown(&srv->ctx);
  }
  srv->forced = force;
  answer_waiting(srv, force ? NULL : spare);
  /* EOF on the read side makes h2o close idle keep-alive connections now,
   * and the others once their response is written. */
  shutdown_conns(srv, force ? SHUT_RDWR : SHUT_RD);
  if (!uv_is_closing((uv_handle_t *)&srv->grace))
    KW_CHECK(uv_timer_start(&srv->grace, grace_expired, force ? FORCE_GRACE_MS : CLOSE_GRACE_MS,
                            force ? FORCE_GRACE_MS : 0) == 0);
  maybe_drained(srv);
}

/* Free a drained server. Runs outside of any libuv callback (the reaper
 * job, or the atclose hook): h2o_context_dispose turns the loop once. */
static void dispose_server(kw_server *srv, lua_State *L) {
  kw_server **p;
  for (p = &servers; *p; p = &(*p)->next)
    if (*p == srv) {
      *p = srv->next;
      break;
    }
  if (srv->context_up) {
    /* h2o_context_request_shutdown armed a one-second GOAWAY resend for
     * HTTP/2; h2o_timeout_dispose asserts that no entry is left linked. */
    if (h2o_timeout_is_linked(&srv->ctx.http2._graceful_shutdown_timeout))
      h2o_timeout_unlink(&srv->ctx.http2._graceful_shutdown_timeout);
    h2o_context_dispose(&srv->ctx);
  }
  h2o_config_dispose(&srv->config);
  if (L) luaL_unref(L, LUA_REGISTRYINDEX, srv->handler_ref);
  if (srv->box) *srv->box = NULL;
  free(srv);
}

static void reaper_run(lua_State *L, kw_job *job) {
  (void)job;
  reaper_posted = 0;
  for (;;) {
    kw_server *srv;
    for (srv = servers; srv; srv = srv->next)
      if (srv->state == SRV_DRAINED) break;
    if (!srv) return;
    dispose_server(srv, L);
  }
}

static void server_atclose(void) {
  kw_server *srv;
  uint64_t start;
  int waiting;
  in_atclose = 1;
  for (srv = servers; srv; srv = srv->next)
    begin_close(srv, NULL, 1);
  start = uv_now(kw_loop());
  for (;;) {
    waiting = 0;
    for (srv = servers; srv; srv = srv->next)
      if (srv->state != SRV_DRAINED) waiting = 1;
    if (!waiting) break;
    if (uv_now(kw_loop()) - start > FORCE_DEADLINE_MS) {
      fprintf(stderr, "kpiwatch: http server: connections did not close at exit\n");
      break;
    }
    uv_run(kw_loop(), UV_RUN_ONCE);
  }
  for (;;) {
    for (srv = servers; srv; srv = srv->next)
      if (srv->state == SRV_DRAINED) break;
    if (!srv) break;
    dispose_server(srv, NULL);
  }
  /* The Lua state outlives this hook; its registry refs go with it. A
   * later kw_sched_open (unit tests open and close the scheduler more than
   * once) starts with an empty job queue. */
  in_atclose = 0;
  reaper_posted = 0;
}

/* ---- h2o side: connections and requests ----------------------------------- */

static void conn_closed(uv_handle_t *h) {
  kw_conn *c = (kw_conn *)h;
  kw_server *srv = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
  srv->handles--;
  maybe_drained(srv);
}

static void conn_rejected(uv_handle_t *h) {
  free(h);
}

static void on_accept(uv_stream_t *listener, int status) {
  kw_server *srv = (kw_server *)listener->data;
  kw_conn *c;
  h2o_socket_t *sock;
  if (status != 0 || srv->state != SRV_OPEN) return;
  c = (kw_conn *)calloc(1, sizeof *c);
  if (!c) return;
  if (uv_tcp_init(listener->loop, &c->tcp) != 0) {
    free(c);
    return;
  }
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, conn_rejected);
    return;
  }
  (void)uv_tcp_nodelay(&c->tcp, 1); /* only a latency hint: a failure changes nothing else */
  /* A background server's connections (an idle keep-alive one waits 10 s
   * for h2o's timeout) must not hold the process open either. */
  if (!uv_has_ref((uv_handle_t *)listener)) uv_unref((uv_handle_t *)&c->tcp);
  c->srv = srv;
  c->next = srv->conns;
  if (c->next) c->next->prev = c;
  srv->conns = c;
  srv->handles++;
  srv->connections++;
  sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, conn_closed);
  h2o_accept(&srv->accept, sock);
}

static void run_request(lua_State *L, kw_job *job);

/* h2o's request callback: inside the loop, so no Lua here. */
static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  kw_server *srv = H2O_STRUCT_FROM_MEMBER(kw_server, ctx, req->conn->ctx);
  kw_sreq *rec, **token;
  (void)self;
  srv->requests++;
  if (srv->state != SRV_OPEN || !(rec = (kw_sreq *)calloc(1, sizeof *rec))) {
    srv->answered++;
    h2o_send_error_503(req, "Service Unavailable", "server closing\n", 0);
    return 0;
  }
  token = (kw_sreq **)h2o_mem_alloc_shared(&req->pool, sizeof(kw_sreq *), sreq_req_disposed);
  *token = rec;
  rec->req = req;
  rec->srv = srv;
  rec->refs = 2; /* h2o's pool and the job */
  rec->next = srv->live;
  if (rec->next) rec->next->prev = rec;
  srv->live = rec;
  rec->job.run = run_request;
  kw_job_post(&rec->job);
  return 0;
}

/* ---- Lua side: the request ------------------------------------------------ */

static kw_sreq *check_sreq(lua_State *L, int idx) {
  kw_sreq **box = (kw_sreq **)luaL_checkudata(L, idx, REQUEST_MT);
  return *box;
}

static int sreq_gc(lua_State *L) {
  kw_sreq **box = (kw_sreq **)luaL_checkudata(L, 1, REQUEST_MT);
  if (*box) sreq_unref(*box);
  *box = NULL;
  return 0;
}

static void push_lower(lua_State *L, const char *s, size_t len) {
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, len);
  size_t i;
  for (i = 0; i < len; i++)
    p[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
  luaL_pushresultsize(&b, len);
}

/* headers[name] = value, joining a repeated field with ", " (RFC 9110
 * 5.3), or "; " for cookie (RFC 6265 5.4). Table at the top of L. */
static void add_header(lua_State *L, const char *name, size_t nlen, const char *val, size_t vlen) {
  push_lower(L, name, nlen);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) == LUA_TSTRING) {
    const char *sep = strcmp(lua_tostring(L, -2), "cookie") == 0 ? "; " : ", ";
    lua_pushstring(L, sep);
    lua_pushlstring(L, val, vlen);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, val, vlen);
  }
  lua_rawset(L, -3);
}

static void push_request_table(lua_State *L, h2o_req_t *req) {
  const char *path = req->input.path.base;
  size_t plen = req->input.path.len, i;
  const char *q = path ? memchr(path, '?', plen) : NULL;
  lua_createtable(L, 0, 7);
  lua_pushlstring(L, req->input.method.base, req->input.method.len);
  lua_setfield(L, -2, "method");
  if (q) {
    lua_pushlstring(L, path, (size_t)(q - path));
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, q + 1, plen - (size_t)(q - path) - 1);
  } else {
    lua_pushlstring(L, path ? path : "/", path ? plen : 1);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
  }
  lua_setfield(L, -2, "query");
  lua_pushstring(L, req->version >= 0x200 ? "2" : req->version == 0x100 ? "1.0" : "1.1");
  lua_setfield(L, -2, "http_version");
  lua_createtable(L, 0, (int)req->headers.size + 2);
  /* h2o keeps these out of req->headers; a handler expects to see them. */
  if (req->input.authority.len)
    add_header(L, "host", 4, req->input.authority.base, req->input.authority.len);
  if (req->entity.base) {
    char n[32];
    int len = snprintf(n, sizeof n, "%zu", req->entity.len);
    add_header(L, "content-length", 14, n, (size_t)len);
  }
  for (i = 0; i < req->headers.size; i++) {
    const h2o_header_t *h = req->headers.entries + i;
    add_header(L, h->name->base, h->name->len, h->value.base, h->value.len);
  }
  lua_setfield(L, -2, "headers");
  if (req->entity.base)
    lua_pushlstring(L, req->entity.base, req->entity.len);
  else
    lua_pushliteral(L, "");
  lua_setfield(L, -2, "body");
}

/* The job posted by on_req: hand the request to Lua. */
static void run_request(lua_State *L, kw_job *job) {
  kw_sreq *rec = (kw_sreq *)job;
  kw_server *srv = rec->srv;
  h2o_req_t *req = rec->req; /* rec->req may be gone once the handler has run */
  if (req && srv && srv->state == SRV_OPEN && !rec->answered) {
    int top = lua_gettop(L);
    kw_sreq **box;
    lua_rawgeti(L, LUA_REGISTRYINDEX, srv->handler_ref);
    box = (kw_sreq **)lua_newuserdatauv(L, sizeof(kw_sreq *), 0);
    *box = rec;
    rec->refs++;
    luaL_setmetatable(L, REQUEST_MT);
    push_request_table(L, req);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      fprintf(stderr, "kpiwatch: http server: %s\n",
              lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error in the dispatcher");
      fflush(stderr);
      if (rec->req && !rec->answered) {
        rec->answered = 1;
        if (rec->srv) rec->srv->answered++;
        h2o_send_error_500(rec->req, "Internal Server Error", "internal server error\n", 0);
      }
    }
    lua_settop(L, top);
  }
  sreq_unref(rec);
}

static int is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static const char *bad_header(const char *name, size_t nlen, const char *val, size_t vlen) {
  size_t i;
  if (nlen == 0) return "empty header name";
  for (i = 0; i < nlen; i++)
    if (!is_tchar((unsigned char)name[i])) return "invalid character in header name";
  for (i = 0; i < vlen; i++)
    if (val[i] == '\r' || val[i] == '\n' || val[i] == '\0')
      return "header value contains CR, LF or NUL";
  return NULL;
}

/* Framing headers are h2o's business: it sets content-length itself. */
static int is_managed(const char *lname) {
  return strcmp(lname, "content-length") == 0 || strcmp(lname, "transfer-encoding") == 0 ||
         strcmp(lname, "connection") == 0;
}

/* Walk the headers table (name -> string | number | list of those),
 * validating (add == 0) or adding them to the response (add == 1). */
static void walk_headers(lua_State *L, int idx, h2o_req_t *req, int add) {
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t nlen, n, i;
    const char *name;
    int list = lua_type(L, -1) == LUA_TTABLE;
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "header names must be strings");
    name = lua_tolstring(L, -2, &nlen);
    n = list ? lua_rawlen(L, -1) : 1;
    for (i = 1; i <= n; i++) {
      const char *val, *why;
      size_t vlen;
      if (list)
        lua_rawgeti(L, -1, (lua_Integer)i);
      else
        lua_pushvalue(L, -1);
      if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "header '%s' must be a string, a number or a list of them", name);
      val = lua_tolstring(L, -1, &vlen);
      if ((why = bad_header(name, nlen, val, vlen)) != NULL)
        luaL_error(L, "header '%s': %s", name, why);
      if (add) {
        char *lname = h2o_mem_alloc_pool(&req->pool, nlen + 1);
        size_t k;
        for (k = 0; k < nlen; k++)
          lname[k] = (char)((name[k] >= 'A' && name[k] <= 'Z') ? name[k] + 32 : name[k]);
        lname[nlen] = '\0';
        if (!is_managed(lname)) {
          h2o_iovec_t v = h2o_strdup(&req->pool, val, vlen);
          h2o_add_header_by_str(&req->pool, &req->res.headers, lname, nlen, 1, NULL, v.base, v.len);
        }
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

static int l_respond(lua_State *L) {
  static h2o_generator_t generator = {NULL, NULL};
  kw_sreq *rec = check_sreq(L, 1);
  lua_Integer status = luaL_checkinteger(L, 2);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, "", &blen);
  h2o_req_t *req;
  h2o_iovec_t buf = {NULL, 0};
  int bodiless;
  luaL_argcheck(L, status >= 200 && status <= 599, 2, "status must be between 200 and 599");
  if (!rec || !rec->req || rec->answered) {
    lua_pushboolean(L, 0);
    return 1;
  }
  req = rec->req;
  walk_headers(L, 3, req, 0); /* raises before anything is sent */
  rec->answered = 1;
  if (rec->srv) rec->srv->answered++;
  req->res.status = (int)status;
  req->res.reason = reason_phrase((int)status);
  walk_headers(L, 3, req, 1);
  bodiless = status == 204 || status == 304;
  if (!bodiless) {
    req->res.content_length = blen;
    if (blen && !h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"))) {
      /* Copied: the Lua string may be collected before the write ends. */
      buf.base = h2o_mem_alloc_pool(&req->pool, blen);
      memcpy(buf.base, body, blen);
      buf.len = blen;
    }
  }
  h2o_start_response(req, &generator);
  h2o_send(req, buf.len ? &buf : NULL, buf.len ? 1 : 0, H2O_SEND_STATE_FINAL);
  lua_pushboolean(L, 1);
  return 1;
}

/* drop(req): close the request's connection without a response (the
 * sandbox's "drop" fault). h2o has no call to abort a connection, and its
 * socket is not ours to close, so both directions are shut down (the peer
 * sees EOF before any byte of a response) and an error response is then
 * started: its write fails, which is h2o's own path to closing the
 * connection and disposing of the request. Other requests multiplexed on
 * the same connection (HTTP/2) go with it. */
static int l_drop(lua_State *L) {
  kw_sreq *rec = check_sreq(L, 1);
  h2o_req_t *req;
  h2o_socket_t *sock = NULL;
  if (!rec || !rec->req || rec->answered) {
    lua_pushboolean(L, 0);
    return 1;
  }
  req = rec->req;
  if (req->conn->callbacks->get_socket) sock = req->conn->callbacks->get_socket(req->conn);
  if (sock) {
    int fd = h2o_socket_get_fd(sock);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
  }
  rec->answered = 1;
  if (rec->srv) rec->srv->answered++;
  req->http1_is_persistent = 0;
  h2o_send_error_503(req, "Service Unavailable", "connection dropped\n", 0);
  lua_pushboolean(L, sock != NULL);
  return 1;
}

static int l_alive(lua_State *L) {
  kw_sreq *rec = check_sreq(L, 1);
  lua_pushboolean(L, rec && rec->req && !rec->answered);
  return 1;
}

/* ---- Lua side: the server ------------------------------------------------- */

static kw_server *check_server(lua_State *L, int idx) {
  kw_server **box = (kw_server **)luaL_checkudata(L, idx, SERVER_MT);
  return *box;
}

static int server_gc(lua_State *L) {
  kw_server **box = (kw_server **)luaL_checkudata(L, 1, SERVER_MT);
  /* A server nobody can reach keeps serving (its listener keeps the
   * process alive, as in node); it is closed at exit. */
  if (*box) (*box)->box = NULL;
  *box = NULL;
  return 0;
}

static int push_failure(lua_State *L, const char *kind, const char *fmt, const char *host, int port,
                        int err) {
  lua_pushfstring(L, fmt, host, port, uv_strerror(err));
  return kw_fail_kind(L, kind);
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss) {
  struct addrinfo hints;
  uv_getaddrinfo_t gai;
  char service[16];
  int r;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) return 0;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  snprintf(service, sizeof service, "%d", port);
  /* No callback: resolved synchronously, once, when the server starts. */
  r = uv_getaddrinfo(kw_loop(), &gai, NULL, host, service, &hints);
  if (r != 0) return r;
  memcpy(ss, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
  uv_freeaddrinfo(gai.addrinfo);
  return 0;
}

static void ignore_sigpipe(void) {
  struct sigaction sa;
  /* A peer that resets its connection must cost an EPIPE, not the
   * process. Left alone if the host installed its own handler. */
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, NULL);
  }
}

static void failed_listener_closed(uv_handle_t *h) {
  kw_server *srv = (kw_server *)h->data;
  h2o_config_dispose(&srv->config);
  free(srv);
}

/* Handles are walked in creation order: the ones past `skip` were made by
 * h2o_context_init. */
typedef struct {
  int seen, skip;
} handle_walk;

static void count_handles(uv_handle_t *h, void *arg) {
  (void)h;
  ((handle_walk *)arg)->seen++;
}

static void unref_new_handles(uv_handle_t *h, void *arg) {
  handle_walk *w = (handle_walk *)arg;
  if (w->seen++ >= w->skip) uv_unref(h);
}

static int l_listen(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  lua_Integer max_body = 64 * 1024 * 1024;
  int background = 0;
  struct sockaddr_storage ss;
  kw_server *srv, **box;
  h2o_hostconf_t *hostconf;
  h2o_pathconf_t *pathconf;
  h2o_handler_t *handler;
  int r, namelen;
  luaL_argcheck(L, port >= 0 && port <= 65535, 2, "port must be between 0 and 65535");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    if (lua_getfield(L, 4, "max_body") != LUA_TNIL) {
      max_body = luaL_checkinteger(L, -1);
      luaL_argcheck(L, max_body >= 0, 4, "max_body must not be negative");
    }
    lua_pop(L, 1);
    background = lua_getfield(L, 4, "background") != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if ((r = resolve(host, (int)port, &ss)) != 0)
    return push_failure(L, "dns", "cannot resolve %s (port %d): %s", host, (int)port, r);

  box = (kw_server **)lua_newuserdatauv(L, sizeof(kw_server *), 0);
  *box = NULL;
  luaL_setmetatable(L, SERVER_MT);
  srv = (kw_server *)calloc(1, sizeof *srv);
  if (!srv) return luaL_error(L, "out of memory");

  h2o_config_init(&srv->config);
  srv->config.server_name = h2o_iovec_init(H2O_STRLIT(""));
  srv->config.max_request_entity_size = (size_t)max_body;
  hostconf = h2o_config_register_host(&srv->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  pathconf = h2o_config_register_path(hostconf, "/", 0);
  handler = h2o_create_handler(pathconf, sizeof *handler);
  handler->on_req = on_req;

  KW_CHECK(uv_tcp_init(kw_loop(), &srv->listener) == 0); /* AF_UNSPEC: no socket yet */
  srv->listener.data = srv;
  if ((r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0)) != 0 ||
      (r = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_accept)) != 0) {
    uv_close((uv_handle_t *)&srv->listener, failed_listener_closed);
    return push_failure(L, r == UV_EADDRINUSE || r == UV_EACCES ? "bind" : "listen",
                        "cannot listen on %s port %d: %s", host, (int)port, r);
  }
  /* A background server (the --sandbox one) serves while the script runs
   * but does not keep the process alive once nothing else does. */
  if (background) uv_unref((uv_handle_t *)&srv->listener);
  namelen = (int)sizeof ss;
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &namelen) == 0)
    srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
  KW_CHECK(uv_timer_init(kw_loop(), &srv->grace) == 0);
  srv->grace.data = srv;
  srv->handles = 2; /* listener, grace */

  {
    handle_walk w = {0, 0};
    uv_walk(kw_loop(), count_handles, &w);
    h2o_context_init(&srv->ctx, kw_loop(), &srv->config);
    /* h2o's context owns handles of its own (the uv_async of its
     * multithread queue, timers) that would hold the loop open forever. */
    if (background) {
      w.skip = w.seen;
      w.seen = 0;
      uv_walk(kw_loop(), unref_new_handles, &w);
    }
  }
  srv->context_up = 1;
  srv->accept.ctx = &srv->ctx;
  srv->accept.hosts = srv->config.hosts;

  lua_pushvalue(L, 3);
  srv->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  srv->state = SRV_OPEN;
  srv->box = box;
  *box = srv;
  srv->next = servers;
  servers = srv;
  ignore_sigpipe();
  return 1;
}

static int l_port(lua_State *L) {
  kw_server *srv = check_server(L, 1);
  if (!srv) return 0;
  lua_pushinteger(L, srv->port);
  return 1;
}

static int l_close(lua_State *L) {
  kw_server *srv = check_server(L, 1);
  kw_sreq *spare = lua_isnoneornil(L, 2) ? NULL : check_sreq(L, 2);
  if (!srv || srv->state != SRV_OPEN) {
    lua_pushboolean(L, 0);
    return 1;
  }
  begin_close(srv, spare, 0);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_wait(lua_State *L) {
  kw_server *srv = check_server(L, 1);
  wait_op *w;
  if (!srv || srv->state == SRV_DRAINED) {
    lua_pushboolean(L, 1);
    return 1;
  }
  w = (wait_op *)malloc(sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  kw_op_init(&w->op, &wait_class);
  w->srv = srv;
  w->next = srv->waiters;
  srv->waiters = w;
  return kw_await(L, &w->op);
}

static int l_stats(lua_State *L) {
  kw_server *srv = check_server(L, 1);
  kw_conn *c;
  kw_sreq *rec;
  lua_Integer open = 0, waiting = 0;
  static const char *const states[] = {"open", "closing", "closed"};
  lua_createtable(L, 0, 6);
  if (!srv) {
    lua_pushliteral(L, "closed");
    lua_setfield(L, -2, "state");
    return 1;
  }
  for (c = srv->conns; c; c = c->next)
    open++;
  for (rec = srv->live; rec; rec = rec->next)
    if (!rec->answered) waiting++;
  lua_pushinteger(L, (lua_Integer)srv->connections);
  lua_setfield(L, -2, "connections");
  lua_pushinteger(L, open);
  lua_setfield(L, -2, "open_connections");
  lua_pushinteger(L, (lua_Integer)srv->requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, (lua_Integer)srv->answered);
  lua_setfield(L, -2, "responses");
  lua_pushinteger(L, waiting);
  lua_setfield(L, -2, "in_flight");
  lua_pushstring(L, states[srv->state]);
  lua_setfield(L, -2, "state");
  return 1;
}

static const luaL_Reg server_funcs[] = {
    {"listen", l_listen}, {"port", l_port},       {"close", l_close},
    {"stats", l_stats},   {"respond", l_respond}, {"alive", l_alive},
    {"wait", l_wait},     {"drop", l_drop},       {NULL, NULL}};

int luaopen_kpiwatch__server(lua_State *L) {
  /* At open, not at the first listen: nothing to undo if it fails. */
  if (kw_sched_atclose(server_atclose) != 0)
    return luaL_error(L, "too many kw_sched_atclose hooks");
  if (luaL_newmetatable(L, SERVER_MT)) {
    lua_pushcfunction(L, server_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, REQUEST_MT)) {
    lua_pushcfunction(L, sreq_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, server_funcs);
  lua_pushliteral(L, "kpiwatch/" KW_VERSION);
  lua_setfield(L, -2, "server_name");
  return 1;
}
