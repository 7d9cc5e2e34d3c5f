#!/usr/bin/env bash
# libcurl, libh2o, libcrypto and libedit are opened when the module that needs them
# is (runtime/dynload.h), not at start: startup is a goal (issue 8). Reads
# the process's own memory map from Lua before and after first use.
set -u
KW=${KPIWATCH:-build/kpiwatch}
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# mapped PATTERN CHUNK: runs CHUNK, then prints whether a library matching
# PATTERN is mapped into the process
mapped() {
  "$KW" -e "$2
    for line in io.lines('/proc/self/maps') do
      if line:find('$1', 1, true) then print('mapped') os.exit(0) end
    end
    print('not mapped')" 2>&1
}

expect() {
  local want=$1 lib=$2 chunk=$3 what=$4 got
  got=$(mapped "$lib" "$chunk")
  if [ "$got" = "$want" ]; then echo "ok: $lib $want $what"; else fail "$lib: $got $what (want $want)"; fi
}

# A build linked without --as-needed (the sanitizer build: Debian's gcc
# drops --as-needed with -fsanitize) keeps the libraries as dependencies of
# the executable, so the loader maps them at start anyway; only check that
# they work there.
if LD_TRACE_LOADED_OBJECTS=1 "$KW" 2>/dev/null | grep -q 'libcurl\.so'; then
  echo "skip: $KW depends on libcurl at link time (no --as-needed): lateness not checked"
else
  expect "not mapped" libcurl.so "" "at start"
  expect "not mapped" libh2o.so "" "at start"
  expect "not mapped" libcrypto.so "" "at start"
  expect "not mapped" libedit.so "" "at start"
  expect "not mapped" libcurl.so "local _ = json.encode{1}; local _ = task.now()" "after json and task"
  expect "mapped" libcurl.so "local _ = http.request" "once http is used"
  expect "not mapped" libh2o.so "local _ = http.request" "by the client alone"
fi
expect "mapped" libh2o.so "local s = http.serve{handler = function() return {status = 204} end}; s:close()" "once a server starts"
expect "mapped" libcrypto.so "local _ = require('kpiwatch._crypto').sha256('x')" "once kpiwatch._crypto is used"
expect "mapped" libedit.so "local _ = require('kpiwatch._repl')" "once kpiwatch._repl is opened"

# and they work once loaded: a request to a server in the same process
out=$("$KW" -e '
  local s = http.serve{ handler = function(req) return { status = 200, body = "pong " .. req.path } end }
  local r = http.request(s.url .. "/x")
  s:close()
  local c = require "kpiwatch._crypto"
  print(r.status, r.body, c.base64_encode(c.sha256("abc")):sub(1, 8))' 2>&1)
if [ "$out" = "$(printf '200\tpong /x\tungWv48B')" ]; then echo "ok: loaded libraries work"; else fail "loaded libraries: $out"; fi

[ $fails -eq 0 ] || exit 1
echo "all lazy library checks passed"
