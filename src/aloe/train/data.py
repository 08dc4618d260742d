"""Training data for mace-torch: records from label runs and record files, deduplicated, split, as extxyz.

Records are read and written with :mod:`aloe.data.formats` (MP-ALOE JSON lines, MatPES JSON, extxyz, ASE
database; every record checked for its required keys and shapes). :func:`gather` keeps the ids of the records,
not the records: :meth:`Dataset.iter_records` reads them again from the inputs, one at a time, so memory grows
with the number of ids only.

A member's parts are written in :mod:`aloe.data.formats`'s extxyz layout, or as mace-torch's HDF5 shards made
from the same ``Atoms`` (:mod:`aloe.train.shards`). That layout is what mace-torch 0.3.16 reads with
``--energy_key=REF_energy --forces_key=REF_forces --stress_key=REF_stress`` (checked in mace's code:
``mace/data/utils.py`` ``config_from_atoms`` takes ``info[stress_key]`` and ``arrays[forces_key]`` as they are;
``mace/data/atomic_data.py`` turns a 6-vector stress into 3x3 with ``voigt_to_matrix``, order xx, yy, zz, yz,
xz, xy; the loss compares it with the model's stress, ``dE/d(strain) / V`` in eV/A^3 with ASE's sign,
``mace/modules/utils.py`` ``compute_forces_virials``):

``info["REF_energy"]``
    Total energy, eV.
``arrays["REF_forces"]``
    eV/A.
``info["REF_stress"]``
    Six Voigt values (xx, yy, zz, yz, xz, xy) in eV/A^3 with ASE's sign (tensile positive): the records' kbar
    with VASP's sign (compressive positive) times ``-1 / 1602.1766208``.
``info["aloe_record_id"]``, ``info["matpes_id"]``, ``info["functional"]``
    Ids for tracing (mace ignores them).

Numbers are written in their shortest exact form, so mace reads the records' values bit for bit.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from aloe import layout
from aloe.data.formats import read_records, structure_arrays, write_records
from aloe.errors import AloeError, InputFileError

if TYPE_CHECKING:
    from ase import Atoms

RECORDS_DIR = layout.RECORDS
ISOLATED_ATOMS_FILE = layout.ISOLATED_ATOMS_FILE
#: Agreement needed between the isolated-atom energies of two label runs (eV).
E0_TOLERANCE = 1e-6
#: Keys of a published document that name it, in the order tried when a record has no ``aloe_record_id``.
ID_KEYS = ("aloe_record_id", "matpes_id", "mp_aloe_id")


@dataclass
class Dataset:
    """The usable records of the inputs, in input order (the first occurrence of each id), read lazily.

    Only what is small per record stays in memory: the ids, each record's position among all the records read
    (``ordinals``) and the files they came from. :meth:`iter_records` reads the records again, one at a time,
    from the same files; memory grows with the number of ids, never with the records themselves.
    """

    ids: list[str] = field(default_factory=list)
    numbers: set[int] = field(default_factory=set)
    isolated: dict[str, float] = field(default_factory=dict)
    isolated_sources: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    functionals: Counter[str] = field(default_factory=Counter)
    read: int = 0
    duplicates: int = 0
    #: Every record file read, in reading order: (path, format; None = from the name).
    files: list[tuple[Path, str | None]] = field(default_factory=list)
    #: Per id: the record's position among all the records read (duplicates included), ascending.
    ordinals: array = field(default_factory=lambda: array("q"))

    @property
    def elements(self) -> list[str]:
        """The elements of the dataset, by atomic number."""
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in sorted(self.numbers)]

    def digest(self) -> str:
        """A hash of the sorted ids (detects inputs that changed between a run and its resumption)."""
        text = "\n".join(sorted(self.ids))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def iter_records(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(index, record)`` for the dataset indices ``indices`` (all when None), in dataset order.

        One pass over the input files; a record is checked against its id as it is read again.

        Raises
        ------
        AloeError
            The inputs changed since they were gathered (a record with another id, or too few records).
        """
        n = len(self.ids)
        wanted = None
        last = n - 1
        if indices is not None:
            wanted = np.zeros(n, dtype=bool)
            wanted[np.asarray(list(indices), dtype=np.int64)] = True
            if not wanted.any():
                return
            last = int(np.flatnonzero(wanted)[-1])
        i = 0
        for ordinal, record in enumerate(self._read_files()):
            if ordinal != self.ordinals[i]:
                continue
            if wanted is None or wanted[i]:
                if record_id(record) != self.ids[i]:
                    raise AloeError(
                        f"the inputs changed while training data were prepared: record {ordinal} should be "
                        f"{self.ids[i]} but is {record_id(record)}; run again"
                    )
                yield i, record
            if i == last:
                return
            i += 1
        raise AloeError(
            f"the inputs changed while training data were prepared: {i} of {n} records found again; run again"
        )

    def load_records(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The records at ``indices``, in dataset order (in memory: for a few records only)."""
        return [record for _, record in self.iter_records(indices)]

    def _read_files(self) -> Iterator[dict[str, Any]]:
        for path, fmt in self.files:
            yield from read_records(path, fmt)


# ---- reading -----------------------------------------------------------------------------------------------
def gather(inputs: list[Path]) -> Dataset:
    """Read every input; deduplicate by record id (``aloe_record_id``, a published id, or a content hash).

    The records are not kept (see :class:`Dataset`).

    Raises
    ------
    AloeError
        No inputs, an unreadable input, a bad record (file and line named), conflicting isolated-atom
        energies, or no records at all.
    """
    from ase.data import atomic_numbers

    if not inputs:
        raise AloeError(
            "train needs inputs: label run folders or record files "
            "(.jsonl[.gz], .json[.gz], .xyz/.extxyz, .db)"
        )
    data = Dataset()
    seen: set[str] = set()
    for path in inputs:
        path = Path(path)
        count = dups = 0
        functionals: Counter[str] = Counter()
        for file, fmt in _input_files(path, data):
            data.files.append((file, fmt))
            for record in read_records(file, fmt):
                data.read += 1
                rid = record_id(record)
                if rid in seen:
                    dups += 1
                    continue
                seen.add(rid)
                data.ids.append(rid)
                data.ordinals.append(data.read - 1)
                data.numbers.update(
                    atomic_numbers[site["species"][0]["element"]] for site in record["structure"]["sites"]
                )
                functionals[str(record.get("functional") or "unknown")] += 1
                count += 1
        data.duplicates += dups
        data.functionals.update(functionals)
        data.sources.append(
            {"path": str(path), "structures": count, "duplicates": dups, "functionals": dict(functionals)}
        )
    if not data.ids:
        names = ", ".join(str(p) for p in inputs)
        raise AloeError(f"no records found in {names}")
    return data


def _input_files(path: Path, data: Dataset) -> list[tuple[Path, str | None]]:
    """The record files of one input (a label run's chunks in order, or the file); merges isolated atoms."""
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    if path.is_dir():
        records = path / RECORDS_DIR
        if not records.is_dir():
            raise InputFileError(path, f"not a label run folder (no {RECORDS_DIR}/ inside)")
        _merge_isolated(path, data)
        return [(file, "jsonl") for file in sorted(records.glob("chunk-*.jsonl"))]
    return [(path, None)]


def record_id(record: dict[str, Any]) -> str:
    """``aloe_record_id``, else a published id (``matpes_id:...``), else a hash of structure and energy."""
    for key in ID_KEYS:
        if record.get(key):
            return str(record[key]) if key == "aloe_record_id" else f"{key}:{record[key]}"
    try:
        cell, symbols, positions, _ = structure_arrays(record["structure"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AloeError(f"a record's structure cannot be read ({exc})") from None
    text = "|".join(
        [
            np.round(cell, 8).tobytes().hex(),
            ",".join(symbols),
            np.round(positions, 8).tobytes().hex(),
            repr(float(record["energy"])),
        ]
    )
    return "sha:" + hashlib.sha256(text.encode()).hexdigest()[:20]


def _merge_isolated(run_dir: Path, data: Dataset) -> None:
    path = run_dir / ISOLATED_ATOMS_FILE
    if not path.exists():
        return
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise InputFileError(path, "invalid YAML") from None
    energies = doc.get("energies") or {}
    if not isinstance(energies, dict):
        raise InputFileError(path, "'energies' must map elements to eV")
    for element, energy in energies.items():
        energy = float(energy)
        old = data.isolated.get(element)
        if old is not None and abs(old - energy) > E0_TOLERANCE:
            raise AloeError(
                f"{path}: isolated {element} atom at {energy:.6f} eV, but {old:.6f} eV in "
                f"{', '.join(data.isolated_sources)}: these inputs have different energy references"
            )
        data.isolated[str(element)] = energy
    data.isolated_sources.append(str(path))


# ---- splits ------------------------------------------------------------------------------------------------
@dataclass
class Split:
    """One member's train/valid/test partition (indices into the dataset, sorted)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    rounded_up: bool


def minimum_for_split(fractions: tuple[float, float, float]) -> int:
    """Structures needed so that every part of the split gets one without rounding up."""
    return int(np.ceil(1.0 / min(fractions) - 1e-9))


def member_split(ids: list[str], fractions: tuple[float, float, float], seed: int, member: int) -> Split:
    """A seeded random split for member ``member``: ``rng([seed, member])`` permutes the ids in sorted order.

    The valid and test parts hold ``round(fraction * n)`` structures, at least one each; the rest is for
    training (at least one). Sorting first makes the split independent of input order.

    Raises
    ------
    AloeError
        Fewer than three structures.
    """
    n = len(ids)
    if n < 3:
        raise AloeError(
            f"{n} structure{'s' if n != 1 else ''} cannot be split: training needs at least 3 (one each for "
            f"train, valid and test), and {minimum_for_split(fractions)} for the "
            f"{'/'.join(f'{100 * f:g}' for f in fractions)} split without rounding up"
        )
    _, f_valid, f_test = fractions
    n_valid = max(1, int(np.floor(f_valid * n + 0.5)))
    n_test = max(1, int(np.floor(f_test * n + 0.5)))
    while n - n_valid - n_test < 1:  # only possible for tiny n with large valid/test fractions
        if n_valid >= n_test and n_valid > 1:
            n_valid -= 1
        else:
            n_test -= 1
    rounded_up = f_valid * n < 1 or f_test * n < 1
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    perm = order[np.random.default_rng([int(seed), int(member)]).permutation(n)]
    test = np.sort(perm[:n_test])
    valid = np.sort(perm[n_test : n_test + n_valid])
    train = np.sort(perm[n_test + n_valid :])
    return Split(train=train, valid=valid, test=test, rounded_up=rounded_up)


def write_extxyz(path: Path, records: list[dict[str, Any]]) -> None:
    """Write records as mace-ready extended XYZ (atomically; see the module docstring for keys and units)."""
    write_records(records, path, "extxyz")


def read_extxyz(path: Path) -> list[Atoms]:
    """The structures of a member's extxyz file (``REF_*`` keys in ``info`` / ``arrays``)."""
    from ase.io import read

    return list(read(str(path), index=":", format="extxyz"))
