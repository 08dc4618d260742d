"""Test-only potentials importable by path (``tests.screen.helpers:FailsOnAluminium``)."""

from __future__ import annotations

from aloe.potentials.ase_calculator import LennardJonesPotential


class FailsOnAluminium(LennardJonesPotential):
    """Lennard-Jones that raises on any structure containing Al (to exercise failure isolation)."""

    def __init__(self) -> None:
        super().__init__(sigma=2.3, epsilon=0.055, rc=6.0)
        self.name = "fails-on-al"

    def _predict_batch(self, batch, shared):
        if 13 in batch.numbers:  # aloe then predicts the batch one structure at a time: only Al's fail
            raise RuntimeError("no aluminium")
        return super()._predict_batch(batch, shared)

    def _predict_energy_batch(self, batch, shared):
        if 13 in batch.numbers:
            raise RuntimeError("no aluminium")
        return super()._predict_energy_batch(batch, shared)
