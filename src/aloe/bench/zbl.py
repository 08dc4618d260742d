"""The Ziegler-Biersack-Littmark (ZBL) screened nuclear repulsion as an ASE calculator.

Used to push apart the atoms of random mixtures before MD (the paper relaxes its mixtures "with a repulsive ZBL
potential first"). The pair energy is the universal ZBL potential::

    V(r) = Z1 Z2 e^2 / (4 pi eps0 r) * phi(r / a)
    a = 0.46850 A / (Z1^0.23 + Z2^0.23)                       (0.46850 A = 0.8854 Bohr radii)
    phi(x) = 0.18175 exp(-3.1998 x) + 0.50986 exp(-0.94229 x) + 0.28022 exp(-0.4029 x) + 0.02817 exp(-0.20162 x)

(Ziegler, Biersack and Littmark, *The Stopping and Range of Ions in Solids*, 1985), with e^2 / (4 pi eps0) =
14.39964535 eV A from ASE's CODATA constants.

Cutoff: the pair energy is multiplied by the quintic smoothstep switch::

    S(r) = 1 - 10 t^3 + 15 t^4 - 6 t^5,    t = (r - inner) / (outer - inner)

(``S = 1`` below ``inner``, 0 beyond ``outer``; defaults 3 and 4 A). ``S`` and its first two derivatives are
continuous, so the energy, the forces and their derivatives are continuous everywhere, the cutoff included. The
switch only lowers a repulsion that is positive and decreasing, so the switched pair force stays repulsive.

Energy (eV), forces (eV/A) and, for cells periodic along all three axes, the stress (eV/A^3, ASE's Voigt order
``xx yy zz yz xz xy`` and sign: positive = tensile) are computed over ASE's neighbour list, periodic images
included.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

if TYPE_CHECKING:
    from ase import Atoms

#: Coefficients and exponents of the universal screening function phi(x).
ZBL_COEFFICIENTS = np.array([0.18175, 0.50986, 0.28022, 0.02817])
ZBL_EXPONENTS = np.array([3.1998, 0.94229, 0.4029, 0.20162])
#: Universal screening length numerator, A (0.8854 Bohr radii).
ZBL_SCREENING_A = 0.46850
#: Exponent of Z in the screening length.
ZBL_Z_EXPONENT = 0.23

#: Default switch onset and cutoff (A).
DEFAULT_INNER = 3.0
DEFAULT_OUTER = 4.0


def coulomb_constant() -> float:
    """``e^2 / (4 pi eps0)`` in eV A (from ASE's CODATA constants: 14.39964535...)."""
    from ase import units

    return float(units._e / (4.0 * math.pi * units._eps0) * 1e10)


def screening_length(z1: Any, z2: Any) -> np.ndarray:
    """Universal screening length ``a = 0.46850 / (Z1^0.23 + Z2^0.23)`` (A); broadcasts over arrays."""
    z1 = np.asarray(z1, dtype=float)
    z2 = np.asarray(z2, dtype=float)
    return ZBL_SCREENING_A / (z1**ZBL_Z_EXPONENT + z2**ZBL_Z_EXPONENT)


def zbl_pair(z1: Any, z2: Any, r: Any) -> tuple[np.ndarray, np.ndarray]:
    """Unswitched ZBL pair energy and its radial derivative.

    Parameters
    ----------
    z1, z2
        Atomic numbers (scalars or arrays broadcasting with ``r``).
    r
        Distances (A), positive.

    Returns
    -------
    energy, derivative
        ``V(r)`` (eV) and ``dV/dr`` (eV/A), shaped as the broadcast inputs.
    """
    r = np.asarray(r, dtype=float)
    a = screening_length(z1, z2)
    x = r / a
    terms = ZBL_COEFFICIENTS * np.exp(-np.multiply.outer(x, ZBL_EXPONENTS))
    phi = terms.sum(axis=-1)
    dphi_dx = -(terms * ZBL_EXPONENTS).sum(axis=-1)
    prefactor = coulomb_constant() * np.asarray(z1, dtype=float) * np.asarray(z2, dtype=float)
    energy = prefactor * phi / r
    derivative = prefactor * (dphi_dx / (a * r) - phi / r**2)
    return energy, derivative


def smooth_switch(r: Any, inner: float, outer: float) -> tuple[np.ndarray, np.ndarray]:
    """The quintic smoothstep switch ``S(r)`` and ``dS/dr`` (1 below ``inner``, 0 beyond ``outer``)."""
    r = np.asarray(r, dtype=float)
    width = outer - inner
    t = np.clip((r - inner) / width, 0.0, 1.0)
    s = 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)
    ds = -30.0 * t**2 * (1.0 - t) ** 2 / width
    return s, ds


def switched_pair(z1: Any, z2: Any, r: Any, inner: float, outer: float) -> tuple[np.ndarray, np.ndarray]:
    """ZBL pair energy times the switch, and its radial derivative (eV, eV/A); zero beyond ``outer``."""
    v, dv = zbl_pair(z1, z2, r)
    s, ds = smooth_switch(r, inner, outer)
    return v * s, dv * s + v * ds


class ZBLCalculator(Calculator):
    """ASE calculator of the switched ZBL repulsion (see the module docstring).

    Parameters
    ----------
    inner
        Distance (A) where the switch starts (full ZBL below it).
    outer
        Cutoff (A): pairs farther apart do not interact.
    **kwargs
        Passed to ASE's ``Calculator``.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: ClassVar[dict[str, Any]] = {"inner": DEFAULT_INNER, "outer": DEFAULT_OUTER}
    nolabel = True

    def __init__(self, inner: float = DEFAULT_INNER, outer: float = DEFAULT_OUTER, **kwargs: Any) -> None:
        if not 0.0 < inner < outer:
            raise ValueError(f"ZBL switch needs 0 < inner < outer, got inner={inner}, outer={outer}")
        super().__init__(inner=float(inner), outer=float(outer), **kwargs)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] | None = None,
    ) -> None:
        """Energy, per-atom energies, forces and (3D-periodic cells) stress of ``atoms``."""
        from ase.neighborlist import neighbor_list

        super().calculate(atoms, properties or ["energy"], system_changes or all_changes)
        atoms = self.atoms
        inner, outer = float(self.parameters.inner), float(self.parameters.outer)
        n = len(atoms)
        # Full list: every pair twice (i->j and j->i), periodic images of an atom included.
        i, j, d, vec = neighbor_list("ijdD", atoms, outer)
        keep = d > 0.0
        i, j, d, vec = i[keep], j[keep], d[keep], vec[keep]
        numbers = atoms.numbers
        u, du = switched_pair(numbers[i], numbers[j], d, inner, outer)
        energies = 0.5 * np.bincount(i, weights=u, minlength=n)
        # vec points from i to j: a repulsion (du < 0) pushes i away from j.
        pair_forces = (du / d)[:, None] * vec
        forces = np.zeros((n, 3))
        np.add.at(forces, i, pair_forces)
        energy = float(energies.sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": forces,
        }
        if atoms.cell.rank == 3 and all(atoms.pbc):
            # dE/d(strain)_ab = 1/2 sum over the full list of dU/dr * D_a D_b / r; stress = that / volume.
            virial = 0.5 * np.einsum("p,pa,pb->ab", du / d, vec, vec)
            sigma = virial / atoms.get_volume()
            self.results["stress"] = np.array(
                [sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]]
            )


__all__ = [
    "DEFAULT_INNER",
    "DEFAULT_OUTER",
    "ZBLCalculator",
    "coulomb_constant",
    "screening_length",
    "smooth_switch",
    "switched_pair",
    "zbl_pair",
]
