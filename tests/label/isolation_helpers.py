"""Test-only labelers and functions for the isolation tests (importable in child processes and Dask workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aloe.label.emt import EMTLabeler


class SignalEMT(EMTLabeler):
    """The process kills itself with a signal on Al (SIGSEGV: a segfault; SIGKILL: the OOM killer)."""

    def __init__(self, settings=None, sig: int = signal.SIGSEGV) -> None:
        super().__init__(settings)
        self.sig = int(sig)

    def calculate(self, atoms, workdir):
        if "Al" in atoms.get_chemical_symbols():
            os.kill(os.getpid(), self.sig)
            time.sleep(10)  # the signal arrives first
        return super().calculate(atoms, workdir)


class RaisingEMT(EMTLabeler):
    """A bug in the code: a plain Python exception on Al."""

    def calculate(self, atoms, workdir):
        if "Al" in atoms.get_chemical_symbols():
            raise ValueError("no parameters here\nsecond line")
        return super().calculate(atoms, workdir)


class HelperEMT(EMTLabeler):
    """Starts a helper process (as GPAW or VASP may) and writes its pid to ``helper.pid``; hangs if ``hang``."""

    def __init__(self, settings=None, hang: bool = True) -> None:
        super().__init__(settings)
        self.hang = hang

    def calculate(self, atoms, workdir):
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (Path(workdir) / "helper.pid").write_text(str(helper.pid))
        if self.hang:
            time.sleep(120)
        return super().calculate(atoms, workdir)


class TalkingEMT(EMTLabeler):
    """Writes to standard output and error, and reports what it sees of its process in ``info``."""

    def calculate(self, atoms, workdir):
        print("hello from the calculation (stdout)", flush=True)
        print("hello from the calculation (stderr)", file=sys.stderr, flush=True)
        calcs = super().calculate(atoms, workdir)
        calcs[0].info.update(
            {
                "pid": os.getpid(),
                "sys_path": list(sys.path),
                "omp": os.environ.get("OMP_NUM_THREADS"),
                "pgid": os.getpgid(0),
            }
        )
        return calcs


def blas_threads_probe() -> dict:
    """What test_gpaw_threads checks, inside an isolated child: scipy's BLAS loaded in the limit gets 1 thread."""
    from aloe.label.gpaw import _blas_threads

    before = "scipy.linalg" in sys.modules
    with _blas_threads(1):
        import scipy.linalg  # noqa: F401
        from threadpoolctl import threadpool_info

        threads = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    return {"scipy_before": before, "threads": threads}


def not_implemented() -> None:
    """An exception type the caller asks to get back as it is."""
    raise NotImplementedError("emt does not do this")


def sleep_and_record(path: str, seconds: float) -> None:
    """Write this process's pid to ``path``, then sleep."""
    Path(path).write_text(json.dumps({"pid": os.getpid()}))
    time.sleep(seconds)


# ---- Dask: what a worker runs ---------------------------------------------------------------------------------
def worker_calculate(labeler, atoms, workdir: str, timeout: float | None) -> dict:
    """``run_calculation`` (isolated) in a Dask worker; the outcome, and which worker process ran it."""
    import multiprocessing

    from aloe.label.base import LabelerError
    from aloe.label.stage import run_calculation

    where = {"worker_pid": os.getpid(), "daemon": multiprocessing.current_process().daemon}
    try:
        calcs = run_calculation(labeler, atoms, Path(workdir), timeout, True)
    except LabelerError as exc:
        return {**where, "kind": exc.kind, "message": exc.message}
    return {**where, "kind": "ok", "energy": calcs[0].energy}


def worker_forkserver_child() -> str:
    """What the old isolation did (a multiprocessing child) fails in a daemonic Dask worker."""
    import multiprocessing

    try:
        child = multiprocessing.get_context("forkserver").Process(target=time.sleep, args=(0,))
        child.start()
        child.join()
    except AssertionError as exc:
        return str(exc)
    return "started"


def use_labeler_in_this_process(cls_name: str | None) -> None:
    """Make ``aloe.label.stage`` load ``cls_name`` (from tests.label.helpers) for 'emt'; ``None``: undo."""
    import aloe.label.registry as registry
    import aloe.label.stage as stage
    from tests.label import helpers

    if cls_name is None:
        stage.load_labeler = registry.load_labeler
        return
    cls = getattr(helpers, cls_name)
    real = registry.load_labeler

    def load(settings):
        return cls(settings.emt) if settings.labeler == "emt" else real(settings)

    stage.load_labeler = load
