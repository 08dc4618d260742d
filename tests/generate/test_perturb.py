from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import truncnorm

from aloe.generate.perturb import (
    VOIGT_PAIRS,
    apply_strains,
    displace,
    green_lagrange_tensors,
    stretch_matrices,
    truncated_normal,
)


def test_truncated_normal_honours_bounds_and_matches_scipy():
    u = np.linspace(0.0, 1.0, 100001)[:-1]
    x = truncated_normal(u, 0.02, 2.0)
    assert np.abs(x).max() <= 0.04
    assert x[0] == pytest.approx(-0.04)
    assert np.allclose(x, truncnorm.ppf(u, -2, 2, scale=0.02), atol=1e-12)
    # moments of the truncated distribution
    assert x.std() == pytest.approx(truncnorm.std(-2, 2, scale=0.02), rel=1e-3)
    rng = np.random.default_rng(1)
    y = truncated_normal(rng.random(200000), 0.01, 3.0)
    assert np.abs(y).max() <= 0.03 and abs(y.mean()) < 1e-4


@pytest.mark.parametrize("k", range(6))
def test_each_strain_reproduces_its_green_lagrange_tensor(k):
    eps = np.zeros((1, 6))
    eps[0, k] = 0.037
    E = green_lagrange_tensors(eps)[0, k]
    i, j = VOIGT_PAIRS[k]
    assert E[i, j] == E[j, i] == pytest.approx(0.037)
    assert np.count_nonzero(E) == (1 if i == j else 2)
    U = stretch_matrices(eps)[0, k]
    assert np.allclose(np.tril(U, -1), 0.0)  # upper triangular
    assert np.allclose(U.T @ U, np.eye(3) + 2 * E)
    # applied to a lattice (rows = vectors): new = old @ U^T, i.e. F = U acts on column vectors.
    old = np.array([[3.1, 0.2, 0.0], [0.4, 2.9, 0.1], [0.0, -0.3, 4.2]])
    new = apply_strains(old[None], eps)[0]
    F = np.linalg.solve(old, new).T  # new^T = F old^T
    assert np.allclose(0.5 * (F.T @ F - np.eye(3)), E, atol=1e-12)


def test_strains_apply_in_voigt_order():
    rng = np.random.default_rng(0)
    eps = rng.normal(0, 0.02, (4, 6))
    lattices = rng.normal(0, 1, (4, 3, 3)) + 4 * np.eye(3)
    out = apply_strains(lattices, eps)
    U = stretch_matrices(eps)
    for m in range(4):
        expected = lattices[m]
        for k in range(6):
            expected = expected @ U[m, k].T
        assert np.allclose(out[m], expected)


def test_displace_wraps_into_unit_cell():
    frac = np.array([[[0.99, 0.0, 0.5]]])
    out = displace(frac, np.array([[[0.02, -0.01, 0.0]]]))
    assert np.allclose(out, [[[0.01, 0.99, 0.5]]])
    assert ((out >= 0) & (out < 1)).all()
    assert np.allclose(displace(frac, np.array([[[0.02, 0, 0]]]), wrap=False), [[[1.01, 0.0, 0.5]]])
