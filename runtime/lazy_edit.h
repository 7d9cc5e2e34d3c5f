/*
 * lazy_edit.h - libedit's readline variables, reached through the table
 * runtime/lazy_edit.c fills when kpiwatch._repl is opened (dynload.h says
 * why). Functions need nothing special (lazy_edit.c defines them under
 * their own names); a variable cannot be defined that way, so after this
 * header `rl_line_buffer` and the others name the library's own variables
 * through a pointer. Include it after <editline/readline.h>, only in the
 * file that uses them (runtime/repl.c).
 */
#ifndef KW_LAZY_EDIT_H
#define KW_LAZY_EDIT_H

#include <editline/readline.h>

#define KW_EDIT_VARS(X)                                                                            \
  X(rl_attempted_completion_function)                                                              \
  X(rl_attempted_completion_over)                                                                  \
  X(rl_basic_word_break_characters)                                                                \
  X(rl_catch_signals)                                                                              \
  X(rl_catch_sigwinch)                                                                             \
  X(rl_completion_append_character)                                                                \
  X(rl_line_buffer)                                                                                \
  X(rl_readline_name)

#define X(name) KW_EDIT_VAR_##name,
enum { KW_EDIT_VARS(X) KW_EDIT_NVARS };
#undef X

/* The address of variable i in the loaded library (aborts if not loaded). */
void *kw_edit_var(int i);

/* The macros name themselves in their expansion: not expanded again. */
#define rl_attempted_completion_function                                                           \
  (*(__typeof__(rl_attempted_completion_function) *)kw_edit_var(                                   \
      KW_EDIT_VAR_rl_attempted_completion_function))
#define rl_attempted_completion_over                                                               \
  (*(__typeof__(rl_attempted_completion_over) *)kw_edit_var(                                       \
      KW_EDIT_VAR_rl_attempted_completion_over))
#define rl_basic_word_break_characters                                                             \
  (*(__typeof__(rl_basic_word_break_characters) *)kw_edit_var(                                     \
      KW_EDIT_VAR_rl_basic_word_break_characters))
#define rl_catch_signals                                                                           \
  (*(__typeof__(rl_catch_signals) *)kw_edit_var(KW_EDIT_VAR_rl_catch_signals))
#define rl_catch_sigwinch                                                                          \
  (*(__typeof__(rl_catch_sigwinch) *)kw_edit_var(KW_EDIT_VAR_rl_catch_sigwinch))
#define rl_completion_append_character                                                             \
  (*(__typeof__(rl_completion_append_character) *)kw_edit_var(                                     \
      KW_EDIT_VAR_rl_completion_append_character))
#define rl_line_buffer (*(__typeof__(rl_line_buffer) *)kw_edit_var(KW_EDIT_VAR_rl_line_buffer))
#define rl_readline_name                                                                           \
  (*(__typeof__(rl_readline_name) *)kw_edit_var(KW_EDIT_VAR_rl_readline_name))

#endif
