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
 *   request(opts) -> response | nil, message, kind [, curl_code] (fail.h)
 *   configure(opts), stats() -> table
 */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#define _POSIX_C_SOURCE 200809L /* uv.h needs pthread_rwlock_t */
#endif
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "fail.h"
#include "scheduler.h"

#ifndef KW_VERSION
#define KW_VERSION "dev"
#endif

/* Metatable of responses; kpiwatch.http gives it the __index that builds
 * header_list on first use. */
#define RESPONSE_MT "kpiwatch.http.response"
/* Metatable of prepared header lists (http.headers). */
#define HEADERS_MT "kpiwatch.http.headers"

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

/* Loopback never goes through a proxy (http_proxy set on a CI runner
 * would otherwise get the sandbox's requests, credentials included):
 * CURLOPT_NOPROXY replaces the no_proxy variable libcurl would read, so
 * the user's list is kept after ours. "*" alone (no proxy at all) stays
 * alone: libcurl reads it as "every host" only then. */
#define KW_NOPROXY_LOOPBACK "localhost,127.0.0.0/8,::1"
static char *noproxy;

static void noproxy_init(void) {
  const char *user = getenv("no_proxy");
  size_t n;
  if (!user || !*user) user = getenv("NO_PROXY");
  if (!user) user = "";
  if (strcmp(user, "*") == 0) {
    noproxy = strdup("*");
    return;
  }
  n = sizeof KW_NOPROXY_LOOPBACK + 1 + strlen(user);
  /* out of memory: NULL, libcurl's default (the user's list alone) */
  if ((noproxy = malloc(n)) != NULL)
    snprintf(noproxy, n, "%s%s%s", KW_NOPROXY_LOOPBACK, *user ? "," : "", user);
}

typedef struct sock_ctx sock_ctx;
struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  int events;            /* what the poll handle watches now (0: stopped) */
  int managed;           /* opened by on_opensocket: on_closesocket will tell */
  int idle;              /* libcurl said REMOVE: a kept-alive connection at rest */
  sock_ctx *prev, *next; /* live (not yet closing) contexts, for teardown */
};

typedef struct {
  char *p;
  size_t len, cap;
} buf;

enum { REQ_NEW, REQ_QUEUED, REQ_ACTIVE, REQ_DONE };

/* A header list prepared once (http.headers) and given to every request of
 * a client: libcurl only reads a CURLOPT_HTTPHEADER list, so one immutable
 * list can serve any number of handles. Counted: the Lua object holds one
 * reference, and so does each easy handle that has the list set, until the
 * handle is given another list, reset or destroyed. */
typedef struct {
  struct curl_slist *list;
  int refs;
  int has_expect;
} hdr_set;

static void hdr_set_release(hdr_set *h) {
  if (h && --h->refs == 0) {
    curl_slist_free_all(h->list);
    free(h);
  }
}

typedef struct http_req http_req;
struct http_req {
  kw_op op; /* first: the scheduler sees a kw_op */
  CURL *easy;
  struct curl_slist *req_headers; /* this request's own list */
  hdr_set *shared;                /* or the prepared list the handle has set */
  int state;
  http_req *prev, *next;   /* the pending queue while REQ_QUEUED */
  http_req *lprev, *lnext; /* every request not yet freed, for teardown */
  curl_off_t max_body;
  buf body;
  buf hbuf; /* the header block, see on_header */
  CURLcode result;
  int too_large;
  int sticky; /* set options that a plain GET must not inherit */
  int follow;
  /* What the handle has set, so that a recycled one is told only what
   * changes (-1: not known, after a reset). */
  long timeout_ms;
  curl_off_t limit;
  int pipewait;
  char errbuf[CURL_ERROR_SIZE];
};

