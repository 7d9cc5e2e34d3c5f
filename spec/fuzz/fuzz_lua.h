/*
 * fuzz_lua.h - the harness shared by the libFuzzer targets of spec/fuzz.
 *
 * A target defines KW_FUZZ_DRIVER, the name of its driver in spec/fuzz/: a
 * Lua chunk returning function(input), loaded after spec/fuzz/common.lua
 * (the checking helpers, global `fuzz`). The function runs the code under
 * test on the input and checks its outcome: it returns when the outcome is
 * one the code documents (a value, or its clean error), and raises
 * otherwise. Any raise, like any crash or sanitizer report, aborts the
 * process so that libFuzzer records the input.
 *
 * The Lua interpreter is Debian's and carries no coverage instrumentation,
 * so libFuzzer alone would fuzz the Lua parsers blind. A line hook feeds
 * it Lua coverage instead, through libFuzzer's extra counters (the way
 * Atheris does for Python): one counter per (previous line, line) pair, so
 * new paths through a parser are new features.
 */
#ifndef KW_FUZZ_LUA_H
#define KW_FUZZ_LUA_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "embed.h"
#include "scheduler.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KW_FUZZ_COUNTERS (1u << 16)

/* libFuzzer finds this section through the linker's __start_/__stop_
 * symbols, clears it before each input and reads it after. */
static uint8_t kw_fuzz_counters[KW_FUZZ_COUNTERS]
    __attribute__((used, section("__libfuzzer_extra_counters")));

static lua_State *kw_fuzz_L;
static int kw_fuzz_driver = LUA_NOREF;
static uintptr_t kw_fuzz_prev;

static void kw_fuzz_hook(lua_State *L, lua_Debug *ar) {
  uintptr_t loc, edge;
  uint8_t *c;
  if (!lua_getinfo(L, "S", ar)) return;
  /* The chunk's source string lives as long as its functions: its address
   * names the file well enough within one process. */
  loc = ((uintptr_t)ar->source >> 3) * 0x9E3779B1u + (uintptr_t)ar->currentline * 0x85EBCA6Bu;
  edge = loc ^ (kw_fuzz_prev >> 1);
  kw_fuzz_prev = loc;
  c = &kw_fuzz_counters[(edge ^ (edge >> 16)) % KW_FUZZ_COUNTERS];
  if (*c < 255) (*c)++;
}

static int kw_fuzz_traceback(lua_State *L) {
  const char *msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  lua_State *L;
  (void)argc;
  (void)argv;
  L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  kw_embed_open(L);
  if (kw_sched_open(L) != 0) abort();
  lua_pushcfunction(L, kw_fuzz_traceback);
  lua_pushliteral(L, KW_FUZZ_DIR);
  lua_setglobal(L, "FUZZ_DIR");
  if (luaL_loadfile(L, KW_FUZZ_DIR "/common.lua") != LUA_OK || lua_pcall(L, 0, 0, 1) != LUA_OK ||
      luaL_loadfile(L, KW_FUZZ_DIR "/" KW_FUZZ_DRIVER) != LUA_OK ||
      lua_pcall(L, 0, 1, 1) != LUA_OK || !lua_isfunction(L, -1)) {
    fprintf(stderr, "fuzz driver %s failed to load: %s\n", KW_FUZZ_DRIVER,
            luaL_tolstring(L, -1, NULL));
    abort();
  }
  kw_fuzz_driver = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  lua_sethook(L, kw_fuzz_hook, LUA_MASKLINE, 0);
  kw_fuzz_L = L;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = kw_fuzz_L;
  kw_fuzz_prev = 0;
  lua_pushcfunction(L, kw_fuzz_traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, kw_fuzz_driver);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 1) != LUA_OK) {
    fprintf(stderr, "\n==kpiwatch fuzz== the driver rejected this input:\n%s\n",
            lua_tostring(L, -1));
    fflush(stderr);
    abort();
  }
  lua_settop(L, 0);
  return 0;
}

#endif
