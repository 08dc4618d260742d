"""A fake VASP for tests: writes the fixture outputs into the current folder.

Usage: ``python fake_vasp.py MODE`` with MODE

ok           the PBE static (NSW 0 in INCAR) gets vasprun_static.xml, the relaxation vasprun_relax.xml + OUTCAR_relax
fail         print an error and exit 1, writing nothing
sleep        write its pid to fake_vasp.pid, then sleep (to be stopped by a time limit)
unconverged  like ok, but the relaxation's vasprun.xml says NELM = 4 (each ionic step then used all NELM steps)

A relaxation that starts from a wavefunction (ISTART 1) refuses to run without a WAVECAR (exit 5).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent


def incar() -> dict[str, str]:
    tags = {}
    for line in Path("INCAR").read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            tags[key.strip().upper()] = value.strip()
    return tags


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    print(" running    1 mpi-ranks, with    1 threads/rank (fake VASP)", flush=True)
    if mode == "fail":
        print("forrtl: severe (174): SIGSEGV, segmentation fault occurred", file=sys.stderr)
        return 1
    if mode == "sleep":
        Path("fake_vasp.pid").write_text(str(os.getpid()))
        time.sleep(60)
    tags = incar()
    static = int(tags.get("NSW", "0")) == 0
    if not static and tags.get("ISTART") == "1" and not Path("WAVECAR").is_file():
        print("ISTART = 1 but no WAVECAR", file=sys.stderr)
        return 5
    text = (DATA / ("vasprun_static.xml" if static else "vasprun_relax.xml")).read_text()
    if mode == "unconverged" and not static:
        text = text.replace('name="NELM">   200<', 'name="NELM">     4<')
    Path("vasprun.xml").write_text(text)
    if not static:
        shutil.copy(DATA / "OUTCAR_relax", "OUTCAR")
    Path("OSZICAR").write_text(
        "       N       E                     dE             d eps       ncg     rms          rms(c)\n"
        "DAV:   1    -0.151000000000E+02   -0.15100E+02   -0.10000E+03   100   0.100E+02\n"
        "   1 F= -.15100000E+02 E0= -.15090000E+02  d E =-.151000E+02  mag=     2.2900\n"
    )
    shutil.copy("POSCAR", "CONTCAR")
    if tags.get("LWAVE", "").lower() in ("true", ".true.", "t"):
        Path("WAVECAR").write_bytes(b"fake wavefunction")
    print(" General timing and accounting informations for this job:", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
