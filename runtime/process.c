/*
 * process.c - the `kpiwatch._process` module: run a program and collect
 * what it wrote, without a shell.
 *
 *   spawn(argv, {stdin=, env=, cwd=, timeout=, max_output=})
 *     -> {status=, signal=, stdout=, stderr=, timed_out=, truncated=}
 *      | nil, message, errno              (the program could not be started)
 *   environ() -> {"NAME=value", ...}       (the current environment)
 *
 * argv goes to execvp(3) through uv_spawn as it is: no shell ever parses
 * it, so spaces, quotes and `; rm -rf /` in an argument stay one literal
 * argument. env, when given, is the child's whole environment ("K=V"
 * strings; merging with environ() is the Lua side's business). timeout is
 * in seconds: the child's process group (the child and what it started)
 * gets SIGTERM, then SIGKILL KILL_GRACE_MS later; the child runs in a
 * session of its own, away from the terminal's signals.
 * Output beyond max_output bytes per stream (default 1 MiB) is dropped and
 * `truncated` is set.
 *
 * spawn suspends the calling task (kw_await): the exit callback and the
 * pipe callbacks only record what happened and complete the op.
 */
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "fail.h"
#include "scheduler.h"

extern char **environ;

#define KILL_GRACE_MS 2000
/* After the child exits, grandchildren may still hold its stdout open;
 * read what is there for this long, then stop waiting for EOF. */
#define DRAIN_MS 200
#define READ_CHUNK 16384

typedef struct {
  char *data;
  size_t len, cap;
} obuf;

typedef struct {
  kw_op op;
  uv_process_t proc;
  uv_pipe_t in, out, err;
  uv_timer_t timer;
  uv_write_t wreq;
  char *stdin_data;
  size_t stdin_len;
  obuf bout, berr;
  size_t max_output;
  int truncated;
  int64_t exit_status;
  int term_signal;
  int has_stdin, timer_used;
  int exited, out_eof, err_eof, finished;
  int timed_out, killed, draining;
  int refs; /* the op's own reference plus one per handle being closed */
  char rbuf[READ_CHUNK];
} proc_op;

static void proc_free(proc_op *p) {
  free(p->stdin_data);
  free(p->bout.data);
  free(p->berr.data);
  free(p);
}

static void unref(proc_op *p) {
  if (--p->refs == 0) proc_free(p);
}

static void handle_closed(uv_handle_t *h) {
  unref((proc_op *)h->data);
}

static void close_handle(proc_op *p, uv_handle_t *h) {
  if (h->type == UV_UNKNOWN_HANDLE || uv_is_closing(h)) return;
  h->data = p;
  p->refs++;
  uv_close(h, handle_closed);
}

/* Close what is still open and drop the op's own reference: the struct is
 * freed by the last close callback (stdin may already be closing). */
static void close_all(proc_op *p) {
  close_handle(p, (uv_handle_t *)&p->proc);
  if (p->has_stdin) close_handle(p, (uv_handle_t *)&p->in);
  close_handle(p, (uv_handle_t *)&p->out);
  close_handle(p, (uv_handle_t *)&p->err);
  if (p->timer_used) close_handle(p, (uv_handle_t *)&p->timer);
  unref(p);
}

static void finish(proc_op *p) {
  if (p->finished) return;
  p->finished = 1;
  if (p->timer_used) uv_timer_stop(&p->timer);
  if (!uv_is_closing((uv_handle_t *)&p->out)) uv_read_stop((uv_stream_t *)&p->out);
  if (!uv_is_closing((uv_handle_t *)&p->err)) uv_read_stop((uv_stream_t *)&p->err);
  kw_op_done(&p->op);
}

static void check_done(proc_op *p);

/* The child leads its own process group (UV_PROCESS_DETACHED: setsid), so
 * what it started (`sh -c 'a | b'`, a daemonising script) goes with it.
 * Only called while the child has not been reaped: its pid is still the
 * group's id, never reused. ESRCH (all gone meanwhile) needs nothing. */
static void kill_group(proc_op *p, int sig) {
  if (uv_kill(-p->proc.pid, sig) != 0) (void)uv_process_kill(&p->proc, sig);
}

static void on_timer(uv_timer_t *t) {
  proc_op *p = (proc_op *)t->data;
  if (p->exited) {
    /* the drain period after exit is over */
    finish(p);
  } else if (!p->killed) {
    p->timed_out = 1;
    p->killed = 1;
    kill_group(p, SIGTERM);
    KW_CHECK(uv_timer_start(&p->timer, on_timer, KILL_GRACE_MS, 0) == 0);
  } else {
    kill_group(p, SIGKILL);
  }
}

static void check_done(proc_op *p) {
  if (p->finished || !p->exited) return;
  if (p->out_eof && p->err_eof) {
    finish(p);
  } else if (!p->draining) {
    p->draining = 1;
    KW_CHECK(uv_timer_start(&p->timer, on_timer, DRAIN_MS, 0) == 0);
  }
}

