"""The near-eq mode of generate: relaxed starts, short Langevin MD, frames in the candidate schema (EMT, tiny runs)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from pydantic import ValidationError
from typer.testing import CliRunner

from aloe.cli.main import app
from aloe.data.candidates import chunk_files, iter_candidates
from aloe.errors import AloeError
from aloe.generate.near_eq import (
    frame_steps,
    load_calculator,
    md_rng,
    relax_start,
    run_md,
    sample_chunk,
    sample_start,
    supercell_repeats,
)
from aloe.generate.settings import GenerateSettings, NearEqSettings
from aloe.generate.stage import ChunkPlan, generate, load_space
from aloe.potentials.calculator import calculator_for
from aloe.potentials.registry import load_potential

ELEMENTS = ["Al", "Cu", "Ni"]
TINY = {"steps": 20, "frames": 2, "chunk_size": 3}


def settings(proto_dir: Path, out: Path | None, near_eq: dict | None = None, **kw) -> GenerateSettings:
    data = {
        "prototypes": {"source": str(proto_dir)},
        "elements": ELEMENTS,
        "mode": "near-eq",
        "sample": 3,
        "near_eq": {**TINY, **(near_eq or {})},
        "output": None if out is None else str(out),
        "executor": "local",
    }
    data.update(kw)
    return GenerateSettings.model_validate(data)


def table_of(run_dir: Path) -> pa.Table:
    tables = [pq.read_table(p) for p in chunk_files(run_dir)]
    return pa.concat_tables(tables).combine_chunks().sort_by("index")


def assert_same_frames(a: pa.Table, b: pa.Table) -> None:
    """Equal values in every column (strain is NaN in both: no perturbation), rows in index order."""
    a, b = a.sort_by("index"), b.sort_by("index")
    assert a.num_rows == b.num_rows > 0
    for name in a.column_names:
        if name == "strain":
            assert np.isnan(np.array(a.column(name).to_pylist())).all()
            assert np.isnan(np.array(b.column(name).to_pylist())).all()
        else:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), name


def file_hashes(run_dir: Path) -> dict[str, str]:
    files = [*chunk_files(run_dir), *sorted((run_dir / "near-eq").glob("*.json"))]
    return {p.name + p.suffix: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def logs_of(run_dir: Path) -> list[dict]:
    return [
        s for p in sorted((run_dir / "near-eq").glob("*.json")) for s in json.loads(p.read_text())["starts"]
    ]


@pytest.fixture(scope="module")
def near_eq_run(tmp_path_factory) -> Path:
    """Three starts of Al/Cu/Ni (two chunks: 3 starts per chunk is one, so chunk_size 2)."""
    from tests.conftest import write_prototypes

    base = tmp_path_factory.mktemp("near-eq")
    s = settings(write_prototypes(base / "protos"), base / "run", near_eq={"chunk_size": 2})
    generate(s)
    return base / "run"


# ---- the sampler's pieces ----------------------------------------------------------------------------------------
def test_md_rng_is_pinned():
    # The seeds of every near-eq run: changing the derivation changes every frame of every run (bump MD_STREAM).
    assert md_rng(0, "POSCAR_rocksalt", 5, 1).integers(0, 2**31, size=3).tolist() == PINNED_RNG
    assert md_rng(0, "POSCAR_rocksalt", 5, 0).random() != md_rng(0, "POSCAR_rocksalt", 5, 1).random()
    assert md_rng(1, "POSCAR_rocksalt", 5, 1).random() != md_rng(0, "POSCAR_rocksalt", 5, 1).random()


PINNED_RNG = [2016147147, 1418949848, 364628804]


def test_supercell_repeats_and_frame_steps():
    cubic = np.eye(3) * 3.0
    assert supercell_repeats(cubic, 2, 8) == (2, 2, 1)
    assert supercell_repeats(cubic, 8, 8) == (1, 1, 1)
    assert supercell_repeats(np.diag([2.0, 4.0, 8.0]), 1, 8) == (4, 2, 1)  # shortest repeated axis first
    assert supercell_repeats(cubic, 3, 1) == (1, 1, 1)
    assert frame_steps(20, 2) == [10, 20]
    assert frame_steps(200, 5) == [40, 80, 120, 160, 200]
    assert frame_steps(7, 7) == list(range(1, 8))


def test_settings_validation():
    with pytest.raises(ValidationError, match="frames"):
        NearEqSettings(steps=3, frames=4)
    with pytest.raises(ValidationError, match="at least one temperature"):
        NearEqSettings(temperatures=[])
    with pytest.raises(ValidationError, match="positive"):
        NearEqSettings(temperatures=[300, -1])
    with pytest.raises(ValidationError):
        GenerateSettings(mode="md")
    assert GenerateSettings().mode == "perturb"


def test_relaxed_start_is_at_equilibrium():
    """The relaxed start's forces are below fmax, checked with ASE's own EMT (not through aloe's adapter)."""
    ne = NearEqSettings()
    start = bulk("Cu", "fcc", a=3.9, cubic=True)
    start.positions[0] += [0.1, -0.05, 0.02]
    relaxed, info = relax_start(start, calculator_for(load_potential("emt")), ne)
    assert info.converged and info.steps > 0 and info.fmax <= ne.fmax
    relaxed.calc = EMT()
    assert np.abs(relaxed.get_forces()).max() <= ne.fmax
    # the filter's cell forces: virial per atom
    assert np.abs(relaxed.get_stress() * relaxed.cell.volume / len(relaxed)).max() <= ne.fmax
    assert 0.7 < info.volume_ratio < 0.85  # EMT Cu: a = 3.59 A, from 3.9
    assert len(start) == len(relaxed) == 4 and start.cell[0, 0] == 3.9  # the start is not modified


def test_md_frames_sample_the_target_temperature():
    """Long enough for the thermostat: the frames' mean kinetic temperature is near the target (32 atoms)."""
    ne = NearEqSettings(steps=200, frames=8)
    start = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)
    start.calc = EMT()
    e_min = start.get_potential_energy() / len(start)  # EMT Cu near its lattice constant
    start.calc = None
    calculator = calculator_for(load_potential("emt"))
    for t, target in enumerate((300.0, 1000.0)):
        frames, info = run_md(start, calculator, target, t, md_rng(0, "cu", 0, t), ne)
        assert info.stopped is None and info.steps == 200 and len(frames) == info.frames == 8
        assert [f.step for f in frames] == frame_steps(200, 8) and [f.slot for f in frames] == list(range(8))
        mean = np.mean([f.temperature for f in frames[2:]])  # after 50 fs, half the thermostat's 100 fs
        assert 0.6 * target < mean < 1.4 * target, (target, mean)
        assert all(((f.frac_coords >= 0) & (f.frac_coords < 1)).all() for f in frames)
        # near equilibrium: about 3/2 kT of potential energy per atom above the minimum, nothing like a melt
        rise = np.mean([f.energy_per_atom for f in frames[2:]]) - e_min
        assert 0 < rise < 4 * 8.617e-5 * target


