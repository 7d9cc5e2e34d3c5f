#!/usr/bin/env bash
# `make deb`: the package CPack builds from the install rules holds the
# binary, the man page and the examples, its Depends comes from
# dpkg-shlibdeps (the libraries the binary links), and it installs with
# dpkg into a scratch root where the installed binary runs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
build=$(cd "$(dirname "$KPIWATCH")" && pwd)
[ -f "$build/CPackConfig.cmake" ] || fail "no CPackConfig.cmake in $build"

cpack --config "$build/CPackConfig.cmake" -G DEB -B "$tmp/pkg" >"$tmp/cpack.log" 2>&1 ||
  { cat "$tmp/cpack.log"; fail "cpack failed"; }
deb=$(ls "$tmp"/pkg/kpiwatch_*.deb)

info=$(dpkg-deb -I "$deb")
grep -q '^ Package: kpiwatch$' <<<"$info" || fail "no Package field: $info"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in liblua5.4-0 libuv1 libcurl4 libc6; do
  grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib: $depends"
done

contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/kpiwatch ./usr/share/man/man1/kpiwatch.1 ./usr/share/doc/kpiwatch/examples/alerts.lua \
  ./usr/share/doc/kpiwatch/examples/github-workflow.yml ./usr/share/doc/kpiwatch/examples/gitlab-ci.yml; do
  grep -q " $f\$" <<<"$contents" || fail "the package lacks $f"
done

# a scratch root: dpkg's database and nothing else (the libraries are the
# host's, so the installed binary can run from the scratch root)
root=$tmp/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
: >"$root/var/lib/dpkg/status"
dpkg --root="$root" --force-depends --log=/dev/null -i "$deb" >"$tmp/dpkg.log" 2>&1 ||
  { cat "$tmp/dpkg.log"; fail "dpkg -i failed"; }
dpkg --root="$root" -s kpiwatch | grep -q '^Status: install ok installed$' || fail "not installed"
version=$("$root/usr/bin/kpiwatch" --version)
[[ $version == kpiwatch\ * ]] || fail "installed binary: --version said '$version'"
echo "ok: $(basename "$deb") ($depends)"
