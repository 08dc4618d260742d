"""Streaming readers and writers of records: MP-ALOE JSONL(.gz), MatPES JSON(.gz), extxyz for MACE, ASE database.

Formats (chosen from the file name by :func:`detect_format`, or named):

``jsonl``
    MP-ALOE's layout: one JSON document per line (``.jsonl``, ``.jsonl.gz``).
``json``
    MatPES's layout: ONE JSON list of documents (``.json``, ``.json.gz``). Read incrementally with the standard
    library's C scanner (``json.JSONDecoder.raw_decode`` over a growing text buffer), so memory holds one buffer
    of text (1 MiB, more only for a document larger than that) and one document, whatever the file's size.
    Written as ``[``, the documents joined by a comma and a newline, ``]``.
``extxyz``
    For MACE (``.xyz``, ``.extxyz``, optionally ``.gz``): the energy in ``info['REF_energy']`` (eV), forces in
    ``arrays['REF_forces']`` (eV/A), stress in ``info['REF_stress']`` as six Voigt values ``xx yy zz yz xz xy``
    in eV/A^3 with ASE's sign (positive = tensile). That is what mace-torch 0.3.16 expects of
    ``--stress_key=REF_stress``: ``mace.data.utils.config_from_atoms`` takes the ``info`` value as it is,
    ``mace.tools.torch_tools.voigt_to_matrix`` reads a (6,) value as ``[[xx, xy, xz], [xy, yy, yz], [xz, yz,
    zz]]`` from ``[xx, yy, zz, yz, xz, xy]`` (ASE's Voigt order), and MACE's own stress
    (``mace.modules.utils.compute_forces_virials``: ``dE/d(strain) / volume``) and its fallback for a plain
    ``stress`` key (``atoms.get_stress()``) both carry ASE's sign. The record's ids travel in ``info``
    (``matpes_id``, ``aloe_record_id``, ``functional``, ``provenance`` as ``_JSON``); a site property
    ``magmom`` becomes the column ``REF_magmoms``. Frames are written as text directly (floats as Python's shortest
    round-trip ``repr``, so nothing is rounded, unlike ASE's ``%16.8f``); ``ase.io.read`` reads them.
``db``
    An ASE database (``.db``, SQLite): each record is a row with a ``SinglePointCalculator`` (energy, forces,
    ASE-sign stress in eV/A^3); the record's other keys are kept in ``row.data['record']`` (and site
    properties in ``row.data['site_properties']``), ids and functional also as key-value pairs where ASE
    allows them.

Every reader yields records one at a time (:class:`RecordReader`); every writer takes an iterable and writes a
temp file beside the target that is renamed onto it only when complete (:func:`aloe.runs.atomic_path`): an
error half-way leaves no partial output. Bad input stops with one :class:`~aloe.errors.InputFileError` line
naming the file and the line / record / frame / row; with ``skip_bad=True`` a bad JSON line or an invalid
record is skipped and counted instead (a syntax error inside MatPES's single JSON list cannot be skipped: the
reader cannot tell where the next document starts).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from aloe.data.records import REQUIRED_KEYS, stress_from_kbar, stress_to_kbar
from aloe.errors import AloeError, InputFileError, exception_message
from aloe.runs import atomic_path
from aloe.structures import MIN_CELL_VOLUME, MIN_CELL_VOLUME_RATIO, cell_problem

if TYPE_CHECKING:
    from ase import Atoms


def _repr_floats(values: np.ndarray) -> bytes:
    """``[1.5,2.0]`` / ``[[1.5,2.0] [3.0,4.0]]`` with Python's shortest exact ``repr`` of each float."""
    if values.ndim == 1:
        return ("[" + ",".join(map(repr, values.tolist())) + "]").encode()
    return ("[[" + "] [".join(",".join(map(repr, row)) for row in values.tolist()) + "]]").encode()


try:  # orjson (a dependency of pymatgen and mace-torch) parses and writes JSON several times faster
    import orjson

    _JSON_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)

    def _loads(data: bytes | str) -> Any:
        return orjson.loads(data)

    def _dumps(doc: Any) -> bytes:
        return orjson.dumps(
            doc, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=json_default
        )

    def _dump_floats(values: np.ndarray) -> bytes:
        """As :func:`_repr_floats`, with orjson's float formatting (also shortest and exact; ``1e-7`` style)."""
        return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).replace(b"],[", b"] [")

except ImportError:  # pragma: no cover - orjson is installed with pymatgen
    _JSON_ERRORS = (ValueError,)

    def _loads(data: bytes | str) -> Any:
        return json.loads(data)

    def _dumps(doc: Any) -> bytes:
        return json.dumps(doc, separators=(",", ":"), default=json_default, allow_nan=False).encode()

    _dump_floats = _repr_floats