def test_md_run_that_turns_non_finite_keeps_its_frames():
    class NaNLater(EMT):
        """EMT whose energies turn NaN after a number of calculations (a model blowing up mid-run)."""

        calls = 0

        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            type(self).calls += 1
            if type(self).calls > 14:
                self.results["energy"] = np.nan

    ne = NearEqSettings(steps=20, frames=4, temperatures=[300.0], relax=False)
    start = bulk("Cu", "fcc", a=3.59, cubic=True).repeat((2, 1, 1))
    outcome = sample_start(
        start, calculator_for(load_potential(NaNLater())), ne, lambda t: md_rng(0, "cu", 0, t)
    )
    (run,) = outcome.record.runs
    assert outcome.record.failed is None and run.stopped == "non-finite" and "non-finite" in run.detail
    assert 0 < run.frames == len(outcome.frames) < 4 and run.steps < 20
    assert [f.slot for f in outcome.frames] == list(range(run.frames))


def test_start_the_potential_cannot_treat_fails_with_its_reason():
    ne = NearEqSettings(**TINY)
    outcome = sample_start(
        bulk("Ti", "hcp", a=2.95), calculator_for(load_potential("emt")), ne, lambda t: md_rng(0, "ti", 0, t)
    )
    assert outcome.frames == [] and outcome.record.failed == "potential failed"
    assert "No EMT-potential for Ti" in outcome.record.detail and outcome.record.runs == []
    collapsing = NearEqSettings(**TINY, max_volume_change=1.01)  # Cu at 3.9 A shrinks by 24%
    outcome = sample_start(
        bulk("Cu", "fcc", a=3.9),
        calculator_for(load_potential("emt")),
        collapsing,
        lambda t: md_rng(0, "cu", 0, t),
    )
    assert outcome.record.failed == "cell volume limit" and "cell volume went to" in outcome.record.detail


