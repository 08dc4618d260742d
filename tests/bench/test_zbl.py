"""ZBL calculator: the analytic pair formula, numerical forces and stress, Newton's third law, the smooth cutoff.

No installed package offers the universal ZBL potential with these constants (MACE's ``ZBLBasis`` uses rounded
coefficients, another screening length and a polynomial envelope), so the oracle is the formula written out here
independently, term by term, with the constants as published.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aloe.bench.zbl import ZBLCalculator, coulomb_constant, smooth_switch, zbl_pair


def reference_pair_energy(z1: int, z2: int, r: float) -> float:
    """Universal ZBL, from the published constants (no switch)."""
    e2 = 1.602176634e-19**2 / (4 * math.pi * 8.8541878128e-12) / 1.602176634e-19 * 1e10  # eV A
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (
        0.18175 * math.exp(-3.1998 * x)
        + 0.50986 * math.exp(-0.94229 * x)
        + 0.28022 * math.exp(-0.4029 * x)
        + 0.02817 * math.exp(-0.20162 * x)
    )
    return z1 * z2 * e2 / r * phi


def dimer(z1: int, z2: int, r: float) -> Atoms:
    return Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [r, 0, 0]], pbc=False)


@pytest.mark.parametrize(
    ("z1", "z2", "r"), [(1, 1, 0.5), (14, 14, 1.0), (26, 8, 1.5), (79, 79, 2.0), (3, 74, 2.9)]
)
def test_dimer_energy_matches_the_formula(z1: int, z2: int, r: float) -> None:
    atoms = dimer(z1, z2, r)
    atoms.calc = ZBLCalculator()  # r below the switch onset (3 A): plain ZBL
    assert atoms.get_potential_energy() == pytest.approx(reference_pair_energy(z1, z2, r), rel=1e-8)


def test_known_values() -> None:
    assert coulomb_constant() == pytest.approx(14.399645, rel=1e-7)
    # At r -> 0 phi -> sum of coefficients = 1.0: bare Coulomb.
    energy, _ = zbl_pair(1, 1, 1e-6)
    assert energy == pytest.approx(14.399645 / 1e-6, rel=1e-4)


def test_dimer_force_is_repulsive_and_newtonian() -> None:
    atoms = dimer(26, 26, 1.8)
    atoms.calc = ZBLCalculator()
    forces = atoms.get_forces()
    assert forces[0, 0] < 0 < forces[1, 0]
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-12)
    h = 1e-5
    de = (reference_pair_energy(26, 26, 1.8 + h) - reference_pair_energy(26, 26, 1.8 - h)) / (2 * h)
    assert forces[1, 0] == pytest.approx(-de, rel=1e-6)


def test_switch_is_smooth_and_ends_at_the_cutoff() -> None:
    r = np.linspace(2.5, 4.5, 2001)
    s, ds = smooth_switch(r, 3.0, 4.0)
    assert s[r <= 3.0] == pytest.approx(1.0)
    assert np.all(s[r >= 4.0] == 0.0)
    assert np.all(np.diff(s) <= 1e-15)
    np.testing.assert_allclose(ds[1:-1], np.gradient(s, r)[1:-1], atol=2e-3)
    # Energy and force of a dimer vanish continuously at the cutoff.
    calc = ZBLCalculator(inner=3.0, outer=4.0)
    near = dimer(13, 13, 4.0 - 1e-4)
    near.calc = calc
    assert abs(near.get_potential_energy()) < 1e-10
    assert np.abs(near.get_forces()).max() < 1e-6
    far = dimer(13, 13, 4.0 + 1e-4)
    far.calc = ZBLCalculator(inner=3.0, outer=4.0)
    assert far.get_potential_energy() == 0.0
    with pytest.raises(ValueError, match="inner < outer"):
        ZBLCalculator(inner=4.0, outer=3.0)


def rattled_alloy() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.2, cubic=True) * (2, 2, 1)
    atoms.numbers[::3] = 13
    atoms.set_cell(
        atoms.cell[:] @ np.array([[1.0, 0.05, 0.0], [0.0, 1.0, 0.03], [0.0, 0.0, 1.0]]), scale_atoms=True
    )
    atoms.rattle(0.15, seed=3)
    return atoms


def test_forces_are_the_negative_gradient() -> None:
    atoms = rattled_alloy()
    atoms.calc = ZBLCalculator(inner=2.5, outer=3.5)
    forces = atoms.get_forces()
    h = 1e-5
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            plus.calc = minus.calc = ZBLCalculator(inner=2.5, outer=3.5)
            numeric[i, k] = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-6 * max(1.0, np.abs(forces).max()))
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-9)


def test_stress_is_the_strain_derivative() -> None:
    atoms = rattled_alloy()
    atoms.calc = ZBLCalculator(inner=2.5, outer=3.5)
    stress = atoms.get_stress(voigt=False)
    volume = atoms.get_volume()
    h = 1e-6
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h
                strained = atoms.copy()
                strained.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
                strained.calc = ZBLCalculator(inner=2.5, outer=3.5)
                energies.append(strained.get_potential_energy())
            numeric[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    numeric = 0.5 * (numeric + numeric.T)
    np.testing.assert_allclose(stress, numeric, atol=1e-7 * max(1.0, np.abs(stress).max()))
    # Compressed repulsion: ASE's sign makes the diagonal negative (pressure positive).
    assert np.all(np.diag(stress) < 0)


def test_periodic_images_of_a_single_atom_interact() -> None:
    atoms = Atoms("Cu", cell=[2.0, 2.0, 2.0], pbc=True)
    atoms.calc = ZBLCalculator()
    # Six images at 2 A, twelve at 2.83 A, eight at 3.46 A (switched); each pair counts half for the one atom.
    a = 2.0
    expected = 0.0
    for dist, count in ((a, 6), (a * math.sqrt(2), 12), (a * math.sqrt(3), 8)):
        s, _ = smooth_switch(dist, 3.0, 4.0)
        expected += 0.5 * count * reference_pair_energy(29, 29, dist) * float(s)
    assert atoms.get_potential_energy() == pytest.approx(expected, rel=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), 0.0, atol=1e-10)
