/*
 * repl.c - kpiwatch._repl: line editing for the REPL, on the process's loop.
 *
 * On a terminal, lines are read with libedit through its readline callback
 * interface: rl_callback_handler_install prints the prompt, and every key
 * the user types is fed to rl_callback_read_char. A uv_poll_t on stdin says
 * when a key is there, so the loop keeps turning (and tasks keep running)
 * while the user types. Reading a line is an op (scheduler.h): the line
 * handler stores the line and calls kw_op_done; the REPL task resumes with it.
 *
 * Why the poll callback does not call rl_callback_read_char itself but posts
 * a job that does: libedit runs the completion function synchronously inside
 * rl_callback_read_char, and completion needs Lua (globals, fields of live
 * objects, the eval metrics of a fetched KPI object). Lua must never run
 * inside a libuv callback; a job runs between loop turns, where it may. The
 * alternative, a candidate list precomputed before each prompt, could not
 * know the fields of `k.` before the user has typed `k`.
 *
 * libedit's own signal handling is turned off (rl_catch_signals = 0): its
 * SIGINT handler would replace the scheduler's and re-send the signal to the
 * whole process group. Ctrl-C therefore reaches the scheduler, which cancels
 * the op the main task (the REPL) waits on; the cancel removes the handler,
 * which puts the terminal back in cooked mode. SIGWINCH and SIGCONT (back from
 * Ctrl-Z) are watched here while a line is read.
 *
 * Without a terminal (kpiwatch -i < file) there is no editing: the prompt is
 * written as lua.c does and lines are read from stdin, through the same
 * uv_poll_t for a pipe, directly for a regular file (which cannot be polled
 * and never blocks).
 *
 * C API (used by lualib/kpiwatch/repl.lua):
 *   readline(prompt) -> line | nil at end of input       (an op)
 *   reading() -> boolean                                   a line is being read
 *   print_above(text)       write text above the prompt being edited
 *   set_completer(fn)       fn(text_before_word, word) -> {candidates}
 *   history_load(path [, max]) / history_save(path [, max]) -> true | nil, msg
 *   history_add(line)
 *   mkdir_p(path [, mode]) -> true | nil, msg
 *   clear_interrupt()       the SIGINT was handled (kw_sched_clear_interrupt)
 *   end_session()           the process ends with the REPL (kw_sched_end_with_main)
 *   isatty() -> boolean     stdin and stdout are a terminal (lines are edited)
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "fail.h"
#include "scheduler.h"

typedef struct {
  kw_op op;   /* first: the scheduler sees a kw_op */
  char *line; /* malloc'd; NULL at end of input */
} line_op;

static struct {
  int opened;          /* module state set up (once per process) */
  int tty;             /* stdin is a terminal: edit with libedit */
  int rl_ready;        /* libedit initialised */
  uv_poll_t *poll;     /* on stdin; NULL until first needed */
  int poll_failed;     /* stdin cannot be polled (a regular file) */
  uv_signal_t *sig[2]; /* SIGWINCH, SIGCONT while a line is read */
  line_op *reading;    /* the op a line is being read for */
  kw_job key_job;      /* feeds one key to libedit, between loop turns */
  int key_posted;
  lua_State *co; /* the completer's thread: not the main one, where a Ctrl-C
                  * may have left the interrupt hook armed */
  int co_ref, completer_ref;
  char *in; /* input read ahead without a terminal */
  size_t inlen, incap;
  int in_eof;
} R;

/* ---- teardown ------------------------------------------------------------- */

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void stop_reading(void) {
  int i;
  if (R.poll) uv_poll_stop(R.poll);
  for (i = 0; i < 2; i++)
    if (R.sig[i]) uv_signal_stop(R.sig[i]);
}

/* Before the loop closes: leave the terminal as we found it if a line was
 * still being read (the main task failed, SIGTERM), and close the handles. */
static void repl_atclose(void) {
  int i;
  if (R.reading && R.tty) rl_callback_handler_remove();
  R.reading = NULL; /* its op belongs to a task that will never resume */
  if (R.poll) {
    uv_close((uv_handle_t *)R.poll, free_handle);
    R.poll = NULL;
  }
  for (i = 0; i < 2; i++) {
    if (R.sig[i]) {
      uv_close((uv_handle_t *)R.sig[i], free_handle);
      R.sig[i] = NULL;
    }
  }
  free(R.in);
  R.in = NULL;
  R.inlen = R.incap = 0;
}

/* ---- the line op ---------------------------------------------------------- */

static int line_push(kw_op *op, lua_State *L) {
  line_op *l = (line_op *)op;
  if (l->line)
    lua_pushstring(L, l->line);
  else
    lua_pushnil(L);
  return 1;
}

