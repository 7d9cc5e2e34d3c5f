/*
 * scheduler.h - the event loop, the job queue, tasks and async operations.
 *
 * One libuv loop per process. The one rule that keeps everything sound:
 * Lua never runs inside a libuv, libcurl or h2o callback. Callbacks only
 * complete an operation (kw_op_done) or queue a job (kw_job_post); the
 * scheduler runs queued jobs, which may run Lua, between turns of the loop.
 * uv_run is not reentrant, and this is also what makes the non-yieldable
 * fallback (kw_await from a thread that cannot yield) safe: it turns the
 * loop from outside any callback.
 */
#ifndef KW_SCHEDULER_H
#define KW_SCHEDULER_H

#include <lua.h>
#include <uv.h>

/* A deferred piece of work, run by the scheduler between loop turns. */
typedef struct kw_job kw_job;
struct kw_job {
  void (*run)(lua_State *L, kw_job *job);
  kw_job *next;
};

/* Queue a job; safe from any libuv/libcurl/h2o callback, never runs Lua. */
void kw_job_post(kw_job *job);

/*
 * An async operation a task can wait on. A binding allocates a struct whose
 * first member is a kw_op, starts its I/O and returns kw_await(L, op). The
 * I/O callback calls kw_op_done(op) exactly once. The scheduler then resumes
 * the waiter, which calls cls->push to produce the results, then cls->release.
 */
typedef struct kw_op kw_op;
typedef struct kw_op_class {
  const char *name;
  /* Push the results on L and return how many; or push an error value and
   * return -1 to raise it in the waiter. */
  int (*push)(kw_op *op, lua_State *L);
  /* Abort the I/O; the op must still reach kw_op_done later (its push is
   * then not called). May be NULL when the op cannot be aborted. */
  void (*cancel)(kw_op *op);
  /* Free the op (after done). May close handles and free in their close
   * callbacks. */
  void (*release)(kw_op *op);
} kw_op_class;

struct kw_task;

/*
 * Who owns an op: the binding allocates it, but from kw_op_init on it
 * belongs to the scheduler, which releases it exactly once (cls->release):
 * when its waiter resumes, when the fallback loop gives up on it, or at
 * kw_sched_close for an op whose task never resumed. A binding never frees
 * an op that kw_op_init linked (a failure before kw_await must happen before
 * kw_op_init), and may complete or cancel it only while it is live: after
 * release the op may still exist until its handles' close callbacks run,
 * but it is no longer reachable from the scheduler or the binding's
 * queues. kw_sched_close releases the leftover ops before the atclose hooks,
 * so a release always finds its module (libcurl's multi handle, a server)
 * still up; a hook finds no op of its module left.
 */
struct kw_op {
  const kw_op_class *cls;
  struct kw_task *waiter; /* NULL while waited on by the fallback loop */
  int done;
  int cancelled;
  int live;                     /* between kw_op_init and its release */
  kw_op *live_prev, *live_next; /* every op not yet released (for shutdown) */
};

void kw_op_init(kw_op *op, const kw_op_class *cls);
void kw_op_done(kw_op *op);

/* Wait for op from Lua: yields the calling task when it can, otherwise runs
 * the loop until op is done. Use as `return kw_await(L, op);`. The op is
 * released before this returns (or raises). */
int kw_await(lua_State *L, kw_op *op);

/* Cancel what the task is waiting on; when it resumes it raises `reason`. */
void kw_task_cancel(lua_State *L, int idx, const char *reason);

/* Spawn a task running the function at the top of L's stack, below nargs
 * arguments (both popped); pushes the task handle. Starts on the next
 * scheduler step. */
void kw_task_spawn(lua_State *L, int nargs);

/* The process's loop. */
uv_loop_t *kw_loop(void);

/* Run one scheduler step: drain the job queue, then one turn of the loop
 * (UV_RUN_ONCE) if block is set, otherwise UV_RUN_NOWAIT. Returns 0 when
 * nothing is left that could ever make progress. */
int kw_sched_step(lua_State *L, int block);

/* Run the script's main function (at the top of L) as the main task until
 * it and every other task and handle have finished. Returns the process
 * exit status for a script (0, or 2 when the main task raised). */
int kw_sched_run_main(lua_State *L, int nargs);

/* The main task's first result when it is an integer (the exit status a
 * subcommand asked for), or -1. */
int kw_sched_main_result(lua_State *L);

/* Register something that must be torn down before the loop is closed
 * (libcurl's multi handle must be cleaned up before uv_loop_close).
 * Registering the same fn twice registers it once. Returns 0, or -1 when
 * the table (KW_ATCLOSE_MAX hooks) is full: the caller must fail loudly,
 * since a hook that never runs leaks what it was to tear down. */
#define KW_ATCLOSE_MAX 8
typedef void (*kw_atclose_fn)(void);
int kw_sched_atclose(kw_atclose_fn fn);

/* An invariant, checked in every build (as libuv's assert-style checks of
 * its own state): a libuv call that can only fail through a bug of ours
 * (uv_timer_start on a handle we own and never closed, ...) is wrapped in
 * KW_CHECK(... == 0). A failure prints the expression and aborts. Calls
 * that can fail at run time (out of descriptors, memory) are handled
 * where they are made instead. */
#define KW_CHECK(expr) ((expr) ? (void)0 : kw_check_failed(#expr, __FILE__, __LINE__))
_Noreturn void kw_check_failed(const char *expr, const char *file, int line);

/* Create and close the loop; kw_sched_close cancels and releases the ops
 * still pending, runs the atclose hooks, closes every remaining handle and
 * drains the loop. */
int kw_sched_open(lua_State *L);
void kw_sched_close(void);

/* Non-zero after SIGINT (used for the exit status). */
int kw_sched_interrupted(void);

/* Forget a SIGINT the caller has dealt with (the REPL cancelled its chunk
 * and is back at the prompt): the process is no longer "interrupted", and
 * the interrupt hook armed on the main thread while the loop was idle is
 * removed, so the next Lua run there does not raise. */
void kw_sched_clear_interrupt(void);

/* Make the run end when the main task ends (the REPL at Ctrl-D): tasks
 * started at the prompt and still running are abandoned, as after os.exit,
 * and tasks that failed there (already reported on the terminal) do not
 * turn the exit status into 2. */
void kw_sched_end_with_main(void);

/* The C core of the `task` module (kpiwatch._task). */
int luaopen_kpiwatch__task(lua_State *L);

#endif
