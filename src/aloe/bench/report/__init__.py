"""Report of a benchmark run: Parquet tables, a comparison table, figures and one self-contained HTML page.

Layout of a report folder (every file written atomically, no timestamps: same rows give the same bytes)::

    tables/<bench>.parquet   one row per (potential, structure); column descriptions in the field metadata
    comparison.md            one Markdown table per benchmark: potentials as rows, headline metrics with units
    comparison.csv           the same numbers in one wide table (same units as the Markdown headers)
    comparison.json          the full metrics, as given (NaN written as null)
    figures/<bench>_*.png    parity plots, histograms, E-V curves, survival curves, MD speed
    report.html              all of the above in one page (figures embedded as base64 PNG)

Units. Rows and metrics hold eV/atom, eV/A and fractions (rates and shares in 0..1); the comparison shows meV/atom,
meV/A and percent (the headers say which). Figures are skipped, not drawn empty, when a benchmark has no rows or
no successful structure (or a figure's column is missing everywhere); the HTML page then says so beside the
benchmark and its failures are listed with their reasons.

The active-learning loop follows the headline metrics over iterations with
:func:`aloe.loop.bench_report.write_bench_iterations` (the metrics of each iteration's committee, iteration 0 being
the pretrained committee); :func:`write_iteration_report` is its old name, kept here.

The report is written in parts: :mod:`~aloe.bench.report.tables` (Parquet tables and the comparison),
:mod:`~aloe.bench.report.figures` and :mod:`~aloe.bench.report.html`; :func:`write_report` composes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aloe.bench.md.benchmark import survival_from_shares
from aloe.bench.report._common import BENCH_ORDER
from aloe.bench.report.figures import write_figures
from aloe.bench.report.html import collect_failures, write_html
from aloe.bench.report.tables import (
    HEADLINES,
    Headline,
    bench_table,
    comparison_csv,
    comparison_markdown,
    headlines_of,
    table_columns,
    write_comparison,
    write_tables,
)

if TYPE_CHECKING:
    from aloe.loop.bench_report import ITERATION_METRICS
    from aloe.loop.bench_report import write_bench_iterations as write_iteration_report


def write_report(
    rows_by_bench: Mapping[str, Sequence[Mapping[str, Any]]],
    columns_by_bench: Mapping[str, Mapping[str, str]],
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
    folder: str | Path,
    title: str = "aloe bench",
) -> dict[str, Any]:
    """The whole report of a benchmark run: tables, comparison, figures and ``report.html``.

    Parameters
    ----------
    rows_by_bench
        ``bench -> rows`` (one per (potential, structure)).
    columns_by_bench
        ``bench -> {column: description}`` (``Benchmark.COLUMNS``).
    metrics
        ``metrics[bench][potential]`` -> aggregate metrics.
    folder
        The report folder (created).
    title
        Title of the HTML page.

    Returns
    -------
    dict
        ``{"tables": {bench: path}, "comparison": {"md", "csv", "json": path}, "figures": [path], "html": path}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = write_tables(rows_by_bench, columns_by_bench, folder)
    comparison = write_comparison(metrics, folder)
    figures = write_figures(rows_by_bench, metrics, folder)
    page = write_html(folder, metrics, figures, tables, collect_failures(rows_by_bench), title)
    return {"tables": tables, "comparison": comparison, "figures": figures, "html": page}


#: Names that moved to :mod:`aloe.loop.bench_report` (old name -> name there), imported on first use:
#: that module builds on this package, so importing it here would be an import cycle.
_MOVED_TO_LOOP = {
    "write_iteration_report": "write_bench_iterations",
    "ITERATION_METRICS": "ITERATION_METRICS",
}


def __getattr__(name: str) -> Any:
    """The names that moved to :mod:`aloe.loop.bench_report`, under their old names."""
    if name in _MOVED_TO_LOOP:
        from aloe.loop import bench_report

        return getattr(bench_report, _MOVED_TO_LOOP[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BENCH_ORDER",
    "HEADLINES",
    "ITERATION_METRICS",
    "Headline",
    "bench_table",
    "collect_failures",
    "comparison_csv",
    "comparison_markdown",
    "headlines_of",
    "survival_from_shares",
    "table_columns",
    "write_comparison",
    "write_figures",
    "write_html",
    "write_iteration_report",
    "write_report",
    "write_tables",
]