static void line_cancel(kw_op *op) {
  if (R.reading == (line_op *)op) {
    R.reading = NULL;
    stop_reading();
    if (R.tty) rl_callback_handler_remove(); /* back to cooked mode */
  }
  op->cancelled = 1;
  /* A line that came in through a pipe completed the op in this same loop
   * turn: its waiter is already queued, completing twice would queue the
   * waiter's job twice. */
  if (!op->done) kw_op_done(op);
}

static void line_release(kw_op *op) {
  free(((line_op *)op)->line);
  free(op);
}

static const kw_op_class line_class = {"repl.readline", line_push, line_cancel, line_release};

static void finish_line(char *line) {
  line_op *op = R.reading;
  if (!op) {
    free(line);
    return;
  }
  R.reading = NULL;
  stop_reading();
  op->line = line;
  kw_op_done(&op->op);
}

/* ---- libedit -------------------------------------------------------------- */

/* Called by libedit inside rl_callback_read_char, i.e. inside key_job. */
static void on_line(char *line) {
  rl_callback_handler_remove();
  finish_line(line);
}

static void on_readable(uv_poll_t *h, int status, int events);

static void key_job_run(lua_State *L, kw_job *job) {
  (void)L;
  (void)job;
  struct pollfd pfd = {0, POLLIN, 0};
  R.key_posted = 0;
  if (!R.reading) return; /* cancelled since the key arrived */
  /* libedit's read blocks: make sure the key is still there (a Ctrl-C
   * since the poll callback flushes the terminal's input queue). */
  if (poll(&pfd, 1, 0) == 1) rl_callback_read_char();
  if (R.reading && R.poll) uv_poll_start(R.poll, UV_READABLE, on_readable);
}

/* Longest common prefix of the candidates: what TAB inserts. */
static char *common_prefix(char **m, size_t n) {
  size_t len = strlen(m[0]), i, j;
  char *p;
  for (i = 1; i < n; i++) {
    for (j = 0; j < len && m[i][j] == m[0][j]; j++) {
    }
    len = j;
  }
  p = (char *)malloc(len + 1);
  if (p) {
    memcpy(p, m[0], len);
    p[len] = '\0';
  }
  return p;
}

static int call_completer(lua_State *co) {
  /* fn, before, word on the stack */
  lua_call(co, 2, 1);
  return 1;
}

/* rl_attempted_completion_function: ask the Lua completer (safe: we run in
 * key_job, not in a libuv callback) and hand libedit the array it expects,
 * [0] the text to insert, then the candidates, NULL-terminated, malloc'd. */
static char **complete(const char *text, int start, int end) {
  lua_State *co = R.co;
  char **m = NULL;
  size_t n, i, k = 0, before_len;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  if (!co || R.completer_ref == LUA_NOREF) return NULL;
  before_len = rl_line_buffer ? strlen(rl_line_buffer) : 0;
  if (start < 0) start = 0;
  if ((size_t)start < before_len) before_len = (size_t)start;
  lua_pushcfunction(co, call_completer);
  lua_rawgeti(co, LUA_REGISTRYINDEX, R.completer_ref);
  lua_pushlstring(co, rl_line_buffer ? rl_line_buffer : "", before_len);
  lua_pushstring(co, text);
  if (lua_pcall(co, 3, 1, 0) != LUA_OK || !lua_istable(co, -1)) {
    lua_settop(co, 0);
    return NULL;
  }
  n = (size_t)lua_rawlen(co, -1);
  if (n == 0 || !(m = (char **)calloc(n + 2, sizeof *m))) goto done;
  for (i = 1; i <= n; i++) {
    const char *s;
    lua_rawgeti(co, -1, (lua_Integer)i);
    s = lua_tostring(co, -1);
    if (s) {
      if (!(m[k + 1] = strdup(s))) break;
      k++;
    }
    lua_pop(co, 1);
  }
  if (k == 1) {
    m[0] = m[1];
    m[1] = NULL;
  } else if (k == 0 || i <= n || !(m[0] = common_prefix(m + 1, k))) {
    for (i = 1; i <= k; i++)
      free(m[i]);
    free(m);
    m = NULL;
  }
done:
  lua_settop(co, 0);
  return m;
}

static void rl_setup(void) {
  if (R.rl_ready) return;
  R.rl_ready = 1;
  rl_readline_name = "kpiwatch";
  rl_catch_signals = 0;
  rl_catch_sigwinch = 0;
  /* '.' and ':' stay inside the word: the completer gets `k.avg_` whole. */
  rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[])}";
  rl_completion_append_character = '\0';
  rl_attempted_completion_function = complete;
  rl_initialize();
  using_history();
}

