"""The potential contract (aloe.potentials.testing.validate_potential): every built-in potential and a MACE file
pass it, and each check fails, alone, on a potential broken in the way that check is there to catch.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ase.build import bulk

from aloe.errors import AloeError
from aloe.potentials.ase_calculator import EMTPotential, LennardJonesPotential
from aloe.potentials.base import Potential, Predictions
from aloe.potentials.registry import BUILTIN_NAMES
from aloe.potentials.testing import (
    CHECKS,
    PotentialContractError,
    Tolerances,
    ValidationReport,
    declared_elements,
    default_structures,
    validate_potential,
)
from tests.potentials.conftest import emt_structures


def _failed(report: ValidationReport) -> list[str]:
    return [c.name for c in report.failed]


# ---- potentials that pass ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_potential_passes(name):
    options = {}
    if name.startswith("chgnet-"):
        if importlib.util.find_spec("chgnet") is None:
            pytest.skip("chgnet is not installed")
        options = {"threads": 1}
    report = validate_potential(name, **options)
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == list(CHECKS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mace_file_passes(tiny_mace_file, dtype):
    report = validate_potential(str(tiny_mace_file), dtype=dtype)
    assert report.ok, str(report)
    # the file's elements, Al and Cu, are the default structures' elements
    assert "triclinic-4 (Al2Cu2)" in report.structures


@pytest.mark.slow
def test_trained_mace_file_passes(tmp_path):
    pytest.importorskip("mace")
    from tests.conftest import train_tiny_mace

    path = train_tiny_mace(tmp_path, ["Al", "Cu"])
    report = validate_potential(path, dtype="float32")
    assert report.ok, str(report)


def test_given_structures_pass():
    report = validate_potential(EMTPotential(), emt_structures())
    assert report.ok, str(report)
    assert len(report.structures) == len(emt_structures())


# ---- the default structures -----------------------------------------------------------------------------------
def test_default_structures_cover_the_cases():
    batch = default_structures()
    assert list(batch.n_atoms) == [4, 1, 2, 8]
    assert set(batch.numbers.tolist()) == {13, 29}
    assert (np.linalg.det(batch.cell) > 0).all()  # right-handed
    triclinic = batch.to_atoms(0).cell.cellpar()
    assert np.abs(triclinic[3:] - 90.0).min() > 10.0  # no right angle: a non-orthogonal cell
    # strained: no two lattice vectors of the 1-atom fcc cell keep the same length
    assert len(np.unique(np.round(batch.to_atoms(1).cell.lengths(), 6))) == 3
    assert set(default_structures(["Fe"]).numbers.tolist()) == {26}


@pytest.mark.parametrize("elements", [[], ["Al", "Cu", "Ni"], ["Xx"]])
def test_default_structures_reject_bad_elements(elements):
    with pytest.raises(AloeError):
        default_structures(elements)


def test_declared_elements_choose_the_structures(tiny_mace_file):
    from aloe.potentials.registry import load_potential

    assert declared_elements(load_potential(str(tiny_mace_file))) == (13, 29)
    assert declared_elements(EMTPotential()) is None
    lj = LennardJonesPotential()
    lj.atomic_numbers = (26, 8)  # type: ignore[attr-defined]  # a model for Fe and O only
    report = validate_potential(lj)
    assert report.ok, str(report)
    assert report.structures[0] == "triclinic-4 (Fe2O2)"


# ---- the report ----------------------------------------------------------------------------------------------
class _VaspSignStress(EMTPotential):
    """EMT with the stress negated (VASP's sign: compressive positive)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "emt-vasp-sign"

    def _predict_one(self, atoms):
        energy, forces, stress = super()._predict_one(atoms)
        return energy, forces, -stress


def test_report_lists_and_raises_every_failed_check():
    report = validate_potential(_VaspSignStress())
    assert not report.ok
    assert _failed(report) == ["stress"]
    assert report.check("stress") is report.failed[0]
    with pytest.raises(KeyError):
        report.check("no such check")
    lines = str(report).splitlines()
    assert len(lines) == 1 + len(CHECKS)
    assert lines[0].startswith("emt-vasp-sign: 5/6 checks passed on triclinic-4")
    assert [line.split()[0] for line in lines[1:]] == ["ok", "ok", "ok", "FAILED", "ok", "ok"]
    with pytest.raises(PotentialContractError, match=r"emt-vasp-sign breaks .*\n.*FAILED  stress: ") as info:
        report.raise_if_failed()
    assert isinstance(info.value, AssertionError)
    validate_potential("emt").raise_if_failed()  # passes quietly


def test_options_go_with_a_spec_only():
    with pytest.raises(AloeError, match="options"):
        validate_potential(EMTPotential(), batch_size=4)


# ---- broken potentials: each fails exactly its check -------------------------------------------------------
class _NaNStressOnOneAtomCells(EMTPotential):
    """EMT whose stress is NaN for 1-atom cells."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "emt-nan"

    def _predict_one(self, atoms):
        energy, forces, stress = super()._predict_one(atoms)
        return energy, forces, np.full(6, np.nan) if len(atoms) == 1 else stress


class _SilentNaN(_NaNStressOnOneAtomCells):
    """The same, with the base class's flagging of non-finite values switched off."""

    def _flag_non_finite(self, out, batch, energy_only=False):
        pass


def test_nan_is_flagged_by_the_base_class():
    # The flag works: the NaN row carries an error, so 'non-finite' passes, and 'outputs' reports the failure.
    report = validate_potential(_NaNStressOnOneAtomCells())
    assert _failed(report) == ["outputs"], str(report)
    assert "fcc-1 (emt-nan returned non-finite stress)" in report.check("outputs").detail


def test_silent_nan_fails_the_non_finite_check():
    report = validate_potential(_SilentNaN())
    assert _failed(report) == ["non-finite"], str(report)
    assert "fcc-1 (predict: stress)" in report.check("non-finite").detail


def test_wrong_stress_sign_fails_the_stress_check():
    report = validate_potential(_VaspSignStress())
    assert _failed(report) == ["stress"], str(report)
    assert "VASP's sign" in report.check("stress").detail


class _ShearOrderSwapped(EMTPotential):
    """EMT with Voigt order xx yy zz xy xz yz (yz and xy swapped)."""

    def _predict_one(self, atoms):
        energy, forces, stress = super()._predict_one(atoms)
        return energy, forces, stress[[0, 1, 2, 5, 4, 3]]


def test_wrong_voigt_order_fails_the_stress_check():
    report = validate_potential(_ShearOrderSwapped())
    assert _failed(report) == ["stress"], str(report)
    assert "matches in the order xx yy zz xy xz yz" in report.check("stress").detail


class _NegatedForces(EMTPotential):
    """EMT with forces of the wrong sign (+dE/dx)."""

    def _predict_one(self, atoms):
        energy, forces, stress = super()._predict_one(atoms)
        return energy, -forces, stress


def test_wrong_force_sign_fails_the_forces_check():
    report = validate_potential(_NegatedForces())
    assert _failed(report) == ["forces"], str(report)


class _BatchDependent(EMTPotential):
    """EMT that predicts whole batches and adds 1 meV/atom per other structure in the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 32

    def _predict_batch(self, batch, shared):
        out = super()._predict_batch(batch, shared)
        out.energy = out.energy + 1e-3 * (len(batch) - 1) * batch.n_atoms
        return out

    def _predict_energy_batch(self, batch, shared):
        return self._predict_batch(batch, shared)  # the energy-only path agrees with predict


def test_batch_dependence_fails_the_batch_invariance_check():
    report = validate_potential(_BatchDependent())
    assert _failed(report) == ["batch-invariance"], str(report)
    assert "energy differ by 0.003 eV/atom" in report.check("batch-invariance").detail


class _EnergyOnlyOffset(EMTPotential):
    """EMT whose energy-only path is 10 meV/atom above predict's."""

    def _predict_energy_batch(self, batch, shared):
        out = super()._predict_energy_batch(batch, shared)
        out.energy = out.energy + 0.01 * batch.n_atoms
        return out


def test_energy_only_offset_fails_the_energy_only_check():
    report = validate_potential(_EnergyOnlyOffset())
    assert _failed(report) == ["energy-only"], str(report)


class _WrapsCoordinates(EMTPotential):
    """EMT that wraps the caller's fractional coordinates into [0, 1) in place (same physics, mutated input)."""

    def predict(self, batch, shared=None):
        batch.frac_coords %= 1.0
        return super().predict(batch, shared)


def test_mutating_the_input_fails_the_outputs_check():
    assert (default_structures().frac_coords < 0).any()  # there is something to wrap
    report = validate_potential(_WrapsCoordinates())
    assert _failed(report) == ["outputs"], str(report)
    assert "changed the batch they were given" in report.check("outputs").detail


class _FullStressTensor(EMTPotential):
    """EMT whose predict returns 3x3 stress tensors instead of Voigt vectors."""

    def predict(self, batch, shared=None):
        pred = super().predict(batch, shared)
        tensors = np.zeros((len(batch), 3, 3))
        for k, (i, j) in enumerate(((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
            tensors[:, i, j] = tensors[:, j, i] = pred.stress[:, k]
        return Predictions(pred.energy, pred.forces, tensors, pred.errors)


def test_wrong_stress_shape_fails_the_outputs_check():
    report = validate_potential(_FullStressTensor())
    assert "outputs" in _failed(report)
    assert "stress has shape (4, 3, 3), not (4, 6)" in report.check("outputs").detail


class _AlwaysRaises(EMTPotential):
    def _predict_one(self, atoms):
        raise RuntimeError("no parameters")


class _CannotLoad(Potential):
    name = "unloadable"

    def predict(self, batch, shared=None):
        raise AloeError("unloadable: cannot load the model")

    predict_energies = predict


@pytest.mark.parametrize("potential", [_AlwaysRaises(), _CannotLoad()], ids=["raises", "cannot-load"])
def test_a_potential_that_predicts_nothing_fails_every_check(potential):
    report = validate_potential(potential)  # the validation itself does not raise
    assert _failed(report) == list(CHECKS), str(report)


# ---- checks that cannot judge their input fail instead of passing ----------------------------------------------
def test_one_structure_cannot_show_batch_invariance():
    report = validate_potential(EMTPotential(), emt_structures()[1:2])  # 4 Al atoms
    assert _failed(report) == ["batch-invariance"], str(report)
    assert "at least two structures" in report.check("batch-invariance").detail


def test_one_atom_has_no_forces_to_differentiate():
    report = validate_potential(EMTPotential(), emt_structures()[:1])  # 1 Cu atom
    assert _failed(report) == ["forces", "batch-invariance"], str(report)
    assert "at least two atoms" in report.check("forces").detail


def test_symmetric_structures_have_nothing_to_differentiate():
    perfect = [bulk("Cu", "fcc", a=3.62, cubic=True), bulk("Cu", "fcc", a=3.62)]
    report = validate_potential(EMTPotential(), perfect)
    assert "forces" in _failed(report)
    assert "nothing to test" in report.check("forces").detail


def test_tolerances_are_used():
    # the 1 meV/atom per structure of _BatchDependent passes when the batch tolerance allows 10 meV/atom
    report = validate_potential(_BatchDependent(), tolerances=Tolerances(energy_per_atom=1e-2))
    assert report.ok, str(report)
