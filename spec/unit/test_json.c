/* Unit tests of runtime/json.c: the lua-cjson 2.1.0 quirks kpiwatch fixes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

int luaopen_kpiwatch_json(lua_State *L);

static int setup(void **state) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "json", luaopen_kpiwatch_json, 1);
  lua_pop(L, 1);
  *state = L;
  return 0;
}

static int teardown(void **state) {
  lua_close((lua_State *)*state);
  return 0;
}

/* Run `return <expr>` and leave its one result on the stack. */
static void eval(lua_State *L, const char *expr) {
  char buf[1024];
  snprintf(buf, sizeof buf, "return %s", expr);
  if (luaL_dostring(L, buf) != LUA_OK) fail_msg("%s: %s", expr, lua_tostring(L, -1));
}

static void test_integral_numbers_are_integers(void **state) {
  lua_State *L = *state;
  eval(L, "json.decode('{\"n\": 50, \"f\": 1.5, \"neg\": -3, \"big\": 1e300}')");
  lua_getfield(L, -1, "n");
  assert_true(lua_isinteger(L, -1));
  assert_int_equal(lua_tointeger(L, -1), 50);
  lua_getfield(L, -2, "f");
  assert_false(lua_isinteger(L, -1));
  lua_getfield(L, -3, "neg");
  assert_int_equal(lua_tointeger(L, -1), -3);
  lua_getfield(L, -4, "big");
  assert_false(lua_isinteger(L, -1)); /* out of exact range: stays a float */
  lua_settop(L, 0);
}

static void test_nested_and_top_level_integers(void **state) {
  lua_State *L = *state;
  eval(L, "math.type(json.decode('[[1, [2]]]')[1][2][1]) .. math.type(json.decode('7'))");
  assert_string_equal(lua_tostring(L, -1), "integerinteger");
  lua_settop(L, 0);
}

static void test_empty_array_round_trip(void **state) {
  lua_State *L = *state;
  eval(L, "json.encode(json.decode('{\"a\": [ ], \"o\": {}, \"s\": \"[]\"}').a)");
  assert_string_equal(lua_tostring(L, -1), "[]");
  eval(L, "json.encode(json.decode('[[], {}, \"[ ]\"]'))");
  assert_string_equal(lua_tostring(L, -1), "[[],{},\"[ ]\"]");
  eval(L, "json.encode(json.array())");
  assert_string_equal(lua_tostring(L, -1), "[]");
  /* encoding must not leave the marker in the caller's table */
  eval(L, "(function() local t = json.array(); json.encode({t}); return #t end)()");
  assert_int_equal(lua_tointeger(L, -1), 0);
  lua_settop(L, 0);
}

static void test_null_is_exposed(void **state) {
  lua_State *L = *state;
  eval(L, "json.decode('{\"x\": null}').x == json.null");
  assert_true(lua_toboolean(L, -1));
  eval(L, "json.encode({a = json.null})");
  assert_string_equal(lua_tostring(L, -1), "{\"a\":null}");
  lua_settop(L, 0);
}

static void test_errors_say_where(void **state) {
  lua_State *L = *state;
  const char *msg;
  assert_int_not_equal(luaL_dostring(L, "return json.decode('{\"a\": [], \"b\": tru}')"), LUA_OK);
  msg = lua_tostring(L, -1);
  assert_non_null(strstr(msg, "invalid JSON"));
  /* the position is in the caller's text (char 16), not in a rewrite */
  assert_non_null(strstr(msg, "character 16"));
  lua_settop(L, 0);
}

static void test_deep_nesting_is_an_error_not_a_crash(void **state) {
  lua_State *L = *state;
  assert_int_not_equal(luaL_dostring(L, "return json.decode(string.rep('[', 100000))"), LUA_OK);
  assert_non_null(strstr(lua_tostring(L, -1), "invalid JSON"));
  lua_settop(L, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_integral_numbers_are_integers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nested_and_top_level_integers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_empty_array_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_null_is_exposed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_errors_say_where, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deep_nesting_is_an_error_not_a_crash, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
