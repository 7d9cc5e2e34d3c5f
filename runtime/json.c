/*
 * json.c - the `json` module: lua-cjson 2.1.0 (Debian's, linked statically)
 * with the quirks that matter to kpiwatch handled.
 *
 * - cjson 2.1.0 predates Lua 5.3 integers and decodes 50 as 50.0; KPI counts
 *   must be integers. The build renames cjson's calls of lua_pushnumber to
 *   kw_json_pushnumber (objcopy --redefine-sym, CMakeLists.txt), which
 *   pushes an integral number as an integer as cjson produces it: walking
 *   every decoded table afterwards cost half as much as cjson's decoding.
 * - cjson decodes [] and {} to the same empty table and encodes an empty
 *   table as {}; an empty array is marked with json.array_mt on decode (and
 *   by json.array() in scripts) and encoded back as [].
 * - json.null is cjson's null sentinel (a light userdata), exposed so that
 *   scripts can test for it.
 * - cjson decodes NaN, Infinity and 1e400 (servers written in Python send
 *   the first two) but refuses to encode them: they encode as null, as in
 *   JavaScript, so that a report or a notification carrying such a value
 *   is still sent.
 * - json.measure(text) -> keys, values, depth counts what decoding would
 *   build, in one pass over the text and without allocating, so that a
 *   caller can refuse a hostile document (600k keys in 8 MB: 800 MB of
 *   tables) before decoding it.
 */
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <string.h>

int luaopen_cjson(lua_State *L);

#define ARRAY_MT "kpiwatch.json.array"
#define MAX_DEPTH 1000

/* cjson writes NUL as \u0000 and decodes it back, so this string cannot
 * collide with the text of a document that is itself valid UTF-8 JSON
 * unless a producer really sent this exact string inside an array alone. */
static const char MARK[] = "\0kw-empty-array";
#define MARK_LEN (sizeof MARK - 1)
static const char MARK_JSON[] = "[\"\\u0000kw-empty-array\"]";
#define MARK_JSON_LEN (sizeof MARK_JSON - 1)

enum { UP_DECODE = 1, UP_ENCODE };

static int is_mark(lua_State *L, int idx) {
  size_t len;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, idx, &len);
  return len == MARK_LEN && memcmp(s, MARK, len) == 0;
}

