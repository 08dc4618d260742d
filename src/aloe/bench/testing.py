"""The benchmark contract, shipped in the package: :func:`validate_benchmark` checks a benchmark class in seconds.

A new benchmark, or a change to one of the four, can be checked before a bench stage spends hours on it::

    from aloe.bench.ev import EVScan
    from aloe.bench.testing import validate_benchmark

    report = validate_benchmark(EVScan)  # EMT, small EMT metals, cheap settings
    print(report)  # one line per check
    report.raise_if_failed()  # in a test: one AssertionError naming every failed check

The validation runs :meth:`~aloe.bench.base.Benchmark.calc_many` over a set that mixes the good structures with
structures the benchmark cannot treat (see :func:`untreatable_structures`), then each good structure alone. The
checks (each one can fail, and the package's tests show each failing on a deliberately broken benchmark):

``never-raises``
    ``calc_many`` of the mixed set returns one row per structure, in order, without raising; the structures it
    cannot treat get a non-empty ``error``, the good ones none; ``done(index, row)`` is called exactly once per
    structure, with the row returned; ``calc_many([])`` returns ``[]``.
``columns``
    Every column of ``COLUMNS`` has a description and none redefines a common one; every row carries the common
    columns (:data:`~aloe.bench.base.COMMON_COLUMNS` but ``potential``, which the stage adds) and only documented
    columns; a failed row holds only common columns.
``aggregate``
    ``aggregate([])`` returns ``n == 0`` and ``n_failed == 0``; ``aggregate`` of the set's rows counts ``n`` and
    ``n_failed`` right; every metric is a plain Python ``int``, ``float``, ``bool``, ``str`` or ``None`` (no NumPy
    scalars), keyed by a string.
``plain-rows``
    Every value of every row is a plain Python ``int``, ``float``, ``bool``, ``str``, ``None`` or a list of such
    (no arrays, tuples or NumPy scalars), and the row goes through :func:`json.dumps`: checkpoints and Parquet
    tables need no conversion.
``batch-invariance``
    The row of each good structure computed alone (``calc_many([s])``) equals its row in the mixed set, timing
    columns (:func:`is_timing_column`) aside: exactly by default (float64 ASE calculators such as EMT give
    identical numbers), within ``tolerance`` for float32 batched models.

Every check looks at whatever rows the validation obtained, so one broken behaviour fails its own check only: when
``calc_many`` of the mixed set raises, the other checks use the rows of each structure computed alone, and
``batch-invariance`` compares against ``calc_many`` of the good structures together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aloe.bench.base import COMMON_COLUMNS, Benchmark, BenchStructure, ReferenceSet
from aloe.errors import AloeError, one_line
from aloe.potentials.testing import Check, ContractReport

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.settings import AloeSettings

#: The checks, in the order of a report.
CHECKS: tuple[str, ...] = ("never-raises", "columns", "aggregate", "plain-rows", "batch-invariance")

#: Element of the structure the potential must fail on (EMT has no parameters for it).
UNSUPPORTED_ELEMENT = "Ti"

#: The common columns a row carries (``potential`` is added by the stage, never by ``calc_many``).
ROW_COMMON_COLUMNS: tuple[str, ...] = tuple(c for c in COMMON_COLUMNS if c != "potential")

#: Exact types of a plain row or metric value (``type(x) in``: a NumPy ``float64``, a float subclass, is not one).
_PLAIN_TYPES = (bool, int, float, str, type(None))


def is_timing_column(column: str) -> bool:
    """Whether ``column`` measures wall time (``wall_s``, MD's ``*_steps_per_second``): left out of comparisons."""
    return column == "wall_s" or column.endswith("_steps_per_second")


class BenchmarkContractError(AssertionError):
    """A benchmark broke the contract of :func:`validate_benchmark` (raised by :meth:`BenchmarkReport.raise_if_failed`)."""


@dataclass(frozen=True)
class BenchmarkReport(ContractReport):
    """What :func:`validate_benchmark` found.

    :attr:`subject` names the benchmark with its potential; one check per :data:`CHECKS`; :attr:`structures` are
    the ids of the mixed set, in the order given to ``calc_many``.
    """

    CONTRACT: ClassVar[str] = "benchmark contract"
    ERROR: ClassVar[type[AssertionError]] = BenchmarkContractError


# ---- the structures and settings ---------------------------------------------------------------------------
def emt_atom_energies(symbols: Sequence[str], box: float = 12.0) -> dict[str, float]:
    """EMT's isolated-atom energies (eV): one atom in a periodic cubic box of ``box`` A (beyond EMT's cutoff)."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    out = {}
    for symbol in symbols:
        atom = Atoms(symbol, cell=np.eye(3) * box, pbc=True)
        atom.calc = EMT()
        out[symbol] = float(atom.get_potential_energy())
    return out


def _emt_labelled(structure_id: str, atoms: Atoms) -> BenchStructure:
    from ase.calculators.emt import EMT

    work = atoms.copy()
    work.calc = EMT()
    energy = float(work.get_potential_energy())
    forces = np.asarray(work.get_forces(), dtype=float).copy()
    stress = np.asarray(work.get_stress(voigt=True), dtype=float).copy()
    atoms = atoms.copy()
    atoms.calc = None
    return BenchStructure(
        structure_id, atoms, energy=energy, forces=forces, stress=stress, source="contract", origin=""
    )


def default_reference_set(seed: int = 0) -> ReferenceSet:
    """The validation's good structures: three small EMT crystals labelled with EMT, and EMT's isolated atoms.

    Returns
    -------
    ReferenceSet
        Structures, in this order, each with EMT's energy, forces and stress:

        - ``cu-fcc-1``: the 1-atom primitive fcc cell of Cu (a non-orthogonal cell), strained by about 2%;
        - ``al-fcc-4``: the conventional fcc cell of Al, rattled by 0.05 A;
        - ``cu3au-l12-4``: L1_2 Cu3Au, rattled by 0.05 A and strained;

        ``atom_energies``: EMT's isolated Cu, Al and Au atoms (:func:`emt_atom_energies`), ``functional``
        ``EMT (stand-in)``.
    """
    from ase.build import bulk

    rng = np.random.default_rng(seed)

    def deformed(atoms: Atoms, strain: float, rattle: float) -> Atoms:
        atoms = atoms.copy()
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0.0, strain, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        return atoms

    cu3au = bulk("Cu", "fcc", a=3.75, cubic=True)
    cu3au.symbols[0] = "Au"
    structures = [
        _emt_labelled("cu-fcc-1", deformed(bulk("Cu", "fcc", a=3.62), 0.02, 0.0)),
        _emt_labelled("al-fcc-4", deformed(bulk("Al", "fcc", a=4.05, cubic=True), 0.0, 0.05)),
        _emt_labelled("cu3au-l12-4", deformed(cu3au, 0.01, 0.05)),
    ]
    return ReferenceSet(
        structures=structures,
        atom_energies=emt_atom_energies(("Cu", "Al", "Au")),
        functional="EMT (stand-in)",
        name="contract",
    )


def untreatable_structures(
    source: BenchStructure, needs: str = "nothing", element: str | None = UNSUPPORTED_ELEMENT
) -> list[tuple[BenchStructure, str]]:
    """Structures a benchmark cannot treat, made from ``source``, each with why it must fail.

    Parameters
    ----------
    source
        A good structure (ideally of two atoms or more).
    needs
        The benchmark's :attr:`~aloe.bench.base.Benchmark.needs`: a copy without labels is made unless
        ``"nothing"``.
    element
        An element the potential lacks: a copy with its first atom turned into it (labels kept, so it reaches the
        potential); ``None`` leaves it out.

    Returns
    -------
    list of (BenchStructure, str)
        ``<id>~no-labels`` (when ``needs`` asks for labels), ``<id>~<element>`` and ``<id>~flat-cell`` (the
        third lattice vector the sum of the other two: volume 0).
    """
    out: list[tuple[BenchStructure, str]] = []
    if needs != "nothing":
        unlabelled = replace(
            source,
            id=f"{source.id}~no-labels",
            atoms=source.atoms.copy(),
            energy=None,
            forces=None,
            stress=None,
        )
        out.append((unlabelled, f"no reference {needs}"))
    if element is not None:
        atoms = source.atoms.copy()
        atoms.symbols[0] = element
        out.append(
            (replace(source, id=f"{source.id}~{element}", atoms=atoms), f"the potential lacks {element}")
        )
    flat = source.atoms.copy()
    cell = np.asarray(flat.cell[:], dtype=float).copy()
    cell[2] = cell[0] + cell[1]
    flat.set_cell(cell, scale_atoms=False)
    out.append((replace(source, id=f"{source.id}~flat-cell", atoms=flat), "a degenerate cell"))
    return out


def default_settings(cls: type[Benchmark]) -> AloeSettings:
    """The cheap settings of ``cls`` (its :attr:`~aloe.bench.base.Benchmark.CHEAP_SETTINGS` over its defaults)."""
    return cls.settings_model(**cls.CHEAP_SETTINGS)


# ---- the validation -------------------------------------------------------------------------------------------
def validate_benchmark(
    cls: type[Benchmark],
    potential: Any = "emt",
    structures: ReferenceSet | Sequence[BenchStructure] | None = None,
    settings: AloeSettings | None = None,
    *,
    tolerance: float = 0.0,
    unsupported_element: str | None = UNSUPPORTED_ELEMENT,
) -> BenchmarkReport:
    """Check a benchmark class against the contract every bench stage relies on (see the module docstring).

    Parameters
    ----------
    cls
        A :class:`~aloe.bench.base.Benchmark` subclass; it is made as ``cls(potential, settings,
        atom_energies=...)``.
    potential
        Anything :func:`aloe.potentials.load_potential` accepts; EMT by default.
    structures
        The good structures, which every check expects to succeed, with the labels ``cls.needs`` asks for: a
        :class:`~aloe.bench.base.ReferenceSet` (its ``atom_energies`` go to the benchmark) or
        :class:`~aloe.bench.base.BenchStructure` s. Default: :func:`default_reference_set`.
    settings
        The benchmark's settings; default: :func:`default_settings` (cheap).
    tolerance
        Largest absolute difference of a number between a row computed alone and in the batch (0: exact).
    unsupported_element
        An element the potential lacks (:func:`untreatable_structures`); ``None`` for a potential without one.

    Returns
    -------
    BenchmarkReport
        One :class:`~aloe.potentials.testing.Check` per entry of :data:`CHECKS`. A check whose code raises fails
        with the exception's reason; the validation itself raises only for unusable arguments.

    Raises
    ------
    AloeError
        When ``cls`` is not a Benchmark subclass, or there are no good structures, or their ids repeat.
    """
    from aloe.potentials.registry import load_potential

    if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
        raise AloeError(f"validate_benchmark takes a Benchmark subclass, not {cls!r}")
    reference = default_reference_set() if structures is None else structures
    if isinstance(reference, ReferenceSet):
        good, atom_energies = list(reference.structures), reference.atom_energies
    else:
        good, atom_energies = list(reference), None
    if not good:
        raise AloeError("validate_benchmark needs at least one good structure")
    if len({s.id for s in good}) < len(good):
        raise AloeError("validate_benchmark needs structures with unique ids (rows are matched by id)")
    if atom_energies is not None and unsupported_element is not None:
        # so that the structure of the unsupported element fails in the potential, not for want of an atom energy
        atom_energies = {unsupported_element: 0.0, **atom_energies}
    pot = load_potential(potential)
    bench = cls(pot, settings if settings is not None else default_settings(cls), atom_energies=atom_energies)
    source = next((s for s in good if s.n_atoms >= 2), good[0])
    bad = untreatable_structures(source, cls.needs, unsupported_element)
    mixed: list[BenchStructure] = []
    for k in range(max(len(good), len(bad))):
        mixed += good[k : k + 1] + [s for s, _ in bad[k : k + 1]]
    session = _Session(cls, bench, mixed, {s.id for s in good}, {s.id: why for s, why in bad}, tolerance)
    session.prepare()
    runners: dict[str, Callable[[], tuple[bool, str]]] = {
        "never-raises": session.check_never_raises,
        "columns": session.check_columns,
        "aggregate": session.check_aggregate,
        "plain-rows": session.check_plain_rows,
        "batch-invariance": session.check_batch_invariance,
    }
    results = []
    for name, run in runners.items():
        try:
            ok, detail = run()
        except Exception as exc:
            ok, detail = False, f"raised {one_line(exc)}"
        results.append(Check(name, bool(ok), detail))
    return BenchmarkReport(
        f"{cls.__name__} ({cls.name}) with {pot.name}", tuple(results), tuple(s.id for s in mixed)
    )


@dataclass
class _Run:
    """One ``calc_many`` call: what it returned (``None`` when it raised), its ``done`` calls and its exception."""

    structures: list[BenchStructure]
    rows: Any = None
    done: list[tuple[Any, Any]] = field(default_factory=list)
    error: str | None = None

    def row_of(self, structure_id: str) -> dict[str, Any] | None:
        """The first row of ``structure_id`` among those returned (``None`` when there is none)."""
        for row in self.rows if isinstance(self.rows, list) else []:
            if isinstance(row, dict) and row.get("structure_id") == structure_id:
                return row
        return None


@dataclass
class _Session:
    """The ``calc_many`` calls of one validation (made once, shared by the checks) and the checks themselves."""

    cls: type[Benchmark]
    bench: Benchmark
    mixed: list[BenchStructure]
    good: set[str]
    bad: dict[str, str]
    tolerance: float
    _cache: dict[Any, _Run] = field(default_factory=dict)

    # ---- calls ----------------------------------------------------------------------------------------------
    def _run(self, key: Any, structures: list[BenchStructure]) -> _Run:
        if key not in self._cache:
            run = _Run(structures)
            try:
                run.rows = self.bench.calc_many(structures, done=lambda i, row: run.done.append((i, row)))
            except Exception as exc:
                run.error = one_line(exc)
            self._cache[key] = run
        return self._cache[key]

    def batch(self) -> _Run:
        return self._run("mixed", self.mixed)

    def alone(self, structure: BenchStructure) -> _Run:
        return self._run(("alone", structure.id), [structure])

    def good_batch(self) -> _Run:
        return self._run("good", [s for s in self.mixed if s.id in self.good])

    def prepare(self) -> None:
        """Make every call up front (each catches its exception), so that every check sees the same rows."""
        self._run("empty", [])
        self.batch()
        for s in self.mixed:
            if s.id in self.good:
                self.alone(s)
        self.set_rows()  # alone, the structures without a row in the batch
        if self.batch().error is not None:
            self.good_batch()

    def set_rows(self) -> list[dict[str, Any]]:
        """One row per structure of the mixed set, in order, where there is one: from the batch, else alone."""
        out = []
        for s in self.mixed:
            row = self.batch().row_of(s.id)
            if row is None:
                row = self.alone(s).row_of(s.id)
            if row is not None:
                out.append(row)
        return out

    def all_rows(self) -> list[Any]:
        """Every row any call returned (the set's rows first)."""
        seen = self.set_rows()
        rows = list(seen)
        for run in list(self._cache.values()):
            for row in run.rows if isinstance(run.rows, list) else []:
                if not any(row is r for r in seen):
                    rows.append(row)
        return rows

    # ---- checks --------------------------------------------------------------------------------------------
    def check_never_raises(self) -> tuple[bool, str]:
        problems: list[str] = []
        empty = self._run("empty", [])
        if empty.error is not None:
            problems.append(f"calc_many([]) raised {empty.error}")
        elif empty.rows != [] or empty.done:
            problems.append(f"calc_many([]) returned {empty.rows!r} and called done {len(empty.done)} times")
        run, m = self.batch(), len(self.mixed)
        if run.error is not None:
            problems.append(f"calc_many raised {run.error}")
            return False, "; ".join(problems)
        rows = run.rows
        if not isinstance(rows, list) or len(rows) != m:
            size = len(rows) if hasattr(rows, "__len__") else "?"
            problems.append(f"calc_many returned a {type(rows).__name__} of {size} rows for {m} structures")
            rows = rows if isinstance(rows, list) else []
        for k, (s, row) in enumerate(zip(self.mixed, rows, strict=False)):
            if not isinstance(row, dict):
                problems.append(f"row {k} is a {type(row).__name__}, not a dict")
                continue
            if row.get("structure_id") != s.id:
                problems.append(f"row {k} is of {row.get('structure_id')!r}, not of {s.id!r} (out of order)")
                continue
            error = row.get("error")
            if s.id in self.good and error:
                problems.append(f"{s.id} failed: {error}")
            elif s.id in self.bad and not (isinstance(error, str) and error.strip()):
                problems.append(f"{s.id} ({self.bad[s.id]}) has no error (error={error!r})")
        calls: dict[Any, int] = {}
        for index, row in run.done:
            calls[index] = calls.get(index, 0) + 1
            if not (isinstance(index, int) and 0 <= index < len(rows)):
                problems.append(f"done called with index {index!r} for {m} structures")
            elif _difference(row, rows[index]) != 0.0:
                problems.append(f"done({index}, row) got another row than calc_many returned")
        missing = [k for k in range(m) if k not in calls]
        repeated = sorted(k for k, n in calls.items() if n > 1)
        if missing:
            problems.append(f"done never called for indices {missing}")
        if repeated:
            problems.append(f"done called more than once for indices {repeated}")
        if problems:
            return False, "; ".join(problems)
        return True, (
            f"{m} structures ({len(self.good)} good, {len(self.bad)} it cannot treat) gave {m} rows in order, "
            f"the {len(self.bad)} failed with a reason; done called once per structure; calc_many([]) is []"
        )

    def check_columns(self) -> tuple[bool, str]:
        problems: list[str] = []
        columns = dict(self.cls.COLUMNS)
        blank = [c for c, d in columns.items() if not (isinstance(d, str) and d.strip())]
        if blank:
            problems.append(f"COLUMNS without a description: {', '.join(blank)}")
        shadowed = sorted(set(columns) & set(COMMON_COLUMNS))
        if shadowed:
            problems.append(f"COLUMNS redefines common columns: {', '.join(shadowed)}")
        documented = set(ROW_COMMON_COLUMNS) | set(columns)
        rows = [r for r in self.all_rows() if isinstance(r, dict)]
        if not rows:
            return False, "; ".join([*problems, "no row to check: every calc_many call raised"])
        undocumented: dict[str, int] = {}
        extra_in_failed: dict[str, int] = {}
        missing: dict[str, int] = {}
        with_potential = 0
        failed = 0
        for row in rows:
            keys = set(row)
            with_potential += "potential" in keys
            for c in keys - documented - {"potential"}:
                undocumented[str(c)] = undocumented.get(str(c), 0) + 1
            for c in set(ROW_COMMON_COLUMNS) - keys:
                missing[c] = missing.get(c, 0) + 1
            if row.get("error"):
                failed += 1
                for c in keys & set(columns):
                    extra_in_failed[c] = extra_in_failed.get(c, 0) + 1
        problems += [f"undocumented column {c} (in {n} rows)" for c, n in sorted(undocumented.items())]
        problems += [f"common column {c} missing (in {n} rows)" for c, n in sorted(missing.items())]
        if with_potential:
            problems.append(f"{with_potential} rows carry 'potential' (the stage adds it)")
        problems += [
            f"failed rows hold benchmark column {c} (in {n} rows)" for c, n in sorted(extra_in_failed.items())
        ]
        if failed == 0:
            problems.append("no failed row to check")
        if problems:
            return False, "; ".join(problems)
        return True, (
            f"{len(columns)} documented columns; {len(rows)} rows hold the common columns and documented ones only, "
            f"failed ones ({failed}) common columns only"
        )

    def check_aggregate(self) -> tuple[bool, str]:
        problems: list[str] = []
        try:
            empty = self.cls.aggregate([])
        except Exception as exc:
            empty = None
            problems.append(f"aggregate([]) raised {one_line(exc)}")
        if empty is not None:
            problems += [f"aggregate([]): {p}" for p in _metric_problems(empty, 0, 0)]
        rows = self.set_rows()
        n_failed = sum(1 for r in rows if r.get("error"))
        try:
            metrics = self.cls.aggregate(rows)
        except Exception as exc:
            metrics = None
            problems.append(f"aggregate of {len(rows)} rows raised {one_line(exc)}")
        if metrics is not None:
            problems += [
                f"aggregate of {len(rows)} rows: {p}" for p in _metric_problems(metrics, len(rows), n_failed)
            ]
        if not rows:
            problems.append("no row to aggregate: every calc_many call raised")
        if problems:
            return False, "; ".join(problems)
        assert metrics is not None
        return True, (
            f"aggregate([]) gives n 0, n_failed 0; {len(rows)} rows give n {len(rows)}, n_failed {n_failed} "
            f"and {len(metrics)} plain metrics"
        )

    def check_plain_rows(self) -> tuple[bool, str]:
        rows = self.all_rows()
        if not rows:
            return False, "no row to check: every calc_many call raised"
        problems: list[str] = []
        for row in rows:
            sid = row.get("structure_id", "?") if isinstance(row, dict) else "?"
            found = _not_plain(row, "")
            if not found:
                try:
                    json.dumps(row)
                except (TypeError, ValueError) as exc:
                    found = [f"json.dumps raised {one_line(exc)}"]
            problems += [f"{sid}{p}" for p in found]
        if problems:
            shown = "; ".join(sorted(set(problems))[:5])
            more = f" (and {len(set(problems)) - 5} more)" if len(set(problems)) > 5 else ""
            return False, f"values that are not plain Python: {shown}{more}"
        return True, f"{len(rows)} rows hold plain Python values only and go through json.dumps"

    def check_batch_invariance(self) -> tuple[bool, str]:
        good = [s for s in self.mixed if s.id in self.good]
        problems: list[str] = []
        worst, worst_at = 0.0, ""
        compared = 0
        for s in good:
            alone = self.alone(s)
            if alone.error is not None:
                problems.append(f"calc_many([{s.id}]) raised {alone.error}")
                continue
            one = alone.row_of(s.id)
            together = self.batch().row_of(s.id) or self.good_batch().row_of(s.id)
            if one is None or together is None:
                problems.append(f"{s.id} has no row {'alone' if one is None else 'in a batch'}")
                continue
            compared += 1
            for column in sorted(set(one) | set(together), key=str):
                if is_timing_column(str(column)):
                    continue
                if (column in one) != (column in together):
                    where = "alone" if column in one else "in the batch"
                    problems.append(f"{s.id}: column {column} only {where}")
                    continue
                d = _difference(one[column], together[column])
                if d > worst:
                    worst, worst_at = d, f"{s.id}: {column}"
        if compared == 0 and not problems:
            return False, "no good structure to compare"
        if worst > self.tolerance:
            shown = "differ" if math.isinf(worst) else f"differ by {worst:.3g}"
            problems.append(
                f"the values of {worst_at} {shown} alone and in the batch (tolerance {self.tolerance:g})"
            )
        if problems:
            return False, "; ".join(problems)
        return True, (
            f"{compared} good structures give the same row alone and among {len(self.mixed)} "
            f"(largest difference {worst:.2g}; timing columns aside)"
        )


def _metric_problems(metrics: Any, n: int, n_failed: int) -> list[str]:
    """What is wrong with the metrics of ``n`` rows of which ``n_failed`` failed."""
    if not isinstance(metrics, dict):
        return [f"returned a {type(metrics).__name__}, not a dict"]
    problems = []
    for key, expected in (("n", n), ("n_failed", n_failed)):
        value = metrics.get(key)
        if type(value) is not int or value != expected:
            problems.append(f"{key} is {value!r} ({type(value).__name__}), not {expected}")
    not_plain = [
        f"{k} ({type(v).__module__}.{type(v).__name__})"
        for k, v in metrics.items()
        if type(v) not in _PLAIN_TYPES
    ]
    if not_plain:
        problems.append(f"metrics that are not plain Python: {', '.join(map(str, not_plain))}")
    bad_keys = [repr(k) for k in metrics if not isinstance(k, str)]
    if bad_keys:
        problems.append(f"keys that are not strings: {', '.join(bad_keys)}")
    return problems


def _not_plain(value: Any, where: str) -> list[str]:
    """Where ``value`` holds something other than plain Python scalars, lists and string-keyed dicts."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return []
    if kind is list:
        for k, item in enumerate(value):
            found = _not_plain(item, f"{where}[{k}]")
            if found:
                return found  # one per column is enough
        return []
    if kind is dict:
        out = []
        for key, item in value.items():
            if type(key) is not str:
                out.append(f"{where}: key {key!r} ({type(key).__name__})")
            else:
                out += _not_plain(item, f"{where}.{key}" if where else f".{key}")
        return out
    return [f"{where}: {kind.__module__}.{kind.__name__}"]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.number, np.bool_)) and not isinstance(x, str)


def _difference(a: Any, b: Any) -> float:
    """Largest absolute difference of the numbers of ``a`` and ``b`` (nested; two NaNs are equal).

    ``inf`` when they differ in anything but numbers: keys, lengths, strings, ``None``, a NaN against a number.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return math.inf
        return max((_difference(a[k], b[k]) for k in a), default=0.0)
    if _is_number(a) and _is_number(b):
        x, y = float(a), float(b)
        if x == y or (math.isnan(x) and math.isnan(y)):
            return 0.0
        d = abs(x - y)
        return math.inf if math.isnan(d) else d
    sequence = (list, tuple, np.ndarray)
    if isinstance(a, sequence) and isinstance(b, sequence):
        a_items, b_items = list(a), list(b)
        if len(a_items) != len(b_items):
            return math.inf
        return max(map(_difference, a_items, b_items), default=0.0)
    try:
        return 0.0 if type(a) is type(b) and bool(a == b) else math.inf
    except Exception:
        return math.inf


__all__ = [
    "CHECKS",
    "ROW_COMMON_COLUMNS",
    "UNSUPPORTED_ELEMENT",
    "BenchmarkContractError",
    "BenchmarkReport",
    "default_reference_set",
    "default_settings",
    "emt_atom_energies",
    "is_timing_column",
    "untreatable_structures",
    "validate_benchmark",
]
