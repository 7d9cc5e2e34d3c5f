/*
 * embed.h - the Lua library compiled into the binary, and the C modules.
 */
#ifndef KW_EMBED_H
#define KW_EMBED_H

#include <lua.h>
#include <stddef.h>

typedef struct {
  const char *name;      /* module name, e.g. "kpiwatch.alert" */
  const char *chunkname; /* "@lualib/kpiwatch/alert.lua" */
  const unsigned char *data;
  size_t len;
} kw_embedded;

typedef struct {
  const char *name;
  lua_CFunction open;
} kw_cmodule;

/* Both generated into embedded.c by cmake/embed.cmake. */
extern const kw_embedded kw_embedded_modules[];
extern const kw_cmodule kw_c_modules[];

/* Install the C modules in package.preload, the searcher for the embedded
 * Lua modules (or for KPIWATCH_LUALIB's folder), and the lazily loaded
 * globals (task, json, http, kpis). */
void kw_embed_open(lua_State *L);

#endif
