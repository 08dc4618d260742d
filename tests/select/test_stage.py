from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.io import read, write
from typer.testing import CliRunner

import aloe.select.stage as stage
from aloe.cli.main import app
from aloe.data.candidates import chunk_files, count_rows, read_chunk
from aloe.errors import AloeError, InputFileError
from aloe.select.direct import direct_select
from aloe.select.settings import DirectSettings, SelectSettings
from aloe.select.stage import read_points, select
from tests.select.helpers import DIRECT, select_settings

POINT_COLUMNS = {
    "chunk",
    "row",
    "index",
    "id",
    "status",
    "cluster",
    "cluster_size",
    "distance",
    "rank",
    "selected",
    "pc",
}

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)  # copy2: modification times are kept
    return target


def points_of(run: Path) -> dict[str, list]:
    return read_points(run).to_pydict()


def picked(points: dict[str, list], column: str = "id") -> list:
    """``column`` of the selected points."""
    return [v for v, s in zip(points[column], points["selected"], strict=True) if s]


def selected_ids(run: Path) -> list[str]:
    out = []
    for path in chunk_files(run / "selected"):
        rows = read_chunk(path)
        out.extend(rows.label(r) for r in range(len(rows)))
    return out


def input_ids(paths) -> list[str]:
    out = []
    for path in paths:
        rows = read_chunk(path)
        out.extend(rows.label(r) for r in range(len(rows)))
    return out


def feature_mtimes(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run / "features").glob("*.npz")}


def summary_of(run: Path) -> dict:
    return yaml.safe_load((run / "summary.yaml").read_text())


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path


