/*
 * http_client.c - kpiwatch._http: HTTP requests on libcurl's multi interface,
 * driven by the process's libuv loop.
 *
 * The wiring follows curl's docs/examples/multi-uv.c: libcurl tells us which
 * sockets to watch (CURLMOPT_SOCKETFUNCTION: one uv_poll_t per socket) and
 * when to call it back (CURLMOPT_TIMERFUNCTION: one uv_timer_t), and every
 * readiness event or timer expiry becomes a curl_multi_socket_action. On top
 * of the example this file handles its known traps:
 *
 *  - libcurl is never re-entered from its own callbacks. A 0 ms timeout is
 *    served by a uv timer on the next loop turn instead of an immediate
 *    socket_action; handles are only added and removed from Lua (request,
 *    cancel) or from the completion step, which runs after socket_action
 *    has returned.
 *  - curl_multi_info_read is drained after every socket_action, not only
 *    while transfers are running: a transfer can finish in the same call
 *    that makes the running count reach zero.
 *  - An op is completed (kw_op_done) only from that completion step (or
 *    from cancel, which runs from Lua), so Lua never runs inside a callback.
 *  - A poll error is reported to libcurl as CURL_CSELECT_ERR.
 *  - On CURL_POLL_REMOVE the poll handle is stopped and closed right away,
 *    before libcurl closes the fd, so a new socket that gets the same fd
 *    number can get a fresh uv_poll_t (libuv refuses two watchers per fd).
 *  - The multi handle is cleaned up from a kw_sched_atclose hook, while the
 *    loop can still run the close callbacks.
 *
 * libcurl is initialised on the first request, not at start: a script that
 * never touches the network does not pay for TLS initialisation.
 *
 * C API (the Lua wrapper lualib/kpiwatch/http.lua turns failures into error
 * objects):
 *   request(opts) -> response | nil, kind, message, curl_code
 *   configure(opts), stats() -> table
 */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#define _POSIX_C_SOURCE 200809L /* uv.h needs pthread_rwlock_t */
#endif
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "scheduler.h"

#ifndef KW_VERSION
#define KW_VERSION "dev"
#endif

#define HTTP_DEFAULT_MAX_CONCURRENT 64
#define HTTP_DEFAULT_MAX_BODY (8 * 1024 * 1024)
#define HTTP_DEFAULT_TIMEOUT_MS 30000L

/* Process-wide settings (http.configure). */
static struct {
  long max_concurrent;
  curl_off_t max_body;
  long timeout_ms;
  char *ca_file;
} cfg = {HTTP_DEFAULT_MAX_CONCURRENT, HTTP_DEFAULT_MAX_BODY, HTTP_DEFAULT_TIMEOUT_MS, NULL};

typedef struct sock_ctx sock_ctx;
struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  sock_ctx *prev, *next; /* live (not yet closing) contexts, for teardown */
};

typedef struct {
  char *p;
  size_t len, cap;
} buf;

/* A response header as offsets into the request's header buffer: the
 * buffer moves when it grows, pointers would not survive that. */
typedef struct {
  size_t name, nlen, val, vlen;
} hdr_ent;

enum { REQ_NEW, REQ_QUEUED, REQ_ACTIVE, REQ_DONE };

typedef struct http_req http_req;
struct http_req {
  kw_op op; /* first: the scheduler sees a kw_op */
  CURL *easy;
  struct curl_slist *req_headers;
  int state;
  http_req *prev, *next;   /* the pending queue while REQ_QUEUED */
  http_req *lprev, *lnext; /* every request not yet freed, for teardown */
  curl_off_t max_body;
  buf body;
  buf hbuf;
  hdr_ent *hdrs;
  size_t nhdrs, hcap;
  CURLcode result;
  int too_large;
  char errbuf[CURL_ERROR_SIZE];
};

static struct {
  int inited;
  CURLM *multi;
  uv_timer_t timer;
  sock_ctx *socks;
  http_req *qhead, *qtail; /* FIFO of requests waiting for a transfer slot */
  http_req *live;          /* every request not yet freed */
  int closed;              /* the loop is closing: no new requests */
  long active, queued;
  int refd;
  CURL **pool; /* reset easy handles kept for reuse */
  size_t npool, pool_cap;
  lua_Integer connects, requests;
} G;

