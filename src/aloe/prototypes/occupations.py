"""Distinct occupations of a prototype: permutations of its placeholders, up to structural equivalence.

Following MP-ALOE, every permutation of the placeholder species is applied and kept unless it matches one kept
before under pymatgen ``Structure.matches(other, primitive_cell=False, ltol=0.01, stol=0.01)`` (other
StructureMatcher settings at their defaults). Permutations are visited in ``itertools.permutations`` order.
"""

from __future__ import annotations

import itertools
import warnings

from aloe.prototypes.library import Prototype


def distinct_occupations(
    prototype: Prototype,
    *,
    ltol: float = 0.01,
    stol: float = 0.01,
    angle_tol: float = 5.0,
    primitive_cell: bool = False,
) -> list[tuple[int, ...]]:
    """The distinct ways to assign a prototype's placeholders.

    Parameters
    ----------
    prototype
        The prototype.
    ltol, stol, angle_tol, primitive_cell
        StructureMatcher tolerances (defaults are MP-ALOE's).

    Returns
    -------
    list of tuple of int
        Each tuple ``perm`` maps placeholder index ``k`` to ``perm[k]``: a site whose placeholder is ``k`` gets the
        ``perm[k]``-th element (in Z order) of a combination. The identity permutation is always first.

    """
    base = prototype.to_structure()
    placeholders = prototype.placeholders
    kept: list[tuple[int, ...]] = []
    kept_structures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for perm in itertools.permutations(range(prototype.arity)):
            trial = base.copy()
            trial.replace_species({placeholders[k]: placeholders[perm[k]] for k in range(prototype.arity)})
            if any(
                trial.matches(other, primitive_cell=primitive_cell, ltol=ltol, stol=stol, angle_tol=angle_tol)
                for other in kept_structures
            ):
                continue
            kept.append(tuple(perm))
            kept_structures.append(trial)
    return kept
