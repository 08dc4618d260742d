"""The parts of a study that need no training: settings, the leakage check, the verdict."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from aloe.errors import AloeError
from aloe.study.leakage import extxyz_frames, find_matches
from aloe.study.report import mean_std, verdict, verdict_lines
from aloe.study.settings import LeakageSettings, StudySettings
from aloe.study.stage import check_config


def _pmg(atoms):
    return AseAtomsAdaptor.get_structure(atoms)


def test_settings_default_to_the_emt_study_and_refuse_what_cannot_run():
    s = StudySettings()
    assert s.arms == ["al", "random", "near-eq", "combined"] and s.label["labeler"] == "emt"
    assert s.budget() == 24 + 2 * 16
    assert StudySettings(arms=["combined", "near-eq", "al"]).arms == [
        "al",
        "near-eq",
        "combined",
    ]  # report order
    with pytest.raises(ValueError, match="arm 'combined' trains on the data of 'al' and 'near-eq'"):
        StudySettings(arms=["al", "combined"])
    with pytest.raises(ValueError, match="per_iteration"):
        StudySettings(per_iteration=0)
    with pytest.raises(ValueError, match="arms"):
        StudySettings(arms=["al", "bandit"])
    with pytest.raises(ValueError, match="unknown element symbol"):
        StudySettings(elements=["Al", "Xx"])
    with pytest.raises(ValueError, match="section 'label': key 'output'"):
        StudySettings(label={"labeler": "emt", "output": "x"})


def test_config_checks_run_before_anything_is_written():
    check_config(StudySettings())  # the default study is valid
    with pytest.raises(AloeError, match="emt has no parameters for Fe"):
        check_config(StudySettings(elements=["Al", "Fe"]))
    with pytest.raises(AloeError, match="section 'train'"):
        check_config(StudySettings(train={"preset": "enormous"}))
    with pytest.raises(AloeError, match="test set would hold no structures"):
        check_config(StudySettings(elements=["H"], reference={"binaries": []}))


def test_leakage_finds_a_training_copy_of_a_test_crystal_and_nothing_else():
    test = [
        ("Cu-fcc", _pmg(bulk("Cu", "fcc", a=3.6))),
        ("CuAl-B2", _pmg(bulk("CuAl", "cesiumchloride", a=3.0))),
    ]
    same = bulk("Cu", "fcc", a=3.6, cubic=True)  # the same crystal in another cell: a match
    strained = bulk("Cu", "fcc", a=3.6 * 1.4)  # 40 % larger: another structure without volume scaling
    other = bulk("Al", "fcc", a=4.05)
    train = [("t0", _pmg(same)), ("t1", _pmg(strained)), ("t2", _pmg(other))]
    assert find_matches(test, train, LeakageSettings()) == {"Cu-fcc": ["t0"]}
    assert find_matches(test, train, LeakageSettings(scale=True)) == {"Cu-fcc": ["t0", "t1"]}


def test_extxyz_frames_are_copied_exactly(tmp_path):
    from ase.io import write

    path = tmp_path / "x.extxyz"
    write(path, [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05) * (2, 1, 1)], format="extxyz")
    frames = extxyz_frames(path)
    assert len(frames) == 2 and "".join(frames) == path.read_text()


def _rows(arm, values, bench="ev", metric="failure_rate", committee=1):
    return [
        {"arm": arm, "committee": committee, "benchmark": bench, "metric": metric, "value": v, "member": k}
        for k, v in enumerate(values)
    ]


def test_the_verdict_names_the_best_arm_and_says_when_the_lead_is_within_the_spread():
    rows = (
        _rows("al", [0.0, 0.05, 0.0]) + _rows("random", [0.4, 0.5, 0.45]) + _rows("near-eq", [0.3, 0.1, 0.5])
    )
    found = verdict(rows, {"al": 1, "random": 1, "near-eq": 1})
    ev = next(e for e in found["ev"] if e["metric"] == "failure_rate")
    assert ev["best"] == "al" and ev["runner_up"] == "near-eq" and ev["clear"] is True
    assert ev["arms"]["al"]["mean"] == pytest.approx(0.05 / 3)
    assert mean_std(np.array([0.3, 0.1, 0.5])) == pytest.approx((0.3, 0.2))  # sample std (ddof 1)
    # within the spread: no clear lead
    rows = _rows("al", [0.2, 0.0, 0.4]) + _rows("random", [0.25, 0.3, 0.2])
    ev = next(e for e in verdict(rows, {"al": 1, "random": 1})["ev"] if e["metric"] == "failure_rate")
    assert ev["best"] == "al" and ev["clear"] is False
    line = next(text for text in verdict_lines({"ev": [ev]}) if "failure rate" in text)
    assert "no clear lead" in line and "best **al**" in line
    # higher is better for MD survival
    rows = _rows("al", [0.9, 0.8], "md", "npt_completed_share_mean") + _rows(
        "random", [1.0, 1.0], "md", "npt_completed_share_mean"
    )
    md = next(
        e for e in verdict(rows, {"al": 1, "random": 1})["md"] if e["metric"] == "npt_completed_share_mean"
    )
    assert md["best"] == "random" and md["clear"] is True


def test_arms_with_equal_means_tie_and_no_arm_is_called_best():
    rows = _rows("al", [1.0, 1.0], "md", "nvt_completed_share_mean") + _rows(
        "random", [1.0, 1.0], "md", "nvt_completed_share_mean"
    )
    rows += _rows("near-eq", [0.9, 1.0], "md", "nvt_completed_share_mean")
    md = next(
        e
        for e in verdict(rows, {"al": 1, "random": 1, "near-eq": 1})["md"]
        if e["metric"] == "nvt_completed_share_mean"
    )
    assert md["tied"] == ["al", "random"] and md["lead"] == 0.0 and md["clear"] is False
    line = next(text for text in verdict_lines({"md": [md]}) if "NVT" in text)
    assert "al, random tie at 100.0: no lead" in line and "best" not in line
