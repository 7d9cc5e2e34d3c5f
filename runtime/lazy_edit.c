/*
 * lazy_edit.c - the libedit functions and variables the REPL uses,
 * resolved with dlopen when kpiwatch._repl is opened (see dynload.h for
 * why). Functions are defined below under their own names and prototypes
 * (readline.h checks them); variables are reached through lazy_edit.h.
 */
#include <stdio.h>

#include <editline/readline.h>
#include <histedit.h>

#include "dynload.h"
#include "lazy_edit.h"

/* The readline variables' own names, for dlsym: lazy_edit.h turns the
 * identifiers into expressions from here on. */
#define X(name) #name,
static const char *const var_names[] = {KW_EDIT_VARS(X) NULL};
#undef X

/* libedit.so.2: the soname carries LIBEDIT_MAJOR. */
#define KW_STR2(x) #x
#define KW_STR(x) KW_STR2(x)
#define KW_EDIT_SONAME "libedit.so." KW_STR(LIBEDIT_MAJOR)

#define KW_EDIT_FUNCS(X)                                                                           \
  X(add_history)                                                                                   \
  X(history_truncate_file)                                                                         \
  X(read_history)                                                                                  \
  X(write_history)                                                                                 \
  X(rl_callback_handler_install)                                                                   \
  X(rl_callback_handler_remove)                                                                    \
  X(rl_callback_read_char)                                                                         \
  X(rl_deprep_terminal)                                                                            \
  X(rl_forced_update_display)                                                                      \
  X(rl_initialize)                                                                                 \
  X(rl_prep_terminal)                                                                              \
  X(rl_resize_terminal)                                                                            \
  X(stifle_history)                                                                                \
  X(using_history)

#define X(name) I_##name,
enum { KW_EDIT_FUNCS(X) KW_EDIT_NFUNCS };
#undef X

/* One table: the functions, then the variables (lazy_edit.h's order). */
#define X(name) #name,
static const char *const names[] = {KW_EDIT_FUNCS(X) KW_EDIT_VARS(X) NULL};
#undef X
static void *slots[KW_EDIT_NFUNCS + KW_EDIT_NVARS];

kw_dynlib kw_libedit = {KW_EDIT_SONAME, "libedit" KW_STR(LIBEDIT_MAJOR), names, slots, 0};

static void *fn(int i) {
  if (!slots[i]) kw_dynlib_unloaded(KW_EDIT_SONAME, names[i]);
  return slots[i];
}

void *kw_edit_var(int i) {
  void *p = slots[KW_EDIT_NFUNCS + i];
  if (!p) kw_dynlib_unloaded(KW_EDIT_SONAME, var_names[i]);
  return p;
}

#define F(name) ((__typeof__(name) *)fn(I_##name))

KW_SHIM int(add_history)(const char *line) {
  return F(add_history)(line);
}

KW_SHIM int(history_truncate_file)(const char *path, int lines) {
  return F(history_truncate_file)(path, lines);
}

KW_SHIM int(read_history)(const char *path) {
  return F(read_history)(path);
}

KW_SHIM int(write_history)(const char *path) {
  return F(write_history)(path);
}

KW_SHIM void(rl_callback_handler_install)(const char *prompt, rl_vcpfunc_t *handler) {
  F(rl_callback_handler_install)(prompt, handler);
}

KW_SHIM void(rl_callback_handler_remove)(void) {
  F(rl_callback_handler_remove)();
}

KW_SHIM void(rl_callback_read_char)(void) {
  F(rl_callback_read_char)();
}

KW_SHIM void(rl_deprep_terminal)(void) {
  F(rl_deprep_terminal)();
}

KW_SHIM void(rl_forced_update_display)(void) {
  F(rl_forced_update_display)();
}

KW_SHIM int(rl_initialize)(void) {
  return F(rl_initialize)();
}

KW_SHIM void(rl_prep_terminal)(int meta_flag) {
  F(rl_prep_terminal)(meta_flag);
}

KW_SHIM void(rl_resize_terminal)(void) {
  F(rl_resize_terminal)();
}

KW_SHIM void(stifle_history)(int max) {
  F(stifle_history)(max);
}

KW_SHIM void(using_history)(void) {
  F(using_history)();
}
