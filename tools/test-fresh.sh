#!/usr/bin/env bash
# tools/test-fresh.sh [DIR]: the README's two commands, each run first, on a
# fresh Debian 12 (`make test-fresh`; issue 13 item 25). A minimal system
# is made once with debootstrap (kept in DIR/base, default build-fresh), with
# only git and make added, as the README says must exist; then, each in its
# own copy of it, a clone of this checkout runs
#   1. `make run`   (must build with no test package installed, then run)
#   2. `make $FRESH_TEST` (default `test`, the README's command; test-fast
#      for a quicker check)
# Needs root, debootstrap, and the Debian mirror of /etc/apt (FRESH_MIRROR
# overrides it). Not part of `make test`: it downloads and installs a few
# hundred MB of packages and takes minutes (see doc/testing.md).
set -euo pipefail

cd "$(dirname "$0")/.."
src=$(pwd)
dir=$(realpath -m "${1:-build-fresh}")
FRESH_TEST=${FRESH_TEST:-test}
MIRROR=${FRESH_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p; s/^deb \(http[^ ]*debian\)\/* bookworm .*/\1/p' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

say() { echo "test-fresh: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root (debootstrap, chroot)"; exit 2; }
command -v debootstrap >/dev/null || { say "needs debootstrap (apt-get install debootstrap)"; exit 2; }

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

# in_root ROOT CMD: runs CMD (a shell command line) in ROOT as root
in_root() {
  local root=$1
  shift
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb /bin/sh -c "$*"
}

mount_api() {
  local root=$1
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount --rbind /dev "$root/dev" && mounted+=("$root/dev")
  mount -t tmpfs tmpfs "$root/tmp" && mounted+=("$root/tmp")
  # downloaded .deb files are shared between the copies (installed anew in
  # each: only the download is saved)
  mkdir -p "$dir/archives/partial"
  mount --bind "$dir/archives" "$root/var/cache/apt/archives" && mounted+=("$root/var/cache/apt/archives")
  cp /etc/resolv.conf "$root/etc/resolv.conf"
}

base=$dir/base
t0=$(date +%s)
if [ ! -x "$base/usr/bin/make" ]; then
  say "debootstrap bookworm from $MIRROR into $base"
  rm -rf "$base"
  mkdir -p "$dir"
  debootstrap --variant=minbase bookworm "$base" "$MIRROR" >"$dir/debootstrap.log" 2>&1 ||
    { tail -20 "$dir/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }
  echo "deb $MIRROR bookworm main" >"$base/etc/apt/sources.list"
  mount_api "$base"
  in_root "$base" "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git make ca-certificates >/dev/null"
  cleanup
  mounted=()
fi
say "base system ready ($(($(date +%s) - t0)) s)"

# run_first NAME TARGET: a copy of the base, a clone of HEAD, `make TARGET`
status=0
run_first() {
  local name=$1 target=$2 root=$dir/$1 t
  t=$(date +%s)
  rm -rf "$root"
  cp -a "$base" "$root"
  git clone -q "$src" "$root/src"
  mount_api "$root"
  if in_root "$root" "cd /src && make $target" >"$dir/$name.log" 2>&1; then
    say "$name: \`make $target\` first on a fresh system: ok ($(($(date +%s) - t)) s)"
  else
    tail -30 "$dir/$name.log" >&2
    say "$name: \`make $target\` first on a fresh system FAILED ($(($(date +%s) - t)) s; $dir/$name.log)"
    status=1
  fi
  cleanup
  mounted=()
  rm -rf "$root"
}

run_first run run
run_first test "$FRESH_TEST"
say "done in $(($(date +%s) - t0)) s"
exit $status