/* ---- small buffers ---------------------------------------------------- */

static int buf_reserve(buf *b, size_t extra) {
  if (b->cap - b->len >= extra) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < extra) {
    if (cap > ((size_t)-1) / 2) return -1;
    cap *= 2;
  }
  char *p = realloc(b->p, cap);
  if (!p) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}

static int buf_add(buf *b, const char *s, size_t n) {
  if (buf_reserve(b, n)) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

/* ---- libcurl callbacks (never call back into the multi handle) -------- */

static size_t on_write(char *data, size_t size, size_t n, void *ud) {
  http_req *r = ud;
  size_t len = size * n;
  if ((curl_off_t)(r->body.len + len) > r->max_body) {
    /* Returning short makes libcurl fail the transfer with
     * CURLE_WRITE_ERROR; the flag tells the completion step why. */
    r->too_large = 1;
    return 0;
  }
  if (buf_add(&r->body, data, len)) return 0;
  return len;
}

static int is_ows(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t on_header(char *data, size_t size, size_t n, void *ud) {
  http_req *r = ud;
  size_t len = size * n, i = 0;
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    /* A new status line: the headers of a 1xx or a followed redirect are
     * not this response's. */
    r->nhdrs = 0;
    r->hbuf.len = 0;
    return len;
  }
  while (len > 0 && is_ows(data[len - 1]))
    len--;
  if (len == 0) return size * n;
  if (data[0] == ' ' || data[0] == '\t') {
    /* obs-fold continuation: extend the previous value, which is always
     * the last thing in hbuf. */
    if (r->nhdrs == 0) return size * n;
    while (i < len && is_ows(data[i]))
      i++;
    if (buf_add(&r->hbuf, " ", 1) || buf_add(&r->hbuf, data + i, len - i)) return 0;
    r->hdrs[r->nhdrs - 1].vlen += 1 + (len - i);
    return size * n;
  }
  const char *colon = memchr(data, ':', len);
  if (!colon) return size * n;
  if (r->nhdrs == r->hcap) {
    size_t cap = r->hcap ? r->hcap * 2 : 16;
    hdr_ent *h = realloc(r->hdrs, cap * sizeof *h);
    if (!h) return 0;
    r->hdrs = h;
    r->hcap = cap;
  }
  size_t nlen = (size_t)(colon - data);
  i = nlen + 1;
  while (i < len && is_ows(data[i]))
    i++;
  if (buf_reserve(&r->hbuf, nlen + (len - i))) return 0;
  hdr_ent *e = &r->hdrs[r->nhdrs++];
  e->name = r->hbuf.len;
  e->nlen = nlen;
  for (size_t k = 0; k < nlen; k++)
    r->hbuf.p[r->hbuf.len++] = (char)tolower((unsigned char)data[k]);
  e->val = r->hbuf.len;
  e->vlen = len - i;
  buf_add(&r->hbuf, data + i, len - i);
  return size * n;
}

static void sock_close_cb(uv_handle_t *h) {
  free(h->data);
}

static void sock_close(sock_ctx *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    G.socks = s->next;
  if (s->next) s->next->prev = s->prev;
  uv_close((uv_handle_t *)&s->poll, sock_close_cb);
}

static void check_multi_info(void);

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *s = p->data;
  int flags = 0, running;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  /* s may be closed during this call (CURL_POLL_REMOVE): read fd first. */
  curl_multi_socket_action(G.multi, s->fd, flags, &running);
  check_multi_info();
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  sock_ctx *s = socketp;
  (void)easy;
  (void)userp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      uv_poll_stop(&s->poll);
      sock_close(s);
    }
    return 0;
  }
  if (!s) {
    s = malloc(sizeof *s);
    if (!s) return -1;
    if (uv_poll_init_socket(kw_loop(), &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    if (!G.refd) uv_unref((uv_handle_t *)&s->poll);
    s->fd = fd;
    s->poll.data = s;
    s->prev = NULL;
    s->next = G.socks;
    if (G.socks) G.socks->prev = s;
    G.socks = s;
    /* curl_multi_assign is documented as callable from this callback. */
    curl_multi_assign(G.multi, fd, s);
  }
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  int running;
  (void)t;
  curl_multi_socket_action(G.multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info();
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  (void)userp;
  if (timeout_ms < 0)
    uv_timer_stop(&G.timer);
  else
    uv_timer_start(&G.timer, on_timer, (uint64_t)timeout_ms, 0); /* 0: next turn */
  return 0;
}

/* ---- transfers -------------------------------------------------------- */

static void queue_remove(http_req *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    G.qhead = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    G.qtail = r->prev;
  r->prev = r->next = NULL;
  G.queued--;
}

/* Our handles keep the loop alive only while there is work: libcurl
 * leaves its timer armed for housekeeping, and an idle script must still
 * be able to exit. */
static void update_refs(void) {
  int want = G.active + G.queued > 0;
  if (want == G.refd) return;
  G.refd = want;
  void (*fn)(uv_handle_t *) = want ? uv_ref : uv_unref;
  fn((uv_handle_t *)&G.timer);
  for (sock_ctx *s = G.socks; s; s = s->next)
    fn((uv_handle_t *)&s->poll);
}

static CURLMcode start_transfer(http_req *r) {
  CURLMcode mc = curl_multi_add_handle(G.multi, r->easy);
  if (mc != CURLM_OK) return mc;
  r->state = REQ_ACTIVE;
  G.active++;
  return CURLM_OK;
}

static void stop_transfer(http_req *r) {
  curl_multi_remove_handle(G.multi, r->easy);
  G.active--;
}

/* Fill free transfer slots from the queue, oldest first. Only called once
 * the queued ops are being awaited, so completing one here is safe. */
static void start_queued(void) {
  while (G.qhead && G.active < cfg.max_concurrent) {
    http_req *r = G.qhead;
    queue_remove(r);
    CURLMcode mc = start_transfer(r);
    if (mc != CURLM_OK) {
      r->result = CURLE_FAILED_INIT;
      snprintf(r->errbuf, sizeof r->errbuf, "%s", curl_multi_strerror(mc));
      r->state = REQ_DONE;
      kw_op_done(&r->op);
    }
  }
}

static void check_multi_info(void) {
  CURLMsg *m;
  int pending;
  int finished = 0;
  while ((m = curl_multi_info_read(G.multi, &pending))) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL *easy = m->easy_handle;
    CURLcode result = m->data.result;
    http_req *r = NULL;
    long nconn = 0;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
    curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &nconn);
    /* m is invalid after this. */
    stop_transfer(r);
    G.connects += nconn;
    G.requests++;
    r->result = result;
    r->state = REQ_DONE;
    kw_op_done(&r->op);
    finished = 1;
  }
  if (finished) {
    start_queued();
    update_refs();
  }
}

