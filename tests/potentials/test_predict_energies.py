"""Potential.predict_energies: the energies of predict, no forces or stress, the same failure isolation.

Fast cases only (EMT, Lennard-Jones, toy potentials); the batched models (CHGNet trio, a trained MACE) are checked in
``test_batch_invariance.py`` on its mixed batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT

from aloe.potentials.ase_calculator import ASECalculatorPotential, EMTPotential, LennardJonesPotential
from aloe.potentials.base import Potential, Predictions
from aloe.structures import StructureBatch
from tests.potentials.conftest import emt_structures


def _batch() -> StructureBatch:
    return StructureBatch.from_atoms(emt_structures(), ids=list("abcde"))


def _assert_energy_only(pred: Predictions, batch: StructureBatch) -> None:
    # Forces and stress are not computed: NaN everywhere, and that is not an error.
    assert pred.forces.shape == (int(batch.offsets[-1]), 3) and np.isnan(pred.forces).all()
    assert pred.stress.shape == (len(batch), 6) and np.isnan(pred.stress).all()


@pytest.mark.parametrize("potential", [EMTPotential(), LennardJonesPotential()], ids=["emt", "lj"])
def test_ase_energies_equal_predict(potential):
    batch = _batch()
    full = potential.predict(batch)
    energies = potential.predict_energies(batch)
    assert full.errors == [None] * len(batch) and energies.errors == [None] * len(batch)
    np.testing.assert_allclose(energies.energy, full.energy, rtol=0, atol=1e-10)
    assert np.ptp(energies.energy) > 0.1  # distinct structures, not one number
    _assert_energy_only(energies, batch)


class _CountingEMT(ASECalculatorPotential):
    """EMT that records which properties ASE asked its calculator for."""

    def __init__(self) -> None:
        super().__init__(EMT(), name="emt-counting")
        self.asked: list[tuple[str, ...]] = []
        calculate = self._calc.calculate

        def spy(atoms=None, properties=("energy",), system_changes=()):
            self.asked.append(tuple(properties))
            return calculate(atoms, properties, system_changes)

        self._calc.calculate = spy  # type: ignore[method-assign]


def test_ase_energy_path_asks_for_the_energy_only():
    pot = _CountingEMT()
    pot.predict_energies(_batch())
    assert pot.asked == [("energy",)] * 5


class _NoStress(ASECalculatorPotential):
    """A calculator without stress: predict fails every structure, energies alone work."""

    def __init__(self) -> None:
        from ase.calculators.calculator import PropertyNotImplementedError

        class _Calc(EMT):
            implemented_properties = ("energy", "free_energy", "forces")

            def get_stress(self, atoms=None):
                raise PropertyNotImplementedError("no stress")

        super().__init__(_Calc(), name="emt-nostress")


def test_energies_need_no_stress():
    batch = _batch()
    assert all(e is not None and "stress" in e for e in _NoStress().predict(batch).errors)
    pred = _NoStress().predict_energies(batch)
    assert pred.errors == [None] * len(batch)
    np.testing.assert_allclose(pred.energy, EMTPotential().predict(batch).energy, rtol=0, atol=1e-10)


class _Toy(Potential):
    """Energy = number of atoms; misbehaves on chosen ids; records its calls (no energy hook: the default path)."""

    name = "toy"

    def __init__(self, raise_on=(), nan_forces_on=(), nan_energy_on=(), batch_size=32):
        self.raise_on, self.batch_size = set(raise_on), batch_size
        self.nan_forces_on, self.nan_energy_on = set(nan_forces_on), set(nan_energy_on)
        self.calls: list[int] = []

    def _predict_batch(self, batch, shared):
        self.calls.append(len(batch))
        if self.raise_on & set(batch.ids):
            raise RuntimeError(f"cannot handle {sorted(self.raise_on & set(batch.ids))[0]}\nsecond line")
        out = Predictions.empty(batch)
        out.energy[:] = batch.n_atoms
        out.forces[:] = 0.0
        out.stress[:] = 0.0
        out.errors = [None] * len(batch)
        for r, i in enumerate(batch.ids):
            if i in self.nan_forces_on:
                out.forces[batch.atom_slice(r)][0, 0] = np.nan
                out.stress[r, 0] = np.inf
            if i in self.nan_energy_on:
                out.energy[r] = np.nan
        return out


def test_default_energy_path_isolates_a_raising_structure():
    batch = _batch()
    pot = _Toy(raise_on={"c"}, batch_size=4)
    pred = pot.predict_energies(batch)
    # chunk [a b c d] raised -> retried one by one (4 calls); chunk [e] fine
    assert pot.calls == [4, 1, 1, 1, 1, 1]
    assert pred.errors == [None, None, "toy raised RuntimeError: cannot handle c", None, None]
    np.testing.assert_array_equal(pred.energy[[0, 1, 3, 4]], batch.n_atoms[[0, 1, 3, 4]])
    assert np.isnan(pred.energy[2])
    _assert_energy_only(pred, batch)


def test_only_a_non_finite_energy_is_flagged():
    batch = _batch()
    pred = _Toy(nan_forces_on={"b"}, nan_energy_on={"d"}).predict_energies(batch)
    assert pred.errors == [None, None, None, "toy returned non-finite energy", None]
    _assert_energy_only(pred, batch)
    # predict still flags the forces and stress of 'b'.
    full = _Toy(nan_forces_on={"b"}).predict(batch)
    assert full.errors[1] == "toy returned non-finite forces, stress"


def test_ase_per_structure_failure_is_isolated():
    class _Fragile(ASECalculatorPotential):
        def __init__(self) -> None:
            super().__init__(EMT, name="emt-fragile")

        def _predict_one(self, atoms):  # overridden: the energy path must honour it
            if atoms.info["aloe_id"] == "d":
                raise ValueError("bad d\nmore")
            return super()._predict_one(atoms)

    batch = _batch()
    pred = _Fragile().predict_energies(batch)
    assert pred.errors == [None, None, None, "emt-fragile raised ValueError: bad d", None]
    ref = EMTPotential().predict(batch).energy
    np.testing.assert_allclose(pred.energy[[0, 1, 2, 4]], ref[[0, 1, 2, 4]], rtol=0, atol=1e-10)
    assert np.isnan(pred.energy[3])
    _assert_energy_only(pred, batch)


def test_energy_hook_is_used_and_shares_the_loop():
    class _Split(_Toy):
        def __init__(self) -> None:
            super().__init__(batch_size=2)
            self.energy_calls: list[int] = []

        def _predict_batch(self, batch, shared):
            raise AssertionError("the energy path must not call _predict_batch")

        def _predict_energy_batch(self, batch, shared):
            self.energy_calls.append(len(batch))
            if "b" in batch.ids:
                raise RuntimeError("b")
            out = Predictions.empty(batch)
            out.energy[:] = 2.0 * batch.n_atoms
            out.errors = [None] * len(batch)
            return out

    batch = _batch()
    pot = _Split()
    pred = pot.predict_energies(batch)
    assert pot.energy_calls == [2, 1, 1, 2, 1]  # [a b] raised -> a, b alone; [c d]; [e]
    assert pred.errors[1] == "toy raised RuntimeError: b" and pred.ok.sum() == 4
    np.testing.assert_array_equal(pred.energy[[0, 2, 3, 4]], 2.0 * batch.n_atoms[[0, 2, 3, 4]])
