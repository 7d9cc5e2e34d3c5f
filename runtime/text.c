/*
 * text.c - the `kpiwatch._text` module: byte-level scans of text that Lua's
 * own library does a character at a time.
 *
 * utf8_invalid(s [, i]) -> the position of the first byte from i on that
 * does not start a valid UTF-8 sequence, or nil when s[i..] is valid: what
 * `utf8.len(s, i)` tells in its second result, with the same (strict)
 * rules: no overlong forms, no surrogates, nothing above U+10FFFF.
 * shared.fix_utf8 runs it over every response body; utf8.len decodes each
 * character through a generic decoder, about a tenth of a KPIs fetch's
 * CPU, where a body is nearly all ASCII and skipped here a word at a time.
 *
 * uuid(s) -> s in lower case when it is a UUID in its canonical text form
 * (8-4-4-4-12 hexadecimal digits), else nil: the check of every execution
 * id before its request, where a Lua pattern of 36 items cost more than
 * building the request.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <string.h>

/* Length of the valid sequence at p (end - p > 0 bytes left), 0 when the
 * bytes at p are not one. The ranges of RFC 3629's UTF8-2 .. UTF8-4. */
static size_t seq_len(const unsigned char *p, const unsigned char *end) {
  unsigned char c = p[0], lo = 0x80, hi = 0xBF;
  size_t n, k;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF)
    n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0; /* overlong */
    if (c == 0xED) hi = 0x9F; /* surrogates */
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90; /* overlong */
    if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
  } else
    return 0;
  if ((size_t)(end - p) < n) return 0;
  if (p[1] < lo || p[1] > hi) return 0;
  for (k = 2; k < n; k++)
    if ((p[k] & 0xC0) != 0x80) return 0;
  return n;
}

static int l_utf8_invalid(lua_State *L) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  lua_Integer i = luaL_optinteger(L, 2, 1);
  const unsigned char *p, *end = s + len;
  /* utf8.len's positions: negative from the end, 1 .. #s + 1 */
  if (i < 0) i = (lua_Integer)len + i + 1;
  luaL_argcheck(L, i >= 1 && i <= (lua_Integer)len + 1, 2, "initial position out of bounds");
  p = s + (i - 1);
  while (p < end) {
    size_t n;
    /* 32 bytes a step while all are ASCII (most of any JSON text), then 8 */
    while ((size_t)(end - p) >= 32) {
      uint64_t w[4];
      memcpy(w, p, 32);
      if ((w[0] | w[1] | w[2] | w[3]) & UINT64_C(0x8080808080808080)) break;
      p += 32;
    }
    while ((size_t)(end - p) >= 8) {
      uint64_t w;
      memcpy(&w, p, 8);
      if (w & UINT64_C(0x8080808080808080)) break;
      p += 8;
    }
    while (p < end && *p < 0x80)
      p++;
    if (p >= end) break;
    n = seq_len(p, end);
    if (n == 0) {
      lua_pushinteger(L, (lua_Integer)(p - s) + 1);
      return 1;
    }
    p += n;
  }
  lua_pushnil(L);
  return 1;
}

static int l_uuid(lua_State *L) {
  size_t len, i;
  const char *s;
  char out[36];
  if (lua_type(L, 1) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, 1, &len);
  if (len != 36) return 0;
  for (i = 0; i < 36; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return 0;
    } else if (c >= 'A' && c <= 'F') {
      c = (unsigned char)(c + ('a' - 'A'));
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return 0;
    }
    out[i] = (char)c;
  }
  lua_pushlstring(L, out, 36);
  return 1;
}

int luaopen_kpiwatch__text(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"utf8_invalid", l_utf8_invalid}, {"uuid", l_uuid}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
