from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from aloe.data.formats import write_records
from aloe.data.stats import (
    BINS,
    Histogram,
    dataset_name,
    dataset_stats,
    isolated_atom_energies,
    reference_functional,
)
from aloe.errors import AloeError
from tests.data import make_doc

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_docs() -> list[dict]:
    a = make_doc(
        seed=1,
        symbols=["Na", "Cl"],
        cohesive=-4.0,
        stress=[30.0, 30.0, 30.0, 0.0, 0.0, 0.0],
        forces=[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]],
    )
    b = make_doc(
        seed=2,
        symbols=["Na", "Cl"],
        energy=-10.0,
        stress=[-60.0, -60.0, -60.0, 1.0, 2.0, 3.0],
        forces=[[0.0, 0.0, 1e-3], [0.0, 2.0, 0.0]],
    )
    c = make_doc(
        seed=3,
        symbols=["Fe", "O"],
        functional="EMT (stand-in, not DFT)",
        stress=[0.0] * 6,
        forces=[[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]],
    )
    d = make_doc(
        seed=4, symbols=["Fe", "O"], energy=-20.0, stress=[3.0, 6.0, 9.0, 0, 0, 0], forces=[[0, 0, 0.25]] * 2
    )
    del d["functional"]
    return [a, b, c, d]


def test_hand_checked_numbers(tmp_path):
    src = tmp_path / "tiny.jsonl"
    write_records(tiny_docs(), src)
    summary = dataset_stats([src], tmp_path / "stats")
    ds = summary["datasets"]["tiny"]
    assert (ds["docs"], ds["atoms"], ds["n_elements"]) == (4, 8, 4)
    assert ds["docs_per_element"] == {"O": 2, "Na": 2, "Cl": 2, "Fe": 2}  # by atomic number
    # pressure: one third of the trace, kbar -> GPa, compression positive
    p = ds["pressure_GPa"]
    assert p["n"] == 4 and p["max"] == pytest.approx(3.0) and p["min"] == pytest.approx(-6.0)
    assert p["mean"] == pytest.approx((3.0 - 6.0 + 0.0 + 0.6) / 4)
    assert p["quantiles"]["0.5"] == pytest.approx(0.3, abs=0.31)  # between 0 and 0.6, one bin = 0.1 GPa
    # forces: per-atom |F|; the exact zero lies below the logarithmic range
    f = ds["force_magnitude_eV_per_A"]
    assert f["n"] == 8 and f["max"] == pytest.approx(5.0) and f["min"] == 0.0 and f["below_range"] == 1
    assert f["mean"] == pytest.approx((5 + 0 + 1e-3 + 2 + 1 + 0.5 + 0.25 + 0.25) / 8)
    # cohesive energy: a's own value; b from r2SCAN isolated atoms; c (EMT) and d (no functional) skipped
    refs = isolated_atom_energies()["r2SCAN"]
    b = (-10.0 - refs["Na"] - refs["Cl"]) / 2
    c = ds["cohesive_energy_per_atom_eV"]
    assert (c["n"], c["from_doc"], c["computed_from_isolated_atoms"], c["skipped"]) == (2, 1, 1, 2)
    assert c["mean"] == pytest.approx((-4.0 + b) / 2, abs=1e-12)
    assert (c["min"], c["max"]) == (pytest.approx(min(-4.0, b)), pytest.approx(max(-4.0, b)))
    for name in ("distributions", "elements"):
        assert Path(summary["files"][name]).read_bytes()[:8] == PNG
    assert yaml.safe_load((tmp_path / "stats" / "stats.yaml").read_text())["datasets"]["tiny"]["docs"] == 4


