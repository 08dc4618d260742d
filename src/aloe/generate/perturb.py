"""Random perturbations: truncated-normal fractional displacements and six sequential strains.

Randomness enters only through uniform numbers in ``[0, 1)`` that the caller supplies (see
:mod:`aloe.generate.space` for how they are drawn), turned into truncated normals by the inverse CDF, so every
candidate uses a fixed count of random numbers and can be produced on its own.

Strains follow MP-ALOE: six components ``eps_k`` (Voigt order xx, yy, zz, yz, xz, xy), each a symmetric
Green-Lagrange tensor ``E`` (``E_kk = eps`` for a normal component; ``E_ij = E_ji = eps`` for a shear one), turned into
the upper-triangular ``U`` with ``U^T U = I + 2E`` (Cholesky) and applied one after another as
``new lattice rows = old lattice rows @ U^T``, fractional coordinates kept.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

#: Voigt order of the six strain components.
VOIGT_PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def truncated_normal(uniform: np.ndarray, sigma: np.ndarray | float, truncation: float) -> np.ndarray:
    """Map uniforms in ``[0, 1)`` to normal(0, sigma) truncated at ``+-truncation * sigma`` (inverse CDF).

    Parameters
    ----------
    uniform
        Any shape.
    sigma
        Standard deviation(s), broadcast against ``uniform``.
    truncation
        Bound in units of sigma.

    """
    lo = ndtr(-truncation)
    z = ndtri(lo + np.asarray(uniform) * (1.0 - 2.0 * lo))
    return np.clip(z, -truncation, truncation) * sigma


def green_lagrange_tensors(strains: np.ndarray) -> np.ndarray:
    """The six single-component Green-Lagrange tensors of each candidate.

    Parameters
    ----------
    strains
        Shape ``(m, 6)`` Voigt components.

    Returns
    -------
    numpy.ndarray
        Shape ``(m, 6, 3, 3)``.

    """
    strains = np.asarray(strains, dtype=float)
    tensors = np.zeros((*strains.shape, 3, 3))
    for k, (i, j) in enumerate(VOIGT_PAIRS):
        tensors[:, k, i, j] = strains[:, k]
        tensors[:, k, j, i] = strains[:, k]
    return tensors


def stretch_matrices(strains: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``U^T U = I + 2E`` for each of the six strains.

    Returns
    -------
    numpy.ndarray
        Shape ``(m, 6, 3, 3)``.

    """
    metric = np.eye(3) + 2.0 * green_lagrange_tensors(strains)
    lower = np.linalg.cholesky(metric)
    return np.swapaxes(lower, -1, -2)


def apply_strains(lattices: np.ndarray, strains: np.ndarray) -> np.ndarray:
    """Apply the six strains of each candidate in Voigt order.

    Parameters
    ----------
    lattices
        Shape ``(m, 3, 3)``, rows are lattice vectors.
    strains
        Shape ``(m, 6)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(m, 3, 3)``: ``L @ U_1^T @ U_2^T ... @ U_6^T``.

    """
    out = np.array(lattices, dtype=float, copy=True)
    stretch = stretch_matrices(strains)
    for k in range(stretch.shape[1]):
        out = out @ np.swapaxes(stretch[:, k], -1, -2)
    return out


def displace(frac_coords: np.ndarray, displacements: np.ndarray, wrap: bool = True) -> np.ndarray:
    """Add fractional displacements and (optionally) wrap into ``[0, 1)``.

    Parameters
    ----------
    frac_coords, displacements
        Shape ``(m, n_sites, 3)``.
    wrap
        Map the result into ``[0, 1)``.
    """
    out = frac_coords + displacements
    return wrap_fractional(out) if wrap else out


def wrap_fractional(frac_coords: np.ndarray) -> np.ndarray:
    """Fractional coordinates mapped into ``[0, 1)`` (a new array; any shape)."""
    out = np.mod(frac_coords, 1.0)
    out[out >= 1.0] = 0.0  # mod can round up to exactly 1.0
    return out
