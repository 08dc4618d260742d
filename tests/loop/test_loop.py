from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

import aloe.label.stage as label_stage
import aloe.loop.loop as loop_module
from aloe.errors import AloeError
from aloe.label.stage import iter_records
from aloe.loop.loop import load_run_config, run_loop
from aloe.loop.settings import RunConfig

LJ_COMMITTEE = [
    "lj(sigma=2.3,epsilon=0.05,rc=6.0)",
    "lj(sigma=2.4,epsilon=0.05,rc=6.0)",
    "lj(sigma=2.3,epsilon=0.07,rc=6.0)",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


def loop_config(proto_dir, out, iterations=1, **sections) -> dict:
    config = {
        "run": {"iterations": iterations, "committee": LJ_COMMITTEE, "max_label": 8, "output": str(out)},
        "generate": {
            "prototypes": {"source": str(proto_dir), "arity": [2]},
            "elements": ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"],
            "sample": 40,
            "chunk_size": 20,
            "subsampling": {"enabled": False},
        },
        "screen": {
            "energy_basis": "total",
            "compute_references": False,
            "thresholds": {"energy": 1e-4, "force": 1e-4, "stress": 1e-4},
        },
        "select": {"encoder": "matminer", "direct": {"k": 2, "birch_threshold": 0.3}},
        "label": {"labeler": "emt", "isolate": False, "chunk_size": 4},
        "train": {"preset": "tiny", "committee_size": 2, "epochs": 2},
    }
    for key, value in sections.items():
        config[key] = {**(config.get(key) or {}), **value}
    return config


def bench_section(tmp_path) -> dict:
    """A small bench of every committee: EV scans of three EMT metals and a short MD of small mixtures."""
    from ase.build import bulk
    from ase.io import write

    path = tmp_path / "ev.extxyz"
    write(
        path,
        [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05), bulk("Ni", "fcc", a=3.52)],
        format="extxyz",
    )
    return {
        "suite": ["ev", "md"],
        "ev_structures": str(path),
        "md": {"duration_ps": 0.02, "ensembles": ["nvt"]},
        "mixtures": {"n_structures": 2, "n_atoms": 8, "n_elements": 2, "elements": ["Cu", "Al", "Ni"]},
    }


def dataset_ids(run_dir) -> list[str]:
    ids = []
    for folder in sorted(run_dir.glob("iter-*/label")):
        ids += [r["aloe_record_id"] for r in iter_records(folder)]
    return ids


