/*
 * sqlite.c - the `kpiwatch._sqlite` module: a thin binding of SQLite 3 with
 * prepared statements and bound parameters only. There is no way to run a
 * query with values spliced into its text: exec() takes no parameters and
 * is for fixed DDL and pragmas; everything carrying data goes through
 * prepare() and bind(). The API follows lsqlite3's shapes, smaller:
 *
 *   open(path [, mode="rwc" [, filemode=0600]]) -> db | nil, message, code
 *       mode "ro", "rw" or "rwc" (create). A file created here gets
 *       filemode before SQLite sees it (SQLite gives its -wal and -shm files
 *       the database file's permissions).
 *   db:exec(sql) -> true | nil, message, code        (no parameters, no rows)
 *   db:prepare(sql) -> stmt | nil, message, code     (one statement)
 *   db:busy_timeout(ms), db:changes(), db:last_insert_rowid()
 *   db:persist_wal(on) -> db   (SQLITE_FCNTL_PERSIST_WAL: the last connection
 *       to close keeps the -wal and -shm files, emptied, instead of deleting
 *       them; see kpiwatch.history for why)
 *   db:close() -> true | nil, message, code  (also __close and __gc)
 *   stmt:bind(v1, v2, ...) -> stmt | nil, message, code
 *       Clears the previous bindings and binds every parameter in order:
 *       nil, boolean (0/1), integer, float, string (as TEXT).
 *   stmt:step() -> true (a row) | false (done) | nil, message, code
 *   stmt:values() -> the current row's columns as values (NULL is nil)
 *   stmt:names() -> {column names}
 *   stmt:rows() -> iterator over rows, each as its values; raises on error
 *   stmt:reset() -> stmt (ready to bind and step again)
 *   stmt:finalize() (also __close and __gc)
 *
 * Errors are `nil, message, code` (the SQLite primary result code name in
 * lowercase, e.g. "busy", "constraint"), as luaL_fileresult does, so
 * callers can tell a locked database from a broken one. A statement keeps
 * its database alive (user value) and refuses to run once the database is
 * closed; sqlite3_close_v2 lets the handle linger until the last statement
 * is finalized, so closing in either order is safe.
 */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DB_MT "kpiwatch.sqlite.db"
#define STMT_MT "kpiwatch.sqlite.stmt"

typedef struct {
  sqlite3 *db;
} kw_db;

typedef struct {
  sqlite3_stmt *stmt;
  kw_db *owner;
} kw_stmt;

static const char *code_name(int rc) {
  switch (rc & 0xff) {
  case SQLITE_ERROR:
    return "error";
  case SQLITE_PERM:
    return "perm";
  case SQLITE_ABORT:
    return "abort";
  case SQLITE_BUSY:
    return "busy";
  case SQLITE_LOCKED:
    return "locked";
  case SQLITE_NOMEM:
    return "nomem";
  case SQLITE_READONLY:
    return "readonly";
  case SQLITE_INTERRUPT:
    return "interrupt";
  case SQLITE_IOERR:
    return "ioerr";
  case SQLITE_CORRUPT:
    return "corrupt";
  case SQLITE_FULL:
    return "full";
  case SQLITE_CANTOPEN:
    return "cantopen";
  case SQLITE_PROTOCOL:
    return "protocol";
  case SQLITE_SCHEMA:
    return "schema";
  case SQLITE_TOOBIG:
    return "toobig";
  case SQLITE_CONSTRAINT:
    return "constraint";
  case SQLITE_MISMATCH:
    return "mismatch";
  case SQLITE_MISUSE:
    return "misuse";
  case SQLITE_RANGE:
    return "range";
  case SQLITE_NOTADB:
    return "notadb";
  default:
    return "error";
  }
}

static int fail_msg(lua_State *L, const char *msg, int rc) {
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code_name(rc));
  return 3;
}

static int fail_db(lua_State *L, sqlite3 *db, int rc) {
  return fail_msg(L, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), rc);
}

static kw_db *check_db(lua_State *L) {
  kw_db *d = luaL_checkudata(L, 1, DB_MT);
  if (!d->db) luaL_error(L, "attempt to use a closed database");
  return d;
}

static kw_stmt *check_stmt(lua_State *L, int idx) {
  kw_stmt *s = luaL_checkudata(L, idx, STMT_MT);
  if (!s->stmt) luaL_error(L, "attempt to use a finalized statement");
  if (!s->owner->db) luaL_error(L, "attempt to use a statement of a closed database");
  return s;
}

