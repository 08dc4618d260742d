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

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from aloe.errors import one_line
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.potentials.base import Potential, Predictions
    from aloe.structures import StructureBatch

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


def potential_label(spec: str) -> str:
    """How a potential is named in rows and tables: the spec as given, or a model file's name."""
    path = Path(spec)
    return path.name if path.suffix == ".model" or path.is_file() else spec


def structure_seed(seed: int, structure_id: str) -> int:
    """The seed of one structure's random numbers: a hash of ``seed`` and the structure's id.

    The same in any batch, any order and any process. 63 bits (the top bit of a 64-bit hash dropped), so that the
    seed fits the signed 64-bit columns of Parquet and pandas where MD rows record it. Every benchmark that draws
    random numbers per structure (the equilibrium displacements, the MD start velocities and Langevin noise) uses
    this one function.
    """
    digest = hashlib.sha256(f"{int(seed)}:{structure_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Headline:
    """A metric of the comparison table: which value, under which header, in which unit.

    Attributes
    ----------
    keys
        Metric names to look for, first found wins (benchmarks may name a mean ``x_mean`` or ``x``).
    label
        Column header, with the unit it is shown in.
    scale
        Factor from the metric's unit to the shown one (1000 for eV -> meV, 100 for a fraction -> percent).
    fmt
        Format of the shown value in Markdown and HTML (the CSV keeps full precision).
    better
        ``"lower"`` or ``"higher"`` when a smaller or larger value is better (errors, failure rates; survival),
        ``None`` for counts and values without a direction.
    """

    keys: tuple[str, ...]
    label: str
    scale: float = 1.0
    fmt: str = "{:.3f}"
    better: Literal["lower", "higher"] | None = None

    def raw(self, metrics: Mapping[str, Any]) -> float | None:
        """The metric's value in its own unit, or ``None`` when absent or not a number."""
        for key in self.keys:
            if key in metrics:
                return as_float(metrics[key])
        return None

    @property
    def key(self) -> str:
        """The metric's name (its first key)."""
        return self.keys[0]

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The value in the shown unit, or ``None``."""
        raw = self.raw(metrics)
        return None if raw is None else raw * self.scale

    def text(self, metrics: Mapping[str, Any]) -> str:
        """The formatted value (``-`` when absent, ``nan`` when not finite)."""
        value = self.value(metrics)
        if value is None:
            return "-"
        if not math.isfinite(value):
            return "nan"
        return self.fmt.format(value)


def as_float(value: Any) -> float | None:
    """A float from a metric value (bools and numpy scalars included), or ``None``."""
    if value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


#: Format of counts in the comparison (CSV cells of such headlines are integers).
COUNT_FORMAT = "{:.0f}"
#: The first two columns of every benchmark's comparison table.
COUNT_HEADLINES: tuple[Headline, ...] = (
    Headline(("n",), "structures", fmt=COUNT_FORMAT),
    Headline(("n_failed",), "failed", fmt=COUNT_FORMAT),
)


class Benchmark:
    """Base class of the four benchmarks: one class per benchmark carries everything that differs between them.

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
        ``equilibrium``, ``forces``, ``ev`` or ``md``: the benchmark's name in suites, tables and folders.
    settings_model
        The pydantic settings class (the section ``settings.<name>`` of ``aloe bench``).
    needs
        What a structure must carry: ``"energy"`` (reference energy), ``"forces"`` (reference forces) or
        ``"nothing"``.
    needs_reference
        Whether the benchmark needs a reference set (``--structures``).
    needs_atom_energies
        Whether the stage hands it the reference's isolated-atom energies.
    run_priority
        Order of the stage's tasks (lower first: cheap benchmarks, whose tables a user sees early).
    COLUMNS
        The benchmark's own columns and what they hold (with units); the table has :data:`COMMON_COLUMNS` too.
    HEADLINES
        The metrics of the comparison table, in column order (counts first).
    BATCHED
        Whether :meth:`calc_many` batches through :meth:`inputs`, :meth:`predict` and :meth:`row_from` (the
        structures of a chunk in one prediction call) instead of calling :meth:`calc` one by one.
    """

    name: ClassVar[str] = "benchmark"
    settings_model: ClassVar[type[AloeSettings]] = AloeSettings
    needs: ClassVar[str] = "nothing"
    needs_reference: ClassVar[bool] = False
    needs_atom_energies: ClassVar[bool] = False
    run_priority: ClassVar[int] = 0
    COLUMNS: ClassVar[dict[str, str]] = {}
    HEADLINES: ClassVar[tuple[Headline, ...]] = COUNT_HEADLINES
    #: The metrics a comparison of data strategies judges the benchmark by (keys of :attr:`HEADLINES` that have a
    #: direction, ``better``), most important first.
    VERDICT: ClassVar[tuple[str, ...]] = ()
    BATCHED: ClassVar[bool] = False
    #: The function of :mod:`aloe.bench.report.figures` that draws the benchmark's figures, or ``None``.
    FIGURES: ClassVar[str | None] = None
    #: Structures per task of the bench stage when the benchmark has no batch of its own.
    TASK_STRUCTURES: ClassVar[int] = 4
    #: Unit of the progress a benchmark reports itself (``progress(n)`` calls; MD: steps), or ``None``.
    PROGRESS_UNIT: ClassVar[str | None] = None
    #: Put before the reason of a structure whose :meth:`inputs` cannot be built (``cannot build EV points: ``).
    INPUT_FAILURE: ClassVar[str] = ""
    #: Settings that make the benchmark cheap, for contract checks (:func:`aloe.bench.testing.validate_benchmark`).
    CHEAP_SETTINGS: ClassVar[dict[str, Any]] = {}

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
        #: Called with counts of :attr:`PROGRESS_UNIT` as they are done (the caller owns the display), or ``None``.
        self.progress: Callable[[int], None] | None = None

    # ---- what the stage asks of a benchmark ---------------------------------------------------------------
    @classmethod
    def for_stage(
        cls, potential: Any, settings: Any, *, spec: str, atom_energies: Mapping[str, float] | None
    ) -> Benchmark:
        """The benchmark of one task of the bench stage: its section of the stage's settings.

        Parameters
        ----------
        potential
            The loaded potential.
        settings
            The stage's :class:`~aloe.bench.settings.BenchSettings`.
        spec
            The potential as the user named it (for potential-specific settings).
        atom_energies
            The reference's isolated-atom energies (for benchmarks that :attr:`needs_atom_energies`).
        """
        return cls(potential, getattr(settings, cls.name), atom_energies=atom_energies)

    @classmethod
    def select_structures(
        cls, settings: Any, reference: ReferenceSet | None, read: Callable[[str], ReferenceSet]
    ) -> list[BenchStructure]:
        """The structures this benchmark uses in a run of the bench stage.

        Parameters
        ----------
        settings
            The stage's :class:`~aloe.bench.settings.BenchSettings`.
        reference
            The reference set (``settings.structures``), or ``None``.
        read
            Reads another set (a path or ``builtin:NAME``) with the stage's settings.
        """
        raise NotImplementedError

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

    @classmethod
    def figures(
        cls,
        rows: Sequence[Mapping[str, Any]],
        metrics: Mapping[str, Mapping[str, Any]],
        folder: Path,
        colors: Mapping[str, Any],
    ) -> list[Path]:
        """The benchmark's figures (PNG files in ``folder``) from the rows of every potential (:attr:`FIGURES`)."""
        if cls.FIGURES is None:
            return []
        from aloe.bench.report import figures

        return getattr(figures, cls.FIGURES)(rows, metrics, folder, colors)

    # ---- to implement ----------------------------------------------------------------------------------
    def calc(self, structure: BenchStructure) -> dict[str, Any]:
        """The row of one structure (common columns included); may raise (``calc_many`` records it).

        A batched benchmark gets it from its hooks: :meth:`inputs`, one :meth:`predict` call, :meth:`row_from`.
        """
        if not self.BATCHED:
            raise NotImplementedError
        from aloe.structures import StructureBatch

        problem = self.usable(structure)
        if problem is not None:
            raise ValueError(problem)
        inputs = self.inputs(structure)
        batch = StructureBatch.from_atoms(inputs, ids=_input_ids(structure, len(inputs)))
        return self.row_from(structure, self.predict(batch))

    def inputs(self, structure: BenchStructure) -> list[Atoms]:
        """Batched benchmarks: the structures to predict for ``structure`` (EV: its points); raises when unusable."""
        raise NotImplementedError

    def predict(self, batch: StructureBatch) -> Predictions:
        """Batched benchmarks: one prediction call (default: energies, forces and stress)."""
        return self.potential.predict(batch)

    def row_from(self, structure: BenchStructure, predictions: Predictions) -> dict[str, Any]:
        """Batched benchmarks: the row of ``structure`` from the predictions of its :meth:`inputs`, in order.

        Raises :class:`StructureFailed` (its message is the row's reason) when a prediction failed.
        """
        raise NotImplementedError

    @classmethod
    def metrics(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The benchmark's metrics over the successful rows of one potential (see :meth:`aggregate`)."""
        raise NotImplementedError

    # ---- provided ------------------------------------------------------------------------------------------
    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Metrics over the rows of one potential.

        ``n`` (rows), ``n_failed`` (rows with an error: counted, never averaged), then the benchmark's
        :meth:`metrics` of the other rows.
        """
        good = ok_rows(rows)
        return {"n": len(rows), "n_failed": len(rows) - len(good), **cls.metrics(good)}

    def usable(self, structure: BenchStructure) -> str | None:
        """``None`` when the structure has what this benchmark needs, else why not.

        A structure nothing can treat (no atoms, NaN or infinite positions, an unusable cell) or without the
        reference labels of :attr:`needs`.
        """
        from aloe.bench.structures import structure_problem

        problem = structure_problem(structure.atoms, min_distance=0.0)
        if problem is not None:
            return problem
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
        """Rows of many structures, in order; a structure that fails gets a :func:`failure_row` with its reason.

        Parameters
        ----------
        structures
            The structures.
        done
            Called as ``done(index, row)`` as soon as a structure's row is final (checkpoints, progress).

        A benchmark that is not :attr:`BATCHED` calls :meth:`calc` one structure at a time. A batched one cuts the
        structures into chunks of :meth:`task_size`, predicts the :meth:`inputs` of a chunk's structures in one
        :meth:`predict` call and makes each row with :meth:`row_from`; ``wall_s`` of a row is the time its inputs
        took to build plus its share of the prediction, in proportion to its atoms. Never raises for a structure.
        """
        if not self.BATCHED:
            return self._one_by_one(structures, done)
        rows: list[dict[str, Any]] = []
        size = max(1, self.task_size())
        for start in range(0, len(structures), size):
            chunk = list(structures[start : start + size])
            for k, row in enumerate(self._chunk_rows(chunk)):
                rows.append(row)
                if done is not None:
                    done(start + k, row)
        return rows

    def _one_by_one(
        self, structures: Sequence[BenchStructure], done: Callable[[int, dict[str, Any]], None] | None
    ) -> list[dict[str, Any]]:
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
                except Exception as exc:  # one structure never stops the benchmark
                    row = failure_row(structure, reason_of(exc))
            row["wall_s"] = float(time.perf_counter() - t0)
            rows.append(row)
            if done is not None:
                done(index, row)
        return rows

    def _chunk_rows(self, chunk: Sequence[BenchStructure]) -> list[dict[str, Any]]:
        """The rows of one chunk of a batched benchmark (one prediction call for every usable structure)."""
        from aloe.structures import StructureBatch

        rows: list[dict[str, Any] | None] = [None] * len(chunk)
        inputs: dict[int, list[Atoms]] = {}
        seconds: dict[int, float] = {}
        for k, structure in enumerate(chunk):
            t0 = time.perf_counter()
            problem = self.usable(structure)
            if problem is None:
                try:
                    made = self.inputs(structure)
                    StructureBatch.from_atoms(made)  # a structure that cannot be batched fails alone
                    inputs[k] = made
                except Exception as exc:
                    problem = self.INPUT_FAILURE + reason_of(exc)
            seconds[k] = time.perf_counter() - t0
            if problem is not None:
                rows[k] = failure_row(structure, problem, seconds[k])
        if inputs:
            members = list(inputs)
            t0 = time.perf_counter()
            batch = StructureBatch.from_atoms(
                [a for k in members for a in inputs[k]],
                ids=[i for k in members for i in _input_ids(chunk[k], len(inputs[k]))],
            )
            try:
                predictions = self.predict(batch)
            except Exception:
                # A model that raises for the whole batch (a wrapper without aloe's per-structure isolation):
                # each structure alone, so only the one it cannot treat fails.
                for k in members:
                    rows[k] = self._alone(chunk[k], inputs[k], seconds[k])
                return rows  # type: ignore[return-value]
            elapsed = time.perf_counter() - t0
            weights = np.array([chunk[k].n_atoms for k in members], dtype=float)
            shares = elapsed * weights / max(float(weights.sum()), 1.0)
            first = 0
            for k, share in zip(members, shares.tolist(), strict=True):
                count = len(inputs[k])
                try:
                    row = self.row_from(chunk[k], predictions.take(range(first, first + count), batch))
                except Exception as exc:  # one structure never stops the benchmark
                    row = failure_row(chunk[k], reason_of(exc))
                first += count
                row["wall_s"] = float(seconds[k] + share)
                rows[k] = row
        return rows  # type: ignore[return-value]

    def _alone(self, structure: BenchStructure, inputs: list[Atoms], build_s: float) -> dict[str, Any]:
        """The row of one structure predicted in a batch of its own (never raises)."""
        from aloe.structures import StructureBatch

        t0 = time.perf_counter()
        try:
            batch = StructureBatch.from_atoms(inputs, ids=_input_ids(structure, len(inputs)))
            row = self.row_from(structure, self.predict(batch))
        except Exception as exc:
            row = failure_row(structure, reason_of(exc))
        row["wall_s"] = float(build_s + time.perf_counter() - t0)
        return row


def require_reference(bench: str, reference: ReferenceSet | None) -> ReferenceSet:
    """``reference``, or the one-line error of a benchmark that needs a reference set and was given none."""
    if reference is None:
        from aloe.errors import AloeError

        raise AloeError(
            f"the {bench} benchmark needs reference structures: give --structures (an 'aloe bench reference' "
            "folder, MatPES documents, extxyz with energies and forces ...)"
        )
    return reference


def reason_of(exc: BaseException) -> str:
    """A failed row's reason: a :class:`StructureFailed`'s message as it is, else :func:`aloe.errors.one_line`."""
    return str(exc) if isinstance(exc, StructureFailed) else one_line(exc)


def _input_ids(structure: BenchStructure, count: int) -> list[str]:
    """Ids of a structure's inputs in a prediction batch (the model's messages name them)."""
    return [structure.id] if count == 1 else [f"{structure.id}#{k}" for k in range(count)]


def ok_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows without an error."""
    return [r for r in rows if not r.get("error")]


def has_batched_path(potential: Potential) -> bool:
    """Whether the potential predicts many structures per call (overrides ``_predict_batch``)."""
    from aloe.potentials.base import Potential

    return type(potential)._predict_batch is not Potential._predict_batch


__all__ = [
    "COMMON_COLUMNS",
    "COUNT_FORMAT",
    "COUNT_HEADLINES",
    "BenchStructure",
    "Benchmark",
    "Headline",
    "ReferenceSet",
    "StructureFailed",
    "failure_row",
    "has_batched_path",
    "ok_rows",
    "one_line",
    "potential_label",
    "reason_of",
    "require_reference",
    "structure_columns",
    "structure_seed",
]
