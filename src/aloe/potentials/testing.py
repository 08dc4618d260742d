"""The potential contract, shipped in the package: :func:`validate_potential` checks any potential in seconds.

A trained member, a new wrapper or an ASE calculator can be checked before hours of benchmarks are spent on it::

    from aloe.potentials.testing import validate_potential

    report = validate_potential("models/member-0.model")
    print(report)  # one line per check
    report.raise_if_failed()  # in a test: one AssertionError naming every failed check

The checks (modelled on torch-sim's ``validate_model_outputs``; each one can fail, and the package's tests show each
failing on a deliberately broken potential):

``outputs``
    :meth:`~aloe.potentials.base.Potential.predict` and
    :meth:`~aloe.potentials.base.Potential.predict_energies` return :class:`~aloe.potentials.base.Predictions` of
    the documented shapes (energy ``(m,)``, forces ``(n_atoms_total, 3)``, stress ``(m, 6)``, floating point,
    ``m`` error entries that are ``None`` or a string), every structure of the set is predicted without an error,
    and no call changes the batch it was given.
``non-finite``
    Every row of every prediction made during the validation is either finite (energy, and forces and stress for
    :meth:`~aloe.potentials.base.Potential.predict`) or carries an error: a NaN is never silent.
``forces``
    Forces equal ``-dE/dx`` from central finite differences of the energy (fourth-order stencil) on the atoms with
    the largest forces of one structure.
``stress``
    The Voigt stress equals ``(1/V) dE/d(strain)`` from finite differences of the energy under the six symmetric
    strains: ASE's sign (positive = tensile) and order (xx, yy, zz, yz, xz, xy).
``batch-invariance``
    Each structure's energy, forces and stress predicted in one batch with the others, and in the reversed batch,
    equal those of the structure predicted alone.
``energy-only``
    :meth:`~aloe.potentials.base.Potential.predict_energies` gives the energies of
    :meth:`~aloe.potentials.base.Potential.predict`, in the batch and for each structure alone.

Every finite-difference energy comes from a batch of one structure, so a batch dependence shows up in
``batch-invariance`` only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from aloe.errors import AloeError, one_line
from aloe.potentials.base import Potential, Predictions
from aloe.structures import StructureBatch

#: The checks, in the order of a report.
CHECKS: tuple[str, ...] = ("outputs", "non-finite", "forces", "stress", "batch-invariance", "energy-only")

#: Elements of the default structures: EMT metals that every built-in potential can evaluate, and the elements of
#: the smallest MACE files aloe's tests train.
DEFAULT_ELEMENTS: tuple[str, ...] = ("Al", "Cu")

#: Voigt order (ASE): component -> the two Cartesian axes.
VOIGT_AXES: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
VOIGT_LABELS: tuple[str, ...] = ("xx", "yy", "zz", "yz", "xz", "xy")

#: Fourth-order central difference: f'(0) ~ sum(c_k f(s_k h)) / h.
_STENCIL_STEPS = (-2.0, -1.0, 1.0, 2.0)
_STENCIL_WEIGHTS = (1.0 / 12.0, -8.0 / 12.0, 8.0 / 12.0, -1.0 / 12.0)
#: Atoms of the finite-difference structure whose forces are differentiated (those with the largest forces).
FD_ATOMS = 2
#: Energy per atom (eV) below which round-off is taken relative to this scale instead of the total energy.
_ENERGY_SCALE = 1.0
#: Shortest nearest-neighbour distance of the default structures (A).
_MIN_NN_DISTANCE = 2.0
#: A finite-difference check needs its largest reference component this many times above the round-off floor.
_SIGNAL = 10.0


@dataclass(frozen=True)
class Tolerances:
    """Tolerances of :func:`validate_potential`.

    The batch and energy-only tolerances are those of aloe's own conformance tests
    (``tests/potentials/test_batch_invariance.py``): float32 round-off of the CHGNet trio and of MACE in float32;
    float64 ASE calculators agree exactly. A finite-difference component passes when
    ``|predicted - reference| <= fd_rtol * max|reference| + floor``, where the floor is the round-off of the
    difference quotient: ``energy_precision * max(|E|, n_atoms * 1 eV) * 1.5 / step`` (``1.5`` is the sum of the
    stencil's absolute weights; divided by the volume for stress).

    Attributes
    ----------
    energy_per_atom
        Batch vs alone, and energy-only vs full prediction (eV/atom).
    force
        Batch vs alone (eV/A), per component.
    stress
        Batch vs alone (eV/A^3), per Voigt component.
    fd_rtol
        Finite differences, relative to the largest component of the reference.
    energy_precision
        Relative round-off of a total energy assumed for the finite-difference floor: about four float32 epsilons
        (the energies of a 4-atom cell displaced by steps of 2e-4 A scatter around a smooth curve by up to 1.5e-7
        of the total for a float32 MACE and chgnet-0.3.0, 3.7e-7 for chgnet-0.2.0). Float64 models are judged as
        if they were float32.
    position_step
        Finite-difference step of the positions (A).
    strain_step
        Finite-difference step of the strains (dimensionless).
    """

    energy_per_atom: float = 1e-5
    force: float = 1e-4
    stress: float = 1e-5
    fd_rtol: float = 0.02
    energy_precision: float = 5e-7
    position_step: float = 0.01
    strain_step: float = 0.005


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes
    ----------
    name
        The check's name (one of :data:`CHECKS`, or of :data:`aloe.bench.testing.CHECKS`).
    ok
        Whether what was checked (a potential, a benchmark) passed.
    detail
        One line: what was compared and the largest deviation, or what went wrong.
    """

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAILED':<6}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class ContractReport:
    """What a contract check found: its checks, each passed or failed with a one-line detail.

    Attributes
    ----------
    subject
        What was checked (a potential's name; a benchmark class with the potential it ran).
    checks
        One :class:`Check` per check of the contract, in order.
    structures
        The structures checked.
    """

    subject: str
    checks: tuple[Check, ...]
    structures: tuple[str, ...] = ()

    #: The contract's name in messages, and the error :meth:`raise_if_failed` raises.
    CONTRACT: ClassVar[str] = "contract"
    ERROR: ClassVar[type[AssertionError]] = AssertionError

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if not c.ok)

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; the checks are {', '.join(c.name for c in self.checks)}")

    def raise_if_failed(self) -> None:
        """Raise :attr:`ERROR` naming every failed check; return quietly if all passed."""
        failed = self.failed
        if failed:
            head = f"{self.subject} breaks the {self.CONTRACT} ({len(failed)} of {len(self.checks)} checks):"
            raise self.ERROR("\n".join([head, *(f"  {c}" for c in failed)]))

    def __str__(self) -> str:
        passed = sum(c.ok for c in self.checks)
        on = f" on {', '.join(self.structures)}" if self.structures else ""
        header = f"{self.subject}: {passed}/{len(self.checks)} checks passed{on}"
        return "\n".join([header, *map(str, self.checks)])


