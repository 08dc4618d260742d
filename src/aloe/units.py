"""Unit constants (one place): stress conversions between ASE's eV/A^3 and VASP's kbar, and GPa."""

from __future__ import annotations

#: 1 eV/A^3 in kbar.
EV_PER_A3_IN_KBAR = 1602.1766208
#: 1 kbar in GPa.
KBAR_IN_GPA = 0.1
#: 1 eV/A^3 in GPa.
EV_PER_A3_IN_GPA = EV_PER_A3_IN_KBAR * KBAR_IN_GPA
