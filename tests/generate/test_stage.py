from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import aloe.generate.stage as stage
from aloe.data.candidates import chunk_files, iter_candidates, read_chunk
from aloe.errors import AloeError
from aloe.generate.settings import GenerateSettings
from aloe.generate.stage import generate, load_space, plan_full, plan_sample

ELEMENTS = ["H", "Li", "O", "Mg", "Fe", "Cu", "Xe"]


def settings(proto_dir: Path, out: Path, **kw) -> GenerateSettings:
    data = {
        "prototypes": {"source": str(proto_dir)},
        "elements": ELEMENTS,
        "chunk_size": 25,
        "output": str(out),
    }
    data.update(kw)
    return GenerateSettings.model_validate(data)


def table_of(run_dir: Path) -> pa.Table:
    tables = [pq.read_table(p) for p in chunk_files(run_dir)]
    table = pa.concat_tables(tables).combine_chunks()
    return table.sort_by("index")


def assert_same_output(a: Path, b: Path) -> None:
    ta, tb = table_of(a), table_of(b)
    assert ta.num_rows == tb.num_rows > 0
    for name in ta.column_names:
        assert ta.column(name).to_pylist() == tb.column(name).to_pylist(), name


def test_run_folder_contents_and_summary(proto_dir, tmp_path):
    result = generate(settings(proto_dir, tmp_path / "run"))
    run = result.run_dir
    assert (run / "run.yaml").exists() and (run / "plan.npz").exists() and (run / "occupations.json").exists()
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["verb"] == "generate" and summary["seed"] == 0
    assert summary["settings"]["elements"] == ELEMENTS
    assert {"numpy", "pymatgen", "pyarrow", "python", "aloe"} <= set(summary["versions"])
    counts = summary["counts"]
    space = load_space(settings(proto_dir, tmp_path / "x"))
    assert counts["candidates"] == space.size
    table = table_of(run)
    assert counts["candidates_written"] == counts["candidates_in_shard"] == table.num_rows
    assert table.column("index").to_pylist() == sorted(set(table.column("index").to_pylist()))
    # every non-sub-sampled candidate is present; perovskite ones only if kept
    kept = space.keep_mask(np.arange(space.size))
    assert table.column("index").to_pylist() == np.flatnonzero(kept).tolist()
    assert {"generate", "total", "plan", "occupations"} <= set(summary["timings_s"])


def test_chunks_match_space_build(proto_dir, tmp_path):
    s = settings(proto_dir, tmp_path / "run")
    generate(s)
    space = load_space(s)
    for rows in iter_candidates(tmp_path / "run"):
        batch = space.build(rows.index)
        assert np.array_equal(rows.cell, batch.cell)
        assert np.array_equal(rows.frac_coords, batch.frac_coords)
        assert np.array_equal(rows.numbers, batch.numbers)
        atoms = rows.to_atoms(0)
        assert atoms.info["aloe_index"] == rows.index[0]
        assert rows.to_structure(0).num_sites == int(batch.n_sites[0])


def test_same_seed_identical_runs(proto_dir, tmp_path):
    generate(settings(proto_dir, tmp_path / "a", seed=11))
    generate(settings(proto_dir, tmp_path / "b", seed=11))
    assert_same_output(tmp_path / "a", tmp_path / "b")


def test_sharded_equals_unsharded(proto_dir, tmp_path):
    generate(settings(proto_dir, tmp_path / "full"))
    for k in (2, 0, 1):  # any order
        generate(settings(proto_dir, tmp_path / "sharded", shard=f"{k}/3"))
    assert (tmp_path / "sharded" / "summary-shard-1-of-3.yaml").exists()
    assert_same_output(tmp_path / "full", tmp_path / "sharded")


def test_sample_mode_is_uniform_without_replacement(proto_dir, tmp_path):
    s = settings(proto_dir, tmp_path / "s", sample=60, chunk_size=16)
    generate(s)
    table = table_of(tmp_path / "s")
    idx = table.column("index").to_pylist()
    assert len(idx) == 60 == len(set(idx))
    space = load_space(s)
    assert space.keep_mask(np.array(idx)).all()
    assert len(chunk_files(tmp_path / "s")) == 4
    plan = plan_sample(space, 60, 16)
    assert plan.sample.tolist() == idx
    with pytest.raises(AloeError, match="exceeds"):
        plan_sample(space, 10**6, 16)


def test_full_plan_chunks_cover_the_space_once(proto_dir, tmp_path):
    space = load_space(settings(proto_dir, tmp_path / "x"))
    plan = plan_full(space, 7)
    assert plan.boundaries[0] == 0 and plan.boundaries[-1] == space.size
    assert (np.diff(plan.boundaries) > 0).all()


