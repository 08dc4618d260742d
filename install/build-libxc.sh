#!/bin/sh
# Build libxc 7 as a static library for GPAW (see install/gpaw-siteconfig.py), into PREFIX; skipped when there.
# Usage: install/build-libxc.sh PREFIX PYTHON   (PYTHON: a venv's interpreter, whose pip fetches the source)
#
# Why not Debian's libxc-dev: Debian 12 has libxc 5, which always enforces the "Fermi hole curvature" in meta-GGAs
# (only libxc >= 7 lets GPAW switch it off). With it, r2SCAN in GPAW blows up (energies of -1e9 eV, then NaN)
# wherever there is vacuum, e.g. every isolated-atom calculation; bulk cells happen to survive.
set -eu

PREFIX=$1
PYTHON=$2
VERSION=7.0.0
HERE=$(cd "$(dirname "$0")" && pwd)

if [ -f "$PREFIX/lib/libxc.a" ] && grep -q "XC_VERSION \"$VERSION\"" "$PREFIX/include/xc_version.h" 2>/dev/null; then
    exit 0
fi
command -v cmake >/dev/null 2>&1 || { echo "error: building libxc needs cmake (apt-get install cmake)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building libxc $VERSION (static, a few minutes) into $PREFIX"
# The sdist names itself pylibxc unless told otherwise (pip reads its metadata in an isolated build env).
PYLIBXC_PACKAGE_NAME=pylibxc7 "$PYTHON" -m pip download --quiet --no-deps \
    --no-binary pylibxc7 --require-hashes -r "$HERE/libxc-requirements.txt" -d "$work"
tar -xzf "$work/pylibxc7-$VERSION.tar.gz" -C "$work"
# KXC/LXC (3rd/4th derivatives) are not used by GPAW; ENABLE_XHOST off: no -march=native.
# The CMake project also builds a small pybind11 helper, which needs to know the Python.
cmake -S "$work/pylibxc7-$VERSION" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DBUILD_SHARED_LIBS=OFF -DBUILD_FPIC=ON -DBUILD_TESTING=OFF \
    -DENABLE_XHOST=OFF -DDISABLE_KXC=ON -DDISABLE_LXC=ON -DPYTHON_EXECUTABLE="$("$PYTHON" -c 'import sys; print(sys.executable)')" \
    >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; exit 1; }
jobs=$(nproc 2>/dev/null || echo 2)
cmake --build "$work/build" --target xc -j "$jobs" >"$work/build.log" 2>&1 || { tail -50 "$work/build.log" >&2; exit 1; }
mkdir -p "$PREFIX/lib" "$PREFIX/include"
cp "$work/build/libxc.a" "$PREFIX/lib/"
cp "$work/pylibxc7-$VERSION"/src/xc_funcs*.h "$work/build/xc_version.h" "$PREFIX/include/"
sed 's/#include <xc_version.h>/#include "xc_version.h"/' "$work/pylibxc7-$VERSION/src/xc.h" >"$PREFIX/include/xc.h"
echo "libxc $VERSION installed in $PREFIX"
