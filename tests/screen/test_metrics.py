from __future__ import annotations

import numpy as np
import pytest

from aloe.screen.metrics import (
    energy_disagreement,
    evaluate,
    force_disagreement,
    formation_energy_per_atom,
    max_force,
    normal_stress,
    stress_disagreement,
    threshold_factor,
)
from aloe.screen.settings import DiscardSettings, MultiplierSettings, ThresholdSettings

RULES = {"thresholds": ThresholdSettings(), "multipliers": MultiplierSettings(), "discard": DiscardSettings()}


def test_energy_disagreement_is_population_std():
    e = np.array([[1.0, 0.0], [1.2, 0.0], [1.4, 0.3]])
    out = energy_disagreement(e)
    assert out[0] == pytest.approx(np.sqrt((0.2**2 + 0 + 0.2**2) / 3))
    assert out[1] == pytest.approx(np.sqrt((0.1**2 + 0.1**2 + 0.2**2) / 3))


def test_force_disagreement_by_hand():
    # one structure of 2 atoms, then one of 1 atom
    offsets = np.array([0, 2, 3])
    fa = np.zeros((3, 3))
    fb = np.array([[0.3, 0.0, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 1.0]])
    fc = np.array([[0.3, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    two = force_disagreement(np.stack([fa, fb]), offsets)
    assert two[0] == pytest.approx(np.sqrt((0.09 + 0.16) / 2))
    assert two[1] == pytest.approx(1.0)
    three = force_disagreement(np.stack([fa, fb, fc]), offsets)
    ab, ac, bc = np.sqrt(0.125), np.sqrt(0.09 / 2), np.sqrt(0.16 / 2)
    assert three[0] == pytest.approx((ab + ac + bc) / 3)
    assert three[1] == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_stress_disagreement_by_hand():
    sa = np.zeros((1, 6))
    sb = np.array([[0.1, 0.0, 0.0, 0.0, 0.0, 0.2]])
    sc = np.array([[0.1, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = stress_disagreement(np.stack([sa, sb, sc]))
    assert out[0] == pytest.approx((np.sqrt(0.05) + 0.1 + 0.2) / 3)


def test_max_force_and_normal_stress():
    offsets = np.array([0, 2, 3])
    f = np.array([[[3.0, 4.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]])
    assert max_force(f, offsets).tolist() == [[5.0, 2.0]]
    s = np.array([[[0.3, -0.6, 0.0, 9.0, 9.0, 9.0]]])
    assert normal_stress(s)[0, 0] == pytest.approx(0.1)


def test_formation_energy_uses_each_models_references():
    numbers = np.array([8, 8, 26])
    offsets = np.array([0, 3])
    ref_a, ref_b = np.full(119, np.nan), np.full(119, np.nan)
    ref_a[[8, 26]] = [-5.0, -8.0]
    ref_b[[8, 26]] = [-3.0, -6.0]  # a model with another energy zero (e.g. another functional)
    energy = np.array([[-19.0], [-13.0]])
    form = formation_energy_per_atom(energy, numbers, offsets, [ref_a, ref_b])
    assert form[:, 0] == pytest.approx([(-19 + 18) / 3, (-13 + 12) / 3])
    # same formation energies -> no energy disagreement, although total energies differ by 2 eV/atom
    assert energy_disagreement(form)[0] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        ([26, 8], 1.0),
        ([26, 8, 8, 8], np.sqrt(2)),
        ([2, 26], 5 * 3),
        ([10, 26], 5 * 2),
        ([18, 26], 5),
        ([43, 8], 4),
        ([92, 8], 4),
        ([57, 8], 3),
        ([71, 8], 3),
        ([2, 92, 57, 8], 5 * 3 * 4 * 3 * np.sqrt(2)),
        ([89, 103], 4),
    ],
)
def test_threshold_factor(numbers, expected):
    numbers = np.array(numbers)
    factor = threshold_factor(numbers, np.array([0, len(numbers)]), MultiplierSettings())
    assert factor[0] == pytest.approx(expected)


def _one_structure(energy_pa, forces, stress, n=2):
    """A committee on one n-atom Fe structure with zero references."""
    energy = np.asarray(energy_pa, dtype=float)[:, None] * n
    refs = [np.zeros(119) for _ in energy_pa]
    return evaluate(
        energy,
        np.asarray(forces, dtype=float),
        np.asarray(stress, dtype=float),
        np.full(n, 26),
        np.array([0, n]),
        refs,
        **RULES,
    )


def test_any_of_rule_and_outcomes():
    zero_f = np.zeros((3, 2, 3))
    zero_s = np.zeros((3, 1, 6))
    agree = _one_structure([-1.0, -1.0, -1.0], zero_f, zero_s)
    assert agree.outcome.tolist() == ["rejected"]
    e_only = _one_structure([-1.0, -1.2, -1.4], zero_f, zero_s)  # std 0.163 > 0.1
    assert e_only.outcome.tolist() == ["selected"] and e_only.reason[0] == "disagreement: energy"
    s = zero_s.copy()
    s[1, 0, 5] = 0.3  # pairs: 0.3, 0, 0.3 -> mean 0.2 > 0.1
    s_only = _one_structure([-1.0, -1.0, -1.0], zero_f, s)
    assert s_only.outcome.tolist() == ["selected"] and s_only.reason[0] == "disagreement: stress"
    assert s_only.stress_disagreement[0] == pytest.approx(0.2)
    f = zero_f.copy()
    f[2, :, 0] = 0.12  # pairs 0, .12, .12 -> 0.08 < 0.1: not selected
    assert _one_structure([-1.0, -1.0, -1.0], f, zero_s).outcome.tolist() == ["rejected"]
    f[2, :, 0] = 0.2  # -> 0.1333 > 0.1
    assert _one_structure([-1.0, -1.0, -1.0], f, zero_s).reason[0] == "disagreement: force"


def test_size_factor_raises_the_bar():
    # 8 atoms: factor 2 -> an energy std of 0.163 is below 0.2
    out = _one_structure([-1.0, -1.2, -1.4], np.zeros((3, 8, 3)), np.zeros((3, 1, 6)), n=8)
    assert out.factor[0] == pytest.approx(2.0)
    assert out.outcome.tolist() == ["rejected"]


def test_discard_filters_use_medians():
    zero_s = np.zeros((3, 1, 6))
    high_e = _one_structure([0.3, 0.3, -5.0], np.zeros((3, 2, 3)), zero_s)  # median 0.3 > 0.25
    assert high_e.outcome.tolist() == ["discarded"] and "formation energy" in high_e.reason[0]
    one_high = _one_structure([0.3, -1.0, -1.0], np.zeros((3, 2, 3)), zero_s)  # median -1.0
    assert one_high.outcome.tolist() == ["selected"]
    f = np.zeros((3, 2, 3))
    f[0, 0, 0] = f[1, 1, 1] = 60.0
    assert "max force 60" in _one_structure([-1.0] * 3, f, zero_s).reason[0]
    s = np.zeros((3, 1, 6))
    s[:2, 0, :3] = -0.6
    discarded = _one_structure([-1.0] * 3, np.zeros((3, 2, 3)), s)
    assert discarded.outcome.tolist() == ["discarded"] and "normal stress 0.6" in discarded.reason[0]


def test_failed_and_overlap_rows_are_neither_selected_nor_discarded():
    energy = np.array([[-2.0, -2.0, -2.0], [-2.0, np.nan, -9.0], [-2.0, -2.0, -2.0]])
    forces = np.zeros((3, 6, 3))
    stress = np.zeros((3, 3, 6))
    out = evaluate(
        energy,
        forces,
        stress,
        np.full(6, 26),
        np.array([0, 2, 4, 6]),
        [np.zeros(119)] * 3,
        **RULES,
        failed={1: "m1 returned non-finite energy"},
        overlap={2: "atoms 0.1 A apart"},
    )
    assert out.outcome.tolist() == ["rejected", "failed", "overlap"]
    assert out.reason[1] == "m1 returned non-finite energy"
    assert np.isnan(out.energy_disagreement[1]) and np.isnan(out.energy_disagreement[2])
