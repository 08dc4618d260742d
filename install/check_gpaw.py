"""Check that GPAW is installed the way aloe needs it (run by ``make install``; exit status 1 when not).

aloe's r2SCAN labels need GPAW built with libxc >= 7 (without libxc the functional does not exist; with libxc 5/6,
whose Fermi-hole-curvature enforcement GPAW cannot switch off, r2SCAN blows up in vacuum), and its speed needs FFTW
and a native BLAS. The PAW setups come from the ``gpaw-data`` package, which GPAW finds by itself.
Usage: ``python install/check_gpaw.py [expected gpaw version]``.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Print what GPAW was built with; return 1 when something aloe needs is missing."""
    expected = argv[1] if len(argv) > 1 else None
    try:
        import gpaw
        import gpaw.cgpaw as cgpaw
        import gpaw.fftw as fftw
    except ImportError as err:
        print(f"gpaw is not importable: {err}", file=sys.stderr)
        return 1
    try:
        import gpaw_data

        data_version = gpaw_data.__version__
    except ImportError:
        data_version = None
    libxc = gpaw.get_libraries().get("libxc")
    checks = {
        f"gpaw {gpaw.__version__}": expected is None or gpaw.__version__ == expected,
        f"libxc {libxc} (>= 7)": bool(libxc) and int(str(libxc).split(".")[0]) >= 7,
        "FFTW": fftw.have_fftw(),
        "native BLAS": hasattr(cgpaw, "mmm"),
        f"gpaw-data {data_version} setups in {[str(p) for p in gpaw.setup_paths]}": data_version is not None,
    }
    for what, ok in checks.items():
        print(f"  {'ok     ' if ok else 'MISSING'} {what}")
    if all(checks.values()):
        return 0
    print(
        "GPAW is not built as aloe needs it (libxc 7, FFTW, BLAS; see install/gpaw-siteconfig.py). Rebuild it: "
        "rm <venv>/.aloe-installed; make install (which rebuilds gpaw whenever this check fails)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
