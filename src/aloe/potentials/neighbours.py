"""Periodic neighbour lists of a whole batch, for every model's graph, from one library (matscipy).

One call gives the directed pairs ``(i, j, S)`` of every structure of a :class:`~aloe.structures.StructureBatch`
within a cutoff, in the batch's global atom numbering: atom ``j`` seen from atom ``i`` sits at
``r_j + S @ cell - r_i``. matscipy computes each structure's list in C (a cell list); aloe writes no cell list of
its own.

Why matscipy (issue 21's comparison, 2-core CPU). On 205 systems (200 candidates from the 817 prototypes plus a
halide, a 1-atom Cu cell, an isolated Ar atom in a 10 A box, a 256-atom fcc cell and a skewed Pb2 cell), the
library call alone per system at 5 / 6 A: pymatgen 134 / 146 us, ASE 3298 / 4570 us, matscipy 50 / 68 us, vesin
0.6.2 42 / 50 us. Inside aloe's per-structure function (wrap, call, shift correction, sort), on the 336 points of
an EV scan at 6 A: matscipy 62 us, vesin 101-128 us (its Python wrapper converts and checks every array). Importing
vesin imports torch (1.1 s, also in processes that run only EMT or Lennard-Jones); matscipy 0.07 s. matscipy is
mace-torch's own neighbour library, so it adds no dependency. All give the same pair sets, except at a distance
exactly equal to the cutoff, which pymatgen keeps (``d <= r``, CHGNet's converter) and the others drop (``d < r``,
MACE's lists). :meth:`Neighbours.within` reproduces either rule from one list computed a little beyond the cutoff.

Positions need not be wrapped into the cell (MD drifts out of it): each structure is wrapped before matscipy sees
it and the shifts are corrected back, so ``S`` always refers to the positions as given.

Sharing. :func:`neighbour_list` keeps, in a committee's ``shared`` scratch dict, the list of the largest cutoff
asked so far and serves every smaller cutoff by filtering it (CHGNet 0.3.0/r2scan at 6 A and 0.2.0 at 5 A compute
one list). A :class:`VerletNeighbours` placed in the scratch under :data:`VERLET_KEY` (MD) serves the lists from
candidates built with a skin, rebuilt per structure only when needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.errors import one_line

if TYPE_CHECKING:
    from aloe.structures import StructureBatch

#: Key of the cached lists in a ``shared`` scratch dict.
NEIGHBOURS_KEY = "neighbours"
#: Key of a :class:`VerletNeighbours` in a ``shared`` scratch dict.
VERLET_KEY = "verlet-neighbours"
#: pymatgen's ``numerical_tol`` (CHGNet's converter): pairs with ``d <= cutoff + TOLERANCE`` are in.
TOLERANCE = 1e-8
_PERIODIC = np.ones(3, dtype=bool)
#: Lists are computed this much beyond the cutoff asked, so that ``within`` can apply either rule exactly.
_MARGIN = 1e-6


@dataclass(frozen=True)
class Neighbours:
    """Directed neighbour pairs of a batch (each pair appears both ways, ``(i, j, S)`` and ``(j, i, -S)``).

    Attributes
    ----------
    first
        Shape ``(E,)`` int64: centre atom ``i`` (global index into the batch's atoms).
    second
        Shape ``(E,)`` int64: neighbour atom ``j`` (global index).
    shifts
        Shape ``(E, 3)`` int64: cell image ``S`` of the neighbour, ``r_j + S @ cell - r_i``.
    distances
        Shape ``(E,)`` float64: ``|r_j + S @ cell - r_i|`` (A).
    owner
        Shape ``(E,)`` int64: structure (row of the batch) of each pair.
    cutoff
        Every pair with ``d <= cutoff`` is present (the list may hold a few more, up to ``cutoff + 1e-6``).
    failed
        Structure (row) -> why its list could not be computed (its pairs are absent).

    Pairs are ordered by structure, then centre atom, then as the library gives them.
    """

    first: np.ndarray
    second: np.ndarray
    shifts: np.ndarray
    distances: np.ndarray
    owner: np.ndarray
    cutoff: float
    failed: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.first)

    def select(self, keep: np.ndarray, cutoff: float) -> Neighbours:
        """The pairs where ``keep`` (bool mask or indices), complete up to ``cutoff``."""
        return Neighbours(
            self.first[keep],
            self.second[keep],
            self.shifts[keep],
            self.distances[keep],
            self.owner[keep],
            cutoff,
            dict(self.failed),
        )

    def within(self, cutoff: float, *, inclusive: bool = True) -> Neighbours:
        """The pairs closer than ``cutoff``: ``d <= cutoff + 1e-8`` (pymatgen's rule) or ``d < cutoff`` (matscipy's).

        Raises
        ------
        ValueError
            If ``cutoff`` exceeds the cutoff this list is complete to.
        """
        if cutoff > self.cutoff + 1e-12:
            raise ValueError(f"a list complete to {self.cutoff} A cannot give the pairs within {cutoff} A")
        keep = self.distances <= cutoff + TOLERANCE if inclusive else self.distances < cutoff
        return self.select(keep, cutoff)


def _one_structure(
    cell: np.ndarray, frac: np.ndarray, cutoff: float, *, check_cell: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, S, d)`` of one structure (local indices), matscipy's full list on the wrapped positions."""
    from matscipy.neighbours import neighbour_list as library_list

    from aloe.structures import cell_problem

    problem = cell_problem(cell) if check_cell else None
    if problem is not None:
        raise ValueError(problem)
    if not np.isfinite(frac).all():
        raise ValueError("non-finite coordinates")
    images = np.floor(frac)
    wrapped = frac - images
    points = wrapped @ cell
    i, j, shifts, d = library_list("ijSd", positions=points, cell=cell, pbc=_PERIODIC, cutoff=cutoff)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    # r_j + S h - r_i with wrapped r = unwrapped r - n h: the shift of the unwrapped positions is S - n_j + n_i.
    shifts = np.asarray(shifts, dtype=np.int64) - images[j].astype(np.int64) + images[i].astype(np.int64)
    order = np.argsort(i, kind="stable")
    return i[order], j[order], shifts[order], np.asarray(d, dtype=np.float64)[order]


def compute_neighbours(batch: StructureBatch, cutoff: float) -> Neighbours:
    """The neighbour pairs of ``batch`` with ``d <= cutoff`` (plus up to 1e-6 A more).

    Parameters
    ----------
    batch
        The structures (periodic in three dimensions).
    cutoff
        Radius (A).
    """
    parts: list[tuple[np.ndarray, ...]] = []
    failed: dict[int, str] = {}
    radius = float(cutoff) + _MARGIN
    usable = _usable_cells(batch.cell)
    for r, cell_ok in enumerate(usable.tolist()):
        start, stop = int(batch.offsets[r]), int(batch.offsets[r + 1])
        try:
            # cells that pass the vectorised test skip the per-structure one (which only gives the reason)
            i, j, shifts, d = _one_structure(
                batch.cell[r], batch.frac_coords[start:stop], radius, check_cell=not cell_ok
            )
        except Exception as exc:  # one bad structure must not cost the others their lists
            failed[r] = one_line(exc)
            continue
        # pymatgen (and so CHGNet) leaves out only an atom's own zero-length image; matscipy does the same.
        parts.append((i + start, j + start, shifts, d, np.full(len(i), r, dtype=np.int64)))
    return _joined(parts, cutoff, failed)


def _usable_cells(cells: np.ndarray) -> np.ndarray:
    """Shape ``(m,)`` bool: :func:`aloe.structures.cell_problem` finds nothing, for many cells at once."""
    from aloe.structures import MIN_CELL_VOLUME, MIN_CELL_VOLUME_RATIO

    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    finite = np.isfinite(cells).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], cells, 0.0)
    volume = np.abs(np.linalg.det(safe)) if len(safe) else np.zeros(0)
    lengths = np.prod(np.linalg.norm(safe, axis=2), axis=1)
    return finite & (volume >= MIN_CELL_VOLUME) & (volume >= MIN_CELL_VOLUME_RATIO * lengths)


