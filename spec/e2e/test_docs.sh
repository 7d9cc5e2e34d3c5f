#!/usr/bin/env bash
# The documentation stays true to the program:
#  - doc/kpiwatch.1 passes mandoc's lint (warnings included);
#  - every option the command-line parsers accept is printed by --help, and
#    every option --help prints (kpiwatch, get, gate, sandbox) is in the man
#    page, so a new option cannot go undocumented;
#  - --help and the man page name every exit status;
#  - doc/lua-api.md is what tools/gen_lua_api.lua generates from lualib/
#    today (run `make doc` after changing an annotation).
set -eu
. "$(dirname "$0")/lib.sh"
cd "$SRC"

command -v mandoc >/dev/null || fail "mandoc is not installed (tools/deps.sh test installs it)"

# -W warning: warnings and errors both fail; mandoc exits non-zero on them.
mandoc -Tlint -W warning doc/kpiwatch.1 >"$tmp/lint" 2>&1 || { cat "$tmp/lint" >&2; fail "mandoc -Tlint doc/kpiwatch.1"; }
[ ! -s "$tmp/lint" ] || { cat "$tmp/lint" >&2; fail "mandoc -Tlint reported something"; }
# Rendered wide, so no option is broken across lines.
mandoc -Tascii -O width=1000 doc/kpiwatch.1 | sed 's/.\x08//g' >"$tmp/man.txt"
grep -q '^NAME' "$tmp/man.txt" || fail "the man page has no NAME section"

# Options each parser accepts: the string literals of the form "--x" or "-x"
# it compares with, and the keys of its option tables.
parser_options() {
  grep -oE '"--?[a-zA-Z][a-zA-Z-]*"' "$1" | tr -d '"' | sort -u
}

check_help() { # NAME HELPFILE PARSER...
  name=$1 help=$2
  shift 2
  for src in "$@"; do
    for opt in $(parser_options "$src"); do
      grep -qE -- "(^|[^a-zA-Z-])$opt([^a-zA-Z-]|$)" "$help" ||
        fail "$src accepts $opt but '$name --help' does not list it"
    done
  done
  for opt in $(grep -oE -- '(^|[ ,(\[])--?[a-zA-Z][a-zA-Z-]*' "$help" | grep -oE -- '--?[a-zA-Z][a-zA-Z-]*' | sort -u); do
    grep -qE -- "(^|[^a-zA-Z-])$opt([^a-zA-Z-]|$)" "$tmp/man.txt" ||
      fail "'$name --help' lists $opt but doc/kpiwatch.1 does not"
  done
}

"$KPIWATCH" --help >"$tmp/help" || fail "kpiwatch --help exited $?"
"$KPIWATCH" get --help >"$tmp/help-get" || fail "kpiwatch get --help exited $?"
"$KPIWATCH" gate --help >"$tmp/help-gate" || fail "kpiwatch gate --help exited $?"
"$KPIWATCH" sandbox --help >"$tmp/help-sandbox" || fail "kpiwatch sandbox --help exited $?"
"$KPIWATCH" exporter --help >"$tmp/help-exporter" || fail "kpiwatch exporter --help exited $?"
"$KPIWATCH" check --help >"$tmp/help-check" || fail "kpiwatch check --help exited $?"
"$KPIWATCH" watch --help >"$tmp/help-watch" || fail "kpiwatch watch --help exited $?"

check_help kpiwatch "$tmp/help" lualib/kpiwatch/cli/init.lua
check_help "kpiwatch gate" "$tmp/help-gate" lualib/kpiwatch/cli/gate.lua
check_help "kpiwatch get" "$tmp/help-get" lualib/kpiwatch/cli/get.lua
check_help "kpiwatch sandbox" "$tmp/help-sandbox" lualib/kpiwatch/cli/sandbox.lua
check_help "kpiwatch exporter" "$tmp/help-exporter" lualib/kpiwatch/cli/exporter.lua
check_help "kpiwatch check" "$tmp/help-check" lualib/kpiwatch/cli/check.lua lualib/kpiwatch/cli/rules_cmd.lua
check_help "kpiwatch watch" "$tmp/help-watch" lualib/kpiwatch/cli/watch.lua lualib/kpiwatch/cli/rules_cmd.lua

for code in 0 1 2 3 129 130 143; do
  for f in help help-gate; do
    grep -qE "(^|[^0-9])$code([^0-9]|$)" "$tmp/$f" || fail "'$f' does not name exit status $code"
  done
  sed -n '/^EXIT STATUS/,/^[A-Z]/p' "$tmp/man.txt" | grep -qE "^ +$code( |\$)" ||
    fail "EXIT STATUS of doc/kpiwatch.1 lacks $code"
done

# Environment variables the code reads are in the man page.
for var in $(grep -rhoE 'getenv\("[A-Z_0-9]+"\)' lualib runtime | grep -oE '[A-Z][A-Z_0-9]+' | sort -u); do
  case $var in HOME | HOSTNAME) continue ;; esac
  grep -q -- "$var" "$tmp/man.txt" || fail "the code reads \$$var but doc/kpiwatch.1 does not mention it"
done

# doc/lua-api.md is generated and current.
"$KPIWATCH" tools/gen_lua_api.lua lualib >"$tmp/lua-api.md" || fail "tools/gen_lua_api.lua failed"
if ! cmp -s "$tmp/lua-api.md" doc/lua-api.md; then
  diff -u doc/lua-api.md "$tmp/lua-api.md" | head -40 >&2 || true
  fail "doc/lua-api.md is stale: run 'make doc' and commit it"
fi
for mod in task http json kpis model alert notify sandbox repl; do
  grep -q "^## kpiwatch\.$mod\$" doc/lua-api.md || fail "doc/lua-api.md has no section for kpiwatch.$mod"
done

echo "ok: man page lint, --help and man page options, exit statuses, lua-api.md current"
