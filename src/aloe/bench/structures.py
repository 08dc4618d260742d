"""Benchmark structures: reference sets read from files and folders, built-in sets, random mixtures.

:func:`read_reference_set` takes a path or a built-in name and returns a :class:`~aloe.bench.base.ReferenceSet`.

Files and folders
    ``.json(.gz)`` / ``.jsonl(.gz)``
        MatPES (one JSON list) or MP-ALOE (JSON lines) documents with ``structure`` (pymatgen dict), ``energy``
        (total, eV), ``forces`` (eV/A) and ``stress`` (kbar, VASP sign: converted to eV/A^3 with ASE's sign), read
        and checked by :class:`aloe.data.formats.RecordReader`. A file whose first document lacks one of those
        labels is read as benchmark entries instead: matcalc's benchmark files (a list, or a mapping id ->
        entry, each with a pymatgen ``structure`` and properties such as ``formation_energy_per_atom`` or
        ``bulk_modulus_vrh``) and the like. An entry's labels are used where present (``energy`` total or
        ``energy_per_atom``, ``forces``, ``stress`` in kbar); its other numbers and strings go to
        ``atoms.info``.
    ``.xyz`` / ``.extxyz(.gz)``
        Frames with reference labels from ASE's calculator results (``energy``, ``forces``, ``stress``) or from
        ``info`` / ``arrays`` keys (``REF_energy``, ``energy``, ``dft_energy``; ``REF_forces``, ``forces``,
        ``dft_forces``; ``REF_stress``, ``stress`` in eV/A^3, ASE sign); frames without labels are kept.
    ``.db``
        An ASE database (MLIP Arena's ``wbm_subset.db``): rows with or without energy and forces.
    an ``aloe bench reference`` run folder
        Its relaxed crystals (``crystals.extxyz``) and displaced supercells (``supercells.extxyz``), with the
        isolated-atom energies and functional of ``atom_energies.json``.
    an ``aloe label`` run folder
        Its records (``records/chunk-*.jsonl``), with the isolated-atom energies of ``isolated_atoms.yaml``.

Built-in sets (no download)
    ``builtin:elements`` (``builtin:elements:Li,Na,Mg`` for some of them)
        One elemental crystal per element whose ASE reference state (``ase.data.reference_states``) is fcc, bcc,
        hcp, diamond or sc, at ASE's reference lattice constants, primitive cells (noble gases and the elements
        MP-ALOE leaves out are skipped): about 60 structures, ids ``Cu-fcc``.
    ``builtin:pymatgen``
        The ordered structures of the JSON files pymatgen ships in ``pymatgen/util/structures/`` (20 of 21:
        the disordered Li10GeP2S12 is skipped), ids ``pymatgen-<file stem>``.
    ``builtin:mixtures``
        :func:`random_mixtures` with the default :class:`MixtureSettings` (the bench stage passes its own).

None of the built-in sets carries reference labels.

Ids are unique and stable: the document's or frame's own id (``bench_id``, ``structure_id``, aloe's
``provenance.aloe_id``, ``matpes_id``, ``material_id``, ``mp_id``, ``wbm_id``, ``task_id``, ``aloe_record_id``,
``id``) when it has one, else ``<file stem>-<index>``; a repeated id gets ``-<index>`` appended.

Bad input stops with one :class:`~aloe.errors.InputFileError` line naming the file and the record
(``data.json: record 3: no 'structure' key``).

:func:`split_roles` hands the equilibrium benchmark the crystals and the forces benchmark the supercells of a
reference folder; for other sets every structure with an energy is a crystal and every structure with forces a
supercell.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, model_validator

from aloe.bench.base import BenchStructure, ReferenceSet
from aloe.errors import AloeError, InputFileError, exception_message
from aloe.layout import REFERENCE_ATOM_ENERGIES, REFERENCE_CRYSTALS, REFERENCE_SUPERCELLS
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms

#: Names of the built-in sets.
BUILTIN_SETS = ("builtin:elements", "builtin:pymatgen", "builtin:mixtures")
#: Reference-state symmetries the built-in elemental set keeps.
ELEMENT_SYMMETRIES = ("fcc", "bcc", "hcp", "diamond", "sc")
#: ``atoms.info`` key naming a structure's role (``crystal`` or ``supercell``) in a reference folder.
ROLE_KEY = "bench_role"
#: The verb (run-folder owner) of ``aloe bench reference``.
REFERENCE_VERB = "bench-reference"
#: Files of an ``aloe bench reference`` run folder (their names live in :mod:`aloe.layout`).
CRYSTALS_FILE = REFERENCE_CRYSTALS
SUPERCELLS_FILE = REFERENCE_SUPERCELLS
ATOM_ENERGIES_FILE = REFERENCE_ATOM_ENERGIES

#: Keys holding a structure's id, in order of preference.
ID_KEYS = (
    "bench_id",
    "structure_id",
    "matpes_id",
    "material_id",
    "mp_id",
    "wbm_id",
    "task_id",
    "aloe_record_id",
    "id",
)
#: info / arrays keys of reference labels in extxyz frames, in order of preference.
ENERGY_KEYS = ("REF_energy", "energy", "dft_energy", "DFT_energy", "total_energy")
FORCE_KEYS = ("REF_forces", "forces", "dft_forces", "DFT_forces")
STRESS_KEYS = ("REF_stress", "stress", "dft_stress", "DFT_stress")
_LABEL_KEYS = {"structure", "energy", "energy_per_atom", "forces", "stress"}

#: Default element pool of the random mixtures: metals and main-group solids that CHGNet and MACE cover (no
#: gases, no noble gases, no f elements, no radioactive or liquid elements).
DEFAULT_MIXTURE_ELEMENTS = (
    "Li", "Be", "B", "C", "Na", "Mg", "Al", "Si", "P", "S", "K", "Ca", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni",
    "Cu", "Zn", "Ga", "Ge", "Sr", "Y", "Zr", "Nb", "Mo", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Ba",
    "Hf", "Ta", "W", "Re", "Ir", "Pt", "Au", "Pb", "Bi",
)  # fmt: skip


# ---- random mixtures -------------------------------------------------------------------------------------------
class MixtureSettings(AloeSettings):
    """Random mixtures of several elements for the MD benchmark, relaxed with a ZBL repulsion (the paper's recipe)."""

    n_structures: int = Field(4, ge=1, description="How many mixtures.")
    n_atoms: int = Field(64, ge=2, description="Atoms per mixture (the paper: about 525).")
    n_elements: int = Field(5, ge=1, description="Distinct elements per mixture (the paper: 5-6).")
    elements: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MIXTURE_ELEMENTS),
        description="Element pool the elements of each mixture are drawn from (default: metals and main-group "
        "solids that CHGNet covers).",
    )
    min_distance_factor: float = Field(
        0.5,
        gt=0,
        le=2,
        description="Smallest allowed distance between two atoms, as a multiple of the sum of their covalent "
        "radii (ase.data.covalent_radii), when atoms are placed (0.5: about 0.6 of a metal's nearest-neighbour distance; "
        "random packing jams near 0.8).",
    )
    volume_factor: float = Field(
        1.0,
        gt=0,
        description="Cell volume as a multiple of the sum of the atoms' atomic volumes (pymatgen's molar volume of "
        "each element's solid).",
    )
    seed: int = Field(0, description="Random seed (the same seed gives the same mixtures).")
    relax_steps: int = Field(
        200, ge=0, description="FIRE steps of the ZBL relaxation (fixed cell) that pushes close atoms apart."
    )
    fmax: float = Field(0.1, gt=0, description="Force threshold (eV/A) that ends the ZBL relaxation early.")
    max_tries: int = Field(
        20000,
        ge=1,
        description="Random positions tried per atom before the packing gives up (lower the factor).",
    )

    @model_validator(mode="after")
    def _check_counts(self) -> MixtureSettings:
        pool = list(dict.fromkeys(self.elements))
        if self.n_elements > len(pool):
            raise ValueError(
                f"n_elements {self.n_elements} exceeds the {len(pool)} distinct elements of the pool"
            )
        if self.n_elements > self.n_atoms:
            raise ValueError(f"n_elements {self.n_elements} exceeds n_atoms {self.n_atoms}")
        return self