static struct {
  int inited;
  CURLM *multi;
  uv_timer_t timer;
  sock_ctx *socks;
  sock_ctx **fdtab; /* contexts by fd */
  size_t fdcap;
  http_req *qhead, *qtail; /* FIFO of requests waiting for a transfer slot */
  http_req *live;          /* every request not yet freed */
  int closed;              /* the loop is closing: no new requests */
  long active, queued;
  int refd;
  /* Finished requests kept with their easy handle and buffers: a plain GET
   * on a recycled one only sets its URL and limits. */
  http_req *pool;
  size_t npool;
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

/* Keeps the response's header block as "name: value\r\n" lines with names
 * lowercased and values trimmed: it becomes raw_headers, from which the
 * Lua side builds the headers tables when a script first asks for them. */
static size_t on_header(char *data, size_t size, size_t n, void *ud) {
  http_req *r = ud;
  size_t len = size * n, i = 0;
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    /* A new status line: the headers of a 1xx or a followed redirect are
     * not this response's. */
    r->hbuf.len = 0;
    return len;
  }
  while (len > 0 && is_ows(data[len - 1]))
    len--;
  if (len == 0) return size * n;
  if (data[0] == ' ' || data[0] == '\t') {
    /* obs-fold continuation: extend the previous value (before its CRLF). */
    if (r->hbuf.len < 2) return size * n;
    while (i < len && is_ows(data[i]))
      i++;
    r->hbuf.len -= 2;
    if (buf_add(&r->hbuf, " ", 1) || buf_add(&r->hbuf, data + i, len - i) ||
        buf_add(&r->hbuf, "\r\n", 2))
      return 0;
    return size * n;
  }
  const char *colon = memchr(data, ':', len);
  if (!colon) return size * n;
  size_t nlen = (size_t)(colon - data);
  i = nlen + 1;
  while (i < len && is_ows(data[i]))
    i++;
  if (buf_reserve(&r->hbuf, nlen + (len - i) + 4)) return 0;
  char *out = r->hbuf.p + r->hbuf.len;
  for (size_t k = 0; k < nlen; k++) {
    unsigned char c = (unsigned char)data[k];
    out[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
  }
  out[nlen] = ':';
  out[nlen + 1] = ' ';
  memcpy(out + nlen + 2, data + i, len - i);
  out[nlen + 2 + (len - i)] = '\r';
  out[nlen + 3 + (len - i)] = '\n';
  r->hbuf.len += nlen + (len - i) + 4;
  return size * n;
}

static void sock_close_cb(uv_handle_t *h) {
  free(h->data);
}

static void on_poll(uv_poll_t *p, int status, int events);

/* Stops watching and frees the context; the fd is not ours to close. */
static void sock_close(sock_ctx *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    G.socks = s->next;
  if (s->next) s->next->prev = s->prev;
  if ((size_t)s->fd < G.fdcap && G.fdtab[s->fd] == s) G.fdtab[s->fd] = NULL;
  uv_close((uv_handle_t *)&s->poll, sock_close_cb);
}

static sock_ctx *sock_new(curl_socket_t fd) {
  if ((size_t)fd >= G.fdcap) {
    size_t cap = G.fdcap ? G.fdcap : 64;
    while (cap <= (size_t)fd)
      cap *= 2;
    sock_ctx **t = realloc(G.fdtab, cap * sizeof(sock_ctx *));
    if (!t) return NULL;
    memset(t + G.fdcap, 0, (cap - G.fdcap) * sizeof(sock_ctx *));
    G.fdtab = t;
    G.fdcap = cap;
  }
  sock_ctx *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  if (uv_poll_init_socket(kw_loop(), &s->poll, fd) != 0) {
    free(s);
    return NULL;
  }
  if (!G.refd) uv_unref((uv_handle_t *)&s->poll);
  s->fd = fd;
  s->poll.data = s;
  s->next = G.socks;
  if (G.socks) G.socks->prev = s;
  G.socks = s;
  G.fdtab[fd] = s;
  return s;
}

/* 0, or libuv's error when the fd cannot be watched (epoll_ctl: out of
 * memory, or a descriptor libuv refuses); the watcher is then stopped. */
static int sock_watch(sock_ctx *s, int events) {
  int rc = 0;
  /* uv_poll_start always re-registers the fd (epoll DEL then ADD): only
   * call it when the events change. */
  if (s->events == events) return 0;
  s->events = events;
  if (events) rc = uv_poll_start(&s->poll, events, on_poll);
  if (!events || rc != 0) {
    uv_poll_stop(&s->poll);
    s->events = 0;
  }
  return rc;
}

static void check_multi_info(void);

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *s = p->data;
  int flags = 0, running;
  if (s->idle) {
    /* A kept-alive connection libcurl is not using spoke (the server
     * closed it, most likely): stop watching; libcurl finds out when it
     * next tries to reuse the connection. */
    if (status < 0) s->events = 0; /* libuv stopped it already */
    (void)sock_watch(s, 0);
    return;
  }
  if (status < 0) {
    /* libuv stopped the handle (EPOLLERR). Report the error, and also
     * readiness: libcurl fails a transfer on CURL_CSELECT_ERR alone
     * without looking at the socket, while a read lets it see the reset
     * and retry a request that died on a reused connection, as it does
     * when it polls by itself. */
    s->events = 0;
    flags = CURL_CSELECT_ERR | CURL_CSELECT_IN | CURL_CSELECT_OUT;
  }
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  /* s may be freed during this call (a closed socket): read fd first. */
  curl_multi_socket_action(G.multi, s->fd, flags, &running);
  check_multi_info();
}