def check_center_rule(points: dict[str, list], k: int) -> None:
    """Clusters of at most k are taken whole; larger ones give exactly the ranks int(linspace(0, n - 1, k))."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(points["cluster"]):
        if c >= 0:
            members.setdefault(c, []).append(i)
    assert sorted(members) == list(range(len(members)))
    for rows in members.values():
        n = len(rows)
        assert {points["cluster_size"][i] for i in rows} == {n}
        ranks = sorted(points["rank"][i] for i in rows)
        assert ranks == list(range(n))
        by_rank = sorted(rows, key=lambda i: points["rank"][i])
        distances = [points["distance"][i] for i in by_rank]
        assert distances == sorted(distances)
        picked = {points["rank"][i] for i in rows if points["selected"][i]}
        if n <= k:
            assert picked == set(range(n))
        else:
            assert picked == {int(v) for v in np.linspace(0, n - 1, k)} and len(picked) == k


# ---- the whole stage --------------------------------------------------------------------------------------------
def test_select_generate_run(base, gen_run):
    run = base.run_dir
    inputs = chunk_files(gen_run)
    assert len(inputs) == 5
    points = points_of(run)
    assert POINT_COLUMNS <= set(points)
    n = len(points["id"])
    assert n == sum(count_rows(p) for p in inputs) == base.counts["structures"] == 100
    assert points["id"] == input_ids(inputs)  # chunk order, row order
    assert len(set(points["id"])) == n
    assert points["chunk"] == [p.name.removesuffix(".parquet") for p in inputs for _ in range(count_rows(p))]
    assert set(points["status"]) == {"ok"}
    assert all(len(pc) == base.products["direct"].n_components for pc in points["pc"])

    n_selected = sum(points["selected"])
    assert n_selected == base.counts["selected"] == len(base.products["direct"].selected)
    assert 0 < n_selected < n
    assert sorted(selected_ids(run)) == sorted(picked(points))
    # one selected file per input chunk, holding that chunk's picks in row order
    for path in chunk_files(run / "selected"):
        chunk = path.name.removesuffix(".parquet")
        assert input_ids([path]) == [
            i for i, c in zip(picked(points), picked(points, "chunk"), strict=True) if c == chunk
        ]
    assert [p.name for p in chunk_files(run / "selected")] == [p.name for p in inputs]

    sizes = Counter(points["cluster"])
    assert base.counts["clusters"] == len(sizes) == base.products["direct"].n_clusters
    assert min(sizes.values()) <= DIRECT["k"] < max(sizes.values())  # both kinds of cluster occur
    check_center_rule(points, DIRECT["k"])
    assert n_selected == sum(min(s, DIRECT["k"]) for s in sizes.values())

    assert_png(run / "plots" / "pca.png")
    assert_png(run / "plots" / "cluster_sizes.png")
    summary = summary_of(run)
    assert summary["verb"] == "select"
    assert summary["encoder"].startswith("matminer-") and summary["n_features"] == 159
    assert summary["counts"]["selected"] == n_selected
    assert summary["counts"]["encoded_now"] == n and summary["counts"]["chunks_resumed"] == 0
    assert summary["counts"]["encoder_failed"] == 0 and summary["counts"]["clustered"] == n
    assert summary["direct"]["n_components"] == base.products["direct"].n_components >= 2
    assert summary["settings"]["direct"]["k"] == 2
    assert summary["plots"] == ["plots/pca.png", "plots/cluster_sizes.png"]

    with open(run / "clusters.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(sizes)
    taken = Counter(picked(points, "cluster"))
    for row in rows:
        c = int(row["cluster"])
        assert int(row["size"]) == sizes[c] and int(row["selected"]) == taken[c]
    assert f"center_pc{base.products['direct'].n_components}" in rows[0]
    assert not list(run.rglob("*.tmp"))
    assert not (run / "selected.extxyz").exists()


def test_selection_is_direct_on_the_stored_features(base):
    run = base.run_dir
    files = sorted((run / "features").glob("chunk-*.npz"))
    assert [f.stem for f in files] == [f"chunk-{i:06d}" for i in range(5)]
    blocks = []
    for f in files:
        with np.load(f) as data:
            assert set(data.files) == {"features", "errors", "encoder", "feature_names"}
            assert data["features"].shape[1] == 159 and len(data["feature_names"]) == 159
            assert set(data["errors"].tolist()) == {""}
            blocks.append(data["features"])
    features = np.concatenate(blocks)
    result = direct_select(features, DirectSettings(**DIRECT))
    points = points_of(run)
    assert np.flatnonzero(points["selected"]).tolist() == result.selected.tolist()
    assert points["cluster"] == result.labels.tolist()
    assert points["rank"] == result.rank.tolist()
    np.testing.assert_allclose(points["distance"], result.distance, rtol=1e-12)
    np.testing.assert_allclose(np.array(points["pc"]), result.scores, rtol=1e-12)


def test_default_chgnet_encoder_end_to_end(gen_run, tmp_path):
    settings = SelectSettings.model_validate(
        {"input": str(gen_run), "output": str(tmp_path / "sel"), "direct": DIRECT, "batch_size": 16}
    )
    assert settings.encoder == "chgnet-0.3.0"
    result = select(settings)
    summary = summary_of(result.run_dir)
    assert summary["encoder"].startswith("chgnet-0.3.0:") and summary["n_features"] == 64
    points = points_of(result.run_dir)
    assert len(points["id"]) == 100 and set(points["status"]) == {"ok"}
    assert 0 < result.counts["selected"] < 100
    check_center_rule(points, DIRECT["k"])
    assert_png(result.run_dir / "plots" / "pca.png")


# ---- resuming and re-selecting ----------------------------------------------------------------------------------
def test_resume_encodes_only_the_missing_chunk(base, gen_run, tmp_path):
    run = copy_run(base.run_dir, tmp_path / "sel")
    victim = run / "features" / "chunk-000002.npz"
    victim.unlink()
    kept = feature_mtimes(run)
    (run / "features" / ".chunk-000003.npz.x1.tmp").write_bytes(b"half written")
    (run / "selected" / ".chunk-000000.parquet.x2.tmp").write_bytes(b"half written")
    result = select(select_settings(gen_run, run))
    assert result.counts["encoded_now"] == count_rows(gen_run / "chunks" / "chunk-000002.parquet") == 20
    assert result.counts["chunks_resumed"] == 4 and result.counts["chunks_total"] == 5
    assert victim.exists()
    assert {k: v for k, v in feature_mtimes(run).items() if k != victim.name} == kept
    assert not list(run.rglob("*.tmp"))
    assert read_points(run).equals(read_points(base.run_dir))
    assert selected_ids(run) == selected_ids(base.run_dir)
    assert summary_of(run)["resumed"] is True


def test_interrupted_run_resumes_to_the_same_result(base, gen_run, tmp_path, monkeypatch):
    real = stage._encode_chunk
    calls = {"n": 0}

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(stage, "_encode_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        select(select_settings(gen_run, tmp_path / "sel"))
    monkeypatch.setattr(stage, "_encode_chunk", real)
    assert len(list((tmp_path / "sel" / "features").glob("*.npz"))) == 2
    assert not (tmp_path / "sel" / "points.parquet").exists()
    result = select(select_settings(gen_run, tmp_path / "sel"))
    assert result.counts["chunks_resumed"] == 2 and result.counts["encoded_now"] == 60
    assert read_points(tmp_path / "sel").equals(read_points(base.run_dir))


def test_reselect_with_other_direct_settings_does_not_encode(base, gen_run, tmp_path):
    run = copy_run(base.run_dir, tmp_path / "sel")
    before = feature_mtimes(run)
    result = select(select_settings(gen_run, run, direct={**DIRECT, "k": 1}))
    assert result.counts["encoded_now"] == 0 and result.counts["chunks_resumed"] == 5
    assert feature_mtimes(run) == before
    points = points_of(run)
    base_points = points_of(base.run_dir)
    assert points["cluster"] == base_points["cluster"]  # same threshold, same clusters
    assert result.counts["selected"] == result.counts["clusters"] == base.counts["clusters"]
    assert result.counts["selected"] < base.counts["selected"]
    check_center_rule(points, 1)  # one per cluster: the one closest to the centre
    assert set(picked(points, "rank")) == {0}
    assert sorted(selected_ids(run)) == sorted(picked(points))
    assert summary_of(run)["settings"]["direct"]["k"] == 1

    coarse = select(select_settings(gen_run, run, direct={**DIRECT, "birch_threshold": 1.0}))
    assert coarse.counts["encoded_now"] == 0 and feature_mtimes(run) == before
    assert coarse.counts["clusters"] < base.counts["clusters"]
    assert coarse.counts["selected"] < base.counts["selected"]
    check_center_rule(points_of(run), 2)
    assert summary_of(run)["settings"]["direct"]["birch_threshold"] == 1.0


def test_other_encoder_on_the_same_folder_is_an_error(base, gen_run, tmp_path):
    run = copy_run(base.run_dir, tmp_path / "sel")
    before = feature_mtimes(run)
    with pytest.raises(AloeError, match="encoder") as info:
        select(select_settings(gen_run, run, encoder="chgnet-0.3.0"))
    assert "'matminer' -> 'chgnet-0.3.0'" in str(info.value)
    assert feature_mtimes(run) == before


# ---- inputs -----------------------------------------------------------------------------------------------------
def varied_structures(n: int) -> list:
    rng = np.random.default_rng(3)
    kinds = [
        ("Cu", "fcc", 3.6),
        ("NaCl", "rocksalt", 5.64),
        ("Si", "diamond", 5.43),
        ("MgO", "rocksalt", 4.2),
        ("Fe", "bcc", 2.87),
    ]
    frames = []
    for i in range(n):
        name, structure, a = kinds[i % len(kinds)]
        atoms = bulk(name, structure, a=a * rng.uniform(0.95, 1.08), cubic=True)
        atoms.rattle(0.03, seed=i)
        frames.append(atoms)
    return frames


def test_structure_file_input(tmp_path):
    path = tmp_path / "structs.extxyz"
    write(str(path), varied_structures(20), format="extxyz")
    out = tmp_path / "sel"
    result = select(select_settings(path, out, chunk_size=8))
    assert [p.name for p in chunk_files(out / "inputs")] == [f"chunk-{i:06d}.parquet" for i in range(3)]
    assert (out / "inputs" / "complete.yaml").exists()
    points = points_of(out)
    assert points["id"] == [f"structs.extxyz:{k}" for k in range(20)]
    assert points["chunk"] == ["chunk-000000"] * 8 + ["chunk-000001"] * 8 + ["chunk-000002"] * 4
    assert points["index"] == list(range(20))
    assert result.counts["structures"] == 20 and result.counts["chunks_total"] == 3
    assert sorted(selected_ids(out)) == sorted(picked(points))
    check_center_rule(points, DIRECT["k"])
    again = select(select_settings(path, out, chunk_size=8))  # reads inputs/ again, encodes nothing
    assert again.counts["encoded_now"] == 0 and again.counts["chunks_resumed"] == 3


def test_screen_run_folder_input(gen_run, tmp_path):
    screen_run = tmp_path / "scr"
    (screen_run / "selected").mkdir(parents=True)
    (screen_run / "run.yaml").write_text("verb: screen\n")
    picked = [gen_run / "chunks" / "chunk-000001.parquet", gen_run / "chunks" / "chunk-000003.parquet"]
    for p in picked:
        shutil.copy(p, screen_run / "selected" / p.name)
    result = select(select_settings(screen_run, tmp_path / "sel"))
    points = points_of(tmp_path / "sel")
    assert points["id"] == input_ids(picked)
    assert sorted(set(points["chunk"])) == ["chunk-000001", "chunk-000003"]
    assert result.counts["structures"] == 40 and result.counts["chunks_total"] == 2
    assert not (tmp_path / "sel" / "inputs").exists()
    assert [p.name for p in chunk_files(tmp_path / "sel" / "selected")] == [p.name for p in picked]


def test_select_run_folder_input_with_empty_chunks(base, gen_run, tmp_path):
    """A select run's selected/ holds one file per input chunk, some empty; a second select reads them."""
    first = copy_run(base.run_dir, tmp_path / "first")
    select(select_settings(gen_run, first, direct={"n_clusters": 1, "k": 1}))
    counts = [count_rows(p) for p in chunk_files(first / "selected")]
    assert sum(counts) == 1 and counts.count(0) == 4
    result = select(select_settings(first, tmp_path / "second"))
    assert result.counts["structures"] == 1 and result.counts["selected"] == 1
    assert selected_ids(tmp_path / "second") == selected_ids(first)


