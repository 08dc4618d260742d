"""What every benchmark shares: the structure type it reads, the benchmark interface, and the common row columns.

A benchmark (like a matcalc property) is one class with a ``calc`` method: one :class:`BenchStructure` in, one row
(a flat dict of named, documented columns) out. ``calc_many`` does the same for many structures and is where a
benchmark batches (EV points of many structures in one forward pass, many MD systems in one integrator); it
never raises for one structure: a structure that fails gets a row with its ``error`` and the others go on.
``aggregate`` turns the rows of one potential into the metrics of the comparison table.

Rows hold plain Python values (floats, ints, strings, lists of floats) so they go to JSON checkpoints and Parquet
tables without conversion; arrays become lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aloe.errors import one_line
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.potentials.base import Potential

#: Columns of every benchmark's rows (the stage adds ``potential``).
COMMON_COLUMNS: dict[str, str] = {
    "potential": "the potential's name (as in the command line or its printed name)",
    "structure_id": "the structure's id in its set",
    "formula": "reduced formula",
    "n_atoms": "atoms in the structure",
    "error": "why the structure failed (empty when it did not)",
    "wall_s": "seconds spent on the structure (its share of a batch)",
}


@dataclass
class BenchStructure:
    """One structure of a benchmark set, with its reference labels when it has them.

    Attributes
    ----------
    id
        Unique within its set (used for checkpoints and tables).
    atoms
        The structure (periodic ASE ``Atoms``; no calculator attached).
    energy
        Reference total energy (eV), or ``None``.
    forces
        Shape ``(n, 3)``: reference forces (eV/A), or ``None``.
    stress
        Shape ``(6,)``: reference Voigt stress (eV/A^3, positive = tensile), or ``None``.
    source
        Where it came from (file, built-in set name).
    origin
        Where exactly it was read, for messages: ``data.extxyz: frame 3``, ``docs.json: record 7``,
        ``builtin:mixtures: mixture-0-...``; empty when unknown.
    """

    id: str
    atoms: Atoms
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    source: str = ""
    origin: str = ""

    @property
    def where(self) -> str:
        """:attr:`origin`, or ``source: id`` when it is unknown."""
        return self.origin or f"{self.source or 'structure'}: {self.id}"

    @property
    def formula(self) -> str:
        """Reduced formula (``Fe2O3``)."""
        return self.atoms.get_chemical_formula(mode="metal", empirical=True)

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return len(self.atoms)


@dataclass
class ReferenceSet:
    """Structures with their references, plus what a cohesive energy needs.

    Attributes
    ----------
    structures
        The structures (relaxed crystals for the equilibrium benchmark, displaced supercells with forces for the
        forces benchmark, any for the EV and MD benchmarks).
    atom_energies
        Isolated-atom energies (eV) of the reference's functional and settings, per element symbol, or ``None``
        (the benchmark then uses the published MatPES r2SCAN ones).
    functional
        The reference's functional (``r2SCAN``, ``PBE``, ``EMT (stand-in)``), for reports.
    name
        Name of the set (file or built-in set).
    """

    structures: list[BenchStructure] = field(default_factory=list)
    atom_energies: dict[str, float] | None = None
    functional: str | None = None
    name: str = ""


class StructureFailed(RuntimeError):
    """A structure's failure whose message is its row's reason as it stands (no exception type in front)."""


def structure_columns(structure: BenchStructure) -> dict[str, Any]:
    """The common columns of a structure's row (without ``potential``, ``error`` and ``wall_s``)."""
    return {"structure_id": structure.id, "formula": structure.formula, "n_atoms": structure.n_atoms}


def failure_row(structure: BenchStructure, reason: str, wall_s: float = 0.0) -> dict[str, Any]:
    """The row of a structure that failed: common columns plus ``error``; the benchmark's columns are absent."""
    return {**structure_columns(structure), "error": reason, "wall_s": float(wall_s)}