/* ---- reading stdin -------------------------------------------------------- */

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (!R.reading || !R.tty) return;
  if (signum == SIGWINCH) {
    rl_resize_terminal();
  } else {
    /* Back from Ctrl-Z: the shell may have reset the terminal while we
     * were stopped; put it in editing mode again and redraw the line. */
    rl_deprep_terminal();
    rl_prep_terminal(0);
    fputs("\r", stdout);
    rl_forced_update_display();
  }
}

/* Without a terminal: a complete line in the read-ahead buffer, or the rest
 * at end of input; NULL when more input is needed. Sets *eof at the end. */
static char *take_line(int *eof) {
  char *nl = R.in ? memchr(R.in, '\n', R.inlen) : NULL;
  size_t len;
  char *line;
  *eof = 0;
  if (!nl && !R.in_eof) return NULL;
  if (!nl && (R.inlen == 0 || !R.in)) {
    *eof = 1;
    return NULL;
  }
  len = nl ? (size_t)(nl - R.in) : R.inlen;
  line = (char *)malloc(len + 1);
  if (!line) return NULL;
  memcpy(line, R.in, len);
  line[len] = '\0';
  if (nl) len++;
  memmove(R.in, R.in + len, R.inlen - len);
  R.inlen -= len;
  return line;
}

/* Read what stdin has (one read(2)) into the read-ahead buffer. */
static void read_some(void) {
  ssize_t n;
  if (R.incap - R.inlen < 4096) {
    size_t cap = R.incap ? R.incap * 2 : 8192;
    char *p = (char *)realloc(R.in, cap);
    if (!p) {
      R.in_eof = 1;
      return;
    }
    R.in = p;
    R.incap = cap;
  }
  do
    n = read(0, R.in + R.inlen, R.incap - R.inlen);
  while (n < 0 && errno == EINTR);
  if (n <= 0)
    R.in_eof = 1;
  else
    R.inlen += (size_t)n;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  if (!R.reading) {
    uv_poll_stop(h);
    return;
  }
  if (R.tty) {
    if (status < 0) { /* the terminal went away */
      rl_callback_handler_remove();
      finish_line(NULL);
      return;
    }
    /* Lua may run in libedit's completion: feed the key from a job. */
    uv_poll_stop(h);
    if (!R.key_posted) {
      R.key_posted = 1;
      kw_job_post(&R.key_job);
    }
    return;
  }
  {
    char *line;
    int eof;
    if (status < 0)
      R.in_eof = 1;
    else
      read_some();
    line = take_line(&eof);
    if (line || eof) finish_line(line);
  }
}

static int start_poll(void) {
  if (R.poll_failed) return -1;
  if (!R.poll) {
    R.poll = (uv_poll_t *)malloc(sizeof *R.poll);
    if (!R.poll) return -1;
    if (uv_poll_init(kw_loop(), R.poll, 0) != 0) {
      free(R.poll);
      R.poll = NULL;
      R.poll_failed = 1;
      return -1;
    }
  }
  return uv_poll_start(R.poll, UV_READABLE, on_readable);
}

/* Redraw on resize and on return from the background. Without them (out
 * of memory or descriptors) the prompt still works, only not redrawn. */
static void start_signals(void) {
  static const int signums[2] = {SIGWINCH, SIGCONT};
  int i;
  for (i = 0; i < 2; i++) {
    if (!R.sig[i]) {
      if (!(R.sig[i] = (uv_signal_t *)malloc(sizeof *R.sig[i]))) continue;
      if (uv_signal_init(kw_loop(), R.sig[i]) != 0) {
        free(R.sig[i]);
        R.sig[i] = NULL;
        continue;
      }
    }
    if (uv_signal_start(R.sig[i], on_signal, signums[i]) != 0) {
      uv_close((uv_handle_t *)R.sig[i], free_handle);
      R.sig[i] = NULL;
    }
  }
}

static int l_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  line_op *op;
  if (R.reading) return luaL_error(L, "a line is already being read");
  fflush(stdout);
  fflush(stderr);
  if (!R.tty) {
    char *line;
    int eof;
    fputs(prompt, stdout);
    fflush(stdout);
    line = take_line(&eof);
    while (!line && !eof && start_poll() != 0) { /* a regular file: never blocks */
      read_some();
      line = take_line(&eof);
    }
    if (line || eof) {
      if (line)
        lua_pushstring(L, line);
      else
        lua_pushnil(L);
      free(line);
      return 1;
    }
  }
  op = (line_op *)calloc(1, sizeof *op);
  if (!op) return luaL_error(L, "out of memory");
  kw_op_init(&op->op, &line_class);
  R.reading = op;
  if (R.tty) {
    rl_setup();
    rl_callback_handler_install(prompt, on_line);
    if (start_poll() != 0) {
      rl_callback_handler_remove();
      R.reading = NULL;
      free(op);
      return luaL_error(L, "cannot watch the terminal");
    }
    start_signals();
  }
  return kw_await(L, &op->op);
}