/*
 * libcurl asks to watch a socket (IN/OUT) or to stop (REMOVE). A transfer
 * on a kept-alive connection is one IN and one REMOVE; closing the poll
 * handle at every REMOVE, as multi-uv.c does, costs a handle and several
 * epoll_ctl calls per request. Sockets that libcurl opened through
 * on_opensocket are announced again by on_closesocket before their fd is
 * closed, so for those a REMOVE only marks the watcher idle (read events
 * only) and the same watcher serves the next transfer; it is closed in
 * on_closesocket, before the fd number can be reused. Any other socket
 * (the resolver's wake-up pipe) gets the multi-uv.c treatment: stopped
 * and closed at REMOVE.
 */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  sock_ctx *s = socketp;
  (void)easy;
  (void)userp;
  if (what == CURL_POLL_REMOVE) {
    if (!s) return 0;
    if (s->managed) {
      s->idle = 1;
      /* Unwatched, an idle connection is still found dead at its reuse. */
      (void)sock_watch(s, UV_READABLE);
    } else {
      sock_close(s);
    }
    return 0;
  }
  if (!s) {
    s = (size_t)fd < G.fdcap ? G.fdtab[fd] : NULL;
    if (!s && !(s = sock_new(fd))) return -1;
    /* curl_multi_assign is documented as callable from this callback. */
    curl_multi_assign(G.multi, fd, s);
  }
  s->idle = 0;
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  /* -1 makes libcurl fail the transfers on this socket, instead of
   * waiting for events that will never come. */
  return sock_watch(s, events) == 0 ? 0 : -1;
}

static curl_socket_t on_opensocket(void *clientp, curlsocktype purpose,
                                   struct curl_sockaddr *addr) {
  (void)clientp;
  if (purpose != CURLSOCKTYPE_IPCXN) return CURL_SOCKET_BAD;
  /* CLOEXEC: a hook started with notify.exec must not inherit sockets. */
  curl_socket_t fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
  if (fd == CURL_SOCKET_BAD) return CURL_SOCKET_BAD;
  sock_ctx *s = (size_t)fd < G.fdcap ? G.fdtab[fd] : NULL;
  if (s) sock_close(s); /* stale: its fd was closed behind our back */
  s = sock_new(fd);
  if (!s) {
    close(fd);
    return CURL_SOCKET_BAD;
  }
  s->managed = 1;
  return fd;
}

static int on_closesocket(void *clientp, curl_socket_t fd) {
  (void)clientp;
  sock_ctx *s = (size_t)fd < G.fdcap ? G.fdtab[fd] : NULL;
  if (s) sock_close(s);
  return close(fd);
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
    KW_CHECK(uv_timer_start(&G.timer, on_timer, (uint64_t)timeout_ms, 0) == 0); /* 0: next turn */
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

/* Options every request has, set when the easy handle is new or reset. */
static void base_options(http_req *r) {
  CURL *e = r->easy;
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
  if (noproxy) curl_easy_setopt(e, CURLOPT_NOPROXY, noproxy);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_opensocket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_closesocket);
  r->timeout_ms = -1;
  r->limit = -1;
  r->pipewait = -1;
}

static void req_destroy(http_req *r) {
  curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->req_headers);
  hdr_set_release(r->shared);
  free(r->body.p);
  free(r->hbuf.p);
  free(r);
}

static http_req *req_new(void) {
  http_req *r = G.pool;
  if (r) {
    G.pool = r->next;
    G.npool--;
  } else {
    r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->easy = curl_easy_init();
    if (!r->easy) {
      free(r);
      return NULL;
    }
    base_options(r);
  }
  r->state = REQ_NEW;
  r->prev = r->next = r->lprev = NULL;
  r->body.len = r->hbuf.len = 0;
  r->result = CURLE_OK;
  r->too_large = 0;
  r->errbuf[0] = '\0';
  r->lnext = G.live;
  if (G.live) G.live->lprev = r;
  G.live = r;
  return r;
}

/* A large response buffer is not worth keeping for the next request. */
#define HTTP_KEEP_BUF (64 * 1024)

