/*
 * dynload.h - shared libraries opened on first use instead of at start.
 *
 * libcurl and libh2o pull in some thirty further libraries (TLS, GSSAPI,
 * LDAP, SSH, ...), and libcrypto alone has thousands of relocations.
 * Mapping and relocating them took 4-5 ms of every kpiwatch start, five
 * times what the rest of a start costs, while most runs need one of them
 * or none (`kpiwatch -e`, a script that never serves, the gate). So the
 * binary does not need them at start: runtime/lazy_curl.c, lazy_h2o.c,
 * lazy_crypto.c and lazy_edit.c define the functions kpiwatch calls, under
 * their own names, as calls through a table of pointers that
 * kw_dynlib_load fills with dlopen/dlsym when the Lua module that needs
 * the library is opened (kpiwatch._http, _server, _crypto, _repl). The
 * code calling the libraries is unchanged (libedit's variables aside: see
 * lazy_edit.h), and the headers' prototypes check every shim at compile
 * time. The build still names the libraries on the link line;
 * with --as-needed (Debian's gcc default) they are dropped from the
 * executable's dependencies since nothing references them any more.
 *
 * A call of a library function that has no shim is a link error (the
 * library is not linked): add the function to the list in lazy_*.c.
 */
#ifndef KW_DYNLOAD_H
#define KW_DYNLOAD_H

#include <lua.h>

/* Marks the shims hidden: they must never be exported from the executable,
 * where they would interpose on the library's own calls to these
 * functions (a build that links the library anyway, as a sanitizer build
 * without --as-needed does, loads it at start, and its internal calls must
 * still reach its own code, loaded or not through kw_dynlib_load). */
#define KW_SHIM __attribute__((visibility("hidden")))

typedef struct kw_dynlib {
  const char *soname;       /* what to dlopen: "libcurl.so.4" */
  const char *package;      /* the Debian package that ships it, for messages */
  const char *const *names; /* the symbols to resolve, NULL-terminated */
  void **slots;             /* where to store them, in the order of names */
  int loaded;
} kw_dynlib;

/* The libraries (runtime/lazy_curl.c, lazy_h2o.c, lazy_crypto.c,
 * lazy_edit.c). */
extern kw_dynlib kw_libcurl;
extern kw_dynlib kw_libh2o;
extern kw_dynlib kw_libcrypto;
extern kw_dynlib kw_libedit;

/* Opens lib and resolves all its symbols, once; NULL on success, else a
 * message naming the library and the package to install. */
const char *kw_dynlib_load(kw_dynlib *lib);

/* kw_dynlib_load, raising a Lua error on failure (for luaopen_*). */
void kw_dynlib_require(lua_State *L, kw_dynlib *lib);

/* Called by a shim whose library was never loaded (a bug: some code path
 * reached the library before its module was opened). Does not return. */
_Noreturn void kw_dynlib_unloaded(const char *soname, const char *symbol);

#endif
