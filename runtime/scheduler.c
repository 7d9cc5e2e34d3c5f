/*
 * scheduler.c - the event loop, the job queue, tasks and async operations.
 *
 * A task is a coroutine plus a small C record (kw_task, the payload of the
 * task handle userdata). A task suspends only inside kw_await, by yielding
 * with a continuation; the op's completion posts the task's resume job, and
 * the scheduler resumes it between loop turns. See scheduler.h for the rule
 * that keeps this sound (no Lua inside callbacks).
 */
#include "scheduler.h"

#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TASK_MT "kpiwatch.task"

typedef enum { TASK_READY, TASK_RUNNING, TASK_WAITING, TASK_DONE, TASK_FAILED } task_state;

typedef struct join_op join_op;

typedef struct kw_task {
  kw_job job;    /* resumes the task */
  lua_State *co; /* the coroutine (anchored as uservalue 1 of the handle) */
  int ref;       /* registry ref anchoring the handle until the task ends */
  task_state state;
  int nargs;                 /* arguments waiting on co's stack for the first resume */
  int nresults;              /* results left on co's stack once done */
  int errref;                /* registry ref of the error value once failed */
  kw_op *op;                 /* what the task waits on */
  const char *cancel_reason; /* static or interned in the registry by its handle */
  join_op *joiners;          /* tasks waiting in task.wait for this one */
  int is_main;
  int was_cancelled; /* its failure is the cancellation, not worth a report */
  int unobserved;    /* failed with nobody waiting: counted in failed_tasks */
  int started;       /* resumed at least once */
} kw_task;

struct join_op {
  kw_op op;
  kw_task *target;
  join_op *next;
};

static struct {
  uv_loop_t loop;
  int open;
  kw_job *head, *tail; /* job queue, FIFO */
  kw_task *main_task;
  int main_status;  /* exit status decided by the main task */
  int failed_tasks; /* tasks that ended in an unobserved error */
  kw_atclose_fn atclose[KW_ATCLOSE_MAX];
  int natclose;
  lua_State *running; /* thread whose Lua code runs now (for SIGINT) */
  lua_State *L;       /* main thread */
  volatile sig_atomic_t sigint;
  volatile sig_atomic_t sigint_waiters;
  int end_with_main; /* kw_sched_end_with_main: the REPL ended */
  int sigterm;
  int sighup;      /* the stop was a SIGHUP (sigterm is set too) */
  int in_uv_run;   /* kw_sched_step is inside uv_run */
  uv_async_t wake; /* SIGINT wakes the loop through this */
  uv_signal_t term;
  uv_signal_t hup;
} S;

/* ---- job queue ------------------------------------------------------------ */

void kw_job_post(kw_job *job) {
  job->next = NULL;
  if (S.tail)
    S.tail->next = job;
  else
    S.head = job;
  S.tail = job;
  /* A callback that runs before the poll phase of this loop turn (a timer
   * already due when uv_run(UV_RUN_ONCE) started: task.sleep(0), libcurl's
   * 0 ms timeout finishing transfers) would otherwise leave the job queued
   * while the poll blocks until some unrelated event: forever when a
   * server or a signal waiter keeps the loop alive. uv_stop makes this
   * turn's poll non-blocking and uv_run return when the turn ends. */
  if (S.in_uv_run) uv_stop(&S.loop);
}

static void run_jobs(lua_State *L) {
  /* Jobs posted while draining run in the same drain: a spawned task starts
   * before the loop blocks again. */
  while (S.head) {
    kw_job *job = S.head;
    S.head = job->next;
    if (!S.head) S.tail = NULL;
    job->run(L, job);
  }
}

uv_loop_t *kw_loop(void) {
  return &S.loop;
}

/* ---- ops ------------------------------------------------------------------ */

static kw_op *live_ops; /* a stop (SIGTERM, an error) may leave ops pending */

