"""``aloe run``: executor options and ``--dry-run`` (nothing is started or written)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aloe.cli.main import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def slurm_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "run": {"iterations": 1},
                "executor": {
                    "kind": "dask",
                    "cluster": {
                        "kind": "slurm",
                        "jobs": 3,
                        "cores": 8,
                        "processes": 1,
                        "memory": "32GiB",
                        "gpus": 1,
                        "walltime": "04:00:00",
                        "account": "chem42",
                        "queue": "gpu-short",
                        "job_script_prologue": ["module load cuda", "source /opt/aloe/bin/activate"],
                        "job_directives": ["--qos=high"],
                        "log_directory": str(tmp_path / "dask-logs"),
                    },
                },
                "label": {"labeler": "emt"},
            }
        )
    )
    return cfg


def test_slurm_dry_run_prints_the_job_script_and_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    cfg = slurm_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(cfg), "--dry-run", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for expected in (
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32G",
        "#SBATCH -t 04:00:00",
        "#SBATCH -A chem42",
        "#SBATCH -p gpu-short",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --qos=high",
        "module load cuda",
        "source /opt/aloe/bin/activate",
        f"#SBATCH -o {tmp_path / 'dask-logs'}/aloe-worker-%J.out",
    ):
        assert expected in lines, (expected, result.output)
    assert "--resources GPU=1" in result.output
    assert "3 slurm partition gpu-short jobs" in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.yaml"]  # no runs/ folder either


def test_dry_run_executor_options_override_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = str(EXAMPLES / "quickstart.yaml")
    result = runner.invoke(app, ["run", quickstart, "--executor", "dask", "--workers", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "LocalCluster of 2 worker processes" in result.output
    assert "#SBATCH" not in result.output
    result = runner.invoke(
        app, ["run", quickstart, "--executor", "dask", "--scheduler", "tcp://10.0.0.5:8786", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "scheduler at tcp://10.0.0.5:8786" in result.output
    result = runner.invoke(app, ["run", quickstart, "--executor", "process", "--workers", "3", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "a pool of 3 local processes" in result.output
    assert list(tmp_path.iterdir()) == []


def test_scheduler_option_overrides_a_slurm_cluster(tmp_path, monkeypatch):
    cfg = slurm_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(cfg), "--scheduler", "tcp://head:8786", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "scheduler at tcp://head:8786" in result.output and "#SBATCH" not in result.output


def test_bad_executor_options_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = str(EXAMPLES / "quickstart.yaml")
    result = runner.invoke(app, ["run", quickstart, "--executor", "threads", "--dry-run"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["run", quickstart, "--workers", "0", "--dry-run"])
    assert result.exit_code == 2
    assert "executor.workers" in result.output
    assert list(tmp_path.iterdir()) == []


def test_slurm_example_validates_and_renders():
    from aloe.executors import render_job_script
    from aloe.loop.loop import load_run_config

    config = load_run_config(EXAMPLES / "slurm.yaml")
    assert config.executor.kind == "dask"
    cluster = config.executor.cluster
    assert cluster.kind == "slurm" and cluster.gpus >= 1 and cluster.account and cluster.queue
    assert any(line.startswith("module load") for line in cluster.job_script_prologue)
    assert config.label["labeler"] == "vasp" and config.train["preset"] == "mp0a-large"
    assert "elements" not in config.generate  # all 89
    pytest.importorskip("dask_jobqueue")
    script = render_job_script(config.executor)
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -A matsci" in script


def test_slurm_example_dry_run(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(EXAMPLES / "slurm.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "#SBATCH -p gpu" in result.output.splitlines()
    assert list(tmp_path.iterdir()) == []
