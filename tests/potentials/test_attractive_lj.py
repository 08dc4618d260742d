"""The deliberately broken stand-in ``lj-nowall``: a correct calculator of a wrong potential."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from aloe.errors import AloeError
from aloe.potentials.ase_calculator import AttractiveLennardJonesPotential, attractive_lennard_jones
from aloe.potentials.registry import load_potential


def _rattled():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=3)
    atoms.calc = attractive_lennard_jones(sigma=2.3, epsilon=0.02, rc=5.0)
    return atoms


def test_pair_energy_is_the_attractive_half_of_lennard_jones():
    from ase import Atoms

    atoms = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.0]], cell=[20, 20, 20], pbc=True)
    atoms.calc = attractive_lennard_jones(sigma=2.5, epsilon=0.01, rc=6.0)
    expected = -4 * 0.01 * ((2.5 / 3.0) ** 6 - (2.5 / 6.0) ** 6)
    assert atoms.get_potential_energy() == pytest.approx(expected, rel=1e-12)
    # The pair attracts: the force on the lower atom points up, towards the other.
    assert atoms.get_forces()[0, 2] > 0


def test_forces_and_stress_are_derivatives_of_the_energy():
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    atoms = _rattled()
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-5), atol=1e-7)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-6), atol=1e-7)


def test_energy_falls_without_bound_on_compression():
    atoms = bulk("Cu", "fcc", a=3.6)
    energies = []
    for scale in (1.0, 0.8, 0.6, 0.4):
        a = atoms.copy()
        a.set_cell(atoms.cell * scale, scale_atoms=True)
        a.calc = attractive_lennard_jones()
        energies.append(a.get_potential_energy())
    assert np.all(np.diff(energies) < 0)


def test_registry_name_round_trips():
    pot = load_potential("lj-nowall", sigma=2.2, epsilon=0.05, rc=5.0)
    assert isinstance(pot, AttractiveLennardJonesPotential)
    assert pot.name == "lj-nowall(sigma=2.2,epsilon=0.05,rc=5.0)"
    again = load_potential(pot.name)
    assert again.name == pot.name
    with pytest.raises(AloeError, match="smooth"):
        load_potential("lj-nowall(smooth)")
