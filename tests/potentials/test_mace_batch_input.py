"""MACE's batched input (``graph_builder="batch"``) against mace-torch's own per-structure ``AtomicData``.

The input dict of a whole batch, built from one neighbour list, must hold every key of
``torch_geometric.Batch.from_data_list`` of the per-structure ``AtomicData`` with the same values, dtypes and shapes
(the edges as sets per structure: their order differs), on the cases where a neighbour list goes wrong first. The
predictions of the two paths then differ only by the float round-off of summing the edges in another order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aloe.structures import StructureBatch
from tests.potentials.conftest import _deform

pytest.importorskip("mace")

from aloe.potentials.mace import MACEPotential

#: The tiny model's cutoff (tests/potentials/conftest.py: tiny_mace_file, Al and Cu).
R_MAX = 4.0
#: Batch vs per-structure path in float32, several times the largest differences seen on these structures (energy
#: 0 with forces and 1.6e-7 eV/atom energy-only, of 2.6 eV/atom; forces 6e-8 of 0.04 eV/A; stress 2.3e-9 of
#: 5e-3 eV/A^3): the edges are summed in another order, nothing else differs.
ENERGY_PER_ATOM, FORCE, STRESS = 1e-6, 5e-7, 2e-8
#: The same in float64 (seen: energy 0, forces 1e-16 eV/A, stress 1.1e-17 eV/A^3).
ENERGY_PER_ATOM_64, FORCE_64, STRESS_64 = 1e-14, 1e-15, 1e-16


def _unwrapped(atoms: Atoms, seed: int) -> Atoms:
    """The same crystal with every atom moved by a whole number of cell vectors (MD's drift out of the cell)."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.positions += rng.integers(-3, 4, (len(atoms), 3)) @ atoms.cell[:]
    return atoms


def input_structures() -> list[Atoms]:
    """Al/Cu structures for the tiny model; the comments say what each one exercises."""
    skewed_cell = np.array([[4.2, 0.0, 0.0], [3.6, 2.9, 0.0], [-2.1, 1.7, 3.3]])
    return [
        _deform(bulk("Cu", "fcc", a=3.62), 1),  # 0: 1-atom cell, every neighbour a periodic image of itself
        # 1: an isolated atom, no edge
        Atoms("Al", positions=[[1.0, 2.0, 3.0]], cell=np.eye(3) * 10.0, pbc=True),
        # 2: two isolated atoms, no edge
        Atoms("AlCu", positions=[[0.5, 0.5, 0.5], [6.5, 6.5, 6.5]], cell=np.eye(3) * 12.0, pbc=True),
        _deform(bulk("Al", "fcc", a=4.05, cubic=True) * (3, 3, 3), 2),  # 3: 108 atoms, large cell
        Atoms(  # 4: strongly skewed cell (images several cells away in the lattice basis)
            "AlCuAl",
            cell=skewed_cell,
            scaled_positions=[[0, 0, 0], [0.4, 0.3, 0.6], [0.8, 0.7, 0.1]],
            pbc=True,
        ),
        # 5: positions moved out of the cell by whole cell vectors
        _unwrapped(_deform(bulk("AlCu", "cesiumchloride", a=3.0) * (2, 1, 1), 3), 4),
        Atoms(  # 6: pairs exactly r_max apart (4.0 A, exact in binary): dropped (d < r_max), 3.46 A kept
            "AlCu", cell=np.eye(3) * R_MAX, scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], pbc=True
        ),
        Atoms(  # 7: two atoms exactly r_max apart in a box, each atom exactly r_max from its image along z
            "AlCuAl",
            cell=np.diag([16.0, 16.0, R_MAX]),
            scaled_positions=[[0, 0, 0], [0.25, 0, 0], [0.5, 0.5, 0.5]],
            pbc=True,
        ),
    ]


@pytest.fixture(scope="module")
def batch() -> StructureBatch:
    structures = input_structures()
    return StructureBatch.from_atoms(structures, ids=[f"s{i}" for i in range(len(structures))])


def _edges(data: dict, batch: StructureBatch) -> list[tuple]:
    """``(structure, local sender, local receiver, unit shift, shift)`` per edge, sorted (an order-free view)."""
    edge_index = data["edge_index"].numpy()
    owner = data["batch"].numpy()[edge_index[0]]
    ptr = data["ptr"].numpy()
    unit = data["unit_shifts"].numpy()
    shifts = data["shifts"].numpy()
    rows = [
        (int(o), int(s - ptr[o]), int(r - ptr[o]), tuple(u.tolist()), tuple(v.tolist()))
        for o, s, r, u, v in zip(owner, edge_index[0], edge_index[1], unit, shifts, strict=True)
    ]
    assert len(set(rows)) == len(rows)
    return sorted(rows)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_input_equals_per_structure_atomic_data(tiny_mace_file, batch, dtype):
    pot = MACEPotential(tiny_mace_file, dtype=dtype)
    rows, failed, data = pot.model_input(batch)
    assert rows == list(range(len(batch))) and failed == {}
    reference = pot.data_input(pot.atomic_data(batch), rows)

    assert sorted(data) == sorted(reference)
    for key, expected in reference.items():
        if key in ("edge_index", "unit_shifts", "shifts"):
            continue
        got = data[key]
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert np.array_equal(got.numpy(), expected.numpy()), key
    for key in ("edge_index", "unit_shifts", "shifts"):
        assert data[key].dtype == reference[key].dtype and data[key].shape == reference[key].shape, key
    assert _edges(data, batch) == _edges(reference, batch)

    per_structure = np.bincount(data["batch"].numpy()[data["edge_index"].numpy()[0]], minlength=len(batch))
    assert per_structure[[1, 2]].tolist() == [0, 0]  # isolated atoms
    assert per_structure[6] == 16  # the 8 body diagonals both ways; the 4.0 A cube edges are out
    assert per_structure[7] == 0  # everything exactly 4.0 A apart is out
    assert per_structure[3] > 108 * 12  # the large cell has its 12 nearest neighbours and more