class PotentialContractError(AssertionError):
    """A potential broke the contract of :func:`validate_potential` (raised by :meth:`ValidationReport.raise_if_failed`)."""


@dataclass(frozen=True)
class ValidationReport(ContractReport):
    """What :func:`validate_potential` found (:attr:`subject`: the potential's name; one check per :data:`CHECKS`)."""

    CONTRACT: ClassVar[str] = "potential contract"
    ERROR: ClassVar[type[AssertionError]] = PotentialContractError

    @property
    def potential(self) -> str:
        """The potential's name."""
        return self.subject


# ---- the structures -------------------------------------------------------------------------------------------
def default_structures(elements: Sequence[str] = DEFAULT_ELEMENTS, seed: int = 0) -> StructureBatch:
    """The validation set: four small periodic structures of one or two elements, all strained.

    Parameters
    ----------
    elements
        One or two chemical symbols (``A``, ``B``; one symbol stands for both).
    seed
        Seed of the strains and displacements.

    Returns
    -------
    StructureBatch
        In this order (the first is the finite-difference structure of :func:`validate_potential`):

        - ``triclinic-4``: a 2x2x1 supercell of the primitive fcc cell (``ABAB``), sheared by about 4% in every
          component (a non-orthogonal, strained cell) and rattled by 0.08 A;
        - ``fcc-1``: the 1-atom primitive fcc cell of ``A``, strained;
        - ``cscl-2``: CsCl-type ``AB``, rattled and strained;
        - ``fcc-8``: a 2x1x1 supercell of the conventional fcc cell (``A4B4``), rattled and strained.

        Nearest-neighbour distances are 1.1 times the sum of the covalent radii (Al-Cu: 2.78 A) but at least 2 A
        (H, He and the first-row non-metals would otherwise be packed into metal lattices at 0.7-1.7 A), within
        every built-in potential's cutoff and the 4 A of the smallest MACE files.

    Raises
    ------
    AloeError
        For no, more than two, or unknown elements.
    """
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers, covalent_radii

    symbols = list(elements)
    if not 1 <= len(symbols) <= 2:
        raise AloeError(f"default_structures takes one or two elements, not {len(symbols)}")
    unknown = [s for s in symbols if s not in atomic_numbers or s == "X"]
    if unknown:
        raise AloeError(f"unknown element(s) {', '.join(map(str, unknown))}")
    a_sym, b_sym = symbols[0], symbols[-1]
    rng = np.random.default_rng(seed)

    def nn_distance(species: Sequence[str]) -> float:
        covalent = 1.1 * 2.0 * float(np.mean([covalent_radii[atomic_numbers[s]] for s in species]))
        return max(covalent, _MIN_NN_DISTANCE)

    def deformed(atoms: Atoms, strain: float, rattle: float) -> Atoms:
        atoms = atoms.copy()
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0.0, strain, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        return atoms

    d_ab, d_a = nn_distance([a_sym, b_sym]), nn_distance([a_sym])
    triclinic = bulk(a_sym, "fcc", a=d_ab * np.sqrt(2.0)) * (2, 2, 1)
    triclinic.symbols = [a_sym, b_sym, b_sym, a_sym]
    one = bulk(a_sym, "fcc", a=d_a * np.sqrt(2.0))
    cscl = Atoms(
        [a_sym, b_sym],
        cell=np.eye(3) * 2.0 * d_ab / np.sqrt(3.0),
        scaled_positions=[[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]],
        pbc=True,
    )
    eight = bulk(a_sym, "fcc", a=d_ab * np.sqrt(2.0), cubic=True) * (2, 1, 1)
    eight.symbols = [a_sym, b_sym, b_sym, a_sym, b_sym, a_sym, a_sym, b_sym]
    structures = [
        deformed(triclinic, 0.04, 0.08),
        deformed(one, 0.03, 0.0),
        deformed(cscl, 0.02, 0.05),
        deformed(eight, 0.02, 0.05),
    ]
    return StructureBatch.from_atoms(structures, ids=["triclinic-4", "fcc-1", "cscl-2", "fcc-8"])