void kw_op_init(kw_op *op, const kw_op_class *cls) {
  op->cls = cls;
  op->waiter = NULL;
  op->done = 0;
  op->cancelled = 0;
  op->live = 1;
  op->live_prev = NULL;
  op->live_next = live_ops;
  if (live_ops) live_ops->live_prev = op;
  live_ops = op;
}

/* The one place an op stops being live (see kw_op in scheduler.h). */
static void op_release(kw_op *op) {
  KW_CHECK(op->live);
  op->live = 0;
  if (op->live_prev)
    op->live_prev->live_next = op->live_next;
  else
    live_ops = op->live_next;
  if (op->live_next) op->live_next->live_prev = op->live_prev;
  op->cls->release(op);
}

void kw_op_done(kw_op *op) {
  KW_CHECK(op->live);
  /* A cancel can race a completion that is already queued: posting the
   * waiter's job twice would link the job queue into a cycle. */
  if (op->done) return;
  op->done = 1;
  if (op->waiter) kw_job_post(&op->waiter->job);
}

/* Produce an op's results (or raise its error) in L, then free it. */
static int op_finish(lua_State *L, kw_op *op, kw_task *t) {
  const char *reason = t ? t->cancel_reason : NULL;
  int n;
  if (t) t->cancel_reason = NULL;
  if (reason || op->cancelled) {
    op_release(op);
    lua_pushstring(L, reason ? reason : "cancelled");
    return lua_error(L);
  }
  n = op->cls->push(op, L);
  op_release(op);
  if (n < 0) return lua_error(L);
  return n;
}

static int await_k(lua_State *L, int status, lua_KContext ctx) {
  kw_task *t = *(kw_task **)lua_getextraspace(L);
  (void)status;
  return op_finish(L, (kw_op *)ctx, t);
}

static void check_interrupt(lua_State *L, kw_op *op) {
  if (!S.sigint || S.sigint_waiters) return;
  if (op->cls->cancel && !op->done) op->cls->cancel(op);
  while (!op->done && kw_sched_step(L, 1)) {
  }
  op_release(op);
  luaL_error(L, "interrupted!");
}

int kw_await(lua_State *L, kw_op *op) {
  kw_task *t = *(kw_task **)lua_getextraspace(L);
  lua_State *prev;
  if (t && t->co == L && lua_isyieldable(L)) {
    op->waiter = t;
    t->op = op;
    t->state = TASK_WAITING;
    return lua_yieldk(L, 0, (lua_KContext)op, await_k);
  }
  /* Cannot yield (a require'd module's top level, a sort comparator, a
   * foreign coroutine): turn the loop here until this op is done, as
   * Neovim's vim.wait does. Safe: we are not inside a callback. */
  prev = S.running;
  while (!op->done) {
    check_interrupt(L, op);
    if (!kw_sched_step(L, 1)) {
      if (op->done) break;
      if (op->cls->cancel) op->cls->cancel(op);
      op_release(op);
      return luaL_error(L, "%s would wait forever: nothing left that could complete it",
                        op->cls->name);
    }
  }
  S.running = prev;
  return op_finish(L, op, NULL);
}

/* ---- tasks ---------------------------------------------------------------- */

static kw_task *check_task(lua_State *L, int idx) {
  return (kw_task *)luaL_checkudata(L, idx, TASK_MT);
}

static void report_error(lua_State *L, kw_task *t, const char *what) {
  lua_State *co = t->co;
  const char *msg;
  if (luaL_callmeta(co, -1, "__tostring") && lua_type(co, -1) == LUA_TSTRING) {
    msg = lua_tostring(co, -1);
  } else {
    if (lua_gettop(co) > 0 && !lua_isnil(co, -1) && lua_type(co, -1) != LUA_TSTRING &&
        lua_type(co, -1) != LUA_TNUMBER)
      lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
    else
      lua_pushvalue(co, -1);
    msg = lua_tostring(co, -1);
  }
  luaL_traceback(L, co, msg, 0);
  fprintf(stderr, "kpiwatch: %s%s\n", what, lua_tostring(L, -1));
  fflush(stderr);
  lua_pop(L, 1);
  lua_pop(co, 1);
}

