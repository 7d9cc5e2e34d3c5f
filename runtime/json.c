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
 *   table as {}; an empty array is marked with json.array_mt on decode (as
 *   cjson builds it, below; by json.array() in scripts) and encoded back
 *   as [].
 * - json.null is cjson's null sentinel (a light userdata), exposed so that
 *   scripts can test for it.
 * - cjson decodes NaN, Infinity and 1e400 (servers written in Python send
 *   the first two) but refuses to encode them: they encode as null, as in
 *   JavaScript, so that a report or a notification carrying such a value
 *   is still sent.
 * - json._decode(text) -> value, odd: odd when a number of the text is one
 *   JSON does not have but cjson reads (model.parse then checks each).
 * - json.measure(text) -> keys, values, depth counts what decoding would
 *   build, in one pass over the text and without allocating, so that a
 *   caller can refuse a hostile document (600k keys in 8 MB: 800 MB of
 *   tables) before decoding it.
 */
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdlib.h>
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

static int is_json_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
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

/* Empty arrays, seen as cjson builds them: the build renames cjson's calls of
 * lua_checkstack, lua_createtable, lua_rawset and lua_rawseti to the
 * functions below (CMakeLists.txt). cjson checks the stack for 2 slots
 * before it creates an array's table (3 before an object's), and stores
 * each value with rawset (in an object) or rawseti (in an array) from the
 * top of its stack. An empty array is stored right after its creation,
 * nothing created or stored in between, while it is still at the top: a
 * non-empty one first has an element stored above it. Knowing it from the
 * decoder costs a flag test per value; finding [] in the text and walking
 * the decoded tables after cost half again cjson's own time on a body that
 * had one. Only while l_decode runs cjson's decode (one Lua state, one
 * thread); cjson's encoding calls them too and is left alone. */
static struct {
  int on;    /* in l_decode's call of cjson's decode */
  int slots; /* of cjson's last lua_checkstack */
  int fresh; /* stack index of an array just created, 0 once anything is stored */
  int odd;   /* a number token JSON does not have was read (kw_json_strtod) */
} dec;

int kw_json_checkstack(lua_State *L, int n);
int kw_json_checkstack(lua_State *L, int n) {
  dec.slots = n;
  return lua_checkstack(L, n);
}

void kw_json_createtable(lua_State *L, int narr, int nrec);
void kw_json_createtable(lua_State *L, int narr, int nrec) {
  lua_createtable(L, narr, nrec);
  dec.fresh = dec.on && dec.slots == 2 ? lua_gettop(L) : 0;
}

static void mark_stored(lua_State *L) {
  if (dec.fresh) {
    if (lua_gettop(L) == dec.fresh) luaL_setmetatable(L, ARRAY_MT);
    dec.fresh = 0;
  }
}

void kw_json_rawset(lua_State *L, int idx);
void kw_json_rawset(lua_State *L, int idx) {
  mark_stored(L);
  lua_rawset(L, idx);
}

void kw_json_rawseti(lua_State *L, int idx, lua_Integer n);
void kw_json_rawseti(lua_State *L, int idx, lua_Integer n) {
  mark_stored(L);
  lua_rawseti(L, idx, n);
}

/* cjson reads every number token with strtod (through its fpconv_strtod),
 * renamed to this in its archive, which sees the token: one JSON does not
 * have but cjson takes (a leading +, hex, Infinity, NaN; not leading
 * zeros, read as the number written) is noted for json._decode. Telling
 * it here costs a few instructions a number; model.parse looked for them
 * in the text with five or six searches of every body. */
double kw_json_strtod(const char *nptr, char **endptr);
double kw_json_strtod(const char *nptr, char **endptr) {
  if (dec.on) {
    const char *p = nptr + (*nptr == '-');
    if (*nptr == '+' || *p < '0' || *p > '9' || (p[0] == '0' && (p[1] | 0x20) == 'x')) dec.odd = 1;
  }
  return strtod(nptr, endptr);
}

/* decode(text) -> value; _decode(text) -> value, whether a number token of
 * the text is not JSON's (see kw_json_strtod). */
static int decode(lua_State *L, int with_odd) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(UP_DECODE));
  lua_pushvalue(L, 1);
  dec.on = 1;
  dec.odd = 0;
  int status = lua_pcall(L, 1, 1, 0);
  int odd = dec.odd;
  dec.on = dec.fresh = 0;
  if (status != LUA_OK) return luaL_error(L, "invalid JSON: %s", lua_tostring(L, -1));
  /* The whole document is stored nowhere: an empty table is an empty
   * array when the text starts with one. */
  if (lua_type(L, -1) == LUA_TTABLE && lua_rawlen(L, -1) == 0) {
    size_t i = 0;
    while (i < len && is_json_space(s[i]))
      i++;
    if (i < len && s[i] == '[') luaL_setmetatable(L, ARRAY_MT);
  }
  if (!with_odd) return 1;
  lua_pushboolean(L, odd);
  return 2;
}

static int l_decode(lua_State *L) {
  return decode(L, 0);
}

static int l_decode_odd(lua_State *L) {
  return decode(L, 1);
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
  static const luaL_Reg funcs[] = {{"decode", l_decode},   {"_decode", l_decode_odd},
                                   {"encode", l_encode},   {"array", l_array},
                                   {"measure", l_measure}, {NULL, NULL}};
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
