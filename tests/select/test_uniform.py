"""Select mode ``uniform``: seeded uniform random picks over the inputs, no features, the products of mode direct."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from ase.build import bulk
from ase.io import write

import aloe.select.stage as stage
from aloe.data.candidates import chunk_files, count_rows, read_chunk
from aloe.errors import AloeError
from aloe.label.settings import LabelSettings
from aloe.label.stage import iter_records, label
from aloe.select.settings import SelectSettings
from aloe.select.stage import read_points, select
from aloe.select.uniform import uniform_pick
from tests.select.helpers import select_settings
from tests.select.test_stage import POINT_COLUMNS, input_ids, picked, points_of, selected_ids


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def no_encoder(monkeypatch):
    """Any attempt to load an encoder fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("mode uniform loaded an encoder")

    monkeypatch.setattr(stage, "load_select_encoder", refuse)
    monkeypatch.setattr("aloe.select.encoders.load_encoder", refuse)


def uniform_settings(inp, out, k: int | None = 7, seed: int = 3, **kw) -> SelectSettings:
    direct = {"max_selected": k} if k is not None else {}
    return select_settings(inp, out, mode="uniform", seed=seed, direct=direct, **kw)


def metals(n: int) -> list:
    """``n`` rattled cubic cells of the EMT metals (EMT labels all of them)."""
    kinds = [("Cu", "fcc", 3.6), ("Al", "fcc", 4.05), ("Ni", "fcc", 3.52), ("Ag", "fcc", 4.09)]
    frames = []
    for i in range(n):
        symbol, lattice, a = kinds[i % len(kinds)]
        atoms = bulk(symbol, lattice, a=a * (0.97 + 0.01 * (i % 7)), cubic=True)
        atoms.rattle(0.02, seed=i)
        frames.append(atoms)
    return frames


def test_uniform_pick_is_numpys_choice_sorted():
    picks = uniform_pick(100, 7, seed=3)
    assert picks.tolist() == sorted(np.random.default_rng(3).choice(100, 7, replace=False).tolist())
    assert picks.dtype == np.int64 and len(set(picks.tolist())) == 7
    assert uniform_pick(100, 7, seed=3).tolist() == picks.tolist()
    assert uniform_pick(100, 7, seed=4).tolist() != picks.tolist()
    assert uniform_pick(5, None, seed=0).tolist() == uniform_pick(5, 9, seed=0).tolist() == [0, 1, 2, 3, 4]
    assert uniform_pick(0, 3, seed=0).tolist() == []


def test_uniform_mode_picks_k_of_the_inputs_without_encoding(gen_run, tmp_path, no_encoder):
    result = select(uniform_settings(gen_run, tmp_path / "sel", k=7, seed=3))
    run = result.run_dir
    inputs = chunk_files(gen_run)
    every = input_ids(inputs)
    expected = [every[i] for i in uniform_pick(len(every), 7, seed=3)]
    assert len(every) == 100
    # exactly k picks, a subset of the input, in input order
    assert selected_ids(run) == expected and len(set(expected)) == 7
    assert result.products["selected"].tolist() == uniform_pick(100, 7, seed=3).tolist()
    assert result.products["direct"] is None
    # nothing encoded, no DIRECT products
    assert not list((run / "features").iterdir())
    assert not (run / "clusters.csv").exists() and not list(run.glob("plots/*.png"))
    # the points table: every structure, its status and whether it was picked; the clustering columns null
    points = points_of(run)
    assert POINT_COLUMNS <= set(points)
    assert points["id"] == every and picked(points) == expected
    assert set(points["status"]) == {"ok"}
    for column in ("cluster", "cluster_size", "distance", "rank", "pc", "error"):
        assert set(points[column]) == {None}, column
    assert points["chunk"] == [p.name.removesuffix(".parquet") for p in inputs for _ in range(count_rows(p))]
    assert read_points(run).schema.metadata[b"aloe.mode"] == b"uniform"
    # one selected file per input chunk, in the candidate schema of the input
    assert [p.name for p in chunk_files(run / "selected")] == [p.name for p in inputs]
    assert pq.read_schema(chunk_files(run / "selected")[0]).names == pq.read_schema(inputs[0]).names
    c = result.counts
    assert (c["mode"], c["structures"], c["selected"], c["encoded_now"]) == ("uniform", 100, 7, 0)
    summary = yaml.safe_load(result.summary_path.read_text())
    assert summary["counts"] == c
    assert summary["uniform"] == {"seed": 3, "max_selected": 7}
    assert summary["settings"]["mode"] == "uniform"


