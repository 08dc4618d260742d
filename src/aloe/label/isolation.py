"""One call in a fresh child process that any process may start: a crash, a kill or a timeout costs that call only.

The label stage runs every calculation through :func:`call_isolated`. The child is a new interpreter started with
:mod:`subprocess` (``python -m aloe.label.isolation <task> <result>``), not a :mod:`multiprocessing` process:
multiprocessing refuses to start children from a daemonic process, and Dask distributed workers are daemonic
(dask/distributed#2142), so the same code runs in a plain process, a local pool worker, a Dask worker and a Slurm
job. The exchange goes through two pickle files in the work folder:

- the task ``(fn, args, passthrough)``, written by the parent before the start;
- the outcome, written by the child atomically (a temporary name, then a rename) just before it exits:
  ``("ok", value)``, ``("error", kind, message)`` (a :class:`~aloe.label.base.LabelerError`, or ``crashed`` for any
  other exception), or ``("raise", exception)`` for the ``passthrough`` exception types.

The child runs in a session of its own, so the kill at the time limit takes its whole process group (the helpers
that GPAW or VASP start included), and a Ctrl-C on the terminal reaches the parent only, which then stops the
child. A child whose parent dies (a Dask worker killed, a job cancelled) stops its group within a second. The child
writes to the parent's standard output and error (the run log captures them), sees the parent's ``sys.path`` (a
source tree, a test folder, files uploaded to a Dask worker: through ``PYTHONPATH``) and the parent's environment
(thread limits such as ``OMP_NUM_THREADS`` included), and dumps a Python traceback on a fatal signal (faulthandler).
Like a multiprocessing child, it leaves through ``os._exit`` once the outcome is written, so atexit handlers or
threads a code left behind cannot hold it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import site
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aloe.errors import one_line

#: The task and outcome files in the work folder (removed when the call returns).
TASK_FILE = ".aloe-isolated-task.pkl"
RESULT_FILE = ".aloe-isolated-result.pkl"
#: Seconds between the child's checks that the process that started it is alive.
PARENT_CHECK_S = 1.0
#: Seconds the parent waits for a killed child to be reaped.
REAP_S = 10.0


# ---- the parent's side ------------------------------------------------------------------------------------------
def call_isolated(
    fn: Callable[..., Any],
    args: Sequence[Any],
    workdir: str | Path,
    timeout: float | None,
    passthrough: tuple[type[BaseException], ...] = (),
) -> Any:
    """``fn(*args)`` in a fresh child process, killed (with its process group) after ``timeout`` seconds.

    Parameters
    ----------
    fn, args
        A picklable callable (a function, a bound method of a picklable object) and its arguments.
    workdir
        Folder of the task and outcome files (created if missing); they are removed before this returns.
    timeout
        Seconds before the child is killed; ``None``: no limit.
    passthrough
        Exception types raised again here as they are (others become ``LabelerError('crashed', ...)``).

    Raises
    ------
    LabelerError
        ``timeout`` ("stopped after N s"); ``crashed`` when the child died without an outcome ("the calculation
        process died (exit code N)", the signal named when it was killed by one) or ``fn`` raised an exception
        other than a ``LabelerError`` ("<type>: <first line>"); the ``LabelerError`` of ``fn`` as it was raised.
    """
    from aloe.label.base import LabelerError

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    task_path, result_path = workdir / TASK_FILE, workdir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    try:
        with open(task_path, "wb") as fh:
            pickle.dump((fn, tuple(args), tuple(passthrough)), fh, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            child = subprocess.Popen(
                child_command(task_path, result_path),
                stdin=subprocess.DEVNULL,
                env=child_environment(),
                start_new_session=True,
            )
        except OSError as exc:
            raise LabelerError("crashed", f"cannot start the calculation process ({exc})") from None
        try:
            if not _wait(child, timeout):
                raise LabelerError("timeout", f"stopped after {timeout:g} s")
        finally:  # a timeout, an interrupt, or helpers the child left behind: its whole group goes
            _kill_group(child)
        outcome = _read_outcome(result_path)
        if outcome is None:
            raise LabelerError("crashed", f"the calculation process died ({_exit_status(child.returncode)})")
    finally:
        for path in (task_path, result_path, *workdir.glob(f"{RESULT_FILE}.*.tmp")):
            path.unlink(missing_ok=True)
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "raise":
        raise outcome[1]
    raise LabelerError(outcome[1], outcome[2])


def child_command(task_path: Path, result_path: Path) -> list[str]:
    """The child's command line: this interpreter, running this module."""
    return [sys.executable, "-m", __name__, str(task_path), str(result_path)]


def child_environment() -> dict[str, str]:
    """The environment of this process, with ``PYTHONPATH`` giving the child the entries of ``sys.path`` it would lack.

    Entries the interpreter finds by itself (its standard library and site-packages, the user site) are left out,
    so a Python of another installation that a code starts further down does not inherit them.
    """
    env = dict(os.environ)
    own = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    with contextlib.suppress(Exception):
        own += [*site.getsitepackages(), site.getusersitepackages()]
    own_real = [os.path.realpath(p).rstrip(os.sep) + os.sep for p in own if p]
    extra: list[str] = []
    for entry in sys.path:
        try:
            path = os.path.realpath(entry or os.getcwd())
        except OSError:  # the working folder is gone
            continue
        if not os.path.exists(path) or any((path + os.sep).startswith(p) for p in own_real):
            continue
        extra.append(path)
    extra += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(extra))
    return env