static int is_json_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The first "[", whitespace, "]" in [p, end), whether in a string or not;
 * sets *close to its "]". memchr, not a byte loop: decoding a KPIs body
 * went through here for every response (a third of cjson's own time). */
static const char *find_empty_array(const char *p, const char *end, const char **close) {
  while (p < end && (p = memchr(p, '[', (size_t)(end - p)))) {
    const char *q = p + 1;
    while (q < end && is_json_space(*q))
      q++;
    if (q < end && *q == ']') {
      *close = q;
      return p;
    }
    p = q;
  }
  return NULL;
}

/* Past the string whose opening quote is at quote: after the next quote
 * that ends an even run of backslashes (an odd run escapes it), or end. */
static const char *skip_string(const char *quote, const char *end) {
  const char *p = quote + 1;
  for (;;) {
    const char *q = memchr(p, '"', (size_t)(end - p)), *k;
    if (!q) return end;
    for (k = q; k > quote + 1 && k[-1] == '\\'; k--) {
    }
    p = q + 1;
    if (((q - k) & 1) == 0) return p;
  }
}

/* Rewrite every empty array outside strings into MARK_JSON, pushing the
 * text rewritten. Returns how many (0 when the text has none, the common
 * case: nothing is copied or pushed). Strings are skipped only up to the
 * last "[]" in the text, wherever it is: a KPIs body has a hundred of them
 * and one empty array, if any. */
static int mark_empty_arrays(lua_State *L, const char *s, size_t len) {
  const char *end = s + len, *p = s, *from = s, *close;
  const char *open = find_empty_array(s, end, &close);
  luaL_Buffer b;
  int found = 0;
  while (open) {
    /* Outside strings from p: is there a string before the candidate? */
    const char *quote = memchr(p, '"', (size_t)(open - p));
    if (quote) {
      p = skip_string(quote, end);
      if (open < p) open = find_empty_array(p, end, &close); /* it was in that string */
      continue;
    }
    if (!found) luaL_buffinit(L, &b);
    found++;
    luaL_addlstring(&b, from, (size_t)(open - from));
    luaL_addlstring(&b, MARK_JSON, MARK_JSON_LEN);
    from = p = close + 1;
    open = find_empty_array(p, end, &close);
  }
  if (!found) return 0;
  luaL_addlstring(&b, from, (size_t)(end - from));
  luaL_pushresult(&b);
  return found;
}

/* Every number cjson decodes (see the top). Integral and exact in a double
 * (|n| <= 2^53): an integer; NaN, infinities, fractions: a float. */
void kw_json_pushnumber(lua_State *L, lua_Number n);
void kw_json_pushnumber(lua_State *L, lua_Number n) {
  if (n == floor(n) && fabs(n) <= 9007199254740992.0)
    lua_pushinteger(L, (lua_Integer)n);
  else
    lua_pushnumber(L, n);
}

/* Marked arrays back to empty arrays (only after a decode that marked).
 * *left counts the marks not met yet, and the walk stops at the last one;
 * -1 when the text could hold a string equal to MARK (below): every table
 * is visited. */
static void fix_decoded(lua_State *L, int idx, int depth, int *left) {
  idx = lua_absindex(L, idx);
  if (lua_rawlen(L, idx) == 1) {
    lua_rawgeti(L, idx, 1);
    if (is_mark(L, -1)) {
      lua_pop(L, 1);
      lua_pushnil(L);
      lua_rawseti(L, idx, 1);
      luaL_setmetatable(L, ARRAY_MT);
      if (*left > 0) --*left;
      return;
    }
    lua_pop(L, 1);
  }
  luaL_checkstack(L, 4, "json too deep");
  lua_pushnil(L);
  while (*left != 0 && lua_next(L, idx)) {
    if (lua_type(L, -1) == LUA_TTABLE && depth < MAX_DEPTH) fix_decoded(L, -1, depth + 1, left);
    lua_pop(L, 1);
  }
  lua_settop(L, idx); /* lua_next's key when the walk stopped early */
}

/* Whether the text may decode to a string starting with NUL, as MARK does:
 * only through \u0000 (cjson stops at a raw NUL; an escaped backslash
 * before "u0000" counts too: a full walk is merely slower). */
static int may_hold_mark(const char *s, size_t len) {
  static const char esc[] = "\\u0000";
  const char *p = s, *end = s + len;
  while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
    if ((size_t)(end - p) >= sizeof esc - 1 && memcmp(p, esc, sizeof esc - 1) == 0) return 1;
    p++;
  }
  return 0;
}

static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int marked = mark_empty_arrays(L, s, len);
  lua_pushvalue(L, lua_upvalueindex(UP_DECODE));
  lua_pushvalue(L, marked ? -2 : 1);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    if (marked) {
      /* Report the position in the caller's text, not in our rewrite. */
      lua_pushvalue(L, lua_upvalueindex(UP_DECODE));
      lua_pushvalue(L, 1);
      lua_pcall(L, 1, 1, 0);
    }
    return luaL_error(L, "invalid JSON: %s", lua_tostring(L, -1));
  }
  if (marked && lua_istable(L, -1)) {
    if (may_hold_mark(s, len)) marked = -1;
    fix_decoded(L, -1, 0, &marked);
  }
  return 1;
}

/* Put MARK into every empty marked array (so cjson writes an array) and
 * push the tables touched onto a list at `list`; returns how many. */
static int mark_for_encode(lua_State *L, int idx, int list, int n, int depth) {
  idx = lua_absindex(L, idx);
  if (depth > MAX_DEPTH) return n;
  luaL_checkstack(L, 4, "json too deep");
  if (lua_getmetatable(L, idx)) {
    int is_array;
    luaL_getmetatable(L, ARRAY_MT);
    is_array = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (is_array) {
      lua_pushnil(L);
      if (!lua_next(L, idx)) {
        lua_pushlstring(L, MARK, MARK_LEN);
        lua_rawseti(L, idx, 1);
        lua_pushvalue(L, idx);
        lua_rawseti(L, list, ++n);
        return n;
      }
      lua_pop(L, 2);
    }
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_istable(L, -1)) n = mark_for_encode(L, -1, list, n, depth + 1);
    lua_pop(L, 1);
  }
  return n;
}