static void req_free(http_req *r) {
  if (r->lprev)
    r->lprev->lnext = r->lnext;
  else
    G.live = r->lnext;
  if (r->lnext) r->lnext->lprev = r->lprev;
  if (r->easy) {
    if (G.npool < G.pool_cap) {
      curl_easy_reset(r->easy);
      G.pool[G.npool++] = r->easy;
    } else {
      curl_easy_cleanup(r->easy);
    }
  }
  curl_slist_free_all(r->req_headers);
  free(r->body.p);
  free(r->hbuf.p);
  free(r->hdrs);
  free(r);
}

static void req_release(kw_op *op) {
  http_req *r = (http_req *)op;
  /* Normally done by now; a request dropped while still running (the
   * process is closing) is detached here so that libcurl forgets it. */
  if (r->state == REQ_QUEUED)
    queue_remove(r);
  else if (r->state == REQ_ACTIVE)
    stop_transfer(r);
  if (r->state != REQ_DONE) update_refs();
  r->state = REQ_DONE;
  req_free(r);
}

/* Runs from Lua (task.cancel), never from a libcurl callback, which is what
 * makes curl_multi_remove_handle legal here. */
static void req_cancel(kw_op *op) {
  http_req *r = (http_req *)op;
  if (r->state == REQ_QUEUED) {
    queue_remove(r);
  } else if (r->state == REQ_ACTIVE) {
    stop_transfer(r);
    start_queued();
  } else {
    return; /* already completed: the scheduler drops the results */
  }
  r->state = REQ_DONE;
  update_refs();
  kw_op_done(op);
}

