"""Parquet tables of the rows and the comparison of the potentials (Markdown, CSV and JSON)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aloe.bench.base import COMMON_COLUMNS, COUNT_FORMAT, Headline
from aloe.bench.registry import BENCHMARKS
from aloe.bench.report._common import as_float, potentials_of, quiet, report_order, write_text
from aloe.layout import COMPARISON, METRICS_COLUMNS, bench_table_path
from aloe.runs import atomic_path, plain_data

#: Headline metrics of each benchmark of the table, in column order (each class's ``HEADLINES``; absent ones are
#: left out of a comparison).
HEADLINES: dict[str, list[Headline]] = {name: list(cls.HEADLINES) for name, cls in BENCHMARKS.items()}


# The only helper that keeps non-finite values: Parquet keeps NaN as NaN, so the tables cannot use
# aloe.runs.plain_data (it turns NaN and inf into None, for YAML and JSON, which have no NaN).
def _plain(value: Any) -> Any:
    """Plain Python values from numpy ones (scalars, arrays) and tuples; NaN and inf kept."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ---- tables -------------------------------------------------------------------------------------------------
def table_columns(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> list[str]:
    """Column order of a benchmark's table: common columns, then the declared ones, then any others first-seen.

    Parameters
    ----------
    rows
        The benchmark's rows.
    columns
        The benchmark's own columns and their descriptions (``Benchmark.COLUMNS``).
    """
    order: dict[str, None] = dict.fromkeys(COMMON_COLUMNS)
    order.update(dict.fromkeys(columns))
    for row in rows:
        order.update(dict.fromkeys(k for k in row if k not in order))
    return list(order)


def _arrow_column(values: list[Any]) -> Any:
    """An Arrow array from one column's values (missing = ``None`` -> null).

    Arrow infers the type (lists become list columns). Columns it cannot type (bools mixed with floats, strings
    mixed with numbers) fall back to float64 when every value is a number, else to strings.
    """
    import pyarrow as pa

    values = [_plain(v) for v in values]
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        pass
    if all(v is None or (as_float(v) is not None and not isinstance(v, list)) for v in values):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array(
        [None if v is None else (v if isinstance(v, str) else json.dumps(plain_data(v))) for v in values],
        type=pa.string(),
    )


def bench_table(bench: str, rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> Any:
    """The Arrow table of one benchmark (see :func:`write_tables`)."""
    import pyarrow as pa

    names = table_columns(rows, columns)
    descriptions = {**COMMON_COLUMNS, **columns}
    arrays, fields = [], []
    for name in names:
        array = _arrow_column([row.get(name) for row in rows])
        meta = {"description": descriptions.get(name, "")}
        arrays.append(array)
        fields.append(pa.field(name, array.type, nullable=True, metadata=meta))
    schema = pa.schema(fields, metadata={"aloe.kind": "bench-table", "aloe.bench": bench})
    return pa.Table.from_arrays(arrays, schema=schema)


def write_tables(
    rows_by_bench: Mapping[str, Sequence[Mapping[str, Any]]],
    columns_by_bench: Mapping[str, Mapping[str, str]],
    folder: str | Path,
) -> dict[str, Path]:
    """One Parquet table per benchmark: ``tables/<bench>.parquet``.

    Parameters
    ----------
    rows_by_bench
        ``bench -> rows``; a row is one (potential, structure) as a flat dict (failed rows carry only the common
        columns).
    columns_by_bench
        ``bench -> {column: description}`` of the benchmark's own columns (``Benchmark.COLUMNS``); the common
        columns' descriptions come from :data:`aloe.bench.base.COMMON_COLUMNS`.
    folder
        The report folder.

    Returns
    -------
    dict
        ``bench -> path`` of each table.

    Notes
    -----
    Columns: the common columns first, then the declared ones in their order, then any undeclared ones in
    first-seen order; a declared column no row has is kept (all null), so a benchmark whose structures all failed
    still has its full schema. Missing values are null, NaN stays NaN, lists are list columns. Each field's
    metadata holds ``description``; the schema's metadata holds ``aloe.kind`` and ``aloe.bench``.
    """
    import pyarrow.parquet as pq

    out: dict[str, Path] = {}
    with quiet():
        for bench in report_order(list(rows_by_bench)):
            table = bench_table(bench, rows_by_bench[bench], columns_by_bench.get(bench, {}))
            path = bench_table_path(folder, bench)
            with atomic_path(path) as tmp:
                pq.write_table(table, str(tmp), compression="zstd")
            out[bench] = path
    return out


# ---- comparison ---------------------------------------------------------------------------------------------
def headlines_of(bench: str, by_potential: Mapping[str, Mapping[str, Any]]) -> list[Headline]:
    """The headline columns of a benchmark that at least one potential has.

    A benchmark without a headline list (not one of the four) shows all its numeric metrics as they are.
    """
    if bench in HEADLINES:
        return [h for h in HEADLINES[bench] if any(h.raw(m) is not None for m in by_potential.values())]
    keys: dict[str, None] = {}
    for m in by_potential.values():
        keys.update(dict.fromkeys(k for k, v in m.items() if as_float(v) is not None))
    return [Headline((k,), k, 1.0, "{:.4g}") for k in keys]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table (first column left-aligned, the others right-aligned; ``|`` escaped)."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|---|" + "---:|" * (len(header) - 1))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def comparison_markdown(metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """``comparison.md`` text: one table per benchmark, potentials as rows, headline metrics as columns."""
    lines = ["# Benchmark comparison", ""]
    lines.append(
        "Rates and shares in percent; energies in meV/atom, forces in meV/A. Full metrics: `comparison.json`."
    )
    lines.append("")
    for bench in report_order(list(metrics)):
        by_potential = metrics[bench]
        heads = headlines_of(bench, by_potential)
        lines += [f"## {bench}", ""]
        if not by_potential:
            lines += ["No potentials.", ""]
            continue
        rows = [[name] + [h.text(m) for h in heads] for name, m in by_potential.items()]
        lines += markdown_table(["potential"] + [h.label for h in heads], rows)
        lines.append("")
    return "\n".join(lines)


def _wide_rows(
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> tuple[list[str], list[tuple[str, str, Headline]], list[str]]:
    """Header, (bench, column, headline) per column and the potentials of the wide comparison table."""
    columns: list[tuple[str, str, Headline]] = []
    potentials: dict[str, None] = {}
    for bench in report_order(list(metrics)):
        potentials.update(dict.fromkeys(potentials_of(metrics[bench])))
        columns += [(bench, f"{bench}: {h.label}", h) for h in headlines_of(bench, metrics[bench])]
    return ["potential"] + [c for _, c, _ in columns], columns, list(potentials)


def csv_value(head: Headline, value: float | None) -> float | int | None:
    """A CSV cell: counts as integers, everything else at full precision."""
    if value is not None and head.fmt == COUNT_FORMAT and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """CSV text of a header and rows (floats at full precision as ``repr``; ``None`` as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()


def comparison_csv(metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """``comparison.csv`` text: one row per potential, ``<bench>: <label>`` columns in the shown units."""
    header, columns, potentials = _wide_rows(metrics)
    rows = []
    for name in potentials:
        row: list[Any] = [name]
        for bench, _, head in columns:
            m = metrics[bench].get(name)
            row.append(None if m is None else csv_value(head, head.value(m)))
        rows.append(row)
    return csv_text(header, rows)


def write_comparison(
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]], folder: str | Path
) -> dict[str, Path]:
    """The comparison of the potentials: ``comparison.md``, ``comparison.csv`` and ``comparison.json``.

    Parameters
    ----------
    metrics
        ``metrics[bench][potential]`` -> the potential's aggregate metrics (``Benchmark.aggregate``).
    folder
        The report folder.

    Returns
    -------
    dict
        ``{"md": ..., "csv": ..., "json": ...}`` paths.

    Notes
    -----
    The Markdown has one table per benchmark (headline metrics, :data:`HEADLINES`, formatted); the CSV has the same
    columns side by side, one row per potential, at full precision in the same units (empty where a potential
    did not run a benchmark); the JSON is ``metrics`` as given, with NaN and inf written as ``null``.
    """
    folder = Path(folder)
    return {
        "md": write_text(folder / f"{COMPARISON}.md", comparison_markdown(metrics) + "\n"),
        "csv": write_text(folder / f"{COMPARISON}.csv", comparison_csv(metrics)),
        "json": write_text(
            folder / f"{COMPARISON}.json",
            json.dumps(plain_data(metrics), indent=2, allow_nan=False) + "\n",
        ),
    }


# ---- the long metrics table ---------------------------------------------------------------------------------
def metrics_rows(
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    group: str | None = None,
    members: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Nested metrics as long rows: one per (potential, benchmark, metric), columns ``METRICS_COLUMNS``.

    Parameters
    ----------
    metrics
        ``metrics[bench][potential]`` -> the potential's aggregate metrics (numbers; ``None`` where undefined).
    group
        What the potentials belong to (a committee, a study's arm); ``None`` for a plain bench run.
    members
        Potential -> its index as a member of the group (default: the order the potentials first appear).

    Returns
    -------
    list of dict
        Benchmarks in report order, potentials as given; ``value`` a float or ``None``. Metrics that are no
        number (text) are left out.
    """
    order: dict[str, int] = {}
    for bench in report_order(list(metrics)):
        for name in metrics[bench]:
            order.setdefault(str(name), len(order))
    members = dict(members) if members is not None else order
    out = []
    for bench in report_order(list(metrics)):
        for name, by_metric in metrics[bench].items():
            for metric, value in by_metric.items():
                number = as_float(value)
                if number is None and value is not None:
                    continue
                out.append(
                    {
                        "group": group,
                        "member": members.get(str(name), order[str(name)]),
                        "benchmark": bench,
                        "potential": str(name),
                        "metric": str(metric),
                        "value": number,
                    }
                )
    return out


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The Arrow table of :func:`metrics_rows` (types fixed, so empty tables and nulls keep the schema)."""
    import pyarrow as pa

    types = {
        "group": pa.string(),
        "member": pa.int64(),
        "benchmark": pa.string(),
        "potential": pa.string(),
        "metric": pa.string(),
        "value": pa.float64(),
    }
    schema = pa.schema(
        [pa.field(c, types[c]) for c in METRICS_COLUMNS], metadata={"aloe.kind": "bench-metrics"}
    )
    return pa.Table.from_pylist([dict(r) for r in rows], schema=schema)


def write_metrics_table(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`metrics_rows` as Parquet, atomically (a bench run's ``metrics.parquet``)."""
    import pyarrow.parquet as pq

    path = Path(path)
    with quiet(), atomic_path(path) as tmp:
        pq.write_table(metrics_table(rows), str(tmp), compression="zstd")
    return path


def nested_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """The inverse of :func:`metrics_rows` (one group): ``{bench: {potential: {metric: value}}}``."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in rows:
        out.setdefault(r["benchmark"], {}).setdefault(r["potential"], {})[r["metric"]] = r["value"]
    return out