def atomic_volume(symbol: str) -> float:
    """Volume per atom (A^3) of an element's solid, from pymatgen's molar volume (else a sphere-packing guess).

    Raises
    ------
    AloeError
        An unknown symbol, or an element with neither a molar volume nor an atomic radius.
    """
    from pymatgen.core.periodic_table import Element

    try:
        element = Element(symbol)
    except ValueError:
        raise AloeError(f"unknown element symbol {symbol!r}") from None
    molar = element.molar_volume
    if molar is not None and float(molar) > 0:
        return float(molar) / 6.02214076e23 * 1e24  # cm^3/mol -> A^3/atom
    radius = element.atomic_radius
    if radius is None:
        raise AloeError(f"element {symbol!r} has no molar volume or atomic radius in pymatgen")
    # fcc packing of touching spheres: (2r)^3 / sqrt(2) per atom.
    return float((2.0 * float(radius)) ** 3 / math.sqrt(2.0))


def _pack(
    numbers: np.ndarray, box: float, min_dist: np.ndarray, rng: np.random.Generator, max_tries: int
) -> np.ndarray:
    """Random sequential placement in a cubic periodic box with per-pair minimum distances.

    Parameters
    ----------
    numbers
        Shape ``(n,)``: atomic numbers, in placement order.
    box
        Edge of the cubic cell (A).
    min_dist
        Shape ``(119, 119)``: smallest allowed distance per pair of atomic numbers (A).

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 3)``: Cartesian positions.
    """
    n = len(numbers)
    positions = np.empty((n, 3))
    batch = 64  # candidates drawn at once (vectorised test against all placed atoms)
    for k in range(n):
        tries = 0
        need = min_dist[numbers[k], numbers[:k]]
        while True:
            trial = rng.random((batch, 3)) * box
            if k == 0:
                positions[0] = trial[0]
                break
            delta = trial[:, None, :] - positions[None, :k, :]
            delta -= box * np.round(delta / box)  # minimum image in a cubic cell
            ok = (np.sqrt((delta**2).sum(axis=-1)) >= need).all(axis=1)
            hit = np.flatnonzero(ok)
            if hit.size:
                positions[k] = trial[hit[0]]
                break
            tries += batch
            if tries >= max_tries:
                raise AloeError(
                    f"random mixture: no room for atom {k + 1} of {n} after {max_tries} tries; lower "
                    "min_distance_factor or raise volume_factor"
                )
    return positions