static int l_reading(lua_State *L) {
  lua_pushboolean(L, R.reading != NULL);
  return 1;
}

/* Output from a background task while the user edits a line: erase the
 * prompt line, write the text, draw the prompt and the line again. */
static int l_print_above(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (R.reading && R.tty) {
    fputs("\r\033[K", stdout);
    fwrite(s, 1, len, stdout);
    if (len > 0 && s[len - 1] != '\n') fputc('\n', stdout);
    fflush(stdout);
    rl_forced_update_display();
  } else {
    fwrite(s, 1, len, stdout);
    fflush(stdout);
  }
  return 0;
}

static int l_set_completer(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, R.completer_ref);
  lua_settop(L, 1);
  R.completer_ref = lua_isnil(L, 1) ? LUA_NOREF : luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* ---- history -------------------------------------------------------------- */

static int l_history_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int max = (int)luaL_optinteger(L, 2, 1000), err;
  if (!R.tty) return 0;
  rl_setup();
  if (max > 0) stifle_history(max);
  err = read_history(path);
  if (err != 0 && err != ENOENT && errno != ENOENT) {
    err = err > 0 ? err : errno;
    lua_pushfstring(L, "cannot read history %s: %s", path, strerror(err));
    return kw_fail_errno(L, err);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_history_add(lua_State *L) {
  const char *line = luaL_checkstring(L, 1);
  if (!R.tty) return 0;
  rl_setup();
  add_history(line);
  return 0;
}

/* The history may hold what was typed at the prompt, keys included: it is
 * kept readable by its owner only. */
static int l_history_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int max = (int)luaL_optinteger(L, 2, 1000), err;
  if (!R.tty) return 0;
  rl_setup();
  err = write_history(path);
  if (err != 0) {
    err = err > 0 ? err : errno;
    lua_pushfstring(L, "cannot write history %s: %s", path, strerror(err));
    return kw_fail_errno(L, err);
  }
  chmod(path, 0600);
  if (max > 0) history_truncate_file(path, max);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_mkdir_p(lua_State *L) {
  size_t len, i;
  const char *path = luaL_checklstring(L, 1, &len);
  mode_t mode = (mode_t)luaL_optinteger(L, 2, 0700);
  char *p = (char *)lua_newuserdatauv(L, len + 1, 0);
  memcpy(p, path, len + 1);
  for (i = 1; i <= len; i++) {
    if (p[i] == '/' || p[i] == '\0') {
      char c = p[i];
      p[i] = '\0';
      if (mkdir(p, mode) != 0 && errno != EEXIST) {
        int err = errno;
        lua_pushfstring(L, "cannot create %s: %s", p, strerror(err));
        return kw_fail_errno(L, err);
      }
      p[i] = c;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- misc ----------------------------------------------------------------- */

static int l_clear_interrupt(lua_State *L) {
  (void)L;
  kw_sched_clear_interrupt();
  return 0;
}

static int l_end_session(lua_State *L) {
  (void)L;
  kw_sched_end_with_main();
  return 0;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, R.tty);
  return 1;
}

int luaopen_kpiwatch__repl(lua_State *L) {
  static const luaL_Reg funcs[] = {{"readline", l_readline},
                                   {"reading", l_reading},
                                   {"print_above", l_print_above},
                                   {"set_completer", l_set_completer},
                                   {"history_load", l_history_load},
                                   {"history_add", l_history_add},
                                   {"history_save", l_history_save},
                                   {"mkdir_p", l_mkdir_p},
                                   {"clear_interrupt", l_clear_interrupt},
                                   {"end_session", l_end_session},
                                   {"isatty", l_isatty},
                                   {NULL, NULL}};
  if (!R.opened) {
    R.opened = 1;
    R.tty = isatty(0) && isatty(1);
    R.key_job.run = key_job_run;
    R.completer_ref = LUA_NOREF;
    R.co = lua_newthread(L);
    R.co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (kw_sched_atclose(repl_atclose) != 0)
      return luaL_error(L, "too many kw_sched_atclose hooks");
  }
  luaL_newlib(L, funcs);
  return 1;
}
