"""Off-equilibrium forces: parity of predicted against reference forces on displaced supercells.

Definitions (MP-ALOE paper, Fig. 4; matcalc): supercells of 18 to 32 atoms with every atom displaced in a random
direction by 5 % of the average nearest-neighbour distance (half of Lindemann's melting criterion) carry reference
forces; the potential's forces are compared component by component: mean absolute error, root mean square error,
and the softening slope ``a`` of the least-squares line through the origin ``y = a x`` (``x`` the reference
components, ``y`` the predicted ones): ``a = sum(x y) / sum(x x)``. A slope below 1 means the potential's energy
surface is softer than the reference (the systematic softening of universal potentials).

The builders (:func:`make_supercell`, :func:`average_nearest_neighbour_distance`, :func:`displace_atoms`,
:func:`displaced_supercell`) are what the reference maker uses to make the structures.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from aloe.bench.base import (
    COUNT_FORMAT,
    COUNT_HEADLINES,
    Benchmark,
    BenchStructure,
    Headline,
    ReferenceSet,
    StructureFailed,
    structure_columns,
)
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.potentials.base import Predictions


class ForcesSettings(AloeSettings):
    """Settings of the off-equilibrium forces benchmark (and of the structures it is made for)."""

    min_atoms: int = Field(18, ge=1, description="fewest atoms of a displaced supercell (paper: 18)")
    max_atoms: int = Field(32, ge=1, description="most atoms of a displaced supercell (paper: 32)")
    displacement_fraction: float = Field(
        0.05,
        gt=0.0,
        description="displacement of every atom as a share of the average nearest-neighbour distance "
        "(paper: 0.05, half Lindemann's criterion)",
    )
    batch_structures: int = Field(16, ge=1, description="structures per prediction call")


# ---- structure builders --------------------------------------------------------------------------------------
def make_supercell(atoms: Atoms, min_atoms: int = 18, max_atoms: int = 32) -> Atoms:
    """A near-cubic diagonal supercell with between ``min_atoms`` and ``max_atoms`` atoms.

    Among the diagonal repetitions ``(n1, n2, n3)`` whose atom count lies in ``[min_atoms, max_atoms]``, the one
    whose cell lengths ``n_i |a_i|`` are the most even (smallest longest/shortest ratio) wins; ties go to fewer
    atoms, then to the first in lexicographic order. When no repetition fits (a cell of 17 atoms, or one with
    more than ``max_atoms``), the smallest count of at least ``min_atoms`` is used instead (the cell itself when it
    already has ``min_atoms`` or more), again the most even among those.

    Parameters
    ----------
    atoms
        The cell (periodic, full 3D cell).
    min_atoms, max_atoms
        The wanted range of atom counts.

    Returns
    -------
    Atoms
        A new ``Atoms`` (no calculator); ``info["supercell"]`` holds the repetitions ``[n1, n2, n3]``.
    """
    n = len(atoms)
    if n == 0:
        raise ValueError("make_supercell: the structure has no atoms")
    if min_atoms > max_atoms:
        raise ValueError(f"make_supercell: min_atoms {min_atoms} > max_atoms {max_atoms}")
    lengths = np.asarray(atoms.cell.lengths(), dtype=float)
    if not (lengths > 0).all():
        raise ValueError("make_supercell: the structure needs a full 3D cell")
    # Along one axis: enough to reach max_atoms alone, or min_atoms alone (the fallback's smallest count).
    limit = max(1, -(-min_atoms // n), max_atoms // n)
    candidates = []
    for reps in itertools.product(range(1, limit + 1), repeat=3):
        count = n * int(np.prod(reps))
        if count < min_atoms or (count > max_atoms and count > n * -(-min_atoms // n)):
            continue
        scaled = lengths * np.array(reps)
        candidates.append((count, round(float(scaled.max() / scaled.min()), 9), reps))
    fitting = [c for c in candidates if min_atoms <= c[0] <= max_atoms]
    if not fitting:
        # None in range: the smallest count that reaches min_atoms (the cell itself when it is large enough).
        enough = [c for c in candidates if c[0] >= min_atoms]
        smallest = min(c[0] for c in enough)
        fitting = [c for c in enough if c[0] == smallest]
    _, _, best = min(fitting, key=lambda c: (c[1], c[0], c[2]))
    out = atoms.repeat(best)
    out.calc = None
    out.info = {**atoms.info, "supercell": [int(r) for r in best]}
    return out


def average_nearest_neighbour_distance(atoms: Atoms) -> float:
    """Mean over atoms of the distance to each atom's nearest periodic neighbour (its own images included), in A.

    Parameters
    ----------
    atoms
        A periodic structure with a full 3D cell and at least one atom.
    """
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    if n == 0:
        raise ValueError("average_nearest_neighbour_distance: the structure has no atoms")
    volume = abs(float(atoms.cell.volume))
    if volume <= 0.0:
        raise ValueError("average_nearest_neighbour_distance: the structure needs a full 3D cell")
    periodic = atoms.copy()
    periodic.pbc = True
    # Start near the typical spacing and widen until every atom has a neighbour (its images bound the search).
    cutoff = 1.2 * (volume / n) ** (1.0 / 3.0)
    while True:
        i, d = neighbor_list("id", periodic, cutoff, self_interaction=False)
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, i, d)
        if np.isfinite(nearest).all():
            return float(nearest.mean())
        cutoff *= 1.5


def displace_atoms(
    atoms: Atoms, fraction: float = 0.05, rng: np.random.Generator | int | None = None
) -> Atoms:
    """Move every atom by ``fraction`` x the average nearest-neighbour distance in a uniformly random direction.

    Each direction is a normalised 3D Gaussian vector (uniform on the sphere); every atom moves by exactly the
    same distance. ``fraction = 0.05`` is half of Lindemann's melting criterion (the paper's setting).

    Parameters
    ----------
    atoms
        The structure (not modified).
    fraction
        Displacement as a share of :func:`average_nearest_neighbour_distance`.
    rng
        A NumPy generator, or a seed for one.

    Returns
    -------
    Atoms
        A displaced copy (no calculator); ``info["displacement"]`` holds the distance (A).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    distance = fraction * average_nearest_neighbour_distance(atoms)
    directions = rng.standard_normal((len(atoms), 3))
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    while (norms == 0.0).any():  # a zero vector has no direction (practically never)
        zero = norms[:, 0] == 0.0
        directions[zero] = rng.standard_normal((int(zero.sum()), 3))
        norms = np.linalg.norm(directions, axis=1, keepdims=True)
    out = atoms.copy()
    out.calc = None
    out.positions = out.positions + distance * directions / norms
    out.info = {**atoms.info, "displacement": float(distance)}
    return out


