from __future__ import annotations

import logging

import numpy as np
import pytest

from aloe.errors import AloeError
from aloe.select.direct import direct_select, linspace_ranks, nearest_center
from aloe.select.settings import DirectSettings

maml_direct = pytest.importorskip("maml.sampling.direct", reason="maml is the DIRECT oracle (dev extra)")
logging.getLogger("maml").setLevel(logging.WARNING)
for name in ("maml.sampling.clustering", "maml.sampling.pca", "maml.sampling.stratified_sampling"):
    logging.getLogger(name).setLevel(logging.WARNING)


def clustered(n: int, d: int, latent: int, centres: int, spread: float, seed: int) -> np.ndarray:
    """Points around ``centres`` blobs in a ``latent``-dimensional space, mapped linearly into ``d`` features."""
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 3, (centres, latent))
    z = c[rng.integers(0, centres, n)] + rng.normal(0, spread, (n, latent))
    return z @ rng.normal(0, 1, (latent, d)) + rng.normal(0, 0.3, (n, d))


def maml_select(x: np.ndarray, threshold: float = 0.1, k: int = 5) -> np.ndarray:
    sampler = maml_direct.DIRECTSampler(
        structure_encoder=False,
        clustering=maml_direct.BirchClustering(n=None, threshold_init=threshold),
        select_k_from_clusters=maml_direct.SelectKFromClusters(k=k),
    )
    return np.sort(np.asarray(sampler.fit_transform(x.copy())["selected_indexes"], dtype=np.int64))


# ---- parity with maml's DIRECTSampler (the reference implementation MP-ALOE used) ----------------------------
@pytest.mark.parametrize(
    ("n", "d", "latent", "centres", "spread", "threshold", "k"),
    [
        (3000, 64, 10, 50, 1.0, 0.1, 5),  # nearly one subcluster per point
        (3000, 64, 5, 20, 0.05, 0.1, 5),  # tight blobs: few large clusters
        (4000, 128, 3, 200, 0.2, 0.1, 5),
        (2500, 32, 8, 40, 0.3, 0.05, 3),
        (2500, 32, 8, 40, 0.3, 0.2, 1),
        (2000, 16, 12, 8, 0.01, 0.1, 7),
    ],
)
def test_same_selection_as_maml(n, d, latent, centres, spread, threshold, k):
    x = clustered(n, d, latent, centres, spread, seed=n + d + k)
    ours = direct_select(x, DirectSettings(birch_threshold=threshold, k=k))
    assert np.array_equal(ours.selected, maml_select(x, threshold, k))
    assert ours.n_clusters > 1


def test_same_selection_as_maml_with_duplicate_structures():
    # Identical feature rows tie in distance; the picks must still be maml's (argpartition's) picks.
    rng = np.random.default_rng(5)
    base = clustered(300, 16, 4, 30, 0.3, seed=7)
    x = np.concatenate([base, base[rng.integers(0, 300, 900)]])
    assert np.array_equal(direct_select(x).selected, maml_select(x))
    rounded = np.round(clustered(3000, 8, 3, 5, 0.5, seed=9), 1)
    assert np.array_equal(
        direct_select(rounded, DirectSettings(birch_threshold=0.5, k=7)).selected,
        maml_select(rounded, 0.5, 7),
    )


def test_nearest_center_matches_sklearn_birch_predict():
    from sklearn.cluster import Birch

    x = clustered(5000, 8, 4, 60, 0.4, seed=3)
    birch = Birch(n_clusters=None, threshold=0.5).fit(x)
    assert np.array_equal(nearest_center(x, birch.subcluster_centers_), birch.predict(x))
    # exact ties between two centres go to the lower index, as sklearn's argmin does
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
    points = np.array([[1.0, 0.0], [1.0, 3.0], [4.9, 5.0]])
    assert nearest_center(points, centres).tolist() == [0, 0, 2]


def test_subclusters_left_without_members_select_nothing(monkeypatch):
    # Nearest-centre labelling can leave a BIRCH subcluster empty; it must neither pick rows of its neighbours
    # nor break the indexing (an empty LAST cluster used to run past the end).
    import aloe.select.direct as direct

    x = clustered(400, 8, 3, 6, 0.2, seed=12)
    reference = direct_select(x)
    real = direct._cluster

    def with_empty_centres(scores, settings, notes):
        labels, centres, threshold = real(scores, settings, notes)
        far = np.full((2, centres.shape[1]), 1e6)
        return labels, np.concatenate([far[:1], centres, far[1:]]), threshold

    def shifted(scores, settings, notes):
        labels, centres, threshold = with_empty_centres(scores, settings, notes)
        return labels + 1, centres, threshold

    monkeypatch.setattr(direct, "_cluster", shifted)
    result = direct_select(x)
    assert np.array_equal(result.selected, reference.selected)
    assert result.n_clusters == reference.n_clusters
    assert any("without members" in n for n in result.notes)


