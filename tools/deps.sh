#!/bin/sh
# tools/deps.sh [build|test|bench|package]: make sure the Debian packages kpiwatch
# needs are installed. As root with apt-get it installs what is missing;
# otherwise it stops with the exact list to install.
set -eu

BUILD_PKGS="cmake make gcc pkg-config liblua5.4-dev lua5.4 libuv1-dev libcurl4-openssl-dev
lua-cjson-dev libh2o-dev libedit-dev libssl-dev libsqlite3-dev"
TEST_PKGS="libcmocka-dev lua-busted python3 python3-yaml curl openssl nghttp2-server clang libclang-rt-14-dev cppcheck clang-tidy lua-check
valgrind mandoc prometheus prometheus-alertmanager systemd man-db python3-scipy chromium"
BENCH_PKGS="python3-aiohttp nodejs jq hyperfine"
PACKAGE_PKGS="dpkg-dev file"

want="$BUILD_PKGS"
case "${1:-build}" in
  build) ;;
  test) want="$want $TEST_PKGS $PACKAGE_PKGS" ;;
  package) want="$want $PACKAGE_PKGS" ;;
  bench) want="$want $TEST_PKGS $BENCH_PKGS" ;;
  *) echo "usage: $0 [build|test|bench|package]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "kpiwatch: installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  exit 0
fi
echo "kpiwatch: missing Debian packages; install them with:" >&2
echo "  sudo apt-get install$missing" >&2
exit 1
