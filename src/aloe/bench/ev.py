"""Energy-volume scan: does the potential give one smooth minimum when a crystal is squeezed and stretched.

Definitions (MLIP Arena's EV task, used by the MP-ALOE paper's Fig. 5): the cell is scaled by ``1 + s`` for ``s`` in
``linspace(-0.2, 0.2, 21)`` with the atoms moving with it (fractional coordinates kept), so the volumes run from
0.512 to 1.728 times the given volume; each point is a static calculation (no relaxation). With the points sorted
by volume and the middle point (index ``len // 2``) as reference:

* flips: the number of sign changes of consecutive energy differences, after dropping exact zeros; a curve with
  one minimum has one, a failure (paper) has more than one (``max_flips``), a curve without a minimum inside the
  scan (monotonic: e.g. a potential that keeps binding tighter on compression) has none (``no_minimum``);
* tortuosity: ``sum |dE| / (|E_first - E_mid| + |E_last - E_mid|)``; 1 for a curve that falls, then rises once;
* Spearman rank correlations: compression-energy (volumes and energies of the points below the middle; -1 when
  the energy rises steadily on compression), compression-derivative (midpoint volumes against the energy
  differences, below the middle; +1 for a convex branch) and tension-energy (the middle point and above; +1).

The scan is batched: the base class's :meth:`~aloe.bench.base.Benchmark.calc_many` puts every point of many
structures into one :class:`~aloe.structures.StructureBatch` and calls the potential once per chunk of structures,
through :meth:`~aloe.potentials.base.Potential.predict_energies` (:meth:`EVScan.predict`): the scan needs energies
only, so a model skips its forces and stress (for CHGNet the backward pass).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from aloe.bench.base import (
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
    from aloe.structures import StructureBatch


class EVSettings(AloeSettings):
    """Settings of the energy-volume scan."""

    n_points: int = Field(21, ge=3, description="points of the scan (MLIP Arena: 21)")
    max_strain: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="largest linear strain |s|; the cell is scaled by 1 + s (MLIP Arena: 0.2)",
    )
    max_flips: int = Field(
        1, ge=0, description="a curve with more sign changes of dE than this fails (paper: more than 1)"
    )
    batch_structures: int = Field(
        16, ge=1, description="structures whose points go into one prediction call (each has n_points points)"
    )


# ---- metrics (pure functions) ------------------------------------------------------------------------------
def ev_strains(n_points: int = 21, max_strain: float = 0.2) -> np.ndarray:
    """Linear strains of the scan, shape ``(n_points,)``: ``linspace(-max_strain, max_strain, n_points)``."""
    return np.linspace(-max_strain, max_strain, n_points)


def strained_points(atoms: Atoms, strains: Sequence[float] | np.ndarray) -> list[Atoms]:
    """Copies of ``atoms`` with the cell scaled by ``1 + s`` for each strain, atoms moved with the cell.

    Parameters
    ----------
    atoms
        The structure (periodic, full 3D cell).
    strains
        Shape ``(p,)``: linear strains.

    Returns
    -------
    list of Atoms
        ``p`` structures without calculators; volume ``(1 + s)^3 V0`` each.
    """
    base = atoms.copy()
    base.calc = None
    cell = np.asarray(base.cell[:], dtype=float)
    points = []
    for s in np.asarray(strains, dtype=float):
        point = base.copy()
        point.set_cell(cell * (1.0 + s), scale_atoms=True)
        points.append(point)
    return points


def energy_flips(energies: Sequence[float] | np.ndarray) -> int:
    """Sign changes of consecutive energy differences, exact zero differences dropped.

    Parameters
    ----------
    energies
        Shape ``(p,)``: energies ordered by volume.

    Returns
    -------
    int
        0 for a monotonic curve, 1 for a curve with one minimum (or maximum), more for a wavy one.
    """
    signs = np.sign(np.diff(np.asarray(energies, dtype=float)))
    signs = signs[signs != 0]
    return int(np.count_nonzero(np.diff(signs)))


def tortuosity(energies: Sequence[float] | np.ndarray) -> float:
    """Total variation over the rise from the middle point to both ends.

    ``sum |dE| / (|E_first - E_mid| + |E_last - E_mid|)`` with ``mid = len // 2`` (energies ordered by volume):
    1 when the curve falls to the middle and rises after it without detours; larger for a wavy curve. NaN when
    both ends have the middle point's energy (nothing to normalise by).

    Parameters
    ----------
    energies
        Shape ``(p,)``: energies ordered by volume.
    """
    e = np.asarray(energies, dtype=float)
    mid = len(e) // 2
    denominator = abs(e[0] - e[mid]) + abs(e[-1] - e[mid])
    if denominator == 0.0:
        return float("nan")
    return float(np.sum(np.abs(np.diff(e))) / denominator)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's coefficient needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(1, len(values) + 1, dtype=float)
    # Average the ranks of equal values.
    uniq, inverse = np.unique(values, return_inverse=True)
    if len(uniq) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (Pearson's of their tie-averaged ranks).

    Parameters
    ----------
    x, y
        Shape ``(k,)`` each.

    Returns
    -------
    float
        In [-1, 1]; NaN when ``k < 2`` or either input is constant (the coefficient is undefined, as in SciPy).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"spearman: x has {len(x)} values, y has {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx = _ranks(x) - (len(x) + 1) / 2.0
    ry = _ranks(y) - (len(y) + 1) / 2.0
    denominator = float(np.sqrt(np.dot(rx, rx) * np.dot(ry, ry)))
    if denominator == 0.0:
        return float("nan")
    return float(np.clip(np.dot(rx, ry) / denominator, -1.0, 1.0))


def ev_metrics(
    volumes: Sequence[float] | np.ndarray, energies: Sequence[float] | np.ndarray, max_flips: int = 1
) -> dict[str, Any]:
    """Every metric of one scan.

    Parameters
    ----------
    volumes
        Shape ``(p,)``: volumes (any unit; per atom in aloe's rows).
    energies
        Shape ``(p,)``: energies of the same points (any unit).
    max_flips
        A curve with more flips than this is ``failed``.

    Returns
    -------
    dict
        ``flips``, ``failed``, ``no_minimum``, ``tortuosity``, ``spearman_compression_energy`` (points below the
        middle), ``spearman_compression_derivative`` (midpoint volumes against the differences, below the middle)
        and ``spearman_tension_energy`` (the middle point and above); the points are sorted by volume first and the
        middle is index ``p // 2``. Undefined values (constant inputs) are NaN.

    Notes
    -----
    MLIP Arena drops exact zero differences for the flip count only; the derivative coefficient here pairs each
    difference with its own midpoint volume (identical to MLIP Arena's whenever no difference is exactly zero).
    """
    v = np.asarray(volumes, dtype=float)
    e = np.asarray(energies, dtype=float)
    if v.shape != e.shape or v.ndim != 1:
        raise ValueError(f"volumes {v.shape} and energies {e.shape} must be 1D of equal length")
    order = np.argsort(v, kind="mergesort")
    v, e = v[order], e[order]
    mid = len(e) // 2
    flips = energy_flips(e)
    midpoints = 0.5 * (v[:-1] + v[1:])
    differences = np.diff(e)
    return {
        "flips": flips,
        "failed": bool(flips > max_flips),
        "no_minimum": bool(flips == 0),
        "tortuosity": tortuosity(e),
        "spearman_compression_energy": spearman(v[:mid], e[:mid]),
        "spearman_compression_derivative": spearman(midpoints[:mid], differences[:mid]),
        "spearman_tension_energy": spearman(v[mid:], e[mid:]),
    }


def _finite_mean(values: Sequence[Any]) -> float | None:
    """Mean of the finite numbers among ``values`` (``None`` entries skipped); ``None`` when there are none."""
    a = np.array([float(x) for x in values if x is not None], dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


# ---- the benchmark ---------------------------------------------------------------------------------------------
class EVScan(Benchmark):
    """Energy-volume scan of each structure (static points, batched over structures).

    Rows hold the scan sorted by volume; a structure with a failed point gets a failure row naming the point.
    """

    name: ClassVar[str] = "ev"
    settings_model: ClassVar[type[AloeSettings]] = EVSettings
    needs: ClassVar[str] = "nothing"
    run_priority: ClassVar[int] = 0
    BATCHED: ClassVar[bool] = True
    INPUT_FAILURE: ClassVar[str] = "cannot build EV points: "
    CHEAP_SETTINGS: ClassVar[dict[str, Any]] = {"n_points": 9}
    HEADLINES: ClassVar[tuple[Headline, ...]] = (
        *COUNT_HEADLINES,
        Headline(("failure_rate",), "failure rate (%)", 100.0, "{:.1f}", "lower"),
        Headline(("no_minimum_rate",), "no minimum (%)", 100.0, "{:.1f}", "lower"),
        Headline(("flips_minus_one_abs_mean",), "mean abs(flips-1)", 1.0, "{:.3f}", "lower"),
        Headline(("flips_mean",), "mean flips", 1.0, "{:.2f}"),
        Headline(("tortuosity_mean",), "tortuosity", 1.0, "{:.3f}"),
        Headline(
            ("spearman_compression_energy_mean", "spearman_compression_energy"),
            "Spearman compr. E",
            1.0,
            "{:.3f}",
        ),
        Headline(
            ("spearman_compression_derivative_mean", "spearman_compression_derivative"),
            "Spearman compr. dE",
            1.0,
            "{:.3f}",
        ),
        Headline(
            ("spearman_tension_energy_mean", "spearman_tension_energy"), "Spearman tension E", 1.0, "{:.3f}"
        ),
    )
    FIGURES: ClassVar[str | None] = "ev_figures"
    VERDICT: ClassVar[tuple[str, ...]] = ("failure_rate", "flips_minus_one_abs_mean")
    COLUMNS: ClassVar[dict[str, str]] = {
        "strains": "linear strains s of the points (cell scaled by 1 + s), sorted by volume (dimensionless)",
        "volumes": "volume per atom of each point, sorted (A^3/atom)",
        "energies": "predicted energy per atom of each point, in the order of volumes (eV/atom)",
        "v0": "volume per atom of the given structure (A^3/atom)",
        "flips": "sign changes of consecutive energy differences, exact zeros dropped (count)",
        "failed": "more flips than max_flips (paper's failure: more than one)",
        "no_minimum": "no flip: a monotonic curve without a minimum inside the scan",
        "tortuosity": "sum |dE| / (|E_first - E_mid| + |E_last - E_mid|) (1 = one clean minimum; NaN if undefined)",
        "spearman_compression_energy": "Spearman coefficient of volume vs energy below the middle point (ideal -1)",
        "spearman_compression_derivative": "Spearman coefficient of midpoint volume vs dE below the middle (ideal +1)",
        "spearman_tension_energy": "Spearman coefficient of volume vs energy from the middle point up (ideal +1)",
    }

    settings: EVSettings

    @classmethod
    def select_structures(
        cls, settings: Any, reference: ReferenceSet | None, read: Callable[[str], ReferenceSet]
    ) -> list[BenchStructure]:
        """``ev_structures``; else the reference set's crystals (all of it without roles); else builtin:elements."""
        from aloe.bench.structures import split_roles

        if settings.ev_structures:
            return read(settings.ev_structures).structures
        if reference is not None:
            return split_roles(reference)[0] or reference.structures
        return read("builtin:elements").structures

    def task_size(self) -> int:
        """``batch_structures``: the structures whose points share prediction calls."""
        return self.settings.batch_structures

    def coupled(self) -> bool:
        """True for a batched model (its points of several structures share forward passes)."""
        from aloe.bench.base import has_batched_path

        return has_batched_path(self.potential)

    def strains(self) -> np.ndarray:
        """Shape ``(n_points,)``: the scan's linear strains (ascending, hence ascending volume)."""
        return ev_strains(self.settings.n_points, self.settings.max_strain)

    def points(self, structure: BenchStructure) -> list[Atoms]:
        """The scan's structures of ``structure``, ascending volume."""
        return strained_points(structure.atoms, self.strains())

    def row(
        self, structure: BenchStructure, energies: np.ndarray, errors: Sequence[str | None]
    ) -> dict[str, Any]:
        """The row of one structure from the total energies of its points.

        Parameters
        ----------
        structure
            The structure.
        energies
            Shape ``(n_points,)``: total energies (eV) of :meth:`points`, in that order.
        errors
            ``n_points`` entries: ``None`` or why the point failed.

        Raises
        ------
        StructureFailed
            When a point failed (the message names the first one).
        """
        strains = self.strains()
        for k, reason in enumerate(errors):
            if reason is not None:
                raise StructureFailed(
                    f"EV point {k} (strain {strains[k]:+.3f}, volume {(1 + strains[k]) ** 3:.3f} V0) failed: {reason}"
                )
        n = structure.n_atoms
        v0 = float(abs(np.linalg.det(np.asarray(structure.atoms.cell[:], dtype=float)))) / n
        volumes = v0 * (1.0 + strains) ** 3
        per_atom = np.asarray(energies, dtype=float) / n
        return {
            **structure_columns(structure),
            "error": None,
            "strains": [float(s) for s in strains],
            "volumes": [float(v) for v in volumes],
            "energies": [float(e) for e in per_atom],
            "v0": v0,
            **ev_metrics(volumes, per_atom, self.settings.max_flips),
        }

    def inputs(self, structure: BenchStructure) -> list[Atoms]:
        """The scan's points of ``structure`` (ascending volume); raises for a cell that cannot be scanned."""
        from aloe.structures import cell_problem

        problem = cell_problem(np.asarray(structure.atoms.cell[:], dtype=float))
        if problem is not None:
            raise ValueError(problem)
        return self.points(structure)

    def predict(self, batch: StructureBatch) -> Predictions:
        """Energies only: the scan needs no forces or stress (a model skips them: for CHGNet the backward pass)."""
        return self.potential.predict_energies(batch)

    def row_from(self, structure: BenchStructure, predictions: Predictions) -> dict[str, Any]:
        """The row of one structure from the predictions of its points."""
        return self.row(structure, predictions.energy, predictions.errors)

    @classmethod
    def metrics(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Rates and means over the successful scans of one potential.

        Returns
        -------
        dict
            ``failure_rate`` (share with more than ``max_flips`` flips), ``no_minimum_rate``, ``flips_mean``,
            ``flips_minus_one_abs_mean`` (MLIP Arena's ranking: mean ``|flips - 1|``), ``tortuosity_mean`` and the
            means of the three Spearman columns (NaN entries skipped). Rates and means are ``None`` without rows.
        """
        out: dict[str, Any] = {}
        flips = np.array([int(r["flips"]) for r in rows], dtype=float)
        out["failure_rate"] = float(np.mean([bool(r["failed"]) for r in rows])) if rows else None
        out["no_minimum_rate"] = float(np.mean([bool(r["no_minimum"]) for r in rows])) if rows else None
        out["flips_mean"] = float(flips.mean()) if rows else None
        out["flips_minus_one_abs_mean"] = float(np.abs(flips - 1).mean()) if rows else None
        out["tortuosity_mean"] = _finite_mean([r.get("tortuosity") for r in rows])
        for column in (
            "spearman_compression_energy",
            "spearman_compression_derivative",
            "spearman_tension_energy",
        ):
            out[f"{column}_mean"] = _finite_mean([r.get(column) for r in rows])
        return out


__all__ = [
    "EVScan",
    "EVSettings",
    "energy_flips",
    "ev_metrics",
    "ev_strains",
    "spearman",
    "strained_points",
    "tortuosity",
]