def test_uniform_picks_do_not_depend_on_chunking(tmp_path, no_encoder):
    path = tmp_path / "metals.extxyz"
    write(str(path), metals(23), format="extxyz")
    picks = {}
    for size in (1, 5, 8, 23, 100):
        run = select(uniform_settings(path, tmp_path / f"sel-{size}", k=6, seed=11, chunk_size=size)).run_dir
        assert len(chunk_files(run / "inputs")) == -(-23 // size)
        picks[size] = selected_ids(run)
    assert len({tuple(v) for v in picks.values()}) == 1
    expected = [f"metals.extxyz:{i}" for i in uniform_pick(23, 6, seed=11)]
    assert picks[8] == expected
    # the same with a pool of workers (nothing runs in it, but the settings must not matter)
    pool = select(uniform_settings(path, tmp_path / "pool", k=6, seed=11, executor="process", workers=2))
    assert selected_ids(pool.run_dir) == expected
    other = select(uniform_settings(path, tmp_path / "other-seed", k=6, seed=12))
    assert selected_ids(other.run_dir) != expected


def test_uniform_without_a_budget_keeps_everything(gen_run, tmp_path, no_encoder):
    result = select(uniform_settings(gen_run, tmp_path / "sel", k=None))
    assert result.counts["selected"] == result.counts["structures"] == 100
    assert selected_ids(result.run_dir) == input_ids(chunk_files(gen_run))


def test_uniform_resumes_and_switches_with_direct_on_one_folder(base, gen_run, tmp_path):
    import shutil

    run = tmp_path / "sel"
    shutil.copytree(base.run_dir, run)
    assert (run / "clusters.csv").exists()
    first = select(uniform_settings(gen_run, run, k=5, seed=1))  # mode and seed are runtime keys
    assert first.counts["mode"] == "uniform" and first.counts["selected"] == 5
    assert not (run / "clusters.csv").exists() and not (run / "plots" / "pca.png").exists()
    ids = selected_ids(run)
    again = select(uniform_settings(gen_run, run, k=5, seed=1))  # a resumed (or repeated) run: the same
    assert selected_ids(run) == ids and read_points(run).equals(read_points(again.run_dir))
    assert yaml.safe_load((run / "summary.yaml").read_text())["resumed"] is True
    back = select(select_settings(gen_run, run))  # DIRECT again: its stored features, nothing encoded
    assert back.counts["encoded_now"] == 0 and back.counts["mode"] == "direct"
    assert selected_ids(run) == selected_ids(base.run_dir)
    assert (run / "clusters.csv").exists()


def test_uniform_input_structures_are_converted_once_and_empty_inputs_refused(tmp_path, no_encoder):
    path = tmp_path / "one.extxyz"
    write(str(path), metals(3), format="extxyz")
    result = select(uniform_settings(path, tmp_path / "sel", k=2, chunk_size=2))
    assert (tmp_path / "sel" / "inputs" / "complete.yaml").exists()
    assert result.counts["chunks_total"] == 2 and result.counts["selected"] == 2
    with pytest.raises(AloeError, match="needs an input"):
        select(SelectSettings(mode="uniform", output=tmp_path / "x"))


def test_label_reads_a_uniform_selection(tmp_path, no_encoder):
    path = tmp_path / "metals.extxyz"
    write(str(path), metals(10), format="extxyz")
    sel = select(uniform_settings(path, tmp_path / "sel", k=4, seed=2, chunk_size=3))
    settings = LabelSettings.model_validate(
        {"input": str(sel.run_dir), "labeler": "emt", "output": str(tmp_path / "lab"), "isolate": False}
    )
    result = label(settings)
    assert (result.counts["structures"], result.counts["labelled"], result.counts["failed"]) == (4, 4, 0)
    records = list(iter_records(result.run_dir))
    assert len(records) == 4
    picked_rows = [read_chunk(p) for p in chunk_files(sel.run_dir / "selected")]
    n_atoms = [n for rows in picked_rows for n in np.diff(rows.offsets).tolist()]
    assert [len(r["forces"]) for r in records] == n_atoms
