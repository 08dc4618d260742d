"""The potential seam: anything that gives energy, forces and stress for a batch of periodic structures.

Units and conventions everywhere in aloe: total energy in eV, forces in eV/A, stress in eV/A^3 as six Voigt
components (xx, yy, zz, yz, xz, xy) with ASE's sign (positive = tensile; VASP's kbar stress is the negative).

A :class:`Potential` implements :meth:`Potential._predict_batch` (many structures per call; batched models) or
:meth:`Potential._predict_one` (one structure per call; any ASE calculator). :meth:`Potential.predict` wraps both
with the robustness every stage relies on: a batch that raises (an exception, out of memory) is retried one
structure at a time, and a structure whose model raises or returns NaN/inf is reported as failed with the reason,
never stopping the batch.

:meth:`Potential.predict_energies` is the same with energies only (energy-volume scans, screening by energy): it calls
:meth:`Potential._predict_energy_batch`, which a model overrides to skip the force/stress work (for CHGNet and MACE
the backward pass); the default calls :meth:`Potential._predict_batch`, so every potential supports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.errors import one_line
from aloe.potentials.neighbours import VERLET_KEY
from aloe.structures import StructureBatch

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator


@dataclass
class Predictions:
    """Predictions of one model for one batch.

    Attributes
    ----------
    energy
        Shape ``(m,)``: total energy (eV); NaN where the structure failed.
    forces
        Shape ``(n_atoms_total, 3)``: eV/A, rows grouped like the batch's atoms; NaN where failed.
    stress
        Shape ``(m, 6)``: Voigt stress (eV/A^3, positive = tensile); NaN where failed.
    errors
        ``m`` entries: ``None`` or a one-line reason.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    errors: list[str | None] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """Shape ``(m,)`` bool: structures with a usable prediction."""
        return np.array([e is None for e in self.errors], dtype=bool)

    @classmethod
    def empty(cls, batch: StructureBatch) -> Predictions:
        """All-NaN predictions (every structure failed until filled in)."""
        m, n = len(batch), int(batch.offsets[-1])
        return cls(
            energy=np.full(m, np.nan),
            forces=np.full((n, 3), np.nan),
            stress=np.full((m, 6), np.nan),
            errors=["not evaluated"] * m,
        )

    def take(self, rows: Sequence[int], batch: StructureBatch) -> Predictions:
        """The predictions of some structures of ``batch`` (their rows, in the order given; copies).

        Parameters
        ----------
        rows
            Row indices into ``batch`` (the batch these predictions were made for).
        batch
            That batch (its offsets locate each structure's atoms).
        """
        rows = [int(r) for r in rows]
        forces = [self.forces[batch.atom_slice(r)] for r in rows]
        return Predictions(
            energy=self.energy[rows].copy(),
            forces=np.concatenate(forces).reshape(-1, 3) if forces else np.zeros((0, 3)),
            stress=self.stress[rows].reshape(-1, 6).copy(),
            errors=[self.errors[r] for r in rows],
        )


def voigt_from_tensor(tensor: np.ndarray) -> np.ndarray:
    """3x3 stress tensors -> Voigt (xx, yy, zz, yz, xz, xy); shape ``(..., 3, 3) -> (..., 6)``."""
    t = np.asarray(tensor)
    return np.stack(
        [t[..., 0, 0], t[..., 1, 1], t[..., 2, 2], t[..., 1, 2], t[..., 0, 2], t[..., 0, 1]], axis=-1
    )