typedef struct {
  const char *kind;
  CURLcode codes[16];
} kind_map;

/* Connection failures are split in two so that policy code can tell "never
 * reached the server" (connect) from "the connection broke mid-exchange"
 * (network); both are worth a retry, a bad URL is not. */
static const char *error_kind(http_req *r) {
  static const kind_map map[] = {
      {"timeout", {CURLE_OPERATION_TIMEDOUT}},
      {"connect", {CURLE_COULDNT_CONNECT}},
      {"dns", {CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY}},
      {"tls",
       {CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM,
        CURLE_SSL_CIPHER, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ENGINE_NOTFOUND,
        CURLE_SSL_ENGINE_SETFAILED, CURLE_SSL_ENGINE_INITFAILED, CURLE_SSL_CRL_BADFILE,
        CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH, CURLE_SSL_INVALIDCERTSTATUS,
        CURLE_SSL_CLIENTCERT, CURLE_SSL_SHUTDOWN_FAILED}},
      {"too_large", {CURLE_FILESIZE_EXCEEDED}},
      {"invalid_url", {CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL}},
  };
  if (r->too_large) return "too_large";
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    for (size_t k = 0; k < 16 && map[i].codes[k] != CURLE_OK; k++)
      if (map[i].codes[k] == r->result) return map[i].kind;
  return "network";
}

static void push_headers(lua_State *L, http_req *r) {
  lua_createtable(L, 0, (int)r->nhdrs); /* headers */
  lua_createtable(L, (int)r->nhdrs, 0); /* header_list */
  for (size_t i = 0; i < r->nhdrs; i++) {
    const hdr_ent *e = &r->hdrs[i];
    const char *name = r->hbuf.p + e->name, *val = r->hbuf.p + e->val;
    lua_createtable(L, 2, 0);
    lua_pushlstring(L, name, e->nlen);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, val, e->vlen);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, (lua_Integer)i + 1);

    lua_pushlstring(L, name, e->nlen);
    lua_pushvalue(L, -1);
    lua_rawget(L, -4);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlstring(L, val, e->vlen);
    } else {
      /* Repeated header: combined as RFC 9110 5.3 allows; header_list
       * keeps each line for the ones that cannot be (set-cookie). */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, val, e->vlen);
      lua_concat(L, 3);
    }
    lua_rawset(L, -4);
  }
  lua_setfield(L, -3, "header_list");
  lua_setfield(L, -2, "headers");
}

static int req_push(kw_op *op, lua_State *L) {
  http_req *r = (http_req *)op;
  if (r->result != CURLE_OK) {
    const char *kind = error_kind(r);
    lua_pushnil(L);
    lua_pushstring(L, kind);
    if (strcmp(kind, "too_large") == 0)
      lua_pushfstring(L, "response body exceeds max_body (%I bytes)", (lua_Integer)r->max_body);
    else if (r->errbuf[0])
      lua_pushstring(L, r->errbuf);
    else
      lua_pushstring(L, curl_easy_strerror(r->result));
    lua_pushinteger(L, (lua_Integer)r->result);
    return 4;
  }
  long status = 0, version = 0;
  curl_off_t total_us = 0;
  char *url = NULL;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &version);
  curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &total_us);
  curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, r->body.p ? r->body.p : "", r->body.len);
  lua_setfield(L, -2, "body");
  push_headers(L, r);
  lua_pushnumber(L, (lua_Number)total_us / 1e6);
  lua_setfield(L, -2, "time");
  if (url) {
    lua_pushstring(L, url);
    lua_setfield(L, -2, "url");
  }
  lua_pushstring(L, version == CURL_HTTP_VERSION_2_0   ? "2"
                    : version == CURL_HTTP_VERSION_1_0 ? "1.0"
                    : version == CURL_HTTP_VERSION_3   ? "3"
                                                       : "1.1");
  lua_setfield(L, -2, "http_version");
  return 1;
}

static const kw_op_class req_class = {"http.request", req_push, req_cancel, req_release};

/* ---- setup and teardown ----------------------------------------------- */