def test_bad_configs_are_one_line_errors(tmp_path, proto_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": {"iterations": 1, "nonsense": 3}}))
    with pytest.raises(AloeError, match=r"bad.yaml.*run.nonsense.*unknown key"):
        load_run_config(bad)
    config = RunConfig.model_validate(loop_config(proto_dir, tmp_path / "r", label={"labeler": "turbomole"}))
    with pytest.raises(AloeError, match=r"config section 'label'.*labeler"):
        run_loop(config)
    config = RunConfig.model_validate(loop_config(proto_dir, tmp_path / "r2", run={"train_first": True}))
    with pytest.raises(AloeError, match="seed_dataset"):
        run_loop(config)
    config = RunConfig.model_validate(
        loop_config(proto_dir, tmp_path / "r3", bench={"suite": ["ev"], "nonsense": 1})
    )
    with pytest.raises(AloeError, match=r"config section 'bench'.*nonsense"):
        run_loop(config)
    config = RunConfig.model_validate(loop_config(proto_dir, tmp_path / "r4", bench={"suite": ["forces"]}))
    with pytest.raises(AloeError, match=r"config section 'bench'.*reference structures"):
        run_loop(config)


def test_empty_selection_stops_the_loop_with_a_reason(tmp_path, proto_dir):
    config = RunConfig.model_validate(
        loop_config(
            proto_dir, tmp_path / "run", screen={"thresholds": {"energy": 1e9, "force": 1e9, "stress": 1e9}}
        )
    )
    result = run_loop(config)
    assert "selected no structure" in result.stopped
    assert not (tmp_path / "run" / "iter-00" / "label").exists()
    assert (tmp_path / "run" / "report.md").exists()


def test_a_loop_whose_labels_all_fail_stops_before_training(tmp_path, proto_dir):
    # EMT has no parameters for Fe, Co, Cr: every structure fails 'unsupported'; training would have no data.
    config = RunConfig.model_validate(
        loop_config(proto_dir, tmp_path / "run", generate={"elements": ["Cr", "Fe", "Co"], "sample": 10})
    )
    result = run_loop(config)
    assert "no structure could be labelled" in result.stopped
    assert result.iterations[0]["label"]["counts"]["failed_by_class"] == {"unsupported": 8}
    assert not (tmp_path / "run" / "iter-00" / "train").exists()


@pytest.mark.slow
def test_two_iterations_end_to_end_with_emt_and_tiny_mace(tmp_path, proto_dir):
    config = RunConfig.model_validate(
        loop_config(proto_dir, tmp_path / "run", iterations=2, bench=bench_section(tmp_path))
    )
    result = run_loop(config)
    assert result.stopped == "finished 2 iterations"
    run = tmp_path / "run"
    models_0 = sorted((run / "iter-00" / "train" / "models").glob("*.model"))
    assert len(models_0) == 2
    committee_1 = result.iterations[1]["screen"]["counts"]["committee"]
    assert len(committee_1) == 2 and all("member" in name or "mace" in name for name in committee_1)
    for it in (0, 1):
        lab = result.iterations[it]["label"]["counts"]
        assert 0 < lab["labelled"] <= 8
        assert (run / f"iter-{it:02d}" / "report.html").exists()
    # the second committee trains on both iterations' records
    assert len(result.iterations[1]["dataset_runs"]) == 2
    summary = yaml.safe_load(result.summary_path.read_text())
    assert [i["iteration"] for i in summary["iterations"]] == [0, 1]
    assert len(summary["final_committee"]) == 2
    report = (run / "report.md").read_text()
    assert "Iteration 1" in report and "selection rate" in report
    # every committee is benchmarked: the LJ trio (0), and the MACE pairs trained in iterations 0 and 1
    for k, members in ((0, 3), (1, 2), (2, 2)):
        bench = yaml.safe_load((run / f"iter-{k:02d}" / "bench" / "summary.yaml").read_text())
        assert len(bench["potentials"]) == members
        assert set(bench["metrics"]["ev"]) == set(bench["potentials"])
    assert set(summary["bench"]) == {"committee 0", "committee 1", "committee 2"}
    table = (run / "bench_iterations.csv").read_text().splitlines()
    assert len(table) == 1 + 3 + 2 + 2  # header, then one row per committee member
    # one long table of every committee's metrics, read from each bench run's own (not from its summary)
    import pyarrow.parquet as pq

    long = pq.read_table(run / "bench_metrics.parquet").to_pylist()
    members = {(r["group"], r["member"], r["potential"]) for r in long}
    assert {g for g, _, _ in members} == {"committee 0", "committee 1", "committee 2"}
    assert len(members) == 3 + 2 + 2
    assert "Benchmarks of every committee" in report
    # running again on the finished folder does nothing new
    again = run_loop(config)
    assert dataset_ids(run) == dataset_ids(again.run_dir)


@pytest.mark.slow
def test_kill_inside_a_stage_and_at_a_boundary_gives_the_same_dataset(tmp_path, proto_dir, monkeypatch):
    clean = run_loop(RunConfig.model_validate(loop_config(proto_dir, tmp_path / "clean")))
    expected = dataset_ids(clean.run_dir)
    assert expected

    # killed inside the label stage (after two structures)
    config = RunConfig.model_validate(loop_config(proto_dir, tmp_path / "killed"))
    real_task = label_stage._label_task
    calls = {"n": 0}

    def dies(task):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_task(task)

    monkeypatch.setattr(label_stage, "_label_task", dies)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    monkeypatch.setattr(label_stage, "_label_task", real_task)

    # killed again between select and label... of the resumed run: at a stage boundary
    real_stage = loop_module.LoopRun.run_stage

    def dies_before_train(self, it, stage, settings):
        if stage == "train":
            raise KeyboardInterrupt
        return real_stage(self, it, stage, settings)

    monkeypatch.setattr(loop_module.LoopRun, "run_stage", dies_before_train)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    monkeypatch.setattr(loop_module.LoopRun, "run_stage", real_stage)
    resumed = run_loop(config)
    assert dataset_ids(resumed.run_dir) == expected
    assert len(set(expected)) == len(expected)  # no record twice


def test_cli_run_reports_where_the_report_is(tmp_path, proto_dir):
    from aloe.cli.main import app

    config = loop_config(
        proto_dir, tmp_path / "run", screen={"thresholds": {"energy": 1e9, "force": 1e9, "stress": 1e9}}
    )
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and "report.md" in result.output
    changed = CliRunner().invoke(app, ["run", str(path), "--set", "generate.sample=41"])
    assert changed.exit_code == 2
    assert "another config" in changed.output


def test_bench_headline_counts_rows_and_failures():
    from aloe.loop.report import stage_headline

    counts = {
        "ev": {"structures": 12, "rows": 36, "failed": 0},
        "md": {"structures": 2, "rows": 6, "failed": 1},
    }
    assert stage_headline("bench", {**counts, "resumed_rows": 0}) == "ev, md: 42 rows, 1 failed"
