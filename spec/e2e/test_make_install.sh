#!/usr/bin/env bash
# `make install PREFIX=DIR` installs under DIR even when the build
# directory exists, configured with another prefix (issue 13 item 18).
set -euo pipefail
. spec/e2e/lib.sh
build=$(cd "$(dirname "$KPIWATCH")" && pwd)
[ -f "$build/cmake_install.cmake" ] || fail "no cmake_install.cmake in $build"
grep -q '^CMAKE_INSTALL_PREFIX:PATH=/' "$build/CMakeCache.txt" || fail "no install prefix in the cache"

# the install step make would run (the build itself is this test's binary:
# not rebuilt here, ctest may be running it)
line=$(make -s -n -C "$SRC" install BUILD="$build" PREFIX="$tmp/prefix" | grep 'cmake --install' || true)
[ -n "$line" ] || fail "make install runs no cmake --install"
grep -q -- "--prefix $tmp/prefix" <<<"$line" || fail "make install ignores PREFIX: $line"
(cd "$SRC" && eval "$line") >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "install failed"; }
[ -x "$tmp/prefix/bin/kpiwatch" ] || fail "nothing in $tmp/prefix/bin: $(cat "$tmp/install.log")"
"$tmp/prefix/bin/kpiwatch" -e 'print("installed")' | grep -q installed || fail "the installed binary does not run"
if grep -v "$tmp/prefix" "$tmp/install.log" | grep -q "Installing:"; then
  fail "installed outside PREFIX: $(cat "$tmp/install.log")"
fi
echo "ok: make install PREFIX=DIR installs under DIR"