def displaced_supercell(
    atoms: Atoms, rng: np.random.Generator | int | None = None, settings: ForcesSettings | None = None
) -> Atoms:
    """:func:`make_supercell` then :func:`displace_atoms`, with the sizes and fraction of ``settings``.

    Parameters
    ----------
    atoms
        The cell.
    rng
        A NumPy generator, or a seed for one.
    settings
        Defaults when ``None`` (18-32 atoms, 5 % of the nearest-neighbour distance).
    """
    settings = settings if settings is not None else ForcesSettings()
    supercell = make_supercell(atoms, settings.min_atoms, settings.max_atoms)
    return displace_atoms(supercell, settings.displacement_fraction, rng)


# ---- metrics (pure functions) ------------------------------------------------------------------------------
def force_errors(
    reference: np.ndarray | Sequence[float], predicted: np.ndarray | Sequence[float]
) -> dict[str, float]:
    """MAE, RMSE and softening slope over all components.

    Parameters
    ----------
    reference, predicted
        Any equal shapes, e.g. ``(n, 3)`` or flat ``(3 n,)``: force components (eV/A).

    Returns
    -------
    dict
        ``force_mae`` and ``force_rmse`` (eV/A), ``softening_slope`` (``sum x y / sum x x``; NaN when every
        reference component is zero).
    """
    x = np.asarray(reference, dtype=float).reshape(-1)
    y = np.asarray(predicted, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"reference forces have {x.size} components, predicted {y.size}")
    if x.size == 0:
        return {"force_mae": float("nan"), "force_rmse": float("nan"), "softening_slope": float("nan")}
    return {
        "force_mae": float(np.mean(np.abs(y - x))),
        "force_rmse": float(np.sqrt(np.mean((y - x) ** 2))),
        "softening_slope": softening_slope(x, y),
    }


def softening_slope(
    reference: np.ndarray | Sequence[float], predicted: np.ndarray | Sequence[float]
) -> float:
    """Slope ``a`` of the least-squares line ``y = a x`` through the origin: ``sum(x y) / sum(x x)``.

    Parameters
    ----------
    reference, predicted
        Equal shapes: reference (``x``) and predicted (``y``) force components.

    Returns
    -------
    float
        NaN when ``sum(x x)`` is zero.
    """
    x = np.asarray(reference, dtype=float).reshape(-1)
    y = np.asarray(predicted, dtype=float).reshape(-1)
    xx = float(np.dot(x, x))
    return float(np.dot(x, y) / xx) if xx > 0.0 else float("nan")


