from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from aloe.errors import AloeError
from aloe.potentials.ase_calculator import (
    ASECalculatorPotential,
    EMTPotential,
    LennardJonesPotential,
    import_object,
)
from aloe.structures import StructureBatch
from tests.potentials.conftest import small_structures


def _raw(batch: StructureBatch, calc: Calculator):
    energy, forces, stress = [], [], []
    for r in range(len(batch)):
        atoms = batch.to_atoms(r)
        atoms.calc = calc
        energy.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        stress.append(atoms.get_stress())
    return np.array(energy), np.concatenate(forces), np.array(stress)


def test_emt_equals_ase(emt_batch):
    pred = EMTPotential().predict(emt_batch)
    assert pred.errors == [None] * len(emt_batch)
    energy, forces, stress = _raw(emt_batch, EMT())
    np.testing.assert_allclose(pred.energy, energy, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pred.forces, forces, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pred.stress, stress, rtol=1e-12, atol=1e-12)
    assert np.abs(pred.forces).max() > 1e-2 and np.abs(pred.stress).max() > 1e-4


@pytest.mark.parametrize("make", [EMTPotential, LennardJonesPotential])
def test_a_result_does_not_depend_on_the_structure_before(make) -> None:
    """Bit for bit: ASE's EMT and LJ update a kept neighbour list, whose skin changes the last bits of the forces."""
    from ase.build import bulk

    first = bulk("Cu", "fcc", a=3.6) * (3, 3, 3)
    first.rattle(0.05, seed=1)
    potential = make()
    for seed in range(2, 12):
        second = first.copy()
        second.rattle(0.1, seed=seed)  # within the list's skin: ASE would update, not rebuild
        batch = StructureBatch.from_atoms([second])
        potential.predict(StructureBatch.from_atoms([first]))
        after_first = potential.predict(batch)
        alone = make().predict(batch)
        np.testing.assert_array_equal(after_first.forces, alone.forces)
        np.testing.assert_array_equal(after_first.stress, alone.stress)
        assert after_first.energy[0] == alone.energy[0]
        assert potential.predict_energies(batch).energy[0] == alone.energy[0]


def test_lennard_jones_equals_ase(chgnet_batch):
    pot = LennardJonesPotential(sigma=2.3, epsilon=0.02, rc=5.5)
    assert pot.name == "lj(sigma=2.3,epsilon=0.02,rc=5.5)"
    pred = pot.predict(chgnet_batch)
    assert pred.errors == [None] * len(chgnet_batch)
    energy, forces, stress = _raw(chgnet_batch, LennardJones(sigma=2.3, epsilon=0.02, rc=5.5, smooth=False))
    np.testing.assert_allclose(pred.energy, energy, rtol=1e-12)
    np.testing.assert_allclose(pred.forces, forces, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pred.stress, stress, rtol=1e-10, atol=1e-12)


def test_lennard_jones_default_cutoff_and_name():
    assert LennardJonesPotential().name == "lj(sigma=2.5,epsilon=0.01,rc=6.0)"
    assert LennardJonesPotential(sigma=2.0, rc=None).kwargs["rc"] == 6.0
    assert LennardJonesPotential(smooth=True).name.endswith(",smooth)")


def test_emt_unsupported_element_fails_alone():
    batch = StructureBatch.from_atoms(small_structures()[:4])  # Cu, Al, NaCl, Si
    pred = EMTPotential().predict(batch)
    assert pred.errors[:2] == [None, None]
    assert pred.errors[2] == "emt raised NotImplementedError: No EMT-potential for Na"
    assert pred.errors[3].startswith("emt raised NotImplementedError")
    assert np.isnan(pred.energy[2:]).all() and np.isfinite(pred.energy[:2]).all()
    assert np.isnan(pred.forces[batch.atom_slice(2)]).all()


class _NoStress(Calculator):
    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 1.0, "forces": np.zeros((len(atoms), 3))}


def test_calculator_without_stress_gives_a_clear_error(emt_batch):
    pred = ASECalculatorPotential(_NoStress(), name="nostress").predict(emt_batch.take([0, 1]))
    assert pred.errors[0] == (
        "nostress raised PropertyNotImplementedError: the ASE calculator _NoStress does not implement stress "
        "(aloe needs energy, forces and stress of periodic structures)"
    )


def test_instance_and_factory_forms(emt_batch):
    by_instance = ASECalculatorPotential(EMT())
    by_factory = ASECalculatorPotential(EMT, name="emt-factory")
    by_path = ASECalculatorPotential.from_import_path("ase.calculators.emt:EMT")
    assert by_instance.name == "emt" and by_path.name == "ase.calculators.emt:EMT"
    a, b, c = (p.predict(emt_batch) for p in (by_instance, by_factory, by_path))
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.energy, c.energy)
    # calculator(): fresh from a factory, the wrapped instance otherwise
    assert by_factory.calculator() is not by_factory.calculator()
    assert by_instance.calculator() is by_instance.calculator()
    # factory kwargs
    lj = ASECalculatorPotential.from_import_path("ase.calculators.lj:LennardJones", sigma=2.0, rc=5.0)
    assert lj.calculator().parameters["sigma"] == 2.0


def test_factory_pickles_without_its_calculator(emt_batch):
    pot = EMTPotential()
    pot.predict(emt_batch)  # builds the calculator
    clone = pickle.loads(pickle.dumps(pot))
    assert clone._calc is None
    np.testing.assert_array_equal(clone.predict(emt_batch).energy, pot.predict(emt_batch).energy)


def test_bad_inputs():
    with pytest.raises(AloeError, match="expected an ASE calculator"):
        ASECalculatorPotential(42)
    with pytest.raises(AloeError, match="kwargs are only used with a calculator factory"):
        ASECalculatorPotential(EMT(), kwargs={"a": 1})
    with pytest.raises(AloeError, match="cannot import no_such_module"):
        import_object("no_such_module:thing")
    with pytest.raises(AloeError, match="has no attribute Nope"):
        import_object("ase.calculators.emt:Nope")
    with pytest.raises(AloeError, match=r"expected 'package\.module:factory'"):
        import_object("ase.calculators.emt")
    pot = ASECalculatorPotential(lambda: "not a calculator", name="weird")
    pred = pot.predict(StructureBatch.from_atoms(small_structures()[:1]))
    assert (
        pred.errors[0] == "weird raised AloeError: weird: the factory returned a str, not an ASE calculator"
    )