def test_assumed_functional_for_docs_without_one(tmp_path):
    src = tmp_path / "tiny.json"
    write_records(tiny_docs(), src)
    ds = dataset_stats([src], tmp_path / "s", functional="PBE")["datasets"]["tiny"]
    refs = isolated_atom_energies()["PBE"]
    c = ds["cohesive_energy_per_atom_eV"]
    assert (c["computed_from_isolated_atoms"], c["skipped"]) == (2, 1)
    d = (-20.0 - refs["Fe"] - refs["O"]) / 2
    assert c["min"] == pytest.approx(d, abs=1e-12)  # d is the lowest of the three
    with pytest.raises(AloeError, match="r2SCAN and PBE"):
        dataset_stats([src], tmp_path / "s", functional="LDA")


def test_two_datasets_overlaid(tmp_path):
    a = tmp_path / "MatPES-R2SCAN-2025.1.json.gz"
    b = tmp_path / "MP-ALOE-2025.jsonl.gz"
    write_records([make_doc(n=3, seed=s, cohesive=-3.0 - s / 10) for s in range(30)], a)
    write_records([make_doc(n=5, seed=s) for s in range(20)], b)
    summary = dataset_stats([a, b], tmp_path / "out")
    assert list(summary["datasets"]) == ["MatPES-R2SCAN-2025.1", "MP-ALOE-2025"]
    assert summary["datasets"]["MP-ALOE-2025"]["atoms"] == 100
    assert summary["datasets"]["MatPES-R2SCAN-2025.1"]["cohesive_energy_per_atom_eV"]["from_doc"] == 30
    named = dataset_stats([a, b, a], tmp_path / "n", names=["MatPES", "MP-ALOE", "MatPES"])
    assert list(named["datasets"]) == ["MatPES", "MP-ALOE", "MatPES (2)"]
    with pytest.raises(AloeError, match="1 name"):
        dataset_stats([a, b], tmp_path / "x", names=["only one"])


def test_names_and_functionals():
    assert dataset_name("x/MP-ALOE-2025.jsonl.gz") == "MP-ALOE-2025"
    assert dataset_name("train.extxyz") == "train"
    assert reference_functional("R2SCAN") == "r2SCAN" and reference_functional("pbe") == "PBE"
    assert reference_functional("EMT (stand-in, not DFT)") is None and reference_functional(None) is None


# ---- the streamed histogram ----------------------------------------------------------------------------------
def test_histogram_quantiles_within_a_bin():
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 3.0, 100_000)
    h = Histogram(-10.0, 10.0, 400)
    for chunk in np.array_split(values, 7):
        h.add(chunk)
    assert h.n == values.size and h.under + h.over + h.counts.sum() == values.size
    for q in (0.001, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999):
        assert h.quantile(q) == pytest.approx(np.quantile(values, q), abs=0.05 + 1e-3)  # bin width 0.05
    assert h.quantile(0.0) == values.min() and h.quantile(1.0) == values.max()  # ends are exact
    s = h.summary()
    assert s["mean"] == pytest.approx(values.mean()) and s["std"] == pytest.approx(values.std())


def test_histogram_log_bins():
    rng = np.random.default_rng(1)
    values = np.concatenate([np.exp(rng.normal(-1.0, 2.0, 50_000)), np.zeros(10)])
    lo, hi, bins, log = BINS["force_magnitude"]
    h = Histogram(lo, hi, bins, log)
    h.add(values)
    ratio = (hi / lo) ** (1 / bins)
    for q in (0.01, 0.5, 0.99):
        exact = np.quantile(values, q)
        assert exact / ratio <= h.quantile(q) <= exact * ratio
    assert h.under == 10


def test_histogram_ranges_and_empty():
    h = Histogram(0.0, 1.0, 10)
    assert h.quantile(0.5) is None and h.summary() == {"n": 0}
    h.add([-5.0, 0.5, 1.0, 7.0])
    assert (h.under, h.over, int(h.counts[-1])) == (1, 1, 1)  # the upper edge belongs to the last bin
    assert h.quantile(0.0) == -5.0 and h.quantile(1.0) == 7.0
