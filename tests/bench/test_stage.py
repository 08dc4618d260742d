"""The bench stage and CLI: potentials side by side, checkpoints per structure, resume, failures, report."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from typer.testing import CliRunner

from aloe.bench.settings import BenchSettings
from aloe.bench.stage import bench, checkpoint_path
from aloe.cli.main import app
from aloe.errors import AloeError

METALS = ["Cu", "Al", "Ni", "Au"]
# A short MD: the stage test checks the plumbing; the physics is tested in test_md.py.
SHORT_MD = {"duration_ps": 0.3, "ensembles": ["nvt"], "timestep_fs": 2.0}
#: Small random mixtures of EMT's metals (MD needs atoms that can move towards each other).
SMALL_MIXTURES = {
    "n_structures": 2,
    "n_atoms": 16,
    "n_elements": 3,
    "elements": ["Cu", "Al", "Ni", "Au", "Ag"],
}


def _labelled(atoms, relax=False, energy=True):
    """EMT labels (a relaxed crystal: energy, forces, stress; a displaced supercell: forces only)."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    if relax:
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE

        from aloe.devices import one_blas_thread

        with one_blas_thread():  # the filter's 3x3 matrix functions crawl with busy BLAS threads
            FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4, steps=300)
    results = {"forces": atoms.get_forces()}
    if energy:
        results.update(energy=atoms.get_potential_energy(), stress=atoms.get_stress())
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


@pytest.fixture(scope="module")
def emt_reference(tmp_path_factory):
    """EMT 'reference' crystals and displaced supercells in one extxyz, plus EMT's isolated-atom energies."""
    from ase import Atoms

    folder = tmp_path_factory.mktemp("emt-ref")
    rng = np.random.default_rng(0)
    frames = [
        _labelled(bulk(el, "fcc", a={"Cu": 3.6, "Al": 4.05, "Ni": 3.52, "Au": 4.08}[el]), relax=True)
        for el in METALS
    ]
    for el in METALS[:2]:
        cell = bulk(el, "fcc", a=3.6 if el == "Cu" else 4.05, cubic=True).repeat((2, 2, 2))
        cell.positions += rng.normal(0, 0.05, cell.positions.shape)
        frames.append(_labelled(cell, energy=False))
    path = folder / "emt.extxyz"
    write(path, frames, format="extxyz")
    energies = {}
    for el in METALS:
        atom = Atoms(el, cell=[12, 12, 12], pbc=True)
        atom.calc = EMT()
        energies[el] = float(atom.get_potential_energy())
    (folder / "atoms.json").write_text(json.dumps(energies))
    return path, folder / "atoms.json"


def _settings(tmp_path, reference, **extra):
    path, atoms = reference
    data = {
        "potentials": ["emt", "lj-nowall"],
        "structures": str(path),
        "atom_energies": str(atoms),
        "md": SHORT_MD,
        "mixtures": SMALL_MIXTURES,
        "output": str(tmp_path / "bench"),
        "progress": False,
    }
    data.update(extra)
    return BenchSettings.model_validate(data)


