"""Many periodic structures in flat arrays: the currency between stages and potentials.

Like torch-sim's batched state, a :class:`StructureBatch` keeps every structure of a batch in a few arrays (cells,
fractional coordinates, atomic numbers, and offsets that say which atoms belong to which structure), so that stages
and batched models work on arrays, and ASE ``Atoms`` or pymatgen ``Structure`` objects are made only on demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure


@dataclass
class StructureBatch:
    """Periodic structures in flat arrays.

    Attributes
    ----------
    cell
        Shape ``(m, 3, 3)``: lattice vectors as rows (A).
    frac_coords
        Shape ``(n_atoms_total, 3)``: fractional coordinates, rows grouped by structure.
    numbers
        Shape ``(n_atoms_total,)``: atomic numbers.
    offsets
        Shape ``(m + 1,)``: structure ``r`` owns atoms ``offsets[r]:offsets[r + 1]``.
    ids
        ``m`` labels (for messages and outputs).
    """

    cell: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.cell))]

    def __len__(self) -> int:
        return len(self.cell)

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per structure, shape ``(m,)``."""
        return np.diff(self.offsets)

    @property
    def owner(self) -> np.ndarray:
        """Structure index of each atom, shape ``(n_atoms_total,)``."""
        return np.repeat(np.arange(len(self)), self.n_atoms)

    @property
    def positions(self) -> np.ndarray:
        """Cartesian positions, shape ``(n_atoms_total, 3)``."""
        return np.einsum("ai,aij->aj", self.frac_coords, self.cell[self.owner])

    @property
    def volumes(self) -> np.ndarray:
        """Cell volumes (A^3), shape ``(m,)``."""
        return np.abs(np.linalg.det(self.cell))

    def atom_slice(self, row: int) -> slice:
        """Slice of the flat atom arrays that belongs to structure ``row``."""
        return slice(int(self.offsets[row]), int(self.offsets[row + 1]))

    def to_atoms(self, row: int) -> Atoms:
        """Structure ``row`` as a periodic ASE ``Atoms``."""
        from ase import Atoms

        sl = self.atom_slice(row)
        atoms = Atoms(
            numbers=self.numbers[sl], cell=self.cell[row], scaled_positions=self.frac_coords[sl], pbc=True
        )
        atoms.info["aloe_id"] = self.ids[row]
        return atoms

    def to_structure(self, row: int) -> Structure:
        """Structure ``row`` as a pymatgen ``Structure``."""
        from pymatgen.core import Lattice, Structure

        sl = self.atom_slice(row)
        return Structure(Lattice(self.cell[row]), self.numbers[sl].tolist(), self.frac_coords[sl])

    def take(self, rows: Sequence[int] | np.ndarray) -> StructureBatch:
        """A new batch with the structures ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        n = self.n_atoms[rows]
        atom_rows = (
            np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows])
            if len(rows)
            else rows
        )
        return StructureBatch(
            cell=self.cell[rows],
            frac_coords=self.frac_coords[atom_rows],
            numbers=self.numbers[atom_rows],
            offsets=np.concatenate([[0], np.cumsum(n)]).astype(np.int64),
            ids=[self.ids[r] for r in rows],
        )

    def chunks(self, size: int):
        """Yield ``(rows, sub-batch)`` pairs of at most ``size`` structures."""
        for start in range(0, len(self), size):
            rows = np.arange(start, min(start + size, len(self)))
            yield rows, self.take(rows)

    @classmethod
    def from_atoms(cls, atoms_list: Sequence[Atoms], ids: Sequence[str] | None = None) -> StructureBatch:
        """Build from ASE ``Atoms`` (each must have a full 3D cell)."""
        n = np.array([len(a) for a in atoms_list], dtype=np.int64)
        return cls(
            cell=np.array([np.asarray(a.cell[:], dtype=float) for a in atoms_list]).reshape(-1, 3, 3),
            frac_coords=(
                np.concatenate([a.get_scaled_positions(wrap=False) for a in atoms_list])
                if len(atoms_list)
                else np.zeros((0, 3))
            ),
            numbers=(
                np.concatenate([a.numbers for a in atoms_list]).astype(np.int64)
                if len(atoms_list)
                else np.zeros(0, dtype=np.int64)
            ),
            offsets=np.concatenate([[0], np.cumsum(n)]).astype(np.int64),
            ids=list(ids) if ids is not None else [],
        )

    @classmethod
    def from_structures(
        cls, structures: Sequence[Structure], ids: Sequence[str] | None = None
    ) -> StructureBatch:
        """Build from pymatgen ``Structure`` objects (ordered sites)."""
        n = np.array([len(s) for s in structures], dtype=np.int64)
        return cls(
            cell=np.array([s.lattice.matrix for s in structures], dtype=float).reshape(-1, 3, 3),
            frac_coords=np.concatenate([s.frac_coords for s in structures])
            if structures
            else np.zeros((0, 3)),
            numbers=(
                np.array([site.specie.Z for s in structures for site in s], dtype=np.int64)
                if structures
                else np.zeros(0, dtype=np.int64)
            ),
            offsets=np.concatenate([[0], np.cumsum(n)]).astype(np.int64),
            ids=list(ids) if ids is not None else [],
        )

    def min_distances(self) -> np.ndarray:
        """Shortest interatomic distance in each structure (periodic images included), shape ``(m,)``.

        Structures with a single atom report the shortest lattice translation.
        """
        from aloe.prototypes.library import shortest_periodic_distances

        out = np.empty(len(self))
        for r in range(len(self)):
            sl = self.atom_slice(r)
            cutoff = float(np.linalg.norm(self.cell[r], axis=1).max())
            d = shortest_periodic_distances(self.cell[r], self.frac_coords[sl], cutoff)
            out[r] = float(d.min())
        return out

    def info(self) -> dict[str, Any]:
        """Sizes for logs."""
        return {"structures": len(self), "atoms": int(self.offsets[-1])}
