"""What every benchmark script shares: memory probes, a description of the machine, and a clock of model passes."""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any


def status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), or ``None``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    """Current resident set of this process (MiB; ``VmRSS``), or ``None`` without /proc."""
    rss = status_kib("VmRSS")
    return rss / 1024.0 if rss is not None else None


def peak_rss_mib() -> float:
    """Peak resident set of this process's own address space (MiB).

    ``VmHWM`` rather than ``ru_maxrss``: after fork/exec, ``ru_maxrss`` can carry the parent's high-water mark,
    which would make a child's number depend on its parent rather than on its own work.
    """
    hwm = status_kib("VmHWM")
    if hwm is None:
        import resource

        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        if sys.platform == "darwin":  # bytes on macOS
            hwm //= 1024
    return hwm / 1024.0


def machine(packages: tuple[str, ...]) -> dict[str, Any]:
    """Where the figures were measured: platform, CPU count, Python and the versions of ``packages``."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **versions,
    }


class ModelClock:
    """Seconds spent inside a model's forward passes and inside ``torch.autograd.grad``, for a ``with`` block.

    Patches each ``(class, method)`` of ``forward`` and ``torch.autograd.grad`` with timers, and restores them on
    exit. Only the outermost timed call counts: an ``autograd.grad`` inside a timed forward (CHGNet's own
    ``_compute`` with forces, MACE's ``forward``) adds to the forward, and its own time is kept apart in
    ``nested_backward_s`` for information. With ``cuda``, the device is synchronised around each outermost call, so
    the seconds are those of the work, not of its launch. One thread at a time.

    Parameters
    ----------
    forward
        ``(class, method name)`` pairs timed as forward passes, e.g. ``(CHGNet, "_compute")``.
    cuda
        Synchronise the CUDA device around the timed calls.
    """

    def __init__(self, forward: Sequence[tuple[type, str]] = (), cuda: bool = False) -> None:
        self.forward = list(forward)
        self.cuda = cuda
        self.forward_s = self.backward_s = self.nested_backward_s = 0.0
        self.forward_calls = self.backward_calls = 0
        self._depth = 0
        self._restore: list[Callable[[], None]] = []

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _timed(self, fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            outermost = self._depth == 0
            self._sync()
            t0 = time.perf_counter()
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                self._sync()
                seconds = time.perf_counter() - t0
                if outermost:
                    setattr(self, f"{kind}_s", getattr(self, f"{kind}_s") + seconds)
                    setattr(self, f"{kind}_calls", getattr(self, f"{kind}_calls") + 1)
                elif kind == "backward":
                    self.nested_backward_s += seconds

        return wrapper

    def __enter__(self) -> ModelClock:
        import torch

        for cls, name in self.forward:
            own = name in cls.__dict__
            original = cls.__dict__.get(name)
            setattr(cls, name, self._timed(getattr(cls, name), "forward"))
            self._restore.append(
                functools.partial(setattr, cls, name, original)
                if own
                else functools.partial(delattr, cls, name)
            )
        grad = torch.autograd.grad
        torch.autograd.grad = self._timed(grad, "backward")
        self._restore.append(functools.partial(setattr, torch.autograd, "grad", grad))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._restore:
            self._restore.pop()()

    def shares(self, wall_s: float) -> dict[str, Any]:
        """The clock's record for ``wall_s`` seconds of wall time: seconds, calls and shares of the wall time."""
        wall = max(wall_s, 1e-12)
        return {
            "model_forward_s": round(self.forward_s, 4),
            "model_backward_s": round(self.backward_s, 4),
            "forward_share": round(self.forward_s / wall, 4),
            "backward_share": round(self.backward_s / wall, 4),
            "forward_calls": self.forward_calls,
            "backward_calls": self.backward_calls,
            "nested_backward_s": round(self.nested_backward_s, 4),
        }


def model_methods(potential: Any) -> list[tuple[type, str]]:
    """The forward pass to time for an aloe potential: ``CHGNet._compute`` or the MACE module's ``forward``.

    CHGNet's ``_compute`` is the network, and in chgnet's own ``predict_graph``/``forward`` path also its force and
    stress autograd (``create_graph=True``); aloe's paths call it without forces, then one ``autograd.grad``. Other
    potentials (EMT, LJ, ...) have no forward to time: empty.
    """
    kind = type(potential).__name__
    if kind == "CHGNetPotential":
        from chgnet.model.model import CHGNet

        return [(CHGNet, "_compute")]
    if kind == "MACEPotential":
        return [(type(potential.model), "forward")]
    return []


def model_table(rows: list[tuple[str, dict[str, Any]]], title: str) -> str:
    """A compact table: path, wall s, speed-up over the first row, % of wall time in forward and backward passes.

    ``rows`` are ``(path, record)`` with ``seconds``, ``forward_share`` and ``backward_share`` (``None``: not
    measured, shown as ``-``) and, optionally, ``nested_backward_s`` (autograd inside the forward, counted in it).
    """
    base = rows[0][1]["seconds"]

    def percent(share: float | None) -> str:
        return "-" if share is None else f"{100 * share:.1f}"

    lines = [
        title,
        f"  {'path':<22} {'wall s':>8} {'speed-up':>8} {'fwd %':>6} {'bwd %':>6} {'(grad in fwd %)':>16}",
    ]
    for name, r in rows:
        nested = (r.get("nested_backward_s") or 0.0) / max(r["seconds"], 1e-12)
        lines.append(
            f"  {name:<22} {r['seconds']:8.2f} {base / max(r['seconds'], 1e-12):8.2f} "
            f"{percent(r.get('forward_share')):>6} {percent(r.get('backward_share')):>6} "
            f"{f'({100 * nested:.1f})' if nested else '':>16}"
        )
    return "\n".join(lines)