def test_suite_runs_side_by_side_and_flags_the_broken_potential(tmp_path, emt_reference):
    result = bench(_settings(tmp_path, emt_reference))
    run = result.run_dir
    metrics = result.products["metrics"]
    assert set(metrics) == {"equilibrium", "forces", "ev", "md"}
    # EMT against its own labels (crystals at EMT's minimum): no energy error, forces equal.
    assert metrics["equilibrium"]["emt"]["e_coh_mae"] < 1e-4
    assert metrics["equilibrium"]["emt"]["fingerprint_distance_mean"] < 0.05
    assert metrics["forces"]["emt"]["force_mae"] < 1e-6  # the extxyz file keeps 8 decimals
    assert metrics["forces"]["emt"]["softening_slope"] == pytest.approx(1.0)
    # EV: EMT curves have one minimum; the broken potential's have none.
    assert metrics["ev"]["emt"]["failure_rate"] == 0
    assert metrics["ev"]["emt"]["no_minimum_rate"] == 0
    broken = "lj-nowall"
    assert metrics["ev"][broken]["no_minimum_rate"] == 1.0
    assert metrics["ev"][broken]["flips_minus_one_abs_mean"] >= 1
    # Its relaxations collapse the cell: stopped by the volume guard and recorded, not run until memory ends.
    broken_eq = [r for r in result.products["rows"]["equilibrium"] if r["potential"] == broken]
    assert broken_eq and all("cell volume" in (r["error"] or "") for r in broken_eq)
    # MD: EMT survives the short run; the broken potential's runs end early.
    assert metrics["md"]["emt"]["nvt_completed_share_mean"] == 1.0
    assert metrics["md"][broken]["nvt_completed_share_mean"] < 1.0
    # One row per (potential, structure) in every table, with the columns documented in the schema.
    for name in metrics:
        table = pq.read_table(run / "tables" / f"{name}.parquet")
        assert table.num_rows == 2 * result.counts[name]["structures"]
        assert set(table.column("potential").to_pylist()) == {"emt", broken}
    for name in ("comparison.md", "comparison.csv", "comparison.json", "report.html", "summary.yaml"):
        assert (run / name).exists(), name
    assert list((run / "figures").glob("*.png"))


def test_resume_computes_only_what_is_missing(tmp_path, emt_reference):
    settings = _settings(tmp_path, emt_reference, suite=["ev", "forces"])
    first = bench(settings)
    tables = {n: pq.read_table(first.run_dir / "tables" / f"{n}.parquet") for n in ("ev", "forces")}
    # A killed run: one structure's checkpoint never written.
    rows = first.products["rows"]["ev"]
    lost = checkpoint_path(first.run_dir, "ev", "emt", rows[0]["structure_id"])
    lost.unlink()
    again = bench(settings)
    total = 2 * (first.counts["ev"]["structures"] + first.counts["forces"]["structures"])
    assert again.counts["resumed_rows"] == total - 1
    for n, table in tables.items():
        resumed = pq.read_table(again.run_dir / "tables" / f"{n}.parquet")
        # json.dumps writes NaN as NaN, so equal tables give equal text (NaN != NaN for pyarrow's equals)
        assert json.dumps(resumed.drop(["wall_s"]).to_pylist()) == json.dumps(
            table.drop(["wall_s"]).to_pylist()
        )
    # Adding a potential to the folder computes only the new one's rows.
    more = bench(settings.model_copy(update={"potentials": ["emt", "lj-nowall", "lj"]}))
    assert more.counts["resumed_rows"] == total
    assert more.counts["ev"]["rows"] == 3 * first.counts["ev"]["structures"]


def test_a_failing_structure_is_a_row_not_a_stop(tmp_path, emt_reference):
    # EMT has no parameters for Li: its row records why; the others are computed.
    path = tmp_path / "mixed.extxyz"
    write(path, [bulk("Cu", "fcc", a=3.6), bulk("Li", "bcc", a=3.45)], format="extxyz")
    result = bench(
        BenchSettings(
            potentials=["emt"], suite=["ev"], ev_structures=str(path), output=tmp_path / "b", progress=False
        )
    )
    rows = result.products["rows"]["ev"]
    assert [bool(r["error"]) for r in rows] == [False, True]
    assert "Li" in rows[1]["error"] or "EMT" in rows[1]["error"] or "NotImplemented" in rows[1]["error"]


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="reference structures"):
        BenchSettings(potentials=["emt"])  # equilibrium and forces need a reference set
    assert BenchSettings(potentials=["emt"], suite="all", structures="x").suite == [
        "equilibrium",
        "forces",
        "ev",
        "md",
    ]
    with pytest.raises(ValueError):
        BenchSettings(potentials=[], suite=["ev"])


