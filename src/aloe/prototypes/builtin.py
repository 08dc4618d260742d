"""The built-in prototype library, built from the AFLOW prototypes that ship with pymatgen.

pymatgen carries 288 structures from the AFLOW Library of Crystallographic Prototypes
(``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``). The built-in library keeps the ordered binary and
ternary ones with 2 to 8 sites in the primitive cell, turns their species into placeholders, and drops entries
that are the same placeholder structure as one already kept.

Building takes a few seconds (primitive cells and structure matching), so the converted library is cached as
JSON under :func:`cache_dir`, keyed by the pymatgen version and the placeholders.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.cache import CACHE_ENV, cache_dir  # noqa: F401  (CACHE_ENV: re-exported)
from aloe.errors import AloeError
from aloe.prototypes.library import (
    DEFAULT_PLACEHOLDERS,
    LoadReport,
    Prototype,
    PrototypeLibrary,
    natural_key,
)
from aloe.runs import atomic_path

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Accepted specs and the arities (number of distinct placeholders) each one keeps.
SPECS: dict[str, tuple[int, ...]] = {
    "builtin": (2, 3),
    "builtin:binary": (2,),
    "builtin:ternary": (3,),
}

#: Site-count window, applied to the primitive cell.
MIN_SITES = 2
MAX_SITES = 8

#: StructureMatcher tolerances for deduplication (``scale=True``, so volumes are normalised first).
#: About half of pymatgen's defaults (0.2, 0.3, 5): the defaults merge clearly different prototypes such as
#: L1_0 CuAu into B2 CsCl (a 30 % tetragonal strain) or TlF into NaCl, while these still merge small
#: distortions of one structure (CaCl2 into rutile, ReSi2 into MoSi2, tetragonal into cubic perovskite).
MATCHER_TOLERANCES: dict[str, float] = {"ltol": 0.1, "stol": 0.15, "angle_tol": 3.0}

#: Bump when the conversion changes, so that old cache files are rebuilt rather than trusted.
#: 2: coordinates just below 1 are kept as read (format 1 set those within np.isclose of 1 to 0).
CACHE_FORMAT = 2


_DATA_FILE = "aflow_prototypes.json.gz"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
#: AFLOW writes a missing Strukturbericht designation as the string "None".
_MISSING_TAGS = {"", "None"}


def pymatgen_version() -> str:
    """Version of the installed pymatgen (read from package metadata, so pymatgen is not imported)."""
    for dist in ("pymatgen", "pymatgen-core"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    import pymatgen.core

    return str(pymatgen.core.__version__)


def cache_path(placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS) -> Path:
    """Cache file of the converted library for the installed pymatgen and these placeholders."""
    key = f"builtin_aflow_v{CACHE_FORMAT}_pymatgen-{pymatgen_version()}_{'-'.join(placeholders)}"
    return cache_dir() / f"{_sanitize(key)}.json"


def builtin_library(
    spec: str = "builtin",
    *,
    placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS,
    progress: bool = False,
) -> PrototypeLibrary:
    """Load the built-in prototype library: AFLOW prototypes from pymatgen with placeholder species.

    Parameters
    ----------
    spec
        ``"builtin"`` (binaries and ternaries), ``"builtin:binary"`` or ``"builtin:ternary"``.
    placeholders
        Placeholder symbols (element symbols). In each prototype the real species, ordered by site count
        (most first), then electronegativity (lowest first), then symbol, become ``placeholders[0]``,
        ``placeholders[1]`` ...
    progress
        Show a progress bar while building (the cached library loads without one).

    Returns
    -------
    PrototypeLibrary
        Prototypes named ``aflow_<label>`` (with the formula appended where pymatgen has several entries
        under one label), sorted by natural name order, without weights. Their ``metadata`` holds the real
        formula, the species each placeholder replaced and the AFLOW tags.

    Raises
    ------
    AloeError
        An unknown spec, repeated placeholders, placeholders that are not element symbols, or too few
        placeholders for the arity the spec asks for.

    """
    arities = SPECS.get(spec.strip())
    if arities is None:
        raise AloeError(f"unknown built-in prototype library {spec!r} (valid: {', '.join(SPECS)})")
    placeholders = tuple(str(p) for p in placeholders)
    if len(set(placeholders)) != len(placeholders):
        raise AloeError(f"placeholders must be distinct, got {', '.join(placeholders)}")
    if len(placeholders) < min(arities):
        raise AloeError(f"{spec} needs at least {min(arities)} placeholders, got {len(placeholders)}")

    path = cache_path(placeholders)
    library = _read_cache(path, placeholders)
    if library is None:
        library = _build_library(placeholders, progress=progress)
        _write_cache(path, library, placeholders)
    selected = library.filter(arity=arities)
    return PrototypeLibrary(selected.prototypes, source=spec.strip(), report=selected.report)


# --------------------------------------------------------------------------------------------------- build


def _data_path() -> Path:
    # find_spec imports only the parent package; importing pymatgen.analysis.prototypes itself would
    # deserialise this file and three others.
    spec = importlib.util.find_spec("pymatgen.analysis.prototypes")
    if spec is None or not spec.submodule_search_locations:
        raise AloeError("pymatgen's AFLOW prototype data not found (pymatgen.analysis.prototypes is missing)")
    path = Path(next(iter(spec.submodule_search_locations))) / _DATA_FILE
    if not path.is_file():
        raise AloeError(f"{path}: pymatgen's AFLOW prototype data not found")
    return path


def _sanitize(text: str) -> str:
    return _UNSAFE_NAME_CHARS.sub("_", text).strip("_")


def _entry_names(entries: Sequence[Mapping[str, Any]], formulas: Sequence[str]) -> list[str]:
    """Give every entry of the data file a unique, readable name.

    Names are decided on the whole file, not the filtered set, so that a prototype keeps its name whatever the
    spec or the filters. pymatgen holds several entries under some labels (the AFLOW label leaves out the
    free parameters), so those get the reduced formula appended; then the Strukturbericht designation and
    finally the position in the file break any remaining tie.
    """
    labels = [str(e["tags"]["aflow"]) for e in entries]
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    names: list[str] = []
    seen: set[str] = set()
    for index, (entry, label, formula) in enumerate(zip(entries, labels, formulas, strict=True)):
        name = _sanitize(f"aflow_{label}")
        if counts[label] > 1:
            name = _sanitize(f"{name}_{formula}")
        strukturbericht = str(entry["tags"].get("strukturbericht", ""))
        if name in seen and strukturbericht not in _MISSING_TAGS:
            name = _sanitize(f"{name}_{strukturbericht}")
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        names.append(name)
    return names


def _species_order(structure: Structure) -> list[str]:
    """Real species in placeholder order: most sites first, then lowest electronegativity, then symbol."""
    from pymatgen.core import Element

    counts: dict[str, int] = defaultdict(int)
    for site in structure:
        counts[site.specie.symbol] += 1

    def electronegativity(symbol: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns for noble gases without a Pauling value
            value = float(Element(symbol).X)
        # Undefined values sort last rather than breaking the comparison with NaN.
        return value if math.isfinite(value) else math.inf

    return sorted(counts, key=lambda s: (-counts[s], electronegativity(s), s))


def _placeholder_structure(
    structure: Structure, order: Sequence[str], placeholders: Sequence[str]
) -> tuple[Structure, dict[str, str]]:
    """Swap in placeholder species, sort the sites by placeholder and make the lattice right-handed."""
    from pymatgen.core import Lattice, Structure

    index = {symbol: k for k, symbol in enumerate(order)}
    site_index = np.array([index[site.specie.symbol] for site in structure])
    perm = np.argsort(site_index, kind="stable")  # H sites first: easier to read, same structure
    lattice = np.array(structure.lattice.matrix, dtype=float)
    frac = np.array(structure.frac_coords, dtype=float)[perm]
    if np.linalg.det(lattice) < 0:
        # Prototype rejects left-handed cells; negating the vectors and the coordinates keeps the crystal.
        lattice, frac = -lattice, -frac
    species = [placeholders[k] for k in site_index[perm]]
    mapping = {placeholders[k]: symbol for k, symbol in enumerate(order)}
    return Structure(Lattice(lattice), species, np.mod(frac, 1.0)), mapping


def _tag(entry: Mapping[str, Any], key: str) -> str:
    value = str(entry["tags"].get(key, "") or "")
    return "" if value in _MISSING_TAGS else value


def _build_library(placeholders: Sequence[str], *, progress: bool = False) -> PrototypeLibrary:
    """Convert pymatgen's AFLOW prototypes (all arities the placeholders allow) and deduplicate them."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Element, Structure

    from aloe.progress import progress_bar

    placeholders = tuple(placeholders)
    invalid = [p for p in placeholders if not Element.is_valid_symbol(p)]
    if invalid:
        raise AloeError(f"placeholders must be element symbols, got {', '.join(repr(p) for p in invalid)}")

    with gzip.open(_data_path(), "rt", encoding="utf-8") as handle:
        entries = json.load(handle)

    report = LoadReport()
    # (name, placeholder structure, metadata, space-group number) of every entry that passes the filters.
    candidates: list[tuple[str, Structure, dict[str, str], int]] = []
    with warnings.catch_warnings():
        # pymatgen warns about rounding and missing properties; none of it matters for these structures.
        warnings.simplefilter("ignore")
        structures = [Structure.from_dict(entry["snl"]) for entry in entries]
        names = _entry_names(entries, [s.composition.reduced_formula for s in structures])
        for entry, name, structure in zip(
            progress_bar(entries, desc="builtin prototypes", unit="entry", enabled=progress),
            names,
            structures,
            strict=True,
        ):
            label = str(entry["tags"]["aflow"])
            n_species = len(structure.composition.elements)
            if not structure.is_ordered or n_species not in (2, 3):
                continue
            if n_species > len(placeholders):
                report.add_skip(
                    f"aflow:{label}", f"{n_species} species but only {len(placeholders)} placeholders"
                )
                continue
            primitive = structure.get_primitive_structure()
            if not MIN_SITES <= len(primitive) <= MAX_SITES:
                continue
            order = _species_order(primitive)
            placeholder_structure, mapping = _placeholder_structure(primitive, order, placeholders)
            metadata = {
                "formula": primitive.composition.reduced_formula,
                "species": " ".join(f"{p}={s}" for p, s in mapping.items()),
                "aflow": label,
                "pearson": _tag(entry, "pearson"),
                "strukturbericht": _tag(entry, "strukturbericht"),
                "mineral": _tag(entry, "mineral"),
            }
            space_group = _space_group_number(label)
            candidates.append((name, placeholder_structure, metadata, space_group))

    # Among matching entries keep the most symmetric (highest space-group number in the label, usually the
    # undistorted parent), then the first in natural name order; greedy, so the result is deterministic and
    # no two kept prototypes match.
    candidates.sort(key=lambda c: (-c[3], natural_key(c[0])))
    matcher = StructureMatcher(
        primitive_cell=False, scale=True, attempt_supercell=False, **MATCHER_TOLERANCES
    )
    kept: dict[tuple[int, tuple[int, ...]], list[tuple[str, Structure, dict[str, str]]]] = defaultdict(list)
    merged: dict[str, list[str]] = defaultdict(list)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, structure, metadata, _ in candidates:
            # Only same arity and same multiset of per-species site counts can match: keeps this fast.
            counts = tuple(sorted(int(n) for n in structure.composition.values()))
            group = kept[(len(counts), counts)]
            twin = next((other for other, s, _ in group if matcher.fit_anonymous(s, structure)), None)
            if twin is None:
                group.append((name, structure, metadata))
            else:
                merged[twin].append(name)

    prototypes: list[Prototype] = []
    for group in kept.values():
        for name, structure, metadata in group:
            if merged.get(name):
                metadata["merged"] = " ".join(sorted(merged[name], key=natural_key))
            try:
                proto = Prototype.from_structure(
                    structure,
                    name,
                    placeholders=placeholders,
                    weight=None,
                    source=f"aflow:{metadata['aflow']}",
                    metadata=metadata,
                )
            except AloeError as exc:
                report.add_skip(f"aflow:{metadata['aflow']}", str(exc))
                continue
            prototypes.append(proto)
    prototypes.sort(key=lambda p: natural_key(p.name))
    report.loaded = len(prototypes)
    return PrototypeLibrary(prototypes, source="builtin", report=report)