def declared_elements(potential: Potential) -> tuple[int, ...] | None:
    """Atomic numbers a potential declares it supports (``atomic_numbers``), or ``None`` if it declares none.

    MACE models declare theirs once loaded; a potential with a lazily loaded ``model`` property is loaded here to
    find out. ASE calculators and CHGNet declare none.
    """
    if getattr(potential, "atomic_numbers", None) is None and isinstance(
        getattr(type(potential), "model", None), property
    ):
        try:
            _ = potential.model  # type: ignore[attr-defined]
        except Exception:  # a model that cannot load fails the checks with its reason instead
            return None
    numbers = getattr(potential, "atomic_numbers", None)
    return None if numbers is None else tuple(sorted(int(z) for z in numbers))


def _structures_for(potential: Potential) -> StructureBatch:
    from ase.data import atomic_numbers, chemical_symbols

    declared = declared_elements(potential)
    if declared is None or {atomic_numbers[s] for s in DEFAULT_ELEMENTS} <= set(declared):
        return default_structures(DEFAULT_ELEMENTS)
    return default_structures([chemical_symbols[z] for z in declared[:2]])


def _as_batch(structures: Any) -> StructureBatch:
    if isinstance(structures, StructureBatch):
        batch = structures.take(np.arange(len(structures)))  # a copy: the caller's arrays stay untouched
    else:
        items = list(structures)
        if items and all(hasattr(s, "lattice") for s in items):
            batch = StructureBatch.from_structures(items)
        else:
            batch = StructureBatch.from_atoms(items)
    if len(batch) == 0:
        raise AloeError("validate_potential needs at least one structure")
    return batch


