"""The table of benchmarks: one entry per benchmark class, in the order they are reported.

Everything that differs between benchmarks is an attribute or method of its class (:class:`~aloe.bench.base.
Benchmark`): its name, settings section, headline metrics, which structures it uses, how a task builds it, its task
size and its figures. This table is the one place that lists them; settings, stage and report read it.
"""

from __future__ import annotations

from aloe.bench.base import Benchmark
from aloe.bench.equilibrium import Equilibrium
from aloe.bench.ev import EVScan
from aloe.bench.forces import ForceParity
from aloe.bench.md import MDStability
from aloe.errors import AloeError

#: Benchmark name -> class, in report order (the paper's Figs. 3-6).
BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (Equilibrium, ForceParity, EVScan, MDStability)
}
#: The benchmarks' names, in report order.
BENCHMARK_NAMES: tuple[str, ...] = tuple(BENCHMARKS)


def benchmark_class(name: str) -> type[Benchmark]:
    """The :class:`~aloe.bench.base.Benchmark` subclass named ``name``."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise AloeError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARK_NAMES)})") from None


def report_order(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` in report order: the table's benchmarks first, any others after them as given."""
    return [b for b in BENCHMARK_NAMES if b in names] + [b for b in names if b not in BENCHMARKS]


def run_order(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` in the order the stage runs them (cheap benchmarks first: their tables appear early)."""
    return sorted(names, key=lambda b: (benchmark_class(b).run_priority, BENCHMARK_NAMES.index(b)))


__all__ = ["BENCHMARKS", "BENCHMARK_NAMES", "benchmark_class", "report_order", "run_order"]
