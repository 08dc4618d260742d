"""A killed ``aloe bench`` run, resumed, gives exactly the rows of an uninterrupted one (timing columns aside).

Each benchmark is killed with SIGKILL in its middle (``tests.bench.killer``: the potential kills its own process at
a chosen prediction call), then the same command runs again in the same folder. Its tables must equal, value for
value, the tables of one run that was never interrupted. The potential is a batched model (EV points and MD
systems of a chunk share calls), so a resumed chunk also computes its finished structures again for their batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

ROOT = Path(__file__).resolve().parents[2]
KILLER = "tests.bench.killer:make"
#: Columns that measure time, not physics: they may differ between runs.
TIMING = ("wall_s", "nvt_steps_per_second", "npt_steps_per_second")


def _labelled(atoms: Atoms, relax: bool) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = EMT()
    if relax:
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE

        from aloe.devices import one_blas_thread

        with one_blas_thread():
            FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4, steps=300)
    results = {"forces": atoms.get_forces(), "energy": atoms.get_potential_energy()}
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """EMT reference crystals and displaced supercells, their isolated atoms, and MD structures (one with H)."""
    folder = tmp_path_factory.mktemp("resume-inputs")
    rng = np.random.default_rng(3)
    metals = {"Cu": 3.6, "Al": 4.05, "Ni": 3.52, "Au": 4.08}
    frames = [_labelled(bulk(el, "fcc", a=a), relax=True) for el, a in metals.items()]
    for el, a in metals.items():
        cell = bulk(el, "fcc", a=a, cubic=True).repeat((2, 2, 1))
        cell.positions += rng.normal(0, 0.05, cell.positions.shape)
        frames.append(_labelled(cell, relax=False))
    write(folder / "reference.extxyz", frames, format="extxyz")
    energies = {}
    for el in metals:
        atom = Atoms(el, cell=[12, 12, 12], pbc=True)
        atom.calc = EMT()
        energies[el] = float(atom.get_potential_energy())
    (folder / "atoms.json").write_text(json.dumps(energies))
    # MD: the structure with H runs at 0.5 fs (4x the steps), so its batch-mate finishes first
    md = [bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1)) for _ in range(4)]
    md[1].symbols[0] = "H"
    md[2].symbols[:] = "Ni"
    md[3].symbols[:] = "Al"
    for k, atoms in enumerate(md):
        atoms.positions += np.random.default_rng(k).normal(0, 0.03, atoms.positions.shape)
    write(
        folder / "md.db", md
    )  # an ASE database keeps every digit (an extxyz file would round to 8 decimals)
    config = {
        "bench": {
            "structures": str(folder / "reference.extxyz"),
            "atom_energies": str(folder / "atoms.json"),
            "ev_structures": "builtin:elements:Cu,Al,Ni,Au,Ag,Pd,Pt",
            "md_structures": str(folder / "md.db"),
            "ev": {"batch_structures": 2},
            "forces": {"batch_structures": 1},
            "equilibrium": {"compute_fingerprint": False},
            "md": {"duration_ps": 0.06, "ensembles": ["nvt", "npt"], "batch_systems": 2},
        }
    }
    (folder / "bench.yaml").write_text(yaml.safe_dump(config))
    return {"folder": folder, "config": folder / "bench.yaml"}


def _bench(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aloe.cli.main", "bench", KILLER, *args, "--no-progress"],
        capture_output=True,
        text=True,
        cwd=ROOT,  # tests.bench.killer is importable from here
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def _rows(run: Path, bench: str) -> list[dict]:
    table = pq.read_table(run / "tables" / f"{bench}.parquet")
    return table.drop([c for c in TIMING if c in table.column_names]).to_pylist()


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    done = _bench(["--suite", "all", "-c", str(inputs["config"]), "-o", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


#: (benchmark, prediction call that kills the first run): each lands in the middle of the benchmark. MD: in the
#: NPT run of the first batch, after its Cu system finished (31 steps) and before its H system (121 steps) did.
KILLS = [("ev", 3), ("forces", 3), ("equilibrium", 10), ("md", 200)]


@pytest.mark.parametrize(("bench", "kill_at"), KILLS, ids=[b for b, _ in KILLS])
def test_a_run_killed_in_the_middle_resumes_to_the_uninterrupted_rows(
    bench, kill_at, inputs, uninterrupted, tmp_path
):
    out = tmp_path / "run"
    args = ["--suite", bench, "-c", str(inputs["config"]), "-o", str(out)]
    env = {"ALOE_TEST_KILL_AT": str(kill_at), "ALOE_TEST_KILL_MARKER": str(tmp_path / "killed")}
    killed = _bench(args, env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    expected = _rows(uninterrupted, bench)
    written = list((out / "chunks" / bench).rglob("*.json"))
    assert 0 < len(written) < len(expected), (
        f"the kill did not land in the middle: {len(written)} rows written"
    )
    resumed = _bench(args, env)  # the marker exists now: the same command goes through
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["counts"]["resumed_rows"] == len(written)
    got = _rows(out, bench)
    # json.dumps writes NaN as NaN: equal text means equal values, NaN included
    assert json.dumps(got) == json.dumps(expected)


def test_structures_are_kept_at_full_precision(inputs, uninterrupted):
    """The run keeps exactly the numbers it read: every digit of the database's positions and cells."""
    from ase.io import read

    from aloe.bench.structures import read_structure_file

    kept = read_structure_file(uninterrupted / "structures" / "md.jsonl")
    source = read(inputs["folder"] / "md.db", index=":")
    assert len(kept) == len(source) == 4
    for structure, atoms in zip(kept, source, strict=True):
        assert np.array_equal(structure.atoms.positions, atoms.positions)
        assert np.array_equal(structure.atoms.cell[:], atoms.cell[:])
