/*
 * lazy_h2o.c - the libh2o functions kpiwatch calls, resolved with dlopen
 * when kpiwatch._server is opened (see dynload.h for why). Each definition
 * below has the name and the prototype of the libh2o function it stands
 * for (h2o.h checks them), and calls the library's through the table.
 * h2o.h's inline helpers call some of these too: they are all here.
 */
#include <h2o.h>
#include <h2o/version.h>

#include "dynload.h"

/* libh2o's soname carries its library version's major and minor numbers
 * (libh2o.so.0.13 for 2.2.x): take them from the headers compiled against,
 * so that the library opened is the one whose structures we use. */
#define KW_STR2(x) #x
#define KW_STR(x) KW_STR2(x)
#define KW_H2O_SOVERSION KW_STR(H2O_LIBRARY_VERSION_MAJOR) "." KW_STR(H2O_LIBRARY_VERSION_MINOR)
#define KW_H2O_SONAME "libh2o.so." KW_H2O_SOVERSION

#define KW_H2O_FUNCS(X)                                                                            \
  X(h2o_accept)                                                                                    \
  X(h2o_add_header_by_str)                                                                         \
  X(h2o_config_dispose)                                                                            \
  X(h2o_config_init)                                                                               \
  X(h2o_config_register_host)                                                                      \
  X(h2o_config_register_path)                                                                      \
  X(h2o_context_dispose)                                                                           \
  X(h2o_context_init)                                                                              \
  X(h2o_context_request_shutdown)                                                                  \
  X(h2o_create_handler)                                                                            \
  X(h2o_mem_alloc_pool)                                                                            \
  X(h2o_mem_alloc_shared)                                                                          \
  X(h2o_send)                                                                                      \
  X(h2o_send_error_generic)                                                                        \
  X(h2o_socket_get_fd)                                                                             \
  X(h2o_start_response)                                                                            \
  X(h2o_strdup)                                                                                    \
  X(h2o_timeout_unlink)                                                                            \
  X(h2o_uv_socket_create)

#define X(name) I_##name,
enum { KW_H2O_FUNCS(X) KW_H2O_N };
#undef X
#define X(name) #name,
static const char *const names[] = {KW_H2O_FUNCS(X) NULL};
#undef X
static void *slots[KW_H2O_N];

kw_dynlib kw_libh2o = {KW_H2O_SONAME, "libh2o" KW_H2O_SOVERSION, names, slots, 0};

static void *fn(int i) {
  if (!slots[i]) kw_dynlib_unloaded(KW_H2O_SONAME, names[i]);
  return slots[i];
}

#define F(name) ((__typeof__(name) *)fn(I_##name))

KW_SHIM void(h2o_accept)(h2o_accept_ctx_t *ctx, h2o_socket_t *sock) {
  F(h2o_accept)(ctx, sock);
}

KW_SHIM void(h2o_add_header_by_str)(h2o_mem_pool_t *pool, h2o_headers_t *headers, const char *name,
                                    size_t name_len, int maybe_token, const char *orig_name,
                                    const char *value, size_t value_len) {
  F(h2o_add_header_by_str)(pool, headers, name, name_len, maybe_token, orig_name, value, value_len);
}

KW_SHIM void(h2o_config_dispose)(h2o_globalconf_t *config) {
  F(h2o_config_dispose)(config);
}

KW_SHIM void(h2o_config_init)(h2o_globalconf_t *config) {
  F(h2o_config_init)(config);
}

KW_SHIM h2o_hostconf_t *(h2o_config_register_host)(h2o_globalconf_t *config, h2o_iovec_t host,
                                                   uint16_t port) {
  return F(h2o_config_register_host)(config, host, port);
}

KW_SHIM h2o_pathconf_t *(h2o_config_register_path)(h2o_hostconf_t *hostconf, const char *path,
                                                   int flags) {
  return F(h2o_config_register_path)(hostconf, path, flags);
}

KW_SHIM void(h2o_context_dispose)(h2o_context_t *context) {
  F(h2o_context_dispose)(context);
}

KW_SHIM void(h2o_context_init)(h2o_context_t *context, h2o_loop_t *loop, h2o_globalconf_t *config) {
  F(h2o_context_init)(context, loop, config);
}

KW_SHIM void(h2o_context_request_shutdown)(h2o_context_t *context) {
  F(h2o_context_request_shutdown)(context);
}

KW_SHIM h2o_handler_t *(h2o_create_handler)(h2o_pathconf_t *conf, size_t sz) {
  return F(h2o_create_handler)(conf, sz);
}

KW_SHIM void *(h2o_mem_alloc_pool)(h2o_mem_pool_t *pool, size_t sz) {
  return F(h2o_mem_alloc_pool)(pool, sz);
}

KW_SHIM void *(h2o_mem_alloc_shared)(h2o_mem_pool_t *pool, size_t sz, void (*dispose)(void *)) {
  return F(h2o_mem_alloc_shared)(pool, sz, dispose);
}

KW_SHIM void(h2o_send)(h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt, h2o_send_state_t state) {
  F(h2o_send)(req, bufs, bufcnt, state);
}

KW_SHIM void(h2o_send_error_generic)(h2o_req_t *req, int status, const char *reason,
                                     const char *body, int flags) {
  F(h2o_send_error_generic)(req, status, reason, body, flags);
}

KW_SHIM int(h2o_socket_get_fd)(h2o_socket_t *sock) {
  return F(h2o_socket_get_fd)(sock);
}

KW_SHIM void(h2o_start_response)(h2o_req_t *req, h2o_generator_t *generator) {
  F(h2o_start_response)(req, generator);
}

KW_SHIM h2o_iovec_t(h2o_strdup)(h2o_mem_pool_t *pool, const char *s, size_t len) {
  return F(h2o_strdup)(pool, s, len);
}

KW_SHIM void(h2o_timeout_unlink)(h2o_timeout_entry_t *entry) {
  F(h2o_timeout_unlink)(entry);
}

KW_SHIM h2o_socket_t *(h2o_uv_socket_create)(uv_stream_t *stream, uv_close_cb close_cb) {
  return F(h2o_uv_socket_create)(stream, close_cb);
}
