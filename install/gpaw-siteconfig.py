"""GPAW build configuration for aloe (read by GPAW's setup.py through ``GPAW_CONFIG``; see the Makefile).

Serial GPAW (aloe parallelises over structures with processes), built as C++ with g++, linked against OpenBLAS
and FFTW3 (Debian packages ``libopenblas-dev``, ``libfftw3-dev``) and libxc 7 (r2SCAN and the other meta-GGAs).

libxc: the Makefile builds libxc 7 as a static library (``install/build-libxc.sh``) and passes its folder in
``ALOE_LIBXC_PREFIX``; without that variable the system's ``-lxc`` is used (fine where it is libxc >= 7; Debian 12's
libxc 5 breaks r2SCAN wherever there is vacuum, see ``install/build-libxc.sh``).

``noblas``/``nolibxc`` are set explicitly: left unset, GPAW probes for the libraries and, when one is missing,
silently builds without it (no libxc means no r2SCAN), so a missing library must fail the build instead.
"""

# flake8: noqa
# ruff: noqa
import os

mpi = False  # never pick up an mpicc/mpic++ that happens to be on PATH
compiler = "g++"  # GPAW 26.7 compiles its .c sources as C++17; plain gcc would treat them as C

fftw = True
libraries += ["fftw3"]

noblas = False
libraries += ["openblas"]

nolibxc = False
_libxc = os.environ.get("ALOE_LIBXC_PREFIX")
if _libxc:
    include_dirs += [os.path.join(_libxc, "include")]  # searched before /usr/include
    extra_link_args += [os.path.join(_libxc, "lib", "libxc.a")]
    if "xc" in libraries:
        libraries.remove("xc")
elif "xc" not in libraries:
    libraries += ["xc"]

scalapack = False
