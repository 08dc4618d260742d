"""A real single-node Slurm cluster for the slow tests of the batch executors (``install/local-slurm.sh``).

Use it from a test module (or a conftest) with::

    from tests.slurm_cluster import slurm_cluster, slurm_jobs, wait_for  # noqa: F401

The session fixture :func:`slurm_cluster` installs Slurm and munge when they are missing (Debian's ``slurm-wlm``),
starts ``munged``, ``slurmctld`` and ``slurmd`` on this host, and stops them at the end of the session if it
started them (a cluster that was already running is left running). It skips, with the reason, where that cannot
be done: not Linux, not root and no passwordless sudo, Slurm missing and not installable, or a start that fails.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The script that installs, starts and stops the cluster.
SCRIPT = ROOT / "install" / "local-slurm.sh"
#: Where the cluster keeps its state, spool, pid and log files (``ALOE_SLURM_DIR`` overrides it).
STATE_DIR = Path(os.environ.get("ALOE_SLURM_DIR", "/tmp/aloe-slurm"))
#: Seconds ``install`` (apt-get) and ``start`` may take.
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 180

T = TypeVar("T")


@dataclass(frozen=True)
class SlurmCluster:
    """The running cluster: one node, one partition.

    Attributes
    ----------
    partition
        The partition jobs go to (the default one).
    node
        The node's name (this host).
    cpus, cores
        The node's CPUs and cores (Slurm allocates cores: a job of ``cores`` 1 takes one core).
    memory_mb
        The node's memory Slurm hands out (MB; a little less than the host's).
    slurm_conf
        The ``slurm.conf`` of the cluster (``SLURM_CONF`` is set to it for the session when it is not the system
        one).
    state_dir
        State, spool, pid and log files (``log/slurmctld.log``, ``log/slurmd.log``).
    started
        Whether this fixture started the cluster (then it stops it at the end).
    """

    partition: str
    node: str
    cpus: int
    cores: int
    memory_mb: int
    slurm_conf: Path
    state_dir: Path
    started: bool


class SlurmJob(NamedTuple):
    """One job as ``squeue`` lists it."""

    id: str
    name: str
    state: str


def _run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0


def _has_slurm() -> bool:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return all(shutil.which(tool, path=path) for tool in ("slurmctld", "slurmd", "sbatch", "munged"))


def _parse_report(text: str) -> dict[str, str]:
    """The ``key=value`` lines ``local-slurm.sh start`` ends with."""
    report = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            report[key] = value
    return report


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node Slurm cluster (started for the session, stopped after it if started here)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a local Slurm cluster needs Linux")
    if not _can_be_root():
        pytest.skip("a local Slurm cluster needs root or passwordless sudo (install/local-slurm.sh)")
    if not _has_slurm():
        result = _run_script("install", timeout=INSTALL_TIMEOUT_S)
        if result.returncode != 0 or not _has_slurm():
            pytest.skip(
                f"Slurm is not installed and install/local-slurm.sh install failed: {_last_line(result)}"
            )
    try:
        result = _run_script("start", str(STATE_DIR), timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"install/local-slurm.sh start took over {START_TIMEOUT_S} s (logs in {STATE_DIR}/log)")
    report = _parse_report(result.stdout)
    if result.returncode != 0 or "slurm_conf" not in report:
        pytest.skip(f"the local Slurm cluster did not start: {_last_line(result)}")
    cluster = SlurmCluster(
        partition=report["partition"],
        node=report["node"],
        cpus=int(report["cpus"]),
        cores=int(report["cores"]),
        memory_mb=int(report["memory_mb"]),
        slurm_conf=Path(report["slurm_conf"]),
        state_dir=Path(report["state_dir"]),
        started=report.get("started") == "yes",
    )
    # Clients (sbatch from dask-jobqueue, squeue here) read SLURM_CONF when the conf is not the system one.
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.slurm_conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if cluster.started:
            _run_script("stop", str(cluster.state_dir), timeout=START_TIMEOUT_S)


def slurm_jobs(name: str | None = None, *, finished: bool = False) -> list[SlurmJob]:
    """This user's jobs, as ``squeue`` lists them.

    Parameters
    ----------
    name
        Only jobs of this name (e.g. ``aloe-worker``, the name of aloe's Dask jobs).
    finished
        Also the jobs that ended in the last few minutes (``COMPLETED``, ``CANCELLED``, ``TIMEOUT``, ...);
        ``squeue`` otherwise lists only pending, running and completing jobs.

    Returns
    -------
    list of SlurmJob
        Job id, name and state (``PENDING``, ``RUNNING``, ``TIMEOUT``, ...).
    """
    command = ["squeue", "--noheader", "--format=%i|%j|%T", f"--user={getpass.getuser()}"]
    if name is not None:
        command.append(f"--name={name}")
    if finished:
        command.append("--states=all")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    jobs = []
    for line in result.stdout.splitlines():
        if line.strip():
            job_id, job_name, state = line.strip().split("|", 2)
            jobs.append(SlurmJob(job_id, job_name, state))
    return jobs


def wait_for(condition: Callable[[], T], timeout: float, *, interval: float = 1.0, what: str = "") -> T:
    """Call ``condition`` until it returns something true, and return that.

    Parameters
    ----------
    condition
        Called every ``interval`` seconds.
    timeout
        Seconds to wait before giving up.
    interval
        Seconds between calls.
    what
        What is waited for, for the message of the failure.

    Returns
    -------
    The first true value of ``condition()``.

    Raises
    ------
    AssertionError
        When ``condition`` is still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition!r}")
        time.sleep(interval)
