"""``aloe bench reference``: make a reference set with a labeler (relaxed crystals, displaced supercells, atoms).

What it does, for each crystal (ASE's elemental reference states of ``elements``, optionally B2 / L1_2 binaries and
L2_1 Heusler ternaries over them, or the structures of ``structures``):

1. relax positions and cell with the labeler (ASE FIRE on a ``FrechetCellFilter``, ``fmax`` / ``max_steps``;
   :class:`LabelerCalculator` makes any :class:`~aloe.label.base.Labeler` an ASE calculator), then keep the relaxed
   crystal with its energy, forces and stress (the equilibrium benchmark's reference);
2. build ``supercells_per_crystal`` supercells of the relaxed crystal (18-32 atoms,
   :func:`aloe.bench.forces.make_supercell`), displace every atom by ``displacement_fraction`` of the average
   nearest-neighbour distance (:func:`aloe.bench.forces.displace_atoms`, seeded by ``seed``, the crystal's id and
   the supercell's index) and label them (the forces benchmark's reference);

then the isolated-atom energy of every element with the labeler (for cohesive energies).

Run folder (``runs/bench-reference-<time>`` by default)::

    run.yaml, run.lock, summary.yaml      every stage (aloe.runs); the summary has counts, failures, timings
    chunks/crystal-<id>.json              one checkpoint per crystal (relaxed structure, labels, steps), written
    chunks/supercell-<id>-<k>.json        atomically when it is done; a resumed run reuses them and recomputes
    chunks/atom-<symbol>.json             nothing; a failure is a checkpoint too (``retry_failed`` redoes those)
    work/                                 the labeler's work folders (kept only for failed calculations)
    crystals.extxyz                       relaxed crystals: REF_energy, REF_forces, REF_stress (MACE keys)
    supercells.extxyz                     displaced supercells: REF_energy, REF_forces, REF_stress
    atom_energies.json                    {"energies": {symbol: eV}, "functional", "labeler", "settings", ...}

The three products are rebuilt from the checkpoints at the end of every run, so a killed and resumed run writes the
same bytes as an uninterrupted one. :func:`aloe.bench.structures.read_reference_set` reads the folder back (the
frames' ids are the crystals' ids, ``<id>/sc<k>`` for supercells).

A structure whose relaxation or labelling fails is recorded (its checkpoint holds the one-line reason) and the
others go on; a failure is never fatal. The calculations run on the stage's executor (``workers`` local processes,
or Dask), one crystal, supercell or isolated atom per task: the crystals and the atoms first, then the supercells of
the crystals that relaxed. Each task writes its own checkpoint, so the order tasks finish in changes nothing.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from pydantic import Field, field_validator

from aloe.devices import one_blas_thread
from aloe.errors import AloeError
from aloe.label.settings import EMTSettings, GPAWSettings, VASPSettings
from aloe.runs import slug
from aloe.stagekit import StageResult, StageSettings, Timings

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.executors import Executor
    from aloe.label.base import Calculation, Labeler

#: The stage's verb (its run folders' owner).
VERB = "bench-reference"
#: Sub-folder of the labeler's work folders.
WORK = "work"
#: Binary prototypes over pairs of the chosen elements.
BINARY_PROTOTYPES = ("B2", "L1_2")
#: Ternary prototypes over triples of the chosen elements.
TERNARY_PROTOTYPES = ("L2_1",)


class BenchReferenceSettings(StageSettings):
    """Make a benchmark reference set: relaxed crystals, displaced supercells and isolated atoms, with a labeler."""

    labeler: Literal["gpaw", "emt", "vasp"] = Field(
        "gpaw", description="Backend: gpaw (r2SCAN DFT, runs here), vasp (clusters), emt (stand-in, not DFT)."
    )
    gpaw: GPAWSettings = Field(default_factory=GPAWSettings, description="GPAW backend (as in 'aloe label').")
    vasp: VASPSettings = Field(default_factory=VASPSettings, description="VASP backend (as in 'aloe label').")
    emt: EMTSettings = Field(default_factory=EMTSettings, description="EMT stand-in (as in 'aloe label').")
    elements: list[str] = Field(
        default_factory=lambda: ["Li", "Na", "Mg"],
        description="Elements whose crystals (ASE's reference states and lattice constants) are the reference set "
        "(ignored when 'structures' is set).",
    )
    binaries: list[Literal["B2", "L1_2"]] = Field(
        default_factory=list,
        description="Binary prototypes over every pair of 'elements' as well: B2 (CsCl type, AB) and L1_2 "
        "(Cu3Au type, A3B and AB3), lattice constants from the elements' nearest-neighbour distances.",
    )
    ternaries: list[Literal["L2_1"]] = Field(
        default_factory=list,
        description="Ternary prototypes over every triple of 'elements' as well (in the order given, X, Y, Z): "
        "L2_1 (full Heusler X2YZ, Cu2MnAl type, Fm-3m; its 4-atom primitive cell), lattice constant from the "
        "elements' mean nearest-neighbour distance.",
    )
    max_ternaries: int | None = Field(
        None, ge=1, description="Only the first this many triples of 'elements' (None: every triple)."
    )
    structures: str | None = Field(
        None,
        description="Relax and label these structures instead of elemental crystals (any file or built-in set "
        "'aloe bench' reads, e.g. builtin:pymatgen).",
    )
    relax: bool = Field(True, description="Relax positions and cell with the labeler before labelling.")
    fmax: float = Field(
        0.05, gt=0, description="Relaxation ends when every force (and stress x volume) is below this (eV/A)."
    )
    max_steps: int = Field(100, ge=0, description="FIRE steps at most per relaxation (0: label as given).")
    supercells_per_crystal: int = Field(
        1, ge=0, description="Displaced supercells per relaxed crystal (forces benchmark)."
    )
    supercell_min_atoms: int = Field(18, ge=1, description="Fewest atoms of a supercell.")
    supercell_max_atoms: int = Field(32, ge=1, description="Most atoms of a supercell.")
    displacement_fraction: float = Field(
        0.05,
        ge=0,
        description="Every supercell atom moves this share of the average nearest-neighbour distance in a random "
        "direction (0.05: half Lindemann's criterion, the paper's).",
    )
    isolated_atoms: bool = Field(
        True, description="Compute every element's isolated-atom energy with the labeler (cohesive energies)."
    )
    seed: int = Field(0, description="Random seed of the supercell displacements.")
    retry_failed: bool = Field(False, description="On a resumed run, compute failed structures again.")

    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUNTIME_KEYS | frozenset(
        {
            "retry_failed",
            *(f"gpaw.{k}" for k in GPAWSettings.RUNTIME_KEYS),
            *(f"vasp.{k}" for k in VASPSettings.RUNTIME_KEYS),
        }
    )

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, value: list[str]) -> list[str]:
        from ase.data import atomic_numbers

        unknown = [s for s in value if s not in atomic_numbers]
        if unknown:
            raise ValueError(f"unknown element symbol(s): {', '.join(unknown)}")
        return list(dict.fromkeys(value))


# ---- a labeler as an ASE calculator ------------------------------------------------------------------------------
def _same_structure(a: Atoms, b: Atoms, tol: float = 1e-6) -> bool:
    return (
        len(a) == len(b)
        and bool((a.numbers == b.numbers).all())
        and np.allclose(a.cell[:], b.cell[:], atol=tol, rtol=0)
        and np.allclose(a.positions, b.positions, atol=tol, rtol=0)
    )


def label_structure(labeler: Labeler, atoms: Atoms, workdir: Path) -> Calculation:
    """One labelled point of ``atoms``: the labeler's calculation of exactly this structure.

    The work folder is emptied first and removed after a success (kept after a failure, for a look). Of the
    calculations a labeler returns (a relaxing labeler returns several), the last one of the given structure is
    taken.

    Raises
    ------
    LabelerError
        ``unsupported`` (an element the labeler cannot treat), the labeler's own failures, ``unphysical`` (NaN or
        absurd numbers), or ``input`` when no returned calculation is of the given structure.
    """
    from aloe.label.base import LabelerError, check_physical

    problem = labeler.supports(atoms)
    if problem:
        raise LabelerError("unsupported", problem)
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    plain = atoms.copy()
    plain.calc = None
    calcs = labeler.calculate(plain, workdir)
    matching = [c for c in calcs if _same_structure(c.atoms, plain)]
    if not matching:
        raise LabelerError("input", "the labeler returned no calculation of the given structure")
    calc = matching[-1]
    check_physical(calc, max_force=200.0, max_energy_per_atom=1000.0)
    shutil.rmtree(workdir, ignore_errors=True)
    return calc


class LabelerCalculator(Calculator):
    """An ASE calculator that labels every new structure with a :class:`~aloe.label.base.Labeler`.

    Parameters
    ----------
    labeler
        Any labeler (EMT, GPAW, VASP).
    workdir
        Folder of the calls' work folders (``call-0000`` ...; see :func:`label_structure`).

    Attributes
    ----------
    n_calls
        Labeler calls so far.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]
    nolabel = True

    def __init__(self, labeler: Labeler, workdir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.labeler = labeler
        self.workdir = Path(workdir)
        self.n_calls = 0

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] | None = None,
    ) -> None:
        """Label ``atoms`` (energy, forces, stress) with the labeler."""
        super().calculate(atoms, properties or ["energy"], system_changes or all_changes)
        calc = label_structure(self.labeler, self.atoms, self.workdir / f"call-{self.n_calls:04d}")
        self.n_calls += 1
        energy = float(calc.energy)
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(calc.forces, dtype=float),
            "stress": np.asarray(calc.stress, dtype=float).reshape(6),
        }