def test_predictions_equal_per_structure_path(tiny_mace_file, batch):
    batched = MACEPotential(tiny_mace_file, batch_size=64)
    reference = MACEPotential(tiny_mace_file, batch_size=64, graph_builder="per-structure")
    got, expected = batched.predict(batch), reference.predict(batch)
    assert got.errors == expected.errors == [None] * len(batch)
    per_atom = np.abs(got.energy - expected.energy) / batch.n_atoms
    assert per_atom.max() <= ENERGY_PER_ATOM
    np.testing.assert_allclose(got.forces, expected.forces, rtol=0, atol=FORCE)
    np.testing.assert_allclose(got.stress, expected.stress, rtol=0, atol=STRESS)
    # Not trivially equal: the forces and stresses are not zero.
    assert np.abs(expected.forces).max() > 1e-2 and np.abs(expected.stress).max() > 1e-3

    energies, energies_reference = batched.predict_energies(batch), reference.predict_energies(batch)
    assert energies.errors == energies_reference.errors == [None] * len(batch)
    assert (np.abs(energies.energy - energies_reference.energy) / batch.n_atoms).max() <= ENERGY_PER_ATOM
    assert (np.abs(energies.energy - got.energy) / batch.n_atoms).max() <= ENERGY_PER_ATOM


def test_predictions_equal_per_structure_path_float64(tiny_mace_file, batch):
    got = MACEPotential(tiny_mace_file, dtype="float64").predict(batch)
    expected = MACEPotential(tiny_mace_file, dtype="float64", graph_builder="per-structure").predict(batch)
    assert got.errors == [None] * len(batch)
    assert (np.abs(got.energy - expected.energy) / batch.n_atoms).max() <= ENERGY_PER_ATOM_64
    np.testing.assert_allclose(got.forces, expected.forces, rtol=0, atol=FORCE_64)
    np.testing.assert_allclose(got.stress, expected.stress, rtol=0, atol=STRESS_64)


def _check_fails_alone(model_file: Path, mixed: StructureBatch, bad: int, message: str) -> None:
    """Row ``bad`` of ``mixed`` fails with ``message`` (a prefix) in both paths; the others equal their batch alone."""
    good = [r for r in range(len(mixed)) if r != bad]
    alone = MACEPotential(model_file).predict(mixed.take(good))
    for graph_builder in ("batch", "per-structure"):
        pot = MACEPotential(model_file, graph_builder=graph_builder)
        for pred in (pot.predict(mixed), pot.predict_energies(mixed)):
            where = f"{graph_builder}, {'energies' if np.isnan(pred.forces).all() else 'predict'}"
            assert pred.errors[bad] is not None and pred.errors[bad].startswith(message), where
            assert [e is None for e in pred.errors] == [r != bad for r in range(len(mixed))], where
            assert np.isnan(pred.energy[bad]), where
            per_atom = np.abs(pred.energy[good] - alone.energy) / mixed.n_atoms[good]
            assert per_atom.max() <= ENERGY_PER_ATOM, where


def test_unknown_element_fails_alone(tiny_mace_file):
    structures = input_structures()
    structures.insert(2, bulk("NaCl", "rocksalt", a=5.64))  # no parameters for Na and Cl
    mixed = StructureBatch.from_atoms(structures)
    _check_fails_alone(tiny_mace_file, mixed, 2, "mace:tiny: no parameters for element(s) Na, Cl")
    rows, failed, _ = MACEPotential(tiny_mace_file).model_input(mixed)
    assert rows == [0, 1, 3, 4, 5, 6, 7, 8] and failed == {2: "no parameters for element(s) Na, Cl"}


def test_failed_neighbour_list_fails_alone(tiny_mace_file):
    # A flat cell: the neighbour list fails (neighbours.py) and the batch path must report it, as the per-structure
    # path does (its own LinAlgError), not predict the row as if it had no neighbours.
    flat_cell = [[3, 0, 0], [0, 3, 0], [3, 3, 0]]
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1.0, 1.0, 0]], cell=flat_cell, pbc=True)
    structures = input_structures()
    structures.insert(4, flat)
    mixed = StructureBatch.from_atoms(structures)
    _check_fails_alone(tiny_mace_file, mixed, 4, "mace:tiny: ")


def test_committee_shares_one_neighbour_list_and_graph(tiny_mace_file, tmp_path, batch, monkeypatch):
    import shutil

    from aloe.potentials import neighbours

    other = tmp_path / "other.model"
    shutil.copy(tiny_mace_file, other)
    calls = []
    original = neighbours.compute_neighbours

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(neighbours, "compute_neighbours", counting)
    shared: dict = {}
    members = [MACEPotential(tiny_mace_file), MACEPotential(other), MACEPotential(other, dtype="float64")]
    first, second, third = (member.predict(batch, shared) for member in members)
    assert len(calls) == 1  # one list for the three members, float32 and float64 alike
    assert first.errors == second.errors == third.errors == [None] * len(batch)
    np.testing.assert_array_equal(first.energy, second.energy)  # same weights, same inputs
    np.testing.assert_array_equal(first.forces, second.forces)
    # float32 against float64 (3e-6 eV/atom seen).
    assert (np.abs(first.energy - third.energy) / batch.n_atoms).max() <= 1e-5


def test_graph_builder_is_checked(tiny_mace_file):
    from aloe.errors import AloeError

    with pytest.raises(AloeError, match="graph_builder"):
        MACEPotential(tiny_mace_file, graph_builder="converter")
