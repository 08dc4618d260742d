from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.units import GPa

from aloe.structures import StructureBatch

pytest.importorskip("chgnet")

from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator

from aloe.potentials.chgnet import CHGNetPotential

MODELS = ["0.3.0", "0.2.0", "r2scan"]


@pytest.fixture(scope="module")
def potentials() -> dict[str, CHGNetPotential]:
    return {name: CHGNetPotential(name, threads=1) for name in MODELS}


def _reference_model(name: str) -> CHGNet:
    # An independent copy of the model, so nothing our potential did to its own model can leak into the oracle.
    model = CHGNet.load(model_name=name, use_device="cpu", verbose=False)
    model.graph_converter.set_isolated_atom_response("ignore")
    return model


@pytest.mark.parametrize("name", MODELS)
def test_fast_path_equals_predict_structure(name, potentials, chgnet_batch):
    pot = potentials[name]
    pred = pot.predict(chgnet_batch)
    assert all(e is None for e in pred.errors)

    model = _reference_model(name)
    structures = [chgnet_batch.to_structure(r) for r in range(len(chgnet_batch))]
    # batch_size=1: chgnet's own batches are not batch-invariant for 0.2.0 (CsCl here has no bond-graph angle; see
    # aloe.potentials.chgnet), and the structure alone is the model's answer.
    ref = model.predict_structure(structures, task="efs", batch_size=1)
    for r, res in enumerate(ref):
        n = len(structures[r])
        sl = chgnet_batch.atom_slice(r)
        # energy per atom * n (float32 model: compare to a few 1e-5 eV/atom)
        assert pred.energy[r] == pytest.approx(float(res["e"]) * n, abs=2e-5 * n)
        np.testing.assert_allclose(pred.forces[sl], res["f"], atol=2e-4)
        s = res["s"] * GPa  # GPa -> eV/A^3, CHGNet's sign kept (= ASE's)
        voigt = [
            s[0, 0],
            s[1, 1],
            s[2, 2],
            (s[1, 2] + s[2, 1]) / 2,
            (s[0, 2] + s[2, 0]) / 2,
            (s[0, 1] + s[1, 0]) / 2,
        ]
        np.testing.assert_allclose(pred.stress[r], voigt, atol=2e-6)
    # the structures are strained and rattled: the comparison is not between zeros
    assert np.abs(pred.forces).max() > 0.1
    assert np.abs(pred.stress).max() > 1e-3


def test_stress_sign_matches_chgnet_calculator(potentials, chgnet_batch):
    pot = potentials["0.3.0"]
    pred = pot.predict(chgnet_batch)
    calc = CHGNetCalculator(model=_reference_model("0.3.0"), use_device="cpu", on_isolated_atoms="ignore")
    for r in range(len(chgnet_batch)):
        atoms = chgnet_batch.to_atoms(r)
        atoms.calc = calc
        assert pred.energy[r] == pytest.approx(atoms.get_potential_energy(), abs=2e-5 * len(atoms))
        np.testing.assert_allclose(pred.forces[chgnet_batch.atom_slice(r)], atoms.get_forces(), atol=2e-4)
        np.testing.assert_allclose(pred.stress[r], atoms.get_stress(voigt=True), atol=2e-6)
    # ASE convention: a stretched cell pulls inwards -> positive (tensile) stress; a squeezed one -> negative
    stretched = StructureBatch.from_atoms([bulk("Cu", "fcc", a=4.0)])
    squeezed = StructureBatch.from_atoms([bulk("Cu", "fcc", a=3.3)])
    assert (pot.predict(stretched).stress[0, :3] > 0).all()
    assert (pot.predict(squeezed).stress[0, :3] < 0).all()


def test_left_handed_cells_keep_the_stress_sign(potentials):
    # The same crystal with two lattice vectors swapped (left-handed basis). chgnet 0.4.2 divides by the signed
    # volume and flips the stress; aloe divides by |V|, so both descriptions give the same stress.
    right = bulk("Cu", "fcc", a=3.9)
    left = right.copy()
    left.set_cell(right.cell[[1, 0, 2]], scale_atoms=False)
    assert np.linalg.det(left.cell[:]) < 0
    pred = potentials["0.3.0"].predict(StructureBatch.from_atoms([right, left]))
    assert pred.stress[0, 0] > 0.05  # stretched Cu: tensile
    np.testing.assert_allclose(pred.stress[1, :3], pred.stress[0, :3], rtol=1e-5)
    assert pred.energy[1] == pytest.approx(pred.energy[0], abs=1e-5)
    # chgnet's own calculator gets the sign wrong for the left-handed basis (documented quirk)
    atoms = left.copy()
    atoms.calc = CHGNetCalculator(model=_reference_model("0.3.0"), use_device="cpu")
    np.testing.assert_allclose(atoms.get_stress()[:3], -pred.stress[1, :3], rtol=1e-5)


def test_calculator_is_chgnets_own(potentials, chgnet_batch):
    pot = potentials["r2scan"]
    calc = pot.calculator()
    assert isinstance(calc, CHGNetCalculator)
    atoms = chgnet_batch.to_atoms(3)
    atoms.calc = calc
    pred = pot.predict(chgnet_batch.take([3]))
    assert pred.energy[0] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)