#: Format names, in the order the CLI lists them.
FORMATS = ("jsonl", "json", "extxyz", "db")
#: Characters of text read at a time from a MatPES JSON list.
JSON_CHUNK_CHARS = 1 << 20
#: How many skipped records' messages a reader keeps (all are counted).
KEEP_MESSAGES = 20
#: Keys copied between a record and an extxyz frame's ``info`` (strings), besides ``provenance``.
INFO_STRING_KEYS = ("matpes_id", "aloe_record_id", "functional")

_WS = re.compile(r"[ \t\n\r]*")
_PLAIN_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:+/@]*\Z")
_BOOL_WORDS = frozenset({"T", "F", "true", "false", "True", "False", "TRUE", "FALSE"})


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy numbers and arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


# ---- formats and files --------------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """The record format of ``path`` from its name: ``jsonl``, ``json``, ``extxyz`` or ``db``.

    Raises
    ------
    AloeError
        A name none of them uses.
    """
    name = Path(path).name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith((".json", ".json.gz")):
        return "json"
    if name.endswith((".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
        return "extxyz"
    if name.endswith(".db"):
        return "db"
    raise AloeError(
        f"{path}: cannot tell the format from the name (use .jsonl[.gz], .json[.gz], .xyz/.extxyz or .db, "
        "or name the format)"
    )


def _check_format(fmt: str | None, path: str | Path) -> str:
    if fmt is None:
        return detect_format(path)
    fmt = fmt.lower()
    aliases = {"xyz": "extxyz", "ase-db": "db", "ase": "db", "mp-aloe": "jsonl", "matpes": "json"}
    fmt = aliases.get(fmt, fmt)
    if fmt not in FORMATS:
        raise AloeError(f"unknown record format {fmt!r} (choose from {', '.join(FORMATS)})")
    return fmt


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_binary(path: Path) -> BinaryIO:
    if _is_gz(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


#: What a broken compressed stream raises while it is read.
_STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _stream_problem(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "truncated gzip stream (it ends before its end-of-stream marker)"
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a valid gzip file ({exception_message(exc)})"
    return f"corrupt gzip data ({exception_message(exc)})"


# ---- record checks ------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_record(doc: Any) -> str | None:
    """What is wrong with a record (its required keys and their shapes), or ``None`` when it is fine.

    Parameters
    ----------
    doc
        The decoded document.

    Returns
    -------
    str or None
        One phrase naming the key and the problem (the caller puts the file and line / record before it).
    """
    if not isinstance(doc, dict):
        return f"expected a JSON object (a document), got {type(doc).__name__}"
    for key in REQUIRED_KEYS:
        if key not in doc:
            return f"missing key '{key}'"
    structure = doc["structure"]
    if not isinstance(structure, dict):
        return f"'structure' must be a pymatgen structure dict, got {type(structure).__name__}"
    sites = structure.get("sites")
    lattice = structure.get("lattice")
    if not isinstance(sites, list) or not sites:
        return "'structure' has no list of 'sites'"
    if not isinstance(lattice, dict) or "matrix" not in lattice:
        return "'structure' has no 'lattice' with a 'matrix'"
    problem = _structure_numbers_problem(lattice["matrix"], sites)
    if problem:
        return problem
    energy = doc["energy"]
    if not _is_number(energy) or not math.isfinite(energy):
        return f"'energy' must be a finite number (eV), got {_short(energy)}"
    try:
        forces = np.asarray(doc["forces"], dtype=float)
    except (TypeError, ValueError):
        return f"'forces' must be an n x 3 list of numbers (eV/A), got {_short(doc['forces'])}"
    if forces.shape != (len(sites), 3):
        return f"'forces' have shape {forces.shape} but the structure has {len(sites)} sites"
    try:
        stress = np.asarray(doc["stress"], dtype=float)
    except (TypeError, ValueError):
        return f"'stress' must be a list of 6 numbers (kbar), got {_short(doc['stress'])}"
    if stress.shape != (6,):
        return f"'stress' must be 6 values (xx yy zz yz xz xy, kbar), got shape {stress.shape}"
    if not (np.isfinite(forces).all() and np.isfinite(stress).all()):
        return "'forces' or 'stress' hold NaN or infinite values"
    return None


_ABSENT = object()


def _structure_numbers_problem(matrix: Any, sites: list[Any]) -> str | None:
    """A lattice that is not 3 x 3 finite numbers or is degenerate, or site coordinates that are not finite.

    JSON has no NaN: a writer would turn one into ``null`` and the file would fail only when read later, so a
    record with one is refused where it is read. Plain arithmetic on the nested lists (no numpy arrays): this runs
    for every record of a dataset. A sum is NaN exactly when a term is NaN or infinite (``inf - inf`` is NaN), and
    a ``None`` or a string among the numbers raises ``TypeError``.
    """
    try:
        (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = matrix
        volume = a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1)
        lengths = (
            (a1 * a1 + a2 * a2 + a3 * a3) * (b1 * b1 + b2 * b2 + b3 * b3) * (c1 * c1 + c2 * c2 + c3 * c3)
        ) ** 0.5
        total = a1 + a2 + a3 + b1 + b2 + b3 + c1 + c2 + c3
        finite = total - total == 0.0
    except (TypeError, ValueError):
        finite = None
    if not isinstance(finite, bool):
        return f"'structure' lattice 'matrix' must be 3 x 3 numbers, got {_short(matrix)}"
    if not finite:
        return "'structure' lattice: cell holds NaN or infinite values"
    volume = abs(volume)
    if volume < MIN_CELL_VOLUME or volume < MIN_CELL_VOLUME_RATIO * lengths:
        return f"'structure' lattice: {cell_problem(np.asarray(matrix, dtype=float))}"
    for k, site in enumerate(sites):
        if not isinstance(site, dict):
            return f"'structure' site {k} is not a mapping"
        for key in ("abc", "xyz"):
            coords = site.get(key, _ABSENT)
            if coords is not _ABSENT:
                try:
                    x, y, z = coords
                    total = x + y + z
                    finite = total - total == 0.0
                except (TypeError, ValueError):
                    if isinstance(coords, list) and None in coords:  # what a writer makes of a NaN in JSON
                        return f"'structure' site {k} has a null '{key}' coordinate (NaN written as JSON?)"
                    return f"'structure' site {k}: '{key}' must be 3 numbers, got {_short(coords)}"
                if finite is not True:
                    if finite is False:
                        return f"'structure' site {k} has NaN or infinite '{key}' coordinates"
                    return f"'structure' site {k}: '{key}' must be 3 numbers, got {_short(coords)}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- structure dicts without pymatgen ----------------------------------------------------------------------
def structure_arrays(structure: dict[str, Any]) -> tuple[np.ndarray, list[str], np.ndarray, list[bool]]:
    """Cell (3x3, rows = lattice vectors, A), element symbols, Cartesian positions (A) and pbc of a structure dict.

    Reads a pymatgen ``Structure.as_dict()`` directly (no ``Structure.from_dict``): positions are
    ``abc @ matrix``, as pymatgen computes them, or the sites' ``xyz`` when ``abc`` is absent.

    Raises
    ------
    ValueError
        A site with several species or partial occupancy, or a malformed lattice / site.
    """
    lattice = structure["lattice"]
    matrix = np.asarray(lattice["matrix"], dtype=float)
    if matrix.shape != (3, 3):
        raise ValueError(f"lattice matrix has shape {matrix.shape}, expected (3, 3)")
    sites = structure["sites"]
    symbols = []
    for site in sites:
        species = site["species"]
        if len(species) != 1 or species[0].get("occu", 1) != 1:
            raise ValueError(
                "a site has several species or partial occupancy (disordered structures unsupported)"
            )
        symbols.append(species[0]["element"])
    if all("abc" in site for site in sites):
        positions = np.dot(np.asarray([site["abc"] for site in sites], dtype=float), matrix)
    else:
        positions = np.asarray([site["xyz"] for site in sites], dtype=float)
    if positions.shape != (len(sites), 3):
        raise ValueError("site coordinates are not 3 numbers each")
    pbc = lattice.get("pbc", (True, True, True))
    return matrix, symbols, positions, [bool(p) for p in pbc]


def structure_dict(
    cell: np.ndarray,
    symbols: list[str],
    positions: np.ndarray,
    pbc: Iterable[bool] = (True, True, True),
    site_properties: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """A pymatgen ``Structure.as_dict()``-shaped dict built with numpy only (``Structure.from_dict`` reads it).

    Fractional coordinates are ``positions @ inv(cell)``, as pymatgen computes them; a non-finite position gives
    non-finite ones (which :func:`check_record` refuses, naming the site).

    Raises
    ------
    ValueError
        A cell without an inverse (see :func:`aloe.structures.cell_problem`).
    """
    matrix = np.asarray(cell, dtype=float).reshape(3, 3)
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    problem = cell_problem(matrix)
    if problem:
        raise ValueError(problem)
    with np.errstate(invalid="ignore", over="ignore"):
        frac = np.dot(positions, np.linalg.inv(matrix))
    lengths = np.sqrt((matrix**2).sum(axis=1))
    angles = []
    for i, j in ((1, 2), (0, 2), (0, 1)):
        cos = float(np.dot(matrix[i], matrix[j]) / (lengths[i] * lengths[j]))
        angles.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    props = site_properties or {}
    sites = []
    for k, (symbol, abc, xyz) in enumerate(zip(symbols, frac.tolist(), positions.tolist(), strict=True)):
        sites.append(
            {
                "species": [{"element": str(symbol), "occu": 1}],
                "abc": abc,
                "properties": {name: values[k] for name, values in props.items()},
                "label": str(symbol),
                "xyz": xyz,
            }
        )
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "charge": 0,
        "lattice": {
            "matrix": matrix.tolist(),
            "pbc": [bool(p) for p in pbc],
            "a": float(lengths[0]),
            "b": float(lengths[1]),
            "c": float(lengths[2]),
            "alpha": angles[0],
            "beta": angles[1],
            "gamma": angles[2],
            "volume": float(abs(np.linalg.det(matrix))),
        },
        "properties": {},
        "sites": sites,
    }


def derived_metadata(structure: dict[str, Any], forces: np.ndarray) -> dict[str, Any]:
    """The derived keys the published documents carry (nsites, elements, composition, volume, abs_forces ...)."""
    from pymatgen.core import Composition

    counts: dict[str, float] = {}
    for site in structure["sites"]:
        element = site["species"][0]["element"]
        counts[element] = counts.get(element, 0.0) + 1.0
    elements = sorted(counts)
    matrix = np.asarray(structure["lattice"]["matrix"], dtype=float)
    return {
        "nsites": len(structure["sites"]),
        "elements": elements,
        "nelements": len(elements),
        "composition": counts,
        "formula_pretty": Composition(counts).reduced_formula,
        "chemsys": "-".join(elements),
        "volume": float(abs(np.linalg.det(matrix))),
        "abs_forces": np.linalg.norm(np.asarray(forces, dtype=float), axis=1).tolist(),
    }


def _site_properties(structure: dict[str, Any]) -> dict[str, list[Any]]:
    """Site properties that every site has (name -> per-site values)."""
    sites = structure["sites"]
    names = set(sites[0].get("properties") or {})
    for site in sites[1:]:
        names &= set(site.get("properties") or {})
    return {name: [site["properties"][name] for site in sites] for name in sorted(names)}


# ---- readers ------------------------------------------------------------------------------------------------
@dataclass
class RecordReader:
    """Iterate over the records of one file, one at a time.

    Parameters
    ----------
    path
        The file.
    format
        One of :data:`FORMATS`; from the file name when ``None``.
    skip_bad
        Skip (and count) a bad JSON line or an invalid record instead of stopping.
    check
        Check each record's required keys and shapes (:func:`check_record`).

    Attributes
    ----------
    n_read
        Records yielded so far.
    n_skipped
        Bad lines / records skipped so far (``skip_bad=True``).
    messages
        The first :data:`KEEP_MESSAGES` skipped records' messages.
    """

    path: Path
    format: str | None = None
    skip_bad: bool = False
    check: bool = True
    n_read: int = 0
    n_skipped: int = 0
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        # An aloe label run folder holds its records as JSON-lines chunks: read them in chunk order.
        self.format = "run" if self.path.is_dir() else _check_format(self.format, self.path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.format == "run":
            yield from self._run()
            return
        if not self.path.is_file():
            raise InputFileError(self.path, "no such file")
        readers: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
            "jsonl": self._jsonl,
            "json": self._json,
            "extxyz": self._extxyz,
            "db": self._db,
        }
        for doc in readers[str(self.format)]():
            self.n_read += 1
            yield doc

    def _run(self) -> Iterator[dict[str, Any]]:
        files = sorted((self.path / "records").glob("chunk-*.jsonl"))
        if not files:
            raise InputFileError(
                self.path, "folder holds no records/chunk-*.jsonl (is it a finished aloe label run?)"
            )
        for file in files:
            part = RecordReader(file, "jsonl", skip_bad=self.skip_bad, check=self.check)
            for doc in part:
                self.n_read += 1
                yield doc
            self.n_skipped += part.n_skipped
            self.messages.extend(part.messages[: max(0, KEEP_MESSAGES - len(self.messages))])

    def _bad(self, problem: str) -> None:
        """Stop with ``problem``, or (``skip_bad``) count it and go on."""
        if not self.skip_bad:
            raise InputFileError(self.path, problem)
        self.n_skipped += 1
        if len(self.messages) < KEEP_MESSAGES:
            self.messages.append(problem)

    # -- MP-ALOE JSON lines --
    def _jsonl(self) -> Iterator[dict[str, Any]]:
        line_no = 0
        try:
            with _open_binary(self.path) as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        doc = _loads(line)
                    except _JSON_ERRORS as exc:
                        self._bad(f"line {line_no}: bad JSON ({exception_message(exc)})")
                        continue
                    if self.check:
                        problem = check_record(doc)
                        if problem:
                            self._bad(f"line {line_no}: {problem}")
                            continue
                    yield doc
        except _STREAM_ERRORS as exc:
            raise InputFileError(self.path, f"{_stream_problem(exc)}, after line {line_no}") from None

    # -- MatPES: one JSON list --
    def _json(self) -> Iterator[dict[str, Any]]:
        try:
            with _open_binary(self.path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:
                yield from self._json_list(fh)
        except _STREAM_ERRORS as exc:
            raise InputFileError(self.path, f"{_stream_problem(exc)}, after record {self.n_read}") from None
        except UnicodeDecodeError as exc:
            raise InputFileError(self.path, f"not UTF-8 text ({exception_message(exc)})") from None

    def _json_list(self, fh: io.TextIOBase) -> Iterator[dict[str, Any]]:
        """Decode the elements of one JSON list from a text stream, one at a time (see the module docstring)."""
        decoder = json.JSONDecoder()
        buf = ""
        eof = False
        lines_before = 0  # newlines in the text already dropped from the buffer

        def line_of(p: int) -> int:
            return lines_before + buf.count("\n", 0, p) + 1

        def trim(keep_from: int) -> int:
            """Drop the text before ``keep_from``; return its new position (0)."""
            nonlocal buf, lines_before
            lines_before += buf.count("\n", 0, keep_from)
            buf = buf[keep_from:]
            return 0

        def refill(keep_from: int) -> int:
            """Drop the text before ``keep_from``, read more; return the new position of ``keep_from`` (0).

            At least as much is read as is kept, so a document larger than a chunk is re-scanned only a
            logarithmic number of times.
            """
            nonlocal buf, eof
            pos = trim(keep_from)
            more = fh.read(max(JSON_CHUNK_CHARS, len(buf)))
            eof = not more
            buf += more
            return pos

        def skip_ws(p: int) -> int:
            """Skip whitespace, reading more text as needed; the result is at a character, or at the end at EOF."""
            while True:
                p = _WS.match(buf, p).end()
                if p < len(buf) or eof:
                    return p
                p = refill(p)

        def after_list(p: int) -> None:
            p = skip_ws(p + 1)
            if p < len(buf):
                raise InputFileError(self.path, f"line {line_of(p)}: unexpected text after the list")

        pos = skip_ws(0)
        if pos >= len(buf) or buf[pos] != "[":
            raise InputFileError(self.path, "expected a JSON list of documents ('[' at the start)")
        pos = skip_ws(pos + 1)
        if pos < len(buf) and buf[pos] == "]":
            after_list(pos)
            return
        k = 0  # index of the record being read
        while True:
            if pos >= len(buf):
                raise InputFileError(
                    self.path, f"truncated: the file ends before record {k} (no closing ']')"
                )
            while True:
                try:
                    doc, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    # The document may run on past the buffer: read more, unless the error lies well before the
                    # buffer's end (then more text cannot help, and reading on would load the file).
                    at_end = exc.pos >= len(buf) - 64 or exc.msg.startswith("Unterminated string")
                    if not eof and at_end:
                        pos = refill(pos)
                        continue
                    if eof and not buf.rstrip().endswith("]"):
                        raise InputFileError(
                            self.path, f"truncated: the file ends inside record {k} (line {line_of(pos)})"
                        ) from None
                    raise InputFileError(
                        self.path,
                        f"record {k} (line {line_of(exc.pos)}): bad JSON ({exc.msg}); the rest of a JSON list "
                        "cannot be read past it",
                    ) from None
                if end >= len(buf) and not eof:  # a bare number may go on in the next chunk
                    pos = refill(pos)
                    continue
                break
            problem = check_record(doc) if self.check else None
            if problem:
                self._bad(f"record {k} (line {line_of(pos)}): {problem}")
            else:
                yield doc
            k += 1
            if end > JSON_CHUNK_CHARS:
                end = trim(end)
            pos = skip_ws(end)
            if pos >= len(buf):
                raise InputFileError(
                    self.path, f"truncated: the file ends after record {k - 1} (no closing ']')"
                )
            if buf[pos] == "]":
                after_list(pos)
                return
            if buf[pos] != ",":
                raise InputFileError(
                    self.path, f"record {k - 1} (line {line_of(pos)}): expected ',' or ']' after the record"
                )
            pos = skip_ws(pos + 1)

    # -- extxyz --
    def _extxyz(self) -> Iterator[dict[str, Any]]:
        from ase.io import iread

        k = 0
        frames = iread(str(self.path), index=":", format="extxyz")
        while True:
            try:
                atoms = next(frames)
            except StopIteration:
                return
            except _STREAM_ERRORS as exc:
                raise InputFileError(self.path, f"{_stream_problem(exc)}, after frame {k}") from None
            except Exception as exc:
                from aloe.data.readers import read_problem

                raise InputFileError(self.path, f"frame {k}: {read_problem(exc, 'extxyz')}") from None
            try:
                record = atoms_to_record(atoms)
            except ValueError as exc:
                self._bad(f"frame {k}: {exc}")
            else:
                problem = check_record(record) if self.check else None
                if problem:
                    self._bad(f"frame {k}: {problem}")
                else:
                    yield record
            k += 1

    # -- ASE database --
    def _db(self) -> Iterator[dict[str, Any]]:
        import sqlite3

        import ase.db

        try:
            db = ase.db.connect(str(self.path), type="db", create_indices=False, use_lock_file=False)
            rows = db.select()
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    return
                try:
                    record = row_to_record(row)
                except ValueError as exc:
                    self._bad(f"row id {row.id}: {exc}")
                    continue
                problem = check_record(record) if self.check else None
                if problem:
                    self._bad(f"row id {row.id}: {problem}")
                    continue
                yield record
        except sqlite3.DatabaseError as exc:
            raise InputFileError(
                self.path, f"not a readable ASE database ({exception_message(exc)})"
            ) from None


def read_records(
    path: str | Path, format: str | None = None, *, skip_bad: bool = False, check: bool = True
) -> Iterator[dict[str, Any]]:
    """Yield the records of ``path`` one at a time (see :class:`RecordReader`, which also counts skips)."""
    return iter(RecordReader(Path(path), format, skip_bad=skip_bad, check=check))


# ---- conversions between records and ASE ----------------------------------------------------------------------
def _stress_to_ase(stress_kbar: Any) -> np.ndarray:
    return stress_from_kbar(stress_kbar)


def _stress_to_kbar(stress_ase: Any) -> np.ndarray:
    s = np.asarray(stress_ase, dtype=float)
    if s.shape in ((3, 3), (9,)):
        m = s.reshape(3, 3)
        s = np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
    if s.shape != (6,):
        raise ValueError(f"stress must be 6 Voigt values or 3x3, got shape {s.shape}")
    return stress_to_kbar(s)


def record_to_atoms(record: dict[str, Any], ref_keys: bool = True) -> Atoms:
    """A record as ASE ``Atoms`` (built without pymatgen).

    Parameters
    ----------
    record
        A record in the MatPES schema.
    ref_keys
        Put the labels where MACE reads them (``info['REF_energy']``, ``arrays['REF_forces']``,
        ``info['REF_stress']`` in eV/A^3, ASE sign, 6 Voigt) plus the ids; else attach a
        ``SinglePointCalculator`` with energy, forces and ASE-sign stress.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    cell, symbols, positions, pbc = structure_arrays(record["structure"])
    atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=pbc)
    props = _site_properties(record["structure"])
    if "magmom" in props and all(_is_number(m) for m in props["magmom"]):
        atoms.arrays["REF_magmoms"] = np.asarray(props["magmom"], dtype=float)
    forces = np.asarray(record["forces"], dtype=float)
    stress = _stress_to_ase(record["stress"])
    if ref_keys:
        atoms.info["REF_energy"] = float(record["energy"])
        atoms.arrays["REF_forces"] = forces
        atoms.info["REF_stress"] = stress
        atoms.info.update(_record_info(record))
    else:
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(record["energy"]), forces=forces, stress=stress
        )
    return atoms