def _min_distance_ratio(atoms: Atoms, min_dist: np.ndarray) -> float:
    """Smallest ratio of a pair's distance to its allowed minimum (periodic images included)."""
    from ase.neighborlist import neighbor_list

    cutoff = float(min_dist[np.ix_(atoms.numbers, atoms.numbers)].max())
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    if len(d) == 0:
        return math.inf
    return float((d / min_dist[atoms.numbers[i], atoms.numbers[j]]).min())


def random_mixtures(settings: MixtureSettings | None = None) -> list[BenchStructure]:
    """Random multi-element mixtures in cubic cells, relaxed with the ZBL repulsion (fixed cell).

    For mixture ``k`` (its own generator, seeded by ``(seed, k)``): ``n_elements`` distinct elements drawn from
    the pool; each element at least once, the other atoms' elements drawn uniformly; a cubic cell of
    ``volume_factor`` x the sum of atomic volumes; atoms placed one by one at random positions at least
    ``min_distance_factor`` x (sum of covalent radii) from every atom placed before; then at most ``relax_steps``
    FIRE steps with :class:`aloe.bench.zbl.ZBLCalculator` (cell fixed), kept only when no pair ends closer than
    the minimum distance (else the packed positions are kept).

    Returns
    -------
    list of BenchStructure
        Ids ``mixture-<k>-<formula>``, no reference labels; ``atoms.info`` holds ``seed`` and ``zbl_steps``.
    """
    from ase import Atoms
    from ase.data import atomic_numbers, covalent_radii

    settings = settings if settings is not None else MixtureSettings()
    pool = list(dict.fromkeys(settings.elements))
    for symbol in pool:
        if symbol not in atomic_numbers:
            raise AloeError(f"mixtures: unknown element symbol {symbol!r}")
    radii = np.asarray(covalent_radii, dtype=float)
    min_dist = settings.min_distance_factor * (radii[:, None] + radii[None, :])
    volumes = {s: atomic_volume(s) for s in pool}
    out: list[BenchStructure] = []
    for k in range(settings.n_structures):
        rng = np.random.default_rng([settings.seed, k])
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), settings.n_elements, replace=False))]
        extra = rng.integers(0, len(chosen), settings.n_atoms - len(chosen))
        symbols = np.array(chosen + [chosen[i] for i in extra])
        symbols = symbols[rng.permutation(len(symbols))]
        numbers = np.array([atomic_numbers[s] for s in symbols])
        box = (settings.volume_factor * sum(volumes[s] for s in symbols)) ** (1.0 / 3.0)
        positions = _pack(numbers, box, min_dist, rng, settings.max_tries)
        atoms = Atoms(numbers=numbers, positions=positions, cell=[box, box, box], pbc=True)
        steps = _zbl_relax(atoms, settings, min_dist)
        atoms.info = {"seed": settings.seed, "zbl_steps": steps}
        out.append(
            BenchStructure(
                id=f"mixture-{k}-{atoms.get_chemical_formula(mode='metal')}",
                atoms=atoms,
                source="builtin:mixtures",
                origin=f"builtin:mixtures: mixture {k}",
            )
        )
    return out


def _zbl_relax(atoms: Atoms, settings: MixtureSettings, min_dist: np.ndarray) -> int:
    """FIRE with ZBL, fixed cell, in place; returns the steps taken (0 when the relaxed positions were refused)."""
    if settings.relax_steps == 0:
        return 0
    from ase.optimize import FIRE

    from aloe.bench.zbl import ZBLCalculator

    start = atoms.positions.copy()
    work = atoms.copy()
    work.calc = ZBLCalculator()
    opt = FIRE(work, logfile=None)
    opt.run(fmax=settings.fmax, steps=settings.relax_steps)
    work.wrap()
    if _min_distance_ratio(work, min_dist) < 1.0 - 1e-9:
        atoms.positions = start  # the repulsion never should, but a minimum distance is a promise
        return 0
    atoms.positions = work.positions
    return int(opt.nsteps)


# ---- built-in crystals -------------------------------------------------------------------------------------------
def elemental_crystal(symbol: str) -> Atoms:
    """The primitive crystal of ``symbol`` at ASE's reference state and lattice constants (``ase.build.bulk``).

    Raises
    ------
    AloeError
        An element without a reference state ASE can build.
    """
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    if symbol not in atomic_numbers:
        raise AloeError(f"unknown element symbol {symbol!r}")
    state = reference_states[atomic_numbers[symbol]]
    if not state:
        raise AloeError(f"element {symbol}: ASE has no reference crystal structure for it")
    try:
        atoms = bulk(symbol)
    except Exception as exc:  # ASE raises assorted errors for states it cannot build
        raise AloeError(
            f"element {symbol}: cannot build ASE's reference state {state.get('symmetry')!r} ({exc})"
        ) from None
    atoms.calc = None
    atoms.info = {"symmetry": state.get("symmetry")}
    return atoms