# ---- the stage ---------------------------------------------------------------------------------------------------
def test_run_gives_every_start_its_frames(near_eq_run):
    summary = yaml.safe_load((near_eq_run / "summary.yaml").read_text())
    s = GenerateSettings.model_validate(summary["settings"])
    assert summary["settings"]["mode"] == "near-eq" and summary["settings"]["near_eq"]["steps"] == 20
    c = summary["counts"]
    per_start = len(s.near_eq.temperatures) * s.near_eq.frames
    assert c["starts"] == 3 and c["failed"] == 0 and c["failures"] == {}
    assert c["relaxed"] == 3 and c["runs"] == 6 and c["runs_truncated"] == 0
    assert c["frames"] == c["candidates_written"] == c["candidates_in_shard"] == 3 * per_start == 12
    assert c["chunks_total"] == 2 and c["plan"] == "sample"

    table = table_of(near_eq_run)
    plan = ChunkPlan.load(near_eq_run / "plan.npz")
    space = load_space(s)
    starts = space.build(plan.sample)
    expected_index = [int(i) * per_start + k for i in plan.sample for k in range(per_start)]
    assert table.column("index").to_pylist() == expected_index
    assert table.column("seed").to_pylist() == [0] * 12
    rows = [r for r in range(len(starts)) for _ in range(per_start)]
    assert table.column("universe_index").to_pylist() == starts.universe_index[rows].tolist()
    assert table.column("occupation").to_pylist() == starts.occupation[rows].tolist()
    assert table.column("scale").to_pylist() == starts.scale[rows].tolist()
    names = [space.library[int(p)].name for p in starts.prototype[rows]]
    assert table.column("prototype").to_pylist() == names
    assert np.isnan(np.array(table.column("strain").to_pylist())).all()
    ids = table.column("source_id").to_pylist()
    assert len(set(ids)) == 12
    for source_id, name, elements in zip(ids, names, table.column("elements").to_pylist(), strict=True):
        assert re.fullmatch(rf"{re.escape(name)}:\d+:{elements}@(300|1000)K#[01]", source_id)
        assert set(elements.split("-")) <= set(ELEMENTS)
    # starts are the unperturbed candidates: no strain, the prototype's fractional coordinates
    assert np.array_equal(starts.strain, np.zeros_like(starts.strain))

    logs = logs_of(near_eq_run)
    assert [entry["index"] for entry in logs] == plan.sample.tolist()
    for entry in logs:
        assert entry["relax"]["converged"] and entry["relax"]["fmax"] <= s.near_eq.fmax
        assert entry["n_atoms"] >= s.near_eq.supercell_min_atoms
        assert [run["temperature"] for run in entry["runs"]] == [300.0, 1000.0]
    n_sites = table.column("n_sites").to_pylist()
    assert all(n >= s.near_eq.supercell_min_atoms for n in n_sites)
    # a generous band for 8-12 atoms after 10-20 steps from a relaxed start (half the energy goes potential)
    hot = [t for e in logs for t in e["runs"][1]["frame_temperatures"]]
    cold = [t for e in logs for t in e["runs"][0]["frame_temperatures"]]
    assert 150 < np.mean(hot) < 2000 and 20 < np.mean(cold) < 700 and np.mean(hot) > np.mean(cold)


