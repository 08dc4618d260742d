"""Read structures from the files users have: extxyz, POSCAR/CIF folders, MP-ALOE JSONL(.gz), MatPES JSON(.gz).

Every reader yields ``(id, Atoms)`` pairs in file order; bad input stops with one line naming the file and, for
JSON documents, the line or record number.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aloe.errors import InputFileError, exception_message

if TYPE_CHECKING:
    from ase import Atoms

#: File kinds :func:`iter_structures` recognises, by name.
KINDS = ("extxyz", "poscar-folder", "structure-file", "mp-aloe-jsonl", "matpes-json")


def detect_kind(path: str | Path) -> str:
    """The kind of a structure source, from its name (see :data:`KINDS`)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "poscar-folder"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "mp-aloe-jsonl"
    if name.endswith((".json", ".json.gz")):
        return "matpes-json"
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    return "structure-file"


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _doc_id(doc: dict[str, Any], fallback: str) -> str:
    for key in ("matpes_id", "material_id", "task_id", "id"):
        if doc.get(key):
            return str(doc[key])
    prov = doc.get("provenance") or {}
    if isinstance(prov, dict) and prov.get("original_mp_id"):
        return f"{prov['original_mp_id']}@{fallback}"
    return fallback


def _doc_atoms(doc: Any, path: Path, where: str) -> Atoms:
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    if not isinstance(doc, dict) or "structure" not in doc:
        raise InputFileError(path, f"{where}: document has no 'structure' key")
    try:
        structure = Structure.from_dict(doc["structure"])
    except Exception as exc:
        raise InputFileError(path, f"{where}: 'structure' is not a pymatgen structure ({exc})") from None
    return AseAtomsAdaptor.get_atoms(structure)


def iter_structures(path: str | Path) -> Iterator[tuple[str, Atoms]]:
    """Yield ``(id, Atoms)`` for every structure in ``path``.

    Raises
    ------
    InputFileError
        Missing file, unreadable content, a bad JSON line (its number is named), a document without a structure.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    kind = detect_kind(path)
    stem = path.name
    if kind == "poscar-folder":
        from aloe.prototypes.library import _is_structure_file

        files = sorted(p for p in path.iterdir() if _is_structure_file(p))
        if not files:
            raise InputFileError(path, "folder holds no POSCAR/CIF files")
        for file in files:
            yield file.name, _read_one(file)
    elif kind == "structure-file":
        yield stem, _read_one(path)
    elif kind == "extxyz":
        from ase.io import iread

        frames = iread(str(path), index=":", format="extxyz")
        k = 0
        while True:
            try:
                atoms = next(frames)
            except StopIteration:
                break
            except Exception as exc:
                raise InputFileError(path, f"frame {k}: {read_problem(exc, 'extxyz')}") from None
            yield str(atoms.info.get("aloe_id", f"{stem}:{k}")), atoms
            k += 1
    else:  # MP-ALOE JSON lines or a MatPES JSON list, streamed by the record reader (structures only)
        from aloe.data.formats import RecordReader

        reader = RecordReader(path, "jsonl" if kind == "mp-aloe-jsonl" else "json", check=False)
        where = "line" if kind == "mp-aloe-jsonl" else "record"
        for k, doc in enumerate(reader):
            yield (
                _doc_id(doc, f"{stem}:{k}"),
                _doc_atoms(doc, path, f"{where} {k + 1 if where == 'line' else k}"),
            )


def _read_one(path: Path) -> Atoms:
    from ase.io import read

    try:
        atoms = read(str(path))
    except Exception as exc:
        raise InputFileError(path, read_problem(exc, "a structure file")) from None
    if not atoms.pbc.all() or atoms.cell.rank != 3:
        raise InputFileError(path, "structure is not periodic in three dimensions")
    return atoms


def read_problem(exc: BaseException, what: str) -> str:
    """What an exception of ASE's readers says about the file, as a short phrase.

    ASE reports an element symbol it does not know as a bare ``KeyError('Xx')``; that becomes
    ``unknown element 'Xx'``. Anything else is ``not readable as <what> (<first line of the error>)``.
    """
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        from ase.data import chemical_symbols

        if exc.args[0] not in chemical_symbols:
            return f"unknown element {exc.args[0]!r}"
    return f"not readable as {what} ({exception_message(exc)})"
