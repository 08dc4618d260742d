"""Candidate chunk files: Parquet (pyarrow), one row per structure, plus readers and exporters.

Every stage that passes structures on (generate, screen, select) writes this schema; generate fills it through
:func:`aloe.generate.io.batch_to_table`.

Columns
-------
index (int64), prototype (dictionary string: prototype name), occupation (int16), elements (string, Z order joined
by '-'), seed (int64: the run seed), universe_index (int64: with seed and prototype name, fixes the candidate's random
numbers), n_sites (int16), cell (9 float64, rows of the lattice matrix, A), frac_coords (list of float64, 3 per site),
numbers (list of int16 atomic numbers), scale (float64: the guessed lattice scale), strain (6 float64, Voigt),
source_id (string: where a structure that did not come from ``aloe generate`` was read from; null otherwise).

The same schema holds structures read from other files (``screen`` inputs, selected sets): then ``prototype`` is
the source file, ``occupation`` 0, ``seed`` and ``universe_index`` -1, ``scale`` and ``strain`` NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aloe.elements import z_to_symbol
from aloe.errors import InputFileError

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

    from aloe.structures import StructureBatch

SCHEMA_VERSION = "1"

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("prototype", pa.dictionary(pa.int32(), pa.string())),
        ("occupation", pa.int16()),
        ("elements", pa.string()),
        ("seed", pa.int64()),
        ("universe_index", pa.int64()),
        ("n_sites", pa.int16()),
        ("cell", pa.list_(pa.float64(), 9)),
        ("frac_coords", pa.list_(pa.float64())),
        ("numbers", pa.list_(pa.int16())),
        ("scale", pa.float64()),
        ("strain", pa.list_(pa.float64(), 6)),
        ("source_id", pa.string()),
    ],
    metadata={"aloe.schema": SCHEMA_VERSION, "aloe.kind": "candidates"},
)


def symbol_table() -> np.ndarray:
    """Element symbols indexed by atomic number (index 0 is empty)."""
    return np.array([""] + [z_to_symbol(z) for z in range(1, 119)], dtype=object)


def table_from_atoms(atoms_list: list, ids: list[str], start_index: int, source: str) -> pa.Table:
    """Candidate-schema table of arbitrary structures (see module docstring for how the columns are filled)."""
    from aloe.structures import StructureBatch

    batch = StructureBatch.from_atoms(atoms_list, ids)
    m = len(batch)
    symbols = symbol_table()
    elements = []
    for r in range(m):
        zs = sorted(set(batch.numbers[batch.atom_slice(r)].tolist()))
        elements.append("-".join(symbols[z] for z in zs))
    n = batch.n_atoms
    arrays = [
        pa.array(np.arange(start_index, start_index + m, dtype=np.int64)),
        pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(m, dtype=np.int32)), pa.array([source], pa.string())
        ),
        pa.array(np.zeros(m, dtype=np.int16)),
        pa.array(elements, pa.string()),
        pa.array(np.full(m, -1, dtype=np.int64)),
        pa.array(np.full(m, -1, dtype=np.int64)),
        pa.array(n.astype(np.int16)),
        pa.FixedSizeListArray.from_arrays(pa.array(batch.cell.reshape(-1)), 9),
        pa.ListArray.from_arrays(
            pa.array(batch.offsets * 3, pa.int32()), pa.array(batch.frac_coords.reshape(-1))
        ),
        pa.ListArray.from_arrays(
            pa.array(batch.offsets, pa.int32()), pa.array(batch.numbers.astype(np.int16))
        ),
        pa.array(np.full(m, np.nan)),
        pa.FixedSizeListArray.from_arrays(pa.array(np.full(6 * m, np.nan)), 6),
        pa.array([str(i) for i in ids], pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file (zstd)."""
    pq.write_table(table, str(path), compression="zstd")


