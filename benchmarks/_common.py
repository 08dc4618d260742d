"""What every benchmark script shares: memory probes of the running process and a description of the machine."""

from __future__ import annotations

import os
import platform
import sys
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