static void req_free(http_req *r) {
  if (r->lprev)
    r->lprev->lnext = r->lnext;
  else
    G.live = r->lnext;
  if (r->lnext) r->lnext->lprev = r->lprev;
  if (G.closed || G.npool >= (size_t)cfg.max_concurrent) {
    req_destroy(r);
    return;
  }
  if (r->req_headers) {
    /* Not a sticky option: the list is replaced, not reset with the whole
     * handle (curl_easy_reset and base_options, a fifth of the request's
     * own cost, when every KPIs request sends its credentials). */
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    curl_slist_free_all(r->req_headers);
    r->req_headers = NULL;
    hdr_set_release(r->shared); /* unset too (a request that failed to start) */
    r->shared = NULL;
  }
  /* A prepared list (r->shared) stays set: the next request of the same
   * client finds it there. */
  if (r->sticky) {
    curl_easy_reset(r->easy);
    base_options(r);
    r->sticky = 0;
    hdr_set_release(r->shared); /* the reset unset it */
    r->shared = NULL;
  }
  if (r->body.cap > HTTP_KEEP_BUF) {
    free(r->body.p);
    r->body.p = NULL;
    r->body.cap = 0;
  }
  r->next = G.pool;
  G.pool = r;
  G.npool++;
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

/* The address that keys RESPONSE_MT in the registry too. */
static const char response_mt = 0;

static int req_push(kw_op *op, lua_State *L) {
  http_req *r = (http_req *)op;
  if (r->result != CURLE_OK) {
    const char *kind = error_kind(r);
    if (strcmp(kind, "too_large") == 0)
      lua_pushfstring(L, "response body exceeds max_body (%I bytes)", (lua_Integer)r->max_body);
    else if (r->errbuf[0])
      lua_pushstring(L, r->errbuf);
    else
      lua_pushstring(L, curl_easy_strerror(r->result));
    kw_fail_kind(L, kind);
    /* libcurl's own code, for diagnostics: after the common shape */
    lua_pushinteger(L, (lua_Integer)r->result);
    return 4;
  }
  long status = 0, version = 0;
  curl_off_t total_us = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &version);
  curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &total_us);
  /* headers and header_list are built from raw_headers on first access
   * (see kpiwatch.http): most scripts look at status and body only, and
   * a string and a table entry per header line would be most of the cost
   * of a response. */
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, r->body.p ? r->body.p : "", r->body.len);
  lua_setfield(L, -2, "body");
  lua_pushlstring(L, r->hbuf.p ? r->hbuf.p : "", r->hbuf.len);
  lua_setfield(L, -2, "raw_headers");
  lua_pushnumber(L, (lua_Number)total_us / 1e6);
  lua_setfield(L, -2, "time");
  if (r->follow) {
    char *url = NULL;
    curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
    if (url) {
      lua_pushstring(L, url);
      lua_setfield(L, -2, "url");
    }
  }
  lua_pushstring(L, version == CURL_HTTP_VERSION_2_0   ? "2"
                    : version == CURL_HTTP_VERSION_1_0 ? "1.0"
                    : version == CURL_HTTP_VERSION_3   ? "3"
                                                       : "1.1");
  lua_setfield(L, -2, "http_version");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &response_mt); /* RESPONSE_MT, not by name */
  lua_setmetatable(L, -2);
  return 1;
}

static const kw_op_class req_class = {"http.request", req_push, req_cancel, req_release};

/* ---- setup and teardown ----------------------------------------------- */

static void pool_trim(size_t keep) {
  while (G.npool > keep) {
    http_req *r = G.pool;
    G.pool = r->next;
    G.npool--;
    req_destroy(r);
  }
}

static void http_atclose(void) {
  if (!G.inited) return;
  /* Every request not yet freed is a live op, and the scheduler released
   * those (req_release detaches them from libcurl) before running this
   * hook: freeing one here as well was a double free at a SIGTERM with
   * requests in flight. */
  KW_CHECK(G.live == NULL);
  uv_timer_stop(&G.timer);
  curl_multi_cleanup(G.multi);
  G.multi = NULL;
  /* libcurl normally reports CURL_POLL_REMOVE for each socket it closes
   * during cleanup; close whatever it did not. */
  while (G.socks)
    sock_close(G.socks);
  free(G.fdtab);
  G.fdtab = NULL;
  G.fdcap = 0;
  uv_close((uv_handle_t *)&G.timer, NULL);
  G.closed = 1;
  pool_trim(0);
  free(noproxy);
  noproxy = NULL;
  curl_global_cleanup();
  G.inited = 0;
}

static void apply_limits(void) {
  curl_multi_setopt(G.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, cfg.max_concurrent);
  curl_multi_setopt(G.multi, CURLMOPT_MAXCONNECTS, cfg.max_concurrent);
}

