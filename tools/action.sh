#!/usr/bin/env bash
# tools/action.sh: the body of action.yml. Reads the Action's inputs from
# INPUT_* variables, gets kpiwatch (INPUT_INSTALL), runs `kpiwatch run` or
# `kpiwatch gate`, and writes verdict= and exit_code= to $GITHUB_OUTPUT
# (`kpiwatch run` writes execution_id= itself).
#
# install=container runs this same script inside debian:12 with the source
# of the Action mounted, because a .deb built for Debian 12 may not install
# on Ubuntu runners (library package names differ); the workspace and the
# runner's temp folder (GITHUB_OUTPUT, GITHUB_EVENT_PATH, the step summary)
# are mounted at the same paths so kpiwatch writes where GitHub reads.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
KPIWATCH=${KPIWATCH:-kpiwatch}

lines() { # one array element per non-empty line of $1, trimmed
  local line
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}
    line=${line%"${line##*[![:space:]]}"}
    [ -n "$line" ] && printf '%s\0' "$line"
  done <<<"$1"
}

install=${INPUT_INSTALL:-container}
case "$install" in
  container)
    names=()
    while IFS='=' read -r name _; do
      case "$name" in FI_*|GITHUB_*|INPUT_*|KPIWATCH_*|RUNNER_*|CI) names+=(-e "$name") ;; esac
    done < <(env)
    mounts=(-v "$here:/kpiwatch-src:ro")
    for d in "${GITHUB_WORKSPACE:-}" "${RUNNER_TEMP:-}"; do
      [ -n "$d" ] && mounts+=(-v "$d:$d")
    done
    exec docker run --rm "${mounts[@]}" "${names[@]}" -e INPUT_INSTALL=source \
      -w "${GITHUB_WORKSPACE:-/}" debian:12 bash /kpiwatch-src/tools/action.sh
    ;;
  source)
    # inside the container: the project's own dependency script and build
    cp -r "$here" /tmp/kpiwatch-src && cd /tmp/kpiwatch-src || exit 2
    tools/deps.sh build >&2 || exit 2
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKW_TESTS=OFF >&2 && cmake --build build -j "$(nproc)" >&2 || exit 2
    KPIWATCH=/tmp/kpiwatch-src/build/kpiwatch
    cd "${GITHUB_WORKSPACE:-/}" || exit 2
    ;;
  deb)
    [ -f "${INPUT_DEB:-}" ] || { echo "kpiwatch action: install=deb needs the path of a .deb in 'deb'" >&2; exit 2; }
    sudo apt-get install -y "$(realpath "$INPUT_DEB")" >&2 || exit 2
    ;;
  none) ;;
  *) echo "kpiwatch action: unknown install '$install' (container, deb or none)" >&2; exit 2 ;;
esac

args=()
if [ -n "${INPUT_RUN_TEST:-}${INPUT_NAME:-}" ]; then
  args+=(run)
  [ -n "${INPUT_RUN_TEST:-}" ] && args+=("$INPUT_RUN_TEST")
  [ -n "${INPUT_NAME:-}" ] && args+=(--name "$INPUT_NAME")
elif [ -n "${INPUT_EXECUTION_ID:-}" ]; then
  args+=(gate "$INPUT_EXECUTION_ID")
else
  echo "kpiwatch action: give run-test, name or execution-id" >&2
  exit 2
fi
while IFS= read -r -d '' r; do args+=(--require "$r"); done < <(lines "${INPUT_REQUIRE:-}")
while IFS= read -r -d '' r; do args+=(--max-drop "$r"); done < <(lines "${INPUT_MAX_DROP:-}")
while IFS= read -r -d '' r; do args+=(--rules "$r"); done < <(lines "${INPUT_RULES:-}")
[ -n "${INPUT_BASELINE:-}" ] && args+=(--baseline "$INPUT_BASELINE")
[ -n "${INPUT_COMMENT:-}" ] && args+=(--comment "$INPUT_COMMENT")
while IFS= read -r -d '' r; do args+=("$r"); done < <(lines "${INPUT_ARGS:-}")

"$KPIWATCH" "${args[@]}"
code=$?
case $code in 0) verdict=pass ;; 1) verdict=fail ;; *) verdict=error ;; esac
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  {
    echo "verdict=$verdict"
    echo "exit_code=$code"
    [ -n "${INPUT_EXECUTION_ID:-}" ] && echo "execution_id=$INPUT_EXECUTION_ID"
  } >>"$GITHUB_OUTPUT"
fi
exit $code
