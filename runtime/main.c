/*
 * main.c - the kpiwatch executable.
 *
 * C creates the interpreter and the loop and hands argv to the Lua driver
 * (kpiwatch.cli), which parses the lua.c-compatible command line and the
 * kpiwatch commands and runs as the main task. The exit status is the
 * driver's result, or the scheduler's when the main task failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "embed.h"
#include "scheduler.h"

/* -E must be known before the standard libraries read LUA_PATH/LUA_CPATH:
 * scan the options the way lua.c's collectargs does, up to the script. */
static int wants_noenv(int argc, char **argv) {
  int i;
  for (i = 1; i < argc && argv[i][0] == '-'; i++) {
    if (strcmp(argv[i], "--") == 0 || strcmp(argv[i], "-") == 0) break;
    if (strcmp(argv[i], "-E") == 0) return 1;
    if ((strcmp(argv[i], "-e") == 0 || strcmp(argv[i], "-l") == 0) && i + 1 < argc) i++;
  }
  return 0;
}

/* Started with stdin, stdout or stderr closed (`>&-`), the next open()
 * would get that number: libuv's own descriptors would become fd 0-2, a
 * print would write into an eventfd or a socket, and libuv aborts on the
 * confusion. Fill each closed one with /dev/null first, as daemons do
 * (lowest number first, so open() returns exactly the closed fd). */
static int fill_std_fds(void) {
  int fd;
  for (fd = 0; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    if (open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) return -1;
  }
  return 0;
}

/* Runs unprotected work (opening libraries, loading the driver) under
 * lua_pcall so that an out-of-memory error is reported, not fatal. */
static int boot(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int i;
  if (wants_noenv(argc, argv)) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  kw_embed_open(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "kpiwatch.cli");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc, 0);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  return 2; /* cli.main, argv */
}

int main(int argc, char **argv) {
  lua_State *L;
  int status, code;
  if (fill_std_fds() != 0) return 2; /* nowhere to say why: stderr is closed */
  L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "kpiwatch: cannot create the Lua state: not enough memory\n");
    return 2;
  }
  lua_gc(L, LUA_GCGEN, 0, 0); /* as lua.c: generational mode */
  if (kw_sched_open(L) != 0) {
    fprintf(stderr, "kpiwatch: cannot initialise the event loop\n");
    lua_close(L);
    return 2;
  }
  lua_pushcfunction(L, boot);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) {
    fprintf(stderr, "kpiwatch: %s\n", lua_tostring(L, -1));
    kw_sched_close();
    lua_close(L);
    return 2;
  }
  status = kw_sched_run_main(L, 1);
  code = kw_sched_main_result(L);
  if (status == 0 && code >= 0) status = code;
  fflush(stdout);
  kw_sched_close();
  lua_close(L);
  return status;
}
