"""Element sets and the atomic radii used by the lattice guess.

Defaults reproduce the MP-ALOE paper and its reference code (see ``shared/DESIGN.md``):

- 89 elements, Z = 1..94 without Po, At, Rn, Fr and Ra;
- radius = pymatgen ``Element.atomic_radius`` with overrides for the noble gases (He 0.868, Ne 1.064,
  Ar 1.775, Kr 1.76, Xe 2.16 A), H x3, and K, Rb, Cs x0.9.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

import numpy as np

from aloe.errors import AloeError

#: Elements that MP-ALOE leaves out of Z = 1..94.
EXCLUDED_ELEMENTS: tuple[str, ...] = ("Po", "At", "Rn", "Fr", "Ra")

#: Radii (A) that replace pymatgen's atomic radius (noble gases, from the MP-ALOE reference code).
RADIUS_OVERRIDES: dict[str, float] = {"He": 0.868, "Ne": 1.064, "Ar": 1.775, "Kr": 1.76, "Xe": 2.16}

#: Multipliers applied to pymatgen's atomic radius.
RADIUS_MULTIPLIERS: dict[str, float] = {"H": 3.0, "K": 0.9, "Rb": 0.9, "Cs": 0.9}

NOBLE_GASES: frozenset[str] = frozenset({"He", "Ne", "Ar", "Kr", "Xe", "Rn", "Og"})


@lru_cache(maxsize=1)
def _symbols_by_z() -> tuple[str, ...]:
    from pymatgen.core.periodic_table import Element

    return tuple(Element.from_Z(z).symbol for z in range(1, 119))


def symbol_to_z(symbol: str) -> int:
    """Atomic number of an element symbol; raises :class:`AloeError` for an unknown symbol."""
    try:
        return _symbols_by_z().index(symbol) + 1
    except ValueError:
        raise AloeError(f"unknown element symbol {symbol!r}") from None


def z_to_symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (1-based)."""
    return _symbols_by_z()[int(z) - 1]


def default_elements() -> tuple[str, ...]:
    """The 89 MP-ALOE elements in Z order."""
    return tuple(s for s in _symbols_by_z()[:94] if s not in EXCLUDED_ELEMENTS)


@lru_cache(maxsize=1)
def universe() -> tuple[str, ...]:
    """The element universe: the 89 MP-ALOE elements, in Z order.

    It is fixed, so that a candidate's identity (and its random numbers) never depend on the subset a run chooses.
    """
    return default_elements()


def resolve_elements(
    elements: Iterable[str] | None, *, allowed: Iterable[str] | None = None
) -> tuple[str, ...]:
    """Validate a chosen element subset and return it sorted by Z, without duplicates.

    Parameters
    ----------
    elements
        Element symbols, or ``None`` for all of ``allowed``.
    allowed
        The set the subset must lie in (default: the 89 MP-ALOE elements).

    Raises
    ------
    AloeError
        For an unknown symbol or one outside ``allowed`` (the message names it).

    """
    allowed_t = tuple(allowed) if allowed is not None else universe()
    if elements is None:
        return tuple(sorted(set(allowed_t), key=symbol_to_z))
    chosen = []
    allowed_set = set(allowed_t)
    for symbol in elements:
        symbol_to_z(symbol)
        if symbol not in allowed_set:
            raise AloeError(
                f"element {symbol!r} is outside the allowed element set (MP-ALOE excludes {', '.join(EXCLUDED_ELEMENTS)})"
            )
        chosen.append(symbol)
    if not chosen:
        raise AloeError("the element set is empty")
    return tuple(sorted(set(chosen), key=symbol_to_z))


def atomic_radius(
    symbol: str,
    overrides: Mapping[str, float] | None = None,
    multipliers: Mapping[str, float] | None = None,
) -> float:
    """Radius (A) of an element for the lattice guess.

    Parameters
    ----------
    symbol
        Element symbol.
    overrides
        Radii that replace pymatgen's value (default :data:`RADIUS_OVERRIDES`).
    multipliers
        Factors on pymatgen's value (default :data:`RADIUS_MULTIPLIERS`); not applied to an overridden radius.

    """
    from pymatgen.core.periodic_table import Element

    overrides = RADIUS_OVERRIDES if overrides is None else overrides
    multipliers = RADIUS_MULTIPLIERS if multipliers is None else multipliers
    if symbol in overrides:
        return float(overrides[symbol])
    radius = Element(symbol).atomic_radius
    if radius is None:
        raise AloeError(f"element {symbol!r} has no atomic radius in pymatgen; give one in radius_overrides")
    return float(radius) * float(multipliers.get(symbol, 1.0))


def radius_table(
    overrides: Mapping[str, float] | None = None,
    multipliers: Mapping[str, float] | None = None,
    symbols: Iterable[str] | None = None,
) -> np.ndarray:
    """Radii indexed by atomic number (index 0 unused, NaN where unknown).

    Returns
    -------
    numpy.ndarray
        Shape ``(119,)``, float64.

    """
    table = np.full(119, np.nan)
    for symbol in symbols if symbols is not None else universe():
        table[symbol_to_z(symbol)] = atomic_radius(symbol, overrides, multipliers)
    return table
