/*
 * dynload.c - opening libcurl and libh2o on first use (see dynload.h).
 */
#include "dynload.h"

#include <dlfcn.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>

const char *kw_dynlib_load(kw_dynlib *lib) {
  static char msg[512];
  void *h;
  size_t i;
  if (lib->loaded) return NULL;
  /* RTLD_LOCAL: its symbols stay out of the global scope, so nothing else
   * binds to them by accident; its own dependencies (libuv, libssl) are
   * resolved as usual. RTLD_LAZY, as the loader does at start: RTLD_NOW
   * would bind every function of libcurl's thirty dependencies at once
   * (3 million more instructions for the gate). The symbols kpiwatch uses
   * are all checked below. */
  h = dlopen(lib->soname, RTLD_LAZY | RTLD_LOCAL);
  if (!h) {
    snprintf(msg, sizeof msg, "cannot load %s (install the Debian package %s): %s", lib->soname,
             lib->package, dlerror());
    return msg;
  }
  for (i = 0; lib->names[i]; i++) {
    void *p = dlsym(h, lib->names[i]);
    if (!p) {
      snprintf(msg, sizeof msg, "%s has no symbol %s (an incompatible version?)", lib->soname,
               lib->names[i]);
      /* the slots filled so far are never used: loaded stays 0 */
      dlclose(h);
      for (size_t j = 0; j < i; j++)
        lib->slots[j] = NULL;
      return msg;
    }
    lib->slots[i] = p;
  }
  /* Never dlclose'd: libcurl and libh2o register atexit handlers and
   * thread-local destructors (OpenSSL) that must outlive the loop. */
  lib->loaded = 1;
  return NULL;
}

void kw_dynlib_require(lua_State *L, kw_dynlib *lib) {
  const char *err = kw_dynlib_load(lib);
  if (err) luaL_error(L, "%s", err);
}

_Noreturn void kw_dynlib_unloaded(const char *soname, const char *symbol) {
  fprintf(stderr, "kpiwatch: internal error: %s called before %s was loaded\n", symbol, soname);
  abort();
}