def test_frames_do_not_depend_on_chunking_processes_order_or_element_subset(near_eq_run, tmp_path):
    reference = table_of(near_eq_run)
    s = GenerateSettings.model_validate(yaml.safe_load((near_eq_run / "run.yaml").read_text())["settings"])
    one_per_chunk = s.model_copy(  # one start per chunk, in two worker processes
        update={
            "output": tmp_path / "ones",
            "near_eq": s.near_eq.model_copy(update={"chunk_size": 1}),
            "executor": "process",
            "workers": 2,
        }
    )
    generate(one_per_chunk)
    assert len(chunk_files(tmp_path / "ones")) == 3
    assert_same_frames(table_of(tmp_path / "ones"), reference)

    plan = ChunkPlan.load(near_eq_run / "plan.npz")
    space = load_space(s)
    backwards, _ = sample_chunk(space, plan.sample[::-1], s)
    assert_same_frames(backwards, reference)

    # the same (prototype, elements, occupation) from a larger element set: the same frames
    wider = s.model_copy(update={"elements": [*ELEMENTS, "Pd"], "output": None})
    wide_space = load_space(wider)
    starts = space.build(plan.sample)
    proto, combo, occ = wide_space.decode(np.arange(wide_space.size))
    universe = np.zeros(wide_space.size, dtype=np.int64)
    for p in np.unique(proto).tolist():
        rows = proto == p
        universe[rows] = wide_space.universe_index(p, combo[rows], occ[rows])
    wanted = {(int(p), int(u)) for p, u in zip(starts.prototype, starts.universe_index, strict=True)}
    wide_index = [i for i in range(wide_space.size) if (int(proto[i]), int(universe[i])) in wanted]
    assert len(wide_index) == 3 and wide_index != plan.sample.tolist()
    wide, _ = sample_chunk(wide_space, np.array(wide_index), wider)
    assert wide.num_rows == reference.num_rows
    assert (
        wide.column("index").to_pylist() != reference.column("index").to_pylist()
    )  # other numbers, same frames
    for name in ("cell", "frac_coords", "numbers", "source_id", "universe_index", "elements"):
        key = [("universe_index", "ascending"), ("source_id", "ascending")]
        assert (
            wide.sort_by(key).column(name).to_pylist() == reference.sort_by(key).column(name).to_pylist()
        ), name


def test_resume_after_a_lost_chunk_gives_the_same_bytes(near_eq_run, tmp_path):
    import shutil

    run = shutil.copytree(near_eq_run, tmp_path / "run")
    before = file_hashes(run)
    summary_before = yaml.safe_load((run / "summary.yaml").read_text())["counts"]
    (run / "chunks" / "chunk-000001.parquet").unlink()  # killed before its chunk was written (its log was)
    (run / "chunks" / ".chunk-000001.parquet.tmp").write_bytes(b"partial")  # what a kill can leave
    again = GenerateSettings.model_validate(yaml.safe_load((run / "run.yaml").read_text())["settings"])
    result = generate(again.model_copy(update={"output": run}))
    assert result.counts["chunks_resumed"] == 1 and result.counts["chunks_written"] == 1
    assert file_hashes(run) == before
    for key in ("starts", "frames", "failed", "relaxed", "candidates_in_shard"):
        assert result.counts[key] == summary_before[key], key
    assert not list((run / "chunks").glob(".*"))


def test_a_candidate_emt_cannot_treat_is_skipped(tmp_path):
    from tests.conftest import write_prototypes

    s = settings(
        write_prototypes(tmp_path / "protos"),
        tmp_path / "run",
        elements=["Al", "Ti", "Cu"],
        sample=None,
        prototypes={"source": str(tmp_path / "protos"), "names": ["POSCAR_rocksalt"]},
    )
    result = generate(s)
    c = result.counts
    assert c["starts"] == 3 and c["failed"] == 2 and c["failures"] == {"potential failed": 2}
    assert c["frames"] == 4 and c["relaxed"] == 1
    table = table_of(tmp_path / "run")
    assert set(table.column("elements").to_pylist()) == {"Al-Cu"}
    summary = yaml.safe_load((tmp_path / "run" / "summary.yaml").read_text())
    assert "No EMT-potential for Ti" in summary["near_eq_failure_examples"]["potential failed"]
    failed = [e for e in logs_of(tmp_path / "run") if e["failed"]]
    assert sorted(e["id"].split(":")[-1] for e in failed) == ["Al-Ti", "Ti-Cu"]  # Z order