def relax_with_labeler(
    atoms: Atoms, labeler: Labeler, workdir: Path, fmax: float = 0.05, max_steps: int = 100
) -> tuple[Atoms, dict[str, Any]]:
    """Relax positions and cell (FIRE on a FrechetCellFilter) with a labeler; the result carries its labels.

    Returns
    -------
    atoms, info
        The relaxed structure (no calculator) and ``energy`` (eV), ``forces`` (shape ``(n, 3)``, eV/A),
        ``stress`` (shape ``(6,)``, eV/A^3, ASE sign), ``steps``, ``converged``, ``labeler_calls``.
    """
    work = atoms.copy()
    work.calc = LabelerCalculator(labeler, workdir)
    steps, converged = 0, max_steps == 0
    if max_steps > 0:
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE

        opt = FIRE(FrechetCellFilter(work), logfile=None)
        with one_blas_thread():
            converged = bool(opt.run(fmax=fmax, steps=max_steps))
        steps = int(opt.nsteps)
    info = {
        "energy": float(work.get_potential_energy()),
        "forces": np.asarray(work.get_forces(), dtype=float),
        "stress": np.asarray(work.get_stress(voigt=True), dtype=float),
        "steps": steps,
        "converged": converged,
        "labeler_calls": work.calc.n_calls,
    }
    relaxed = work.copy()
    relaxed.calc = None
    return relaxed, info


