#!/usr/bin/env bash
# Every seed and regression input of the fuzz targets (spec/fuzz/corpus,
# spec/fuzz/regressions) through its driver, run by this build's kpiwatch:
# the crashes fuzzing found stay fixed in the normal and the sanitizer
# build, without clang or libFuzzer. (make test-fuzz fuzzes for real.)
set -u
KW=${KPIWATCH:-build/kpiwatch}
SRC=${KPIWATCH_SRC:-.}
fails=0
for c in "$SRC"/spec/fuzz/fuzz_*.c; do
  t=$(basename "$c" .c)
  t=${t#fuzz_}
  files=()
  for f in "$SRC/spec/fuzz/corpus/$t"/* "$SRC/spec/fuzz/regressions/$t"/*; do
    [ -f "$f" ] && files+=("$f")
  done
  if [ ${#files[@]} -eq 0 ]; then
    echo "FAIL: $t has no seed corpus" >&2
    fails=$((fails + 1))
    continue
  fi
  if ! "$KW" "$SRC/spec/fuzz/replay.lua" "$t" "${files[@]}"; then
    echo "FAIL: $t" >&2
    fails=$((fails + 1))
  fi
done
[ "$fails" -eq 0 ] || { echo "$fails fuzz targets failed their replay" >&2; exit 1; }
echo "ok: every seed and regression input passes"
