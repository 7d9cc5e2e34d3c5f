#!/usr/bin/env bash
# The documentation stays true to the program:
#  - doc/kpiwatch.1 passes mandoc's lint (warnings included);
#  - every option the command-line parsers accept is printed by --help, and
#    every option --help prints (kpiwatch and each of its commands) is in the
#    man page, so a new option cannot go undocumented;
#  - --help and the man page name every exit status, and `make install`
#    installs the man page;
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
# it compares with, and the keys of its option tables. Matching is done with
# bash's own regex on the texts read once (the machine may be loaded: few forks).
man_text=$(<"$tmp/man.txt")
has_word() { # TEXT OPTION: OPTION appears as a whole word in TEXT
  local re="(^|[^a-zA-Z-])$2([^a-zA-Z-]|\$)"
  [[ $1 =~ $re ]]
}

check_help() { # NAME HELPFILE PARSER
  local name=$1 help_text src_text opt re rest
  help_text=$(<"$2")
  src_text=$(<"$3")
  rest=$src_text
  re='"(--?[a-zA-Z][a-zA-Z-]*)"'
  while [[ $rest =~ $re ]]; do
    opt=${BASH_REMATCH[1]}
    rest=${rest#*"${BASH_REMATCH[0]}"}
    has_word "$help_text" "$opt" || fail "$3 accepts $opt but '$name --help' does not list it"
  done
  rest=$help_text
  re="(^|[][ ,("$'\n'"])(--?[a-zA-Z][a-zA-Z-]*)"
  while [[ $rest =~ $re ]]; do
    opt=${BASH_REMATCH[2]}
    rest=${rest#*"${BASH_REMATCH[0]}"}
    has_word "$man_text" "$opt" || fail "'$name --help' lists $opt but doc/kpiwatch.1 does not"
  done
}

"$KPIWATCH" --help >"$tmp/help" || fail "kpiwatch --help exited $?"
check_help kpiwatch "$tmp/help" lualib/kpiwatch/cli/init.lua
# Every command of cli/init.lua's table (name = "kpiwatch.cli.name"), so a new
# command is covered without editing this test.
commands=$(sed -n 's/^ *\([a-z_]*\) = "kpiwatch\.cli\.\([a-z_]*\)",*$/\1/p' lualib/kpiwatch/cli/init.lua)
[ -n "$commands" ] || fail "found no command in lualib/kpiwatch/cli/init.lua"
for cmd in $commands; do
  "$KPIWATCH" "$cmd" --help >"$tmp/help-$cmd" || fail "kpiwatch $cmd --help exited $?"
  # the command's parser, and the shared parsers it requires (cli/rules_cmd.lua)
  parsers="lualib/kpiwatch/cli/$cmd.lua"
  for dep in $(sed -n 's/.*require[ (]*"kpiwatch\.cli\.\([a-z_]*\)".*/\1/p' "lualib/kpiwatch/cli/$cmd.lua" | sort -u); do
    case "$dep" in "$cmd" | init) ;; *) [ -f "lualib/kpiwatch/cli/$dep.lua" ] && parsers="$parsers lualib/kpiwatch/cli/$dep.lua" ;; esac
  done
  # shellcheck disable=SC2086
  check_help "kpiwatch $cmd" "$tmp/help-$cmd" $parsers
done

exit_section=$(sed -n '/^EXIT STATUS/,/^[A-Z]/p' "$tmp/man.txt")
help_main=$(<"$tmp/help")
help_gate=$(<"$tmp/help-gate")
for code in 0 1 2 3 129 130 143; do
  re="(^|[^0-9])$code([^0-9]|\$)"
  [[ $help_main =~ $re ]] || fail "'kpiwatch --help' does not name exit status $code"
  [[ $help_gate =~ $re ]] || fail "'kpiwatch gate --help' does not name exit status $code"
  re="(^|"$'\n'")  +$code( |"$'\n'"|\$)"
  [[ $exit_section =~ $re ]] || fail "EXIT STATUS of doc/kpiwatch.1 lacks $code"
done

# Environment variables the code reads are in the man page.
for var in $(grep -rhoE '(getenv|env)\("[A-Z_0-9]+"\)' lualib runtime | grep -oE '[A-Z][A-Z_0-9]+' | sort -u); do
  case $var in HOME | HOSTNAME) continue ;; esac
  [[ $man_text == *"$var"* ]] || fail "the code reads \$$var but doc/kpiwatch.1 does not mention it"
done

# make install puts the man page where man finds it.
build_dir=$(dirname "$KPIWATCH")
if [ -f "$build_dir/cmake_install.cmake" ]; then
  cmake --install "$build_dir" --prefix "$tmp/inst" >/dev/null || fail "cmake --install failed"
  cmp -s doc/kpiwatch.1 "$tmp/inst/share/man/man1/kpiwatch.1" || fail "make install does not install doc/kpiwatch.1 as man1/kpiwatch.1"
fi

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