static const char *http_init(void) {
  if (G.inited) return NULL;
  /* First: http_atclose does nothing until G.inited, so nothing to undo. */
  if (kw_sched_atclose(http_atclose) != 0) return "too many kw_sched_atclose hooks";
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return "curl_global_init failed";
  noproxy_init();
  G.multi = curl_multi_init();
  if (!G.multi) {
    free(noproxy);
    noproxy = NULL;
    curl_global_cleanup();
    return "curl_multi_init failed";
  }
  KW_CHECK(uv_timer_init(kw_loop(), &G.timer) == 0);
  uv_unref((uv_handle_t *)&G.timer); /* see update_refs */
  G.refd = 0;
  curl_multi_setopt(G.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(G.multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(G.multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  apply_limits();
  G.inited = 1;
  return NULL;
}

/* ---- Lua API ---------------------------------------------------------- */

/* Raises a malformed-option error without a position: the position would
 * be kpiwatch/http.lua's, the traceback shows the caller's. It never
 * returns (lua_error), which clang's analyzer must be told to follow the
 * checks: read_opts does not return without a url. */
#ifdef __clang__
static int opt_error(lua_State *L, const char *fmt, ...) __attribute__((analyzer_noreturn));
#endif
static int opt_error(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

static int opt_field(lua_State *L, int idx, const char *k, int type) {
  int t = lua_getfield(L, idx, k);
  if (t != LUA_TNIL && t != type)
    return opt_error(L, "http.configure: '%s' must be a %s, not %s", k, lua_typename(L, type),
                     luaL_typename(L, -1));
  return t != LUA_TNIL;
}

static int ascii_ieq(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i])) return 0;
  return 1;
}

/* A header line as check_headers found it: strings of the options table. */
typedef struct {
  const char *name, *value;
  size_t nlen, vlen;
} hdr_ref;
#define HDR_REFS 16

/* The options of one request, read and checked before anything is
 * allocated, so that a malformed option raises without leaking. The
 * strings belong to the options table, which stays at stack index 1. */
typedef struct {
  const char *url;
  char method[32];
  const char *body;
  size_t blen;
  int headers;  /* stack index of the headers table, 0 when none */
  hdr_set *set; /* or the prepared list given as headers */
  int has_expect;
  long timeout_ms;
  curl_off_t max_body;
  const char *ca_file;
  int follow;
  /* Header lines with string values, so that building the list does not
   * walk the table again (numbers, lists or more than HDR_REFS: -1). */
  hdr_ref hdrs[HDR_REFS];
  int nhdrs;
} req_opts;

static int is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void check_header_value(lua_State *L, const char *name, int idx) {
  size_t vlen;
  int t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    opt_error(L, "http.request: header '%s' must be a string, a number or a list of them", name);
  const char *v = lua_tolstring(L, idx, &vlen);
  for (size_t i = 0; i < vlen; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
      opt_error(L, "http.request: header '%s' contains CR, LF or NUL", name);
}

/* Headers: {Name = "v"} or {Name = {"v1", "v2"}} for a repeated one. */
static void check_headers(lua_State *L, int idx, req_opts *o) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) opt_error(L, "http.request: header names must be strings");
    size_t nlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (nlen == 0) opt_error(L, "http.request: empty header name");
    for (size_t i = 0; i < nlen; i++)
      if (!is_tchar((unsigned char)name[i]))
        opt_error(L, "http.request: invalid character in header name '%s'", name);
    if (nlen == 6 && ascii_ieq(name, "expect", 6)) o->has_expect = 1;
    if (lua_type(L, -1) == LUA_TSTRING) {
      check_header_value(L, name, lua_gettop(L)); /* a string is read, not converted */
      if (o->nhdrs >= 0 && o->nhdrs < HDR_REFS) {
        hdr_ref *h = &o->hdrs[o->nhdrs++];
        h->name = name;
        h->nlen = nlen;
        h->value = lua_tolstring(L, -1, &h->vlen);
      } else {
        o->nhdrs = -1;
      }
    } else if (lua_type(L, -1) == LUA_TTABLE) {
      o->nhdrs = -1;
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        check_header_value(L, name, lua_gettop(L));
        lua_pop(L, 1);
      }
    } else {
      o->nhdrs = -1;
      lua_pushvalue(L, -1); /* lua_tolstring must not convert lua_next's value */
      check_header_value(L, name, lua_gettop(L));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

/* HEADERS_MT itself, for a test cheaper than luaL_testudata's registry
 * lookup by name on every request (one Lua state per process). */
static const void *headers_mt;

static int is_headers(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  int yes = lua_topointer(L, -1) == headers_mt;
  lua_pop(L, 1);
  return yes;
}

static void bad_option(lua_State *L, const char *key, const char *want) {
  opt_error(L, "http.request: '%s' must be %s, not %s", key, want, luaL_typename(L, -1));
}

/* One pass over the options table: cheaper than a lookup per known option
 * when, as usual, only a few are given, and it catches misspelt ones. */
static void read_opts(lua_State *L, req_opts *o) {
  memset(o, 0, sizeof *o);
  memcpy(o->method, "GET", 4);
  o->timeout_ms = cfg.timeout_ms;
  o->max_body = cfg.max_body;
  o->ca_file = cfg.ca_file;
  int has_method = 0;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    int t = lua_type(L, -1);
    if (strcmp(k, "url") == 0) {
      if (t != LUA_TSTRING) bad_option(L, k, "a string");
      o->url = lua_tostring(L, -1);
    } else if (strcmp(k, "method") == 0) {
      if (t != LUA_TSTRING) bad_option(L, k, "a string");
      size_t n;
      const char *m = lua_tolstring(L, -1, &n);
      if (n == 0 || n >= sizeof o->method) opt_error(L, "http.request: bad method");
      /* Methods are case-sensitive on the wire; "post" means POST. */
      for (size_t i = 0; i <= n; i++) {
        o->method[i] = (char)toupper((unsigned char)m[i]);
        if (i < n && !is_tchar((unsigned char)m[i])) opt_error(L, "http.request: bad method");
      }
      has_method = 1;
    } else if (strcmp(k, "body") == 0) {
      if (t != LUA_TSTRING) bad_option(L, k, "a string");
      o->body = lua_tolstring(L, -1, &o->blen);
    } else if (strcmp(k, "headers") == 0) {
      if (t != LUA_TTABLE && !(t == LUA_TUSERDATA && is_headers(L, -1)))
        bad_option(L, k, "a table or http.headers' list");
    } else if (strcmp(k, "timeout") == 0) {
      if (t != LUA_TNUMBER) bad_option(L, k, "a number of seconds");
      lua_Number s = lua_tonumber(L, -1);
      if (!(s >= 0) || s > 1e6) opt_error(L, "http.request: bad timeout");
      o->timeout_ms = (long)(s * 1000.0 + 0.5);
      if (s > 0 && o->timeout_ms == 0) o->timeout_ms = 1;
    } else if (strcmp(k, "max_body") == 0) {
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) <= 0)
        bad_option(L, k, "a positive integer");
      o->max_body = (curl_off_t)lua_tointeger(L, -1);
    } else if (strcmp(k, "ca_file") == 0) {
      if (t != LUA_TSTRING) bad_option(L, k, "a string");
      o->ca_file = lua_tostring(L, -1);
    } else if (strcmp(k, "follow") == 0) {
      o->follow = lua_toboolean(L, -1);
    } else {
      opt_error(L, "http.request: unknown option '%s'", k);
    }
    lua_pop(L, 1);
  }
  if (!o->url) opt_error(L, "http.request: 'url' (a string) is required");
  int ht = lua_getfield(L, 1, "headers");
  if (ht == LUA_TTABLE) {
    o->headers = lua_gettop(L);
    check_headers(L, o->headers, o);
  } else if (ht == LUA_TUSERDATA) {
    hdr_set *set = *(hdr_set **)lua_touserdata(L, -1);
    if (!set)
      opt_error(L, "http.request: headers: the prepared list is closed");
    else
      o->has_expect = set->has_expect;
    o->set = set;
    lua_pop(L, 1); /* the options table keeps the list alive for the call */
  } else {
    lua_pop(L, 1);
  }
  if (!has_method && o->body) memcpy(o->method, "POST", 5);
  if (!o->body && (strcmp(o->method, "POST") == 0 || strcmp(o->method, "PUT") == 0 ||
                   strcmp(o->method, "PATCH") == 0))
    o->body = ""; /* an empty body still gets its Content-Length: 0 */
}