def test_input_array_is_not_modified():
    x = clustered(300, 6, 3, 5, 0.3, seed=13)
    before = x.copy()
    direct_select(x)
    assert np.array_equal(x, before)


# ---- the rank rule by hand --------------------------------------------------------------------------------
def test_linspace_ranks_by_hand():
    ranks = linspace_ranks(np.array([1, 3, 5, 6, 11, 100]), 5)
    assert ranks[0].tolist() == [0, 0, 0, 0, 0]
    assert sorted(set(ranks[1].tolist())) == [0, 1, 2]  # 3 <= k: all taken
    assert ranks[2].tolist() == [0, 1, 2, 3, 4]
    assert ranks[3].tolist() == [0, 1, 2, 3, 5]  # linspace(0, 5, 5) = 0, 1.25, 2.5, 3.75, 5
    assert ranks[4].tolist() == [0, 2, 5, 7, 10]
    assert ranks[5].tolist() == [0, 24, 49, 74, 99]  # 24.75 -> 24, 49.5 -> 49, 74.25 -> 74


def test_picks_evenly_spaced_ranks_of_distance_in_one_cluster():
    # One tight cluster on a line: distances to the centre are known, so the picks are too.
    offsets = np.array([0.0, 0.001, -0.002, 0.003, -0.004, 0.005, -0.006, 0.007, -0.008, 0.009, -0.010])
    x = np.stack([offsets, np.zeros_like(offsets)], axis=1)
    settings = DirectSettings(scale=False, weight_components=False, components="fixed", n_components=1)
    result = direct_select(x, settings)
    assert result.n_clusters == 1
    by_distance = np.argsort(result.distance, kind="stable")
    assert result.selected.tolist() == sorted(by_distance[[0, 2, 5, 7, 10]].tolist())
    assert result.rank[by_distance].tolist() == list(range(11))


def test_small_clusters_are_taken_whole_and_large_ones_give_k():
    rng = np.random.default_rng(0)
    blobs = [rng.normal(c, 0.001, (size, 2)) for c, size in [((0, 0), 3), ((10, 0), 5), ((0, 10), 40)]]
    x = np.concatenate(blobs)
    settings = DirectSettings(scale=False, weight_components=False, components="fixed", n_components=2, k=5)
    result = direct_select(x, settings)
    assert result.n_clusters == 3
    assert sorted(result.cluster_sizes.tolist()) == [3, 5, 40]
    assert len(result.selected) == 3 + 5 + 5
    assert set(range(8)) <= set(result.selected.tolist())


# ---- edge cases ---------------------------------------------------------------------------------------------
def test_single_structure_is_selected():
    result = direct_select(np.array([[1.0, 2.0, 3.0]]))
    assert result.selected.tolist() == [0]
    assert result.labels.tolist() == [0]
    assert any("single structure" in n for n in result.notes)


def test_fewer_structures_than_k_all_selected():
    x = np.random.default_rng(1).normal(size=(4, 6))
    assert direct_select(x).selected.tolist() == [0, 1, 2, 3]
    assert direct_select(x[:2]).selected.tolist() == [0, 1]


def test_constant_features_make_one_cluster():
    x = np.ones((20, 5))
    result = direct_select(x)
    assert result.n_clusters == 1
    # every distance ties: five distinct structures, chosen as argpartition chooses among equals (deterministic)
    assert len(result.selected) == 5
    assert np.array_equal(direct_select(x).selected, result.selected)
    assert any("constant" in n for n in result.notes)


def test_constant_columns_are_harmless():
    x = clustered(500, 12, 4, 10, 0.3, seed=2)
    x[:, 3] = 7.0
    ref = direct_select(np.delete(x, 3, axis=1))
    assert np.array_equal(direct_select(x).selected, ref.selected)


def test_rows_without_any_finite_feature_are_left_out():
    x = clustered(300, 10, 4, 10, 0.3, seed=4)
    x[[5, 17]] = np.nan
    result = direct_select(x)
    assert result.status[5] == result.status[17] == "encoder_failed"
    assert 5 not in result.selected and 17 not in result.selected
    assert result.labels[5] == -1 and np.isnan(result.scores[5]).all()
    keep = np.setdiff1d(np.arange(300), [5, 17])
    assert np.array_equal(keep[direct_select(x[keep]).selected], result.selected)


