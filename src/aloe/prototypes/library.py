"""Load prototype libraries: folders of POSCAR/CIF files with placeholder species, or the built-in set.

A prototype is a small crystal whose species are placeholders: with the default placeholders ``H, He, Li``,
``H`` stands for the first element of a combination (lowest Z), ``He`` for the second and ``Li`` for the third.
A sampling weight may come from the file name (``..._weight0.0067``) or from a side table.

Bad files never stop a library from loading: each one is skipped with a one-line reason naming the file, and the
skipped files are listed in the :class:`LoadReport`.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aloe.errors import AloeError, InputFileError
from aloe.structures import shortest_periodic_distances

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Placeholder species: index k stands for the k-th element (in Z order) of a combination.
DEFAULT_PLACEHOLDERS: tuple[str, ...] = ("H", "He", "Li")

#: Name patterns recognised as structure files inside a folder (other files are ignored).
STRUCTURE_FILE_PATTERNS: tuple[str, ...] = ("*.cif", "*POSCAR*", "*CONTCAR*", "*.vasp", "*.poscar")

_WEIGHT_RE = re.compile(r"_weight([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def parse_weight_from_name(name: str) -> float | None:
    """Sampling weight encoded at the end of a file name (``..._weight0.0067``), or ``None``."""
    match = _WEIGHT_RE.search(name)
    return float(match.group(1)) if match else None


def wrap_fractional(frac_coords: np.ndarray) -> np.ndarray:
    """Fractional coordinates moved into ``[0, 1)`` by whole lattice vectors only.

    A coordinate already in ``[0, 1)`` is returned unchanged, bit for bit (``0.9999924`` stays ``0.9999924``, as
    the MP-ALOE reference code, which reads prototypes with pymatgen, keeps it). Others move by an integer:
    ``x - floor(x)`` is exact for ``x >= 1`` (Sterbenz), and for ``x < 0`` it is ``x + k`` rounded to the nearest
    double, so every site keeps its Cartesian position modulo the lattice vectors (to float round-off at worst).
    A tiny negative ``x`` (``|x| <= 2**-54``) rounds to exactly ``1.0``: the same point as ``0.0``, so it becomes
    ``0.0``. Nothing else is changed, unlike ``np.isclose(x, 1.0)``, whose relative tolerance would also move
    sites that lie up to 1e-5 below 1.

    Parameters
    ----------
    frac_coords
        Shape ``(n, 3)`` (any shape works).

    Returns
    -------
    numpy.ndarray
        A new float array of the same shape with every value in ``[0, 1)``.

    """
    frac = np.array(frac_coords, dtype=float)
    frac = frac - np.floor(frac)
    # Only a negative x within 2**-54 of 0 lands on 1.0 here (x >= 0 gives x - floor(x) < 1 exactly): a true wrap.
    frac[frac == 1.0] = 0.0
    return frac


@dataclass(frozen=True, eq=False)
class Prototype:
    """A prototype crystal with placeholder species.

    Attributes
    ----------
    name
        Stable identifier (the file stem); seeds of candidates derive from it.
    lattice
        Shape ``(3, 3)``: rows are the lattice vectors (A, arbitrary scale).
    frac_coords
        Shape ``(n_sites, 3)`` fractional coordinates in ``[0, 1)``.
    placeholder_index
        Shape ``(n_sites,)``: index of each site's placeholder (0 for ``H``, 1 for ``He`` ...).
    placeholders
        The placeholder symbols in index order.
    weight
        Sampling weight, or ``None`` when the prototype carries none (then it is never sub-sampled).
    source
        Where the prototype came from (a path, or ``aflow:<label>``).

    """

    name: str
    lattice: np.ndarray
    frac_coords: np.ndarray
    placeholder_index: np.ndarray
    placeholders: tuple[str, ...] = DEFAULT_PLACEHOLDERS
    weight: float | None = None
    source: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def n_sites(self) -> int:
        """Number of sites."""
        return len(self.frac_coords)

    @property
    def arity(self) -> int:
        """Number of distinct placeholders (2 for binary, 3 for ternary)."""
        return int(self.placeholder_index.max()) + 1

    @property
    def volume(self) -> float:
        """Signed cell volume (A^3)."""
        return float(np.linalg.det(self.lattice))

    @property
    def formula(self) -> str:
        """Placeholder formula such as ``H1He2``."""
        counts = np.bincount(self.placeholder_index, minlength=self.arity)
        return "".join(f"{self.placeholders[k]}{int(c)}" for k, c in enumerate(counts))

    def pair_distances(self, cutoff: float = 9.0) -> np.ndarray:
        """Shortest periodic pair distances, shape ``(n_sites, n_sites)``; see :func:`shortest_periodic_distances`."""
        key = float(cutoff)
        cache = self._distance_cache
        if key not in cache:
            cache[key] = shortest_periodic_distances(self.lattice, self.frac_coords, key)
        return cache[key]

    @cached_property
    def _distance_cache(self) -> dict[float, np.ndarray]:
        return {}

    def to_structure(self) -> Structure:
        """The prototype as a pymatgen ``Structure`` with its placeholder species."""
        from pymatgen.core import Lattice, Structure

        species = [self.placeholders[k] for k in self.placeholder_index]
        return Structure(Lattice(self.lattice), species, self.frac_coords)

    @classmethod
    def from_structure(
        cls,
        structure: Structure,
        name: str,
        *,
        placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS,
        weight: float | None = None,
        source: str = "",
        overlap_tolerance: float = 0.05,
        metadata: Mapping[str, str] | None = None,
    ) -> Prototype:
        """Build and validate a prototype from a structure whose species are placeholders.

        Raises
        ------
        AloeError
            Unknown placeholder, placeholders that skip one (``H`` and ``Li`` without ``He``), an ordered-site
            requirement broken, a zero or negative volume, or overlapping sites.

        """
        placeholders = tuple(placeholders)
        if not structure.is_ordered:
            raise AloeError("disordered sites are not supported (each site needs one placeholder species)")
        symbols = [site.specie.symbol for site in structure]
        unknown = sorted({s for s in symbols if s not in placeholders})
        if unknown:
            raise AloeError(
                f"unknown placeholder {', '.join(repr(u) for u in unknown)} (placeholders are {', '.join(placeholders)})"
            )
        index = np.array([placeholders.index(s) for s in symbols], dtype=np.int8)
        used = sorted(set(index.tolist()))
        if used != list(range(len(used))):
            missing = [placeholders[k] for k in range(max(used)) if k not in used]
            raise AloeError(
                f"placeholders must be used in order: {', '.join(missing)} missing before {placeholders[max(used)]}"
            )
        lattice = np.array(structure.lattice.matrix, dtype=float)
        volume = float(np.linalg.det(lattice))
        if not np.isfinite(volume) or abs(volume) < 1e-8:
            raise AloeError("zero cell volume (degenerate lattice)")
        if volume < 0:
            raise AloeError(f"negative cell volume {volume:.4g} A^3 (left-handed lattice vectors)")
        frac = wrap_fractional(structure.frac_coords)
        n = len(frac)
        spacing = (volume / n) ** (1.0 / 3.0)
        dist = shortest_periodic_distances(lattice, frac, cutoff=max(spacing * 3, 1e-6))
        dmin = float(np.nanmin(dist)) if np.isfinite(dist).any() else np.inf
        if dmin < overlap_tolerance * spacing:
            i, j = np.unravel_index(np.argmin(dist), dist.shape)
            raise AloeError(
                f"overlapping sites {i} and {j} ({dmin:.3g} A apart, below {overlap_tolerance} x the mean spacing "
                f"{spacing:.3g} A)"
            )
        return cls(
            name=name,
            lattice=lattice,
            frac_coords=frac,
            placeholder_index=index,
            placeholders=placeholders,
            weight=weight,
            source=source,
            metadata=dict(metadata or {}),
        )


@dataclass
class LoadReport:
    """What a library load did: files read and files skipped with their one-line reasons."""

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add_skip(self, path: str, reason: str) -> None:
        """Record a skipped file and its reason."""
        self.skipped.append((str(path), reason))

    def lines(self) -> list[str]:
        """One line per skipped file: ``path: reason``."""
        return [f"{path}: {reason}" for path, reason in self.skipped]


@dataclass
class PrototypeLibrary:
    """An ordered collection of prototypes (order defines candidate numbering)."""

    prototypes: list[Prototype]
    source: str = ""
    report: LoadReport = field(default_factory=LoadReport)

    def __len__(self) -> int:
        return len(self.prototypes)

    def __iter__(self):
        return iter(self.prototypes)

    def __getitem__(self, key: int | str) -> Prototype:
        if isinstance(key, str):
            for proto in self.prototypes:
                if proto.name == key:
                    return proto
            raise AloeError(f"no prototype named {key!r} in {self.source or 'the library'}")
        return self.prototypes[key]

    def filter(
        self,
        *,
        arity: Iterable[int] | None = None,
        min_sites: int | None = None,
        max_sites: int | None = None,
        names: Iterable[str] | None = None,
    ) -> PrototypeLibrary:
        """A new library with only the prototypes that pass every given filter (order kept)."""
        arity_set = set(arity) if arity is not None else None
        name_set = set(names) if names is not None else None
        if name_set is not None:
            known = {p.name for p in self.prototypes}
            unknown = sorted(name_set - known)
            if unknown:
                raise AloeError(f"no prototype named {unknown[0]!r} in {self.source or 'the library'}")
        kept = [
            p
            for p in self.prototypes
            if (arity_set is None or p.arity in arity_set)
            and (min_sites is None or p.n_sites >= min_sites)
            and (max_sites is None or p.n_sites <= max_sites)
            and (name_set is None or p.name in name_set)
        ]
        return PrototypeLibrary(kept, source=self.source, report=self.report)


def read_weight_table(path: str | Path) -> dict[str, float]:
    """Read a side table of sampling weights: CSV ``name,weight`` (header optional) or a YAML mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputFileError(path, f"cannot read weight table ({exc.strerror or exc})") from None
    weights: dict[str, float] = {}
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise InputFileError(path, "weight table must be a mapping of prototype name to weight")
        items = list(data.items())
    else:
        items = [tuple(row) for row in csv.reader(text.splitlines()) if row and not row[0].startswith("#")]
    for line_no, item in enumerate(items, start=1):
        if len(item) != 2:
            raise InputFileError(path, f"row {line_no}: expected 'name,weight', got {item!r}")
        name, value = item
        try:
            weight = float(value)
        except (TypeError, ValueError):
            if line_no == 1:  # a header row
                continue
            raise InputFileError(path, f"row {line_no}: weight {value!r} is not a number") from None
        if not np.isfinite(weight) or weight < 0:
            raise InputFileError(path, f"row {line_no}: weight {weight} must be a finite number >= 0")
        weights[str(name).strip()] = weight
    return weights


