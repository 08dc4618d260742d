from __future__ import annotations

import pickle

import numpy as np
import pytest

from aloe.errors import AloeError
from aloe.structures import StructureBatch
from tests.potentials.conftest import alcu_structures, small_structures

pytest.importorskip("mace")

from aloe.potentials.mace import MACEPotential, load_mace_module


def _calculator(path, dtype):
    from mace.calculators import MACECalculator

    # mace's own loading path (it relies on the TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD that `import mace` sets)
    return MACECalculator(model_paths=str(path), device="cpu", default_dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batched_equals_mace_calculator(tiny_mace_file, dtype):
    batch = StructureBatch.from_atoms(alcu_structures())
    pot = MACEPotential(tiny_mace_file, dtype=dtype, batch_size=4)
    pred = pot.predict(batch)
    assert pred.errors == [None] * len(batch)
    calc = _calculator(tiny_mace_file, dtype)
    tol = {"float64": 1e-10, "float32": 2e-5}[dtype]
    for r in range(len(batch)):
        atoms = batch.to_atoms(r)
        atoms.calc = calc
        assert pred.energy[r] == pytest.approx(atoms.get_potential_energy(), abs=tol * 10)
        np.testing.assert_allclose(pred.forces[batch.atom_slice(r)], atoms.get_forces(), atol=tol)
        np.testing.assert_allclose(pred.stress[r], atoms.get_stress(voigt=True), atol=tol)
    assert np.abs(pred.forces).max() > 1e-3 and np.abs(pred.stress).max() > 1e-4


def test_calculator_method(tiny_mace_file):
    pot = MACEPotential(tiny_mace_file, dtype="float64")
    batch = StructureBatch.from_atoms(alcu_structures()[:2])
    atoms = batch.to_atoms(1)
    atoms.calc = pot.calculator()
    assert pot.predict(batch).energy[1] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)


def test_unknown_elements_fail_alone(tiny_mace_file):
    structures = (
        alcu_structures()[:2] + small_structures()[2:3] + alcu_structures()[2:3]
    )  # NaCl in the middle
    batch = StructureBatch.from_atoms(structures)
    pred = MACEPotential(tiny_mace_file).predict(batch)
    assert pred.errors[2] == "mace:tiny: no parameters for element(s) Na, Cl"
    assert [e is None for e in pred.errors] == [True, True, False, True]
    assert np.isfinite(pred.energy[[0, 1, 3]]).all()


def test_committee_members_share_input_graphs(tiny_mace_file, tmp_path, monkeypatch):
    import shutil

    from mace import data as mace_data

    other = tmp_path / "other.model"
    shutil.copy(tiny_mace_file, other)
    # The per-structure path (mace's own AtomicData); the batch path's sharing is in test_mace_batch_input.py.
    a = MACEPotential(tiny_mace_file, graph_builder="per-structure")
    b = MACEPotential(other, graph_builder="per-structure")
    batch = StructureBatch.from_atoms(alcu_structures())
    original = mace_data.AtomicData.from_config
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(mace_data.AtomicData, "from_config", counting)
    shared: dict = {}
    pa, pb = a.predict(batch, shared), b.predict(batch, shared)
    assert len(calls) == len(batch)  # built once for both members
    np.testing.assert_array_equal(pa.energy, pb.energy)  # same weights, same inputs
    np.testing.assert_array_equal(pa.forces, pb.forces)
    assert a.data_settings() == b.data_settings()
    assert MACEPotential(other, dtype="float64").data_settings() != a.data_settings()


def test_names_identity_pickling(tiny_mace_file):
    pot = MACEPotential(tiny_mace_file)
    assert pot.name == "mace:tiny"
    assert pot.identity().startswith("mace:tiny:")
    batch = StructureBatch.from_atoms(alcu_structures()[:2])
    first = pot.predict(batch)
    blob = pickle.dumps(pot)
    assert len(blob) < 10_000
    np.testing.assert_array_equal(pickle.loads(blob).predict(batch).energy, first.energy)


def test_bad_files(tmp_path):
    with pytest.raises(AloeError, match="no such MACE model file"):
        MACEPotential(tmp_path / "missing.model")
    not_a_model = tmp_path / "junk.model"
    not_a_model.write_text("hello")
    with pytest.raises(AloeError, match="cannot load as a MACE model"):
        MACEPotential(not_a_model).predict(StructureBatch.from_atoms(alcu_structures()[:1]))
    import torch

    state = tmp_path / "state.model"
    torch.save({"weights": torch.zeros(2)}, state)
    with pytest.raises(AloeError, match="holds a dict, not a MACE model module"):
        load_mace_module(state)
    with pytest.raises(AloeError, match="dtype"):
        MACEPotential(state, dtype="float16")