static void http_atclose(void) {
  if (!G.inited) return;
  /* Requests not yet released belong to tasks that will never resume (the
   * scheduler does not release pending ops at close): free them here, so
   * that closing with requests in flight leaks nothing. */
  while (G.live) {
    http_req *r = G.live;
    if (r->state == REQ_QUEUED)
      queue_remove(r);
    else if (r->state == REQ_ACTIVE)
      stop_transfer(r);
    r->state = REQ_DONE;
    req_free(r);
  }
  uv_timer_stop(&G.timer);
  curl_multi_cleanup(G.multi);
  G.multi = NULL;
  /* libcurl normally reports CURL_POLL_REMOVE for each socket it closes
   * during cleanup; close whatever it did not. */
  while (G.socks)
    sock_close(G.socks);
  uv_close((uv_handle_t *)&G.timer, NULL);
  for (size_t i = 0; i < G.npool; i++)
    curl_easy_cleanup(G.pool[i]);
  free(G.pool);
  G.pool = NULL;
  G.npool = G.pool_cap = 0;
  curl_global_cleanup();
  G.inited = 0;
  G.closed = 1;
}

static int pool_resize(size_t cap) {
  while (G.npool > cap)
    curl_easy_cleanup(G.pool[--G.npool]);
  CURL **p = realloc(G.pool, (cap ? cap : 1) * sizeof *p);
  if (!p) return -1;
  G.pool = p;
  G.pool_cap = cap;
  return 0;
}

static void apply_limits(void) {
  curl_multi_setopt(G.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, cfg.max_concurrent);
  curl_multi_setopt(G.multi, CURLMOPT_MAXCONNECTS, cfg.max_concurrent);
}

static const char *http_init(void) {
  if (G.inited) return NULL;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return "curl_global_init failed";
  G.multi = curl_multi_init();
  if (!G.multi) {
    curl_global_cleanup();
    return "curl_multi_init failed";
  }
  if (pool_resize((size_t)cfg.max_concurrent)) {
    curl_multi_cleanup(G.multi);
    curl_global_cleanup();
    return "out of memory";
  }
  uv_timer_init(kw_loop(), &G.timer);
  uv_unref((uv_handle_t *)&G.timer); /* see update_refs */
  G.refd = 0;
  curl_multi_setopt(G.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(G.multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(G.multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  apply_limits();
  kw_sched_atclose(http_atclose);
  G.inited = 1;
  return NULL;
}

/* ---- Lua API ---------------------------------------------------------- */

static int opt_field(lua_State *L, int idx, const char *k, int type) {
  int t = lua_getfield(L, idx, k);
  if (t != LUA_TNIL && t != type)
    return luaL_error(L, "http.request: '%s' must be a %s, not %s", k, lua_typename(L, type),
                      luaL_typename(L, -1));
  return t != LUA_TNIL;
}

static int ascii_ieq(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i])) return 0;
  return 1;
}

static int add_req_header(lua_State *L, http_req *r, const char *name, size_t nlen, int vidx) {
  size_t vlen;
  const char *v = lua_tolstring(L, vidx, &vlen);
  if (!v || memchr(name, '\n', nlen) || memchr(name, '\r', nlen) || memchr(v, '\n', vlen) ||
      memchr(v, '\r', vlen))
    return luaL_error(L, "http.request: bad value for header '%s'", name);
  /* "Name;" is libcurl's spelling of a header with an empty value, "Name:"
   * would remove the header instead. */
  if (vlen == 0)
    lua_pushfstring(L, "%s;", name);
  else
    lua_pushfstring(L, "%s: %s", name, v);
  struct curl_slist *l = curl_slist_append(r->req_headers, lua_tostring(L, -1));
  lua_pop(L, 1);
  if (!l) return luaL_error(L, "out of memory");
  r->req_headers = l;
  return 0;
}

/* Headers from {Name = "v"} or {Name = {"v1", "v2"}} (repeated). Returns
 * whether the caller set Expect itself. */
static int set_req_headers(lua_State *L, http_req *r, int idx) {
  int has_expect = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "http.request: header names must be strings");
    size_t nlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (nlen == 0 || memchr(name, ':', nlen))
      luaL_error(L, "http.request: bad header name '%s'", name);
    if (nlen == 6 && ascii_ieq(name, "expect", 6)) has_expect = 1;
    if (lua_istable(L, -1)) {
      lua_Integer n = luaL_len(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        add_req_header(L, r, name, nlen, lua_gettop(L));
        lua_pop(L, 1);
      }
    } else {
      add_req_header(L, r, name, nlen, lua_gettop(L));
    }
    lua_pop(L, 1);
  }
  return has_expect;
}

