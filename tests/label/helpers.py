"""Test-only labelers (importable in child processes as tests.label.helpers.*): EMT that misbehaves on purpose."""

from __future__ import annotations

import os
import time

import numpy as np

from aloe.label.base import LabelerError
from aloe.label.emt import EMTLabeler


class FlakyEMT(EMTLabeler):
    """SCF 'does not converge' unless relax_steps >= 1 (so a retry override that sets it succeeds)."""

    def calculate(self, atoms, workdir):
        if self.settings.relax_steps < 1:
            raise LabelerError("scf_unconverged", "SCF did not converge in 2 steps (on purpose)")
        return super().calculate(atoms, workdir)


class SleepyEMT(EMTLabeler):
    """Takes 30 s for anything with Cu in it."""

    def calculate(self, atoms, workdir):
        if "Cu" in atoms.get_chemical_symbols():
            time.sleep(30)
        return super().calculate(atoms, workdir)


class CrashingEMT(EMTLabeler):
    """The process dies (like a segfault or an OOM kill) on Al."""

    def calculate(self, atoms, workdir):
        if "Al" in atoms.get_chemical_symbols():
            os._exit(3)
        return super().calculate(atoms, workdir)


class NaNEMT(EMTLabeler):
    """Returns NaN energy for Ag."""

    def calculate(self, atoms, workdir):
        calcs = super().calculate(atoms, workdir)
        if "Ag" in atoms.get_chemical_symbols():
            calcs[0].energy = float("nan")
        return calcs


class HugeForceEMT(EMTLabeler):
    """Absurd forces on Au."""

    def calculate(self, atoms, workdir):
        calcs = super().calculate(atoms, workdir)
        if "Au" in atoms.get_chemical_symbols():
            calcs[0].forces = np.full_like(calcs[0].forces, 1e4)
        return calcs
