"""The vectorised candidate builder equals the per-structure pymatgen reference, site by site."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from aloe.generate.reference import build_reference, unrank_combination
from aloe.generate.settings import GenerateSettings
from aloe.generate.space import CandidateSpace
from aloe.prototypes import load_prototypes
from aloe.prototypes.library import PrototypeLibrary

LATTICE_ATOL = 1e-8
FRAC_ATOL = 1e-10


def assert_parity(space: CandidateSpace, indices: np.ndarray) -> None:
    """Build ``indices`` both ways and compare lattice, species, site order and wrapped coordinates."""
    batch = space.build(indices)
    offsets = batch.offsets
    assert batch.index.tolist() == list(indices)
    for row, index in enumerate(indices.tolist()):
        ref = build_reference(space, index)
        proto = space.library[int(batch.prototype[row])]
        where = f"candidate {index} ({proto.name}, occupation {int(batch.occupation[row])})"
        a, b = offsets[row], offsets[row + 1]
        assert len(ref) == b - a, where
        assert [site.specie.Z for site in ref] == batch.numbers[a:b].tolist(), where
        lattice = ref.lattice.matrix
        np.testing.assert_allclose(batch.cell[row], lattice, rtol=0, atol=LATTICE_ATOL, err_msg=where)
        # Equal modulo 1: a coordinate at 0.9999999 on one side may be 0.0 on the other after wrapping.
        delta = batch.frac_coords[a:b] - ref.frac_coords
        delta -= np.round(delta)
        assert np.abs(delta).max() < FRAC_ATOL, where
        assert batch.scale[row] == pytest.approx(ref.properties["scale"], rel=1e-12), where
        strain = ref.properties["strain"]
        np.testing.assert_allclose(batch.strain[row], strain, rtol=0, atol=1e-12, err_msg=where)


def spread_indices(space: CandidateSpace, per_prototype: int, seed: int) -> np.ndarray:
    """``per_prototype`` random candidates of every prototype, plus the first and last one of each."""
    rng = np.random.default_rng(seed)
    picks = []
    for p in range(len(space.library)):
        lo, hi = int(space.offsets[p]), int(space.offsets[p + 1])
        picks.append(rng.integers(lo, hi, size=per_prototype))
        picks.append([lo, hi - 1])
    return np.unique(np.concatenate(picks)).astype(np.int64)


def pick_prototypes(library: PrototypeLibrary, arity: int, count: int) -> list[str]:
    """Names of ``count`` prototypes of one arity, spread evenly over the library (varied site counts)."""
    names = [p.name for p in library if p.arity == arity]
    take = np.unique(np.linspace(0, len(names) - 1, count).astype(int))
    return [names[i] for i in take]


def test_unrank_combination_matches_itertools():
    for n, k in [(6, 1), (7, 2), (9, 3)]:
        for rank, combo in enumerate(combinations(range(n), k)):
            assert unrank_combination(rank, n, k) == combo
    with pytest.raises(ValueError):
        unrank_combination(84, 9, 3)


def test_builtin_binary_and_ternary():
    library = load_prototypes("builtin")
    names = pick_prototypes(library, 2, 6) + pick_prototypes(library, 3, 4)
    space = CandidateSpace(library.filter(names=names))
    assert set(space.arity.tolist()) == {2, 3}
    indices = spread_indices(space, per_prototype=1, seed=1)
    assert len(indices) >= 25
    assert_parity(space, indices)


def test_published_prototypes(published_dir):
    library = load_prototypes(published_dir)
    names = pick_prototypes(library, 2, 8) + pick_prototypes(library, 3, 6)
    space = CandidateSpace(library.filter(names=names))
    assert set(space.arity.tolist()) == {2, 3}
    assert len(set(p.n_sites for p in space.library)) >= 4
    indices = spread_indices(space, per_prototype=1, seed=2)
    assert len(indices) >= 35
    assert_parity(space, indices)


def test_element_subset_unsorted_order_and_other_settings():
    # A subset changes the numbering but not the candidates; an unsorted request must come back in its order.
    library = load_prototypes("builtin")
    names = pick_prototypes(library, 2, 3) + pick_prototypes(library, 3, 2)
    settings = GenerateSettings.model_validate(
        {
            "elements": ["H", "He", "Li", "O", "K", "Fe", "Cs", "Xe", "U"],
            "lattice": {"factor": 0.92},
            "perturbation": {"displacement_per_atom": False, "displacement_sigma": 0.01},
        }
    )
    space = CandidateSpace(library.filter(names=names), settings)
    indices = np.random.default_rng(3).permutation(spread_indices(space, per_prototype=1, seed=3))
    assert np.any(np.diff(indices) < 0)
    assert_parity(space, indices)