def test_interrupted_run_resumes_to_the_same_output(proto_dir, tmp_path, monkeypatch):
    generate(settings(proto_dir, tmp_path / "straight"))
    real = stage._run_chunk
    calls = {"n": 0}

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(stage, "_run_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        generate(settings(proto_dir, tmp_path / "resumed"))
    monkeypatch.setattr(stage, "_run_chunk", real)
    assert len(chunk_files(tmp_path / "resumed")) == 2
    (tmp_path / "resumed" / "chunks" / ".chunk-000002.parquet.abc.tmp").write_text("half a file")
    result = generate(settings(proto_dir, tmp_path / "resumed"))
    assert result.counts["chunks_resumed"] == 2
    assert not list((tmp_path / "resumed" / "chunks").glob("*.tmp"))
    assert_same_output(tmp_path / "straight", tmp_path / "resumed")


def test_resume_with_other_settings_is_refused(proto_dir, tmp_path):
    generate(settings(proto_dir, tmp_path / "run"))
    with pytest.raises(AloeError, match=r"other settings \(seed: 0 -> 1\)"):
        generate(settings(proto_dir, tmp_path / "run", seed=1))
    # runtime settings may change
    generate(settings(proto_dir, tmp_path / "run", workers=2, executor="process"))


def test_process_pool_gives_the_same_output(proto_dir, tmp_path):
    generate(settings(proto_dir, tmp_path / "local"))
    generate(settings(proto_dir, tmp_path / "pool", workers=2, executor="process"))
    assert_same_output(tmp_path / "local", tmp_path / "pool")


def test_exports(proto_dir, tmp_path):
    from ase.io import read

    s = settings(proto_dir, tmp_path / "run", sample=20, chunk_size=8, export=["extxyz", "poscar"])
    result = generate(s)
    assert result.counts["exported"] == {"extxyz": 20, "poscar": 20}
    frames = [
        a for f in sorted((tmp_path / "run" / "export" / "extxyz").glob("*.extxyz")) for a in read(f, ":")
    ]
    rows = read_chunk(chunk_files(tmp_path / "run")[0])
    assert len(frames) == 20
    assert np.allclose(frames[0].cell[:], rows.cell[0]) and frames[0].info["aloe_index"] == rows.index[0]
    poscars = sorted((tmp_path / "run" / "export" / "poscar").rglob("*.POSCAR"))
    assert len(poscars) == 20
    first = read(tmp_path / "run" / "export" / "poscar" / "chunk-000000" / f"{rows.label(0)}.POSCAR")
    assert np.allclose(
        first.get_scaled_positions(wrap=False) % 1.0, rows.to_atoms(0).get_scaled_positions() % 1.0
    )


def test_cli_kill_and_resume(tmp_path):
    """A real SIGKILL in the middle of a run; the resumed run equals a straight one."""
    args = [
        sys.executable,
        "-m",
        "aloe.cli.main",
        "generate",
        "-p",
        "builtin:binary",
        "--sample",
        "60000",
        "--chunk-size",
        "1500",
        "--seed",
        "3",
        "--no-progress",
    ]
    env = {**os.environ, "ALOE_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([*args, "-o", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        [*args, "-o", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    chunks = tmp_path / "killed" / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(chunks.glob("chunk-*.parquet"))) < 8:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(chunks.glob("chunk-*.parquet")))
    assert 0 < done_before < 40, "the kill should land in the middle of the run"
    subprocess.run([*args, "-o", str(tmp_path / "killed")], check=True, env=env, capture_output=True)
    summary = yaml.safe_load((tmp_path / "killed" / "summary.yaml").read_text())
    assert summary["counts"]["chunks_resumed"] >= done_before
    assert_same_output(tmp_path / "straight", tmp_path / "killed")


def test_dask_local_cluster_gives_the_same_output(proto_dir, tmp_path):
    pytest.importorskip("distributed", reason="dask distributed is not installed (pip install 'aloe[dask]')")
    generate(settings(proto_dir, tmp_path / "local"))
    generate(settings(proto_dir, tmp_path / "dask", workers=2, executor="dask"))
    assert_same_output(tmp_path / "local", tmp_path / "dask")


@pytest.mark.slow
def test_published_100k_sample_reproducible_and_resumable(published_dir, tmp_path):
    """Done-when check of issue 2: a seeded 100,000-candidate sample of the 817 published prototypes is identical
    across two runs and across a SIGKILLed-and-resumed run."""
    args = [
        sys.executable,
        "-m",
        "aloe.cli.main",
        "generate",
        "-p",
        str(published_dir),
        "--sample",
        "100000",
        "--seed",
        "2025",
        "--no-progress",
    ]
    for name in ("a", "b"):
        subprocess.run([*args, "-o", str(tmp_path / name)], check=True, capture_output=True)
    assert_same_output(tmp_path / "a", tmp_path / "b")
    assert table_of(tmp_path / "a").num_rows == 100_000
    proc = subprocess.Popen(
        [*args, "-o", str(tmp_path / "k")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    chunks = tmp_path / "k" / "chunks"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(chunks.glob("chunk-*.parquet"))) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(chunks.glob("chunk-*.parquet"))) < 5
    subprocess.run([*args, "-o", str(tmp_path / "k")], check=True, capture_output=True)
    assert_same_output(tmp_path / "a", tmp_path / "k")