def test_run_folders_that_are_not_inputs(tmp_path):
    label_run = tmp_path / "label"
    label_run.mkdir()
    (label_run / "run.yaml").write_text("verb: label\n")
    with pytest.raises(AloeError, match="'label' run folder is not an input of aloe select"):
        select(select_settings(label_run, tmp_path / "a"))
    empty_screen = tmp_path / "scr"
    (empty_screen / "selected").mkdir(parents=True)
    (empty_screen / "run.yaml").write_text("verb: screen\n")
    with pytest.raises(AloeError, match="no chunk files yet"):
        select(select_settings(empty_screen, tmp_path / "b"))
    with pytest.raises(AloeError, match="needs an input"):
        select(SelectSettings(output=tmp_path / "c"))


# ---- bad feature files ------------------------------------------------------------------------------------------
def rewrite_features(path: Path, columns: int | None = None, encoder: str | None = None) -> None:
    with np.load(path) as data:
        stored = {k: data[k] for k in data.files}
    n = len(stored["features"])
    if columns is not None:
        stored["features"] = np.zeros((n, columns))
        stored["feature_names"] = np.array([f"x{i}" for i in range(columns)])
    if encoder is not None:
        stored["encoder"] = np.array(encoder)
    with open(path, "wb") as fh:
        np.savez(fh, **stored)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: rewrite_features(p, columns=7), "features have 7 columns, earlier chunks 159"),
        (lambda p: rewrite_features(p, encoder="something-else"), "encoded by something-else"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "unreadable feature file"),
    ],
    ids=["columns", "encoder", "truncated"],
)
def test_bad_features_file_is_named(base, gen_run, tmp_path, damage, message):
    run = copy_run(base.run_dir, tmp_path / "sel")
    bad = run / "features" / "chunk-000003.npz"
    damage(bad)
    with pytest.raises(InputFileError) as info:
        select(select_settings(gen_run, run))
    assert info.value.path == str(bad)
    assert message in str(info.value) and "\n" not in str(info.value)