def elemental_crystals(symbols: Iterable[str] | None = None) -> list[BenchStructure]:
    """``builtin:elements``: one crystal per element (default: every fcc/bcc/hcp/diamond/sc element, see above)."""
    from ase.data import chemical_symbols, reference_states

    from aloe.elements import EXCLUDED_ELEMENTS, NOBLE_GASES

    explicit = symbols is not None
    if symbols is None:
        symbols = [
            s
            for z, s in enumerate(chemical_symbols)
            if z
            and reference_states[z]
            and reference_states[z].get("symmetry") in ELEMENT_SYMMETRIES
            and s not in NOBLE_GASES
            and s not in EXCLUDED_ELEMENTS
        ]
    out = []
    for symbol in symbols:
        try:
            atoms = elemental_crystal(symbol)
        except AloeError:
            if explicit:
                raise
            continue  # a reference state ASE lists but cannot build on its own (Se: hcp with a basis)
        ident = f"{symbol}-{atoms.info['symmetry']}"
        out.append(
            BenchStructure(ident, atoms, source="builtin:elements", origin=f"builtin:elements: {ident}")
        )
    return out


def pymatgen_structures() -> list[BenchStructure]:
    """``builtin:pymatgen``: the ordered structures pymatgen ships in ``pymatgen/util/structures/``."""
    import importlib.util

    from ase import Atoms

    from aloe.data.formats import structure_arrays

    spec = importlib.util.find_spec("pymatgen")
    if spec is None or not spec.submodule_search_locations:
        raise AloeError("builtin:pymatgen needs pymatgen installed")
    folder = next(
        (
            Path(p) / "util" / "structures"
            for p in spec.submodule_search_locations
            if (Path(p) / "util" / "structures").is_dir()
        ),
        None,
    )
    if folder is None:
        raise AloeError("builtin:pymatgen: this pymatgen has no util/structures folder")
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            cell, symbols, positions, pbc = structure_arrays(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            continue  # disordered (partial occupancy) or not a structure
        atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=pbc)
        out.append(
            BenchStructure(f"pymatgen-{path.stem}", atoms, source="builtin:pymatgen", origin=str(path))
        )
    return out