def test_chunks_read_by_iter_candidates_and_select(near_eq_run, tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    rows = list(iter_candidates(near_eq_run))
    assert sum(len(r) for r in rows) == 12
    first = rows[0]
    atoms = first.to_atoms(0)
    assert len(atoms) == first.table.column("n_sites")[0].as_py() and atoms.pbc.all()
    assert first.label(0) == first.source_id[0] and "@300K#0" in first.label(0)
    assert first.to_structure(0).num_sites == len(atoms)

    from aloe.select.settings import SelectSettings
    from aloe.select.stage import select

    result = select(
        SelectSettings.model_validate(
            {
                "input": str(near_eq_run),
                "encoder": "matminer",
                "output": str(tmp_path / "sel"),
                "direct": {"birch_threshold": 0.5, "k": 1, "max_selected": 4},
                "executor": "local",
            }
        )
    )
    assert result.counts["structures"] == 12
    selected = [r for rows in iter_candidates(tmp_path / "sel" / "selected") for r in rows.source_id]
    assert 0 < len(selected) <= 4 and all("K#" in s for s in selected)


def test_modes_and_fingerprints(proto_dir, tmp_path):
    perturb = GenerateSettings.model_validate(
        {"prototypes": {"source": str(proto_dir)}, "elements": ELEMENTS, "output": str(tmp_path / "p")}
    )
    # a perturb run's fingerprint is the one made before the near-eq mode existed: old folders resume
    old = perturb.model_dump(mode="json", exclude={"mode", "near_eq", *perturb.RUNTIME_KEYS})
    old_fingerprint = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    generate(perturb)
    manifest = yaml.safe_load((tmp_path / "p" / "run.yaml").read_text())
    assert manifest["fingerprint"] == old_fingerprint
    # the near-eq settings do not touch a perturb run
    assert perturb.model_copy(update={"near_eq": NearEqSettings(steps=5, frames=1)}).fingerprint(
        exclude=set(perturb.resume_exclusions())
    ) == perturb.fingerprint(exclude=set(perturb.resume_exclusions()))
    with pytest.raises(AloeError, match="other settings"):
        generate(perturb.model_copy(update={"mode": "near-eq"}))
    # near-eq ignores the perturbation: the starts are the unperturbed candidates either way
    s = settings(proto_dir, None)
    unperturbed = s.model_copy(update={"perturbation": s.perturbation.model_copy(update={"enabled": False})})
    assert s.fingerprint(exclude=set(s.resume_exclusions())) == unperturbed.fingerprint(
        exclude=set(unperturbed.resume_exclusions())
    )
    assert load_space(s).settings.perturbation.enabled is False


def test_bad_potential_stops_before_any_chunk(proto_dir, tmp_path):
    with pytest.raises(AloeError, match="unknown potential"):
        generate(settings(proto_dir, tmp_path / "run", near_eq={"potential": "no-such-model"}))
    assert not chunk_files(tmp_path / "run")


def test_cli_near_eq_mode(proto_dir, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "-p",
            str(proto_dir),
            "-e",
            "Al,Cu",
            "--mode",
            "near-eq",
            "--sample",
            "2",
            "--set",
            "near_eq.temperatures=[300,1000]",
            "--set",
            "near_eq.steps=10",
            "--set",
            "near_eq.frames=1",
            "--chunk-size",
            "1",
            "--executor",
            "local",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "frames of 2 starting candidates" in result.output
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["settings"]["mode"] == "near-eq"
    assert summary["settings"]["near_eq"]["temperatures"] == [300.0, 1000.0]
    assert summary["counts"]["frames"] == 4
    # --chunk-size counts starts in near-eq mode
    assert summary["settings"]["near_eq"]["chunk_size"] == 1 and len(chunk_files(out)) == 2


def test_load_calculator_is_cached_per_settings():
    a = load_calculator(NearEqSettings())
    assert load_calculator(NearEqSettings(steps=3, frames=1)) is a  # the MD settings do not reload the model
