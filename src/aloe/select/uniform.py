"""Uniform random selection: the baseline DIRECT is compared with (same budget, no features, no clustering)."""

from __future__ import annotations

import numpy as np


def uniform_pick(n: int, k: int | None, seed: int) -> np.ndarray:
    """``k`` of ``n`` structures picked uniformly at random without replacement, ascending.

    The structures are numbered in input order (chunk after chunk, row after row), so the picks depend only on
    ``n``, ``k`` and ``seed``: not on how the input is chunked, nor on how many workers read it. ``k`` of ``None``
    (no budget) or ``k >= n`` keeps every structure.

    Returns
    -------
    numpy.ndarray
        Shape ``(min(k, n),)`` int64: the picked indices in ascending order
        (``np.random.default_rng(seed).choice(n, k, replace=False)``, sorted).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


__all__ = ["uniform_pick"]
