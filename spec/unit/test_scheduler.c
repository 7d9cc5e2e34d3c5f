/* Unit tests of runtime/scheduler.c: tasks, ops and the fallback wait,
 * driven from C the way main.c drives a script. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "embed.h"
#include "scheduler.h"

static lua_State *L;

static int setup(void **state) {
  (void)state;
  L = luaL_newstate();
  luaL_openlibs(L);
  kw_embed_open(L);
  assert_int_equal(kw_sched_open(L), 0);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  kw_sched_close();
  lua_close(L);
  return 0;
}

/* Run chunk as the main task; returns the scheduler's exit status. */
static int run(const char *chunk) {
  if (luaL_loadstring(L, chunk) != LUA_OK) fail_msg("%s", lua_tostring(L, -1));
  return kw_sched_run_main(L, 0);
}

static const char *global_string(const char *name) {
  lua_getglobal(L, name);
  return lua_tostring(L, -1);
}

static void test_sleeping_tasks_finish_in_time_order(void **state) {
  (void)state;
  assert_int_equal(run("out = ''\n"
                       "local a = task.spawn(function() task.sleep(0.05) out = out .. 'a' end)\n"
                       "local b = task.spawn(function() task.sleep(0.01) out = out .. 'b' end)\n"
                       "task.wait(a) task.wait(b)"),
                   0);
  assert_string_equal(global_string("out"), "ba");
}

static void test_main_task_error_is_status_2(void **state) {
  (void)state;
  assert_int_equal(run("error('boom')"), 2);
}

static void test_failed_task_does_not_stop_others(void **state) {
  (void)state;
  assert_int_equal(run("task.spawn(function() error('x') end)\n"
                       "done = task.wait(task.spawn(function() task.sleep(0.01) return 'ok' end))"),
                   2 /* an unobserved task error makes the run fail */);
  assert_string_equal(global_string("done"), "ok");
}

static void test_wait_returns_results_and_raises_errors(void **state) {
  (void)state;
  assert_int_equal(
      run("local t = task.spawn(function(a, b) task.sleep(0) return a + b, 'x' end, 1, 2)\n"
          "local s, x = task.wait(t)\n"
          "local ok, e = pcall(task.wait, task.spawn(function() error('bad', 0) end))\n"
          "res = s .. x .. tostring(ok) .. e"),
      0);
  assert_string_equal(global_string("res"), "3xfalsebad");
}

static void test_fallback_outside_a_task(void **state) {
  (void)state;
  /* A foreign coroutine cannot yield to the scheduler: sleep turns the loop. */
  assert_int_equal(run("res = coroutine.wrap(function() task.sleep(0.01) return 'fb' end)()"), 0);
  assert_string_equal(global_string("res"), "fb");
}

static void test_cancel_raises_in_the_waiting_task(void **state) {
  (void)state;
  assert_int_equal(run("local t = task.spawn(function() task.sleep(10) end)\n"
                       "task.sleep(0.01) task.cancel(t, 'stop')\n"
                       "local ok, e = pcall(task.wait, t) res = tostring(ok) .. e"),
                   0);
  assert_string_equal(global_string("res"), "falsestop");
}

static int hooks_run;
#define HOOK(n)                                                                                    \
  static void hook##n(void) {                                                                      \
    hooks_run |= 1 << (n);                                                                         \
  }
HOOK(0)
HOOK(1)
HOOK(2)
HOOK(3)
HOOK(4)
HOOK(5)
HOOK(6)
HOOK(7)
HOOK(8)

/* A hook that does not fit is refused, never dropped without a word; the
 * ones registered all run at close, and a second registration of the same
 * hook is not a new one. */
static void test_atclose_refuses_a_hook_beyond_the_table(void **state) {
  static const kw_atclose_fn hooks[] = {hook0, hook1, hook2, hook3, hook4,
                                        hook5, hook6, hook7, hook8};
  int i, registered = 0;
  (void)state;
  hooks_run = 0;
  /* the modules opened so far may hold a few places already */
  for (i = 0; i < 9; i++)
    if (kw_sched_atclose(hooks[i]) == 0) registered |= 1 << i;
  assert_int_equal(kw_sched_atclose(hook8), registered & (1 << 8) ? 0 : -1);
  assert_int_not_equal(registered, (1 << 9) - 1);
  assert_int_equal(kw_sched_atclose(hook0), 0);
  kw_sched_close();
  assert_int_equal(hooks_run, registered);
  assert_int_equal(kw_sched_open(L), 0); /* for teardown */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_sleeping_tasks_finish_in_time_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_main_task_error_is_status_2, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failed_task_does_not_stop_others, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_returns_results_and_raises_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fallback_outside_a_task, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_raises_in_the_waiting_task, setup, teardown),
      cmocka_unit_test_setup_teardown(test_atclose_refuses_a_hook_beyond_the_table, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
