"""Helpers shared by the report's tables, figures and HTML page, and by the loop's report over iterations."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aloe.bench.base import as_float
from aloe.bench.md.settings import ENSEMBLES
from aloe.bench.registry import BENCHMARK_NAMES, report_order
from aloe.runs import atomic_path

#: Benchmarks in report order (the table of :mod:`aloe.bench.registry`; others follow in the order given).
BENCH_ORDER = BENCHMARK_NAMES


def potentials_of(
    by_potential: Mapping[str, Any] | None = None, rows: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
    """Potential names in first-seen order."""
    seen: dict[str, None] = {}
    for name in by_potential or {}:
        seen.setdefault(str(name), None)
    for row in rows:
        seen.setdefault(str(row.get("potential")), None)
    return list(seen)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence third-party warnings (matplotlib, pyarrow) while a report is written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (UTF-8); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


__all__ = ["BENCH_ORDER", "ENSEMBLES", "as_float", "potentials_of", "quiet", "report_order", "write_text"]