static int push_fail(lua_State *L, const char *kind, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, kind);
  lua_pushstring(L, msg);
  return 3;
}

/* Reads the options into r->easy. May raise for malformed options: r is
 * anchored as a full userdata-free pointer, so the caller guards it. */
static void setup_request(lua_State *L, http_req *r) {
  CURL *e = r->easy;
  if (lua_getfield(L, 1, "url") != LUA_TSTRING)
    luaL_error(L, "http.request: 'url' (a string) is required");
  curl_easy_setopt(e, CURLOPT_URL, lua_tostring(L, -1));
  lua_pop(L, 1);

  /* Methods are case-sensitive on the wire; scripts writing "post" mean
   * POST. */
  char method[32] = "GET";
  if (opt_field(L, 1, "method", LUA_TSTRING)) {
    size_t n;
    const char *m = lua_tolstring(L, -1, &n);
    if (n == 0 || n >= sizeof method) luaL_error(L, "http.request: bad method");
    for (size_t i = 0; i <= n; i++)
      method[i] = (char)toupper((unsigned char)m[i]);
  }
  size_t blen = 0;
  const char *body = NULL;
  if (opt_field(L, 1, "body", LUA_TSTRING)) body = lua_tolstring(L, -1, &blen);
  /* Keep method and body on the stack while curl copies them. */
  int has_method = !lua_isnil(L, -2);
  if (!has_method && body) memcpy(method, "POST", 5);
  if (!body &&
      (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0)) {
    /* An empty body still gets its Content-Length: 0. */
    body = "";
    blen = 0;
  }
  if (body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
    if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  lua_pop(L, 2);

  int has_expect = 0;
  if (opt_field(L, 1, "headers", LUA_TTABLE)) has_expect = set_req_headers(L, r, lua_gettop(L));
  lua_pop(L, 1);
  /* A 100-continue round trip only adds latency against servers we talk to. */
  if (body && !has_expect) {
    struct curl_slist *l = curl_slist_append(r->req_headers, "Expect:");
    if (!l) luaL_error(L, "out of memory");
    r->req_headers = l;
  }
  if (r->req_headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->req_headers);

  long timeout_ms = cfg.timeout_ms;
  if (opt_field(L, 1, "timeout", LUA_TNUMBER)) {
    lua_Number t = lua_tonumber(L, -1);
    if (!(t >= 0) || t > 1e6) luaL_error(L, "http.request: bad timeout");
    timeout_ms = (long)(t * 1000.0 + 0.5);
    if (t > 0 && timeout_ms == 0) timeout_ms = 1;
  }
  lua_pop(L, 1);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);

  r->max_body = cfg.max_body;
  if (opt_field(L, 1, "max_body", LUA_TNUMBER)) {
    lua_Integer m = lua_tointeger(L, -1);
    if (m <= 0) luaL_error(L, "http.request: max_body must be a positive integer");
    r->max_body = (curl_off_t)m;
  }
  lua_pop(L, 1);
  /* Rejects a declared Content-Length over the cap before any body; the
   * write callback catches chunked or lying responses. */
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, r->max_body);

  if (opt_field(L, 1, "ca_file", LUA_TSTRING))
    curl_easy_setopt(e, CURLOPT_CAINFO, lua_tostring(L, -1));
  else if (cfg.ca_file)
    curl_easy_setopt(e, CURLOPT_CAINFO, cfg.ca_file);
  lua_pop(L, 1);

  lua_getfield(L, 1, "follow");
  if (lua_toboolean(L, -1)) {
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
  }
  lua_pop(L, 1);

  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "kpiwatch/" KW_VERSION);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  /* Prefer waiting for a multiplexed HTTP/2 connection over opening many. */
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
}

/* setup_request may raise; this protected trampoline lets the caller free
 * the half-built request instead of leaking it. */
static int setup_protected(lua_State *L) {
  http_req *r = lua_touserdata(L, 2);
  lua_settop(L, 1);
  setup_request(L, r);
  return 0;
}