def _read_structure_file(path: Path) -> Structure:
    from pymatgen.core import Structure
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix.lower() == ".cif":
            from pymatgen.io.cif import CifParser

            structures = CifParser(path).parse_structures(primitive=False)
            if not structures:
                raise ValueError("no structure in CIF")
            return structures[0]
        text = path.read_text()
        if not text.strip():
            raise ValueError("empty file")
        poscar = Poscar.from_str(text, read_velocities=False)
        if poscar.structure is None or not isinstance(poscar.structure, Structure):
            raise ValueError("no structure")
        return poscar.structure


def _is_structure_file(path: Path) -> bool:
    return (
        path.is_file()
        and not path.name.startswith(".")
        and any(path.match(p) for p in STRUCTURE_FILE_PATTERNS)
    )


def load_prototypes(
    source: str | Path,
    *,
    placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS,
    weights: str | Path | Mapping[str, float] | None = None,
    overlap_tolerance: float = 0.05,
    progress: bool = False,
) -> PrototypeLibrary:
    """Load a prototype library.

    Parameters
    ----------
    source
        ``"builtin"`` for the library built from pymatgen's AFLOW prototypes, a folder of structure files
        (matching :data:`STRUCTURE_FILE_PATTERNS`), or a single file.
    placeholders
        Placeholder symbols in the order of the elements they stand for.
    weights
        Side table of sampling weights (path to CSV/YAML, or a mapping); it overrides weights in file names.
    overlap_tolerance
        Sites closer than this fraction of the mean spacing ``(V/N)^(1/3)`` count as overlapping.
    progress
        Show a progress bar.

    Returns
    -------
    PrototypeLibrary
        Prototypes sorted by name (numbers compared numerically), plus a report of skipped files.

    Raises
    ------
    AloeError
        When ``source`` does not exist or holds no structure file at all.

    """
    if str(source) == "builtin" or str(source).startswith("builtin:"):
        from aloe.prototypes.builtin import builtin_library

        return builtin_library(str(source), placeholders=placeholders)
    root = Path(source)
    if not root.exists():
        raise AloeError(f"{root}: prototype source does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if _is_structure_file(p))
    if not files:
        raise AloeError(f"{root}: no structure files ({', '.join(STRUCTURE_FILE_PATTERNS)})")
    table: Mapping[str, float] = {}
    if isinstance(weights, Mapping):
        table = dict(weights)
    elif weights is not None:
        table = read_weight_table(weights)

    from aloe.progress import progress_bar

    report = LoadReport()
    prototypes: dict[str, Prototype] = {}
    for path in progress_bar(files, desc="prototypes", unit="file", enabled=progress):
        name = path.stem if path.suffix.lower() in {".cif", ".vasp", ".poscar"} else path.name
        if name in prototypes:
            report.add_skip(str(path), f"duplicate prototype name {name!r} (also {prototypes[name].source})")
            continue
        try:
            structure = _read_structure_file(path)
        except UnicodeDecodeError:
            report.add_skip(str(path), "unreadable: not a text structure file")
            continue
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            report.add_skip(str(path), f"malformed structure file ({reason})")
            continue
        weight = table.get(name, parse_weight_from_name(name))
        try:
            proto = Prototype.from_structure(
                structure,
                name,
                placeholders=placeholders,
                weight=weight,
                source=str(path),
                overlap_tolerance=overlap_tolerance,
            )
        except AloeError as exc:
            report.add_skip(str(path), str(exc))
            continue
        prototypes[name] = proto
    report.loaded = len(prototypes)
    unknown_weights = sorted(set(table) - set(prototypes))
    if unknown_weights and table:
        report.add_skip(
            str(weights), f"weights given for unknown prototypes: {', '.join(unknown_weights[:5])}"
        )
    ordered = sorted(prototypes.values(), key=lambda p: natural_key(p.name))
    return PrototypeLibrary(ordered, source=str(root), report=report)


def natural_key(name: str) -> list[object]:
    """Sort key comparing digit runs as numbers (``proto9`` before ``proto10``)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]
