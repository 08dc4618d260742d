"""Elemental reference energies of a potential: the energy per atom of each element's most stable reference form.

Screening needs formation energies per atom, ``(E - sum_i mu_i) / N``, where ``mu_i`` is the model's own energy
per atom of element ``i`` in its reference state. Using each model's own references makes members trained on
different functionals (PBE with MP corrections, r2SCAN ...) comparable: their constant offsets cancel.

How a reference is computed (:func:`compute_reference`)
-------------------------------------------------------
Six candidate forms are relaxed with the model and the lowest finite energy per atom wins:

- ``fcc``, ``bcc``, ``hcp`` (ideal c/a = sqrt(8/3)), ``sc`` (simple cubic) and ``diamond``, as primitive cells
  whose nearest-neighbour distance starts at ``2 r``, with ``r`` the element's radius from
  :func:`aloe.elements.atomic_radius` (pymatgen ``Element.atomic_radius`` with MP-ALOE's overrides: noble gases,
  H x3, K/Rb/Cs x0.9). Each is relaxed with ASE ``FIRE`` on a ``FrechetCellFilter`` (positions and cell).
- ``dimer``: a homonuclear dimer in a cubic box (fixed cell, default edge 12 A so that images stay beyond the
  6 A cutoffs of CHGNet and MACE), bond started at twice ASE's covalent radius (closer to real bond lengths than
  ``2 r``: H2 0.62 vs 0.74 A, O2 1.32 vs 1.21 A, F2 1.14 vs 1.42 A). It is the reference for H, N, O, F, Cl, Br, I
  and the like; it is tried for every element because it costs little.

Defaults (:class:`ReferenceSettings`): ``fmax = 0.05`` eV/A and at most 300 FIRE steps (the equilibrium benchmark's
force criterion). A relaxation that hits the step limit still counts (its energy is an upper bound of its local
minimum) and is flagged ``converged: false``. A candidate whose shortest interatomic distance ends below
``min_distance`` (0.5 A) is rejected as collapsed, since a model's unphysical short-range well must not become a
reference. Likewise a candidate more than ``max_binding`` (15 eV/atom) below the model's own isolated atom (one
atom in the dimer box) is rejected as implausibly bound: real cohesive energies stay below 9 eV/atom, and models
do have deep wells far from their training data (CHGNet 0.3.0's Gd2 dimer relaxes to -605 eV/atom while Gd metal
is at -14.05). The cell is not symmetry-constrained, so an unstable start (bcc of an fcc metal ...) may relax into
a lower structure; the candidate keeps its starting name.

Guards while a form relaxes
---------------------------
A model's cost grows with the number of neighbours within its cutoff, and a collapsing cell makes that number
grow without bound: chgnet-r2scan's fcc F (starting at 1.0 A nearest-neighbour distance, ~1300 atoms within 6 A)
falls to 0.33 A^3/atom within four FIRE steps, by then 23 s and 3 GB per step. So every structure is checked
BEFORE each model call (the calculator is wrapped), and the form ends as rejected, with the reason recorded
(``stopped``), when

- more than ``max_neighbors`` (500) atoms lie within ``neighbor_cutoff`` (6 A) of an atom on average, estimated as
  number density times the sphere's volume (what a model's graph grows with; within 12% of the exact count at such
  densities): about 3 times the densest real elemental solid (diamond, 160), a volume per atom below 1.81 A^3. It
  lets C's close-packed starts through (466; chgnet-r2scan's hcp C relaxes into graphite-like layers, its lowest
  form), and it keeps a step under about 0.5 s and 150 MB for CHGNet;
- the volume per atom leaves ``[min_volume_ratio, max_volume_ratio]`` (0.2, 20) times its starting value;
- two atoms come closer than ``min_distance``;
- the form has relaxed for longer than ``max_seconds`` (300 s; a last resort that makes the result depend on the
  machine, so it is set far above what any form needs with the other guards in place: at most 83 s in
  ``benchmarks/bench_references.py`` on a busy 2-core machine).

A form may be rejected before its first step (a starting structure that is already too dense: the close-packed
forms of N, O and F, whose ``2 r`` starts are 3-8 times denser than diamond). Relaxations run with one BLAS
thread: ``FrechetCellFilter`` does many 3x3 matrix functions in SciPy, and OpenBLAS threads competing with the
model's made them 10x slower on a busy 2-core machine (same numbers).

Caching (:class:`ReferenceStore`)
---------------------------------
Computed references are kept in one JSON file per ``potential.identity()`` under ``cache_dir()/references``,
written atomically under a lock so that concurrent processes neither see partial files nor lose each other's
elements. An entry is reused only when it was computed with the same :class:`ReferenceSettings`. Values from an
explicit user table always win over the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from aloe.devices import one_blas_thread
from aloe.elements import RADIUS_MULTIPLIERS, RADIUS_OVERRIDES, symbol_to_z
from aloe.errors import AloeError, InputFileError, one_line
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator

    from aloe.potentials.base import Potential

CandidateName = Literal["fcc", "bcc", "hcp", "sc", "diamond", "dimer"]

#: Candidate forms, in the order they are tried (and reported).
CANDIDATES: tuple[str, ...] = ("fcc", "bcc", "hcp", "sc", "diamond", "dimer")

#: Bump when the cache layout changes; files of another format are ignored (and rewritten).
CACHE_FORMAT = 1

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

_log = logging.getLogger(__name__)


class ReferenceSettings(AloeSettings):
    """How elemental references are computed (changing any of these invalidates cached values)."""

    candidates: list[CandidateName] = Field(
        list(CANDIDATES),
        min_length=1,
        description="Reference forms to relax: fcc, bcc, hcp (ideal c/a), sc, diamond, dimer (molecule in a box).",
    )
    fmax: float = Field(0.05, gt=0, description="FIRE force criterion (eV/A).")
    max_steps: int = Field(300, ge=0, description="At most this many FIRE steps per candidate.")
    dimer_box: float = Field(
        12.0,
        gt=0,
        description="Edge (A) of the cubic box of the dimer; larger than the model's cutoff + bond.",
    )
    min_distance: float = Field(
        0.5,
        gt=0,
        description="Reject a candidate whose shortest interatomic distance falls below this (A), during or "
        "after its relaxation.",
    )
    max_neighbors: float | None = Field(
        500.0,
        gt=0,
        description="Stop a relaxation (before the model call) when more than this many atoms lie within "
        "neighbor_cutoff of an atom on average (number density x sphere volume); ~3x diamond's 160. None: no check.",
    )
    neighbor_cutoff: float = Field(
        6.0,
        gt=0,
        description="Cutoff (A) of the neighbour count above: that of CHGNet 0.3.0/r2scan and MACE-MP (6 A).",
    )
    min_volume_ratio: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Stop a relaxation whose volume per atom falls below this fraction of its start.",
    )
    max_volume_ratio: float = Field(
        20.0,
        gt=1,
        description="Stop a relaxation whose volume per atom grows beyond this multiple of its start.",
    )
    max_seconds: float | None = Field(
        300.0,
        gt=0,
        description="Stop a form that has relaxed longer than this (s), checked before each model call; a last "
        "resort (machine-dependent), far above what a form needs with the other guards. None: no limit.",
    )
    max_binding: float | None = Field(
        15.0,
        gt=0,
        description="Reject a candidate more than this many eV/atom below the model's own isolated atom "
        "(real cohesive energies stay below 9 eV/atom); None skips the check.",
    )
    radius_overrides: dict[str, float] = Field(
        dict(RADIUS_OVERRIDES), description="Radii (A) replacing pymatgen's atomic_radius (noble gases)."
    )
    radius_multipliers: dict[str, float] = Field(
        dict(RADIUS_MULTIPLIERS), description="Factors on pymatgen's atomic_radius (H x3; K, Rb, Cs x0.9)."
    )


@dataclass
class ElementalReferences(Mapping[str, float]):
    """Reference energies (eV/atom) of one model, with how each was obtained.

    Behaves as a read-only mapping ``symbol -> eV/atom``.

    Attributes
    ----------
    model
        The potential's identity.
    energies
        ``symbol -> eV/atom``.
    provenance
        ``symbol -> one line``: ``table (<source>)``, ``cache (<winner> ...)`` or ``computed (<winner> ...)``.
    info
        ``symbol -> details`` of computed or cached values (see :func:`compute_reference`); empty for table values.
    failed
        ``symbol -> why`` for requested elements that have no reference (only when asked with ``strict=False``);
        they are not in the mapping.

    """

    model: str
    energies: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, symbol: str) -> float:
        return self.energies[symbol]

    def __iter__(self) -> Iterator[str]:
        return iter(self.energies)

    def __len__(self) -> int:
        return len(self.energies)

    def as_dict(self) -> dict[str, float]:
        """A plain ``symbol -> eV/atom`` dict."""
        return dict(self.energies)


# ---- computing one element ---------------------------------------------------------------------------------


def candidate_structures(
    element: str, settings: ReferenceSettings | None = None
) -> dict[str, tuple[Atoms, bool]]:
    """The starting structures of the candidates, ``name -> (atoms, relax_cell)``.

    Crystals start with nearest-neighbour distance ``2 r`` (``r`` from :func:`aloe.elements.atomic_radius`, falling
    back to ASE's covalent radius for elements pymatgen has none for); the dimer starts at twice ASE's covalent
    radius in a fixed cubic box.
    """
    from ase import Atoms
    from ase.build import bulk
    from ase.data import covalent_radii

    settings = settings or ReferenceSettings()
    z = symbol_to_z(element)
    r = _radius(element, settings)
    out: dict[str, tuple[Atoms, bool]] = {}
    for name in settings.candidates:
        if name == "fcc":
            atoms = bulk(element, "fcc", a=2.0 * math.sqrt(2.0) * r)  # nn = a / sqrt(2)
        elif name == "bcc":
            atoms = bulk(element, "bcc", a=4.0 * r / math.sqrt(3.0))  # nn = a sqrt(3) / 2
        elif name == "hcp":
            atoms = bulk(element, "hcp", a=2.0 * r, c=2.0 * r * math.sqrt(8.0 / 3.0))  # nn = a
        elif name == "sc":
            atoms = bulk(element, "sc", a=2.0 * r)  # nn = a
        elif name == "diamond":
            atoms = bulk(element, "diamond", a=8.0 * r / math.sqrt(3.0))  # nn = a sqrt(3) / 4
        elif name == "dimer":
            box = settings.dimer_box
            bond = 2.0 * float(covalent_radii[z])
            centre = 0.5 * box
            atoms = Atoms(
                [element, element],
                positions=[[centre - 0.5 * bond, centre, centre], [centre + 0.5 * bond, centre, centre]],
                cell=[box, box, box],
                pbc=True,
            )
        else:  # pragma: no cover - excluded by the settings' Literal type
            raise AloeError(f"unknown reference candidate {name!r}")
        out[name] = (atoms, name != "dimer")
    return out


class NoReferenceError(AloeError):
    """No usable reference form of an element for a model.

    Attributes
    ----------
    model
        The potential's name.
    element
        The element symbol.
    reason
        Why, one line (what each form ran into).

    """

    def __init__(self, model: str, element: str, reason: str) -> None:
        super().__init__(
            f"{model}: no usable reference form for {element} ({reason}); give its reference energy in a table instead"
        )
        self.model, self.element, self.reason = model, element, reason


def compute_reference(
    potential: Potential,
    element: str,
    settings: ReferenceSettings | None = None,
    *,
    calculator: Calculator | None = None,
) -> tuple[float, dict[str, Any]]:
    """Relax the element's candidate forms with ``potential`` and return the lowest energy per atom.

    Parameters
    ----------
    potential
        The model; relaxations use ``potential.calculator()`` if it offers one, else
        :class:`~aloe.potentials.calculator.PotentialCalculator`.
    element
        Element symbol.
    settings
        Candidates and relaxation settings (default :class:`ReferenceSettings`).
    calculator
        An ASE calculator of ``potential`` to reuse (saves building one per element).

    Returns
    -------
    tuple[float, dict]
        The energy per atom (eV/atom) and details: ``winner`` (candidate name), ``steps``, ``converged``,
        ``volume_per_atom`` (A^3; of the box for the dimer), ``min_distance`` (A), ``seconds`` (all candidates),
        ``isolated_atom_energy`` (eV; ``None`` if not evaluated), ``fmax``, ``max_steps`` and ``candidates`` (per
        candidate: ``energy_per_atom``, ``steps``, ``converged``, ``volume_per_atom``, ``min_distance``,
        ``seconds``, ``error``, a reason for rejected ones, else ``None``, and ``stopped``, the guard that ended
        its relaxation early: ``neighbors``, ``volume``, ``distance`` or ``time``, else ``None``).

    Raises
    ------
    NoReferenceError
        When no candidate gives a finite, uncollapsed, plausibly bound energy (the message names the model,
        element and reasons).

    """
    from aloe.potentials.calculator import calculator_for

    settings = settings or ReferenceSettings()
    symbol_to_z(element)  # an unknown symbol fails here with a clear message
    calc = calculator if calculator is not None else calculator_for(potential)
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with one_blas_thread():
        for name, (atoms, relax_cell) in candidate_structures(element, settings).items():
            results[name] = _relax_candidate(atoms, calc, relax_cell, settings)
        isolated = (
            _isolated_atom_energy(element, calc, settings) if settings.max_binding is not None else None
        )
    winner = choose_reference(results, isolated, settings)
    if winner is None:
        raise NoReferenceError(potential.name, element, _reasons(results, element))
    best = results[winner]
    info = {
        "winner": winner,
        "steps": best["steps"],
        "converged": best["converged"],
        "volume_per_atom": best["volume_per_atom"],
        "min_distance": best["min_distance"],
        "seconds": round(time.perf_counter() - start, 3),
        "isolated_atom_energy": isolated,
        "fmax": settings.fmax,
        "max_steps": settings.max_steps,
        "candidates": results,
    }
    return float(best["energy_per_atom"]), info


def choose_reference(
    results: dict[str, dict[str, Any]], isolated: float | None, settings: ReferenceSettings
) -> str | None:
    """The winning form among relaxed candidates (lowest energy per atom), after the plausibility check.

    Parameters
    ----------
    results
        ``name -> candidate details`` as :func:`compute_reference` records them (``energy_per_atom`` and
        ``error``); a form found implausibly bound gets its ``error`` set and its energy moved to
        ``rejected_energy_per_atom``, in place.
    isolated
        The model's isolated-atom energy (eV), or ``None``.
    settings
        ``max_binding`` (``None``: no plausibility check).

    Returns
    -------
    str or None
        The winner's name, or ``None`` when no form is usable.

    """
    if settings.max_binding is not None:
        # Models can have deep unphysical wells far from their training data (CHGNet 0.3.0 puts Gd2 at
        # -605 eV/atom, 590 eV below Gd metal); real crystals and molecules are bound by < 9 eV/atom. A form is
        # rejected only if it lies that far below BOTH the isolated atom and the median of the other forms: the
        # isolated atom alone is no anchor (chgnet-r2scan puts an isolated P atom at +329 eV).
        limit = float(settings.max_binding)
        finite = {n: r["energy_per_atom"] for n, r in results.items() if r["error"] is None}
        for name, r in results.items():
            if r["error"] is not None:
                continue
            others = [e for n, e in finite.items() if n != name]
            below_atom = isolated is None or r["energy_per_atom"] < isolated - limit
            below_others = bool(others) and r["energy_per_atom"] < float(np.median(others)) - limit
            if below_atom and below_others:
                r["error"] = (
                    f"implausibly bound ({r['energy_per_atom']:.3f} eV/atom, more than {settings.max_binding} "
                    f"eV/atom below the other forms (median {np.median(others):.3f})"
                    + (f" and the isolated atom at {isolated:.3f})" if isolated is not None else ")")
                )
                r["rejected_energy_per_atom"], r["energy_per_atom"] = r["energy_per_atom"], None
    usable = {n: r for n, r in results.items() if r["error"] is None}
    if not usable:
        return None
    return min(usable, key=lambda n: usable[n]["energy_per_atom"])


def _reasons(results: Mapping[str, Mapping[str, Any]], element: str) -> str:
    """``fcc, bcc: <error>; dimer: <error>``: each distinct reason once, with the forms that ran into it."""
    by_reason: dict[str, list[str]] = {}
    # 'prediction failed for Am2' and '... for Am' are one reason (the formula names the form's atom count).
    formula = re.compile(rf"\b{element}\d+\b")
    for name, r in results.items():
        by_reason.setdefault(formula.sub(element, str(r["error"])), []).append(name)
    if len(by_reason) == 1 and len(results) > 1:
        return f"every form: {next(iter(by_reason))}"
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())


class _RelaxationStopped(RuntimeError):
    """A guard ended a reference relaxation before the next model call.

    Attributes
    ----------
    guard
        Which bound: ``neighbors``, ``volume``, ``distance`` or ``time``.

    """

    def __init__(self, guard: str, message: str) -> None:
        super().__init__(message)
        self.guard = guard


def _relax_candidate(
    atoms: Atoms, calc: Calculator, relax_cell: bool, settings: ReferenceSettings
) -> dict[str, Any]:
    """Relax one candidate under the guards; never raises (a failure is reported in ``error``)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from aloe.potentials.calculator import GuardedCalculator

    out: dict[str, Any] = {
        "energy_per_atom": None,
        "steps": 0,
        "converged": False,
        "volume_per_atom": None,
        "min_distance": None,
        "seconds": 0.0,
        "error": None,
        "stopped": None,
    }
    start = time.perf_counter()
    volume0 = abs(atoms.cell.volume) / len(atoms)
    sphere = 4.0 / 3.0 * math.pi * settings.neighbor_cutoff**3

    def check(current: Atoms) -> None:
        # Cheapest first; every bound is checked before the model sees the structure.
        elapsed = time.perf_counter() - start
        if settings.max_seconds is not None and elapsed > settings.max_seconds:
            raise _RelaxationStopped(
                "time", f"time limit: relaxing for {elapsed:.0f} s > {settings.max_seconds} s"
            )
        volume = abs(current.cell.volume) / len(current)
        if not settings.min_volume_ratio * volume0 <= volume <= settings.max_volume_ratio * volume0:
            raise _RelaxationStopped(
                "volume", f"collapsed or exploded: volume per atom {volume0:.3g} -> {volume:.3g} A^3"
            )
        neighbors = sphere / volume if volume > 0 else math.inf
        if settings.max_neighbors is not None and neighbors > settings.max_neighbors:
            raise _RelaxationStopped(
                "neighbors",
                f"too dense: about {neighbors:.0f} atoms within {settings.neighbor_cutoff:g} A per atom "
                f"(> {settings.max_neighbors:g}; volume per atom {volume:.3g} A^3)",
            )
        shortest = _shortest_distance(current)
        if shortest < settings.min_distance:
            raise _RelaxationStopped("distance", f"collapsed: atoms {shortest:.3g} A apart")

    atoms.calc = GuardedCalculator(calc, check)
    opt = None
    try:
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        opt = FIRE(target, logfile=None)
        converged = bool(opt.run(fmax=settings.fmax, steps=settings.max_steps))
        energy = float(atoms.get_potential_energy()) / len(atoms)
        out["steps"] = int(opt.nsteps)
        out["converged"] = converged
    except _RelaxationStopped as exc:
        out["steps"] = int(opt.nsteps) if opt is not None else 0
        out["stopped"] = exc.guard
        out["error"] = f"stopped at step {out['steps']}: {exc}"
        return out
    except Exception as exc:  # a model that fails on one form must not stop the others
        out["error"] = one_line(exc)
        return out
    finally:
        atoms.calc = None  # detach, so the shared calculator holds no reference to this candidate
        out["seconds"] = round(time.perf_counter() - start, 3)
    try:
        out["volume_per_atom"] = _finite_or_none(abs(atoms.cell.volume) / len(atoms))
        out["min_distance"] = _finite_or_none(_shortest_distance(atoms))
    except Exception as exc:  # a degenerate relaxed cell (flattened, NaN) cannot serve as a reference
        out["error"] = f"degenerate relaxed cell ({type(exc).__name__})"
        return out
    if not math.isfinite(energy):
        out["error"] = "non-finite energy"
    elif out["min_distance"] is None or out["min_distance"] < settings.min_distance:
        out["error"] = f"collapsed (shortest distance {out['min_distance']} A < {settings.min_distance} A)"
    else:
        out["energy_per_atom"] = energy
    return out


def _isolated_atom_energy(element: str, calc: Calculator, settings: ReferenceSettings) -> float | None:
    """The model's energy of one atom alone in the dimer box, or ``None`` if the model cannot give one."""
    from ase import Atoms

    box = settings.dimer_box
    atoms = Atoms(element, positions=[[0.5 * box] * 3], cell=[box, box, box], pbc=True)
    atoms.calc = calc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # models warn about atoms without neighbours; here that is the point
            energy = float(atoms.get_potential_energy())
    except Exception:  # no anchor then: the plausibility check is skipped, not the reference
        return None
    finally:
        atoms.calc = None
    return energy if math.isfinite(energy) else None


def _shortest_distance(atoms: Atoms) -> float:
    """Shortest interatomic distance including periodic images (A)."""
    from ase.geometry import minkowski_reduce

    from aloe.prototypes.library import shortest_periodic_distances

    # Reduce the cell first: a strongly sheared relaxed cell would otherwise need very many images.
    reduced, _ = minkowski_reduce(atoms.cell[:])
    frac = np.linalg.solve(reduced.T, atoms.positions.T).T
    cutoff = float(np.linalg.norm(reduced, axis=1).max())
    return float(shortest_periodic_distances(reduced, frac, cutoff).min())


def _radius(element: str, settings: ReferenceSettings) -> float:
    from aloe.elements import atomic_radius

    try:
        return atomic_radius(element, settings.radius_overrides, settings.radius_multipliers)
    except AloeError:
        # pymatgen has no atomic radius for a few elements (At, Rn, Fr): ASE's covalent radius is a fair start.
        from ase.data import covalent_radii

        return float(covalent_radii[symbol_to_z(element)])


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ---- user tables ---------------------------------------------------------------------------------------------


def load_table(table: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """Read a reference table; returns ``(mapping, source description)``.

    A table is either shared, ``{symbol: eV/atom}``, or per model, ``{model: {symbol: eV/atom}}`` where ``model``
    is a potential's identity or name. Files are YAML (``.yaml``/``.yml``) or JSON (anything else).

    Raises
    ------
    InputFileError
        For a file that cannot be read or parsed, or holds no mapping.

    """
    if isinstance(table, Mapping):
        return dict(table), "table"
    path = Path(table)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputFileError(path, f"cannot read reference table ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise InputFileError(path, f"invalid reference table ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise InputFileError(path, "a reference table must map element symbols (or model names) to values")
    return data, str(path)


def table_for(data: Mapping[str, Any], potential: Potential, source: str = "table") -> dict[str, float]:
    """The entries of a (shared or per-model) table that apply to ``potential``, validated.

    Raises
    ------
    AloeError
        For a table mixing numbers and per-model mappings, an unknown element symbol or a non-finite value.

    """
    if not data:
        return {}
    nested = [isinstance(v, Mapping) for v in data.values()]
    if any(nested) and not all(nested):
        raise AloeError(
            f"{source}: a reference table maps either symbols to numbers or model names to such mappings, not both"
        )
    if all(nested):
        identity = potential.identity()
        section = data.get(identity, data.get(potential.name))
        if section is None:
            return {}
        source = f"{source}, model {identity if identity in data else potential.name}"
    else:
        section = data
    out: dict[str, float] = {}
    for symbol, value in section.items():
        try:
            symbol_to_z(str(symbol))
        except AloeError:
            raise AloeError(f"{source}: unknown element symbol {symbol!r}") from None
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise AloeError(f"{source}: reference energy of {symbol} must be a finite number (got {value!r})")
        out[str(symbol)] = number
    return out


# ---- the cache ------------------------------------------------------------------------------------------------


class ReferenceStore:
    """Elemental references of potentials: user table, then a JSON cache per model identity, then computed.

    Parameters
    ----------
    directory
        Cache folder (default ``cache_dir()/references``; ``$ALOE_CACHE_DIR`` moves it).
    settings
        How missing references are computed; cached values computed with other settings are not reused.

    """

    def __init__(
        self, directory: str | Path | None = None, settings: ReferenceSettings | None = None
    ) -> None:
        if directory is None:
            from aloe.prototypes.builtin import cache_dir

            directory = cache_dir() / "references"
        self.directory = Path(directory)
        self.settings = settings or ReferenceSettings()
        self._fingerprint = self.settings.fingerprint()

    # -- public ------------------------------------------------------------------------------------------------
    def path_for(self, potential: Potential) -> Path:
        """The cache file of ``potential`` (its name for humans, plus a hash of its identity for uniqueness)."""
        identity = potential.identity()
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        stem = _UNSAFE.sub("_", potential.name).strip("_.")[:60] or "potential"
        return self.directory / f"{stem}-{digest}.json"

    def get(
        self,
        potential: Potential,
        elements: Iterable[str],
        *,
        table: Mapping[str, Any] | str | Path | None = None,
        compute: bool = True,
        progress: bool = False,
    ) -> dict[str, float]:
        """Reference energies (eV/atom) of ``elements`` for ``potential``, as a plain dict.

        See :meth:`references` for the parameters; this drops the provenance.
        """
        return self.references(potential, elements, table=table, compute=compute, progress=progress).as_dict()

    def references(
        self,
        potential: Potential,
        elements: Iterable[str],
        *,
        table: Mapping[str, Any] | str | Path | None = None,
        compute: bool = True,
        progress: bool | None = False,
        strict: bool = True,
    ) -> ElementalReferences:
        """Reference energies of ``elements`` for ``potential``, with their provenance.

        Parameters
        ----------
        potential
            The model.
        elements
            Element symbols (duplicates ignored).
        table
            User values that win over the cache: a mapping or a YAML/JSON file, shared (``{symbol: eV/atom}``)
            or per model (``{identity or name: {symbol: eV/atom}}``).
        compute
            Compute (and cache) references that are neither in the table nor in the cache.
        progress
            Show one line per element computed, ``references chgnet-r2scan: F 12/89 (3.2 s, winner dimer)``, on
            aloe's console (``None``: when :func:`aloe.progress.progress_enabled` says so); the lines always go
            to the logger ``aloe.potentials.references`` (the run log).
        strict
            Raise for an element without a reference. ``False``: record it in ``failed`` (with the reason) and go
            on with the others (a screen then fails only the structures that contain it).

        Raises
        ------
        AloeError
            With ``strict``: with ``compute=False``, when some elements have no reference (the message names model
            and elements); when a reference cannot be computed (:class:`NoReferenceError`). Always: for an invalid
            table.

        """
        wanted = _unique_symbols(elements)
        identity = potential.identity()
        refs = ElementalReferences(model=identity)
        if table is not None:
            data, source = load_table(table)
            for symbol, value in table_for(data, potential, source).items():
                if symbol in wanted:
                    refs.energies[symbol] = value
                    refs.provenance[symbol] = f"table ({source})"
        missing = [s for s in wanted if s not in refs.energies]
        if missing:
            cached = self._read(potential)
            for symbol in missing:
                entry = cached.get(symbol)
                if entry is not None and entry.get("settings") == self._fingerprint:
                    refs.energies[symbol] = float(entry["energy_per_atom"])
                    refs.info[symbol] = dict(entry.get("info", {}))
                    refs.provenance[symbol] = f"cache ({_describe(refs.info[symbol])})"
            missing = [s for s in missing if s not in refs.energies]
        if missing and not compute:
            if strict:
                raise AloeError(
                    f"{potential.name} ({identity}): no reference energy for {', '.join(missing)} "
                    f"in the table or the cache ({self.path_for(potential)}); compute them or give a table"
                )
            for symbol in missing:
                refs.failed[symbol] = "not in the table or the cache, and computing references is off"
            missing = []
        if missing:
            self._compute(potential, missing, refs, progress, strict)
        # Requested order, so that callers can zip with their element list.
        return ElementalReferences(
            model=identity,
            energies={s: refs.energies[s] for s in wanted if s in refs.energies},
            provenance={s: refs.provenance[s] for s in wanted if s in refs.provenance},
            info={s: refs.info[s] for s in wanted if s in refs.info},
            failed={s: refs.failed[s] for s in wanted if s in refs.failed},
        )

    def get_committee(
        self,
        potentials: Sequence[Potential],
        elements: Iterable[str],
        *,
        table: Mapping[str, Any] | str | Path | None = None,
        compute: bool = True,
        progress: bool = False,
    ) -> list[dict[str, float]]:
        """References of every member of a committee (one dict per potential, in order).

        ``table`` may be per model (``{identity or name: {symbol: eV/atom}}``) so each member takes its own values;
        a shared table applies to all members. Each member's missing references are computed once and cached.
        """
        return [
            r.as_dict()
            for r in self.committee_references(
                potentials, elements, table=table, compute=compute, progress=progress
            )
        ]

    def committee_references(
        self,
        potentials: Sequence[Potential],
        elements: Iterable[str],
        *,
        table: Mapping[str, Any] | str | Path | None = None,
        compute: bool = True,
        progress: bool | None = False,
        strict: bool = True,
    ) -> list[ElementalReferences]:
        """Like :meth:`get_committee`, with provenance; with ``compute=False`` every gap is named in one error.

        With ``strict=False`` nothing is raised for missing references: each member's ``failed`` says what is
        missing and why (see :meth:`references`).
        """
        wanted = _unique_symbols(elements)
        if table is not None:
            load_table(table)  # a bad table fails before any member is computed
        if not compute and strict:
            # Collect every member's gaps so the user sees the whole picture at once.
            problems = []
            out = []
            for potential in potentials:
                try:
                    out.append(self.references(potential, wanted, table=table, compute=False))
                except AloeError as exc:
                    problems.append(str(exc))
            if problems:
                raise AloeError("; ".join(problems))
            return out
        return [
            self.references(potential, wanted, table=table, compute=compute, progress=progress, strict=strict)
            for potential in potentials
        ]

    def cached(self, potential: Potential) -> ElementalReferences:
        """Everything the cache holds for ``potential`` under the current settings."""
        refs = ElementalReferences(model=potential.identity())
        for symbol, entry in self._read(potential).items():
            if entry.get("settings") == self._fingerprint:
                refs.energies[symbol] = float(entry["energy_per_atom"])
                refs.info[symbol] = dict(entry.get("info", {}))
                refs.provenance[symbol] = f"cache ({_describe(refs.info[symbol])})"
        return refs

    # -- internals ---------------------------------------------------------------------------------------------
    def _compute(
        self,
        potential: Potential,
        symbols: list[str],
        refs: ElementalReferences,
        progress: bool | None,
        strict: bool = True,
    ) -> None:
        from aloe.potentials.calculator import calculator_for

        calc = calculator_for(potential)
        for i, symbol in enumerate(symbols, 1):
            start = time.perf_counter()
            try:
                energy, info = compute_reference(potential, symbol, self.settings, calculator=calc)
            except NoReferenceError as exc:
                report_progress(
                    progress_line(
                        potential.name, symbol, i, len(symbols), time.perf_counter() - start, exc.reason
                    ),
                    progress,
                )
                if strict:
                    raise
                refs.failed[symbol] = exc.reason
                continue
            refs.energies[symbol] = energy
            refs.info[symbol] = info
            refs.provenance[symbol] = f"computed ({_describe(info)})"
            # Saved element by element, so an interrupted committee run keeps what it already paid for.
            self._write(potential, {symbol: self._entry(energy, info)})
            report_progress(
                progress_line(potential.name, symbol, i, len(symbols), info["seconds"], info), progress
            )

    def _entry(self, energy: float, info: dict[str, Any]) -> dict[str, Any]:
        from aloe import __version__

        return {
            "energy_per_atom": energy,
            "settings": self._fingerprint,
            "computed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "aloe_version": __version__,
            "info": info,
        }

    def _read(self, potential: Potential) -> dict[str, dict[str, Any]]:
        """The cached entries of ``potential`` (``symbol -> entry``); an unreadable file warns and counts as empty."""
        path = self.path_for(potential)
        if not path.exists():
            return {}
        problem = None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            data, problem = None, f"unreadable ({type(exc).__name__})"
        if problem is None:
            if not isinstance(data, dict) or not isinstance(data.get("elements"), dict):
                problem = "not a reference cache"
            elif data.get("format") != CACHE_FORMAT:
                problem = f"cache format {data.get('format')!r}, expected {CACHE_FORMAT}"
            elif data.get("identity") != potential.identity():
                problem = "written for another model identity"
        if problem is not None:
            warnings.warn(
                f"ignoring reference cache {path}: {problem}; it will be recomputed and rewritten",
                RuntimeWarning,
                stacklevel=3,
            )
            return {}
        out = {}
        for symbol, entry in data["elements"].items():
            if _valid_entry(entry):
                out[symbol] = entry
            else:
                warnings.warn(
                    f"ignoring invalid entry {symbol!r} in reference cache {path}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return out

    def _write(self, potential: Potential, entries: dict[str, dict[str, Any]]) -> None:
        """Merge ``entries`` into the cache file (re-read under a lock, so other processes' entries survive)."""
        from aloe.runs import atomic_path

        path = self.path_for(potential)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path.with_name(path.name + ".lock")), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a corrupted file was already reported when it was first read
            current = self._read(potential)
            current.update(entries)
            data = {
                "format": CACHE_FORMAT,
                "identity": potential.identity(),
                "name": potential.name,
                "functional": getattr(potential, "functional", None),
                "elements": {s: current[s] for s in sorted(current, key=symbol_to_z)},
            }
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def progress_line(
    model: str, symbol: str, done: int, total: int, seconds: float, outcome: Mapping[str, Any] | str
) -> str:
    """``references chgnet-r2scan: F 12/89 (3.2 s, winner dimer)``; ``outcome`` is the info or a failure reason."""
    if isinstance(outcome, str):
        what = f"no reference: {outcome}"
    else:
        stopped = [n for n, c in outcome.get("candidates", {}).items() if c.get("stopped")]
        what = f"winner {outcome.get('winner', '?')}" + (f", stopped {', '.join(stopped)}" if stopped else "")
    return f"references {model}: {symbol} {done}/{total} ({seconds:.1f} s, {what})"


def report_progress(line: str, enabled: bool | None) -> None:
    """Show ``line`` on aloe's console when progress is enabled; always record it in the log.

    Inside the loop the line carries the iteration's prefix (``[iter 1/2] references ...``), like the bars.
    """
    from aloe.progress import prefixed, progress_enabled

    line = prefixed(line)
    if progress_enabled(enabled):
        from aloe.logs import echo

        echo(line)  # the console, and the run log through the 'aloe' logger
    else:
        _log.info(line)


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    value = entry.get("energy_per_atom")
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _describe(info: Mapping[str, Any]) -> str:
    """One line for provenance: ``diamond, 12 FIRE steps, converged``."""
    if not info:
        return "no details"
    state = "converged" if info.get("converged") else "not converged"
    return f"{info.get('winner', '?')}, {info.get('steps', '?')} FIRE steps, {state}"


def _unique_symbols(elements: Iterable[str]) -> list[str]:
    if isinstance(elements, str):
        elements = [elements]
    out: list[str] = []
    for symbol in elements:
        symbol = str(symbol)
        symbol_to_z(symbol)
        if symbol not in out:
            out.append(symbol)
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic replace alone still prevents partial files
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