class Potential:
    """Base class of every energy model.

    Subclasses set :attr:`name`, implement :meth:`_predict_batch` or :meth:`_predict_one`, and may implement
    :meth:`calculator` (an ASE calculator of the same model, used for relaxations such as elemental references).

    Attributes
    ----------
    name
        Short name shown in outputs (``chgnet-0.3.0``, ``mace:model.model`` ...).
    batch_size
        Structures per call of :meth:`_predict_batch`.
    functional
        What the model was trained on (``PBE``, ``r2SCAN``, ``PBE+U/MP2020`` ...), for reports; ``None`` if unknown.
    """

    name: str = "potential"
    batch_size: int = 32
    functional: str | None = None

    # ---- to implement ---------------------------------------------------------------------------------
    def _predict_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        """Predict a whole batch (override for batched models). Default: one structure at a time."""
        out = Predictions.empty(batch)
        for row in range(len(batch)):
            energy, forces, stress = self._predict_one(batch.to_atoms(row))
            sl = batch.atom_slice(row)
            out.energy[row] = energy
            out.forces[sl] = forces
            out.stress[row] = stress
            out.errors[row] = None
        return out

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces ``(n, 3)``, Voigt stress ``(6,)`` of one structure (override for per-structure models)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _predict_batch nor _predict_one")

    def _predict_energy_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        """Energies of a whole batch (override to skip forces and stress). Default: :meth:`_predict_batch`.

        Only ``energy`` and ``errors`` of the result are used; forces and stress may be anything.
        """
        return self._predict_batch(batch, shared)

    def calculator(self) -> Calculator:
        """An ASE calculator of the same model (for relaxations)."""
        raise NotImplementedError(f"{self.name} offers no ASE calculator")

    def identity(self) -> str:
        """A string that changes when the model changes (name plus, where known, a hash of its weights)."""
        return self.name

    # ---- provided ---------------------------------------------------------------------------------------
    def predict(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> Predictions:
        """Energy, forces and stress of every structure in ``batch``, never raising for one bad structure.

        Parameters
        ----------
        batch
            The structures.
        shared
            A scratch dict shared by the members of a committee for the same batch (e.g. neighbour graphs that
            several models can reuse). A :class:`~aloe.potentials.neighbours.VerletNeighbours` under
            :data:`~aloe.potentials.neighbours.VERLET_KEY` supplies the neighbour lists of models that use
            :func:`~aloe.potentials.neighbours.neighbour_list` (MD).
        """
        return self._predict_robustly(batch, shared, self._predict_batch, energy_only=False)

    def predict_energies(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> Predictions:
        """Energies of every structure in ``batch`` (no forces, no stress), with the robustness of :meth:`predict`.

        Parameters
        ----------
        batch
            The structures.
        shared
            As in :meth:`predict` (the same scratch serves both).

        Returns
        -------
        Predictions
            ``energy`` shape ``(m,)`` as :meth:`predict` gives it; ``forces`` ``(n_atoms_total, 3)`` and ``stress``
            ``(m, 6)`` all NaN (not computed, not an error); ``errors`` names failed structures and non-finite
            energies only.
        """
        return self._predict_robustly(batch, shared, self._predict_energy_batch, energy_only=True)

    def _predict_robustly(
        self,
        batch: StructureBatch,
        shared: dict[str, Any] | None,
        hook: Callable[[StructureBatch, dict[str, Any]], Predictions],
        *,
        energy_only: bool,
    ) -> Predictions:
        """The loop of :meth:`predict` and :meth:`predict_energies`: ``hook`` per chunk, one by one if it raises."""
        shared = {} if shared is None else shared
        out = Predictions.empty(batch)
        for rows, sub in batch.chunks(max(1, self.batch_size)):
            # Members with the same batch size cut the batch the same way, so they share per-sub-batch scratch.
            scratch = shared.setdefault(("rows", int(rows[0]), len(rows)), {})
            if VERLET_KEY in shared:  # MD's Verlet lists serve every sub-batch's neighbour list
                scratch.setdefault(VERLET_KEY, shared[VERLET_KEY])
            try:
                part = hook(sub, scratch)
            except Exception as exc:  # one bad structure must not stop the batch: isolate it
                if len(sub) == 1:
                    part = Predictions.empty(sub)
                    part.errors[0] = f"{self.name} raised {one_line(exc)}"
                else:
                    part = self._one_by_one(sub, hook, energy_only)
            self._merge(out, part, rows, batch, sub, energy_only)
        self._flag_non_finite(out, batch, energy_only)
        return out

    def _one_by_one(
        self,
        batch: StructureBatch,
        hook: Callable[[StructureBatch, dict[str, Any]], Predictions],
        energy_only: bool,
    ) -> Predictions:
        out = Predictions.empty(batch)
        for rows, single in batch.chunks(1):
            try:
                part = hook(single, {})
            except Exception as exc:
                part = Predictions.empty(single)
                part.errors[0] = f"{self.name} raised {one_line(exc)}"
            self._merge(out, part, rows, batch, single, energy_only)
        return out

    @staticmethod
    def _merge(
        out: Predictions,
        part: Predictions,
        rows: np.ndarray,
        batch: StructureBatch,
        sub: StructureBatch,
        energy_only: bool = False,
    ) -> None:
        out.energy[rows] = part.energy
        if not energy_only:  # energy-only results keep NaN forces/stress, whatever the hook computed
            out.stress[rows] = part.stress
        for k, r in enumerate(rows.tolist()):
            if not energy_only:
                out.forces[batch.atom_slice(r)] = part.forces[sub.atom_slice(k)]
            out.errors[r] = part.errors[k] if part.errors else None

    def _flag_non_finite(self, out: Predictions, batch: StructureBatch, energy_only: bool = False) -> None:
        for r in range(len(batch)):
            if out.errors[r] is not None:
                continue
            bad = []
            if not np.isfinite(out.energy[r]):
                bad.append("energy")
            if not energy_only:
                if not np.isfinite(out.forces[batch.atom_slice(r)]).all():
                    bad.append("forces")
                if not np.isfinite(out.stress[r]).all():
                    bad.append("stress")
            if bad:
                out.errors[r] = f"{self.name} returned non-finite {', '.join(bad)}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def shared_inputs(
    batch: StructureBatch,
    shared: dict[str, Any] | None,
    key: Any,
    build: Callable[[int], Any],
) -> list[Any]:
    """Per-structure model inputs (graphs, AtomicData ...), built once per sub-batch and key.

    Committee members whose inputs depend only on ``key`` (cutoffs, element table ...) share them through the
    ``shared`` scratch dict. ``build(row)`` returns the input or a string saying why there is none; an exception
    becomes such a string, so one unbuildable structure never costs the others.
    """
    if shared is not None and key in shared:
        return shared[key]
    items: list[Any] = []
    for row in range(len(batch)):
        try:
            items.append(build(row))
        except Exception as exc:
            items.append(one_line(exc))
    if shared is not None:
        shared[key] = items
    return items


def usable_rows(items: list[Any], errors: list[str | None], prefix: str) -> list[int]:
    """Rows whose input was built; the others get ``f"{prefix}{reason}"`` in ``errors`` (one entry per row)."""
    for r, item in enumerate(items):
        if isinstance(item, str):
            errors[r] = f"{prefix}{item}"
    return [r for r, item in enumerate(items) if not isinstance(item, str)]


def file_digest(path: str, length: int = 12) -> str:
    """Short sha256 of a file's bytes (identifies model weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]