def test_isolated_atoms_are_predicted_like_the_calculator(potentials):
    # One Kr atom in a 7 A cube: no neighbour within the 6 A cutoff (every atom isolated).
    atoms = Atoms("KrXe", cell=np.eye(3) * 7.0, scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], pbc=True)
    batch = StructureBatch.from_atoms([atoms])
    pot = potentials["0.3.0"]
    pred = pot.predict(batch)
    assert pred.errors == [None]
    calc = CHGNetCalculator(model=_reference_model("0.3.0"), use_device="cpu", on_isolated_atoms="ignore")
    atoms.calc = calc
    assert pred.energy[0] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(pred.forces, 0.0, atol=1e-6)


def test_graph_settings_group_the_models(potentials):
    settings = {name: potentials[name].graph_settings() for name in MODELS}
    assert settings["0.3.0"] == settings["r2scan"]
    assert settings["0.2.0"] != settings["0.3.0"]
    assert settings["0.3.0"][1:3] == (6.0, 3.0)
    assert settings["0.2.0"][1:3] == (5.0, 3.0)


def test_committee_shares_one_neighbour_list_and_graphs(potentials, chgnet_batch, monkeypatch):
    # The batch path: one neighbour list for the committee (the 6 A list serves 0.2.0's 5 A by filtering), one
    # graph index per converter setting (0.3.0 and r2scan share theirs).
    from aloe.potentials import chgnet_graph, neighbours

    lists: list[float] = []
    indexes: list[float] = []
    compute, index = neighbours.compute_neighbours, chgnet_graph.graph_index
    monkeypatch.setattr(
        neighbours, "compute_neighbours", lambda b, rc, *a: lists.append(rc) or compute(b, rc, *a)
    )
    monkeypatch.setattr(chgnet_graph, "graph_index", lambda p, bc: indexes.append(p.cutoff) or index(p, bc))
    shared: dict = {}
    together = [potentials[name].predict(chgnet_batch, shared) for name in ("0.3.0", "0.2.0", "r2scan")]
    assert lists == [6.0] and indexes == [6.0, 5.0]
    alone = [potentials[name].predict(chgnet_batch) for name in ("0.3.0", "0.2.0", "r2scan")]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.energy, b.energy)
        np.testing.assert_array_equal(a.forces, b.forces)


def test_committee_shares_graphs(potentials, chgnet_batch, monkeypatch):
    calls: list[str] = []
    for name in MODELS:
        monkeypatch.setattr(
            potentials[name], "graph_builder", "converter"
        )  # CHGNet's converter per structure
        conv = potentials[name].model.graph_converter
        original = conv.forward

        def counting(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(conv, "forward", counting)
    shared: dict = {}
    together = [potentials[name].predict(chgnet_batch, shared) for name in MODELS]
    n = len(chgnet_batch)
    # 0.3.0 builds graphs for itself and r2scan; 0.2.0 (5 A cutoff) builds its own: 2n conversions, not 3n
    assert len(calls) == 2 * n
    assert calls.count("r2scan") == 0
    alone = [potentials[name].predict(chgnet_batch) for name in MODELS]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.energy, b.energy)
        np.testing.assert_array_equal(a.forces, b.forces)


def test_a_graph_that_cannot_be_built_fails_alone(potentials, chgnet_batch, monkeypatch):
    # The converter path (the batch path's failing rows: tests/potentials/test_chgnet_graph.py).
    pot = potentials["0.2.0"]
    monkeypatch.setattr(pot, "graph_builder", "converter")
    conv = pot.model.graph_converter
    original = conv.forward

    def picky(structure, graph_id=None, mp_id=None):
        if graph_id == "s2":
            raise RuntimeError("bond graph failed")
        return original(structure, graph_id=graph_id, mp_id=mp_id)

    monkeypatch.setattr(conv, "forward", picky)
    pred = pot.predict(chgnet_batch)
    assert pred.errors[2] == "chgnet-0.2.0 could not build the graph: RuntimeError: bond graph failed"
    assert np.isnan(pred.energy[2])
    assert all(e is None for i, e in enumerate(pred.errors) if i != 2)
    assert np.isfinite(np.delete(pred.energy, 2)).all()


def test_batch_size_does_not_change_results(chgnet_batch):
    a = CHGNetPotential("0.3.0", batch_size=3).predict(chgnet_batch)
    b = CHGNetPotential("0.3.0", batch_size=32).predict(chgnet_batch)
    np.testing.assert_allclose(a.energy, b.energy, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-4)
    np.testing.assert_allclose(a.stress, b.stress, atol=1e-6)


def test_names_identity_and_pickling(potentials, chgnet_batch):
    pot = potentials["r2scan"]
    assert pot.name == "chgnet-r2scan"
    assert pot.functional == "r2SCAN"
    assert potentials["0.3.0"].functional == "PBE/PBE+U (MPtrj, MP2020-corrected)"
    ident = pot.identity()
    assert ident.startswith("chgnet-r2scan:") and len(ident.split(":")[1]) == 12
    assert ident != potentials["0.3.0"].identity()
    blob = pickle.dumps(pot)
    assert len(blob) < 10_000  # settings travel, weights do not
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(
        clone.predict(chgnet_batch.take([0])).energy, pot.predict(chgnet_batch.take([0])).energy
    )


def test_unknown_model_name():
    from aloe.errors import AloeError

    with pytest.raises(AloeError, match=r"chgnet-0\.3\.0, chgnet-0\.2\.0, chgnet-r2scan"):
        CHGNetPotential("0.4.0")