def _space_group_number(label: str) -> int:
    """Space-group number from an AFLOW label such as ``AB_cF8_225_a_b`` (0 if the label has none)."""
    parts = label.split("_")
    return int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0


# --------------------------------------------------------------------------------------------------- cache


def _cache_header(placeholders: Sequence[str]) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "pymatgen": pymatgen_version(),
        "placeholders": list(placeholders),
        "tolerances": dict(MATCHER_TOLERANCES),
        "sites": [MIN_SITES, MAX_SITES],
    }


def _write_cache(path: Path, library: PrototypeLibrary, placeholders: Sequence[str]) -> None:
    """Write the library as JSON, atomically; a cache that cannot be written is silently skipped."""
    data = _cache_header(placeholders)
    data["prototypes"] = [
        {
            "name": p.name,
            "lattice": p.lattice.tolist(),
            "frac_coords": p.frac_coords.tolist(),
            "placeholder_index": p.placeholder_index.tolist(),
            "source": p.source,
            "metadata": dict(p.metadata),
        }
        for p in library.prototypes
    ]
    data["skipped"] = [list(item) for item in library.report.skipped]
    try:
        # Temp file beside the target, then rename: readers never see a half-written cache, even with several
        # processes building at once.
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache holds nothing private
    except OSError:
        pass  # the cache only saves time: a read-only home must not stop the library from loading


