/*
 * embed.c - finding kpiwatch's own modules: the C modules through
 * package.preload, the Lua library through a searcher placed before the
 * file searchers, so `require "kpiwatch.alert"` never depends on the
 * current directory or on LUA_PATH.
 *
 * KPIWATCH_LUALIB=DIR makes the searcher read DIR/kpiwatch/... from disk
 * instead (the development loop: edit Lua, rerun, no rebuild).
 */
#include "embed.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

static const kw_embedded *find_embedded(const char *name) {
  const kw_embedded *m;
  for (m = kw_embedded_modules; m->name; m++)
    if (strcmp(m->name, name) == 0) return m;
  return NULL;
}

/* Searcher from a source folder: DIR/a/b.lua or DIR/a/b/init.lua. */
static int search_dir(lua_State *L, const char *dir, const char *name) {
  static const char *const templates[] = {"%s/%s.lua", "%s/%s/init.lua"};
  size_t i;
  luaL_gsub(L, name, ".", "/");
  for (i = 0; i < sizeof templates / sizeof templates[0]; i++) {
    const char *path = lua_pushfstring(L, templates[i], dir, lua_tostring(L, -1));
    FILE *f = fopen(path, "r");
    if (f) {
      fclose(f);
      if (luaL_loadfile(L, path) != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, path,
                          lua_tostring(L, -1));
      lua_pushstring(L, path);
      return 2;
    }
    lua_pop(L, 1);
  }
  lua_pushfstring(L, "no file in KPIWATCH_LUALIB '%s' for '%s'", dir, name);
  return 1;
}

static int searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *dir = getenv("KPIWATCH_LUALIB");
  const kw_embedded *m;
  if (strncmp(name, "kpiwatch", 8) != 0 || (name[8] != '.' && name[8] != '\0')) {
    lua_pushliteral(L, "not a kpiwatch module");
    return 1;
  }
  if (dir && *dir) return search_dir(L, dir, name);
  m = find_embedded(name);
  if (!m) {
    lua_pushfstring(L, "no module '%s' built into kpiwatch", name);
    return 1;
  }
  if (luaL_loadbufferx(L, (const char *)m->data, m->len, m->chunkname, "b") != LUA_OK)
    return luaL_error(L, "error loading built-in module '%s':\n\t%s", name, lua_tostring(L, -1));
  lua_pushstring(L, m->chunkname + 1);
  return 2;
}

/* _G.__index: the kpiwatch globals are loaded on first use, so that
 * `kpiwatch -e ''` pays for none of them (startup is a goal). */
static int lazy_global(lua_State *L) {
  static const char *const lazy[] = {"task", "json", "http", "kpis", NULL};
  const char *key = lua_tostring(L, 2);
  int i;
  if (!key || lua_type(L, 2) != LUA_TSTRING) return 0;
  for (i = 0; lazy[i]; i++) {
    if (strcmp(key, lazy[i]) == 0) {
      lua_getglobal(L, "require");
      lua_pushfstring(L, "kpiwatch.%s", key);
      lua_call(L, 1, 1);
      lua_pushvalue(L, 2);
      lua_pushvalue(L, -2);
      lua_rawset(L, 1);
      return 1;
    }
  }
  return 0;
}

void kw_embed_open(lua_State *L) {
  const kw_cmodule *c;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (c = kw_c_modules; c->name; c++) {
    lua_pushcfunction(L, c->open);
    lua_setfield(L, -2, c->name);
  }
  lua_pop(L, 1);

  /* package.searchers: preload, ours, then Lua's file searchers. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_pushcfunction(L, searcher);
  lua_seti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  {
    lua_Integer n = luaL_len(L, -1), i;
    for (i = n; i > 2; i--) { /* rotate ours into slot 2 */
      lua_geti(L, -1, i - 1);
      lua_geti(L, -2, i);
      lua_seti(L, -3, i - 1);
      lua_seti(L, -2, i);
    }
  }
  lua_pop(L, 2);

  lua_pushglobaltable(L);
  lua_newtable(L);
  lua_pushcfunction(L, lazy_global);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}