static int l_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *mode = luaL_optstring(L, 2, "rwc");
  lua_Integer fmode = luaL_optinteger(L, 3, 0600);
  int flags;
  kw_db *d;
  int rc;
  luaL_argcheck(L, fmode >= 0 && fmode <= 07777, 3, "mode must be between 0 and 07777");
  if (strcmp(mode, "ro") == 0) {
    flags = SQLITE_OPEN_READONLY;
  } else if (strcmp(mode, "rw") == 0) {
    flags = SQLITE_OPEN_READWRITE;
  } else if (strcmp(mode, "rwc") == 0) {
    flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    /* Create the file with its final mode ourselves: SQLite would create it
     * 0644 (less the umask), readable by anyone on a shared CI runner. */
    if (strcmp(path, ":memory:") != 0 && path[0] != '\0') {
      int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, (mode_t)fmode);
      if (fd < 0) {
        luaL_pushfail(L);
        lua_pushfstring(L, "%s: %s", path, strerror(errno));
        lua_pushliteral(L, "cantopen");
        return 3;
      }
      close(fd);
    }
  } else {
    return luaL_argerror(L, 2, "expected \"ro\", \"rw\" or \"rwc\"");
  }
  d = lua_newuserdatauv(L, sizeof *d, 0);
  d->db = NULL;
  luaL_setmetatable(L, DB_MT);
  rc = sqlite3_open_v2(path, &d->db, flags | SQLITE_OPEN_NOFOLLOW, NULL);
  if (rc != SQLITE_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", path, d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
    sqlite3_close_v2(d->db);
    d->db = NULL;
    return fail_msg(L, msg, rc);
  }
  sqlite3_extended_result_codes(d->db, 0);
  return 1;
}

static int l_db_exec(lua_State *L) {
  kw_db *d = check_db(L);
  const char *sql = luaL_checkstring(L, 2);
  char *err = NULL;
  int rc = sqlite3_exec(d->db, sql, NULL, NULL, &err);
  if (rc != SQLITE_OK) {
    int n = fail_msg(L, err ? err : sqlite3_errstr(rc), rc);
    sqlite3_free(err);
    return n;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_db_prepare(lua_State *L) {
  kw_db *d = check_db(L);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  const char *tail = NULL;
  kw_stmt *s = lua_newuserdatauv(L, sizeof *s, 1);
  int rc;
  s->stmt = NULL;
  s->owner = d;
  luaL_setmetatable(L, STMT_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  rc = sqlite3_prepare_v2(d->db, sql, (int)len, &s->stmt, &tail);
  if (rc != SQLITE_OK) return fail_db(L, d->db, rc);
  if (!s->stmt) return fail_msg(L, "empty statement", SQLITE_MISUSE);
  while (tail && *tail && strchr(" \t\r\n;", *tail))
    tail++;
  if (tail && *tail) {
    sqlite3_finalize(s->stmt);
    s->stmt = NULL;
    return fail_msg(L, "more than one statement", SQLITE_MISUSE);
  }
  return 1;
}

static int l_db_busy_timeout(lua_State *L) {
  kw_db *d = check_db(L);
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= 0 && ms <= 0x7fffffff, 2, "out of range");
  sqlite3_busy_timeout(d->db, (int)ms);
  lua_settop(L, 1);
  return 1;
}

static int l_db_persist_wal(lua_State *L) {
  kw_db *d = check_db(L);
  int on = lua_toboolean(L, 2);
  int rc = sqlite3_file_control(d->db, "main", SQLITE_FCNTL_PERSIST_WAL, &on);
  if (rc != SQLITE_OK) return fail_db(L, d->db, rc);
  lua_settop(L, 1);
  return 1;
}

static int l_db_changes(lua_State *L) {
  lua_pushinteger(L, sqlite3_changes(check_db(L)->db));
  return 1;
}

static int l_db_last_insert_rowid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(check_db(L)->db));
  return 1;
}

static int l_db_close(lua_State *L) {
  kw_db *d = luaL_checkudata(L, 1, DB_MT);
  if (d->db) {
    /* close_v2: statements not yet finalized keep the handle as a zombie
     * until their own finalize (they refuse to run meanwhile). */
    int rc = sqlite3_close_v2(d->db);
    d->db = NULL;
    if (rc != SQLITE_OK) return fail_msg(L, sqlite3_errstr(rc), rc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_db_tostring(lua_State *L) {
  kw_db *d = luaL_checkudata(L, 1, DB_MT);
  lua_pushfstring(L, "sqlite db (%s)", d->db ? "open" : "closed");
  return 1;
}

static int bind_one(lua_State *L, sqlite3_stmt *st, int i, int idx) {
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return sqlite3_bind_null(st, i);
  case LUA_TBOOLEAN:
    return sqlite3_bind_int(st, i, lua_toboolean(L, idx));
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx))
      return sqlite3_bind_int64(st, i, (sqlite3_int64)lua_tointeger(L, idx));
    return sqlite3_bind_double(st, i, (double)lua_tonumber(L, idx));
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return sqlite3_bind_text64(st, i, s, (sqlite3_uint64)len, SQLITE_TRANSIENT, SQLITE_UTF8);
  }
  default:
    return luaL_argerror(L, idx, lua_pushfstring(L, "cannot bind a %s", luaL_typename(L, idx)));
  }
}

