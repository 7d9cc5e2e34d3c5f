/*
 * crypto.c - the `kpiwatch._crypto` module: the few primitives the
 * notification code needs, from OpenSSL's libcrypto.
 *
 *   hmac_sha256(key, msg) -> 32 raw bytes     (Standard Webhooks signatures)
 *   sha256(msg)           -> 32 raw bytes
 *   base64_encode(s)      -> string
 *   base64_decode(s)      -> string | nil, message, "invalid"
 *   random_bytes(n)       -> n raw bytes from the CSPRNG (event ids)
 *   equal(a, b)           -> boolean, compared in constant time
 *
 * Everything else (hex, the signing scheme, secrets with a whsec_ prefix)
 * is policy and lives in Lua.
 */
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "fail.h"

static int l_hmac_sha256(lua_State *L) {
  size_t klen, mlen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *msg = luaL_checklstring(L, 2, &mlen);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int outlen = 0;
  /* HMAC() with an empty key is valid HMAC (the key is zero-padded), but
   * OpenSSL wants a non-NULL pointer for it: a Lua string always is one. */
  if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, mlen, out, &outlen))
    return luaL_error(L, "hmac_sha256: OpenSSL failed");
  lua_pushlstring(L, (const char *)out, outlen);
  return 1;
}

static int l_sha256(lua_State *L) {
  size_t len;
  const char *msg = luaL_checklstring(L, 1, &len);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int outlen = 0;
  if (!EVP_Digest(msg, len, out, &outlen, EVP_sha256(), NULL))
    return luaL_error(L, "sha256: OpenSSL failed");
  lua_pushlstring(L, (const char *)out, outlen);
  return 1;
}

static int l_base64_encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out;
  int n;
  if (len > ((size_t)1 << 30)) return luaL_error(L, "base64_encode: input too large");
  out = luaL_buffinitsize(L, &b, 4 * ((len + 2) / 3) + 1);
  n = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)len);
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* EVP_DecodeBlock wants whole 4-character groups and reports the padding
 * as decoded zero bytes: unpadded input is padded here first, and the
 * padding is taken off the result again. */
static int l_base64_decode(lua_State *L) {
  size_t len, padded, i;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer out;
  char *inbuf, *outbuf;
  int n, pad = 0;
  if (len > ((size_t)1 << 30)) return luaL_error(L, "base64_decode: input too large");
  if (len % 4 == 1) goto invalid;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '=') {
      /* padding only at the end, at most two characters */
      if (i + 2 < len || (i + 1 < len && s[i + 1] != '=')) goto invalid;
      continue;
    }
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
          c == '/'))
      goto invalid;
  }
  if (len == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  padded = (len + 3) / 4 * 4;
  inbuf = (char *)lua_newuserdatauv(L, padded, 0);
  memcpy(inbuf, s, len);
  memset(inbuf + len, '=', padded - len);
  for (i = padded; i > 0 && inbuf[i - 1] == '='; i--)
    pad++;
  if (pad > 2) goto invalid;
  outbuf = luaL_buffinitsize(L, &out, padded / 4 * 3);
  n = EVP_DecodeBlock((unsigned char *)outbuf, (unsigned char *)inbuf, (int)padded);
  if (n < pad) {
    luaL_pushresultsize(&out, 0);
    goto invalid;
  }
  luaL_pushresultsize(&out, (size_t)(n - pad));
  return 1;
invalid:
  lua_pushliteral(L, "not valid base64");
  return kw_fail_kind(L, "invalid");
}

static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_Buffer b;
  unsigned char *p;
  luaL_argcheck(L, n >= 0 && n <= 65536, 1, "between 0 and 65536 bytes");
  p = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
  if (n > 0 && RAND_bytes(p, (int)n) != 1) return luaL_error(L, "random_bytes: no entropy");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

static int l_equal(lua_State *L) {
  size_t alen, blen;
  const char *a = luaL_checklstring(L, 1, &alen);
  const char *b = luaL_checklstring(L, 2, &blen);
  lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
  return 1;
}

static const luaL_Reg funcs[] = {{"hmac_sha256", l_hmac_sha256},
                                 {"sha256", l_sha256},
                                 {"base64_encode", l_base64_encode},
                                 {"base64_decode", l_base64_decode},
                                 {"random_bytes", l_random_bytes},
                                 {"equal", l_equal},
                                 {NULL, NULL}};

int luaopen_kpiwatch__crypto(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
