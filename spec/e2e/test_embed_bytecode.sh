#!/usr/bin/env bash
# The Lua library is embedded as luac5.4 bytecode with its debug
# information (issue 14 §4): no source text in the binary, every module
# named lualib/kpiwatch/x.lua with its line numbers (tracebacks), and
# KPIWATCH_LUALIB still loads the source.
set -eu
. spec/e2e/lib.sh

# 1. Comments never reach bytecode: a binary embedding the source holds the
# long comment lines of lualib/.
found=$(python3 - "$KPIWATCH" "$SRC/lualib" <<'EOF'
import pathlib, sys
binary = pathlib.Path(sys.argv[1]).read_bytes()
n = 0
for f in sorted(pathlib.Path(sys.argv[2]).rglob("*.lua")):
    for line in f.read_text().splitlines():
        line = line.strip()
        if line.startswith("-- ") and len(line) > 40:
            n += 1
            if line.encode() in binary:
                print(f"{f}: {line}")
if n == 0:
    print("no comment lines found to look for")
EOF
)
[ -z "$found" ] || fail "source text in the binary (not bytecode?): $(echo "$found" | head -3)"
echo "ok: no lualib source text in the binary"

# 2. Line information is kept: the chunk name and the lines of a function
# of an embedded module match the source file.
line=$(grep -n '^function M.all(' "$SRC/lualib/kpiwatch/task.lua" | cut -d: -f1)
[ -n "$line" ] || fail "no M.all in lualib/kpiwatch/task.lua"
out=$("$KPIWATCH" -e "
  local i = debug.getinfo(require('kpiwatch.task').all, 'SL')
  local first
  for l in pairs(i.activelines) do if not first or l < first then first = l end end
  print(i.source, i.linedefined, first)")
set -- $out
[ "$1" = "@lualib/kpiwatch/task.lua" ] || fail "chunk name: $out"
[ "$2" = "$line" ] || fail "linedefined $2, source says $line"
[ "${3:-nil}" != nil ] && [ "$3" -gt "$line" ] || fail "no line information (stripped?): $out"
echo "ok: embedded modules keep file and line information"

# a traceback through an embedded module names its file:line
tb=$("$KPIWATCH" -e "
  local ok, err = xpcall(require('kpiwatch.task').all, debug.traceback, 42)
  print(err)" 2>&1)
echo "$tb" | grep -Eq 'lualib/kpiwatch/task\.lua:[0-9]+:' || fail "traceback without file:line: $tb"
echo "ok: tracebacks name lualib/kpiwatch/task.lua:line"

# 3. KPIWATCH_LUALIB=DIR loads DIR's source instead.
mkdir -p "$tmp/lib"
cp -r "$SRC/lualib/kpiwatch" "$tmp/lib/"
printf '\nM.kw_from_source = "yes"\n' >>"$tmp/lib/kpiwatch/task.lua"
sed -i '$!{/^return M$/d}' "$tmp/lib/kpiwatch/task.lua"
echo 'return M' >>"$tmp/lib/kpiwatch/task.lua"
got=$(KPIWATCH_LUALIB="$tmp/lib" "$KPIWATCH" -e "print(require('kpiwatch.task').kw_from_source)")
[ "$got" = yes ] || fail "KPIWATCH_LUALIB did not load the source: $got"
got=$("$KPIWATCH" -e "print(require('kpiwatch.task').kw_from_source)")
[ "$got" = nil ] || fail "the embedded library changed: $got"
echo "ok: KPIWATCH_LUALIB loads the source"