def _joined(parts: list[tuple[np.ndarray, ...]], cutoff: float, failed: dict[int, str]) -> Neighbours:
    """One :class:`Neighbours` of per-structure ``(first, second, shifts, distances, owner)`` parts."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Neighbours(
            empty, empty, np.zeros((0, 3), dtype=np.int64), np.zeros(0), empty, float(cutoff), failed
        )
    first, second, shifts, distances, owner = (np.concatenate(x) for x in zip(*parts, strict=True))
    return Neighbours(first, second, shifts.reshape(-1, 3), distances, owner, float(cutoff), failed)


def neighbour_list(
    batch: StructureBatch, cutoff: float, shared: dict[str, Any] | None = None, *, inclusive: bool = True
) -> Neighbours:
    """The pairs of ``batch`` within ``cutoff``, computed once per scratch dict for all smaller cutoffs.

    Parameters
    ----------
    batch
        The structures.
    cutoff
        Radius (A).
    shared
        A committee's scratch dict for this batch (see :meth:`aloe.potentials.base.Potential.predict`): the list
        is kept there, and a :class:`VerletNeighbours` found there under :data:`VERLET_KEY` supplies it.
    inclusive
        ``d <= cutoff`` (pymatgen, CHGNet) or ``d < cutoff`` (matscipy, MACE).
    """
    cutoff = float(cutoff)
    if shared is None:
        return compute_neighbours(batch, cutoff).within(cutoff, inclusive=inclusive)
    cached: Neighbours | None = shared.get(NEIGHBOURS_KEY)
    if cached is None or cached.cutoff < cutoff:
        verlet: VerletNeighbours | None = shared.get(VERLET_KEY)
        cached = verlet.neighbours(batch, cutoff) if verlet is not None else compute_neighbours(batch, cutoff)
        shared[NEIGHBOURS_KEY] = cached
    return cached.within(cutoff, inclusive=inclusive)


@dataclass
class _Candidates:
    """One structure's Verlet candidates: pairs within ``cutoff + skin`` of the positions and cell they came from."""

    first: np.ndarray
    second: np.ndarray
    shifts: np.ndarray
    cutoff: float
    positions: np.ndarray
    cell: np.ndarray
    numbers: np.ndarray