# ---- reading ------------------------------------------------------------------------------------------------------
def read_reference_set(spec: str | Path, *, mixtures: MixtureSettings | None = None) -> ReferenceSet:
    """Read a reference set from a file, a run folder or a built-in name (see the module docstring).

    Parameters
    ----------
    spec
        A path, or one of :data:`BUILTIN_SETS`.
    mixtures
        Settings of ``builtin:mixtures`` (defaults when ``None``).

    Raises
    ------
    InputFileError
        A missing file, a format it cannot tell, or a bad record (one line naming the file and the record).
    """
    text = str(spec)
    if text == "builtin:elements":
        return ReferenceSet(elemental_crystals(), name=text)
    if text.startswith("builtin:elements:"):  # builtin:elements:Li,Na,Mg -- the crystals of these elements
        symbols = [t for t in text.split(":", 2)[2].replace(",", " ").split() if t]
        return ReferenceSet(elemental_crystals(symbols), name=text)
    if text == "builtin:pymatgen":
        return ReferenceSet(pymatgen_structures(), name=text)
    if text == "builtin:mixtures":
        return ReferenceSet(random_mixtures(mixtures), name=text)
    if text.startswith("builtin:"):
        raise AloeError(f"unknown built-in set {text!r} (choose from {', '.join(BUILTIN_SETS)})")
    path = Path(text).expanduser()
    if path.is_dir():
        found = _read_folder(path)
        if not found.structures:
            raise InputFileError(path, "holds no structures")
        return found
    if not path.exists():
        raise InputFileError(path, f"no such file or folder (nor a built-in set: {', '.join(BUILTIN_SETS)})")
    name = path.name.lower()
    if name.endswith(".jsonl") and is_structure_file(path):  # the structures an 'aloe bench' run kept
        structures = read_structure_file(path)
        functional = _common(s.atoms.info.get("functional") for s in structures)
    elif name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        structures, functional = _read_documents(path)
    elif name.endswith((".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
        structures = _read_extxyz(path)
        functional = _common(s.atoms.info.get("functional") for s in structures)
    elif name.endswith(".db"):
        structures = _read_db(path)
        functional = None
    else:
        raise InputFileError(
            path,
            "cannot tell the format from the name (use .json[.gz], .jsonl[.gz], .xyz/.extxyz[.gz] or .db)",
        )
    if not structures:
        raise InputFileError(path, "holds no structures")
    return ReferenceSet(structures, functional=functional, name=str(path))


# ---- checks and the lossless file of a run -------------------------------------------------------------------
#: Tag on the first line of a structure file (:func:`write_structure_file`).
STRUCTURE_FILE_FORMAT = "aloe-bench-structures/1"


def structure_problem(atoms: Atoms, min_distance: float = 0.5) -> str | None:
    """What makes ``atoms`` unusable for a benchmark, or ``None``.

    No atoms, NaN or infinite positions, a cell that is not a usable periodic 3D cell (non-finite, zero or
    vanishing volume; :func:`aloe.structures.cell_problem`), or two atoms closer than ``min_distance`` (A;
    periodic images included, so an atom and its own image count too).
    """
    from ase.neighborlist import neighbor_list

    from aloe.structures import cell_problem

    if len(atoms) == 0:
        return "structure has no atoms"
    if not np.isfinite(np.asarray(atoms.positions, dtype=float)).all():
        return "atomic positions hold NaN or infinite values"
    problem = cell_problem(np.asarray(atoms.cell[:], dtype=float))
    if problem is not None:
        return problem
    if min_distance > 0:
        periodic = atoms.copy()
        periodic.pbc = True
        distances = neighbor_list("d", periodic, float(min_distance), self_interaction=False)
        if len(distances):
            return f"atoms {float(distances.min()):.3g} A apart (closer than min_distance {min_distance:g} A)"
    return None


def write_structure_file(path: str | Path, structures: Iterable[BenchStructure]) -> None:
    """Write structures with their labels losslessly: JSON lines, every float as Python's shortest exact repr.

    The first line is ``{"format": STRUCTURE_FILE_FORMAT, "count": n}``; then one object per structure with
    ``id``, ``source``, ``origin``, ``numbers``, ``positions``, ``cell``, ``pbc``, ``masses`` (when set),
    ``info`` (its JSON-able entries), ``energy``, ``forces`` and ``stress``. Reading it back
    (:func:`read_structure_file`) gives bit-identical arrays, NaN included: a resumed benchmark computes from
    exactly the numbers of the first run. Written atomically.
    """
    from aloe.data.formats import json_default
    from aloe.runs import atomic_path

    def plain(value: Any) -> Any:
        return None if value is None else np.asarray(value, dtype=float).tolist()

    lines = []
    for s in structures:
        info = {}
        for key, value in s.atoms.info.items():
            try:
                info[str(key)] = json.loads(json.dumps(value, default=json_default))
            except (TypeError, ValueError):
                continue  # not JSON (an ASE object): the benchmarks do not read it
        doc = {
            "id": s.id,
            "source": s.source,
            "origin": s.origin,
            "numbers": [int(z) for z in s.atoms.numbers],
            "positions": plain(s.atoms.positions),
            "cell": plain(s.atoms.cell[:]),
            "pbc": [bool(p) for p in s.atoms.pbc],
            "masses": plain(s.atoms.get_masses()) if s.atoms.has("masses") else None,
            "info": info,
            "energy": None if s.energy is None else float(s.energy),
            "forces": plain(s.forces),
            "stress": plain(s.stress),
        }
        lines.append(json.dumps(doc, default=json_default))
    header = json.dumps({"format": STRUCTURE_FILE_FORMAT, "count": len(lines)})
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join([header, *lines]) + "\n")


def is_structure_file(path: str | Path) -> bool:
    """Whether ``path`` is a file of :func:`write_structure_file` (its first line carries the format tag)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline(4096)
        return json.loads(first).get("format") == STRUCTURE_FILE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_structure_file(path: str | Path) -> list[BenchStructure]:
    """The structures of a :func:`write_structure_file` file, exactly as written.

    Raises
    ------
    InputFileError
        A file that is not one, is cut short, or holds a bad line (named).
    """
    from ase import Atoms

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not readable ({exception_message(exc)})") from None
    try:
        header = json.loads(text[0]) if text else {}
    except ValueError:
        header = {}
    if not isinstance(header, dict) or header.get("format") != STRUCTURE_FILE_FORMAT:
        raise InputFileError(path, f"not an aloe bench structure file (no {STRUCTURE_FILE_FORMAT!r} header)")
    out = []
    for k, line in enumerate(text[1:]):
        try:
            doc = json.loads(line)
            atoms = Atoms(
                numbers=doc["numbers"],
                positions=np.array(doc["positions"], dtype=float).reshape(-1, 3),
                cell=np.array(doc["cell"], dtype=float).reshape(3, 3),
                pbc=doc["pbc"],
            )
            if doc.get("masses") is not None:
                atoms.set_masses(np.array(doc["masses"], dtype=float))
            atoms.info = dict(doc.get("info") or {})
            out.append(
                BenchStructure(
                    id=str(doc["id"]),
                    atoms=atoms,
                    energy=None if doc.get("energy") is None else float(doc["energy"]),
                    forces=_float_array(doc.get("forces"), (-1, 3)),
                    stress=_float_array(doc.get("stress"), (6,)),
                    source=str(doc.get("source") or ""),
                    origin=str(doc.get("origin") or ""),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InputFileError(path, f"structure {k}: {exception_message(exc)}") from None
    if len(out) != header.get("count"):
        raise InputFileError(path, f"holds {len(out)} structures, its header says {header.get('count')}")
    return out


def _float_array(value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    return None if value is None else np.array(value, dtype=float).reshape(shape)


def split_roles(reference_set: ReferenceSet) -> tuple[list[BenchStructure], list[BenchStructure]]:
    """The structures for the equilibrium benchmark and those for the forces benchmark.

    In a set with roles (an ``aloe bench reference`` folder: ``atoms.info['bench_role']``), the crystals with an
    energy and the supercells with forces; otherwise every structure with an energy and every structure with
    forces (a structure with both is in both lists).

    Returns
    -------
    crystals, supercells
        Lists in the set's order.
    """
    structures = reference_set.structures
    roles = [s.atoms.info.get(ROLE_KEY) for s in structures]
    if any(role in ("crystal", "supercell") for role in roles):
        crystals = [
            s for s, r in zip(structures, roles, strict=True) if r == "crystal" and s.energy is not None
        ]
        supercells = [
            s for s, r in zip(structures, roles, strict=True) if r == "supercell" and s.forces is not None
        ]
        return crystals, supercells
    return [s for s in structures if s.energy is not None], [s for s in structures if s.forces is not None]


def reference_role(bench: str, reference: ReferenceSet | None, role: str) -> list[BenchStructure]:
    """The ``crystals`` or ``supercells`` of a benchmark's reference set (see :func:`split_roles`).

    Raises
    ------
    AloeError
        No reference set, or one without such structures (one line naming the set and what it lacks).
    """
    from aloe.bench.base import require_reference

    crystals, supercells = split_roles(require_reference(bench, reference))
    chosen = crystals if role == "crystals" else supercells
    if not chosen:
        lacking = (
            "crystal with a reference energy" if role == "crystals" else "structure with reference forces"
        )
        raise AloeError(f"the {bench} benchmark has no structures: {reference.name} holds no {lacking}")
    return chosen


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".extxyz", ".xyz", ".db"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.name


def _common(values: Iterable[Any]) -> str | None:
    """The one string all values share, or ``None`` (none, or several)."""
    found = {v for v in values if isinstance(v, str) and v}
    return found.pop() if len(found) == 1 else None


def _own_id(source: Mapping[str, Any]) -> str | None:
    """A document's / frame's own id (see the module docstring for the keys), or ``None``."""

    def text(value: Any) -> str | None:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
        return None

    for key in ID_KEYS[:2]:
        if text(source.get(key)):
            return text(source.get(key))
    provenance = source.get("provenance")
    if isinstance(provenance, Mapping) and text(provenance.get("aloe_id")):
        step = provenance.get("ionic_step")
        return str(text(provenance.get("aloe_id"))) + ("" if step is None else f"@{step}")
    for key in ID_KEYS[2:]:
        if text(source.get(key)):
            return text(source.get(key))
    return None


class _Ids:
    """Unique, stable ids: a structure's own id, else ``fallback`` or ``<stem>-<index>``; a repeat gets ``-<index>``."""

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.seen: set[str] = set()

    def __call__(self, sources: Iterable[Mapping[str, Any]], index: int, fallback: str | None = None) -> str:
        found = next((i for i in map(_own_id, sources) if i is not None), None)
        ident = found or fallback or f"{self.stem}-{index}"
        if ident in self.seen:
            ident = f"{ident}-{index}"
        self.seen.add(ident)
        return ident


def _voigt(stress: Any) -> np.ndarray:
    """Six Voigt values ``xx yy zz yz xz xy`` from 6, 9 or 3x3 values."""
    s = np.asarray(stress, dtype=float)
    if s.shape in ((3, 3), (9,)):
        m = s.reshape(3, 3)
        return np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
    if s.shape != (6,):
        raise ValueError(f"stress must be 6 Voigt values or 3x3, got shape {s.shape}")
    return s


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- JSON documents --
def _read_documents(path: Path) -> tuple[list[BenchStructure], str | None]:
    """MatPES / MP-ALOE records through RecordReader; other documents (matcalc's benchmark entries) as entries."""
    from aloe.data.formats import REQUIRED_KEYS, RecordReader

    try:
        first = next(iter(RecordReader(path, check=False)), None)
    except InputFileError as exc:
        if "expected a JSON list" not in exc.problem:
            raise
        first = None  # a mapping id -> entry (matcalc's other layout)
        entries: Iterable[tuple[int, Any, str | None]] = _mapping_entries(path)
    else:
        if first is None:
            raise InputFileError(path, "holds no documents")
        if isinstance(first, dict) and all(key in first for key in REQUIRED_KEYS):
            entries = ((k, doc, None) for k, doc in enumerate(RecordReader(path)))
        else:
            entries = ((k, doc, None) for k, doc in enumerate(RecordReader(path, check=False)))
    ids = _Ids(_stem(path))
    structures = []
    functionals = []
    for k, doc, key in entries:
        structure = _from_document(path, k, doc, ids, key)
        structures.append(structure)
        if isinstance(doc, dict):
            functionals.append(doc.get("functional"))
    return structures, _common(functionals)


def _mapping_entries(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, EOFError, ValueError) as exc:
        raise InputFileError(path, f"not readable as JSON ({exception_message(exc)})") from None
    if not isinstance(data, dict):
        raise InputFileError(
            path, f"expected a list of documents or a mapping id -> entry, got {type(data).__name__}"
        )
    if "structure" in data:  # one entry on its own
        yield 0, data, None
        return
    for k, (key, entry) in enumerate(data.items()):
        yield k, entry, str(key)


def _from_document(path: Path, k: int, doc: Any, ids: _Ids, key: str | None) -> BenchStructure:
    """One document or benchmark entry -> a BenchStructure (raises InputFileError naming the record)."""
    from ase import Atoms

    from aloe.data.formats import structure_arrays
    from aloe.data.records import stress_from_kbar

    where = f"record {k}" if key is None else f"entry {key!r}"
    if not isinstance(doc, dict):
        raise InputFileError(path, f"{where}: expected an object, got {type(doc).__name__}")
    if "structure" not in doc:
        raise InputFileError(path, f"{where}: no 'structure' key")
    structure = doc["structure"]
    if not isinstance(structure, dict):
        raise InputFileError(path, f"{where}: 'structure' must be a pymatgen structure dict")
    try:
        cell, symbols, positions, pbc = structure_arrays(structure)
        atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=pbc)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputFileError(path, f"{where}: bad 'structure' ({exception_message(exc)})") from None
    n = len(atoms)
    energy = None
    if _is_number(doc.get("energy")):
        energy = float(doc["energy"])
    elif _is_number(doc.get("energy_per_atom")):
        energy = float(doc["energy_per_atom"]) * n
    elif doc.get("energy") is not None:
        raise InputFileError(path, f"{where}: 'energy' must be a finite number (eV)")
    forces = None
    if doc.get("forces") is not None:
        try:
            forces = np.asarray(doc["forces"], dtype=float)
        except (TypeError, ValueError):
            raise InputFileError(path, f"{where}: 'forces' must be an n x 3 list of numbers") from None
        if forces.shape != (n, 3) or not np.isfinite(forces).all():
            raise InputFileError(
                path, f"{where}: 'forces' have shape {forces.shape}, expected ({n}, 3), finite"
            )
    stress = None
    if doc.get("stress") is not None:
        try:
            stress = stress_from_kbar(_voigt(doc["stress"]))
        except (TypeError, ValueError) as exc:
            raise InputFileError(path, f"{where}: bad 'stress' ({exception_message(exc)})") from None
    sources = [doc] if key is None else [doc, {"id": key}]
    for name, value in doc.items():
        if (
            name not in _LABEL_KEYS
            and (isinstance(value, str) or _is_number(value))
            and not name.startswith("@")
        ):
            atoms.info[name] = value
    return BenchStructure(
        ids(sources, k), atoms, energy, forces, stress, source=str(path), origin=f"{path}: {where}"
    )