def test_partial_nan_policies():
    x = clustered(300, 10, 4, 10, 0.3, seed=6)
    x[7, 2] = np.nan
    x[9, 2] = np.inf
    cols = direct_select(x, DirectSettings(nonfinite="drop_columns"))
    assert cols.dropped_features == [2]
    assert np.array_equal(cols.selected, direct_select(np.delete(x, 2, axis=1)).selected)
    rows = direct_select(x, DirectSettings(nonfinite="drop_rows"))
    assert rows.status[7] == rows.status[9] == "nonfinite_features"
    assert 7 not in rows.selected and 9 not in rows.selected
    with pytest.raises(AloeError, match=r"^s7: feature\(s\) \[2\] are NaN/inf \(2 structures"):
        direct_select(x, DirectSettings(nonfinite="error"), row_names=[f"s{i}" for i in range(300)])


def test_bad_shapes_and_empty_inputs():
    with pytest.raises(AloeError, match="2-D"):
        direct_select(np.ones(5))
    with pytest.raises(AloeError, match="no structures"):
        direct_select(np.ones((0, 3)))
    with pytest.raises(AloeError, match="none of the 2 structures"):
        direct_select(np.full((2, 3), np.nan))
    with pytest.raises(AloeError, match="atom count"):
        direct_select(np.ones((3, 2)), DirectSettings(criterion="smallest"))


# ---- options ------------------------------------------------------------------------------------------------
def test_component_rules():
    x = clustered(1000, 20, 6, 20, 0.3, seed=8)
    kaiser = direct_select(x)
    assert kaiser.n_components == int((kaiser.explained_variance > 1).sum())
    variance = direct_select(x, DirectSettings(components="variance", explained_variance=0.9))
    cum = np.cumsum(variance.explained_variance_ratio)
    assert cum[variance.n_components - 1] >= 0.9 > cum[variance.n_components - 2]
    fixed = direct_select(x, DirectSettings(components="fixed", n_components=3))
    assert fixed.n_components == 3 and fixed.scores.shape == (1000, 3)
    with pytest.raises(ValueError, match="n_components"):
        DirectSettings(components="fixed")


def test_weighting_scales_scores_by_explained_variance_ratio():
    x = clustered(400, 10, 4, 10, 0.3, seed=9)
    weighted = direct_select(x)
    plain = direct_select(x, DirectSettings(weight_components=False))
    m = weighted.n_components
    np.testing.assert_allclose(weighted.scores, plain.scores * weighted.explained_variance_ratio[:m])


def test_fixed_number_of_clusters():
    x = clustered(2000, 16, 5, 30, 0.3, seed=10)
    result = direct_select(x, DirectSettings(n_clusters=25))
    assert result.n_clusters == 25
    assert result.cluster_sizes.sum() == 2000
    assert len(result.selected) == sum(min(s, 5) for s in result.cluster_sizes)
    tiny = direct_select(x[:10], DirectSettings(n_clusters=50))
    assert tiny.n_clusters == 10 and len(tiny.selected) == 10


def test_smallest_and_random_criteria():
    x = clustered(1500, 16, 5, 10, 0.05, seed=11)
    n_atoms = np.random.default_rng(0).integers(2, 9, len(x))
    smallest = direct_select(x, DirectSettings(criterion="smallest"), n_atoms=n_atoms)
    for c in range(smallest.n_clusters):
        members = np.flatnonzero(smallest.labels == c)
        chosen = np.intersect1d(members, smallest.selected)
        assert len(chosen) == min(5, len(members))
        assert n_atoms[chosen].max() <= np.sort(n_atoms[members])[len(chosen) - 1]
    a = direct_select(x, DirectSettings(criterion="random", seed=1))
    b = direct_select(x, DirectSettings(criterion="random", seed=1))
    c = direct_select(x, DirectSettings(criterion="random", seed=2))
    assert np.array_equal(a.selected, b.selected)
    assert not np.array_equal(a.selected, c.selected)
    assert len(a.selected) == sum(min(s, 5) for s in a.cluster_sizes)


def test_labelling_budget_keeps_round_robin_picks():
    x = clustered(2000, 16, 5, 30, 0.3, seed=14)
    full = direct_select(x)
    capped = direct_select(x, DirectSettings(max_selected=40))
    assert len(capped.selected) == 40
    assert set(capped.selected) <= set(full.selected)
    # one pick per cluster before any cluster gives a second one: the 40 come from 40 different clusters
    assert len(set(capped.labels[capped.selected])) == min(40, full.n_clusters)
    assert np.array_equal(direct_select(x, DirectSettings(max_selected=10_000)).selected, full.selected)