# ---- encoder failures -------------------------------------------------------------------------------------------
def test_structures_the_encoder_cannot_encode_are_left_out(gen_run, tmp_path):
    result = select(select_settings(gen_run, tmp_path / "sel", encoder="tests.select.helpers:FailsOnIron"))
    points = points_of(tmp_path / "sel")
    has_fe = ["Fe" in e.split("-") for e in points["elements"]]
    assert 0 < sum(has_fe) < len(has_fe)
    for i, fe in enumerate(has_fe):
        if fe:
            assert points["status"][i] == "encoder_failed"
            assert points["error"][i] == "toy-fails-on-fe raised RuntimeError: no element 26"
            assert not points["selected"][i]
            assert points["cluster"][i] == -1 and points["rank"][i] == -1 and points["cluster_size"][i] == 0
            assert np.isnan(points["distance"][i]) and np.isnan(points["pc"][i]).all()
        else:
            assert points["status"][i] == "ok" and points["error"][i] is None
    assert result.counts["encoder_failed"] == sum(has_fe)
    assert result.counts["clustered"] == len(has_fe) - sum(has_fe)
    assert summary_of(tmp_path / "sel")["counts"]["encoder_failed"] == sum(has_fe)
    assert result.counts["selected"] > 0
    assert not any("Fe" in i for i in selected_ids(tmp_path / "sel"))
    check_center_rule(points, DIRECT["k"])
    with np.load(tmp_path / "sel" / "features" / "chunk-000000.npz") as data:
        assert str(data["encoder"]) == "toy-fails-on-fe"


