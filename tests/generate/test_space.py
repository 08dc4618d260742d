from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
import pytest

from aloe.elements import default_elements, symbol_to_z
from aloe.errors import AloeError
from aloe.generate.settings import GenerateSettings, PerturbationSettings, SubsamplingSettings
from aloe.generate.space import CandidateSpace, lex_rank
from aloe.prototypes import load_prototypes

ELEMENTS = ["Li", "O", "Mg", "Fe", "Cu"]


def space_for(proto_dir, **kw) -> CandidateSpace:
    settings = GenerateSettings.model_validate({"elements": ELEMENTS, **kw})
    return CandidateSpace(load_prototypes(proto_dir), settings)


def test_counts_by_hand(proto_dir):
    space = space_for(proto_dir)
    # cscl 1 occupation, fluorite 2, perovskite 6, rocksalt 1 (library order: cscl, fluorite, perovskite, rocksalt)
    assert space.n_occupations.tolist() == [1, 2, 6, 1]
    n = len(ELEMENTS)
    assert space.counts.tolist() == [comb(n, 2), 2 * comb(n, 2), 6 * comb(n, 3), comb(n, 2)]
    assert space.size == 10 + 20 + 60 + 10
    # perovskite weight 0.25 -> keep probability sqrt(0.25)/3 = 1/6
    assert space.keep_probability.tolist() == pytest.approx([1, 1, 1 / 6, 1])
    assert space.expected_kept == pytest.approx(40 + 60 / 6)


def test_lex_rank_matches_itertools():
    for n, k in [(7, 1), (7, 2), (9, 3), (89, 3)]:
        combos = np.array(list(combinations(range(n), k)))
        if len(combos) > 5000:
            pick = np.random.default_rng(0).choice(len(combos), 5000, replace=False)
            assert (lex_rank(combos[pick], n) == pick).all()
        else:
            assert (lex_rank(combos, n) == np.arange(len(combos))).all()


def test_decode_and_element_assignment(proto_dir):
    space = space_for(proto_dir)
    proto, combo, occ = space.decode(np.arange(space.size))
    assert np.bincount(proto).tolist() == space.counts.tolist()
    # fluorite (proto 1): combination-major, occupation-minor like the reference loop
    rows = np.flatnonzero(proto == 1)
    assert combo[rows].tolist()[:4] == [0, 0, 1, 1] and occ[rows].tolist()[:4] == [0, 1, 0, 1]
    batch = space.build(rows[:2])
    zs = sorted(symbol_to_z(s) for s in ELEMENTS)
    # occupation 0: H (1 site) -> lowest Z (Li), He (2 sites) -> next (O); occupation 1 swaps them
    assert batch.numbers[:3].tolist() == [zs[0], zs[1], zs[1]]
    assert batch.numbers[3:6].tolist() == [zs[1], zs[0], zs[0]]
    with pytest.raises(AloeError, match="outside the space"):
        space.decode([space.size])


def test_candidate_alone_equals_candidate_in_a_range(proto_dir):
    space = space_for(proto_dir)
    everything = space.build(np.arange(space.size))
    offsets = everything.offsets
    for i in [0, 7, 33, 61, space.size - 1]:
        one = space.build([i])
        assert np.array_equal(one.cell[0], everything.cell[i])
        assert np.array_equal(one.frac_coords, everything.frac_coords[offsets[i] : offsets[i + 1]])
    shuffled = np.array([50, 3, 70, 3])
    b = space.build(shuffled)
    assert b.index.tolist() == shuffled.tolist()
    assert np.array_equal(b.cell[1], everything.cell[3]) and np.array_equal(b.cell[3], everything.cell[3])


def test_seed_reproducible_and_different_seeds_differ(proto_dir):
    a = space_for(proto_dir, seed=5).build(np.arange(40))
    b = space_for(proto_dir, seed=5).build(np.arange(40))
    c = space_for(proto_dir, seed=6).build(np.arange(40))
    assert np.array_equal(a.cell, b.cell) and np.array_equal(a.frac_coords, b.frac_coords)
    assert not np.allclose(a.cell, c.cell)


