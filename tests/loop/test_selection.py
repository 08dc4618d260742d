"""The loop's selection strategies (committee / random / diverse), per-iteration budgets and one training seed."""

from __future__ import annotations

import pytest
import yaml

import aloe.label.stage as label_stage
import aloe.loop.loop as loop_module
from aloe.errors import AloeError
from aloe.loop.loop import LoopRun, load_run_config, run_loop
from aloe.loop.settings import LoopSettings, RunConfig
from tests.loop.test_loop import dataset_ids, loop_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


def strategy_config(proto_dir, out, selection: str, iterations: int = 2, **run) -> dict:
    """:func:`loop_config` with ``run.selection``, no committee (none is needed) and budgets [3, 5]."""
    budgets = [3, 5, 4][:iterations]
    return loop_config(
        proto_dir,
        out,
        iterations=iterations,
        run={"selection": selection, "committee": [], "max_label": budgets, **run},
    )


def write_config(tmp_path, config: dict, name: str = "loop.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def train_seed_of(run_dir, it) -> int:
    summary = yaml.safe_load((run_dir / f"iter-{it:02d}" / "train" / "summary.yaml").read_text())
    return summary["settings"]["seed"]


# ---- settings -------------------------------------------------------------------------------------------------------
def test_bad_strategy_configs_are_one_line_errors(tmp_path, proto_dir):
    cases = [
        ({"run": {"iterations": 3, "max_label": [3, 5]}}, r"key 'run.max_label'.*2 budgets for 3 iterations"),
        ({"run": {"max_label": [3, 0]}}, r"key 'run.max_label'.*at least 1 structure"),
        ({"run": {"committee": []}}, r"key 'run.committee'.*selection 'committee' needs a committee"),
        (
            {"run": {"selection": "random", "min_selection_rate": 0.1}},
            r"key 'run.min_selection_rate'.*no screen",
        ),
        ({"run": {"selection": "greedy"}}, r"key 'run.selection'"),
        ({"run": {"train_seed": -1}}, r"key 'run.train_seed'"),
    ]
    for k, (config, message) in enumerate(cases):
        path = write_config(tmp_path, config, f"bad{k}.yaml")
        with pytest.raises(AloeError, match=rf"bad{k}.yaml: {message}") as info:
            load_run_config(path)
        assert "\n" not in str(info.value)
    # a select mode that contradicts the selection strategy
    path = write_config(
        tmp_path, {"run": {"selection": "diverse"}, "select": {"mode": "uniform"}}, "mode.yaml"
    )
    with pytest.raises(AloeError, match=r"mode.yaml: section 'select': key 'mode'.*'diverse'.*'direct'"):
        load_run_config(path)
    # what is fine: no committee without a screen, a committee only from train_first, a longer budget list
    for run in (
        {"selection": "random", "committee": []},
        {"selection": "diverse", "committee": []},
        {"committee": [], "train_first": True, "seed_dataset": ["x"]},
        {"iterations": 2, "max_label": [1, 2, 3]},
        {"selection": "random"},
    ):
        assert load_run_config(write_config(tmp_path, {"run": run}, "ok.yaml")).run.selection in (
            "committee",
            "random",
            "diverse",
        )


def test_budgets_modes_and_seeds_the_loop_hands_to_each_stage(tmp_path, proto_dir):
    config = RunConfig.model_validate(strategy_config(proto_dir, tmp_path / "run", "random", train_seed=7))
    loop = LoopRun(config, tmp_path / "run")
    assert loop.settings.stages() == ("generate", "select", "label", "train")
    for it, budget in ((0, 3), (1, 5)):
        select = loop.settings_for("select", it)
        assert (select.mode, select.seed, select.direct.max_selected) == ("uniform", it, budget)
        assert select.input == tmp_path / "run" / f"iter-{it:02d}" / "generate"
        assert loop.settings_for("train", it).seed == 7
        assert loop.settings_for("generate", it).seed == it
    del loop

    diverse = RunConfig.model_validate(strategy_config(proto_dir, tmp_path / "div", "diverse", seed=10))
    loop = LoopRun(diverse, tmp_path / "div")
    select = loop.settings_for("select", 1)
    assert (select.mode, select.direct.max_selected, select.encoder) == ("direct", 5, "matminer")
    assert select.input == tmp_path / "div" / "iter-01" / "generate"
    assert [loop.settings_for("train", it).seed for it in (0, 1)] == [10, 11]  # seed + i without train_seed
    del loop

    committee = RunConfig.model_validate(loop_config(proto_dir, tmp_path / "qbc", run={"max_label": 4}))
    loop = LoopRun(committee, tmp_path / "qbc")
    assert loop.settings.stages() == ("generate", "screen", "select", "label", "train")
    select = loop.settings_for("select", 0)
    assert select.input == tmp_path / "qbc" / "iter-00" / "screen"
    assert (select.mode, select.direct.max_selected) == ("direct", 4)
    assert LoopSettings(train_seed=3).training_seed(None) == LoopSettings(train_seed=3).training_seed(5) == 3
    assert LoopSettings(seed=2).training_seed(None) == 2


def test_a_folder_started_before_the_new_settings_resumes(tmp_path, proto_dir):
    config = RunConfig.model_validate(loop_config(proto_dir, tmp_path / "run"))
    LoopRun(config, tmp_path / "run")
    path = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(path.read_text())
    for key in ("selection", "train_seed"):
        del old["run"][key]
    path.write_text(yaml.safe_dump(old))
    LoopRun(config, tmp_path / "run")  # the same config: accepted
    other = RunConfig.model_validate(loop_config(proto_dir, tmp_path / "run", run={"selection": "random"}))
    with pytest.raises(AloeError, match="another config"):
        LoopRun(other, tmp_path / "run")


# ---- whole loops --------------------------------------------------------------------------------------------------
def check_strategy_run(result, selection: str, budgets: list[int]) -> None:
    run = result.run_dir
    assert result.stopped == f"finished {len(budgets)} iterations"
    for it, budget in enumerate(budgets):
        record = result.iterations[it]
        assert "screen" not in record and not (run / f"iter-{it:02d}" / "screen").exists()
        sel = record["select"]["counts"]
        assert sel["mode"] == ("uniform" if selection == "random" else "direct")
        if selection == "random":
            assert sel["selected"] == budget
        else:
            assert 0 < sel["selected"] <= budget
        lab = record["label"]["counts"]
        assert lab["structures"] == sel["selected"] and 0 < lab["labelled"] <= budget
        assert len(list((run / f"iter-{it:02d}" / "train" / "models").glob("*.model"))) == 2
        report = (run / f"iter-{it:02d}" / "report.md").read_text()
        assert "selection rate n/a" in report and "| screen |" not in report
    summary = yaml.safe_load(result.summary_path.read_text())
    assert summary["selection"] == selection
    assert [set(i) - {"iteration"} for i in summary["iterations"]] == [
        {"generate", "select", "label", "train"}
    ] * 2
    assert len(summary["final_committee"]) == 2
    assert (run / "report.html").exists()


@pytest.mark.slow
def test_random_loop_end_to_end_with_budgets_one_train_seed_and_bench(tmp_path, proto_dir):
    bench = {"suite": ["ev"], "ev_structures": "builtin:elements:Cu,Al"}
    config = RunConfig.model_validate(
        {**strategy_config(proto_dir, tmp_path / "run", "random", train_seed=7), "bench": bench}
    )
    result = run_loop(config)
    check_strategy_run(result, "random", [3, 5])
    run = result.run_dir
    assert [train_seed_of(run, it) for it in (0, 1)] == [7, 7]
    # the picks are the uniform picks of each iteration's candidates, seeded run.seed + i
    for it in (0, 1):
        summary = yaml.safe_load((run / f"iter-{it:02d}" / "select" / "summary.yaml").read_text())
        assert summary["uniform"] == {"seed": it, "max_selected": [3, 5][it]}
        assert not list((run / f"iter-{it:02d}" / "select" / "features").iterdir())  # nothing encoded
    # no committee 0 (nothing screens, none trained first): the committees trained in iterations 0 and 1
    assert not (run / "iter-00" / "bench").exists()
    summary = yaml.safe_load(result.summary_path.read_text())
    assert set(summary["bench"]) == {"committee 1", "committee 2"}
    assert "Benchmarks of every committee" in (run / "report.md").read_text()
    # running again on the finished folder does nothing new
    again = run_loop(config)
    assert dataset_ids(again.run_dir) == dataset_ids(run)


@pytest.mark.slow
def test_diverse_loop_end_to_end(tmp_path, proto_dir):
    config = RunConfig.model_validate(strategy_config(proto_dir, tmp_path / "run", "diverse"))
    result = run_loop(config)
    check_strategy_run(result, "diverse", [3, 5])
    run = result.run_dir
    assert [train_seed_of(run, it) for it in (0, 1)] == [0, 1]
    summary = yaml.safe_load((run / "iter-01" / "select" / "summary.yaml").read_text())
    assert summary["encoder"].startswith("matminer") and summary["settings"]["direct"]["max_selected"] == 5
    assert (run / "iter-01" / "select" / "clusters.csv").exists()


def random_config(proto_dir, out) -> RunConfig:
    return RunConfig.model_validate(strategy_config(proto_dir, out, "random", iterations=1))


def kill_before(monkeypatch, config: RunConfig, stage_name: str) -> None:
    """Run the loop until it is about to start ``stage_name``, and kill it there."""
    real_stage = loop_module.LoopRun.run_stage

    def dies(self, it, stage, settings):
        if stage == stage_name:
            raise KeyboardInterrupt
        return real_stage(self, it, stage, settings)

    monkeypatch.setattr(loop_module.LoopRun, "run_stage", dies)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    monkeypatch.setattr(loop_module.LoopRun, "run_stage", real_stage)


@pytest.mark.slow
def test_random_loop_killed_at_stage_boundaries_gives_the_same_dataset(tmp_path, proto_dir, monkeypatch):
    expected = dataset_ids(run_loop(random_config(proto_dir, tmp_path / "clean")).run_dir)
    assert len(expected) == 3
    config = random_config(proto_dir, tmp_path / "killed")
    kill_before(monkeypatch, config, "label")  # after generate and select
    kill_before(monkeypatch, config, "train")  # after label
    resumed = run_loop(config)
    assert dataset_ids(resumed.run_dir) == expected
    assert resumed.iterations[0]["select"]["counts"]["selected"] == 3


@pytest.mark.slow
def test_random_loop_killed_inside_label_gives_the_same_dataset(tmp_path, proto_dir, monkeypatch):
    expected = dataset_ids(run_loop(random_config(proto_dir, tmp_path / "clean")).run_dir)
    config = random_config(proto_dir, tmp_path / "killed")
    real_task = label_stage._label_task
    calls = {"n": 0}

    def dies(task):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_task(task)

    monkeypatch.setattr(label_stage, "_label_task", dies)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)
    monkeypatch.setattr(label_stage, "_label_task", real_task)
    resumed = run_loop(config)
    assert dataset_ids(resumed.run_dir) == expected