def test_partly_nan_features_with_drop_rows(gen_run, tmp_path):
    result = select(
        select_settings(
            gen_run,
            tmp_path / "sel",
            encoder="tests.select.helpers:PartlyNaN",
            direct={**DIRECT, "nonfinite": "drop_rows"},
        )
    )
    points = points_of(tmp_path / "sel")
    odd = [n % 2 == 1 for n in points["n_atoms"]]
    assert 0 < sum(odd) < len(odd)
    assert [s == "nonfinite_features" for s in points["status"]] == odd
    assert result.counts["left_out_nonfinite"] == sum(odd) and result.counts["encoder_failed"] == 0
    assert not any(s for s, o in zip(points["selected"], odd, strict=True) if o)


def test_process_executor_gives_the_same_features(base, gen_run, tmp_path):
    local = select(select_settings(gen_run, tmp_path / "local", encoder="tests.select.helpers:ToyEncoder"))
    pool = select(
        select_settings(
            gen_run,
            tmp_path / "pool",
            encoder="tests.select.helpers:ToyEncoder",
            executor="process",
            workers=2,
        )
    )
    assert pool.counts["encoded_now"] == local.counts["encoded_now"] == 100
    assert read_points(tmp_path / "pool").equals(read_points(tmp_path / "local"))


# ---- export -----------------------------------------------------------------------------------------------------
def test_export_extxyz(base, gen_run, tmp_path):
    run = copy_run(base.run_dir, tmp_path / "sel")
    result = select(select_settings(gen_run, run, export="extxyz"))
    assert result.counts["encoded_now"] == 0
    frames = read(str(run / "selected.extxyz"), index=":")
    assert len(frames) == result.counts["selected"] == base.counts["selected"]
    points = points_of(run)
    expected = sorted(picked(points, "index"))
    assert sorted(int(a.info["aloe_index"]) for a in frames) == expected


def test_reselect_does_not_leave_a_stale_export(base, gen_run, tmp_path):
    run = copy_run(base.run_dir, tmp_path / "sel")
    select(select_settings(gen_run, run, export="extxyz"))
    result = select(select_settings(gen_run, run, direct={**DIRECT, "k": 1}))
    assert result.counts["selected"] < base.counts["selected"]
    export = run / "selected.extxyz"
    assert not export.exists() or len(read(str(export), index=":")) == result.counts["selected"]


# ---- command line -----------------------------------------------------------------------------------------------
def test_cli_select(gen_run, tmp_path):
    out = tmp_path / "sel"
    result = runner.invoke(
        app,
        [
            "select",
            str(gen_run),
            "--encoder",
            "matminer",
            "-k",
            "2",
            "--threshold",
            "0.5",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "selected" in result.output and f"run folder: {out}" in result.output
    summary = summary_of(out)
    assert summary["settings"]["direct"]["k"] == 2 and summary["settings"]["encoder"] == "matminer"
    assert summary["command"].startswith("aloe select")
    line = next(line for line in result.output.splitlines() if line.startswith("selected "))
    assert line.startswith(f"selected {summary['counts']['selected']:,} of 100 structures")


def test_cli_bad_set_is_one_line_exit_2(gen_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["select", str(gen_run), "--encoder", "matminer", "--set", "direct.k=0"])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.count("\n") == 0 and "'direct.k'" in err
    assert not (tmp_path / "runs").exists()
    unknown = runner.invoke(app, ["select", str(gen_run), "--encoder", "nope", "-o", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "unknown encoder 'nope'" in unknown.stderr


def test_cli_set_direct_k_without_option(base, gen_run, tmp_path):
    run = copy_run(base.run_dir, tmp_path / "sel")
    result = runner.invoke(
        app,
        [
            "select",
            str(gen_run),
            "--encoder",
            "matminer",
            "--threshold",
            "0.5",
            "--set",
            "direct.k=3",
            "-o",
            str(run),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = summary_of(run)
    assert summary["settings"]["direct"]["k"] == 3
    assert summary["counts"]["encoded_now"] == 0
    check_center_rule(points_of(run), 3)
