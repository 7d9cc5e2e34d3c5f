/*
 * lazy_curl.c - the libcurl functions kpiwatch calls, resolved with dlopen
 * when kpiwatch._http is opened (see dynload.h for why). Each definition
 * below has the name and the prototype of the libcurl function it stands
 * for (curl.h checks them), and calls the library's through the table.
 */
#include <stdarg.h>

#include <curl/curl.h>

#include "dynload.h"

/* libcurl's soname has been libcurl.so.4 since 7.16 (2006); the ABI is
 * kept compatible within it. */
#define KW_CURL_SONAME "libcurl.so.4"

#define KW_CURL_FUNCS(X)                                                                           \
  X(curl_global_init)                                                                              \
  X(curl_global_cleanup)                                                                           \
  X(curl_easy_init)                                                                                \
  X(curl_easy_cleanup)                                                                             \
  X(curl_easy_reset)                                                                               \
  X(curl_easy_setopt)                                                                              \
  X(curl_easy_getinfo)                                                                             \
  X(curl_easy_strerror)                                                                            \
  X(curl_multi_init)                                                                               \
  X(curl_multi_cleanup)                                                                            \
  X(curl_multi_add_handle)                                                                         \
  X(curl_multi_remove_handle)                                                                      \
  X(curl_multi_setopt)                                                                             \
  X(curl_multi_assign)                                                                             \
  X(curl_multi_socket_action)                                                                      \
  X(curl_multi_info_read)                                                                          \
  X(curl_multi_strerror)                                                                           \
  X(curl_slist_append)                                                                             \
  X(curl_slist_free_all)

#define X(name) I_##name,
enum { KW_CURL_FUNCS(X) KW_CURL_N };
#undef X
#define X(name) #name,
static const char *const names[] = {KW_CURL_FUNCS(X) NULL};
#undef X
static void *slots[KW_CURL_N];

kw_dynlib kw_libcurl = {KW_CURL_SONAME, "libcurl4", names, slots, 0};

static void *fn(int i) {
  if (!slots[i]) kw_dynlib_unloaded(KW_CURL_SONAME, names[i]);
  return slots[i];
}

/* The library's function with the type of its declaration in curl.h (the
 * name is not followed by '(' here, so curl.h's type-checking macros for
 * curl_easy_setopt and friends leave it alone). */
#define F(name) ((__typeof__(name) *)fn(I_##name))

/* Parenthesized names: some are also function-like macros in curl.h. */
KW_SHIM CURLcode(curl_global_init)(long flags) {
  return F(curl_global_init)(flags);
}

KW_SHIM void(curl_global_cleanup)(void) {
  F(curl_global_cleanup)();
}

KW_SHIM CURL *(curl_easy_init)(void) {
  return F(curl_easy_init)();
}

KW_SHIM void(curl_easy_cleanup)(CURL *curl) {
  F(curl_easy_cleanup)(curl);
}

KW_SHIM void(curl_easy_reset)(CURL *curl) {
  F(curl_easy_reset)(curl);
}

/* The variadic ones pass their one argument on with the type libcurl reads
 * it as, which the option's number range decides (as in libcurl's
 * setopt.c): long, object pointer, function pointer, curl_off_t, blob
 * (a pointer too). */
KW_SHIM CURLcode(curl_easy_setopt)(CURL *curl, CURLoption option, ...) {
  __typeof__(curl_easy_setopt) *f = F(curl_easy_setopt);
  CURLcode rc;
  va_list ap;
  va_start(ap, option);
  /* NOLINTBEGIN(bugprone-branch-clone): the branches differ in the type
   * va_arg reads, which is the point */
  if (option < CURLOPTTYPE_OBJECTPOINT)
    rc = f(curl, option, va_arg(ap, long));
  else if (option < CURLOPTTYPE_FUNCTIONPOINT || option >= CURLOPTTYPE_BLOB)
    rc = f(curl, option, va_arg(ap, void *));
  else if (option < CURLOPTTYPE_OFF_T)
    rc = f(curl, option, va_arg(ap, void (*)(void)));
  else
    rc = f(curl, option, va_arg(ap, curl_off_t));
  /* NOLINTEND(bugprone-branch-clone) */
  va_end(ap);
  return rc;
}

/* Every CURLINFO_* takes a pointer to where the value goes. */
KW_SHIM CURLcode(curl_easy_getinfo)(CURL *curl, CURLINFO info, ...) {
  CURLcode rc;
  va_list ap;
  va_start(ap, info);
  rc = F(curl_easy_getinfo)(curl, info, va_arg(ap, void *));
  va_end(ap);
  return rc;
}

KW_SHIM const char *(curl_easy_strerror)(CURLcode code) {
  return F(curl_easy_strerror)(code);
}

KW_SHIM CURLM *(curl_multi_init)(void) {
  return F(curl_multi_init)();
}

KW_SHIM CURLMcode(curl_multi_cleanup)(CURLM *multi) {
  return F(curl_multi_cleanup)(multi);
}

KW_SHIM CURLMcode(curl_multi_add_handle)(CURLM *multi, CURL *curl) {
  return F(curl_multi_add_handle)(multi, curl);
}

KW_SHIM CURLMcode(curl_multi_remove_handle)(CURLM *multi, CURL *curl) {
  return F(curl_multi_remove_handle)(multi, curl);
}

KW_SHIM CURLMcode(curl_multi_setopt)(CURLM *multi, CURLMoption option, ...) {
  __typeof__(curl_multi_setopt) *f = F(curl_multi_setopt);
  CURLMcode rc;
  va_list ap;
  va_start(ap, option);
  /* NOLINTBEGIN(bugprone-branch-clone): as in curl_easy_setopt */
  if (option < CURLOPTTYPE_OBJECTPOINT)
    rc = f(multi, option, va_arg(ap, long));
  else if (option < CURLOPTTYPE_FUNCTIONPOINT)
    rc = f(multi, option, va_arg(ap, void *));
  else if (option < CURLOPTTYPE_OFF_T)
    rc = f(multi, option, va_arg(ap, void (*)(void)));
  else
    rc = f(multi, option, va_arg(ap, curl_off_t));
  /* NOLINTEND(bugprone-branch-clone) */
  va_end(ap);
  return rc;
}

KW_SHIM CURLMcode(curl_multi_assign)(CURLM *multi, curl_socket_t sockfd, void *sockp) {
  return F(curl_multi_assign)(multi, sockfd, sockp);
}

KW_SHIM CURLMcode(curl_multi_socket_action)(CURLM *multi, curl_socket_t s, int ev_bitmask,
                                            int *running_handles) {
  return F(curl_multi_socket_action)(multi, s, ev_bitmask, running_handles);
}

KW_SHIM CURLMsg *(curl_multi_info_read)(CURLM *multi, int *msgs_in_queue) {
  return F(curl_multi_info_read)(multi, msgs_in_queue);
}

KW_SHIM const char *(curl_multi_strerror)(CURLMcode code) {
  return F(curl_multi_strerror)(code);
}

KW_SHIM struct curl_slist *(curl_slist_append)(struct curl_slist *list, const char *data) {
  return F(curl_slist_append)(list, data);
}

KW_SHIM void(curl_slist_free_all)(struct curl_slist *list) {
  F(curl_slist_free_all)(list);
}