# -- extxyz --
def _read_extxyz(path: Path, role: str | None = None) -> list[BenchStructure]:
    from ase.io import iread

    from aloe.data.readers import read_problem

    ids = _Ids(_stem(path))
    out = []
    frames = iread(str(path), index=":", format="extxyz")
    k = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except (EOFError, OSError) as exc:
            raise InputFileError(
                path, f"frame {k}: truncated or unreadable ({exception_message(exc)})"
            ) from None
        except Exception as exc:
            raise InputFileError(path, f"frame {k}: {read_problem(exc, 'extxyz')}") from None
        out.append(_from_atoms(path, f"frame {k}", k, atoms, ids, role))
        k += 1
    return out


def _from_atoms(
    path: Path, where: str, k: int, atoms: Atoms, ids: _Ids | None, role: str | None
) -> BenchStructure:
    """Labels from info / arrays keys, else from the attached calculator's results (``ids=None``: id left empty)."""
    results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
    n = len(atoms)

    def pick(keys: tuple[str, ...], store: Mapping[str, Any]) -> Any:
        for key in keys:
            if key in store and store[key] is not None:
                return store[key]
        for key in keys:
            if key in results and results[key] is not None:
                return results[key]
        return None

    energy = pick(ENERGY_KEYS, atoms.info)
    forces = pick(FORCE_KEYS, atoms.arrays)
    stress = pick(STRESS_KEYS, atoms.info)
    try:
        energy = None if energy is None else float(energy)
        if forces is not None:
            forces = np.array(forces, dtype=float)
            if forces.shape != (n, 3):
                raise ValueError(f"forces have shape {forces.shape}, expected ({n}, 3)")
        stress = None if stress is None else _voigt(stress)
    except (TypeError, ValueError) as exc:
        raise InputFileError(path, f"{where}: {exception_message(exc)}") from None
    if energy is not None and not math.isfinite(energy):
        raise InputFileError(path, f"{where}: energy is not finite")
    plain = atoms.copy()
    plain.calc = None
    for key in (*ENERGY_KEYS, *STRESS_KEYS):
        plain.info.pop(key, None)
    for key in FORCE_KEYS:
        plain.arrays.pop(key, None)
    if role is not None:
        plain.info[ROLE_KEY] = role
    sources = [plain.info]
    if isinstance(plain.info.get("data"), Mapping):
        sources.append(plain.info["data"])
    source = str(plain.info.get("source") or path) if role is None else str(path)
    ident = ids(sources, k) if ids is not None else ""
    return BenchStructure(ident, plain, energy, forces, stress, source=source, origin=f"{path}: {where}")


