"""Off-equilibrium forces: metrics by hand, the displaced-supercell builders, batched parity against EMT."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from pydantic import ValidationError

from aloe.bench.base import COMMON_COLUMNS, BenchStructure
from aloe.bench.forces import (
    ForceParity,
    ForcesSettings,
    average_nearest_neighbour_distance,
    displace_atoms,
    displaced_supercell,
    force_errors,
    make_supercell,
    softening_slope,
)


def _cells() -> dict[int, Atoms]:
    """Cells of 1, 2, 3, 4, 5 and 8 atoms."""
    three = Atoms(
        "AlCu2",
        cell=[[2.9, 0, 0], [-1.45, 2.51, 0], [0, 0, 4.6]],
        scaled_positions=[[0, 0, 0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]],
        pbc=True,
    )
    perovskite = Atoms(
        "AuCuNi3",
        cell=np.eye(3) * 3.9,
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        pbc=True,
    )
    return {
        1: bulk("Cu"),
        2: bulk("Cu", "hcp", a=2.55),
        3: three,
        4: bulk("Al", cubic=True),
        5: perovskite,
        8: bulk("Si", "diamond", a=5.43, cubic=True),
    }


def _emt_structures(seed: int = 0) -> list[BenchStructure]:
    """Displaced EMT supercells labelled with EMT's own forces."""
    rng = np.random.default_rng(seed)
    out = []
    for symbol in ("Cu", "Al", "Ni", "Ag"):
        atoms = displaced_supercell(bulk(symbol), rng)
        calc_atoms = atoms.copy()
        calc_atoms.calc = EMT()
        out.append(BenchStructure(f"{symbol}-disp", atoms, forces=calc_atoms.get_forces().copy()))
    return out


# ---- metrics -----------------------------------------------------------------------------------------------
def test_softening_slope_of_a_scaled_copy_is_the_scale():
    x = np.random.default_rng(1).normal(size=(10, 3))
    assert softening_slope(x, 0.8 * x) == pytest.approx(0.8)
    assert softening_slope([1.0, 2.0], [1.0, 1.0]) == pytest.approx(3.0 / 5.0)  # sum xy / sum xx
    assert np.isnan(softening_slope(np.zeros(3), np.ones(3)))