def _record_info(record: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key in INFO_STRING_KEYS:
        if isinstance(record.get(key), str):
            info[key] = record[key]
    if isinstance(record.get("provenance"), dict):
        info["provenance"] = record["provenance"]
    return info


def atoms_to_record(atoms: Atoms) -> dict[str, Any]:
    """A record from ``Atoms`` with MACE's ``REF_`` keys (or, failing those, a calculator's results).

    Raises
    ------
    ValueError
        No energy, forces or stress.
    """
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    energy = atoms.info.get("REF_energy", results.get("energy"))
    forces = atoms.arrays.get("REF_forces", results.get("forces"))
    stress = atoms.info.get("REF_stress", results.get("stress"))
    for name, value in (("energy (REF_energy)", energy), ("forces (REF_forces)", forces)):
        if value is None:
            raise ValueError(f"no {name}")
    if stress is None:
        raise ValueError("no stress (REF_stress)")
    site_properties = {}
    if "REF_magmoms" in atoms.arrays:
        site_properties["magmom"] = np.asarray(atoms.arrays["REF_magmoms"], dtype=float).reshape(-1).tolist()
    structure = structure_dict(
        atoms.cell[:], atoms.get_chemical_symbols(), atoms.positions, atoms.pbc, site_properties
    )
    forces = np.asarray(forces, dtype=float)
    record: dict[str, Any] = {
        "structure": structure,
        "energy": float(energy),
        "forces": forces.tolist(),
        "stress": _stress_to_kbar(stress).tolist(),
    }
    if forces.shape == (len(atoms), 3):
        record.update(derived_metadata(structure, forces))
    for key in INFO_STRING_KEYS:
        if key in atoms.info:
            record[key] = str(atoms.info[key])
    if isinstance(atoms.info.get("provenance"), dict):
        record["provenance"] = atoms.info["provenance"]
    return record


def row_to_record(row: Any) -> dict[str, Any]:
    """A record from an ASE database row written by :func:`write_records` (or any row with energy, forces, stress).

    Raises
    ------
    ValueError
        No energy, forces or stress.
    """
    for key in ("energy", "forces", "stress"):
        if row.get(key) is None:
            raise ValueError(f"no {key}")
    data = row.get("data") or {}
    extra = dict(data.get("record") or {})
    site_properties = {k: list(v) for k, v in (data.get("site_properties") or {}).items()}
    from ase.symbols import chemical_symbols

    symbols = [chemical_symbols[z] for z in row.numbers]
    structure = structure_dict(
        np.asarray(row.cell, dtype=float), symbols, row.positions, row.pbc, site_properties
    )
    forces = np.asarray(row.forces, dtype=float)
    record: dict[str, Any] = {
        "structure": structure,
        "energy": float(row.energy),
        "forces": forces.tolist(),
        "stress": _stress_to_kbar(row.stress).tolist(),
    }
    if forces.shape == (len(symbols), 3):
        record.update(derived_metadata(structure, forces))
    record.update(_plain(extra))
    return record


def _plain(value: Any) -> Any:
    """Turn numpy arrays and scalars (as ASE's database hands back ``data``) -> lists and Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---- writers ------------------------------------------------------------------------------------------------
def _open_out(path: Path, gz: bool) -> BinaryIO:
    if gz:
        return gzip.open(path, "wb", compresslevel=6)  # type: ignore[return-value]
    return open(path, "wb", buffering=1 << 20)


def _info_value(value: Any) -> bytes | None:
    """A string or JSON-able ``info`` value as extxyz text that ASE reads back unchanged (strings stay strings).

    A plain token (``r2SCAN``, ``mp-149``, ``matpes-1234``) is written bare; anything ASE would turn into a number
    or a bool, or that holds spaces or quotes, is written as ASE's ``_JSON`` form, quoted and escaped for ASE's
    reader.
    """
    if isinstance(value, str):
        return _info_string(value)
    try:
        text = b"_JSON " + _dumps(value)
    except (TypeError, ValueError):
        return None
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@lru_cache(maxsize=4096)
def _info_string(value: str) -> bytes:
    if _PLAIN_TOKEN.match(value) and value not in _BOOL_WORDS:
        try:
            float(value)
        except ValueError:
            return value.encode()
    text = b"_JSON " + json.dumps(value).encode()
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _floats(values: np.ndarray) -> bytes:
    """A 1-D float array as space-separated text, each number in its shortest form that reads back exactly."""
    return _dump_floats(values)[1:-1].replace(b",", b" ")


def _rows(block: np.ndarray) -> list[bytes]:
    """A 2-D float array as one line of space-separated numbers per row (exact, as :func:`_floats`)."""
    text = _dump_floats(block)
    return text[2:-2].replace(b",", b" ").split(b"] [")


_PBC_TEXT = {(True, True, True): b'pbc="T T T"'}


def extxyz_frame(record: dict[str, Any]) -> bytes:
    """One extxyz frame of a record, as UTF-8 text (see the module docstring for the keys, units and sign).

    Numbers are written in their shortest exact form (orjson's float formatting, or ``repr``), so reading the
    frame back gives the record's numbers bit for bit; ``ase.io.read`` reads it.

    Raises
    ------
    ValueError
        A structure extxyz cannot hold (disordered sites), labels of the wrong shape, or values that are not
        finite.
    """
    structure = record["structure"]
    cell, symbols, positions, pbc = structure_arrays(structure)
    n = len(symbols)
    forces = np.asarray(record["forces"], dtype=float)
    if forces.shape != (n, 3):
        raise ValueError(f"'forces' have shape {forces.shape} but the structure has {n} sites")
    stress = _stress_to_ase(record["stress"])
    if stress.shape != (6,):
        raise ValueError(f"'stress' must be 6 values, got shape {stress.shape}")
    energy = float(record["energy"])
    magmom = None
    if "magmom" in (structure["sites"][0].get("properties") or {}):
        magmom = _site_properties(structure).get("magmom")
        if magmom is not None and not all(_is_number(m) for m in magmom):
            magmom = None
    block = np.empty((n, 6 if magmom is None else 7))
    block[:, :3] = positions
    block[:, 3:6] = forces
    if magmom is not None:
        block[:, 6] = magmom
    if not (math.isfinite(energy) and math.isfinite(float(block.sum() + stress.sum() + cell.sum()))):
        raise ValueError("energy, positions, forces or stress hold NaN or infinite values")
    columns = b"species:S:1:pos:R:3:REF_forces:R:3" + (b":REF_magmoms:R:1" if magmom is not None else b"")
    header = [
        b'Lattice="' + _floats(cell.reshape(-1)) + b'"',
        b"Properties=" + columns,
        b"REF_energy=" + _floats(np.array([energy])),
        b'REF_stress="' + _floats(stress) + b'"',
    ]
    for key, value in _record_info(record).items():
        text = _info_value(value)
        if text is not None:
            header.append(key.encode() + b"=" + text)
    pbc_key = tuple(pbc)
    header.append(
        _PBC_TEXT.get(pbc_key) or ('pbc="' + " ".join("T" if p else "F" for p in pbc) + '"').encode()
    )
    lines = [str(n).encode(), b" ".join(header)]
    lines.extend(
        s.encode() + b" " + row for s, row in zip(symbols, _rows(np.ascontiguousarray(block)), strict=True)
    )
    lines.append(b"")
    return b"\n".join(lines)


def write_records(
    records: Iterable[dict[str, Any]],
    path: str | Path,
    format: str | None = None,
    *,
    on_record: Callable[[], None] | None = None,
) -> int:
    """Write ``records`` to ``path`` atomically (a temp file renamed onto ``path`` when complete).

    Parameters
    ----------
    records
        Any iterable of records (a reader's generator streams end to end).
    path
        The output file; its format from the name unless ``format`` is given. ``.gz`` compresses JSON lines, a
        JSON list or extxyz.
    format
        One of :data:`FORMATS`.
    on_record
        Called after each record is written (progress bars).

    Returns
    -------
    int
        Records written.

    Raises
    ------
    AloeError
        A record the format cannot hold; nothing is left at ``path`` (an existing file there is kept).
    """
    path = Path(path)
    fmt = _check_format(format, path)
    tick = on_record or (lambda: None)
    with atomic_path(path) as tmp:
        if fmt == "db":
            return _write_db(records, tmp, path, tick)
        n = 0
        with _open_out(tmp, _is_gz(path)) as fh:
            if fmt == "json":
                fh.write(b"[\n")
            for n, record in enumerate(records, start=1):
                try:
                    if fmt == "extxyz":
                        data = extxyz_frame(record)
                    else:
                        data = _dumps(record)
                except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                    raise AloeError(
                        f"{path}: record {n - 1}: cannot write it as {fmt} ({exception_message(exc)})"
                    ) from None
                if fmt == "json" and n > 1:
                    fh.write(b",\n")
                fh.write(data)
                if fmt == "jsonl":
                    fh.write(b"\n")
                tick()
            if fmt == "json":
                fh.write(b"\n]\n" if n else b"]\n")
        return n


def _kv_ok(value: Any) -> bool:
    """Whether ASE's database accepts ``value`` as a key-value pair (strings must not read as numbers/bools)."""
    if not isinstance(value, str) or not value:
        return False
    from ase.db.core import str_represents

    return not any(str_represents(value, t) for t in (bool, int, float))


def _write_db(records: Iterable[dict[str, Any]], tmp: Path, path: Path, tick: Callable[[], None]) -> int:
    import ase.db

    n = 0
    db = ase.db.connect(str(tmp), type="db", append=False, use_lock_file=False)
    with db:  # one transaction: far faster than a commit per row
        for n, record in enumerate(records, start=1):
            try:
                atoms = record_to_atoms(record, ref_keys=False)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise AloeError(
                    f"{path}: record {n - 1}: cannot write it to an ASE database ({exception_message(exc)})"
                ) from None
            atoms.arrays.pop("REF_magmoms", None)
            extra = {k: v for k, v in record.items() if k not in REQUIRED_KEYS}
            data: dict[str, Any] = {"record": extra}
            props = _site_properties(record["structure"])
            if props:
                data["site_properties"] = props
            kv = {}
            for key in INFO_STRING_KEYS:
                if _kv_ok(record.get(key)):
                    kv[key] = record[key]
            mp_id = (record.get("provenance") or {}).get("original_mp_id")
            if _kv_ok(mp_id):
                kv["original_mp_id"] = mp_id
            db.write(atoms, key_value_pairs=kv, data=data)
            tick()
    return n


# ---- convert ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` did."""

    n_written: int
    n_skipped: int
    messages: tuple[str, ...] = ()


def convert(
    source: str | Path,
    target: str | Path,
    *,
    source_format: str | None = None,
    target_format: str | None = None,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> ConvertResult:
    """Stream the records of ``source`` into ``target`` (formats from the names unless given).

    Raises
    ------
    AloeError
        Bad input (one line naming the file and record) or a record the target format cannot hold; nothing is
        written then.
    """
    from aloe.progress import make_bar

    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise AloeError(f"{target}: the output would overwrite the input")
    reader = RecordReader(source, source_format, skip_bad=skip_bad)
    records = iter(reader)
    first = next(records, None)  # an input without records is refused before the output is touched
    if first is None:
        skipped = f" ({reader.n_skipped:,} bad line(s)/record(s) skipped)" if reader.n_skipped else ""
        raise InputFileError(source, f"holds no records{skipped}; nothing written")
    bar = make_bar(enabled=progress, desc=f"convert {source.name}", unit=" rec")
    with bar:
        n = write_records(
            itertools.chain([first], records), target, target_format, on_record=lambda: bar.update(1)
        )
    return ConvertResult(n, reader.n_skipped, tuple(reader.messages))
