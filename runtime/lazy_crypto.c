/*
 * lazy_crypto.c - the libcrypto (OpenSSL) functions kpiwatch._crypto calls,
 * resolved with dlopen when that module is opened (see dynload.h for why:
 * relocating libcrypto alone took half of the time of `kpiwatch -e ''`).
 * Each definition below has the name and the prototype of the OpenSSL
 * function it stands for (the headers check them), and calls the
 * library's through the table.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/opensslv.h>
#include <openssl/rand.h>

#include "dynload.h"

/* libcrypto.so.3 for OpenSSL 3: the headers compiled against name it. */
#define KW_STR2(x) #x
#define KW_STR(x) KW_STR2(x)
#define KW_CRYPTO_SONAME "libcrypto.so." KW_STR(OPENSSL_SHLIB_VERSION)

#define KW_CRYPTO_FUNCS(X)                                                                         \
  X(CRYPTO_memcmp)                                                                                 \
  X(EVP_DecodeBlock)                                                                               \
  X(EVP_Digest)                                                                                    \
  X(EVP_EncodeBlock)                                                                               \
  X(EVP_sha256)                                                                                    \
  X(HMAC)                                                                                          \
  X(RAND_bytes)

#define X(name) I_##name,
enum { KW_CRYPTO_FUNCS(X) KW_CRYPTO_N };
#undef X
#define X(name) #name,
static const char *const names[] = {KW_CRYPTO_FUNCS(X) NULL};
#undef X
static void *slots[KW_CRYPTO_N];

kw_dynlib kw_libcrypto = {KW_CRYPTO_SONAME, "libssl" KW_STR(OPENSSL_SHLIB_VERSION), names, slots,
                          0};

static void *fn(int i) {
  if (!slots[i]) kw_dynlib_unloaded(KW_CRYPTO_SONAME, names[i]);
  return slots[i];
}

#define F(name) ((__typeof__(name) *)fn(I_##name))

KW_SHIM int(CRYPTO_memcmp)(const void *in_a, const void *in_b, size_t len) {
  return F(CRYPTO_memcmp)(in_a, in_b, len);
}

KW_SHIM int(EVP_DecodeBlock)(unsigned char *t, const unsigned char *f, int n) {
  return F(EVP_DecodeBlock)(t, f, n);
}

KW_SHIM int(EVP_Digest)(const void *data, size_t count, unsigned char *md, unsigned int *size,
                        const EVP_MD *type, ENGINE *impl) {
  return F(EVP_Digest)(data, count, md, size, type, impl);
}

KW_SHIM int(EVP_EncodeBlock)(unsigned char *t, const unsigned char *f, int n) {
  return F(EVP_EncodeBlock)(t, f, n);
}

KW_SHIM const EVP_MD *(EVP_sha256)(void) {
  return F(EVP_sha256)();
}

KW_SHIM unsigned char *(HMAC)(const EVP_MD *evp_md, const void *key, int key_len,
                              const unsigned char *data, size_t data_len, unsigned char *md,
                              unsigned int *md_len) {
  return F(HMAC)(evp_md, key, key_len, data, data_len, md, md_len);
}

KW_SHIM int(RAND_bytes)(unsigned char *buf, int num) {
  return F(RAND_bytes)(buf, num);
}