def test_mae_rmse_by_hand():
    m = force_errors([1.0, -2.0, 0.0, 3.0], [1.5, -2.0, 1.0, 2.0])
    assert m["force_mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["force_rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert m["softening_slope"] == pytest.approx((1.5 + 4 + 0 + 6) / (1 + 4 + 0 + 9))
    with pytest.raises(ValueError):
        force_errors([1.0, 2.0], [1.0])


def test_aggregate_pools_every_component_of_the_ok_rows():
    rows = [
        {"error": None, "forces_ref": [1.0, 0.0, -1.0], "forces_pred": [0.5, 0.0, -0.5]},
        {
            "error": None,
            "forces_ref": [2.0, 2.0, 0.0, 0.0, 0.0, 2.0],
            "forces_pred": [2.0, 2.0, 0.0, 0.0, 0.0, 2.0],
        },
        {"error": "no reference forces"},
    ]
    agg = ForceParity.aggregate(rows)
    x = np.array([1.0, 0, -1, 2, 2, 0, 0, 0, 2])
    y = np.array([0.5, 0, -0.5, 2, 2, 0, 0, 0, 2])
    assert agg["n"] == 3 and agg["n_failed"] == 1 and agg["n_components"] == 9
    assert agg["force_mae"] == pytest.approx(np.abs(x - y).mean())
    assert agg["force_rmse"] == pytest.approx(np.sqrt(((x - y) ** 2).mean()))
    assert agg["softening_slope"] == pytest.approx(x @ y / (x @ x))
    empty = ForceParity.aggregate([{"error": "x"}])
    assert empty["n_components"] == 0 and empty["force_mae"] is None


def test_settings_are_documented_and_strict():
    s = ForcesSettings()
    assert (s.min_atoms, s.max_atoms, s.displacement_fraction, s.batch_structures) == (18, 32, 0.05, 16)
    for name, field in ForcesSettings.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        ForcesSettings(min_atom=3)


# ---- builders ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_make_supercell_sizes_are_within_18_to_32(n):
    cell = _cells()[n]
    assert len(cell) == n
    sc = make_supercell(cell)
    assert 18 <= len(sc) <= 32
    reps = sc.info["supercell"]
    assert len(sc) == n * int(np.prod(reps))
    np.testing.assert_allclose(sc.cell[:], cell.cell[:] * np.array(reps)[:, None])
    assert sc.get_chemical_formula(empirical=True) == cell.get_chemical_formula(empirical=True)


def test_make_supercell_prefers_even_lengths():
    assert make_supercell(bulk("Cu")).info["supercell"] == [3, 3, 3]  # 27 atoms, all lengths equal
    assert make_supercell(bulk("Al", cubic=True)).info["supercell"] == [2, 2, 2]  # 32 atoms
    elongated = Atoms("Cu", cell=[2.5, 2.5, 7.5], pbc=True)
    # 3 x 3 x 1 would be a cube but has 9 atoms; in range, 4 x 4 x 2 (10, 10, 15 A) is the most even.
    assert make_supercell(elongated).info["supercell"] == [4, 4, 2]


def test_make_supercell_without_a_count_in_range_takes_the_smallest_above_min():
    seventeen = Atoms("Cu17", cell=[4.0, 5.0, 30.0], positions=np.zeros((17, 3)), pbc=True)
    sc = make_supercell(seventeen)
    assert len(sc) == 34 and sc.info["supercell"] == [2, 1, 1]  # doubling the shortest axis is the most even
    big = bulk("Cu", cubic=True).repeat((3, 2, 2))  # 48 atoms
    assert len(make_supercell(big)) == 48 and make_supercell(big).info["supercell"] == [1, 1, 1]
    with pytest.raises(ValueError):
        make_supercell(bulk("Cu"), min_atoms=10, max_atoms=5)


def test_average_nearest_neighbour_distance_matches_pymatgen_neighbour_lists():
    from pymatgen.io.ase import AseAtomsAdaptor

    rng = np.random.default_rng(7)
    cases = [
        *_cells().values(),
        displace_atoms(make_supercell(bulk("Ni")), 0.1, rng),
        Atoms("Cu", cell=[2, 3, 9], pbc=True),
    ]
    for atoms in cases:
        structure = AseAtomsAdaptor.get_structure(atoms)
        centers, _, _, distances = structure.get_neighbor_list(12.0)
        nearest = np.full(len(atoms), np.inf)
        np.minimum.at(nearest, centers, distances)
        assert average_nearest_neighbour_distance(atoms) == pytest.approx(nearest.mean(), rel=1e-10)
    # fcc: the nearest-neighbour distance is a / sqrt(2).
    assert average_nearest_neighbour_distance(bulk("Cu", a=3.6)) == pytest.approx(3.6 / np.sqrt(2))


def test_displace_atoms_moves_every_atom_by_exactly_the_stated_distance_and_is_seeded():
    atoms = make_supercell(bulk("Cu", a=3.6))
    d = 0.05 * 3.6 / np.sqrt(2)
    moved = displace_atoms(atoms, 0.05, np.random.default_rng(42))
    np.testing.assert_allclose(np.linalg.norm(moved.positions - atoms.positions, axis=1), d, rtol=1e-12)
    assert moved.info["displacement"] == pytest.approx(d)
    assert moved.calc is None and atoms.info.get("displacement") is None  # the input is untouched
    again = displace_atoms(atoms, 0.05, 42)
    np.testing.assert_array_equal(again.positions, moved.positions)
    other = displace_atoms(atoms, 0.05, 43)
    assert not np.allclose(other.positions, moved.positions)
    # Directions are spread over the sphere, not along a few axes.
    unit = (moved.positions - atoms.positions) / d
    assert np.abs(unit.mean(axis=0)).max() < 0.5


def test_displaced_supercell_combines_both_with_the_settings():
    s = ForcesSettings(min_atoms=8, max_atoms=8, displacement_fraction=0.1)
    out = displaced_supercell(bulk("Cu", a=3.6), 0, s)
    assert len(out) == 8 and out.info["supercell"] == [2, 2, 2]
    assert out.info["displacement"] == pytest.approx(0.1 * 3.6 / np.sqrt(2))
    default = displaced_supercell(bulk("Al"), np.random.default_rng(0))
    assert 18 <= len(default) <= 32


# ---- the benchmark ---------------------------------------------------------------------------------------------
def test_batched_parity_against_emts_own_forces():
    structures = _emt_structures()
    bench = ForceParity("emt", ForcesSettings(batch_structures=3))
    calls: list[int] = []
    predict = bench.potential.predict

    def spy(batch, shared=None):
        calls.append(len(batch))
        return predict(batch, shared)

    bench.potential.predict = spy  # type: ignore[method-assign]
    seen: list[int] = []
    rows = bench.calc_many(structures, done=lambda i, row: seen.append(i))
    assert calls == [3, 1] and seen == [0, 1, 2, 3]
    for structure, row in zip(structures, rows, strict=True):
        assert row["error"] is None
        assert set(row) == set(COMMON_COLUMNS) - {"potential"} | set(ForceParity.COLUMNS)
        np.testing.assert_allclose(row["forces_pred"], structure.forces.reshape(-1), atol=1e-10)
        assert row["forces_ref"] == pytest.approx(structure.forces.reshape(-1).tolist())
        assert row["force_mae"] < 1e-10 and row["force_rmse"] < 1e-10
        assert row["softening_slope"] == pytest.approx(1.0, abs=1e-10)
        assert np.abs(row["forces_ref"]).max() > 0.05  # displaced: real forces to compare
    agg = ForceParity.aggregate(rows)
    assert agg["n_components"] == sum(3 * s.n_atoms for s in structures)
    assert agg["softening_slope"] == pytest.approx(1.0, abs=1e-10)
    single = ForceParity("emt").calc(structures[1])
    assert single["forces_pred"] == pytest.approx(rows[1]["forces_pred"], abs=1e-12)


def test_a_softened_reference_gives_its_slope():
    structures = _emt_structures(seed=3)
    for s in structures:
        s.forces = s.forces / 0.8  # the potential predicts 0.8 x the reference
    rows = ForceParity("emt").calc_many(structures)
    agg = ForceParity.aggregate(rows)
    assert agg["softening_slope"] == pytest.approx(0.8)
    ref = np.concatenate([r["forces_ref"] for r in rows])
    assert agg["force_mae"] == pytest.approx(0.2 * np.abs(ref).mean())


def test_structures_without_usable_reference_forces_fail_alone():
    good = _emt_structures()[:1]
    bad_shape = BenchStructure("short", bulk("Cu"), forces=np.zeros((2, 3)))
    none = BenchStructure("none", bulk("Cu"))
    nan = BenchStructure("nan", bulk("Cu"), forces=np.full((1, 3), np.nan))
    rows = ForceParity("emt").calc_many([none, *good, bad_shape, nan])
    assert rows[0]["error"] == "no reference forces"
    assert rows[1]["error"] is None
    assert "6 components for 1 atoms" in rows[2]["error"]
    assert "NaN" in rows[3]["error"]
    assert ForceParity.aggregate(rows)["n_failed"] == 3
    with pytest.raises(ValueError, match="no reference forces"):
        ForceParity("emt").calc(none)
