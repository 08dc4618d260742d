"""How a member's mace-torch ``run_train`` starts: one local process, torchrun, or a Slurm job of its own.

ASE's split: :mod:`aloe.train.stage` writes a member's inputs and its ``run_train`` arguments; this module says how
they are launched (setting ``launcher``):

``local``
    ``python -m mace.cli.run_train ARGS`` where the member's task runs.
``torchrun``
    ``python -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=G -m mace.cli.run_train ARGS
    --distributed --launcher=torchrun``: G processes on the task's node, one per GPU (mace sets each process's
    device from ``LOCAL_RANK``). The member's task asks Dask for G GPUs.
``slurm``
    ``srun --nodes=1 --ntasks=G --ntasks-per-node=G --cpus-per-task=T --gpus-per-task=1 --kill-on-bad-exit=1
    [srun_options] python -m mace.cli.run_train ARGS [--distributed --launcher=slurm]``: a Slurm job of its own
    per member (the task's Slurm variables are removed, so srun asks for a new allocation rather than a step of
    the Dask worker's job). mace reads its rank and world size from ``SLURM_PROCID``/``SLURM_NTASKS`` and its
    rendezvous host from ``SLURM_JOB_NODELIST`` (with ``python-hostlist``); aloe sets ``MASTER_PORT`` to a free
    port. The member's task waits for srun; stopping the task stops srun, and srun cancels its job.

In data-parallel training each of the G processes takes ``batch_size`` structures per step, so the effective
batch is G times ``batch_size`` (mace-torch's ``DistributedSampler``).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from aloe.train.mace_args import ENTRY_POINT

#: Environment variables that tie a process to its Slurm job (srun would start a step inside that job).
_SLURM_JOB_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_STEP_ID",
    "SLURM_STEPID",
    "SLURM_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "SLURM_TASKS_PER_NODE",
    "SLURM_CPUS_PER_TASK",
    "SLURM_MEM_PER_NODE",
    "SLURM_MEM_PER_CPU",
    "SLURM_GPUS",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NNODES",
)


def launch_options(settings: Any) -> dict[str, Any]:
    """What a member's task needs to launch mace: ``launcher``, ``distributed``, ``gpus``, ``srun_options``."""
    return {
        "launcher": settings.launcher,
        "distributed": settings.distributed,
        "gpus": settings.gpus_per_member,
        "srun_options": list(settings.srun_options),
        "device": settings.device,
    }


def member_command(
    argv: list[str], launch: dict[str, Any], threads: int, name: str = "aloe-train"
) -> list[str]:
    """The command that runs ``run_train`` with ``argv`` under ``launch`` (:func:`launch_options`).

    Parameters
    ----------
    argv
        The member's ``run_train`` arguments (``mace_args.json``).
    launch
        :func:`launch_options` of the train settings.
    threads
        Torch/OpenMP threads per process (srun's ``--cpus-per-task``).
    name
        The Slurm job name (launcher slurm).
    """
    launcher, gpus = launch.get("launcher", "local"), int(launch.get("gpus", 1))
    python = [sys.executable]
    extra = ["--distributed", f"--launcher={launcher}"] if launch.get("distributed") else []
    if launcher == "local":
        return [*python, "-m", ENTRY_POINT, *argv]
    if launcher == "torchrun":
        return [
            *python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc_per_node={gpus}",
            "-m",
            ENTRY_POINT,
            *argv,
            *extra,
        ]
    if launcher == "slurm":
        srun = [
            "srun",
            f"--job-name={name}",
            "--nodes=1",
            f"--ntasks={gpus}",
            f"--ntasks-per-node={gpus}",
            f"--cpus-per-task={threads}",
            "--kill-on-bad-exit=1",
        ]
        if str(launch.get("device", "cpu")).startswith("cuda"):
            srun.append("--gpus-per-task=1")
        return [*srun, *launch.get("srun_options", []), *python, "-m", ENTRY_POINT, *argv, *extra]
    raise ValueError(f"unknown launcher {launcher!r}")


def launch_environment(launch: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    """``base`` with what the launcher needs: for slurm, no Slurm job variables and a free ``MASTER_PORT``."""
    env = dict(base)
    if launch.get("launcher") == "slurm":
        for key in _SLURM_JOB_VARIABLES:
            env.pop(key, None)
        if launch.get("distributed"):
            env.setdefault("MASTER_PORT", str(free_port()))
    return env


def free_port() -> int:
    """A TCP port free on this host now (the rendezvous port of one member's distributed training)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def check_launcher(launch: dict[str, Any]) -> None:
    """Raise where this host cannot launch: srun missing (slurm), or mace's Slurm helper without python-hostlist.

    Raises
    ------
    AloeError
        With the missing program or package.
    """
    import shutil

    from aloe.errors import AloeError

    if launch.get("launcher") != "slurm":
        return
    if shutil.which("srun") is None:
        raise AloeError("train.launcher is 'slurm' but srun is not on this worker's PATH")
    if launch.get("distributed"):
        try:
            import hostlist  # noqa: F401  (mace.tools.slurm_distributed reads SLURM_JOB_NODELIST with it)
        except ImportError:
            raise AloeError(
                "distributed training with launcher 'slurm' needs python-hostlist (mace-torch reads the job's "
                "node list with it): pip install python-hostlist"
            ) from None


__all__ = ["check_launcher", "free_port", "launch_environment", "launch_options", "member_command"]
