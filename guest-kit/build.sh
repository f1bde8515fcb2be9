#!/usr/bin/env bash
# Build the guest kit (all programs into guest-kit/build/). Checks the tools
# first and names the Debian package that provides a missing one.
#   guest-kit/build.sh [make arguments...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
missing=0
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "build.sh: '$1' not found: apt-get install $2" >&2
        missing=1
    fi
}
need gcc gcc
need as binutils
need ld binutils
need make make
[ "$missing" = 0 ] || exit 1
if ! gcc -dumpmachine | grep -q '^x86_64-'; then
    echo "build.sh: gcc targets $(gcc -dumpmachine), need an x86_64 gcc" >&2
    exit 1
fi
exec make -C "$here" "$@"
