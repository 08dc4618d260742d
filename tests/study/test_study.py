"""A tiny study end to end (2 EMT elements, 2 iterations, 2 members): equal budgets, no leakage, resume identity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

#: Two EMT metals; the smallest study that has every arm, learning curves and all four benchmarks.
TINY = {
    "elements": ["Cu", "Ni"],
    "arms": ["al", "random", "near-eq", "combined"],
    "seed_structures": 6,
    "iterations": 2,
    "per_iteration": 3,
    "near_eq_starts": 3,
    "seed": 0,
    "generate": {
        "prototypes": {"source": "builtin", "arity": [2], "max_sites": 3},
        "sample": 12,
    },
    "near_eq": {"potential": "emt", "temperatures": [300.0, 1000.0], "steps": 20, "frames": 2},
    "screen": {"thresholds": {"energy": 0.001, "force": 0.001, "stress": 0.001}},
    "select": {"encoder": "matminer"},
    "label": {"labeler": "emt", "isolate": False},
    "train": {"preset": "tiny", "committee_size": 2, "epochs": 4},
    "reference": {"binaries": ["B2"], "ternaries": [], "supercells_per_crystal": 1},
    "bench": {
        "equilibrium": {"max_steps": 30, "compute_fingerprint": False},
        "ev": {"n_points": 9},
        "md": {"duration_ps": 0.02, "ensembles": ["nvt", "npt"]},
        "mixtures": {"n_structures": 2, "n_atoms": 8, "n_elements": 2},
    },
}


def _study(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aloe.cli.main", "study", str(config), "-o", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ALOE_CACHE_DIR": str(out.parent / "cache")},
    )


def _metrics(run: Path) -> list[dict]:
    """The study's long table without timing metrics (steps per second differ between runs)."""
    rows = pq.read_table(run / "study_metrics.parquet").to_pylist()
    return [r for r in rows if not r["metric"].endswith("steps_per_second_mean")]


@pytest.mark.slow
def test_a_tiny_study_end_to_end(tmp_path):
    from aloe.study.leakage import find_matches, training_structures
    from aloe.study.settings import LeakageSettings

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(TINY))
    whole = tmp_path / "whole"
    proc = _study(config, whole)
    _out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err[-3000:]
    summary = yaml.safe_load((whole / "summary.yaml").read_text())
    budget = summary["counts"]["budget"]
    # equal label budgets: random labels what al labelled, near-eq as many; combined is their sum
    assert budget["al"]["structures"] == budget["random"]["structures"] == budget["near-eq"]["structures"] > 6
    assert budget["combined"]["structures"] == budget["al"]["structures"] + budget["near-eq"]["structures"]
    # the held-out set shares no structure with any arm's training data
    datasets = sorted((whole / "arms").rglob("label/records"))
    train = training_structures([p.parent for p in datasets] + [whole / "seed" / "label"])
    from pymatgen.io.ase import AseAtomsAdaptor

    from aloe.bench.structures import read_reference_set

    heldout = [
        (s.id, AseAtomsAdaptor.get_structure(s.atoms))
        for s in read_reference_set(str(whole / "heldout")).structures
    ]
    assert heldout and find_matches(heldout, train, LeakageSettings()) == {}
    assert summary["counts"]["leakage"]["kept"] == len(heldout)
    # every arm's final committee has rows for every benchmark; al and random have learning curves
    rows = _metrics(whole)
    assert {r["arm"] for r in rows} == {"al", "random", "near-eq", "combined"}
    assert {r["benchmark"] for r in rows} == {"equilibrium", "forces", "ev", "md"}
    assert {r["committee"] for r in rows if r["arm"] == "al"} == {0, 1, 2}
    for name in ("study.md", "study.html", "study.csv", "datasets/al.extxyz", "models/combined"):
        assert (whole / name).exists(), name
    assert "## Verdict" in (whole / "study.md").read_text()

    # killed in the middle of the benchmarks (after every training), then run again: the same tables
    killed = tmp_path / "killed"
    proc = _study(config, killed)
    deadline = time.time() + 1800
    while time.time() < deadline and proc.poll() is None and not list((killed / "bench").glob("*/*/chunks")):
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = _study(config, killed)
    _out, err = again.communicate(timeout=1800)
    assert again.returncode == 0, err[-3000:]
    assert _metrics(killed) == rows
