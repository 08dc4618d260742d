from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import CalculationFailed
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE

from aloe.potentials.base import Potential
from aloe.potentials.calculator import PotentialCalculator, calculator_for


class EMTPotential(Potential):
    """ASE's EMT behind the aloe seam (cheap stand-in for a real model); counts its evaluations."""

    name = "emt-test"

    def __init__(self) -> None:
        self.calls = 0

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        self.calls += 1
        atoms.calc = EMT()
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=True)


class FailingPotential(EMTPotential):
    """Raises for structures with more than ``limit`` atoms, returns NaN forces for exactly ``limit``."""

    name = "failing-test"

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        if len(atoms) > self.limit:
            raise RuntimeError("model exploded\nsecond line")
        energy, forces, stress = super()._predict_one(atoms)
        if len(atoms) == self.limit:
            forces = np.full_like(forces, np.nan)
        return energy, forces, stress


class NativeCalcPotential(EMTPotential):
    """Offers its own ASE calculator."""

    def calculator(self) -> EMT:
        return EMT()


def distorted_cu() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    cell = atoms.cell[:] @ np.array([[1.0, 0.02, 0.0], [0.0, 0.99, 0.01], [0.03, 0.0, 1.01]])
    atoms.set_cell(cell, scale_atoms=True)
    return atoms


def test_reproduces_emt_values():
    atoms = distorted_cu()
    ref = atoms.copy()
    ref.calc = EMT()
    atoms.calc = PotentialCalculator(EMTPotential())
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(
        ref.get_potential_energy(), abs=1e-10
    )
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-10)
    # Same Voigt order (xx, yy, zz, yz, xz, xy) and sign as ASE; shear components are nonzero here.
    stress = atoms.get_stress(voigt=True)
    np.testing.assert_allclose(stress, ref.get_stress(voigt=True), atol=1e-12)
    assert np.abs(stress[3:]).max() > 1e-4
    np.testing.assert_allclose(atoms.get_stress(voigt=False), ref.get_stress(voigt=False), atol=1e-12)


def test_one_model_call_per_configuration():
    potential = EMTPotential()
    atoms = distorted_cu()
    calc = PotentialCalculator(potential)
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    assert potential.calls == 1 and calc.n_evaluations == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert potential.calls == 2


def test_drives_ase_optimizer_like_emt():
    atoms = distorted_cu()
    ref = atoms.copy()
    atoms.calc = PotentialCalculator(EMTPotential())
    ref.calc = EMT()
    assert FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=2000)
    assert FIRE(FrechetCellFilter(ref), logfile=None).run(fmax=1e-3, steps=2000)
    assert np.abs(atoms.get_forces()).max() < 1e-3
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    assert atoms.cell.volume == pytest.approx(ref.cell.volume, rel=1e-3)


def test_fixed_cell_optimizer():
    atoms = distorted_cu()
    atoms.calc = PotentialCalculator(EMTPotential())
    before = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    assert atoms.get_potential_energy() < before


def test_failed_prediction_raises_with_reason():
    atoms = distorted_cu()  # 8 atoms
    atoms.calc = PotentialCalculator(FailingPotential(limit=4))
    with pytest.raises(CalculationFailed, match=r"failing-test.*Cu8.*RuntimeError: model exploded"):
        atoms.get_potential_energy()
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)  # 4 atoms: NaN forces
    atoms.calc = PotentialCalculator(FailingPotential(limit=4))
    with pytest.raises(CalculationFailed, match="non-finite forces"):
        atoms.get_forces()


def test_needs_a_cell():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    atoms.calc = PotentialCalculator(EMTPotential())
    with pytest.raises(CalculationFailed, match="3D cell"):
        atoms.get_potential_energy()


def test_calculator_for_uses_aloes_own_path():
    # Even a model with a native calculator is driven through aloe's prediction path (faster for CHGNet, and
    # the same numbers as screening).
    assert isinstance(calculator_for(NativeCalcPotential()), PotentialCalculator)
    assert isinstance(calculator_for(EMTPotential()), PotentialCalculator)
