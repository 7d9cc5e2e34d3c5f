#!/usr/bin/env bash
# tools/lint.sh [BUILD]: the static checks (make lint).
#  - clang-tidy with the checks of .clang-tidy, every warning an error;
#  - cppcheck (warning, style, performance, portability) with the
#    suppressions of tools/cppcheck.supp and inline `cppcheck-suppress`;
#  - luacheck over every Lua file with .luacheckrc, every warning an error.
# Both read the compile flags from BUILD/compile_commands.json (default
# build/, configured by CMake with CMAKE_EXPORT_COMPILE_COMMANDS).
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
cd "$SRC" || exit 2
if [ ! -f "$BUILD/compile_commands.json" ]; then
  echo "lint: no $BUILD/compile_commands.json: configure first (cmake -S . -B $BUILD)" >&2
  exit 2
fi
files=(runtime/*.c)
status=0

echo "lint: clang-tidy ${#files[@]} files"
# One process per file, two at a time; -quiet keeps only the findings.
if ! printf '%s\n' "${files[@]}" |
  xargs -P "${LINT_JOBS:-2}" -n 1 clang-tidy -quiet -p "$BUILD" 2>/dev/null; then
  echo "lint: clang-tidy FAILED" >&2
  status=1
fi

echo "lint: cppcheck"
if ! cppcheck --project="$BUILD/compile_commands.json" --file-filter='runtime/*' \
  --enable=warning,style,performance,portability --std=c11 --inline-suppr \
  --suppressions-list=tools/cppcheck.supp --error-exitcode=1 -q -j "${LINT_JOBS:-2}"; then
  echo "lint: cppcheck FAILED" >&2
  status=1
fi

echo "lint: luacheck"
# -q: only the files with findings; luacheck exits non-zero on any warning.
if ! luacheck -q --codes --no-color .; then
  echo "lint: luacheck FAILED" >&2
  status=1
fi

[ $status -eq 0 ] && echo "lint: ok (clang-tidy, cppcheck and luacheck clean)"
exit $status
