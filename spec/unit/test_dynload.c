/* Unit tests of runtime/dynload.c: opening a library on first use, and
 * the messages when it cannot be (the real libraries are exercised by
 * every HTTP spec; e2e/test_lazy_libs checks that they load late). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <string.h>

#include "dynload.h"

static void test_resolves_every_symbol_once(void **state) {
  static const char *const names[] = {"cos", "sqrt", NULL};
  void *slots[2] = {NULL, NULL};
  kw_dynlib lib = {"libm.so.6", "libc6", names, slots, 0};
  double (*cosine)(double);
  (void)state;
  assert_null(kw_dynlib_load(&lib));
  assert_int_equal(lib.loaded, 1);
  assert_non_null(slots[0]);
  assert_non_null(slots[1]);
  *(void **)&cosine = slots[0];
  assert_true(cosine(0.0) == 1.0);
  /* a second load is a no-op that succeeds */
  slots[0] = NULL;
  assert_null(kw_dynlib_load(&lib));
  assert_null(slots[0]);
}

static void test_missing_library_names_it_and_its_package(void **state) {
  static const char *const names[] = {"anything", NULL};
  void *slots[1] = {NULL};
  kw_dynlib lib = {"libkw-no-such-library.so.7", "libkw-no-such7", names, slots, 0};
  const char *err;
  (void)state;
  err = kw_dynlib_load(&lib);
  assert_non_null(err);
  assert_non_null(strstr(err, "cannot load libkw-no-such-library.so.7"));
  assert_non_null(strstr(err, "install the Debian package libkw-no-such7"));
  assert_int_equal(lib.loaded, 0);
}

static void test_missing_symbol_leaves_nothing_half_loaded(void **state) {
  static const char *const names[] = {"cos", "kw_no_such_function", NULL};
  void *slots[2] = {NULL, NULL};
  kw_dynlib lib = {"libm.so.6", "libc6", names, slots, 0};
  const char *err;
  (void)state;
  err = kw_dynlib_load(&lib);
  assert_non_null(err);
  assert_non_null(strstr(err, "libm.so.6 has no symbol kw_no_such_function"));
  assert_int_equal(lib.loaded, 0);
  assert_null(slots[0]);
  assert_null(slots[1]);
}

static int require_missing(lua_State *L) {
  static const char *const names[] = {"anything", NULL};
  static void *slots[1];
  static kw_dynlib lib = {"libkw-no-such-library.so.7", "libkw-no-such7", names, slots, 0};
  kw_dynlib_require(L, &lib);
  return 0;
}

static void test_require_raises_a_lua_error(void **state) {
  lua_State *L = luaL_newstate();
  (void)state;
  lua_pushcfunction(L, require_missing);
  assert_int_equal(lua_pcall(L, 0, 0, 0), LUA_ERRRUN);
  assert_non_null(strstr(lua_tostring(L, -1), "cannot load libkw-no-such-library.so.7"));
  lua_close(L);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resolves_every_symbol_once),
      cmocka_unit_test(test_missing_library_names_it_and_its_package),
      cmocka_unit_test(test_missing_symbol_leaves_nothing_half_loaded),
      cmocka_unit_test(test_require_raises_a_lua_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
