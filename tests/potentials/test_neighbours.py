"""Identity: aloe's batch neighbour lists equal the lists of the libraries the models were written against.

CHGNet's converter calls pymatgen's ``Structure.get_neighbor_list(r, numerical_tol=1e-8)`` (``d <= r``), MACE calls
matscipy's ``neighbour_list("ijS", atoms, r)`` (``d < r``). :func:`neighbour_list` must give exactly their pair sets
``(i, j, image)`` per structure, at CHGNet's two atom cutoffs (5 and 6 A), on the structures that break lists: the
batch-invariance set (bond-less halides, 1-atom cells, isolated atoms in a box, 32/64-atom cells, heavy elements), a
1-atom cell whose neighbours sit exactly at 5.0 A, a 256-atom cell, a skewed and a left-handed cell, and 200 random
candidates of the generate stage. Positions shifted by whole cells (unwrapped, as MD leaves them) must give the same
pairs with images that refer to the positions as given. :class:`VerletNeighbours` must serve, call after call of a
random walk of positions and cell, exactly what a fresh list gives, while building rarely.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aloe.potentials.neighbours import (
    NEIGHBOURS_KEY,
    VERLET_KEY,
    Neighbours,
    VerletNeighbours,
    compute_neighbours,
    neighbour_list,
)
from aloe.structures import StructureBatch
from tests.conftest import PUBLISHED_PROTOTYPES
from tests.potentials.test_batch_invariance import mixed_structures

#: CHGNet's atom cutoffs: 0.2.0 (5 A), 0.3.0 and r2scan (6 A).
CUTOFFS = [5.0, 6.0]
#: Seed of the candidates drawn from the prototypes.
CANDIDATE_SEED = 2025
N_CANDIDATES = 200


# ---- the structures ------------------------------------------------------------------------------------------
def edge_case_structures() -> list[Atoms]:
    """Four structures beyond the batch-invariance set; the comments say what each one exercises."""
    # Two cell vectors swapped: the same crystal with a negative triple product.
    left_handed = bulk("Si", "diamond", a=5.43)
    left_handed.set_cell(left_handed.cell[[1, 0, 2]], scale_atoms=False)
    left_handed.rattle(0.05, seed=1)
    assert np.linalg.det(left_handed.cell[:]) < 0
    return [
        # Neighbours at exactly 5.0 A: d <= r keeps them, d < r does not.
        Atoms("Cu", cell=np.eye(3) * 2.5, pbc=True),
        bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4),  # 256 atoms
        Atoms(  # skewed: many images of few atoms
            "Pb2",
            cell=[[4.0, 0.0, 0.0], [3.5, 3.0, 0.0], [2.0, 2.5, 3.5]],
            scaled_positions=[[0.0, 0.0, 0.0], [0.4, 0.3, 0.6]],
            pbc=True,
        ),
        left_handed,
    ]


#: Row of the exact-5.0 A cell in :func:`identity_batch` (after the 13 mixed structures).
EXACT_CUTOFF_ROW = 13


@lru_cache(maxsize=2)
def _candidate_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from aloe.generate.space import CandidateSpace
    from aloe.prototypes.library import load_prototypes

    # The 817 published prototypes (../shared/data); the built-in AFLOW ones where that folder is absent.
    source = PUBLISHED_PROTOTYPES if PUBLISHED_PROTOTYPES.is_dir() else "builtin"
    library = load_prototypes(source)
    # Only the identity occupation (always the first distinct one): finding the others runs StructureMatcher on
    # every prototype (35-50 s); the candidates are built by the generate stage's own code either way.
    identity = {proto.name: [tuple(range(proto.arity))] for proto in library}
    space = CandidateSpace(library, occupations=identity)
    indices = np.sort(np.random.default_rng(seed).choice(space.size, n, replace=False))
    built = space.build(indices)
    return built.cell, built.frac_coords, built.numbers.astype(np.int64), built.offsets.astype(np.int64)


def prototype_candidates(n: int = N_CANDIDATES, seed: int = CANDIDATE_SEED) -> StructureBatch:
    """``n`` random candidates of the generate stage (perturbed prototypes with random elements), ids ``c<k>``."""
    cell, frac, numbers, offsets = _candidate_arrays(n, seed)
    return StructureBatch(
        cell.copy(), frac.copy(), numbers.copy(), offsets.copy(), [f"c{k}" for k in range(n)]
    )


def concatenated(*batches: StructureBatch) -> StructureBatch:
    """One batch of the structures of ``batches``, in order."""
    sizes = np.concatenate([b.n_atoms for b in batches])
    return StructureBatch(
        cell=np.concatenate([b.cell for b in batches]),
        frac_coords=np.concatenate([b.frac_coords for b in batches]),
        numbers=np.concatenate([b.numbers for b in batches]),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        ids=[i for b in batches for i in b.ids],
    )


def identity_batch() -> StructureBatch:
    """The mixed structures (rows 0-12), the edge cases (13-16) and the 200 candidates."""
    atoms = mixed_structures() + edge_case_structures()
    named = StructureBatch.from_atoms(atoms, ids=[f"m{k}" for k in range(len(atoms))])
    return concatenated(named, prototype_candidates())


@pytest.fixture(scope="module")
def batch() -> StructureBatch:
    return identity_batch()


# ---- comparing pair sets -------------------------------------------------------------------------------------
def sorted_rows(table: np.ndarray) -> np.ndarray:
    """The rows of an integer table in lexicographic order (a canonical form of a multiset of tuples)."""
    table = np.asarray(table, dtype=np.int64)
    return table[np.lexsort(table.T[::-1])]


def pair_table(i: np.ndarray, j: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shape ``(E, 5)``: ``(i, j, S)`` per pair."""
    return np.column_stack([i, j, np.asarray(shifts).reshape(-1, 3)]).astype(np.int64)