static int l_encode(lua_State *L) {
  int n = 0, i, status;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (lua_istable(L, 1)) {
    lua_newtable(L); /* 2: tables given a MARK */
    n = mark_for_encode(L, 1, 2, 0, 0);
  }
  lua_pushvalue(L, lua_upvalueindex(UP_ENCODE));
  lua_pushvalue(L, 1);
  status = lua_pcall(L, 1, 1, 0);
  for (i = 1; i <= n; i++) { /* restore the caller's tables, error or not */
    lua_rawgeti(L, 2, i);
    lua_pushnil(L);
    lua_rawseti(L, -2, 1);
    lua_pop(L, 1);
  }
  if (status != LUA_OK) return luaL_error(L, "cannot encode JSON: %s", lua_tostring(L, -1));
  if (n > 0) {
    size_t len, i0 = 0;
    const char *s = lua_tolstring(L, -1, &len), *hit;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while ((hit = strstr(s + i0, MARK_JSON)) != NULL) {
      luaL_addlstring(&b, s + i0, (size_t)(hit - (s + i0)));
      luaL_addstring(&b, "[]");
      i0 = (size_t)(hit - s) + MARK_JSON_LEN;
    }
    luaL_addlstring(&b, s + i0, len - i0);
    luaL_pushresult(&b);
  }
  return 1;
}

/* json.array([t]): mark t (or a new table) as an array, so that it encodes
 * as [] when empty. */
static int l_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_setmetatable(L, ARRAY_MT);
  return 1;
}

/* The bytes l_measure stops at: the rest (numbers, literals, spaces) is
 * skipped by a tight loop. */
static const unsigned char structural[256] = {
    ['"'] = 1, ['{'] = 1, ['['] = 1, ['}'] = 1, [']'] = 1, [':'] = 1, [','] = 1};

/* measure(text) -> keys, values, depth: object keys, values (array
 * elements and object members, containers included) and the deepest
 * nesting, counted on the text as it is (valid or not: a malformed
 * document is decode's to reject). values = commas + non-empty containers
 * + the top-level value. */
static int l_measure(lua_State *L) {
  size_t len;
  const unsigned char *p = (const unsigned char *)luaL_checklstring(L, 1, &len);
  const unsigned char *end = p + len, *q;
  lua_Integer keys = 0, values = 0, depth = 0, max_depth = 0;
  for (q = p; q < end; q++) /* the top-level value, if any */
    if (!is_json_space((char)*q)) {
      values = 1;
      break;
    }
  for (;;) {
    while (p < end && !structural[*p])
      p++;
    if (p >= end) break;
    switch (*p++) {
    case '"':
      /* to the closing quote: an escaped one ends a run of an odd number
       * of backslashes */
      for (;;) {
        const unsigned char *b;
        q = memchr(p, '"', (size_t)(end - p));
        if (!q) {
          p = end;
          break;
        }
        for (b = q; b > p && b[-1] == '\\';)
          b--;
        p = q + 1;
        if (((q - b) & 1) == 0) break;
      }
      break;
    case '{':
    case '[':
      if (++depth > max_depth) max_depth = depth;
      for (q = p; q < end && is_json_space((char)*q);)
        q++;
      if (q < end && *q != '}' && *q != ']') values++;
      break;
    case '}':
    case ']':
      if (depth > 0) depth--;
      break;
    case ':':
      keys++;
      break;
    default: /* ',' */
      values++;
      break;
    }
  }
  lua_pushinteger(L, keys);
  lua_pushinteger(L, values);
  lua_pushinteger(L, max_depth);
  return 3;
}

int luaopen_kpiwatch_json(lua_State *L) {
  static const luaL_Reg funcs[] = {{"decode", l_decode},
                                   {"encode", l_encode},
                                   {"array", l_array},
                                   {"measure", l_measure},
                                   {NULL, NULL}};
  luaL_newmetatable(L, ARRAY_MT);
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__jsontype");
  lua_pop(L, 1);
  luaopen_cjson(L);
  lua_getfield(L, -1, "encode_invalid_numbers");
  lua_pushliteral(L, "null");
  lua_call(L, 1, 1);
  lua_pop(L, 1);
  lua_newtable(L); /* the module */
  lua_getfield(L, -2, "decode");
  lua_getfield(L, -3, "encode");
  luaL_setfuncs(L, funcs, 2);
  lua_getfield(L, -2, "null");
  lua_setfield(L, -2, "null");
  lua_remove(L, -2); /* cjson */
  luaL_getmetatable(L, ARRAY_MT);
  lua_setfield(L, -2, "array_mt");
  return 1;
}
