#!/bin/sh
# Install the Debian packages GPAW is compiled against (see install/gpaw-siteconfig.py), only those missing.
# libxc is not among them: Debian 12's libxc 5 breaks r2SCAN (see install/build-libxc.sh, which needs cmake).
# Usage: install/debian-packages.sh PYTHON   (PYTHON: the interpreter GPAW is built for; its headers are checked)
# Uses apt-get as root, else through sudo; on a system without dpkg it only says what is needed.
set -eu

PYTHON=${1:-python3}
PACKAGES="g++ cmake libopenblas-dev libfftw3-dev"

# Python headers: present in python.org/pyenv builds; Debian's own python needs python3.X-dev.
include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ ! -f "$include/Python.h" ]; then
    PACKAGES="$PACKAGES python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev"
fi

if ! command -v dpkg >/dev/null 2>&1; then
    echo "note: not a Debian system; GPAW needs a C++ compiler, cmake, OpenBLAS and FFTW3 (headers included)." >&2
    echo "      Install them, and adapt install/gpaw-siteconfig.py (or set GPAW_CONFIG) if they are elsewhere." >&2
    exit 0
fi

missing=""
for package in $PACKAGES; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: GPAW needs the Debian packages:$missing" >&2
    echo "       not root and no sudo: ask an administrator for: apt-get install$missing" >&2
    exit 1
fi

echo "installing Debian packages for GPAW:$missing"
if ! { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing; }; then
    echo "error: could not install the Debian packages:$missing" >&2
    echo "       install them by hand (apt-get install$missing) and run make again" >&2
    exit 1
fi