static void task_finished(lua_State *L, kw_task *t, int status, int nres) {
  join_op *j;
  if (status == LUA_OK) {
    t->state = TASK_DONE;
    t->nresults = nres;
  } else {
    t->state = TASK_FAILED;
    if (t->is_main) {
      S.main_status = S.sigint ? 130 : 2;
      report_error(L, t, "");
    } else if (!t->joiners && !t->was_cancelled) {
      S.failed_tasks++;
      t->unobserved = 1;
      report_error(L, t, "task failed: ");
    }
    lua_pushvalue(t->co, -1);
    lua_xmove(t->co, L, 1);
    t->errref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  for (j = t->joiners; j; j = j->next)
    kw_op_done(&j->op);
  t->joiners = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
}

static void resume_task(lua_State *L, kw_job *job) {
  kw_task *t = (kw_task *)job; /* job is the first member */
  lua_State *prev = S.running;
  int nres = 0, status, nargs = t->nargs;
  if (t->state == TASK_DONE || t->state == TASK_FAILED) return;
  if (!t->started && t->was_cancelled) {
    lua_settop(t->co, 0);
    lua_pushstring(t->co, t->cancel_reason);
    task_finished(L, t, LUA_ERRRUN, 0);
    return;
  }
  t->nargs = 0;
  t->op = NULL;
  t->started = 1;
  t->state = TASK_RUNNING;
  S.running = t->co;
  status = lua_resume(t->co, L, nargs, &nres);
  S.running = prev;
  if (status == LUA_YIELD) {
    if (t->state != TASK_WAITING) {
      /* A bare coroutine.yield() in a task body: treat it as a pause until
       * the next scheduler step rather than losing the task. */
      lua_pop(t->co, nres);
      t->state = TASK_READY;
      kw_job_post(&t->job);
    }
    return;
  }
  task_finished(L, t, status, nres);
}

void kw_task_spawn(lua_State *L, int nargs) {
  kw_task *t;
  lua_State *co;
  luaL_checktype(L, -nargs - 1, LUA_TFUNCTION);
  t = (kw_task *)lua_newuserdatauv(L, sizeof(kw_task), 1);
  memset(t, 0, sizeof *t);
  t->ref = LUA_NOREF;
  t->errref = LUA_NOREF;
  luaL_setmetatable(L, TASK_MT);
  co = lua_newthread(L);
  *(kw_task **)lua_getextraspace(co) = t;
  lua_setiuservalue(L, -2, 1);  /* handle.uv1 = co */
  lua_rotate(L, -nargs - 2, 1); /* handle, fn, args... */
  lua_xmove(L, co, nargs + 1);  /* fn and args onto co */
  t->co = co;
  t->nargs = nargs;
  t->state = TASK_READY;
  t->job.run = resume_task;
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* alive until it ends */
  kw_job_post(&t->job);
}

static int l_spawn(lua_State *L) {
  kw_task_spawn(L, lua_gettop(L) - 1);
  return 1;
}

/* Copy a finished task's results (or raise its error) onto L. */
static int push_outcome(lua_State *L, kw_task *t) {
  int i;
  if (t->state == TASK_FAILED) {
    if (t->unobserved) { /* a later wait handles it: no longer a silent failure */
      t->unobserved = 0;
      S.failed_tasks--;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->errref);
    return -1;
  }
  luaL_checkstack(L, t->nresults, "too many results");
  for (i = 1; i <= t->nresults; i++) {
    lua_pushvalue(t->co, i);
    lua_xmove(t->co, L, 1);
  }
  return t->nresults;
}

static int join_push(kw_op *op, lua_State *L) {
  return push_outcome(L, ((join_op *)op)->target);
}

static void join_unlink(join_op *j) {
  join_op **p;
  for (p = &j->target->joiners; *p; p = &(*p)->next)
    if (*p == j) {
      *p = j->next;
      break;
    }
}

static void join_cancel(kw_op *op) {
  join_unlink((join_op *)op);
  op->cancelled = 1;
  kw_op_done(op);
}

static void join_release(kw_op *op) {
  free(op);
}

static const kw_op_class join_class = {"task.wait", join_push, join_cancel, join_release};

static int l_wait(lua_State *L) {
  kw_task *t = check_task(L, 1);
  join_op *j;
  int n;
  if (t->state == TASK_DONE || t->state == TASK_FAILED) {
    n = push_outcome(L, t);
    return n < 0 ? lua_error(L) : n;
  }
  if (t->co == L) return luaL_error(L, "a task cannot wait for itself");
  j = (join_op *)malloc(sizeof *j);
  if (!j) return luaL_error(L, "out of memory");
  kw_op_init(&j->op, &join_class);
  j->target = t;
  j->next = t->joiners;
  t->joiners = j;
  return kw_await(L, &j->op);
}

void kw_task_cancel(lua_State *L, int idx, const char *reason) {
  kw_task *t = check_task(L, idx);
  if (t->state == TASK_DONE || t->state == TASK_FAILED || t->state == TASK_RUNNING) return;
  if (t->state == TASK_READY && t->started) return; /* paused by a bare yield: due now */
  t->cancel_reason = reason;
  t->was_cancelled = 1;
  if (t->state == TASK_WAITING && t->op) {
    kw_op *op = t->op;
    KW_CHECK(op->live);   /* a waiting task's op is released only once it resumed */
    if (op->done) return; /* already due: it raises the reason when resumed */
    if (op->cls->cancel) {
      op->cls->cancel(op);
    } else {
      /* Cannot abort: the task gives up on the op; raise on next resume. */
      op->cancelled = 1;
      kw_op_done(op);
    }
  }
  /* A task that never started ends without running when its queued job
   * comes (resume_task): ending it here would release the handle while the
   * queue still points at it, and the collector could free it first. */
}

static int l_cancel(lua_State *L) {
  const char *reason = luaL_optstring(L, 2, "cancelled");
  check_task(L, 1);
  /* Keep the reason string alive as long as the handle: store it in the
   * registry keyed by nothing else; interned strings are shared, so anchor
   * it in the handle's metatable-free slot via a registry table. */
  lua_getfield(L, LUA_REGISTRYINDEX, "kpiwatch.cancel_reasons");
  lua_pushvalue(L, 1);
  lua_pushstring(L, reason);
  reason = lua_tostring(L, -1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  kw_task_cancel(L, 1, reason);
  return 0;
}

/* Monotonic seconds, for measuring and for deadlines (not wall time). */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

static const char *const state_names[] = {"ready", "running", "waiting", "done", "failed"};

static int l_status(lua_State *L) {
  lua_pushstring(L, state_names[check_task(L, 1)->state]);
  return 1;
}

static int l_running(lua_State *L) {
  kw_task *t = *(kw_task **)lua_getextraspace(L);
  if (!t) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
  return 1;
}

static int l_tostring(lua_State *L) {
  kw_task *t = check_task(L, 1);
  lua_pushfstring(L, "task (%s): %p", state_names[t->state], (void *)t);
  return 1;
}

/* ---- task.sleep ----------------------------------------------------------- */

typedef struct {
  kw_op op;
  uv_timer_t timer;
} sleep_op;

static int sleep_push(kw_op *op, lua_State *L) {
  (void)op;
  (void)L;
  return 0;
}

static void sleep_closed(uv_handle_t *h) {
  free(h->data);
}

static void sleep_release(kw_op *op) {
  sleep_op *s = (sleep_op *)op;
  s->timer.data = s;
  uv_close((uv_handle_t *)&s->timer, sleep_closed);
}

static void sleep_cancel(kw_op *op) {
  uv_timer_stop(&((sleep_op *)op)->timer);
  op->cancelled = 1;
  kw_op_done(op);
}

static void sleep_fired(uv_timer_t *timer) {
  kw_op_done((kw_op *)timer->data);
}

static const kw_op_class sleep_class = {"task.sleep", sleep_push, sleep_cancel, sleep_release};

static int l_sleep(lua_State *L) {
  lua_Number secs = luaL_checknumber(L, 1);
  sleep_op *s;
  luaL_argcheck(L, secs >= 0 && secs < 1e9, 1, "seconds must be between 0 and 1e9");
  s = (sleep_op *)malloc(sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  kw_op_init(&s->op, &sleep_class);
  KW_CHECK(uv_timer_init(&S.loop, &s->timer) == 0);
  s->timer.data = s;
  /* The loop's clock is cached at the start of each turn; Lua may have run
   * for a while since, and a sleep must not end early. */
  uv_update_time(&S.loop);
  KW_CHECK(uv_timer_start(&s->timer, sleep_fired, (uint64_t)(secs * 1000.0 + 0.5), 0) == 0);
  return kw_await(L, &s->op);
}

/* ---- signals -------------------------------------------------------------- */

/* A script that waits for a signal (task.wait_signal) takes it over: the
 * default action (interrupt, stop) is skipped while someone waits. */
typedef struct sig_op {
  kw_op op;
  int signum;
  int got;
  struct sig_op *next;
} sig_op;

static sig_op *sig_list;

/* A task waiting for a signal keeps the process alive (it waits on
 * purpose, like a server); with no waiter the handles are unref'd so they
 * never hold the loop open. */
static void sig_refresh(void) {
  int term = 0, hup = 0;
  sig_op *s;
  for (s = sig_list; s; s = s->next) {
    term |= s->signum == SIGTERM;
    hup |= s->signum == SIGHUP;
  }
  if (term)
    uv_ref((uv_handle_t *)&S.term);
  else
    uv_unref((uv_handle_t *)&S.term);
  if (hup)
    uv_ref((uv_handle_t *)&S.hup);
  else
    uv_unref((uv_handle_t *)&S.hup);
  if (S.sigint_waiters)
    uv_ref((uv_handle_t *)&S.wake);
  else
    uv_unref((uv_handle_t *)&S.wake);
}

static void sig_unlink(sig_op *s) {
  sig_op **p;
  for (p = &sig_list; *p; p = &(*p)->next)
    if (*p == s) {
      *p = s->next;
      break;
    }
  if (s->signum == SIGINT) S.sigint_waiters--;
  sig_refresh();
}

static int sig_push(kw_op *op, lua_State *L) {
  int signum = ((sig_op *)op)->signum;
  lua_pushstring(L, signum == SIGINT ? "int" : signum == SIGHUP ? "hup" : "term");
  return 1;
}

static void sig_cancel(kw_op *op) {
  sig_unlink((sig_op *)op);
  op->cancelled = 1;
  kw_op_done(op);
}

static void sig_release(kw_op *op) {
  free(op);
}

static const kw_op_class sig_class = {"task.wait_signal", sig_push, sig_cancel, sig_release};

static int deliver_signal(int signum) {
  sig_op *s = sig_list, *next;
  int n = 0;
  sig_list = NULL;
  for (; s; s = next) {
    next = s->next;
    if (s->signum == signum) {
      if (signum == SIGINT) S.sigint_waiters--;
      kw_op_done(&s->op);
      n++;
    } else {
      s->next = sig_list;
      sig_list = s;
    }
  }
  sig_refresh();
  return n;
}

static int l_wait_signal(lua_State *L) {
  static const char *const names[] = {"int", "term", "hup", NULL};
  static const int signums[] = {SIGINT, SIGTERM, SIGHUP};
  int which = luaL_checkoption(L, 1, NULL, names);
  sig_op *s = (sig_op *)malloc(sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  kw_op_init(&s->op, &sig_class);
  s->signum = signums[which];
  s->next = sig_list;
  sig_list = s;
  if (s->signum == SIGINT) S.sigint_waiters++;
  sig_refresh();
  return kw_await(L, &s->op);
}

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

/* As lua.c: the handler only arms a hook (async-signal-safe), so the running
 * Lua code raises "interrupted!" at its next instruction; the async handle
 * wakes the loop for the case where no Lua is running. */
static void on_sigint(int sig) {
  (void)sig;
  if (!S.sigint_waiters) {
    S.sigint = 1;
    if (S.running)
      lua_sethook(S.running, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  }
  (void)uv_async_send(&S.wake); /* cannot fail on an initialised handle */
}

static void on_wake(uv_async_t *h) {
  (void)h;
  if (deliver_signal(SIGINT)) return;
  if (!S.sigint) return;
  /* Idle loop: interrupt the main task where it waits, or stop. */
  if (S.main_task && S.main_task->state == TASK_WAITING && S.main_task->op) {
    kw_op *op = S.main_task->op;
    KW_CHECK(op->live);
    S.main_task->cancel_reason = "interrupted!";
    if (op->done) return; /* already due: raises the reason when resumed */
    if (op->cls->cancel)
      op->cls->cancel(op);
    else {
      op->cancelled = 1;
      kw_op_done(op);
    }
  } else {
    uv_stop(&S.loop);
  }
}

static void on_sigterm(uv_signal_t *h, int signum) {
  (void)h;
  if (deliver_signal(signum)) return;
  S.sigterm = 1;
  S.sighup = signum == SIGHUP;
  uv_stop(&S.loop);
}

int kw_sched_interrupted(void) {
  return S.sigint || S.sigterm;
}

void kw_sched_end_with_main(void) {
  S.end_with_main = 1;
}

void kw_sched_clear_interrupt(void) {
  S.sigint = 0;
  if (S.L && lua_gethook(S.L) == interrupt_hook) lua_sethook(S.L, NULL, 0, 0);
}

/* ---- the loop ------------------------------------------------------------- */

int kw_sched_step(lua_State *L, int block) {
  run_jobs(L);
  if (S.sigterm) return 0;
  if (!uv_loop_alive(&S.loop)) return S.head != NULL;
  S.in_uv_run = 1;
  uv_run(&S.loop, block && !S.head ? UV_RUN_ONCE : UV_RUN_NOWAIT);
  S.in_uv_run = 0;
  run_jobs(L);
  return !S.sigterm;
}

int kw_sched_run_main(lua_State *L, int nargs) {
  kw_task *main_task;
  kw_task_spawn(L, nargs);
  main_task = S.main_task = check_task(L, -1);
  main_task->is_main = 1;
  S.main_status = 0;
  /* The loop reads the main task after it ends (other tasks and servers
   * may outlive it), and kw_sched_main_result after that: keep its handle
   * from the collector until lua_close. */
  luaL_ref(L, LUA_REGISTRYINDEX);
  while (kw_sched_step(L, 1)) {
    if (S.sigint && !S.sigint_waiters && main_task->state >= TASK_DONE) break;
    if (S.end_with_main && main_task->state >= TASK_DONE) break;
  }
  if (S.sigterm) return S.sighup ? 129 : 143;
  if (S.sigint && main_task->state < TASK_DONE) {
    fprintf(stderr, "kpiwatch: interrupted!\n");
    return 130;
  }
  if (main_task->state < TASK_DONE) {
    fprintf(stderr, "kpiwatch: the script's main task is waiting on something that can never "
                    "complete\n");
    return 2;
  }
  if (S.main_status) return S.main_status;
  if (S.sigint) return 130;
  return S.failed_tasks && !S.end_with_main ? 2 : 0;
}

/* The main task's first result, when it is an integer, is the exit status
 * a subcommand asked for (0 when none). */
int kw_sched_main_result(lua_State *L) {
  kw_task *t = S.main_task;
  (void)L;
  if (!t || t->state != TASK_DONE || t->nresults < 1) return -1;
  if (!lua_isinteger(t->co, 1)) return -1;
  return (int)lua_tointeger(t->co, 1);
}

int kw_sched_atclose(kw_atclose_fn fn) {
  int i;
  for (i = 0; i < S.natclose; i++)
    if (S.atclose[i] == fn) return 0;
  if (S.natclose >= KW_ATCLOSE_MAX) return -1;
  S.atclose[S.natclose++] = fn;
  return 0;
}

_Noreturn void kw_check_failed(const char *expr, const char *file, int line) {
  fprintf(stderr, "kpiwatch: internal error: %s:%d: check failed: %s\n", file, line, expr);
  abort();
}

static const luaL_Reg task_funcs[] = {{"spawn", l_spawn},
                                      {"sleep", l_sleep},
                                      {"wait", l_wait},
                                      {"cancel", l_cancel},
                                      {"status", l_status},
                                      {"running", l_running},
                                      {"wait_signal", l_wait_signal},
                                      {"now", l_now},
                                      {NULL, NULL}};

static const luaL_Reg task_meta[] = {{"__tostring", l_tostring}, {NULL, NULL}};

/* Task handles exist before the module is required (the main task). */
static void open_task_metatable(lua_State *L) {
  if (luaL_newmetatable(L, TASK_MT)) {
    luaL_setfuncs(L, task_meta, 0);
    luaL_newlib(L, task_funcs);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

int luaopen_kpiwatch__task(lua_State *L) {
  luaL_newlib(L, task_funcs);
  return 1;
}

int kw_sched_open(lua_State *L) {
  struct sigaction sa;
  memset(&S, 0, sizeof S);
  sig_list = NULL;
  live_ops = NULL;
  if (uv_loop_init(&S.loop) != 0) return -1;
  S.open = 1;
  S.L = L;
  /* These fail when the process is out of descriptors or memory: then
   * there is no loop to run (kw_sched_close closes what was opened). */
  /* SIGHUP (a closed terminal, a runner hanging up) stops as SIGTERM does. */
  if (uv_async_init(&S.loop, &S.wake, on_wake) != 0 || uv_signal_init(&S.loop, &S.term) != 0 ||
      uv_signal_start(&S.term, on_sigterm, SIGTERM) != 0 || uv_signal_init(&S.loop, &S.hup) != 0 ||
      uv_signal_start(&S.hup, on_sigterm, SIGHUP) != 0) {
    kw_sched_close();
    return -1;
  }
  uv_unref((uv_handle_t *)&S.wake);
  uv_unref((uv_handle_t *)&S.term);
  uv_unref((uv_handle_t *)&S.hup);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  /* A peer that hangs up (an HTTP client, an exec hook's stdin) must give
   * EPIPE on that one write, not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  lua_newtable(L);
  lua_newtable(L); /* weak keys: reasons live as long as their handles */
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "kpiwatch.cancel_reasons");
  open_task_metatable(L);
  /* New threads copy the main thread's extra space: NULL there is what
   * marks a foreign coroutine (not a task) everywhere. */
  *(kw_task **)lua_getextraspace(L) = NULL;
  S.running = L;
  return 0;
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void kw_sched_close(void) {
  int i;
  if (!S.open) return;
  signal(SIGINT, SIG_DFL);
  /* Ops still pending (a stop by a signal, an error) belong to tasks that
   * will never run again: abort and free them first, while their modules
   * are still up (an HTTP request leaves libcurl's multi handle in its
   * release), so that no atclose hook meets an op of its own. */
  while (live_ops) {
    kw_op *op = live_ops;
    if (!op->done && op->cls->cancel) op->cls->cancel(op);
    op_release(op);
  }
  /* Their waiters' resume jobs, queued by those cancels, never run. */
  S.head = S.tail = NULL;
  for (i = S.natclose - 1; i >= 0; i--)
    S.atclose[i]();
  S.natclose = 0;
  KW_CHECK(live_ops == NULL); /* a hook may not start an op */
  uv_walk(&S.loop, close_any, NULL);
  uv_run(&S.loop, UV_RUN_DEFAULT);
  /* every handle was closed and the loop drained just above: EBUSY here is
   * a handle leaked by a module */
  KW_CHECK(uv_loop_close(&S.loop) == 0);
  S.open = 0;
}