static void proc_exited(uv_process_t *proc, int64_t status, int sig) {
  proc_op *p = (proc_op *)proc->data;
  p->exited = 1;
  p->exit_status = status;
  p->term_signal = sig;
  uv_timer_stop(&p->timer);
  /* Killed (timeout, cancel): what it started and what ignored SIGTERM
   * goes too. The group outlives its leader while a member lives, so its
   * id cannot have been reused yet. */
  if (p->killed) (void)uv_kill(-proc->pid, SIGKILL);
  check_done(p);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  proc_op *p = (proc_op *)h->data;
  (void)suggested;
  /* One buffer serves both pipes: libuv hands it to the read callback of
   * the stream it was allocated for before allocating again. */
  *buf = uv_buf_init(p->rbuf, sizeof p->rbuf);
}

static void keep(proc_op *p, obuf *b, const char *data, size_t n) {
  size_t room = p->max_output > b->len ? p->max_output - b->len : 0;
  if (n > room) {
    p->truncated = 1;
    n = room;
  }
  if (n == 0) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    char *nd;
    while (cap < b->len + n)
      cap *= 2;
    nd = (char *)realloc(b->data, cap);
    if (!nd) {
      p->truncated = 1;
      return;
    }
    b->data = nd;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, n);
  b->len += n;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  proc_op *p = (proc_op *)s->data;
  int is_out = s == (uv_stream_t *)&p->out;
  if (nread > 0) {
    keep(p, is_out ? &p->bout : &p->berr, buf->base, (size_t)nread);
    return;
  }
  if (nread == 0) return; /* EAGAIN */
  uv_read_stop(s);
  if (is_out)
    p->out_eof = 1;
  else
    p->err_eof = 1;
  check_done(p);
}

static void on_written(uv_write_t *req, int status) {
  proc_op *p = (proc_op *)req->data;
  (void)status; /* EPIPE: the child did not read its stdin; not an error */
  if (!uv_is_closing((uv_handle_t *)&p->in)) close_handle(p, (uv_handle_t *)&p->in);
}

static int proc_push(kw_op *op, lua_State *L) {
  proc_op *p = (proc_op *)op;
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)p->exit_status);
  lua_setfield(L, -2, "status");
  if (p->term_signal) {
    lua_pushinteger(L, p->term_signal);
    lua_setfield(L, -2, "signal");
  }
  lua_pushlstring(L, p->bout.data ? p->bout.data : "", p->bout.len);
  lua_setfield(L, -2, "stdout");
  lua_pushlstring(L, p->berr.data ? p->berr.data : "", p->berr.len);
  lua_setfield(L, -2, "stderr");
  lua_pushboolean(L, p->timed_out);
  lua_setfield(L, -2, "timed_out");
  lua_pushboolean(L, p->truncated);
  lua_setfield(L, -2, "truncated");
  return 1;
}

static void proc_cancel(kw_op *op) {
  proc_op *p = (proc_op *)op;
  op->cancelled = 1;
  if (!p->exited) {
    /* on_exit follows and completes the op */
    p->killed = 1;
    kill_group(p, SIGKILL);
  } else {
    finish(p);
  }
}

static void proc_release(kw_op *op) {
  close_all((proc_op *)op);
}

static const kw_op_class proc_class = {"process.spawn", proc_push, proc_cancel, proc_release};

/* Strings of a Lua array, NUL-terminated, as pointers into the Lua strings
 * (alive while the table is on the stack, which covers uv_spawn: the child
 * has execve'd or failed before uv_spawn returns). */
static char **string_array(lua_State *L, int idx, const char *what, int need_one) {
  lua_Integer n = luaL_len(L, idx), i;
  char **arr;
  if (need_one && n < 1) luaL_error(L, "process.spawn: %s must not be empty", what);
  if (n > 65536) luaL_error(L, "process.spawn: %s too long", what);
  arr = (char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *s;
    if (lua_geti(L, idx, i) != LUA_TSTRING)
      luaL_error(L, "process.spawn: %s[%d] must be a string, got %s", what, (int)i,
                 luaL_typename(L, -1));
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len) luaL_error(L, "process.spawn: %s[%d] contains a NUL byte", what, (int)i);
    arr[i - 1] = (char *)s;
    lua_pop(L, 1); /* still referenced by the table */
  }
  arr[n] = NULL;
  return arr;
}

