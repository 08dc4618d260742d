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

#: A cell is degenerate when its volume is below this (A^3) ...
MIN_CELL_VOLUME = 1e-6
#: ... or below this share of ``a * b * c`` (its vectors are nearly coplanar: no inverse worth the name).
MIN_CELL_VOLUME_RATIO = 1e-8


def cell_problem(cell: np.ndarray) -> str | None:
    """What makes ``cell`` unusable as a periodic 3D cell, or ``None`` when it is fine.

    Parameters
    ----------
    cell
        Shape ``(3, 3)``: lattice vectors as rows (A).

    Returns
    -------
    str or None
        A short phrase (``"degenerate cell (volume 0 A^3)"``) for a cell with non-finite entries or a zero (or
        vanishingly small) volume, such as the all-zero cell of a non-periodic xyz file.
    """
    cell = np.asarray(cell, dtype=float)
    if cell.shape != (3, 3):
        return f"cell has shape {cell.shape}, not (3, 3)"
    if not np.isfinite(cell).all():
        return "cell holds NaN or infinite values"
    volume = abs(float(np.linalg.det(cell)))
    if volume < MIN_CELL_VOLUME or volume < MIN_CELL_VOLUME_RATIO * float(
        np.prod(np.linalg.norm(cell, axis=1))
    ):
        return f"degenerate cell (volume {volume:.3g} A^3)"
    return None


def row_matmul(x: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Row vectors times per-row matrices: ``x[a] @ mats[a]``, summed in a fixed order.

    Shapes ``(n, 3), (n, 3, 3) -> (n, 3)``. Written out (not ``einsum``/BLAS) so a row's result never depends on
    how many other rows the call holds: a structure's numbers are bit-identical alone and in any batch.
    """
    return x[:, 0, None] * mats[:, 0] + x[:, 1, None] * mats[:, 1] + x[:, 2, None] * mats[:, 2]


def scaled_positions(atoms: Atoms) -> np.ndarray:
    """Fractional coordinates of ``atoms``, unwrapped, also for a cell that :func:`cell_problem` rejects.

    A usable cell gives ASE's own ``get_scaled_positions(wrap=False)``. A degenerate cell has no inverse: its
    least-squares coordinates (pseudo-inverse) keep the positions within the span of the cell vectors, so the
    structure can be carried to the stage that records it as a per-structure failure instead of stopping the
    run; a cell with non-finite entries gives NaN.
    """
    cell = np.asarray(atoms.cell[:], dtype=float)
    if cell_problem(cell) is None:
        return atoms.get_scaled_positions(wrap=False)
    if not np.isfinite(cell).all():
        return np.full((len(atoms), 3), np.nan)
    return np.asarray(atoms.positions, dtype=float) @ np.linalg.pinv(cell)


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
        if cell_problem(self.cell[row]) is None:
            atoms = Atoms(
                numbers=self.numbers[sl], cell=self.cell[row], scaled_positions=self.frac_coords[sl], pbc=True
            )
        else:  # ASE needs a full 3D cell for scaled positions; the stage records this one as a failure
            positions = np.dot(self.frac_coords[sl], np.nan_to_num(self.cell[row]))
            atoms = Atoms(numbers=self.numbers[sl], cell=self.cell[row], positions=positions, pbc=True)
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
                np.concatenate([scaled_positions(a) for a in atoms_list])
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

    def problems(self) -> dict[int, str]:
        """Structures that no model or code can treat, with the reason: ``{row: phrase}``.

        A degenerate cell (see :func:`cell_problem`), non-finite coordinates, or no atoms. Stages record these
        rows as per-structure failures instead of passing them on.
        """
        out: dict[int, str] = {}
        for r in range(len(self)):
            sl = self.atom_slice(r)
            problem = cell_problem(self.cell[r])
            if problem is None and sl.stop == sl.start:
                problem = "structure has no atoms"
            if problem is None and not np.isfinite(self.frac_coords[sl]).all():
                problem = "atomic positions hold NaN or infinite values"
            if problem is not None:
                out[r] = problem
        return out

    def min_distances(self) -> np.ndarray:
        """Shortest interatomic distance in each structure (periodic images included), shape ``(m,)``.

        Structures with a single atom report the shortest lattice translation; two atoms at the same point are 0
        apart. Structures with a :meth:`problems` entry report NaN.
        """
        out = np.empty(len(self))
        bad = self.problems()
        for r in range(len(self)):
            if r in bad:
                out[r] = np.nan
                continue
            sl = self.atom_slice(r)
            cutoff = float(np.linalg.norm(self.cell[r], axis=1).max())
            d = shortest_periodic_distances(self.cell[r], self.frac_coords[sl], cutoff)
            out[r] = float(d.min())
        return out

    def info(self) -> dict[str, Any]:
        """Sizes for logs."""
        return {"structures": len(self), "atoms": int(self.offsets[-1])}


def shortest_periodic_distances(lattice: np.ndarray, frac_coords: np.ndarray, cutoff: float) -> np.ndarray:
    """Shortest periodic distance between every pair of sites, self-images included.

    Parameters
    ----------
    lattice
        Shape ``(3, 3)``, rows are lattice vectors (A).
    frac_coords
        Shape ``(n, 3)`` fractional coordinates.
    cutoff
        Distances above this (A) are reported as ``inf`` (the pair has no neighbour within the cutoff).

    Returns
    -------
    numpy.ndarray
        Shape ``(n, n)``, symmetric. The diagonal is the shortest non-zero lattice translation. Two distinct
        sites at the same point (or at the same point of another image) are 0 apart.

    """
    lattice = np.asarray(lattice, dtype=float)
    frac = np.asarray(frac_coords, dtype=float)
    volume = abs(np.linalg.det(lattice))
    # Images needed along each axis: cutoff over the spacing of the lattice planes (V / |b x c| etc).
    cross = np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]])
    spacing = volume / np.linalg.norm(cross, axis=1)
    reach = np.ceil(cutoff / spacing).astype(int) + 1
    ranges = [np.arange(-r, r + 1) for r in reach]
    images = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    delta = frac[None, :, :] - frac[:, None, :]  # (n, n, 3), j - i
    delta -= np.round(delta)
    cart = (delta[:, :, None, :] + images[None, None, :, :]) @ lattice  # (n, n, n_img, 3)
    dist = np.linalg.norm(cart, axis=-1)
    # Drop only each site's own zero-distance term (i == j, image 0): coincident distinct sites stay at 0.
    origin = int(np.flatnonzero(~images.any(axis=1))[0])
    sites = np.arange(len(frac))
    dist[sites, sites, origin] = np.inf
    best = dist.min(axis=-1)
    best[best > cutoff] = np.inf
    return best
