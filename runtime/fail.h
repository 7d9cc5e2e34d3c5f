/*
 * fail.h - the one shape of a failure returned from C to Lua.
 *
 * A C function that can fail for reasons outside the caller's control (a
 * file, a process, the network) returns, as luaL_fileresult does:
 *
 *     nil, message, code
 *
 *   message  one line for a human, naming what failed ("open /x: No such
 *            file or directory", "cannot run 'foo': no such file ...")
 *   code     what a program tests:
 *            - an errno number (integer) when the failure is a system
 *              call's: files, directories, processes (ENOENT, EACCES, ...);
 *            - a short kind string when there is no errno to give: the
 *              HTTP client's and server's "timeout", "connect", "dns",
 *              "tls", "too_large", "network", "bind", "listen", ... and
 *              "invalid" for malformed input (base64).
 *
 * Bad arguments (a wrong type, an unknown option) are programming errors
 * and raise with luaL_error/luaL_argerror instead.
 */
#ifndef KW_FAIL_H
#define KW_FAIL_H

#include <lauxlib.h>
#include <lua.h>

/* The message is on top of the stack (lua_pushfstring): replaces it with
 * nil, message, errno and returns the number of results. */
static inline int kw_fail_errno(lua_State *L, int err) {
  luaL_pushfail(L);
  lua_insert(L, -2);
  lua_pushinteger(L, err);
  return 3;
}

/* The same with a kind string as the code. */
static inline int kw_fail_kind(lua_State *L, const char *kind) {
  luaL_pushfail(L);
  lua_insert(L, -2);
  lua_pushstring(L, kind);
  return 3;
}

#endif