@dataclass
class VerletNeighbours:
    """Verlet lists: each structure's pairs within ``cutoff + skin``, reused until an atom moved ``skin / 2``.

    A structure's candidates are rebuilt when an atom moved more than half the skin since they were built (measured
    after undoing the cell's change, and with the skin shrunk by that change: a pair that was beyond
    ``cutoff + skin`` may not have come within ``cutoff``), when its cell changed by more than ``max_strain`` (any
    component of ``h0^-1 h - 1``, NPT), or when a larger cutoff is asked. Every call filters the candidates with
    the current positions, so the pairs within the cutoff are exactly those a fresh list gives.

    Structures are told apart by their batch ids (which must be unique within a batch).

    Parameters
    ----------
    skin
        Extra radius (A).
    max_strain
        Largest change of the cell (strain component) before a rebuild.

    Attributes
    ----------
    builds
        Number of structure lists built so far (for tests and benchmarks).
    calls
        Number of structure lists served.
    """

    skin: float = 1.0
    max_strain: float = 0.01
    builds: int = 0
    calls: int = 0
    _entries: dict[str, _Candidates] = field(default_factory=dict, repr=False)

    def forget(self, ids: list[str] | None = None) -> None:
        """Drop the candidates of ``ids`` (default all)."""
        if ids is None:
            self._entries.clear()
        for key in ids or []:
            self._entries.pop(key, None)

    def _stale(
        self,
        entry: _Candidates | None,
        cell: np.ndarray,
        positions: np.ndarray,
        numbers: np.ndarray,
        cutoff: float,
    ) -> bool:
        """Whether a pair outside ``entry``'s candidates could now be within ``cutoff`` (or the cell moved too far)."""
        if entry is None or entry.cutoff < cutoff or not np.array_equal(entry.numbers, numbers):
            return True
        # h = h0 (1 + E). Positions mapped back to the build's cell, r h^-1 h0, moved at most delta; then a pair
        # vector v (|v| > cutoff + skin when built) is now at least (|v| - 2 delta)(1 - |E|_2) long.
        change = np.linalg.solve(entry.cell.T, cell.T).T - np.eye(3)  # E = h0^-1 h - 1
        if not np.all(np.abs(change) <= self.max_strain):
            return True
        back = np.linalg.solve(cell.T, entry.cell.T).T  # h^-1 h0
        moved = positions @ back - entry.positions
        delta = float(np.sqrt(np.max(np.einsum("ij,ij->i", moved, moved)))) if len(moved) else 0.0
        shortest = (entry.cutoff - 2.0 * delta) * (1.0 - float(np.linalg.norm(change, 2)))
        return not shortest > cutoff + _MARGIN

    def neighbours(self, batch: StructureBatch, cutoff: float) -> Neighbours:
        """The pairs of ``batch`` with ``d <= cutoff`` (complete to ``cutoff``), from candidates where they hold."""
        if len(set(batch.ids)) != len(batch.ids):
            raise ValueError("Verlet lists need unique structure ids in a batch")
        positions_all = batch.positions
        parts: list[tuple[np.ndarray, ...]] = []
        failed: dict[int, str] = {}
        for r, key in enumerate(batch.ids):
            start, stop = int(batch.offsets[r]), int(batch.offsets[r + 1])
            cell = batch.cell[r]
            positions = positions_all[start:stop]
            numbers = batch.numbers[start:stop]
            entry = self._entries.get(key)
            self.calls += 1
            try:  # a singular cell makes the staleness test raise too: it fails this structure only
                if self._stale(entry, cell, positions, numbers, cutoff):
                    i, j, shifts, _ = _one_structure(cell, batch.frac_coords[start:stop], cutoff + self.skin)
                    entry = _Candidates(
                        i, j, shifts, cutoff + self.skin, positions.copy(), cell.copy(), numbers.copy()
                    )
                    self._entries[key] = entry
                    self.builds += 1
            except Exception as exc:
                failed[r] = one_line(exc)
                self._entries.pop(key, None)
                continue
            vectors = positions[entry.second] + entry.shifts @ cell - positions[entry.first]
            d = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
            keep = d <= cutoff + _MARGIN
            parts.append(
                (
                    entry.first[keep] + start,
                    entry.second[keep] + start,
                    entry.shifts[keep],
                    d[keep],
                    np.full(int(keep.sum()), r, dtype=np.int64),
                )
            )
        return _joined(parts, cutoff, failed)