# ---- the benchmark ---------------------------------------------------------------------------------------------
class ForceParity(Benchmark):
    """Predicted against reference forces of displaced supercells (batched over structures)."""

    name: ClassVar[str] = "forces"
    settings_model: ClassVar[type[AloeSettings]] = ForcesSettings
    needs: ClassVar[str] = "forces"
    needs_reference: ClassVar[bool] = True
    run_priority: ClassVar[int] = 1
    BATCHED: ClassVar[bool] = True
    HEADLINES: ClassVar[tuple[Headline, ...]] = (
        *COUNT_HEADLINES,
        Headline(("n_components",), "components", 1.0, COUNT_FORMAT),
        Headline(("force_mae",), "force MAE (meV/A)", 1000.0, "{:.1f}", "lower"),
        Headline(("force_rmse",), "force RMSE (meV/A)", 1000.0, "{:.1f}", "lower"),
        Headline(("softening_slope",), "softening slope", 1.0, "{:.3f}"),
    )
    FIGURES: ClassVar[str | None] = "forces_figures"
    VERDICT: ClassVar[tuple[str, ...]] = ("force_mae",)
    COLUMNS: ClassVar[dict[str, str]] = {
        "forces_ref": "reference force components, flattened atom by atom (x, y, z) (eV/A)",
        "forces_pred": "predicted force components, same order (eV/A)",
        "force_mae": "mean absolute error over the structure's components (eV/A)",
        "force_rmse": "root mean square error over the structure's components (eV/A)",
        "softening_slope": "least-squares slope a of pred = a ref through the origin (dimensionless; 1 = no softening)",
    }

    settings: ForcesSettings

    @classmethod
    def select_structures(
        cls, settings: Any, reference: ReferenceSet | None, read: Callable[[str], ReferenceSet]
    ) -> list[BenchStructure]:
        """The reference set's displaced supercells (every structure with reference forces, without roles)."""
        from aloe.bench.structures import reference_role

        return reference_role(cls.name, reference, "supercells")

    def task_size(self) -> int:
        """``batch_structures``: the structures of one prediction call."""
        return self.settings.batch_structures

    def coupled(self) -> bool:
        """True for a batched model (several structures share a forward pass)."""
        from aloe.bench.base import has_batched_path

        return has_batched_path(self.potential)

    def _reference(self, structure: BenchStructure) -> np.ndarray:
        """Shape ``(n, 3)``: the structure's reference forces, checked against its atom count."""
        ref = np.asarray(structure.forces, dtype=float)
        if ref.size != 3 * structure.n_atoms:
            raise ValueError(
                f"reference forces have {ref.size} components for {structure.n_atoms} atoms (need {3 * structure.n_atoms})"
            )
        if not np.isfinite(ref).all():
            raise ValueError("reference forces hold NaN or infinite values")
        return ref.reshape(-1, 3)

    def row(
        self, structure: BenchStructure, predicted: np.ndarray, error: str | None = None
    ) -> dict[str, Any]:
        """The row of one structure from its predicted forces (shape ``(n, 3)``, eV/A).

        Raises :class:`~aloe.bench.base.StructureFailed` when ``error`` (the prediction failed).
        """
        if error is not None:
            raise StructureFailed(f"prediction failed: {error}")
        ref = self._reference(structure)
        pred = np.asarray(predicted, dtype=float).reshape(-1, 3)
        return {
            **structure_columns(structure),
            "error": None,
            "forces_ref": [float(v) for v in ref.reshape(-1)],
            "forces_pred": [float(v) for v in pred.reshape(-1)],
            **force_errors(ref, pred),
        }

    def inputs(self, structure: BenchStructure) -> list[Atoms]:
        """The structure itself, once its reference forces are checked."""
        self._reference(structure)
        return [structure.atoms]

    def row_from(self, structure: BenchStructure, predictions: Predictions) -> dict[str, Any]:
        """The row of one structure from its prediction."""
        return self.row(structure, predictions.forces, predictions.errors[0])

    @classmethod
    def metrics(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Errors over ALL force components of the successful rows (not a mean of per-structure values).

        Returns
        -------
        dict
            ``n_components``, ``force_mae`` and ``force_rmse`` (eV/A), ``softening_slope``; the last three are
            ``None`` when there is no component.
        """
        x = np.array([v for r in rows for v in r["forces_ref"]], dtype=float)
        y = np.array([v for r in rows for v in r["forces_pred"]], dtype=float)
        out: dict[str, Any] = {"n_components": int(x.size)}
        if x.size == 0:
            out.update({"force_mae": None, "force_rmse": None, "softening_slope": None})
            return out
        out.update({k: (v if np.isfinite(v) else None) for k, v in force_errors(x, y).items()})
        return out


__all__ = [
    "ForceParity",
    "ForcesSettings",
    "average_nearest_neighbour_distance",
    "displace_atoms",
    "displaced_supercell",
    "force_errors",
    "make_supercell",
    "softening_slope",
]
