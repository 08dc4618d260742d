"""Lattice guess from atomic radii, vectorised over candidates that share a prototype.

For a candidate with site radii ``r`` on a prototype whose shortest periodic pair distances are ``d`` (self-images
included, pairs beyond the neighbour cutoff ignored), the scale is ``s = factor * max_ij (r_i + r_j) / d_ij`` and the
lattice is multiplied by ``s`` (the volume by ``s**3``), as in MP-ALOE.
"""

from __future__ import annotations

import numpy as np


def guess_scale(pair_distances: np.ndarray, radii: np.ndarray, factor: float = 0.96) -> np.ndarray:
    """Lattice scale factors for many candidates of one prototype.

    Parameters
    ----------
    pair_distances
        Shape ``(n_sites, n_sites)``: shortest periodic distances of the prototype, ``inf`` for ignored pairs.
    radii
        Shape ``(n_candidates, n_sites)``: radius of the element on each site (A).
    factor
        Overall factor (MP-ALOE: 0.96).

    Returns
    -------
    numpy.ndarray
        Shape ``(n_candidates,)``: the factor ``s`` that multiplies the lattice vectors.

    """
    radii = np.asarray(radii, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (radii[:, :, None] + radii[:, None, :]) / pair_distances[None, :, :]
    ratio = np.where(np.isfinite(pair_distances)[None, :, :], ratio, -np.inf)
    best = ratio.reshape(len(radii), -1).max(axis=1)
    if not np.all(np.isfinite(best)):
        raise ValueError("no site pair within the neighbour cutoff: cannot guess the lattice scale")
    return factor * best