def _wait(child: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for the child to end; ``False`` when ``timeout`` passed first (the child then still runs).

    On Linux the child is not reaped here: until :func:`_kill_group` has stopped what is left of its group, its pid
    (the group's id) cannot go to another process. Elsewhere ``Popen.wait`` reaps it.
    """
    try:
        fd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        fd = None
    if fd is None:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:  # readable the moment the child ends (Popen.wait with a limit polls, up to 50 ms late)
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return bool(ready)


def _kill_group(child: subprocess.Popen) -> None:
    """SIGKILL the child's process group (helpers it left behind included; a no-op when none is left), reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(REAP_S)


def _read_outcome(path: Path) -> tuple[Any, ...] | None:
    """The child's outcome, or ``None`` when it wrote none."""
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a class the parent cannot import, a truncated file after a full disk ...
        return (
            "error",
            "crashed",
            f"cannot read the calculation's result: {type(exc).__name__}: {exc}"[:400],
        )


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still running after a kill"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code}: killed by {name}"
    return f"exit code {code}"


# ---- the child's side -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """Run the task file's call, write the outcome file, and leave at once (``os._exit``)."""
    import faulthandler

    task_path, result_path = (sys.argv[1:] if argv is None else list(argv))[:2]
    faulthandler.enable()  # a segfault in a code leaves a Python traceback in the run log
    _watch_parent()
    passthrough: tuple[type[BaseException], ...] = ()
    try:
        with open(task_path, "rb") as fh:
            fn, args, passthrough = pickle.load(fh)
        outcome: tuple[Any, ...] = ("ok", fn(*args))
        data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        data = pickle.dumps(_error_outcome(exc, passthrough), protocol=pickle.HIGHEST_PROTOCOL)
    tmp = f"{result_path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, result_path)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _error_outcome(exc: Exception, passthrough: tuple[type[BaseException], ...]) -> tuple[Any, ...]:
    from aloe.label.base import LabelerError

    if isinstance(exc, LabelerError):
        return ("error", exc.kind, exc.message)
    if passthrough and isinstance(exc, passthrough):
        with contextlib.suppress(Exception):
            pickle.dumps(exc)
            return ("raise", exc)
    traceback.print_exc()  # an unexpected error: its traceback goes to the log
    return ("error", "crashed", one_line(exc))


def _watch_parent() -> None:
    """Stop this process group when the process that started it dies (it would otherwise run on, orphaned)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent:
                if os.getpgid(0) == os.getpid():
                    os.killpg(0, signal.SIGKILL)
                os._exit(1)

    threading.Thread(target=watch, name="aloe-parent-watch", daemon=True).start()


if __name__ == "__main__":
    main()