def _read_cache(path: Path, placeholders: Sequence[str]) -> PrototypeLibrary | None:
    """Read the cached library; ``None`` when the file is missing, stale or corrupted (then it is rebuilt)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            return None
        header = _cache_header(placeholders)
        if any(data.get(key) != value for key, value in header.items()):
            return None
        prototypes = [_prototype_from_json(item, placeholders) for item in data["prototypes"]]
        report = LoadReport(loaded=len(prototypes), skipped=[(str(p), str(r)) for p, r in data["skipped"]])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if not prototypes or len({p.name for p in prototypes}) != len(prototypes):
        return None
    return PrototypeLibrary(prototypes, source="builtin", report=report)


def _prototype_from_json(item: Mapping[str, Any], placeholders: Sequence[str]) -> Prototype:
    """Rebuild one cached prototype; raises ValueError/KeyError/TypeError on anything malformed."""
    lattice = np.array(item["lattice"], dtype=float)
    frac = np.array(item["frac_coords"], dtype=float)
    index = np.array(item["placeholder_index"], dtype=np.int8)
    n = len(frac)
    if (
        lattice.shape != (3, 3)
        or frac.shape != (n, 3)
        or index.shape != (n,)
        or not MIN_SITES <= n <= MAX_SITES
        or not np.isfinite(lattice).all()
        or not np.isfinite(frac).all()
        or np.linalg.det(lattice) <= 0
        or index.min() < 0
        or index.max() >= len(placeholders)
    ):
        raise ValueError("malformed cached prototype")
    metadata = item["metadata"]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TypeError("cached metadata must map strings to strings")
    return Prototype(
        name=str(item["name"]),
        lattice=lattice,
        frac_coords=frac,
        placeholder_index=index,
        placeholders=tuple(placeholders),
        weight=None,
        source=str(item["source"]),
        metadata=dict(metadata),
    )