class CandidateRows:
    """Candidates read back from a chunk file, with numpy views of the columns.

    Attributes
    ----------
    table
        The Arrow table.
    cell
        Shape ``(m, 3, 3)``.
    frac_coords
        Shape ``(sum(n_sites), 3)``.
    numbers
        Shape ``(sum(n_sites),)``.
    offsets
        Shape ``(m + 1,)``: sites of row ``r`` are ``offsets[r]:offsets[r + 1]``.

    """

    def __init__(self, table: pa.Table) -> None:
        self.table = table.combine_chunks()
        self.index = self.table.column("index").to_numpy()
        self.cell = np.asarray(self.table.column("cell").combine_chunks().flatten()).reshape(-1, 3, 3)
        frac = self.table.column("frac_coords").combine_chunks()
        self.frac_coords = np.asarray(frac.flatten()).reshape(-1, 3)
        nums = self.table.column("numbers").combine_chunks()
        self.numbers = np.asarray(nums.flatten())
        self.offsets = np.asarray(nums.offsets)
        self.prototype = self.table.column("prototype").to_pylist()
        self.elements = self.table.column("elements").to_pylist()
        self.occupation = self.table.column("occupation").to_numpy()
        names = self.table.column_names
        self.source_id = (
            self.table.column("source_id").to_pylist() if "source_id" in names else [None] * len(self)
        )

    def batch(self) -> StructureBatch:
        """The rows as a :class:`~aloe.structures.StructureBatch` (ids are :meth:`label`)."""
        from aloe.structures import StructureBatch

        return StructureBatch(
            cell=self.cell,
            frac_coords=self.frac_coords,
            numbers=self.numbers.astype(np.int64),
            offsets=self.offsets.astype(np.int64),
            ids=[self.label(r) for r in range(len(self))],
        )

    def __len__(self) -> int:
        return self.table.num_rows

    def label(self, row: int) -> str:
        """Readable id: ``<index>_<prototype>_<elements>_occ<k>``, or the source id of a structure read from a file."""
        if self.source_id[row]:
            return str(self.source_id[row])
        return f"{self.index[row]}_{self.prototype[row]}_{self.elements[row]}_occ{self.occupation[row]}"

    def to_atoms(self, row: int) -> Atoms:
        """Row ``row`` as an ASE ``Atoms`` (periodic)."""
        from ase import Atoms

        a, b = self.offsets[row], self.offsets[row + 1]
        atoms = Atoms(
            numbers=self.numbers[a:b], cell=self.cell[row], scaled_positions=self.frac_coords[a:b], pbc=True
        )
        atoms.info.update(
            {
                "aloe_index": int(self.index[row]),
                "prototype": self.prototype[row],
                "elements": self.elements[row],
                "occupation": int(self.occupation[row]),
            }
        )
        return atoms

    def to_structure(self, row: int) -> Structure:
        """Row ``row`` as a pymatgen ``Structure``."""
        from pymatgen.core import Lattice, Structure

        a, b = self.offsets[row], self.offsets[row + 1]
        return Structure(
            Lattice(self.cell[row]),
            self.numbers[a:b].tolist(),
            self.frac_coords[a:b],
            properties={"aloe_index": int(self.index[row]), "prototype": self.prototype[row]},
        )


def read_chunk(path: str | Path) -> CandidateRows:
    """Read one chunk file."""
    try:
        table = pq.read_table(str(path))
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputFileError(path, f"not a readable candidate file ({exc})") from None
    if (table.schema.metadata or {}).get(b"aloe.kind") != b"candidates":
        raise InputFileError(path, "not an aloe candidate file (missing aloe.kind=candidates metadata)")
    return CandidateRows(table)


def chunk_files(run_dir: str | Path) -> list[Path]:
    """Chunk files of a run (its ``chunks/`` folder) or of a folder of chunks, in chunk order."""
    run_dir = Path(run_dir)
    folder = run_dir / "chunks" if (run_dir / "chunks").is_dir() else run_dir
    return sorted(folder.glob("chunk-*.parquet"))


def iter_candidates(run_dir: str | Path) -> Iterator[CandidateRows]:
    """Iterate the chunks of a generate run (memory stays at one chunk)."""
    for path in chunk_files(run_dir):
        yield read_chunk(path)


def count_rows(path: str | Path) -> int:
    """Rows in a Parquet file, from its footer."""
    return pq.ParquetFile(str(path)).metadata.num_rows


def export_extxyz(rows: CandidateRows, path: str | Path) -> None:
    """Write every row to one extended-XYZ file."""
    from ase.io import write

    write(str(path), [rows.to_atoms(r) for r in range(len(rows))], format="extxyz")


def export_poscars(rows: CandidateRows, folder: str | Path) -> None:
    """Write one POSCAR per row into ``folder``, named by :meth:`CandidateRows.label`."""
    from ase.io import write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(len(rows)):
        write(
            str(folder / f"{rows.label(r)}.POSCAR"), rows.to_atoms(r), format="vasp", direct=True, sort=False
        )