# -- ASE database --
def _read_db(path: Path) -> list[BenchStructure]:
    import sqlite3

    import ase.db

    ids = _Ids(_stem(path))
    out = []
    try:
        db = ase.db.connect(str(path), type="db", create_indices=False, use_lock_file=False)
        for k, row in enumerate(db.select()):
            where = f"row id {row.id}"
            try:
                atoms = row.toatoms()
            except Exception as exc:
                raise InputFileError(path, f"{where}: {exception_message(exc)}") from None
            data = row.get("data") or {}
            sources: list[Mapping[str, Any]] = [dict(row.key_value_pairs)]
            if isinstance(data, Mapping) and isinstance(data.get("record"), Mapping):
                sources.append(
                    data["record"]
                )  # rows written by aloe.data.formats keep the record's ids there
            structure = _from_atoms(path, where, k, atoms, None, None)
            structure.id = ids(sources, k, fallback=f"{ids.stem}-{row.id}")
            for key, value in row.key_value_pairs.items():
                if isinstance(value, str) or _is_number(value):
                    structure.atoms.info[key] = value
            out.append(structure)
    except sqlite3.DatabaseError as exc:
        raise InputFileError(path, f"not a readable ASE database ({exception_message(exc)})") from None
    return out


# -- run folders --
def _read_folder(path: Path) -> ReferenceSet:
    from aloe.layout import ISOLATED_ATOMS_FILE, RECORDS, run_verb

    verb = run_verb(path)
    if verb == REFERENCE_VERB or (path / CRYSTALS_FILE).exists():
        return _read_reference_folder(path)
    if verb == "label" or (path / RECORDS).is_dir():
        structures, functional = _read_label_folder(path)
        energies = None
        atoms_file = path / ISOLATED_ATOMS_FILE
        if atoms_file.exists():
            import yaml

            try:
                data = yaml.safe_load(atoms_file.read_text()) or {}
            except yaml.YAMLError:
                raise InputFileError(atoms_file, "not readable YAML") from None
            table = data.get("energies") if isinstance(data, dict) else None
            if isinstance(table, dict) and table:
                energies = {str(k): float(v) for k, v in table.items()}
        return ReferenceSet(structures, atom_energies=energies, functional=functional, name=str(path))
    raise InputFileError(
        path,
        "folder is neither an 'aloe bench reference' run (crystals.extxyz) nor an 'aloe label' run (records/)",
    )


