"""Per-structure pymatgen implementation of candidate building: the benchmark baseline and a test oracle.

This module is **slow on purpose**. It follows the MP-ALOE reference code step by step, one candidate at a
time, with pymatgen ``Structure`` operations:

1. read the placeholder prototype as the reference code does (``Structure.from_file``: coordinates exactly as
   written in the file, none moved or wrapped; see :func:`read_prototype`), permute its placeholders
   (``replace_species``) by the occupation, then replace the placeholders by the combination's elements in Z
   order (``replace_species`` again);
2. lattice guess: ``get_neighbor_list(cutoff)``, the minimum distance of each site pair (self images
   included), ``s = factor * max_ij (r_i + r_j) / d_ij`` and ``scale_lattice(s**3 * volume)``;
3. one ``translate_sites(i, vector)`` per site (fractional, wrapped into the cell);
4. six strains, each a pymatgen ``Strain`` turned into a ``Deformation`` by
   ``get_deformation_matrix(shape="upper")`` and applied with ``DeformStructureTransformation``.

Only the random numbers and the numbering are shared with :class:`~aloe.generate.space.CandidateSpace`: the
same uniforms from the space's perturbation stream, turned into truncated normals here with
``scipy.stats.truncnorm.ppf``, and the space's distinct occupations. Everything else is computed independently,
starting from the prototype file itself rather than from aloe's :class:`~aloe.prototypes.library.Prototype`, so
:func:`build_reference` both checks the vectorised path (including how aloe reads and wraps prototype
coordinates) and times the per-structure one.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from math import comb
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aloe.elements import atomic_radius
from aloe.generate.space import _PERTURB_STREAM, PERTURB_BLOCK, CandidateSpace

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from aloe.prototypes.library import Prototype

#: Voigt order of the six strain components (xx, yy, zz, yz, xz, xy), as in MP-ALOE.
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def unrank_combination(rank: int, n: int, k: int) -> tuple[int, ...]:
    """Return the ``rank``-th ``k``-combination of ``range(n)`` in ``itertools.combinations`` order.

    Pure Python, independent of the space's combination tables (so the oracle checks their decoding too).

    Parameters
    ----------
    rank
        Position in ``[0, comb(n, k))``.
    n, k
        Set size and combination size.

    Returns
    -------
    tuple of int
        Strictly increasing positions.

    """
    if not 0 <= rank < comb(n, k):
        raise ValueError(f"rank {rank} is outside [0, {comb(n, k)})")
    out = []
    x = 0
    for i in range(k):
        # Skip every block of combinations that starts with a smaller first free element.
        while True:
            block = comb(n - x - 1, k - i - 1)
            if rank < block:
                break
            rank -= block
            x += 1
        out.append(x)
        x += 1
    return tuple(out)


@lru_cache(maxsize=1024)
def _read_structure(path: str, mtime_ns: int, size: int) -> Structure:
    """``Structure.from_file``, once per file version (the reference code reads each prototype file once)."""
    from pymatgen.core import Structure

    del mtime_ns, size  # only part of the cache key: an edited file is read again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(path)


def read_prototype(proto: Prototype) -> Structure:
    """The placeholder prototype as the MP-ALOE reference code holds it: ``Structure.from_file`` of its file.

    The reference code reads each prototype with ``Structure.from_file`` and uses its coordinates as written:
    none is wrapped, rounded or moved (``0.9999924`` stays ``0.9999924``). Prototypes without a file (the
    built-in AFLOW library, ``source="aflow:..."``) fall back to :meth:`Prototype.to_structure`. Each call
    returns a new structure (a copy of the file's, which is read once per version of the file).

    Raises
    ------
    ValueError
        When the file no longer holds the prototype aloe loaded (other species, site count or sites).

    """
    path = Path(proto.source) if proto.source else None
    if path is None or not path.is_file():
        return proto.to_structure()
    stat = path.stat()
    structure = _read_structure(str(path), stat.st_mtime_ns, stat.st_size).copy()
    species = [site.specie.symbol for site in structure]
    same = species == [proto.placeholders[k] for k in proto.placeholder_index]
    if same:
        # Only a coarse identity check (1e-3, modulo whole lattice vectors): an edited file is refused, while any
        # fine difference between aloe's reading and this one is left for the parity comparison to report.
        delta = np.asarray(structure.frac_coords) - proto.frac_coords
        same = bool(np.abs(delta - np.round(delta)).max() <= 1e-3)
    if not same:
        raise ValueError(f"{path}: the file no longer holds prototype {proto.name!r} as loaded")
    return structure


def _substitute(space: CandidateSpace, proto_index: int, combination: int, occupation: int) -> Structure:
    """Substitute the elements into the placeholder prototype (two ``replace_species``, as the reference)."""
    from pymatgen.core import Element

    proto = space.library[proto_index]
    arity = proto.arity
    placeholders = proto.placeholders[:arity]
    positions = unrank_combination(combination, len(space.elements), arity)
    symbols = [space.elements[pos] for pos in positions]  # Z order
    perm = [int(x) for x in space.occupations[proto_index][occupation]]
    structure = read_prototype(proto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The occupation permutes the placeholders (simultaneous mapping), ...
        structure.replace_species({placeholders[k]: placeholders[perm[k]] for k in range(arity)})
        # ... then placeholder k becomes the k-th element of the combination in Z order.
        structure.replace_species({placeholders[k]: Element(symbols[k]) for k in range(arity)})
    return structure


def _lattice_scale(structure: Structure, space: CandidateSpace) -> float:
    """Guess the lattice scale ``s`` from the neighbour list of the (unscaled) substituted structure."""
    lat = space.settings.lattice
    radii = [
        atomic_radius(site.specie.symbol, lat.radius_overrides, lat.radius_multipliers) for site in structure
    ]
    centers, neighbors, _images, distances = structure.get_neighbor_list(lat.neighbor_cutoff)
    shortest: dict[tuple[int, int], float] = {}
    for i, j, d in zip(centers.tolist(), neighbors.tolist(), distances.tolist(), strict=True):
        if d < shortest.get((i, j), np.inf):
            shortest[(i, j)] = d
    if not shortest:
        raise ValueError("no site pair within the neighbour cutoff: cannot guess the lattice scale")
    return lat.factor * max((radii[i] + radii[j]) / d for (i, j), d in shortest.items())


def build_reference(space: CandidateSpace, index: int) -> Structure:
    """Build candidate ``index`` one step at a time with pymatgen (slow on purpose; see the module docstring).

    Parameters
    ----------
    space
        The candidate space (numbering, settings, occupations and random streams are taken from it).
    index
        Candidate number in ``[0, space.size)``.

    Returns
    -------
    pymatgen.core.Structure
        The substituted, scaled and perturbed structure, sites in prototype order.
        ``structure.properties`` holds ``aloe_index``, ``scale`` (the lattice guess ``s``) and ``strain``
        (the six Voigt components applied).

    """
    from pymatgen.analysis.elasticity.strain import Strain
    from pymatgen.transformations.standard_transformations import DeformStructureTransformation
    from scipy.stats import truncnorm

    settings = space.settings
    proto_arr, combo_arr, occ_arr = space.decode(np.array([index], dtype=np.int64))
    p, combination, occupation = int(proto_arr[0]), int(combo_arr[0]), int(occ_arr[0])
    structure = _substitute(space, p, combination, occupation)
    n = len(structure)

    scale = 1.0
    if settings.lattice.enabled:
        scale = _lattice_scale(structure, space)
        structure.scale_lattice(scale**3 * structure.volume)

    strain = np.zeros(6)
    pert = settings.perturbation
    if pert.enabled:
        # Shared with the vectorised path: only the candidate's uniforms, keyed by its universe index.
        uidx = space.universe_index(p, combo_arr, occ_arr)
        uniforms = space._gather(p, _PERTURB_STREAM, uidx, PERTURB_BLOCK, 3 * n + 6)[0]
        sigma = pert.displacement_sigma / (n if pert.displacement_per_atom else 1)
        t = pert.displacement_truncation
        disp = truncnorm.ppf(uniforms[: 3 * n], -t, t, loc=0.0, scale=sigma).reshape(n, 3)
        for i in range(n):
            structure.translate_sites(i, disp[i], frac_coords=True, to_unit_cell=pert.wrap)
        t = pert.strain_truncation
        strain = truncnorm.ppf(uniforms[3 * n :], -t, t, loc=0.0, scale=pert.strain_sigma)
        for k, (i, j) in enumerate(_VOIGT):
            # A tensor with E_ij = E_ji = eps (not Strain.from_voigt, which would halve the shear components).
            tensor = np.zeros((3, 3))
            tensor[i, j] = tensor[j, i] = strain[k]
            deformation = Strain(tensor).get_deformation_matrix(shape="upper")
            structure = DeformStructureTransformation(deformation).apply_transformation(structure)

    structure.properties = {
        "aloe_index": int(index),
        "scale": float(scale),
        "strain": [float(x) for x in strain],
    }
    return structure


def reference_numbers(structure: Structure) -> list[int]:
    """Atomic numbers of a reference structure's sites, in site order."""
    return [int(site.specie.Z) for site in structure]


__all__ = ["build_reference", "read_prototype", "reference_numbers", "unrank_combination"]