static int add_req_header(struct curl_slist **lp, const char *name, size_t nlen, const char *v,
                          size_t vlen) {
  char small[512], *line = small;
  size_t need = nlen + vlen + 3;
  if (need > sizeof small) {
    line = malloc(need);
    if (!line) return -1;
  }
  /* "Name;" is libcurl's spelling of a header with an empty value, "Name:"
   * would remove the header instead. */
  memcpy(line, name, nlen);
  if (vlen == 0) {
    line[nlen] = ';';
    line[nlen + 1] = '\0';
  } else {
    line[nlen] = ':';
    line[nlen + 1] = ' ';
    memcpy(line + nlen + 2, v, vlen);
    line[nlen + 2 + vlen] = '\0';
  }
  struct curl_slist *l = curl_slist_append(*lp, line);
  if (line != small) free(line);
  if (!l) return -1;
  *lp = l;
  return 0;
}

/* Builds the header list from the table read_opts checked; cannot raise
 * (the values were checked, the numbers already converted). */
static int build_headers(lua_State *L, struct curl_slist **lp, int idx) {
  int rc = 0;
  lua_pushnil(L);
  while (rc == 0 && lua_next(L, idx)) {
    size_t nlen, vlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
        lua_rawgeti(L, -1, i);
        const char *v = lua_tolstring(L, -1, &vlen);
        rc = add_req_header(lp, name, nlen, v, vlen);
        lua_pop(L, 1);
      }
    } else {
      lua_pushvalue(L, -1);
      const char *v = lua_tolstring(L, -1, &vlen);
      rc = add_req_header(lp, name, nlen, v, vlen);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  if (rc != 0) lua_pop(L, 1); /* the key lua_next left */
  return rc;
}