def test_cli_runs_potentials_and_prints_the_comparison(tmp_path, emt_reference):
    path, _ = emt_reference
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "emt",
            "lj-nowall",
            "--suite",
            "ev,forces",
            "--structures",
            str(path),
            "-o",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "emt" in result.output and "lj-nowall" in result.output
    assert (out / "report.html").exists()
    bad = CliRunner().invoke(app, ["bench", "emt", "--suite", "ev,nonsense", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2
    assert "suite" in bad.output


def test_unknown_structures_are_one_line_errors(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(AloeError, match=r"missing\.extxyz"):
        bench(
            BenchSettings(
                potentials=["emt"],
                suite=["ev"],
                ev_structures=str(tmp_path / "missing.extxyz"),
                output=out,
                progress=False,
            )
        )
    assert not out.exists()


def test_each_side_of_a_cohesive_energy_can_have_its_own_isolated_atoms(tmp_path, emt_reference):
    # The potential's atoms 1 eV higher than the reference's: its cohesive energies are 1 eV/atom lower.
    _, atoms = emt_reference
    shifted = {k: v + 1.0 for k, v in json.loads(atoms.read_text()).items()}
    own = tmp_path / "own.json"
    own.write_text(json.dumps(shifted))
    settings = _settings(tmp_path, emt_reference, potentials=["emt"], suite=["equilibrium"])
    same = bench(settings.model_copy(update={"output": tmp_path / "same"})).products["metrics"]["equilibrium"]
    other = bench(
        settings.model_copy(update={"output": tmp_path / "own", "potential_atom_energies": {"emt": str(own)}})
    ).products["metrics"]["equilibrium"]
    assert other["emt"]["e_coh_mean_error"] == pytest.approx(same["emt"]["e_coh_mean_error"] - 1.0, abs=1e-9)
    with pytest.raises(AloeError, match=r"nowhere\.json"):
        bench(
            settings.model_copy(
                update={"output": tmp_path / "bad", "potential_atom_energies": "nowhere.json"}
            )
        )


def test_md_steps_of_pool_workers_reach_the_run_log(tmp_path):
    """`aloe bench --workers 2`: each worker's MD batch writes its step lines to aloe.log (not to the terminal)."""
    import os
    import subprocess
    import sys

    config = tmp_path / "bench.yaml"
    md = {**SHORT_MD, "batch_systems": 1}  # one system per task: two tasks for the two workers
    config.write_text(yaml.safe_dump({"bench": {"suite": ["md"], "md": md, "mixtures": SMALL_MIXTURES}}))
    out = tmp_path / "pool"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aloe.cli.main",
            "bench",
            "emt",
            "-c",
            str(config),
            "--workers",
            "2",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "ALOE_PROGRESS"},  # the CLI's own default
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "aloe.log").read_text()
    md_lines = [line for line in log.splitlines() if line.startswith("md emt:")]
    assert len(md_lines) >= 2 and all("steps" in line for line in md_lines)  # a closing line per worker batch
    assert "md emt:" not in proc.stdout  # the workers' lines went to the log only
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["counts"]["md"]["rows"] == 2 and summary["counts"]["md"]["failed"] == 0


def test_damaged_checkpoints_are_computed_again_with_a_warning(tmp_path, emt_reference, capsys):
    settings = _settings(tmp_path, emt_reference, potentials=["emt"], suite=["ev"])
    first = bench(settings)
    table = pq.read_table(first.run_dir / "tables" / "ev.parquet").drop(["wall_s"]).to_pylist()
    ids = [r["structure_id"] for r in first.products["rows"]["ev"]]
    paths = [checkpoint_path(first.run_dir, "ev", "emt", i) for i in ids[:3]]
    paths[0].write_text("")  # empty
    paths[1].write_text(paths[1].read_text()[:40])  # truncated
    paths[2].write_text(
        checkpoint_path(first.run_dir, "ev", "emt", ids[3]).read_text()
    )  # another structure's
    capsys.readouterr()
    again = bench(settings)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 3, warnings
    assert (
        "empty" in warnings[0] and "not JSON" in warnings[1] and f"holds structure {ids[3]!r}" in warnings[2]
    )
    assert again.counts["resumed_rows"] == len(ids) - 3
    resumed = pq.read_table(again.run_dir / "tables" / "ev.parquet").drop(["wall_s"]).to_pylist()
    assert json.dumps(resumed) == json.dumps(table)


def test_a_model_error_in_md_is_a_failure_not_an_instability(tmp_path):
    """EMT lacks Ti: the row fails with the reason, counts as failed, and is listed in report.html."""
    ti = bulk("Cu", "fcc", a=3.6, cubic=True)
    ti.symbols[0] = "Ti"
    path = tmp_path / "md.extxyz"
    write(path, [bulk("Cu", "fcc", a=3.6, cubic=True), ti], format="extxyz")
    result = bench(
        BenchSettings(
            potentials=["emt"],
            suite=["md"],
            md_structures=str(path),
            md={**SHORT_MD, "duration_ps": 0.02},
            output=tmp_path / "b",
            progress=False,
        )
    )
    rows = {r["structure_id"]: r for r in result.products["rows"]["md"]}
    assert rows["md-0"]["error"] is None and rows["md-0"]["nvt_completed_share"] == 1.0
    assert rows["md-1"]["error"] == "nvt: emt raised NotImplementedError: No EMT-potential for Ti"
    metrics = result.products["metrics"]["md"]["emt"]
    assert metrics["n_failed"] == 1 and metrics["nvt_n"] == 1 and metrics["nvt_completed_share_mean"] == 1.0
    assert "| emt | 2 | 1 |" in (result.run_dir / "comparison.md").read_text()  # structures 2, failed 1
    assert "No EMT-potential for Ti" in (result.run_dir / "report.html").read_text()


def test_md_progress_reaches_the_run_log_without_progress(tmp_path, emt_reference):
    """--no-progress: the terminal shows no MD steps, the run log still does (a batch can run for hours)."""
    config = tmp_path / "bench.yaml"
    config.write_text(
        yaml.safe_dump({"bench": {"suite": ["md"], "md": SHORT_MD, "mixtures": SMALL_MIXTURES}})
    )
    out = tmp_path / "quiet"
    result = CliRunner().invoke(app, ["bench", "emt", "-c", str(config), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    log = (out / "aloe.log").read_text()
    md_lines = [line for line in log.splitlines() if "md emt:" in line and "steps" in line]
    assert len(md_lines) >= 2, log[-2000:]  # one per batch of systems at least (two mixtures, one per batch)
    assert "md emt:" not in result.output


def test_a_batch_whose_structures_are_computed_together_is_computed_whole_again(tmp_path, emt_reference):
    """Planning a resume: a coupled chunk with a missing row reruns whole (finished rows kept); others only gaps."""
    from aloe.bench.stage import plan_tasks, read_kept_structures

    settings = _settings(
        tmp_path,
        emt_reference,
        potentials=["tests.bench.killer:make", "emt"],
        suite=["ev"],
        ev={"batch_structures": 2},
    )
    first = bench(settings)
    sets = {"ev": read_kept_structures(first.run_dir / "structures", "ev")}
    ids = [s.id for s in sets["ev"]]
    for spec in ("tests.bench.killer:make", "emt"):
        checkpoint_path(first.run_dir, "ev", spec, ids[1]).unlink()
    common = {"settings_json": settings.model_dump_json(), "atom_energies": {}, "progress": "none"}
    tasks, resumed = plan_tasks(first.run_dir, settings, sets, {}, common)
    assert resumed == 2 * len(ids) - 2
    by_potential = {t.potential: t for t in tasks}
    assert len(tasks) == 2
    batched = by_potential["tests.bench.killer:make"]  # a batched model: the whole chunk, its first row kept
    assert [s.id for s in batched.structures] == ids[:2] and batched.keep == {ids[0]}
    plain = by_potential["emt"]  # one structure per call: only the gap
    assert [s.id for s in plain.structures] == [ids[1]] and not plain.keep
