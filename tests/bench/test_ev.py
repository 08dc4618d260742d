"""EV scan: metrics on constructed curves, EMT metals, batching against the per-point ASE path, a broken potential."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from pydantic import ValidationError

from aloe.bench.base import COMMON_COLUMNS, BenchStructure
from aloe.bench.ev import (
    EVScan,
    EVSettings,
    energy_flips,
    ev_metrics,
    ev_strains,
    spearman,
    strained_points,
    tortuosity,
)
from aloe.potentials.ase_calculator import ASECalculatorPotential
from aloe.potentials.registry import load_potential

METALS = ("Cu", "Al", "Ni", "Pd", "Ag", "Au")


def _bcc(symbol: str):
    """A bcc cell with the volume per atom of the element's fcc cell (near EMT's minimum)."""
    return bulk(symbol, "bcc", a=(2.0 * bulk(symbol).get_volume()) ** (1.0 / 3.0))


# ---- metrics on constructed curves ------------------------------------------------------------------------
def test_strains_and_points_span_0512_to_1728_v0_with_fractional_coordinates_kept():
    strains = ev_strains()
    assert strains.shape == (21,)
    assert strains[0] == pytest.approx(-0.2) and strains[-1] == pytest.approx(0.2) and strains[10] == 0.0
    atoms = bulk("Cu", cubic=True)
    atoms.positions[1] += [0.05, -0.02, 0.01]
    points = strained_points(atoms, strains)
    v0 = atoms.get_volume()
    ratios = np.array([p.get_volume() / v0 for p in points])
    assert ratios[0] == pytest.approx(0.512) and ratios[-1] == pytest.approx(1.728)
    assert np.all(np.diff(ratios) > 0)
    for p in points:
        np.testing.assert_allclose(p.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-12)
        assert p.calc is None
    # The given structure is not modified.
    assert atoms.get_volume() == pytest.approx(v0)


def test_one_minimum_is_one_flip_not_failed_convex_tortuosity_one_and_ideal_spearman():
    v = np.linspace(0.5, 1.5, 21)
    e = (v - 1.0) ** 2  # minimum at the middle point
    m = ev_metrics(v, e)
    assert m["flips"] == 1
    assert m["failed"] is False and m["no_minimum"] is False
    assert m["tortuosity"] == pytest.approx(1.0)
    assert m["spearman_compression_energy"] == pytest.approx(-1.0)
    assert m["spearman_compression_derivative"] == pytest.approx(1.0)
    assert m["spearman_tension_energy"] == pytest.approx(1.0)


def test_points_are_sorted_by_volume_first():
    rng = np.random.default_rng(3)
    v = np.linspace(0.5, 1.7, 21)
    e = (v - 1.0) ** 2
    order = rng.permutation(21)
    assert ev_metrics(v[order], e[order]) == ev_metrics(v, e)


def test_two_minima_give_three_flips_and_fail():
    x = np.linspace(-1.5, 1.5, 21)
    e = (x**2 - 1.0) ** 2  # minima near x = +-1, a maximum at x = 0 (the middle point)
    m = ev_metrics(np.arange(21.0), e)
    assert m["flips"] == 3
    assert m["failed"] is True and m["no_minimum"] is False
    # Every |dE| is counted (down, up to the maximum in the middle, down, up); the ends are 0.5625 above it.
    total = np.sum(np.abs(np.diff(e)))
    assert m["tortuosity"] == pytest.approx(total / (abs(e[0] - e[10]) + abs(e[-1] - e[10])))
    assert m["tortuosity"] > 1.0


def test_an_imploding_curve_has_no_minimum_and_is_not_a_paper_failure():
    v = np.linspace(0.512, 1.728, 21)
    e = -1.0 / v**2  # energy keeps falling on compression
    m = ev_metrics(v, e)
    assert m["flips"] == 0
    assert m["no_minimum"] is True and m["failed"] is False
    assert m["spearman_compression_energy"] == pytest.approx(1.0)  # wrong sign: the ideal is -1
    assert m["tortuosity"] == pytest.approx(1.0)


def test_exact_zero_differences_are_dropped_before_counting_flips():
    assert energy_flips([3.0, 2.0, 2.0, 2.0, 1.0, 2.0, 3.0]) == 1
    assert energy_flips([2.0, 1.0, 1.0, 2.0]) == 1  # flat bottom: still one minimum
    assert energy_flips([1.0, 1.0, 1.0]) == 0
    assert energy_flips([3.0, 2.0, 2.0, 3.0, 3.0, 2.0]) == 2
    assert energy_flips([1.0, 2.0, 3.0]) == 0
    # A tiny non-zero difference is a real flip (only exact zeros are dropped).
    assert energy_flips([3.0, 2.0, 2.0 + 1e-15, 1.0]) == 2


def test_max_flips_setting_moves_the_failure_threshold():
    x = np.linspace(-1.5, 1.5, 21)
    e = (x**2 - 1.0) ** 2
    assert ev_metrics(np.arange(21.0), e, max_flips=3)["failed"] is False
    assert ev_metrics(np.arange(21.0), e, max_flips=2)["failed"] is True


def test_tortuosity_by_hand_and_undefined_for_flat_ends():
    # |dE| = 1, 1, 2, 1 -> 5; ends 2 and 1 above the middle (index 2) -> 5 / 3.
    assert tortuosity([2.0, 1.0, 0.0, 2.0, 1.0]) == pytest.approx(5.0 / 3.0)
    assert tortuosity([4.0, 1.0, 0.0, 1.0, 4.0]) == pytest.approx(1.0)
    # A minimum away from the middle point counts the detour: |dE| 1+1+1+1 = 4 over ends 0 and 2 above the middle.
    assert tortuosity([1.0, 0.0, 1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert np.isnan(tortuosity([0.0, 1.0, 0.0, -1.0, 0.0]))


def test_spearman_of_hand_made_curves():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 3, 4], [10, 5, 1, 0]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 8, 27]) == pytest.approx(1.0)
    # Ties get averaged ranks: x ranks 1..4, y ranks 1.5, 1.5, 3, 4 -> Pearson of the ranks.
    rx, ry = np.array([1, 2, 3, 4.0]), np.array([1.5, 1.5, 3, 4])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman([1, 2, 3, 4], [5, 5, 6, 7]) == pytest.approx(expected)
    assert np.isnan(spearman([1, 2, 3], [2, 2, 2]))
    assert np.isnan(spearman([1.0], [2.0]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_agrees_with_scipy_on_random_data_with_ties():
    from scipy import stats

    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, size=12).astype(float)
        y = rng.normal(size=12)
        y[:3] = y[3]
        if np.ptp(x) == 0:
            continue
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_columns_use_mlip_arenas_ranges():
    # 11 points, middle = index 5; the compression branch (indices 0-4) wiggles, tension is clean.
    v = np.arange(11.0)
    e = np.array([5.0, 3.0, 4.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    m = ev_metrics(v, e)
    assert m["spearman_compression_energy"] == pytest.approx(spearman(v[:5], e[:5]))
    assert m["spearman_compression_energy"] == pytest.approx(-0.9)  # ranks 5,3,4,2,1: 1 - 6 * 2 / 120
    dv = 0.5 * (v[:-1] + v[1:])
    assert m["spearman_compression_derivative"] == pytest.approx(spearman(dv[:5], np.diff(e)[:5]))
    assert m["spearman_tension_energy"] == pytest.approx(1.0)
    assert m["flips"] == 3


def test_aggregate_counts_failures_and_mlip_arena_ranking():
    rows = [
        {"error": None, "flips": 1, "failed": False, "no_minimum": False, "tortuosity": 1.0},
        {"error": None, "flips": 3, "failed": True, "no_minimum": False, "tortuosity": 2.0},
        {"error": None, "flips": 0, "failed": False, "no_minimum": True, "tortuosity": float("nan")},
        {"error": "EV point 0 failed: boom"},
    ]
    for r in rows[:3]:
        r.update(
            spearman_compression_energy=-1.0,
            spearman_compression_derivative=1.0,
            spearman_tension_energy=None,
        )
    agg = EVScan.aggregate(rows)
    assert agg["n"] == 4 and agg["n_failed"] == 1
    assert agg["failure_rate"] == pytest.approx(1 / 3)
    assert agg["no_minimum_rate"] == pytest.approx(1 / 3)
    assert agg["flips_mean"] == pytest.approx(4 / 3)
    assert agg["flips_minus_one_abs_mean"] == pytest.approx((0 + 2 + 1) / 3)
    assert agg["tortuosity_mean"] == pytest.approx(1.5)  # NaN skipped
    assert agg["spearman_compression_energy_mean"] == pytest.approx(-1.0)
    assert agg["spearman_tension_energy_mean"] is None
    empty = EVScan.aggregate([])
    assert empty["n"] == 0 and empty["failure_rate"] is None


def test_settings_are_documented_and_strict():
    for name, field in EVSettings.model_fields.items():
        assert field.description, name
    assert EVSettings().batch_structures == 16 and EVSettings().n_points == 21
    with pytest.raises(ValidationError):
        EVSettings(n_poins=3)


# ---- the benchmark with EMT -----------------------------------------------------------------------------------
def test_emt_fcc_and_bcc_metals_have_exactly_one_flip():
    structures = [BenchStructure(f"{el}-fcc", bulk(el)) for el in METALS]
    structures += [BenchStructure(f"{el}-bcc", _bcc(el)) for el in METALS]
    bench = EVScan("emt")
    rows = bench.calc_many(structures)
    assert [r["structure_id"] for r in rows] == [s.id for s in structures]
    for row in rows:
        assert row["error"] is None, row
        assert row["flips"] == 1, row["structure_id"]
        assert row["failed"] is False and row["no_minimum"] is False
        assert row["spearman_tension_energy"] == pytest.approx(1.0)
        assert row["spearman_compression_energy"] == pytest.approx(-1.0)
        assert set(row) == set(COMMON_COLUMNS) - {"potential"} | set(EVScan.COLUMNS)
    agg = EVScan.aggregate(rows)
    assert agg["failure_rate"] == 0.0 and agg["flips_minus_one_abs_mean"] == 0.0 and agg["n_failed"] == 0


def test_batched_scan_equals_one_ase_emt_calculation_per_point_and_calls_predict_once_per_chunk():
    cells = [bulk("Cu"), bulk("Al", cubic=True), _bcc("Ni"), bulk("Au", orthorhombic=True)]
    cells[1].positions[0] += [
        0.03,
        0.0,
        -0.02,
    ]  # not at a symmetric minimum: forces do not matter to a static scan
    structures = [BenchStructure(f"s{i}", a) for i, a in enumerate(cells)]
    bench = EVScan("emt", EVSettings(batch_structures=3))
    calls: list[int] = []
    predict_energies = bench.potential.predict_energies

    def spy(batch, shared=None):
        calls.append(len(batch))
        return predict_energies(batch, shared)

    # The scan needs energies only: it must use the energy-only path (no forces/stress work), once per chunk.
    bench.potential.predict_energies = spy  # type: ignore[method-assign]
    bench.potential.predict = None  # type: ignore[assignment,method-assign]
    seen: list[int] = []
    rows = bench.calc_many(structures, done=lambda i, row: seen.append(i))
    assert calls == [3 * 21, 1 * 21]  # all points of a chunk's structures in one call
    assert seen == [0, 1, 2, 3]
    for structure, row in zip(structures, rows, strict=True):
        n = len(structure.atoms)
        assert row["v0"] == pytest.approx(structure.atoms.get_volume() / n)
        for s, v, e in zip(row["strains"], row["volumes"], row["energies"], strict=True):
            point = structure.atoms.copy()
            point.set_cell(structure.atoms.cell * (1 + s), scale_atoms=True)
            point.calc = EMT()
            assert e == pytest.approx(point.get_potential_energy() / n, abs=1e-10)
            assert v == pytest.approx(point.get_volume() / n, rel=1e-12)
        assert row["wall_s"] >= 0.0
    # calc (one structure) gives the same row as calc_many.
    single = EVScan("emt").calc(structures[2])
    assert single["energies"] == pytest.approx(rows[2]["energies"], abs=1e-12)
    assert single["flips"] == rows[2]["flips"]


class _FailsWhenSqueezed(ASECalculatorPotential):
    """EMT that raises for the structure named 'bad' below 0.6 V0 (a model failing on some points)."""

    def __init__(self) -> None:
        super().__init__(EMT, name="emt-fragile")

    def _predict_one(self, atoms):
        if (
            atoms.info.get("aloe_id", "").startswith("bad")
            and atoms.get_volume() < 0.6 * bulk("Cu").get_volume()
        ):
            raise RuntimeError("collapsed graph")
        return super()._predict_one(atoms)


def test_a_failed_point_fails_its_structure_only_and_is_named():
    structures = [
        BenchStructure("good", bulk("Cu")),
        BenchStructure("bad", bulk("Cu")),
        BenchStructure("ok", bulk("Ni")),
    ]
    rows = EVScan(_FailsWhenSqueezed(), EVSettings(batch_structures=8)).calc_many(structures)
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert "EV point 0" in rows[1]["error"] and "strain -0.200" in rows[1]["error"]
    assert "collapsed graph" in rows[1]["error"]
    assert "flips" not in rows[1] and rows[1]["structure_id"] == "bad"
    with pytest.raises(RuntimeError, match="EV point 0"):
        EVScan(_FailsWhenSqueezed()).calc(structures[1])
    agg = EVScan.aggregate(rows)
    assert agg["n"] == 3 and agg["n_failed"] == 1


def test_a_structure_whose_points_cannot_be_built_gets_a_failure_row():
    broken = bulk("Cu")
    broken.cell[:] = 0.0  # no cell: nothing to scale
    rows = EVScan("emt").calc_many([BenchStructure("flat", broken), BenchStructure("cu", bulk("Cu"))])
    assert rows[0]["error"] and rows[1]["error"] is None


def test_lennard_jones_without_its_wall_is_flagged_as_having_no_minimum():
    structures = [BenchStructure(el, bulk(el)) for el in ("Cu", "Al", "Ni")] + [
        BenchStructure("Cu-bcc", _bcc("Cu"))
    ]
    rows = EVScan(load_potential("lj-nowall")).calc_many(structures)
    for row in rows:
        assert row["error"] is None
        assert row["no_minimum"] is True and row["flips"] == 0
        assert np.all(np.diff(row["energies"]) > 0)  # keeps falling on compression
    assert EVScan.aggregate(rows)["no_minimum_rate"] == 1.0
    # The intact Lennard-Jones at its own minimum has one.
    lj_rows = EVScan(load_potential("lj")).calc_many(
        [BenchStructure("fcc", bulk("Ar", "fcc", a=2.5 * 2**0.5 * 2 ** (1 / 6)))]
    )
    assert lj_rows[0]["flips"] == 1