static int push_fail(lua_State *L, const char *kind, const char *msg) {
  lua_pushstring(L, msg);
  return kw_fail_kind(L, kind);
}

/* Applies checked options to a fresh or recycled request. Options a plain
 * GET must not inherit mark it sticky (reset before its next use). */
static int apply_opts(lua_State *L, http_req *r, const req_opts *o) {
  CURL *e = r->easy;
  const char *m = o->method;
  curl_easy_setopt(e, CURLOPT_URL, o->url);
  /* Over TLS the server may offer HTTP/2: wait for the first connection to
   * say so and multiplex over it rather than opening one per transfer.
   * Cleartext is HTTP/1.1 (no prior knowledge), where waiting would only
   * hold every transfer behind the first response. */
  int pipewait = ascii_ieq(o->url, "https://", 8);
  if (r->pipewait != pipewait) {
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, (long)pipewait);
    r->pipewait = pipewait;
  }
  if (o->body || strcmp(m, "GET") != 0) r->sticky = 1;
  if (o->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->blen);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body);
    if (strcmp(m, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
  } else if (strcmp(m, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(m, "GET") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
  }
  /* A 100-continue round trip only adds latency against servers we talk to. */
  int no_expect = o->body && !o->has_expect;
  if (o->set && !no_expect) {
    /* The prepared list as it is: set once on a handle that keeps it. */
    if (r->shared != o->set) {
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, o->set->list);
      o->set->refs++;
      hdr_set_release(r->shared);
      r->shared = o->set;
    }
  } else {
    if (o->set) {
      /* A body needs "Expect:" added: a copy of the prepared lines. */
      for (struct curl_slist *p = o->set->list; p; p = p->next) {
        struct curl_slist *l = curl_slist_append(r->req_headers, p->data);
        if (!l) return -1;
        r->req_headers = l;
      }
    } else if (o->nhdrs > 0) {
      for (int i = 0; i < o->nhdrs; i++)
        if (add_req_header(&r->req_headers, o->hdrs[i].name, o->hdrs[i].nlen, o->hdrs[i].value,
                           o->hdrs[i].vlen))
          return -1;
    } else if (o->headers && o->nhdrs < 0 && build_headers(L, &r->req_headers, o->headers)) {
      return -1;
    }
    if (no_expect) {
      struct curl_slist *l = curl_slist_append(r->req_headers, "Expect:");
      if (!l) return -1;
      r->req_headers = l;
    }
    if (r->req_headers || r->shared) curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->req_headers);
    hdr_set_release(r->shared);
    r->shared = NULL;
  }
  if (r->timeout_ms != o->timeout_ms) {
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
    r->timeout_ms = o->timeout_ms;
  }
  r->max_body = o->max_body;
  /* Rejects a declared Content-Length over the cap before any body; the
   * write callback catches chunked or lying responses. */
  if (r->limit != o->max_body) {
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, o->max_body);
    r->limit = o->max_body;
  }
  if (o->ca_file) {
    r->sticky = 1;
    curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
  }
  r->follow = o->follow;
  if (o->follow) {
    r->sticky = 1;
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
  }
  return 0;
}

static int l_request(lua_State *L) {
  req_opts o;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  read_opts(L, &o);
  if (G.closed) return push_fail(L, "network", "the event loop is closing");
  const char *err = http_init();
  if (err) return push_fail(L, "network", err);

  http_req *r = req_new();
  if (!r || apply_opts(L, r, &o) != 0) {
    if (r) req_free(r);
    return push_fail(L, "network", "cannot create a request (out of memory)");
  }
  if (G.active < cfg.max_concurrent) {
    CURLMcode mc = start_transfer(r);
    if (mc != CURLM_OK) {
      /* Not an op yet (kw_op_init comes after), so freeing it is ours. */
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
  kw_op_init(&r->op, &req_class);
  return kw_await(L, &r->op);
}

/* Calls fn(L, name, nlen, value, vlen) for each line of a header block as
 * on_header stores it. */
static void each_header(lua_State *L, const char *p, size_t len,
                        void (*fn)(lua_State *, const char *, size_t, const char *, size_t)) {
  const char *end = p + len;
  while (p < end) {
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    const char *colon = memchr(p, ':', (size_t)(end - p));
    if (!eol || !colon || colon > eol || eol + 2 > end || colon + 2 > eol) break;
    fn(L, p, (size_t)(colon - p), colon + 2, (size_t)(eol - colon - 2));
    p = eol + 2;
  }
}

static void add_to_table(lua_State *L, const char *n, size_t nlen, const char *v, size_t vlen) {
  lua_pushlstring(L, n, nlen);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushlstring(L, v, vlen);
  } else {
    /* Repeated header: combined as RFC 9110 5.3 allows; header_list keeps
     * each line for the ones that cannot be (set-cookie). */
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, v, vlen);
    lua_concat(L, 3);
  }
  lua_rawset(L, -3);
}

