/*
 * fsutil.c - the `kpiwatch._fs` module: durable file writes for alert
 * state, notification spools and JSON-lines logs.
 *
 *   write_atomic(path, data [, mode=0600]) -> true | nil, message, errno
 *       Readers see the old content or the new one, never a mix or an empty
 *       file, even after a crash or kill -9: the data goes to a temporary
 *       file in the same directory, is fsync'ed, renamed over path, and the
 *       directory is fsync'ed so the rename itself survives a power cut.
 *   append(path, data [, mode=0600 [, sync=false]]) -> true | nil, message, errno
 *       One write(2) with O_APPEND, so concurrent appenders never interleave
 *       inside a line (for a line under PIPE_BUF on local file systems).
 *       A path that is a symbolic link is refused (O_NOFOLLOW).
 *   mkdirs(path [, mode=0700]) -> true | nil, message, errno   (mkdir -p)
 *   stat(path) -> {mode=, size=, type=} | nil, message, errno
 *   getpid() -> integer
 *   lock(path) -> lock | nil, message, errno
 *       An exclusive flock(2) on path (created 0600), never waiting: held
 *       elsewhere gives errno EWOULDBLOCK (the module's field of that name)
 *       and the caller decides how to wait (the spool sleeps in its task,
 *       so the loop keeps turning). lock:unlock() (also at garbage
 *       collection, or for a <close> variable) releases it.
 *
 * These are blocking calls on the loop thread: the files are small and the
 * durability point is the whole purpose of the call.
 */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fail.h"

static int io_fail(lua_State *L, const char *what, const char *path, int err) {
  lua_pushfstring(L, "%s %s: %s", what, path, strerror(err));
  return kw_fail_errno(L, err);
}

static int write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static mode_t opt_mode(lua_State *L, int idx, lua_Integer def) {
  lua_Integer m = luaL_optinteger(L, idx, def);
  luaL_argcheck(L, m >= 0 && m <= 07777, idx, "mode must be between 0 and 07777");
  return (mode_t)m;
}

/* fsync the directory holding path, so that a rename or a new entry in it
 * is durable. */
static int sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir;
  int fd, rc;
  if (!slash) {
    dir = strdup(".");
  } else if (slash == path) {
    dir = strdup("/");
  } else {
    dir = strndup(path, (size_t)(slash - path));
  }
  if (!dir) return -1;
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dir);
  if (fd < 0) return -1;
  rc = fsync(fd);
  /* Some file systems refuse fsync on a directory; the rename is done. */
  if (rc < 0 && (errno == EINVAL || errno == EBADF)) rc = 0;
  close(fd);
  return rc;
}

static int l_write_atomic(lua_State *L) {
  size_t plen, len;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &len);
  mode_t mode = opt_mode(L, 3, 0600);
  static unsigned counter;
  const char *tmp;
  int fd, err;
  luaL_argcheck(L, plen > 0 && strlen(path) == plen, 1, "invalid path");
  tmp = lua_pushfstring(L, "%s.tmp.%d.%d", path, (int)getpid(), (int)++counter);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return io_fail(L, "cannot create", tmp, errno);
  if (write_all(fd, data, len) < 0 || fsync(fd) < 0) {
    err = errno;
    close(fd);
    unlink(tmp);
    return io_fail(L, "cannot write", tmp, err);
  }
  if (close(fd) < 0) {
    err = errno;
    unlink(tmp);
    return io_fail(L, "cannot write", tmp, err);
  }
  if (rename(tmp, path) < 0) {
    err = errno;
    unlink(tmp);
    return io_fail(L, "cannot rename into", path, err);
  }
  if (sync_dir(path) < 0) return io_fail(L, "cannot sync the directory of", path, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_append(lua_State *L) {
  size_t plen, len;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &len);
  mode_t mode = opt_mode(L, 3, 0600);
  int sync = lua_toboolean(L, 4);
  int fd, err;
  luaL_argcheck(L, plen > 0 && strlen(path) == plen, 1, "invalid path");
  /* O_NOFOLLOW: a link planted where the log goes (a shared /tmp) must not
   * redirect our writes into a file of the link owner's choosing. */
  fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0 && errno == ELOOP) {
    lua_pushfstring(L, "cannot open %s: it is a symbolic link (refused)", path);
    return kw_fail_errno(L, ELOOP);
  }
  if (fd < 0) return io_fail(L, "cannot open", path, errno);
  if (write_all(fd, data, len) < 0 || (sync && fsync(fd) < 0)) {
    err = errno;
    close(fd);
    return io_fail(L, "cannot append to", path, err);
  }
  if (close(fd) < 0) return io_fail(L, "cannot append to", path, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_mkdirs(lua_State *L) {
  size_t len, i;
  const char *path = luaL_checklstring(L, 1, &len);
  mode_t mode = opt_mode(L, 2, 0700);
  char *buf;
  struct stat st;
  luaL_argcheck(L, len > 0 && strlen(path) == len, 1, "invalid path");
  buf = (char *)lua_newuserdatauv(L, len + 1, 0);
  memcpy(buf, path, len + 1);
  for (i = 1; i <= len; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    buf[i] = '\0';
    if (mkdir(buf, mode) < 0 && errno != EEXIST) return io_fail(L, "cannot create", buf, errno);
    if (i < len) buf[i] = '/';
  }
  if (stat(path, &st) < 0) return io_fail(L, "cannot create", path, errno);
  if (!S_ISDIR(st.st_mode)) return io_fail(L, "cannot create", path, ENOTDIR);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) < 0) return io_fail(L, "cannot stat", path, errno);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushstring(L, S_ISDIR(st.st_mode) ? "directory" : S_ISREG(st.st_mode) ? "file" : "other");
  lua_setfield(L, -2, "type");
  return 1;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

#define LOCK_MT "kpiwatch.fs.lock"

static int l_lock(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int *fd = (int *)lua_newuserdatauv(L, sizeof *fd, 0);
  *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (*fd < 0) return luaL_fileresult(L, 0, path);
  luaL_setmetatable(L, LOCK_MT);
  while (flock(*fd, LOCK_EX | LOCK_NB) < 0) {
    if (errno == EINTR) continue;
    int err = errno;
    close(*fd);
    *fd = -1;
    errno = err;
    return luaL_fileresult(L, 0, path);
  }
  return 1;
}

/* Closing the descriptor drops the flock. */
static int l_unlock(lua_State *L) {
  int *fd = (int *)luaL_checkudata(L, 1, LOCK_MT);
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
  return 0;
}

static const luaL_Reg lock_meta[] = {
    {"unlock", l_unlock}, {"__gc", l_unlock}, {"__close", l_unlock}, {NULL, NULL}};

static const luaL_Reg funcs[] = {{"write_atomic", l_write_atomic},
                                 {"append", l_append},
                                 {"mkdirs", l_mkdirs},
                                 {"stat", l_stat},
                                 {"getpid", l_getpid},
                                 {"lock", l_lock},
                                 {NULL, NULL}};

int luaopen_kpiwatch__fs(lua_State *L) {
  if (luaL_newmetatable(L, LOCK_MT)) {
    luaL_setfuncs(L, lock_meta, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushinteger(L, EWOULDBLOCK);
  lua_setfield(L, -2, "EWOULDBLOCK");
  return 1;
}