static int l_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (G.closed) return push_fail(L, "network", "the event loop is closing");
  const char *err = http_init();
  if (err) return push_fail(L, "network", err);

  http_req *r = calloc(1, sizeof *r);
  if (!r) return luaL_error(L, "out of memory");
  r->easy = G.npool ? G.pool[--G.npool] : curl_easy_init();
  if (!r->easy) {
    free(r);
    return push_fail(L, "network", "curl_easy_init failed");
  }
  r->lnext = G.live;
  if (G.live) G.live->lprev = r;
  G.live = r;
  lua_settop(L, 1);
  lua_pushcfunction(L, setup_protected);
  lua_pushvalue(L, 1);
  lua_pushlightuserdata(L, r);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    req_free(r);
    return lua_error(L);
  }

  kw_op_init(&r->op, &req_class);
  if (G.active < cfg.max_concurrent) {
    CURLMcode mc = start_transfer(r);
    if (mc != CURLM_OK) {
      /* Not awaited yet, so fail synchronously rather than via the op. */
      req_free(r);
      return push_fail(L, "network", curl_multi_strerror(mc));
    }
  } else {
    r->state = REQ_QUEUED;
    r->prev = G.qtail;
    if (G.qtail)
      G.qtail->next = r;
    else
      G.qhead = r;
    G.qtail = r;
    G.queued++;
  }
  update_refs();
  return kw_await(L, &r->op);
}

static int l_configure(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (opt_field(L, 1, "max_concurrent", LUA_TNUMBER)) {
    lua_Integer n = lua_tointeger(L, -1);
    luaL_argcheck(L, n > 0 && n <= 100000, 1, "max_concurrent must be a positive integer");
    cfg.max_concurrent = (long)n;
    if (G.inited) {
      pool_resize((size_t)n);
      apply_limits();
      start_queued();
    }
  }
  lua_pop(L, 1);
  if (opt_field(L, 1, "max_body", LUA_TNUMBER)) {
    lua_Integer n = lua_tointeger(L, -1);
    luaL_argcheck(L, n > 0, 1, "max_body must be a positive integer");
    cfg.max_body = (curl_off_t)n;
  }
  lua_pop(L, 1);
  if (opt_field(L, 1, "timeout", LUA_TNUMBER)) {
    lua_Number t = lua_tonumber(L, -1);
    luaL_argcheck(L, t >= 0 && t <= 1e6, 1, "bad timeout");
    cfg.timeout_ms = (long)(t * 1000.0 + 0.5);
  }
  lua_pop(L, 1);
  int t = lua_getfield(L, 1, "ca_file");
  if (t == LUA_TSTRING || (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
    /* ca_file = false goes back to the system bundle. */
    char *dup = NULL;
    if (t == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(L, -1, &n);
      dup = malloc(n + 1);
      if (!dup) return luaL_error(L, "out of memory");
      memcpy(dup, s, n + 1);
    }
    free(cfg.ca_file);
    cfg.ca_file = dup;
  } else if (t != LUA_TNIL) {
    return luaL_argerror(L, 1, "ca_file must be a string or false");
  }
  lua_pop(L, 1);
  return 0;
}

static int l_stats(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, G.connects);
  lua_setfield(L, -2, "connections");
  lua_pushinteger(L, G.requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, G.active);
  lua_setfield(L, -2, "active");
  lua_pushinteger(L, G.queued);
  lua_setfield(L, -2, "queued");
  return 1;
}

static int l_config(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, cfg.max_concurrent);
  lua_setfield(L, -2, "max_concurrent");
  lua_pushinteger(L, (lua_Integer)cfg.max_body);
  lua_setfield(L, -2, "max_body");
  lua_pushnumber(L, (lua_Number)cfg.timeout_ms / 1000.0);
  lua_setfield(L, -2, "timeout");
  if (cfg.ca_file) {
    lua_pushstring(L, cfg.ca_file);
    lua_setfield(L, -2, "ca_file");
  }
  return 1;
}

int luaopen_kpiwatch__http(lua_State *L) {
  static const luaL_Reg fns[] = {{"request", l_request},
                                 {"configure", l_configure},
                                 {"config", l_config},
                                 {"stats", l_stats},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_pushliteral(L, "kpiwatch/" KW_VERSION);
  lua_setfield(L, -2, "user_agent");
  return 1;
}