static void add_to_list(lua_State *L, const char *n, size_t nlen, const char *v, size_t vlen) {
  lua_createtable(L, 2, 0);
  lua_pushlstring(L, n, nlen);
  lua_rawseti(L, -2, 1);
  lua_pushlstring(L, v, vlen);
  lua_rawseti(L, -2, 2);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* header_table(raw) -> {name = value}: repeated names joined by ", ". */
static int l_header_table(lua_State *L) {
  size_t len;
  const char *raw = luaL_checklstring(L, 1, &len);
  lua_newtable(L);
  each_header(L, raw, len, add_to_table);
  return 1;
}

/* header_list(raw) -> {{name, value}, ...} in the order received. */
static int l_header_list(lua_State *L) {
  size_t len;
  const char *raw = luaL_checklstring(L, 1, &len);
  lua_newtable(L);
  each_header(L, raw, len, add_to_list);
  return 1;
}

static hdr_set **headers_ud(lua_State *L) {
  return (hdr_set **)luaL_checkudata(L, 1, HEADERS_MT);
}

/* __gc and __close: the list lives on while a handle still has it set. */
static int l_headers_close(lua_State *L) {
  hdr_set **u = headers_ud(L);
  hdr_set_release(*u);
  *u = NULL;
  return 0;
}

/* headers(table) -> a prepared list: checked and built once, for requests
 * that all send the same headers (a client's credentials). */
static int l_headers(lua_State *L) {
  req_opts o;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  memset(&o, 0, sizeof o);
  check_headers(L, 1, &o); /* raises before anything is allocated */
  hdr_set **u = lua_newuserdatauv(L, sizeof(hdr_set *), 0);
  *u = NULL;
  luaL_setmetatable(L, HEADERS_MT);
  hdr_set *h = calloc(1, sizeof *h);
  if (!h) return luaL_error(L, "http.headers: out of memory");
  *u = h; /* from here __gc frees it, whatever happens */
  h->refs = 1;
  h->has_expect = o.has_expect;
  if (build_headers(L, &h->list, 1)) return luaL_error(L, "http.headers: out of memory");
  return 1;
}

static int l_configure(lua_State *L) {
  static const char *const known[] = {"max_concurrent", "max_body", "timeout", "ca_file", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    size_t i = 0;
    while (known[i] && strcmp(known[i], k) != 0)
      i++;
    if (!known[i]) return opt_error(L, "http.configure: unknown option '%s'", k);
    lua_pop(L, 1);
  }
  if (opt_field(L, 1, "max_concurrent", LUA_TNUMBER)) {
    lua_Integer n = lua_tointeger(L, -1);
    if (n <= 0 || n > 100000)
      return opt_error(L, "http.configure: max_concurrent must be a positive integer");
    cfg.max_concurrent = (long)n;
    if (G.inited) {
      pool_trim((size_t)n);
      apply_limits();
      start_queued();
    }
  }
  lua_pop(L, 1);
  if (opt_field(L, 1, "max_body", LUA_TNUMBER)) {
    lua_Integer n = lua_tointeger(L, -1);
    if (n <= 0 || !lua_isinteger(L, -1))
      return opt_error(L, "http.configure: max_body must be a positive integer");
    cfg.max_body = (curl_off_t)n;
  }
  lua_pop(L, 1);
  if (opt_field(L, 1, "timeout", LUA_TNUMBER)) {
    lua_Number t = lua_tonumber(L, -1);
    if (!(t >= 0) || t > 1e6) return opt_error(L, "http.configure: bad timeout");
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
    return opt_error(L, "http.configure: ca_file must be a string or false");
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
                                 {"header_table", l_header_table},
                                 {"header_list", l_header_list},
                                 {"headers", l_headers},
                                 {NULL, NULL}};
  static const luaL_Reg headers_mt_fns[] = {
      {"__gc", l_headers_close}, {"__close", l_headers_close}, {NULL, NULL}};
  luaL_newlib(L, fns);
  luaL_newmetatable(L, HEADERS_MT);
  luaL_setfuncs(L, headers_mt_fns, 0);
  headers_mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  luaL_newmetatable(L, RESPONSE_MT);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &response_mt);
  lua_setfield(L, -2, "response_mt");
  lua_pushliteral(L, "kpiwatch/" KW_VERSION);
  lua_setfield(L, -2, "user_agent");
  return 1;
}
