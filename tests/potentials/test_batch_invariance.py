"""Conformance: a structure's energy, forces and stress do not depend on the other structures in its batch.

Every built-in model (the CHGNet trio) and a small trained MACE file (mace-torch's own training, through aloe's
train stage, on Lennard-Jones labels of every element of the batch) must pass. The batch mixes the cases that broke
or could break batching: alkali halides without bond-graph edges (no pair closer than CHGNet's 3 A bond cutoff, so
no angles: chgnet-0.2.0 used to give them up to 0.16 eV/atom more or less in a batch with Cu or Si), a molecule with
bonds but no angles, isolated atoms in a big box, 1-atom cells, 32- and 64-atom cells and heavy elements. Each
structure predicted in the batch is compared with the same structure predicted alone, and the alone value with the
model's own package per-structure path (``CHGNetCalculator``, mace's ``MACECalculator``), within float32 round-off.
The energy-only path (``predict_energies``, no backward pass) must give the same energies, in the batch and alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aloe.potentials.base import Potential
from aloe.structures import StructureBatch

pytest.importorskip("chgnet")

#: The issue's tolerances: batch vs alone.
ENERGY_PER_ATOM, FORCE, STRESS = 1e-5, 1e-4, 1e-5  # eV/atom, eV/A, eV/A^3

CHGNET_MODELS = ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"]
#: Rows of :func:`mixed_structures` without any bond-graph angle in CHGNet (bond cutoff 3 A).
ANGLE_FREE = {0, 2, 4, 5, 8, 9, 11}


def _rattled(atoms: Atoms, seed: int, rattle: float = 0.03, strain: float = 0.01) -> Atoms:
    """Off the symmetric positions and strained (non-zero forces and shear stress), cell stays right-handed."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0.0, strain, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def _boxed(symbols: str, positions: list[list[float]], edge: float) -> Atoms:
    return Atoms(symbols, positions=positions, cell=np.eye(3) * edge, pbc=True)


def mixed_structures() -> list[Atoms]:
    """13 structures; the comments say what each one exercises."""
    structures = [
        bulk("KBr", "rocksalt", a=6.60),  # 0: no pair closer than 3.3 A: no bond graph
        bulk("Cu", "fcc", a=3.62),  # 1: 1-atom cell with angles
        bulk("RbCl", "rocksalt", a=6.58),  # 2: no bond graph
        bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),  # 3: 64 atoms
        bulk("CsI", "cesiumchloride", a=4.57),  # 4: heavy, no bond graph
        _boxed("Au", [[1.0, 2.0, 3.0]], 12.0),  # 5: one isolated atom (no neighbour within 6 A)
        bulk("MgO", "rocksalt", a=4.21),  # 6: ordinary oxide
        bulk("W", "bcc", a=3.16),  # 7: heavy 1-atom cell
        _boxed("N2", [[5.0, 5.0, 5.0], [5.0, 5.0, 6.1]], 10.0),  # 8: bonds but no angle
        _boxed("PbO", [[0.0, 0.0, 0.0], [7.0, 7.0, 7.0]], 14.0),  # 9: two isolated atoms in a big box
        bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2),  # 10: 32 atoms
        bulk("PbTe", "rocksalt", a=6.46),  # 11: heavy, no bond graph
        bulk("UO2", "fluorite", a=5.47),  # 12: actinide with angles
    ]
    return [_rattled(atoms, seed) for seed, atoms in enumerate(structures)]


@pytest.fixture(scope="module")
def mixed_batch() -> StructureBatch:
    structures = mixed_structures()
    return StructureBatch.from_atoms(structures, ids=[f"m{i}" for i in range(len(structures))])


@pytest.fixture(scope="module")
def mace_file(tmp_path_factory, mixed_batch) -> Path:
    """A small MACE trained by mace-torch (aloe's train stage, 2 epochs) for every element of the batch."""
    pytest.importorskip("mace")
    from ase.data import chemical_symbols

    from tests.conftest import train_tiny_mace

    elements = [chemical_symbols[z] for z in sorted({int(z) for z in mixed_batch.numbers})]
    return train_tiny_mace(tmp_path_factory.mktemp("mace-mixed"), elements)


@pytest.fixture(scope="module", params=[*CHGNET_MODELS, "mace"])
def potential(request) -> Potential:
    from aloe.potentials.registry import load_potential

    if request.param == "mace":
        # float32, the default: round-off is where a batch dependence would hide.
        return load_potential(str(request.getfixturevalue("mace_file")), batch_size=64)
    return load_potential(request.param, batch_size=64, threads=1)


@pytest.fixture(scope="module")
def alone(potential, mixed_batch) -> list:
    """Each structure predicted in a batch of its own."""
    return [potential.predict(mixed_batch.take([r])) for r in range(len(mixed_batch))]