static int l_spawn(lua_State *L) {
  uv_process_options_t opts;
  uv_stdio_container_t stdio[3];
  char **args, **env = NULL;
  const char *cwd = NULL, *in = NULL;
  size_t inlen = 0;
  lua_Number timeout = 0;
  lua_Integer max_output = 1 << 20;
  proc_op *p;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  args = string_array(L, 1, "argv", 1); /* index 3 */
  if (!lua_isnil(L, 2)) {
    if (lua_getfield(L, 2, "env") == LUA_TTABLE) {
      env = string_array(L, lua_gettop(L), "env", 0);
      lua_rotate(L, -2, 1); /* keep the env table referenced below its array */
    } else if (!lua_isnil(L, -1)) {
      return luaL_error(L, "process.spawn: env must be a table of \"NAME=value\" strings");
    }
    if (lua_getfield(L, 2, "cwd") != LUA_TNIL) cwd = luaL_checkstring(L, -1);
    if (lua_getfield(L, 2, "stdin") != LUA_TNIL) in = luaL_checklstring(L, -1, &inlen);
    if (lua_getfield(L, 2, "timeout") != LUA_TNIL) {
      timeout = luaL_checknumber(L, -1);
      luaL_argcheck(L, timeout >= 0 && timeout < 1e7, 2, "timeout must be 0 to 1e7 seconds");
    }
    if (lua_getfield(L, 2, "max_output") != LUA_TNIL) {
      max_output = luaL_checkinteger(L, -1);
      luaL_argcheck(L, max_output >= 0, 2, "max_output must not be negative");
    }
  }

  p = (proc_op *)calloc(1, sizeof *p);
  if (!p) return luaL_error(L, "out of memory");
  p->refs = 1;
  p->max_output = (size_t)max_output;
  if (in) {
    p->has_stdin = 1;
    p->stdin_len = inlen;
    p->stdin_data = (char *)malloc(inlen ? inlen : 1);
    if (!p->stdin_data) {
      free(p);
      return luaL_error(L, "out of memory");
    }
    memcpy(p->stdin_data, in, inlen);
    KW_CHECK(uv_pipe_init(kw_loop(), &p->in, 0) == 0);
    p->in.data = p;
  }
  KW_CHECK(uv_pipe_init(kw_loop(), &p->out, 0) == 0);
  KW_CHECK(uv_pipe_init(kw_loop(), &p->err, 0) == 0);
  p->out.data = p->err.data = p->proc.data = p;

  memset(&opts, 0, sizeof opts);
  memset(stdio, 0, sizeof stdio);
  if (in) {
    stdio[0].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_READABLE_PIPE);
    stdio[0].data.stream = (uv_stream_t *)&p->in;
  } else {
    stdio[0].flags = UV_IGNORE; /* /dev/null */
  }
  stdio[1].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[1].data.stream = (uv_stream_t *)&p->out;
  stdio[2].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = (uv_stream_t *)&p->err;
  opts.exit_cb = proc_exited;
  opts.file = args[0];
  opts.args = args;
  opts.env = env;
  opts.cwd = cwd;
  opts.stdio_count = 3;
  opts.stdio = stdio;
  /* its own session and process group: see kill_group */
  opts.flags = UV_PROCESS_DETACHED;

  rc = uv_spawn(kw_loop(), &p->proc, &opts);
  if (rc != 0) {
    /* uv_spawn initialised the handle before failing: it must be closed. */
    p->exited = 1;
    close_all(p);
    lua_pushfstring(L, "cannot run '%s': %s", args[0], uv_strerror(rc));
    return kw_fail_errno(L, -rc); /* libuv's codes are -errno on Unix */
  }

  /* Only now an op: a failed spawn is freed above without ever having
   * been registered with the scheduler. */
  kw_op_init(&p->op, &proc_class);
  /* fresh pipes uv_spawn just connected: only a bug makes these fail */
  KW_CHECK(uv_read_start((uv_stream_t *)&p->out, on_alloc, on_read) == 0);
  KW_CHECK(uv_read_start((uv_stream_t *)&p->err, on_alloc, on_read) == 0);
  if (in) {
    uv_buf_t b = uv_buf_init(p->stdin_data, (unsigned int)p->stdin_len);
    p->wreq.data = p;
    if (p->stdin_len == 0 || uv_write(&p->wreq, (uv_stream_t *)&p->in, &b, 1, on_written) != 0)
      close_handle(p, (uv_handle_t *)&p->in);
  }
  KW_CHECK(uv_timer_init(kw_loop(), &p->timer) == 0);
  p->timer.data = p;
  p->timer_used = 1;
  if (timeout > 0)
    KW_CHECK(uv_timer_start(&p->timer, on_timer, (uint64_t)(timeout * 1000.0 + 0.5), 0) == 0);
  return kw_await(L, &p->op);
}

static int l_environ(lua_State *L) {
  char **e;
  int i = 0;
  lua_newtable(L);
  for (e = environ; e && *e; e++) {
    lua_pushstring(L, *e);
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

static const luaL_Reg funcs[] = {{"spawn", l_spawn}, {"environ", l_environ}, {NULL, NULL}};

int luaopen_kpiwatch__process(lua_State *L) {
  /* A child that exits without reading its stdin would otherwise kill the
   * whole process with SIGPIPE on our next write to the pipe; with the
   * signal ignored the write fails with EPIPE, which on_written accepts. */
  signal(SIGPIPE, SIG_IGN);
  luaL_newlib(L, funcs);
  return 1;
}
