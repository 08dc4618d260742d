"""A committee of potentials evaluated on the same batches."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aloe.potentials.base import Potential
from aloe.structures import StructureBatch


@dataclass
class CommitteePredictions:
    """Stacked predictions of ``M`` models on ``m`` structures.

    Attributes
    ----------
    energy
        ``(M, m)`` total energies (eV).
    forces
        ``(M, N, 3)`` (eV/A).
    stress
        ``(M, m, 6)`` Voigt (eV/A^3, positive = tensile).
    failures
        Row -> reason, for structures on which any member failed.
    model_seconds
        Wall time spent inside the members' ``predict`` (forward and backward passes, graph building).
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)
    model_seconds: float = 0.0


class Committee:
    """Several potentials that judge the same structures.

    Parameters
    ----------
    members
        The potentials (at least one; disagreement needs two).
    """

    def __init__(self, members: Sequence[Potential]) -> None:
        if not members:
            raise ValueError("a committee needs at least one member")
        self.members = list(members)

    @property
    def names(self) -> list[str]:
        """Member names."""
        return [m.name for m in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def predict(self, batch: StructureBatch, skip: set[int] | None = None) -> CommitteePredictions:
        """Evaluate every member on ``batch`` (rows in ``skip`` are not evaluated and count as failed)."""
        skip = skip or set()
        rows = np.array([r for r in range(len(batch)) if r not in skip], dtype=np.int64)
        m, n = len(batch), int(batch.offsets[-1])
        energy = np.full((len(self), m), np.nan)
        forces = np.full((len(self), n, 3), np.nan)
        stress = np.full((len(self), m, 6), np.nan)
        failures: dict[int, list[str]] = {}
        seconds = 0.0
        if len(rows):
            sub = batch.take(rows)
            atom_rows = np.concatenate([np.arange(batch.offsets[r], batch.offsets[r + 1]) for r in rows])
            shared: dict = {}
            for k, member in enumerate(self.members):
                t0 = time.perf_counter()
                pred = member.predict(sub, shared)
                seconds += time.perf_counter() - t0
                energy[k, rows] = pred.energy
                forces[k, atom_rows] = pred.forces
                stress[k, rows] = pred.stress
                for j, err in enumerate(pred.errors):
                    if err is not None:
                        failures.setdefault(int(rows[j]), []).append(err)
        return CommitteePredictions(
            energy=energy,
            forces=forces,
            stress=stress,
            failures={r: "; ".join(errs) for r, errs in failures.items()},
            model_seconds=seconds,
        )