def test_batch_holds_the_hard_cases(mixed_batch):
    # Guards the test's meaning: the angle-free rows really have no bond-graph angle, the others have some.
    from aloe.potentials.chgnet import CHGNetPotential

    graphs = CHGNetPotential("0.3.0").graphs(mixed_batch)
    assert {r for r, g in enumerate(graphs) if len(g.bond_graph) == 0} == ANGLE_FREE
    assert len(graphs[8].atom_graph) > 0  # N2: bonds, just no angle
    assert {r for r, g in enumerate(graphs) if len(g.atom_graph) == 0} == {5, 9}  # isolated atoms only


def test_batch_equals_alone(potential, mixed_batch, alone):
    together = potential.predict(mixed_batch)
    assert together.errors == [None] * len(mixed_batch)
    for r, one in enumerate(alone):
        assert one.errors == [None]
        n = mixed_batch.n_atoms[r]
        sl = mixed_batch.atom_slice(r)
        where = f"{potential.name}, row {r} ({mixed_batch.to_atoms(r).get_chemical_formula()})"
        assert abs(together.energy[r] - one.energy[0]) / n <= ENERGY_PER_ATOM, where
        np.testing.assert_allclose(together.forces[sl], one.forces, rtol=0, atol=FORCE, err_msg=where)
        np.testing.assert_allclose(together.stress[r], one.stress[0], rtol=0, atol=STRESS, err_msg=where)
    # strained and rattled: the comparison is not between zeros
    assert np.abs(together.forces).max() > 0.05 and np.abs(together.stress).max() > 1e-3


def test_energy_only_path_equals_predict(potential, mixed_batch, alone):
    # predict_energies skips forces and stress (no backward pass); its energies are predict's, in a batch and alone.
    assert type(potential)._predict_energy_batch is not Potential._predict_energy_batch  # its own fast path
    together = potential.predict_energies(mixed_batch)
    assert together.errors == [None] * len(mixed_batch)
    assert np.isnan(together.forces).all() and np.isnan(together.stress).all()
    for r, one in enumerate(alone):
        n = mixed_batch.n_atoms[r]
        where = f"{potential.name}, row {r} ({mixed_batch.to_atoms(r).get_chemical_formula()})"
        single = potential.predict_energies(mixed_batch.take([r]))
        assert single.errors == [None], where
        assert abs(single.energy[0] - one.energy[0]) / n <= ENERGY_PER_ATOM, where
        assert abs(together.energy[r] - one.energy[0]) / n <= ENERGY_PER_ATOM, where


def test_batch_order_does_not_matter(potential, mixed_batch, alone):
    order = np.arange(len(mixed_batch))[::-1].copy()
    reversed_pred = potential.predict(mixed_batch.take(order))
    for j, r in enumerate(order):
        n = mixed_batch.n_atoms[r]
        assert abs(reversed_pred.energy[j] - alone[r].energy[0]) / n <= ENERGY_PER_ATOM, (potential.name, r)


def _package_calculator(potential: Potential):
    if potential.name.startswith("chgnet-"):
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        # An independent copy of the model: nothing aloe did to its own can leak into the oracle.
        model = CHGNet.load(
            model_name=potential.name.removeprefix("chgnet-"), use_device="cpu", verbose=False
        )
        return CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="ignore")
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=str(potential.path), device="cpu", default_dtype=potential.dtype)


def test_alone_equals_the_package_per_structure_path(potential, mixed_batch, alone):
    calc = _package_calculator(potential)
    for r, one in enumerate(alone):
        atoms = mixed_batch.to_atoms(r)
        atoms.calc = calc
        where = f"{potential.name}, row {r} ({atoms.get_chemical_formula()})"
        assert abs(one.energy[0] - atoms.get_potential_energy()) / len(atoms) <= ENERGY_PER_ATOM, where
        np.testing.assert_allclose(one.forces, atoms.get_forces(), rtol=0, atol=FORCE, err_msg=where)
        np.testing.assert_allclose(
            one.stress[0], atoms.get_stress(voigt=True), rtol=0, atol=STRESS, err_msg=where
        )


@pytest.mark.parametrize("name", CHGNET_MODELS)
def test_chgnet_encoder_features_are_batch_invariant(name, mixed_batch):
    from aloe.select.encoders import load_encoder

    encoder = load_encoder(name, batch_size=64)
    together = encoder.encode(mixed_batch)
    assert together.errors == [None] * len(mixed_batch)
    for r in range(len(mixed_batch)):
        one = encoder.encode(mixed_batch.take([r]))
        np.testing.assert_allclose(
            together.features[r], one.features[0], rtol=0, atol=1e-5, err_msg=f"{name} {r}"
        )
