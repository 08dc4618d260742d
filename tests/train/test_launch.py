"""How a member's training starts (:mod:`aloe.train.launch`): settings, commands, environment, ``--dry-run``.

Whether srun really starts a member as a Slurm job of its own, with the same model as a local run, is checked on
the local Slurm cluster in ``tests/test_slurm.py``. Distributed training itself needs CUDA GPUs (mace-torch's
process group is NCCL) and is not run here.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from aloe.train.launch import launch_environment, launch_options, member_command
from aloe.train.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[2]
ARGV = ["--name=member-0", "--seed=0", "--device=cuda"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"distributed": True}, "needs launcher 'torchrun' or 'slurm'"),
        ({"distributed": True, "launcher": "torchrun"}, "device must be cuda"),
        ({"gpus_per_member": 2, "device": "cuda"}, "gpus_per_member 2 needs distributed"),
        ({"launcher": "torchrun", "device": "cuda"}, "set distributed: true"),
        ({"srun_options": ["--partition=gpu"]}, "srun_options are for launcher 'slurm'"),
        ({"gpus_per_member": 0}, "greater than or equal to 1"),
    ],
)
def test_launch_settings_that_cannot_run_are_refused(options, message):
    with pytest.raises(ValidationError, match=message):
        TrainSettings(**options)


def test_launcher_and_srun_options_may_change_on_a_resumed_run_the_gpus_may_not():
    # the effective batch is gpus_per_member x batch_size: another model
    assert {"launcher", "srun_options"} <= TrainSettings.RUNTIME_KEYS
    assert not {"distributed", "gpus_per_member"} & TrainSettings.RUNTIME_KEYS


def test_local_launch_is_the_plain_run_train():
    launch = launch_options(TrainSettings())
    assert member_command(ARGV, launch, 4) == [sys.executable, "-m", "mace.cli.run_train", *ARGV]


def test_torchrun_starts_one_process_per_gpu_on_the_node():
    settings = TrainSettings(launcher="torchrun", distributed=True, gpus_per_member=4, device="cuda")
    assert member_command(ARGV, launch_options(settings), 8) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=4",
        "-m",
        "mace.cli.run_train",
        *ARGV,
        "--distributed",
        "--launcher=torchrun",
    ]


def test_slurm_starts_a_job_of_its_own_with_one_task_and_one_gpu_per_process():
    settings = TrainSettings(
        launcher="slurm", distributed=True, gpus_per_member=4, device="cuda", srun_options=["--partition=gpu"]
    )
    command = member_command(ARGV, launch_options(settings), 8, name="aloe-run-member-0")
    assert command == [
        "srun",
        "--job-name=aloe-run-member-0",
        "--nodes=1",
        "--ntasks=4",
        "--ntasks-per-node=4",
        "--cpus-per-task=8",
        "--kill-on-bad-exit=1",
        "--gpus-per-task=1",
        "--partition=gpu",
        sys.executable,
        "-m",
        "mace.cli.run_train",
        *ARGV,
        "--distributed",
        "--launcher=slurm",
    ]
    # on CPUs (not distributed): one task, no GPU asked for, mace not told to distribute
    cpu = member_command(ARGV, launch_options(TrainSettings(launcher="slurm")), 2, name="j")
    assert "--ntasks=1" in cpu and not any(a.startswith("--gpus") or a == "--distributed" for a in cpu)


def test_srun_gets_a_new_allocation_not_a_step_of_the_workers_job():
    base = {
        "SLURM_JOB_ID": "17",
        "SLURM_JOBID": "17",
        "SLURM_NTASKS": "1",
        "SLURM_CONF": "/etc/x.conf",
        "A": "b",
    }
    slurm = launch_options(
        TrainSettings(launcher="slurm", distributed=True, device="cuda", gpus_per_member=2)
    )
    env = launch_environment(slurm, base)
    assert env["SLURM_CONF"] == "/etc/x.conf" and env["A"] == "b"
    assert not {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_NTASKS"} & env.keys()
    assert 0 < int(env["MASTER_PORT"]) < 65536
    assert launch_environment(launch_options(TrainSettings()), base) == base


def test_members_ask_their_executor_for_the_gpus_they_train_on():
    from aloe.train.stage import _gpus_asked

    assert _gpus_asked(TrainSettings()) == 0
    assert _gpus_asked(TrainSettings(device="cuda")) == 1
    torchrun = TrainSettings(device="cuda", launcher="torchrun", distributed=True, gpus_per_member=4)
    assert _gpus_asked(torchrun) == 4
    # a Slurm job of its own trains; the task tests the finished member on one GPU
    assert _gpus_asked(torchrun.model_copy(update={"launcher": "slurm"})) == 1


def test_dry_run_of_the_slurm_example_shows_the_job_script_and_the_members_srun_command():
    pytest.importorskip("dask_jobqueue")
    from typer.testing import CliRunner

    from aloe.cli.main import app

    result = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "slurm.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "#SBATCH --gres=gpu:1" in lines
    i = next(
        i for i, line in enumerate(lines) if line.startswith("train: 3 MACE members (preset mp0a-large)")
    )
    assert "a Slurm job of its own (srun), 4 GPU(s)" in lines[i]
    command = shlex.split(lines[i + 1])
    assert command[:8] == [
        "srun",
        "--job-name=aloe-<run>-member-0",
        "--nodes=1",
        "--ntasks=4",
        "--ntasks-per-node=4",
        "--cpus-per-task=8",
        "--kill-on-bad-exit=1",
        "--gpus-per-task=1",
    ]
    assert command[-2:] == ["--distributed", "--launcher=slurm"]
    for option in ("--partition=gpu", "--num_channels=128", "--max_L=2", "--r_max=6.0", "--device=cuda"):
        assert option in command
    assert "Warning" not in result.output and "cuequivariance" not in result.output  # aloe's messages only