# ---- the validation -------------------------------------------------------------------------------------------
def validate_potential(
    potential: Any,
    structures: StructureBatch | Sequence[Any] | None = None,
    *,
    tolerances: Tolerances | None = None,
    **options: Any,
) -> ValidationReport:
    """Check a potential against the contract every aloe stage relies on (see the module docstring).

    Parameters
    ----------
    potential
        A :class:`~aloe.potentials.base.Potential`, or anything :func:`aloe.potentials.registry.load_potential`
        accepts (a built-in name, a MACE file, ``package.module:factory``, an ASE calculator ...).
    structures
        Periodic structures (a ``StructureBatch``, ASE ``Atoms`` or pymatgen ``Structure`` s) made of elements the
        potential supports. The finite-difference checks use the first one with at least two atoms (ideally
        rattled and in a strained, non-orthogonal cell: a symmetric structure has nothing to differentiate).
        Default: :func:`default_structures` of Al and Cu, or of the first two elements the potential declares (see
        :func:`declared_elements`) when it lacks either.
    tolerances
        Default: :class:`Tolerances` ().
    **options
        Passed to ``load_potential`` (``batch_size``, ``threads``, ``dtype`` ...) when ``potential`` is a spec.

    Returns
    -------
    ValidationReport
        One :class:`Check` per entry of :data:`CHECKS`. A check whose code raises fails with the exception's
        reason; the validation itself raises only for unusable arguments.

    Raises
    ------
    AloeError
        For a spec that does not resolve, options given with an instance, or no structures.
    """
    if isinstance(potential, Potential):
        if options:
            raise AloeError(
                f"options ({', '.join(sorted(options))}) apply to a spec, not to a Potential instance"
            )
        pot = potential
    else:
        from aloe.potentials.registry import load_potential

        pot = load_potential(potential, **options)
    batch = _structures_for(pot) if structures is None else _as_batch(structures)
    session = _Session(pot, batch, tolerances or Tolerances())
    runners: dict[str, Callable[[], tuple[bool, str]]] = {
        "forces": session.check_forces,
        "stress": session.check_stress,
        "batch-invariance": session.check_batch_invariance,
        "energy-only": session.check_energy_only,
        # Last: these two look at every prediction the others made.
        "outputs": session.check_outputs,
        "non-finite": session.check_non_finite,
    }
    results: dict[str, Check] = {}
    for name, run in runners.items():
        try:
            ok, detail = run()
        except Exception as exc:
            ok, detail = False, f"raised {one_line(exc)}"
        results[name] = Check(name, bool(ok), detail)
    described = tuple(
        f"{batch.ids[r]} ({batch.to_atoms(r).get_chemical_formula()})" for r in range(len(batch))
    )
    return ValidationReport(pot.name, tuple(results[name] for name in CHECKS), described)