def test_candidate_identity_is_independent_of_element_subset(proto_dir):
    small = space_for(proto_dir)
    big = CandidateSpace(load_prototypes(proto_dir), GenerateSettings(elements=[*ELEMENTS, "Na", "Cl", "Au"]))
    b_small = small.build(np.arange(small.size))
    b_big = big.build(np.arange(big.size))
    key_big = {(p, u): r for r, (p, u) in enumerate(zip(b_big.prototype, b_big.universe_index, strict=True))}
    for r, (p, u) in enumerate(zip(b_small.prototype, b_small.universe_index, strict=True)):
        r2 = key_big[(p, u)]
        assert np.array_equal(b_small.cell[r], b_big.cell[r2])
        assert b_small.strain[r].tolist() == b_big.strain[r2].tolist()


def test_perturbation_statistics_and_bounds(proto_dir):
    space = CandidateSpace(
        load_prototypes(proto_dir).filter(names=["POSCAR_fluorite"]),
        GenerateSettings(elements=list(default_elements())),
    )
    batch = space.build(np.arange(space.size))
    assert np.abs(batch.strain).max() <= 0.04 + 1e-15
    assert batch.strain.std() == pytest.approx(0.02 * 0.8796, rel=0.03)  # std of N(0,1) truncated at +-2
    # displacement: compare against the unperturbed build
    plain = CandidateSpace(
        space.library, space.settings.model_copy(update={"perturbation": PerturbationSettings(enabled=False)})
    ).build(np.arange(space.size))
    delta = batch.frac_coords - plain.frac_coords
    delta -= np.round(delta)
    sigma = 0.02 / 3
    assert np.abs(delta).max() <= 3 * sigma + 1e-12
    assert delta.std() == pytest.approx(sigma * 0.9866, rel=0.03)  # std of N(0,1) truncated at +-3


def test_subsampling_keeps_sqrt_w_over_3(proto_dir):
    settings = GenerateSettings(elements=list(default_elements()))
    space = CandidateSpace(
        load_prototypes(proto_dir).filter(names=["POSCAR_perovskite_weight0.25"]), settings
    )
    mask = space.keep_mask(np.arange(space.size))
    assert space.size == 6 * comb(89, 3)
    assert mask.mean() == pytest.approx(1 / 6, abs=0.003)
    assert space.kept_in_range(0, 5000).tolist() == np.flatnonzero(mask[:5000]).tolist()
    off = CandidateSpace(
        space.library, settings.model_copy(update={"subsampling": SubsamplingSettings(enabled=False)})
    )
    assert off.keep_mask(np.arange(1000)).all() and off.expected_kept == off.size


def test_unknown_element_and_empty_library(proto_dir):
    with pytest.raises(AloeError, match="'Po' is outside"):
        space_for(proto_dir, elements=["Fe", "Po"])
    with pytest.raises(AloeError, match="empty"):
        CandidateSpace(load_prototypes(proto_dir).filter(arity=[5]), GenerateSettings())


def test_published_space_counts_follow_the_rules(published_dir):
    from itertools import permutations

    lib = load_prototypes(published_dir)
    space = CandidateSpace(lib, GenerateSettings())
    for proto, n_occ in zip(lib, space.n_occupations, strict=True):
        counts = np.bincount(proto.placeholder_index, minlength=proto.arity)
        # permutations that change the composition can never match, so they are a lower bound
        compositions = {tuple(counts[list(p)]) for p in permutations(range(proto.arity))}
        assert len(compositions) <= n_occ <= len(list(permutations(range(proto.arity)))), proto.name
    binary = space.arity == 2
    assert space.n_combinations[binary][0] == comb(89, 2) and space.n_combinations[~binary][0] == comb(89, 3)
    assert space.size == int((space.n_occupations * space.n_combinations).sum())
    weights = np.array([p.weight if p.weight is not None else np.nan for p in lib])
    expected = space.counts[binary].sum() + np.sum(
        space.n_occupations[~binary] * comb(89, 3) * np.sqrt(weights[~binary]) / 3
    )
    assert space.expected_kept == pytest.approx(expected)
    assert space.size == 104_792_160  # 4,969,404 binary + 99,822,756 ternary candidates


@pytest.mark.parametrize("elements", [None, ["H", "O", "Fe", "Cu", "Zr", "La", "U", "Xe"]])
def test_kept_in_range_equals_keep_mask(proto_dir, elements):
    space = CandidateSpace(load_prototypes(proto_dir), GenerateSettings(elements=elements))
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = int(rng.integers(0, space.size - 1))
        b = int(min(space.size, a + rng.integers(1, 20000)))
        idx = np.arange(a, b)
        assert space.kept_in_range(a, b).tolist() == idx[space.keep_mask(idx)].tolist()
