/*
 * term.c - terminal facts the Lua side needs (kpiwatch._term).
 */
#include <lauxlib.h>
#include <unistd.h>

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

int luaopen_kpiwatch__term(lua_State *L) {
  static const luaL_Reg funcs[] = {{"isatty", l_isatty}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