static int l_stmt_bind(lua_State *L) {
  kw_stmt *s = check_stmt(L, 1);
  int n = lua_gettop(L) - 1;
  int want = sqlite3_bind_parameter_count(s->stmt);
  int i;
  if (n != want) return luaL_error(L, "statement takes %d parameter(s), got %d", want, n);
  sqlite3_reset(s->stmt);
  sqlite3_clear_bindings(s->stmt);
  for (i = 1; i <= n; i++) {
    int rc = bind_one(L, s->stmt, i, i + 1);
    if (rc != SQLITE_OK) return fail_db(L, s->owner->db, rc);
  }
  lua_settop(L, 1);
  return 1;
}

static int l_stmt_step(lua_State *L) {
  kw_stmt *s = check_stmt(L, 1);
  int rc = sqlite3_step(s->stmt);
  if (rc == SQLITE_ROW) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == SQLITE_DONE) {
    lua_pushboolean(L, 0);
    return 1;
  }
  /* The statement's own error, then reset so it can be retried (a busy
   * step leaves it needing one). */
  {
    int n = fail_db(L, s->owner->db, rc);
    sqlite3_reset(s->stmt);
    return n;
  }
}

static void push_column(lua_State *L, sqlite3_stmt *st, int i) {
  switch (sqlite3_column_type(st, i)) {
  case SQLITE_INTEGER:
    lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
    break;
  case SQLITE_FLOAT:
    lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i));
    break;
  case SQLITE_NULL:
    lua_pushnil(L);
    break;
  default: {
    const char *p = (const char *)sqlite3_column_blob(st, i);
    int len = sqlite3_column_bytes(st, i);
    lua_pushlstring(L, p ? p : "", (size_t)len);
  }
  }
}

static int push_row(lua_State *L, sqlite3_stmt *st) {
  int n = sqlite3_column_count(st), i;
  luaL_checkstack(L, n, "too many columns");
  for (i = 0; i < n; i++)
    push_column(L, st, i);
  return n;
}

static int l_stmt_values(lua_State *L) {
  kw_stmt *s = check_stmt(L, 1);
  if (sqlite3_data_count(s->stmt) == 0) return 0;
  return push_row(L, s->stmt);
}

static int l_stmt_names(lua_State *L) {
  kw_stmt *s = check_stmt(L, 1);
  int n = sqlite3_column_count(s->stmt), i;
  lua_createtable(L, n, 0);
  for (i = 0; i < n; i++) {
    lua_pushstring(L, sqlite3_column_name(s->stmt, i));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int rows_iter(lua_State *L) {
  kw_stmt *s = check_stmt(L, 1);
  int rc = sqlite3_step(s->stmt);
  if (rc == SQLITE_ROW) return push_row(L, s->stmt);
  if (rc == SQLITE_DONE) return 0;
  lua_pushfstring(L, "%s (%s)", sqlite3_errmsg(s->owner->db), code_name(rc));
  sqlite3_reset(s->stmt);
  return lua_error(L);
}

static int l_stmt_rows(lua_State *L) {
  check_stmt(L, 1);
  lua_pushcfunction(L, rows_iter);
  lua_pushvalue(L, 1);
  return 2;
}

static int l_stmt_reset(lua_State *L) {
  kw_stmt *s = check_stmt(L, 1);
  sqlite3_reset(s->stmt);
  lua_settop(L, 1);
  return 1;
}

static int l_stmt_finalize(lua_State *L) {
  kw_stmt *s = luaL_checkudata(L, 1, STMT_MT);
  if (s->stmt) {
    sqlite3_finalize(s->stmt);
    s->stmt = NULL;
  }
  return 0;
}

static int l_stmt_tostring(lua_State *L) {
  kw_stmt *s = luaL_checkudata(L, 1, STMT_MT);
  lua_pushfstring(L, "sqlite stmt (%s)", s->stmt ? "open" : "finalized");
  return 1;
}

static const luaL_Reg db_methods[] = {
    {"exec", l_db_exec},
    {"prepare", l_db_prepare},
    {"busy_timeout", l_db_busy_timeout},
    {"persist_wal", l_db_persist_wal},
    {"changes", l_db_changes},
    {"last_insert_rowid", l_db_last_insert_rowid},
    {"close", l_db_close},
    {NULL, NULL},
};

static const luaL_Reg stmt_methods[] = {
    {"bind", l_stmt_bind},         {"step", l_stmt_step}, {"values", l_stmt_values},
    {"names", l_stmt_names},       {"rows", l_stmt_rows}, {"reset", l_stmt_reset},
    {"finalize", l_stmt_finalize}, {NULL, NULL},
};

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction close,
                      lua_CFunction tostring) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}

int luaopen_kpiwatch__sqlite(lua_State *L) {
  static const luaL_Reg funcs[] = {{"open", l_open}, {NULL, NULL}};
  new_class(L, DB_MT, db_methods, l_db_close, l_db_tostring);
  new_class(L, STMT_MT, stmt_methods, l_stmt_finalize, l_stmt_tostring);
  luaL_newlib(L, funcs);
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "version");
  return 1;
}