# ---- crystals ------------------------------------------------------------------------------------------------------
def _nearest_neighbour(atoms: Atoms) -> float:
    from aloe.bench.forces import average_nearest_neighbour_distance

    return average_nearest_neighbour_distance(atoms)


def _nearest_neighbours(symbols: list[str]) -> dict[str, float]:
    """Nearest-neighbour distance of each element's reference crystal (ASE's); elements without one are left out."""
    from aloe.bench.structures import elemental_crystal

    nn = {}
    for symbol in symbols:
        try:
            nn[symbol] = _nearest_neighbour(elemental_crystal(symbol))
        except AloeError:
            continue  # no reference crystal: no lattice-constant guess either
    return nn


def binary_crystals(symbols: list[str], prototypes: list[str]) -> list[tuple[str, Atoms]]:
    """B2 (AB) and L1_2 (A3B, AB3) crystals over every pair of ``symbols``, in cubic cells.

    The nearest-neighbour distance is the mean of the two elements' (from ASE's reference crystals): B2 lattice
    constant ``2 d / sqrt(3)``, L1_2 ``sqrt(2) d``.
    """
    from ase import Atoms

    out: list[tuple[str, Atoms]] = []
    nn = _nearest_neighbours(symbols)
    for a, b in itertools.combinations([s for s in symbols if s in nn], 2):
        d = 0.5 * (nn[a] + nn[b])
        if "B2" in prototypes:
            lat = 2.0 * d / np.sqrt(3.0)
            out.append(
                (
                    f"{a}{b}-B2",
                    Atoms([a, b], scaled_positions=[[0, 0, 0], [0.5] * 3], cell=[lat] * 3, pbc=True),
                )
            )
        if "L1_2" in prototypes:
            lat = np.sqrt(2.0) * d
            faces = [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
            for major, minor in ((a, b), (b, a)):
                atoms = Atoms(
                    [minor] + [major] * 3, scaled_positions=[[0, 0, 0], *faces], cell=[lat] * 3, pbc=True
                )
                out.append((f"{major}3{minor}-L1_2", atoms))
    return out


def ternary_crystals(
    symbols: list[str], prototypes: list[str], max_triples: int | None = None
) -> list[tuple[str, Atoms]]:
    """L2_1 full-Heusler crystals X2YZ over every triple of ``symbols``, in their 4-atom primitive cells.

    The triples are ``itertools.combinations(symbols, 3)`` (the order given; elements without an ASE reference
    crystal are skipped), the first ``max_triples`` of them when set; in each, X is the first element, Y the second
    and Z the third (id ``X2YZ-L2_1``). L2_1 (Cu2MnAl type, Fm-3m, Strukturbericht L2_1): Z on 4a (0, 0, 0), Y on 4b
    (1/2, 1/2, 1/2), X on 8c (1/4, 1/4, 1/4) and (3/4, 3/4, 3/4) of the cubic cell, here in the primitive fcc cell
    ``a/2 [[0, 1, 1], [1, 0, 1], [1, 1, 0]]`` (the same fractional coordinates). Every atom's nearest neighbours
    are ``a sqrt(3) / 4`` away (an ordered bcc), so with ``d`` the mean of the three elements' nearest-neighbour
    distances the lattice constant is ``a = 4 d / sqrt(3)``, as B2's is ``2 d / sqrt(3)``.
    """
    from ase import Atoms

    if "L2_1" not in prototypes:
        return []
    nn = _nearest_neighbours(symbols)
    triples = list(itertools.combinations([s for s in symbols if s in nn], 3))
    if max_triples is not None:
        triples = triples[:max_triples]
    out: list[tuple[str, Atoms]] = []
    for x, y, z in triples:
        d = (nn[x] + nn[y] + nn[z]) / 3.0
        lat = 4.0 * d / np.sqrt(3.0)
        cell = 0.5 * lat * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
        atoms = Atoms(
            [x, x, y, z],
            scaled_positions=[[0.25] * 3, [0.75] * 3, [0.5] * 3, [0.0] * 3],
            cell=cell,
            pbc=True,
        )
        out.append((f"{x}2{y}{z}-L2_1", atoms))
    return out


def starting_crystals(settings: BenchReferenceSettings) -> list[tuple[str, Atoms | None, str | None]]:
    """The crystals to relax: ``(id, atoms, None)``, or ``(id, None, why)`` for one that cannot be built."""
    if settings.structures:
        from aloe.bench.structures import read_reference_set

        reference = read_reference_set(settings.structures)
        if not reference.structures:
            raise AloeError(f"{settings.structures}: holds no structures")
        return [(s.id, s.atoms, None) for s in reference.structures]
    if not settings.elements:
        raise AloeError("bench reference: give 'elements' or 'structures'")
    from aloe.bench.structures import elemental_crystal

    out: list[tuple[str, Atoms | None, str | None]] = []
    for symbol in settings.elements:
        try:
            atoms = elemental_crystal(symbol)
        except AloeError as exc:
            out.append((symbol, None, str(exc)))
            continue
        out.append((f"{symbol}-{atoms.info['symmetry']}", atoms, None))
    if settings.binaries:
        out.extend(
            (ident, atoms, None) for ident, atoms in binary_crystals(settings.elements, settings.binaries)
        )
    if settings.ternaries:
        made = ternary_crystals(settings.elements, settings.ternaries, settings.max_ternaries)
        out.extend((ident, atoms, None) for ident, atoms in made)
    return out


# ---- checkpoints ---------------------------------------------------------------------------------------------------
def _atoms_dict(atoms: Atoms) -> dict[str, Any]:
    return {
        "numbers": [int(z) for z in atoms.numbers],
        "cell": np.asarray(atoms.cell[:], dtype=float).tolist(),
        "positions": np.asarray(atoms.positions, dtype=float).tolist(),
        "pbc": [bool(p) for p in atoms.pbc],
    }


def _atoms_from(data: dict[str, Any]) -> Atoms:
    from ase import Atoms

    return Atoms(numbers=data["numbers"], cell=data["cell"], positions=data["positions"], pbc=data["pbc"])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a checkpoint or ``atom_energies.json`` atomically (in whichever process made it)."""
    from aloe.runs import atomic_path

    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")


def _read_json(run: Any, name: str) -> dict[str, Any] | None:
    path = run.chunk_path(name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # unreadable (never half-written: chunks are renamed into place): compute again


def _failure(ident: str, exc: BaseException) -> dict[str, Any]:
    from aloe.errors import one_line

    return {"id": ident, "status": "failed", "kind": getattr(exc, "kind", "crashed"), "error": one_line(exc)}


def _crystal(
    ident: str, atoms: Atoms, labeler: Labeler, settings: BenchReferenceSettings, workdir: Path
) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        if settings.relax:
            relaxed, info = relax_with_labeler(atoms, labeler, workdir, settings.fmax, settings.max_steps)
        else:
            calc = label_structure(labeler, atoms, workdir / "static")
            relaxed = atoms.copy()
            relaxed.calc = None
            info = {
                "energy": float(calc.energy),
                "forces": np.asarray(calc.forces, dtype=float),
                "stress": np.asarray(calc.stress, dtype=float),
                "steps": 0,
                "converged": False,
                "labeler_calls": 1,
            }
    except Exception as exc:  # one crystal never stops the stage
        return {**_failure(ident, exc), "seconds": round(time.perf_counter() - t0, 3)}
    forces = info["forces"]
    return {
        "id": ident,
        "status": "ok",
        "atoms": _atoms_dict(relaxed),
        "energy": info["energy"],
        "forces": forces.tolist(),
        "stress": info["stress"].tolist(),
        "steps": info["steps"],
        "converged": info["converged"],
        "max_force": float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0,
        "labeler_calls": info["labeler_calls"],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _supercell(
    ident: str, crystal: Atoms, k: int, labeler: Labeler, settings: BenchReferenceSettings, workdir: Path
) -> dict[str, Any]:
    from aloe.bench.forces import displace_atoms, make_supercell

    t0 = time.perf_counter()
    sc_id = f"{ident}/sc{k}"
    try:
        # Seeded by the crystal's id (not its position in the list): adding crystals changes no supercell.
        rng = np.random.default_rng([settings.seed, zlib.crc32(ident.encode()), k])
        supercell = make_supercell(crystal, settings.supercell_min_atoms, settings.supercell_max_atoms)
        displaced = displace_atoms(supercell, settings.displacement_fraction, rng)
        calc = label_structure(labeler, displaced, workdir)
    except Exception as exc:  # one supercell never stops the stage
        return {**_failure(sc_id, exc), "crystal": ident, "seconds": round(time.perf_counter() - t0, 3)}
    return {
        "id": sc_id,
        "crystal": ident,
        "status": "ok",
        "atoms": _atoms_dict(displaced),
        "energy": float(calc.energy),
        "forces": np.asarray(calc.forces, dtype=float).tolist(),
        "stress": np.asarray(calc.stress, dtype=float).tolist(),
        "displacement": float(displaced.info.get("displacement", 0.0)),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _atom(symbol: str, labeler: Labeler, workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        energy = float(labeler.isolated_atom_energy(symbol, workdir))
        if not np.isfinite(energy):
            raise ValueError("non-finite isolated-atom energy")
    except Exception as exc:  # NotImplementedError included: the labeler has none
        return {**_failure(symbol, exc), "symbol": symbol, "seconds": round(time.perf_counter() - t0, 3)}
    shutil.rmtree(workdir, ignore_errors=True)
    return {"symbol": symbol, "status": "ok", "energy": energy, "seconds": round(time.perf_counter() - t0, 3)}


# ---- products ------------------------------------------------------------------------------------------------------
def _record(item: dict[str, Any], role: str, functional: str, code: str) -> dict[str, Any]:
    from aloe.data.formats import structure_dict
    from aloe.data.records import stress_to_kbar

    atoms = _atoms_from(item["atoms"])
    return {
        "structure": structure_dict(atoms.cell[:], atoms.get_chemical_symbols(), atoms.positions, atoms.pbc),
        "energy": float(item["energy"]),
        "forces": item["forces"],
        "stress": stress_to_kbar(np.asarray(item["stress"], dtype=float)).tolist(),
        "functional": functional,
        "provenance": {"aloe_id": item["id"], "bench_role": role, "labeler": code},
    }


def _write_products(
    run_dir: Path,
    crystals: list[dict[str, Any]],
    supercells: list[dict[str, Any]],
    atoms: list[dict[str, Any]] | None,
    labeler: Labeler,
) -> dict[str, str]:
    from aloe.bench.structures import ATOM_ENERGIES_FILE, CRYSTALS_FILE, SUPERCELLS_FILE
    from aloe.data.formats import write_records

    functional, code = labeler.functional, labeler.code
    ok_crystals = [c for c in crystals if c["status"] == "ok"]
    ok_supercells = [s for s in supercells if s["status"] == "ok"]
    write_records((_record(c, "crystal", functional, code) for c in ok_crystals), run_dir / CRYSTALS_FILE)
    write_records(
        (_record(s, "supercell", functional, code) for s in ok_supercells), run_dir / SUPERCELLS_FILE
    )
    table = {
        "energies": {a["symbol"]: a["energy"] for a in atoms or [] if a["status"] == "ok"},
        "failed": {a["symbol"]: a["error"] for a in atoms or [] if a["status"] != "ok"},
        "computed": atoms is not None,
        "functional": functional,
        "labeler": code,
        "stand_in": bool(labeler.stand_in),
        "code_version": labeler.code_version(),
        "settings": labeler.label_settings(),
    }
    _write_json(run_dir / ATOM_ENERGIES_FILE, table)
    return {"crystals": CRYSTALS_FILE, "supercells": SUPERCELLS_FILE, "atom_energies": ATOM_ENERGIES_FILE}


# ---- tasks ---------------------------------------------------------------------------------------------------------
def _load_labeler(settings: BenchReferenceSettings) -> Labeler:
    from aloe.label.registry import load_labeler
    from aloe.label.settings import LabelSettings

    return load_labeler(
        LabelSettings(labeler=settings.labeler, gpaw=settings.gpaw, vasp=settings.vasp, emt=settings.emt)
    )


def _reference_task(task: dict[str, Any]) -> dict[str, Any]:
    """One crystal relaxation, supercell or isolated atom, run where the executor puts it.

    The task carries the settings as JSON and its checkpoint's path; the checkpoint is written here, atomically, so
    a killed run keeps every finished calculation whichever process did it. Returns the task's ``name`` and
    ``item`` (the checkpoint's content).
    """
    settings = BenchReferenceSettings.model_validate_json(task["settings"])
    labeler = _load_labeler(settings)
    workdir = Path(task["workdir"])
    if task["kind"] == "crystal":
        item = _crystal(task["id"], task["atoms"], labeler, settings, workdir)
    elif task["kind"] == "supercell":
        item = _supercell(task["id"], task["atoms"], task["k"], labeler, settings, workdir)
    else:
        item = _atom(task["id"], labeler, workdir)
    _write_json(Path(task["checkpoint"]), item)
    return {"name": task["name"], "item": item}


# ---- the stage -----------------------------------------------------------------------------------------------------
def make_reference(
    settings: BenchReferenceSettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Run ``aloe bench reference`` (see the module docstring); resumes a killed run in the same folder.

    Parameters
    ----------
    settings
        The stage's settings.
    command
        The command line, for the summary.
    executor
        Runs the calculations, one crystal, supercell or isolated atom per task: first the crystals and the atoms,
        then the supercells of the crystals that relaxed. The caller's is left open; default: one opened from the
        run options (``workers``, ``executor``, ``scheduler``).

    Returns
    -------
    StageResult
        Stage ``bench-reference``; ``products`` holds ``reference`` (the run folder, for
        :func:`aloe.bench.structures.read_reference_set`).
    """
    from aloe.executors import stage_executor

    if settings.supercell_min_atoms > settings.supercell_max_atoms:
        raise AloeError(
            f"supercell_min_atoms {settings.supercell_min_atoms} exceeds supercell_max_atoms "
            f"{settings.supercell_max_atoms}"
        )
    labeler = _load_labeler(settings)
    timings = Timings()
    with timings("read"):
        starts = starting_crystals(settings)
    ids = [ident for ident, _, _ in starts]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AloeError(f"bench reference: repeated structure ids {', '.join(duplicates[:5])}")
    with stage_executor(executor, settings) as ex:
        return _make_reference(settings, command, ex, labeler, starts, timings)


def _make_reference(
    settings: BenchReferenceSettings,
    command: str | None,
    executor: Executor,
    labeler: Labeler,
    starts: list[tuple[str, Atoms | None, str | None]],
    timings: Timings,
) -> StageResult:
    from aloe.progress import make_bar
    from aloe.runs import open_stage_run

    run, settings = open_stage_run(settings, VERB, BenchReferenceSettings.RUNTIME_KEYS, subfolders=(WORK,))
    work = run.path / WORK
    settings_json = settings.model_copy(update={"output": None}).model_dump_json()
    counts = {"computed": 0, "reused": 0}
    items: dict[str, dict[str, Any]] = {}  # checkpoint name -> item

    def cached(name: str) -> dict[str, Any] | None:
        item = _read_json(run, name)
        if item is not None and (item.get("status") == "ok" or not settings.retry_failed):
            counts["reused"] += 1
            return item
        return None

    def task(kind: str, name: str, ident: str, workdir: Path, **extra: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "name": name,
            "id": ident,
            "workdir": str(workdir),
            "checkpoint": str(run.chunk_path(name)),
            "settings": settings_json,
            **extra,
        }

    def run_tasks(tasks: list[dict[str, Any]]) -> None:
        for result in executor.map_unordered(_reference_task, tasks, limit=settings.task_limit()):
            items[result["name"]] = result["item"]
            counts["computed"] += 1
            bar.update(1)
            bar.set_postfix(failed=sum(x["status"] == "failed" for x in items.values()))

    symbols: list[str] = []
    if settings.isolated_atoms:
        symbols = sorted(
            {s for _, a, _ in starts if a is not None for s in a.get_chemical_symbols()},
            key=lambda s: (_z(s), s),
        )
    crystal_names = {ident: f"crystal-{slug(ident)}.json" for ident, _, _ in starts}
    supercell_names = {
        (ident, k): f"supercell-{slug(ident)}-{k}.json"
        for ident, _, _ in starts
        for k in range(settings.supercells_per_crystal)
    }
    atom_names = {symbol: f"atom-{symbol}.json" for symbol in symbols}
    total = len(crystal_names) + len(supercell_names) + len(atom_names)
    bar = make_bar(
        enabled=settings.progress, total=total, desc=f"bench reference ({labeler.code})", unit="structure"
    )
    try:
        # First the crystals and the isolated atoms (independent of each other) ...
        first: list[dict[str, Any]] = []
        for ident, atoms, why in starts:
            name = crystal_names[ident]
            item = cached(name)
            if item is None and atoms is None:
                item = {"id": ident, "status": "failed", "kind": "input", "error": str(why), "seconds": 0.0}
                _write_json(run.chunk_path(name), item)
                counts["computed"] += 1
            if item is None:
                first.append(task("crystal", name, ident, work / slug(ident), atoms=atoms))
            else:
                items[name] = item
                bar.update(1)
        for symbol, name in atom_names.items():
            item = cached(name)
            if item is None:
                first.append(task("atom", name, symbol, work / f"atom-{symbol}"))
            else:
                items[name] = item
                bar.update(1)
        with timings("crystals"):
            run_tasks(first)
        # ... then the supercells of the crystals that relaxed.
        second: list[dict[str, Any]] = []
        for (ident, k), name in supercell_names.items():
            item = cached(name)
            crystal = items[crystal_names[ident]]
            if item is None and crystal["status"] != "ok":
                # not a checkpoint: the supercell is made once its crystal relaxes (retry_failed)
                item = {
                    "id": f"{ident}/sc{k}",
                    "crystal": ident,
                    "status": "skipped",
                    "error": "its crystal failed",
                }
            if item is None:
                second.append(
                    task(
                        "supercell",
                        name,
                        ident,
                        work / f"{slug(ident)}-sc{k}",
                        atoms=_atoms_from(crystal["atoms"]),
                        k=k,
                    )
                )
            else:
                items[name] = item
                bar.update(1)
        with timings("supercells"):
            run_tasks(second)
    finally:
        bar.close()
    # In the order of the inputs, whichever order the tasks finished in: the products are the same bytes.
    crystals = [items[crystal_names[ident]] for ident, _, _ in starts]
    supercells = [items[name] for name in supercell_names.values()]
    atoms_items = [items[name] for name in atom_names.values()] if settings.isolated_atoms else None
    with timings("write"):
        files = _write_products(run.path, crystals, supercells, atoms_items, labeler)
    # Work folders of successful calculations are gone; drop the empty ones left behind.
    for folder in sorted(work.glob("*"), reverse=True):
        if folder.is_dir() and not any(folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)

    ok_crystals = [c for c in crystals if c["status"] == "ok"]
    summary_counts: dict[str, Any] = {
        "crystals": len(crystals),
        "crystals_ok": len(ok_crystals),
        "crystals_failed": len(crystals) - len(ok_crystals),
        "crystals_converged": sum(bool(c.get("converged")) for c in ok_crystals),
        "supercells": len(supercells),
        "supercells_ok": sum(s["status"] == "ok" for s in supercells),
        "supercells_failed": sum(s["status"] == "failed" for s in supercells),
        "supercells_skipped": sum(s["status"] == "skipped" for s in supercells),
        "atoms_ok": sum(a["status"] == "ok" for a in atoms_items or []),
        "atoms_failed": sum(a["status"] != "ok" for a in atoms_items or []),
        **counts,
    }
    failures = [
        {"id": x.get("id", x.get("symbol")), "kind": x.get("kind"), "error": x.get("error")}
        for x in [*crystals, *supercells, *(atoms_items or [])]
        if x["status"] == "failed"
    ]
    timing_values = timings.total()
    summary = run.write_summary(
        summary_counts,
        timing_values,
        extra={
            "labeler": {"code": labeler.code, "functional": labeler.functional, "stand_in": labeler.stand_in},
            "files": files,
            "failures": failures,
            "executor": executor.describe(),
        },
        command=command,
    )
    run.close()
    return StageResult(
        stage=VERB,
        run_dir=run.path,
        counts=summary_counts,
        timings=timing_values,
        summary_path=summary,
        products={"reference": run.path},
    )


def _z(symbol: str) -> int:
    from ase.data import atomic_numbers

    return int(atomic_numbers.get(symbol, 0))


__all__ = [
    "BINARY_PROTOTYPES",
    "TERNARY_PROTOTYPES",
    "VERB",
    "BenchReferenceSettings",
    "LabelerCalculator",
    "binary_crystals",
    "label_structure",
    "make_reference",
    "relax_with_labeler",
    "starting_crystals",
    "ternary_crystals",
]