def local_pairs(pairs: Neighbours, batch: StructureBatch, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Structure ``row``'s pairs as ``(i, j, S)`` in its own atom numbering, sorted, and their distances."""
    mine = np.flatnonzero(pairs.owner == row)
    start = batch.offsets[row]
    table = pair_table(pairs.first[mine] - start, pairs.second[mine] - start, pairs.shifts[mine])
    order = np.lexsort(table.T[::-1])
    return table[order], pairs.distances[mine][order]


def assert_same_pairs(ours: np.ndarray, reference: np.ndarray, where: str) -> None:
    if np.array_equal(ours, reference):
        return
    mine = {tuple(p) for p in ours.tolist()}
    theirs = {tuple(p) for p in reference.tolist()}
    raise AssertionError(
        f"{where}: {len(ours)} pairs, reference {len(reference)}; only ours {sorted(mine - theirs)[:5]}, "
        f"only the reference's {sorted(theirs - mine)[:5]}, duplicates {len(ours) - len(mine)}"
    )


def pymatgen_pairs(batch: StructureBatch, row: int, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """CHGNet's converter call, sorted, with its distances."""
    centre, neighbour, images, distances = batch.to_structure(row).get_neighbor_list(
        cutoff, numerical_tol=1e-8
    )
    table = pair_table(centre, neighbour, np.rint(images))
    order = np.lexsort(table.T[::-1])
    return table[order], np.asarray(distances)[order]


def matscipy_pairs(batch: StructureBatch, row: int, cutoff: float) -> np.ndarray:
    """MACE's call (matscipy), sorted."""
    from matscipy.neighbours import neighbour_list as matscipy_list

    i, j, shifts = matscipy_list("ijS", batch.to_atoms(row), cutoff)
    return sorted_rows(pair_table(i, j, shifts))


# ---- the structure set guards the tests' meaning --------------------------------------------------------------
def test_structure_set_holds_the_hard_cases(batch):
    assert len(batch) == 13 + 4 + N_CANDIDATES
    assert batch.n_atoms.max() == 256 and np.any(batch.n_atoms == 1)
    assert np.linalg.det(batch.cell[16]) < 0
    at_5 = neighbour_list(batch, 5.0)
    # The exact-cutoff cell: the two rules differ there, and only there among the hand-made structures.
    inclusive = local_pairs(at_5, batch, EXACT_CUTOFF_ROW)[0]
    exclusive = local_pairs(neighbour_list(batch, 5.0, inclusive=False), batch, EXACT_CUTOFF_ROW)[0]
    assert len(inclusive) - len(exclusive) == 6  # the six neighbours at (+-2, 0, 0) ... exactly 5.0 A away
    # The isolated atoms in big boxes have no pair; every other structure has some.
    assert set(range(len(batch))) - set(at_5.owner.tolist()) == {5, 9}


# ---- identity with pymatgen (CHGNet) and matscipy (MACE) -----------------------------------------------------
@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_inclusive_list_equals_pymatgen(batch, cutoff):
    pairs = neighbour_list(batch, cutoff, inclusive=True)
    assert pairs.failed == {}
    for row in range(len(batch)):
        ours, our_distances = local_pairs(pairs, batch, row)
        reference, distances = pymatgen_pairs(batch, row, cutoff)
        assert_same_pairs(ours, reference, f"row {row} ({batch.ids[row]}) at {cutoff} A")
        np.testing.assert_allclose(our_distances, distances, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_exclusive_list_equals_matscipy(batch, cutoff):
    pairs = neighbour_list(batch, cutoff, inclusive=False)
    for row in range(len(batch)):
        ours = local_pairs(pairs, batch, row)[0]
        assert_same_pairs(
            ours, matscipy_pairs(batch, row, cutoff), f"row {row} ({batch.ids[row]}) at {cutoff} A"
        )


@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_unwrapped_positions_keep_their_pairs(batch, cutoff):
    # Every atom moved by whole cells (n_i): pair (i, j, S) of the wrapped positions is (i, j, S - n_j + n_i) of the
    # moved ones, at the same distance, and the images must place atom j there from the positions as given.
    cells_moved = np.random.default_rng(11).integers(-3, 4, batch.frac_coords.shape)
    moved = StructureBatch(
        batch.cell, batch.frac_coords + cells_moved, batch.numbers, batch.offsets, batch.ids
    )
    before = neighbour_list(batch, cutoff)
    after = neighbour_list(moved, cutoff)
    assert after.failed == {}

    vectors = (
        moved.positions[after.second]
        + np.einsum("ek,ekl->el", after.shifts, moved.cell[after.owner])
        - moved.positions[after.first]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), after.distances, rtol=0, atol=1e-9)
    assert np.all(after.distances <= cutoff + 1e-8)

    expected_shifts = before.shifts - cells_moved[before.second] + cells_moved[before.first]
    for row in range(len(batch)):
        where = f"row {row} ({batch.ids[row]}) at {cutoff} A"
        ours, our_distances = local_pairs(after, moved, row)
        mine = np.flatnonzero(before.owner == row)
        start = batch.offsets[row]
        expected = pair_table(before.first[mine] - start, before.second[mine] - start, expected_shifts[mine])
        order = np.lexsort(expected.T[::-1])
        assert_same_pairs(ours, expected[order], where)
        np.testing.assert_allclose(our_distances, before.distances[mine][order], rtol=0, atol=1e-9)
        # pymatgen, given the same unwrapped coordinates, also agrees.
        assert_same_pairs(ours, pymatgen_pairs(moved, row, cutoff)[0], where + " (pymatgen, unwrapped)")


# ---- the shared cache ---------------------------------------------------------------------------------------
def assert_same_lists(ours: Neighbours, reference: Neighbours, batch: StructureBatch, where: str) -> None:
    """Equal pair sets per structure, and equal distances (to 1e-12 A)."""
    assert np.array_equal(np.unique(ours.owner), np.unique(reference.owner)), where
    for row in range(len(batch)):
        mine, my_distances = local_pairs(ours, batch, row)
        theirs, distances = local_pairs(reference, batch, row)
        assert_same_pairs(mine, theirs, f"{where}, row {row} ({batch.ids[row]})")
        np.testing.assert_allclose(my_distances, distances, rtol=0, atol=1e-12, err_msg=where)


def test_shared_list_serves_smaller_cutoffs_by_filtering(batch):
    shared: dict = {}
    at_6 = neighbour_list(batch, 6.0, shared)
    cached = shared[NEIGHBOURS_KEY]
    assert cached.cutoff == 6.0
    assert_same_lists(at_6, neighbour_list(batch, 6.0), batch, "6 A through the cache")
    for inclusive in (True, False):
        at_5 = neighbour_list(batch, 5.0, shared, inclusive=inclusive)
        assert shared[NEIGHBOURS_KEY] is cached  # filtered, not computed again
        fresh = neighbour_list(batch, 5.0, inclusive=inclusive)
        assert_same_lists(at_5, fresh, batch, f"5 A filtered from 6 A (inclusive={inclusive})")
    # A larger cutoff than the cached one is computed, and then kept.
    neighbour_list(batch, 6.5, shared)
    assert shared[NEIGHBOURS_KEY] is not cached and shared[NEIGHBOURS_KEY].cutoff == 6.5


# ---- bad structures fail alone ------------------------------------------------------------------------------
def _with_bad_rows() -> tuple[StructureBatch, dict[int, str]]:
    """Six structures; rows 1 (NaN cell), 3 (zero cell) and 5 (NaN position) cannot have a list."""
    atoms = [
        bulk("Cu", "fcc", a=3.62),
        bulk("Al", "fcc", a=4.05),
        bulk("Si", "diamond", a=5.43),
        bulk("Fe", "bcc", a=2.87),
        bulk("NaCl", "rocksalt", a=5.64),
        bulk("Mg"),
    ]
    batch = StructureBatch.from_atoms(atoms, ids=[f"b{k}" for k in range(len(atoms))])
    batch.cell[1] = np.nan
    batch.cell[3] = 0.0
    batch.frac_coords[batch.offsets[5]] = np.nan
    return batch, {1: "NaN", 3: "degenerate", 5: "non-finite"}


def _verlet_list(batch: StructureBatch, cutoff: float) -> Neighbours:
    return VerletNeighbours().neighbours(batch, cutoff)


def _shared_list(batch: StructureBatch, cutoff: float) -> Neighbours:
    return neighbour_list(batch, cutoff, shared={})


def _list_through_verlet(batch: StructureBatch, cutoff: float) -> Neighbours:
    return neighbour_list(batch, cutoff, shared={VERLET_KEY: VerletNeighbours()})


@pytest.mark.parametrize(
    "make_list",
    [
        compute_neighbours,
        neighbour_list,
        _shared_list,
        _verlet_list,
        _list_through_verlet,
    ],
)
def test_bad_cells_fail_alone(make_list):
    batch, reasons = _with_bad_rows()
    pairs = make_list(batch, 5.0)
    assert sorted(pairs.failed) == sorted(reasons)
    for row, word in reasons.items():
        assert word in pairs.failed[row], (row, pairs.failed[row])
    assert set(pairs.owner.tolist()) == {0, 2, 4}
    for row in (0, 2, 4):
        alone = batch.take([row])
        ours = local_pairs(pairs, batch, row)[0]
        assert_same_pairs(ours, local_pairs(neighbour_list(alone, 5.0), alone, 0)[0], f"row {row}")


# ---- Verlet lists ----------------------------------------------------------------------------------------------
def _walkers() -> StructureBatch:
    """Four structures for the random walk: a 1-atom cell (many images), 8, 2 (sheared) and 32 atoms."""
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.set_cell(
        nacl.cell[:] @ np.array([[1.0, 0.05, 0.0], [0.0, 1.0, 0.08], [0.03, 0.0, 1.0]]), scale_atoms=True
    )
    atoms = [
        bulk("Cu", "fcc", a=3.62),
        bulk("Si", "diamond", a=5.43, cubic=True),
        nacl,
        bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2),
    ]
    for seed, structure in enumerate(atoms):
        structure.rattle(0.05, seed=seed)
    return StructureBatch.from_atoms(atoms, ids=[f"w{k}" for k in range(len(atoms))])


def batch_pairs(pairs: Neighbours) -> tuple[np.ndarray, np.ndarray]:
    """All pairs as ``(structure, i, j, S)`` (global atom numbers), sorted, and their distances."""
    table = np.column_stack([pairs.owner, pair_table(pairs.first, pairs.second, pairs.shifts)])
    order = np.lexsort(table.T[::-1])
    return table[order], pairs.distances[order]


def assert_verlet_equals_fresh(
    verlet: VerletNeighbours, batch: StructureBatch, cutoff: float, where: str
) -> None:
    """The Verlet list of ``batch`` holds exactly a fresh list's pairs, at the same distances (1e-12 A)."""
    served = verlet.neighbours(batch, cutoff)
    fresh = compute_neighbours(batch, cutoff)
    for inclusive in (True, False):
        ours, our_distances = batch_pairs(served.within(cutoff, inclusive=inclusive))
        expected, distances = batch_pairs(fresh.within(cutoff, inclusive=inclusive))
        assert_same_pairs(ours, expected, f"{where}, {cutoff} A, inclusive={inclusive}")
        np.testing.assert_allclose(our_distances, distances, rtol=0, atol=1e-12, err_msg=where)


def test_verlet_lists_equal_fresh_lists_along_a_random_walk():
    # MD-like: every step moves the atoms a little and strains the cell a little more (NPT), the committee asks
    # 6 A then 5 A, and every 50 steps the positions are wrapped back into the cell (a jump by whole cells).
    batch = _walkers()
    rng = np.random.default_rng(3)
    cell0 = batch.cell.copy()
    strain = np.zeros((len(batch), 3, 3))
    verlet = VerletNeighbours(skin=1.0, max_strain=0.01)
    for step in range(200):
        if step:
            displacement = rng.normal(0.0, 0.03, batch.frac_coords.shape)  # A
            inverse = np.linalg.inv(batch.cell)[batch.owner]
            batch.frac_coords += np.einsum("ai,aij->aj", displacement, inverse)
            strain += rng.normal(0.0, 6e-4, strain.shape)
            batch.cell = cell0 @ (np.eye(3) + strain)  # fractional coordinates follow the cell
        if step % 50 == 49:
            batch.frac_coords -= np.floor(batch.frac_coords)
        for cutoff in (6.0, 5.0):
            assert_verlet_equals_fresh(verlet, batch, cutoff, f"step {step}")
    assert verlet.calls == 200 * 2 * len(batch)
    # Rebuilt along the way (wraps, drift, strain: 33 builds with this seed), but far less often than called.
    assert len(batch) < verlet.builds <= verlet.calls // 10, (verlet.builds, verlet.calls)


def test_verlet_rebuilds_only_what_moved_too_far():
    batch = _walkers()
    verlet = VerletNeighbours(skin=1.0, max_strain=0.01)
    m = len(batch)
    assert_verlet_equals_fresh(verlet, batch, 5.0, "first call")
    assert verlet.builds == m
    # Small changes: candidates reused.
    batch.frac_coords[batch.offsets[1]] += np.array([0.1, 0.0, 0.0]) @ np.linalg.inv(batch.cell[1])
    batch.cell = batch.cell @ (np.eye(3) + 0.002 * np.eye(3))
    assert_verlet_equals_fresh(verlet, batch, 5.0, "small move")
    assert verlet.builds == m
    # One atom of structure 3 moved by 0.6 A (more than skin / 2): that structure alone is rebuilt.
    batch.frac_coords[batch.offsets[3] + 5] += np.array([0.0, 0.6, 0.0]) @ np.linalg.inv(batch.cell[3])
    assert_verlet_equals_fresh(verlet, batch, 5.0, "big move")
    assert verlet.builds == m + 1
    # A strain beyond max_strain rebuilds every structure; so does a cutoff beyond the candidates' (5 + 1 A).
    batch.cell = batch.cell @ (np.eye(3) + np.diag([0.02, 0.0, 0.0]))
    assert_verlet_equals_fresh(verlet, batch, 5.0, "big strain")
    assert verlet.builds == 2 * m + 1
    assert_verlet_equals_fresh(verlet, batch, 6.5, "larger cutoff")
    assert verlet.builds == 3 * m + 1
    assert verlet.calls == 5 * m


def test_verlet_needs_unique_ids():
    batch = _walkers()
    batch.ids[2] = batch.ids[0]
    with pytest.raises(ValueError, match="unique"):
        VerletNeighbours().neighbours(batch, 5.0)