@dataclass
class _Call:
    """One prediction made during a validation: the batch, which path, what came back, whether the batch changed."""

    batch: StructureBatch
    energy_only: bool
    prediction: Any
    mutated: bool


@dataclass
class _Session:
    """The predictions of one validation (made once, shared by the checks) and the checks themselves."""

    potential: Potential
    batch: StructureBatch
    tol: Tolerances
    calls: list[_Call] = field(default_factory=list)
    _cache: dict[Any, Any] = field(default_factory=dict)

    # ---- predictions -----------------------------------------------------------------------------------------
    def _predict(self, batch: StructureBatch, energy_only: bool = False) -> Predictions:
        """Predict a copy of ``batch`` (so that a potential that changes its input cannot change the validation)."""
        given = batch.take(np.arange(len(batch)))
        method = self.potential.predict_energies if energy_only else self.potential.predict
        prediction = method(given)
        mutated = list(given.ids) != list(batch.ids) or not all(
            a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
            for a, b in (
                (given.cell, batch.cell),
                (given.frac_coords, batch.frac_coords),
                (given.numbers, batch.numbers),
                (given.offsets, batch.offsets),
            )
        )
        self.calls.append(_Call(batch, energy_only, prediction, mutated))
        return prediction

    def _cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def full(self) -> Predictions:
        return self._cached("full", lambda: self._predict(self.batch))

    def energies(self) -> Predictions:
        return self._cached("energies", lambda: self._predict(self.batch, energy_only=True))

    def alone(self, row: int, energy_only: bool = False) -> Predictions:
        return self._cached(
            ("alone", row, energy_only), lambda: self._predict(self.batch.take([row]), energy_only)
        )

    def fd_row(self) -> int:
        multi = np.flatnonzero(self.batch.n_atoms >= 2)
        return int(multi[0]) if len(multi) else 0

    def _stencil_energies(self, atoms_list: list[Any]) -> tuple[np.ndarray, list[str]]:
        """Energies of ``atoms_list``, each predicted in a batch of its own, and the errors among them."""
        energies, errors = [], []
        for atoms in atoms_list:
            pred = self._predict(StructureBatch.from_atoms([atoms]))
            energies.append(float(pred.energy[0]))
            if pred.errors[0] is not None:
                errors.append(str(pred.errors[0]))
        return np.array(energies), errors

    # ---- checks --------------------------------------------------------------------------------------------
    def check_outputs(self) -> tuple[bool, str]:
        m, n = len(self.batch), int(self.batch.offsets[-1])
        problems: list[str] = []
        for label, pred in (("predict", self.full()), ("predict_energies", self.energies())):
            wrong = _shape_problems(pred, m, n)
            problems += [f"{label}: {p}" for p in wrong]
            failed = [] if wrong else [f"{self.batch.ids[r]} ({e})" for r, e in enumerate(pred.errors) if e]
            if failed:
                problems.append(f"{label} failed {len(failed)}/{m}: {'; '.join(failed)}")
        for call in self.calls:  # every other prediction of the validation, for its own batch
            if call.prediction is not self.full() and call.prediction is not self.energies():
                wrong = _shape_problems(call.prediction, len(call.batch), int(call.batch.offsets[-1]))
                if wrong:
                    problems.append(f"a batch of {len(call.batch)}: {wrong[0]}")
                    break
        mutated = sum(call.mutated for call in self.calls)
        if mutated:
            problems.append(f"{mutated} of {len(self.calls)} calls changed the batch they were given")
        if problems:
            return False, "; ".join(problems)
        return True, (
            f"energy ({m},), forces ({n}, 3), stress ({m}, 6), {m} error entries; all {m} structures predicted "
            f"by predict and predict_energies; {len(self.calls)} calls left their batch unchanged"
        )

    def check_non_finite(self) -> tuple[bool, str]:
        rows, silent = 0, []
        for call in self.calls:
            pred, batch = call.prediction, call.batch
            for r in range(len(batch)):
                if pred.errors[r] is not None:
                    continue
                rows += 1
                bad = [] if np.isfinite(pred.energy[r]) else ["energy"]
                if not call.energy_only:
                    if not np.isfinite(pred.forces[batch.atom_slice(r)]).all():
                        bad.append("forces")
                    if not np.isfinite(pred.stress[r]).all():
                        bad.append("stress")
                if bad:
                    path = "predict_energies" if call.energy_only else "predict"
                    silent.append(f"{batch.ids[r]} ({path}: {', '.join(bad)})")
        if rows == 0:
            return False, f"no row without an error in {len(self.calls)} predictions: nothing to check"
        if silent:
            shown = "; ".join(sorted(set(silent))[:5])
            return False, f"{len(silent)} rows hold non-finite values but no error: {shown}"
        return True, f"{rows} error-free rows over {len(self.calls)} calls, all finite"

    def check_forces(self) -> tuple[bool, str]:
        row = self.fd_row()
        batch, sid = self.batch, self.batch.ids[row]
        if batch.n_atoms[row] < 2:
            return False, "needs a structure with at least two atoms (forces of a 1-atom cell vanish)"
        base = self.alone(row)
        if base.errors[0] is not None:
            return False, f"{sid} failed: {base.errors[0]}"
        predicted = np.asarray(base.forces, dtype=float)
        magnitude = np.linalg.norm(predicted, axis=1)
        order = np.argsort(-np.nan_to_num(magnitude, nan=np.inf), kind="stable")
        atoms_idx = sorted(order[:FD_ATOMS].tolist())
        h = self.tol.position_step
        reference = np.zeros((len(atoms_idx), 3))
        floor = np.zeros((len(atoms_idx), 3))
        n_atoms = int(batch.n_atoms[row])
        for i, (a, k) in enumerate(itertools.product(atoms_idx, range(3))):
            displaced = []
            for s in _STENCIL_STEPS:
                atoms = batch.to_atoms(row)
                atoms.positions[a, k] += s * h
                displaced.append(atoms)
            energies, errors = self._stencil_energies(displaced)
            if errors:
                return False, f"{sid} with atom {a} displaced failed: {errors[0]}"
            reference[i // 3, i % 3] = -float(np.dot(_STENCIL_WEIGHTS, energies)) / h
            floor[i // 3, i % 3] = self._noise(energies, n_atoms) / h
        return self._compare(
            predicted[atoms_idx], reference, floor, f"{sid}, atoms {atoms_idx}", "eV/A", "forces", "-dE/dx"
        )

    def check_stress(self) -> tuple[bool, str]:
        row = self.fd_row()
        batch, sid = self.batch, self.batch.ids[row]
        base = self.alone(row)
        if base.errors[0] is not None:
            return False, f"{sid} failed: {base.errors[0]}"
        predicted = np.asarray(base.stress[0], dtype=float)
        t = self.tol.strain_step
        volume = float(batch.volumes[row])
        n_atoms = int(batch.n_atoms[row])
        reference, floor = np.zeros(6), np.zeros(6)
        for v, (i, j) in enumerate(VOIGT_AXES):
            strained = []
            for s in _STENCIL_STEPS:
                eps = np.zeros((3, 3))
                eps[i, j] = eps[j, i] = s * t
                atoms = batch.to_atoms(row)
                atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
                strained.append(atoms)
            energies, errors = self._stencil_energies(strained)
            if errors:
                return False, f"{sid} strained ({VOIGT_LABELS[v]}) failed: {errors[0]}"
            # A symmetric shear strain t moves two tensor entries: dE/dt = 2 V sigma_ij; a normal one: V sigma_ii.
            factor = volume * (1.0 if i == j else 2.0)
            reference[v] = float(np.dot(_STENCIL_WEIGHTS, energies)) / t / factor
            floor[v] = self._noise(energies, n_atoms) / t / factor
        ok, detail = self._compare(
            predicted, reference, floor, f"{sid}, Voigt xx yy zz yz xz xy", "eV/A^3", "stress", "dE/dstrain/V"
        )
        if not ok:
            detail += _stress_hint(predicted, reference, self.tol.fd_rtol * np.abs(reference).max() + floor)
        return ok, detail

    def _noise(self, energies: np.ndarray, n_atoms: int) -> float:
        """Round-off of a stencil's difference quotient times its step (eV)."""
        scale = max(float(np.abs(energies).max()), n_atoms * _ENERGY_SCALE)
        return self.tol.energy_precision * scale * float(np.abs(_STENCIL_WEIGHTS).sum())

    def _compare(
        self,
        predicted: np.ndarray,
        reference: np.ndarray,
        floor: np.ndarray,
        where: str,
        unit: str,
        what: str,
        oracle: str,
    ) -> tuple[bool, str]:
        if not np.isfinite(reference).all():
            return False, f"{where}: non-finite energies without an error in the finite differences"
        largest = float(np.abs(reference).max())
        if not largest > _SIGNAL * float(floor.max()):
            return False, (
                f"{where}: the finite-difference {what} (largest {largest:.3g} {unit}) are within {_SIGNAL:g}x "
                f"their round-off ({floor.max():.3g} {unit}): nothing to test; give a rattled, strained structure"
            )
        allowed = self.tol.fd_rtol * largest + floor
        deviation = np.abs(predicted - reference)
        worst = float(np.nanmax(np.where(np.isnan(deviation), np.inf, deviation / allowed)))
        text = (
            f"{where}: predicted {_fmt(predicted)} vs {oracle} {_fmt(reference)} {unit}; "
            f"largest deviation {worst:.2g}x the tolerance ({self.tol.fd_rtol:g} x {largest:.3g} + round-off)"
        )
        return worst <= 1.0, text

    def check_batch_invariance(self) -> tuple[bool, str]:
        batch, m = self.batch, len(self.batch)
        if m < 2:
            return False, "needs at least two structures"
        together = self.full()
        order = np.arange(m)[::-1].copy()
        reverse = self._cached("reversed", lambda: self._predict(batch.take(order)))
        position = np.argsort(order)
        worst = {"energy": 0.0, "forces": 0.0, "stress": 0.0}
        problems: list[str] = []
        compared = 0
        for r in range(m):
            one = self.alone(r)
            sl = batch.atom_slice(r)
            n = int(batch.n_atoms[r])
            j = int(position[r])
            rev_sl = slice(int(np.sum(batch.n_atoms[order[:j]])), int(np.sum(batch.n_atoms[order[: j + 1]])))
            for label, pred, erow, frows in (
                ("batch", together, r, sl),
                ("reversed batch", reverse, j, rev_sl),
            ):
                if (pred.errors[erow] is None) != (one.errors[0] is None):
                    where = "alone" if one.errors[0] is not None else f"in the {label}"
                    problems.append(f"{batch.ids[r]} fails only {where}")
                    continue
                if one.errors[0] is not None:
                    continue  # fails either way: the outputs check reports it
                compared += 1
                worst["energy"] = max(worst["energy"], _deviation(pred.energy[erow], one.energy[0]) / n)
                worst["forces"] = max(worst["forces"], _deviation(pred.forces[frows], one.forces))
                worst["stress"] = max(worst["stress"], _deviation(pred.stress[erow], one.stress[0]))
        if compared == 0 and not problems:
            return False, "no structure was predicted without an error: nothing to compare"
        limits = {"energy": self.tol.energy_per_atom, "forces": self.tol.force, "stress": self.tol.stress}
        units = {"energy": "eV/atom", "forces": "eV/A", "stress": "eV/A^3"}
        over = [k for k in worst if not worst[k] <= limits[k]]
        problems += [f"{k} differ by {worst[k]:.3g} {units[k]} (tolerance {limits[k]:g})" for k in over]
        chunk = max(1, int(self.potential.batch_size))
        note = f" (batch_size {chunk}: chunks of {chunk})" if chunk < m else ""
        summary = ", ".join(f"{k} {worst[k]:.2g} {units[k]}" for k in worst)
        if problems:
            return False, f"{m} structures, batch vs alone{note}: " + "; ".join(problems)
        return True, f"{m} structures in a batch, reversed and alone{note}: largest differences {summary}"

    def check_energy_only(self) -> tuple[bool, str]:
        batch, m = self.batch, len(self.batch)
        pairs = [("batch", self.energies(), self.full(), r, r) for r in range(m)]
        pairs += [("alone", self.alone(r, energy_only=True), self.alone(r), 0, r) for r in range(m)]
        worst, compared, problems = 0.0, 0, []
        for label, fast, full, k, r in pairs:
            if fast.errors[k] is not None and full.errors[k] is None:
                problems.append(f"{batch.ids[r]} fails only in predict_energies ({label}): {fast.errors[k]}")
                continue
            if full.errors[k] is not None:
                continue  # predict failed (the outputs check says why); energies alone may still work
            compared += 1
            worst = max(worst, _deviation(fast.energy[k], full.energy[k]) / int(batch.n_atoms[r]))
        if compared == 0 and not problems:
            return False, "no structure was predicted without an error: nothing to compare"
        if not worst <= self.tol.energy_per_atom:
            problems.append(
                f"energies differ from predict's by up to {worst:.3g} eV/atom (tolerance {self.tol.energy_per_atom:g})"
            )
        if problems:
            return False, "; ".join(problems)
        return True, f"{compared} energies (batch and alone) equal predict's within {worst:.2g} eV/atom"


def _shape_problems(pred: Any, m: int, n: int) -> list[str]:
    """What is wrong with the shapes and types of ``pred`` for a batch of ``m`` structures and ``n`` atoms."""
    if not isinstance(pred, Predictions):
        return [f"returned a {type(pred).__name__}, not Predictions"]
    problems = []
    for label, shape in (("energy", (m,)), ("forces", (n, 3)), ("stress", (m, 6))):
        value = getattr(pred, label)
        if not isinstance(value, np.ndarray):
            problems.append(f"{label} is a {type(value).__name__}, not a numpy array")
        elif value.shape != shape:
            problems.append(f"{label} has shape {value.shape}, not {shape}")
        elif value.dtype.kind != "f":
            problems.append(f"{label} has dtype {value.dtype}, not floating point")
    if not isinstance(pred.errors, list) or len(pred.errors) != m:
        size = len(pred.errors) if hasattr(pred.errors, "__len__") else "?"
        problems.append(f"errors is a {type(pred.errors).__name__} of {size} entries, not a list of {m}")
    elif not all(e is None or isinstance(e, str) for e in pred.errors):
        problems.append("errors holds entries that are neither None nor a string")
    return problems


def _deviation(a: Any, b: Any) -> float:
    """Largest absolute difference; two NaNs at the same place are equal, one NaN is infinitely far."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return float("inf")
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # also equal infinities, whose difference is NaN
    diff = np.where(same, 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(diff), np.inf, diff), initial=0.0))


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in np.ravel(values)) + "]"


def _stress_hint(predicted: np.ndarray, reference: np.ndarray, allowed: np.ndarray) -> str:
    """A hint when the predicted stress is the reference with the other sign or another Voigt order."""
    if np.all(np.abs(-predicted - reference) <= allowed):
        return " (the negative matches: VASP's sign convention, compressive positive?)"
    for perm in itertools.permutations(range(6)):
        if perm != tuple(range(6)) and np.all(np.abs(predicted[list(perm)] - reference) <= allowed):
            return f" (matches in the order {' '.join(VOIGT_LABELS[p] for p in np.argsort(perm))})"
    return ""