def _read_label_folder(path: Path) -> tuple[list[BenchStructure], str | None]:
    from aloe.data.formats import RecordReader

    ids = _Ids(path.name)
    structures = []
    functionals = []
    for k, doc in enumerate(RecordReader(path)):
        structures.append(_from_document(path, k, doc, ids, None))
        functionals.append(doc.get("functional"))
    return structures, _common(functionals)


def _read_reference_folder(path: Path) -> ReferenceSet:
    crystals_file = path / CRYSTALS_FILE
    if not crystals_file.exists():
        raise InputFileError(path, f"no {CRYSTALS_FILE} (is the 'aloe bench reference' run finished?)")
    structures = _read_extxyz(crystals_file, role="crystal")
    supercells_file = path / SUPERCELLS_FILE
    if supercells_file.exists():
        structures += _read_extxyz(supercells_file, role="supercell")
    energies = None
    functional = _common(s.atoms.info.get("functional") for s in structures)
    energies_file = path / ATOM_ENERGIES_FILE
    if energies_file.exists():
        try:
            data = json.loads(energies_file.read_text())
        except ValueError as exc:
            raise InputFileError(energies_file, f"not JSON ({exception_message(exc)})") from None
        table = data.get("energies") if isinstance(data, dict) else None
        if not isinstance(table, dict) or not all(_is_number(v) for v in table.values()):
            raise InputFileError(energies_file, "expected 'energies': {symbol: energy in eV}")
        energies = {str(k): float(v) for k, v in table.items()} or None
        functional = data.get("functional") or functional
    return ReferenceSet(structures, atom_energies=energies, functional=functional, name=str(path))


__all__ = [
    "ATOM_ENERGIES_FILE",
    "BUILTIN_SETS",
    "CRYSTALS_FILE",
    "DEFAULT_MIXTURE_ELEMENTS",
    "ELEMENT_SYMMETRIES",
    "REFERENCE_VERB",
    "ROLE_KEY",
    "STRUCTURE_FILE_FORMAT",
    "SUPERCELLS_FILE",
    "MixtureSettings",
    "atomic_volume",
    "elemental_crystal",
    "elemental_crystals",
    "is_structure_file",
    "pymatgen_structures",
    "random_mixtures",
    "read_reference_set",
    "read_structure_file",
    "reference_role",
    "split_roles",
    "structure_problem",
    "write_structure_file",
]
