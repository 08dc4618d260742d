"""A potential that kills its own process with SIGKILL at a chosen call: the ``kill -9`` of the resume tests.

``tests.bench.killer:make`` is EMT through a batched path (so the benchmarks treat it as a batched model: EV points
and MD systems of a chunk share calls). With ``ALOE_TEST_KILL_AT=N`` and ``ALOE_TEST_KILL_MARKER=FILE`` in the
environment, the N-th prediction call of the process writes FILE and sends SIGKILL to its own process, unless FILE
exists already: a rerun with the same environment goes through. Without them it is plain EMT.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from aloe.potentials.ase_calculator import EMTPotential
from aloe.potentials.base import Potential


class EMTKilledAtCall(EMTPotential):
    """EMT, batched, that kills its process at the call named by the environment (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "emt-killer"
        self.batch_size = 256  # like a batched model: a chunk's points in one call
        self.calls = 0

    def _predict_batch(self, batch, shared):
        self.calls += 1
        at = int(os.environ.get("ALOE_TEST_KILL_AT", "0") or 0)
        marker = os.environ.get("ALOE_TEST_KILL_MARKER")
        if at and marker and self.calls == at and not Path(marker).exists():
            Path(marker).write_text(f"killed at call {at}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return Potential._predict_batch(self, batch, shared)

    def _predict_energy_batch(self, batch, shared):
        return self._predict_batch(batch, shared)  # the EV scan's energies count as calls too


def make() -> EMTKilledAtCall:
    """The potential (``tests.bench.killer:make``)."""
    return EMTKilledAtCall()