class Benchmark:
    """Base class of the four benchmarks.

    Parameters
    ----------
    potential
        Anything :func:`aloe.potentials.load_potential` accepts (a name, a MACE file, ``module:factory``, a
        ``Potential`` or an ASE calculator).
    settings
        The benchmark's settings (its :attr:`settings_model`); defaults when ``None``.
    atom_energies
        Isolated-atom energies of the reference (eV per element symbol); used by the benchmarks that need them.

    Attributes
    ----------
    name
        ``equilibrium``, ``forces``, ``ev`` or ``md``.
    settings_model
        The pydantic settings class.
    needs
        What a structure must carry: ``"energy"`` (reference energy), ``"forces"`` (reference forces) or
        ``"nothing"``.
    COLUMNS
        The benchmark's own columns and what they hold (with units); the table has :data:`COMMON_COLUMNS` too.
    """

    name: ClassVar[str] = "benchmark"
    settings_model: ClassVar[type[AloeSettings]] = AloeSettings
    needs: ClassVar[str] = "nothing"
    COLUMNS: ClassVar[dict[str, str]] = {}
    #: Structures per task of the bench stage when the benchmark has no batch of its own.
    TASK_STRUCTURES: ClassVar[int] = 4
    #: Unit of the progress a benchmark reports itself (``progress(n)`` calls; MD: steps), or ``None``.
    PROGRESS_UNIT: ClassVar[str | None] = None

    def __init__(
        self,
        potential: Any,
        settings: AloeSettings | None = None,
        *,
        atom_energies: Mapping[str, float] | None = None,
    ) -> None:
        from aloe.potentials.registry import load_potential

        self.potential: Potential = load_potential(potential)
        self.settings = settings if settings is not None else self.settings_model()
        self.atom_energies = dict(atom_energies) if atom_energies is not None else None

    # ---- to implement ----------------------------------------------------------------------------------
    def calc(self, structure: BenchStructure) -> dict[str, Any]:
        """The row of one structure (common columns included); may raise (``calc_many`` records it)."""
        raise NotImplementedError

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Metrics over the rows of one potential (failed rows counted, not averaged)."""
        raise NotImplementedError

    # ---- provided ------------------------------------------------------------------------------------------
    def task_size(self) -> int:
        """Structures per task of the bench stage: the benchmark's batch (:attr:`TASK_STRUCTURES` by default)."""
        return self.TASK_STRUCTURES

    def coupled(self) -> bool:
        """Whether the structures of one task are computed together, so one's numbers may depend on the others.

        True for a batched model's forward passes over several structures (float32 sums depend on the batch).
        A resumed task then computes all its structures again, keeping the rows already written, so the missing
        ones see the batch they would have seen in an uninterrupted run. Independent structures: ``False``.
        """
        return False

    def progress_total(self, structures: Sequence[BenchStructure]) -> int | None:
        """The total the benchmark's own progress counts to (in :attr:`PROGRESS_UNIT`), or ``None`` (no own progress)."""
        return None

    def usable(self, structure: BenchStructure) -> str | None:
        """``None`` when the structure has what this benchmark needs, else why not."""
        if self.needs == "energy" and structure.energy is None:
            return "no reference energy"
        if self.needs == "forces" and structure.forces is None:
            return "no reference forces"
        return None

    def calc_many(
        self,
        structures: Sequence[BenchStructure],
        done: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of many structures, in order; a structure that fails gets a :func:`failure_row`.

        Parameters
        ----------
        structures
            The structures.
        done
            Called as ``done(index, row)`` as soon as a structure's row is final (checkpoints, progress).

        Batched benchmarks override this; the default calls :meth:`calc` one structure at a time.
        """
        rows: list[dict[str, Any]] = []
        for index, structure in enumerate(structures):
            t0 = time.perf_counter()
            problem = self.usable(structure)
            if problem is not None:
                row = failure_row(structure, problem)
            else:
                try:
                    row = self.calc(structure)
                    row.setdefault("error", None)
                except StructureFailed as exc:
                    row = failure_row(structure, str(exc))
                except Exception as exc:  # one structure never stops the benchmark
                    row = failure_row(structure, one_line(exc))
            row["wall_s"] = float(time.perf_counter() - t0)
            rows.append(row)
            if done is not None:
                done(index, row)
        return rows


def ok_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows without an error."""
    return [r for r in rows if not r.get("error")]


def has_batched_path(potential: Potential) -> bool:
    """Whether the potential predicts many structures per call (overrides ``_predict_batch``)."""
    from aloe.potentials.base import Potential

    return type(potential)._predict_batch is not Potential._predict_batch


__all__ = [
    "COMMON_COLUMNS",
    "BenchStructure",
    "Benchmark",
    "ReferenceSet",
    "StructureFailed",
    "failure_row",
    "has_batched_path",
    "ok_rows",
    "one_line",
    "structure_columns",
]
