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

The active-learning loop calls :func:`write_iteration_report` with the metrics of each iteration's committee
(iteration 0 is the pretrained committee) to follow the headline metrics over iterations.
"""

from __future__ import annotations

import base64
import csv
import html as html_lib
import io
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aloe.bench.base import COMMON_COLUMNS
from aloe.plotting import note, pyplot
from aloe.runs import atomic_path

#: Benchmarks in report order (others follow in the order given).
BENCH_ORDER = ("equilibrium", "forces", "ev", "md")
#: MD ensembles, as the prefixes of the MD columns.
ENSEMBLES = ("nvt", "npt")
#: Most failed rows listed per benchmark in the HTML page (the tables hold all of them).
MAX_LISTED_FAILURES = 300
#: Most force components drawn per potential in the parity plot (evenly strided; the metrics use all of them).
MAX_PARITY_POINTS = 40_000
#: Line styles of overlapping curves (one per potential, in turn).
LINE_STYLES = ("-", "--", ":", "-.")
#: Passing E-V curves drawn per potential beside the failures.
EV_PASSES_SHOWN = 4
#: Failed (or no-minimum) E-V curves drawn per potential, at most.
EV_FAILURES_SHOWN = 12


@dataclass(frozen=True)
class Headline:
    """A metric of the comparison table.

    Attributes
    ----------
    keys
        Metric names to look for, first found wins (benchmarks may name a mean ``x_mean`` or ``x``).
    label
        Column header, with the unit it is shown in.
    scale
        Factor from the metric's unit to the shown one (1000 for eV -> meV, 100 for a fraction -> percent).
    fmt
        Format of the shown value in Markdown and HTML (the CSV keeps full precision).
    """

    keys: tuple[str, ...]
    label: str
    scale: float = 1.0
    fmt: str = "{:.3f}"

    def raw(self, metrics: Mapping[str, Any]) -> float | None:
        """The metric's value in its own unit, or ``None`` when absent or not a number."""
        for key in self.keys:
            if key in metrics:
                return _number(metrics[key])
        return None

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The value in the shown unit, or ``None``."""
        raw = self.raw(metrics)
        return None if raw is None else raw * self.scale

    def text(self, metrics: Mapping[str, Any]) -> str:
        """The formatted value (``-`` when absent, ``nan`` when not finite)."""
        value = self.value(metrics)
        if value is None:
            return "-"
        if not math.isfinite(value):
            return "nan"
        return self.fmt.format(value)


_COUNT = "{:.0f}"
_N = [Headline(("n",), "structures", fmt=_COUNT), Headline(("n_failed",), "failed", fmt=_COUNT)]


def _md_headlines() -> list[Headline]:
    out = list(_N)
    for ens in ENSEMBLES:
        e = ens.upper()
        out += [
            Headline((f"{ens}_completed_share_mean",), f"{e} completed (%)", 100.0, "{:.1f}"),
            Headline((f"{ens}_survived_share",), f"{e} survived (%)", 100.0, "{:.1f}"),
            Headline((f"{ens}_survival_auc",), f"{e} survival AUC", 1.0, "{:.3f}"),
            Headline((f"{ens}_steps_per_second_mean",), f"{e} steps/s", 1.0, "{:.3g}"),
        ]
    return out


#: Headline metrics of each benchmark, in column order (absent ones are left out of the table).
HEADLINES: dict[str, list[Headline]] = {
    "equilibrium": [
        *_N,
        Headline(("e_coh_mae",), "E_coh MAE (meV/atom)", 1000.0, "{:.1f}"),
        Headline(("e_coh_std",), "E_coh std (meV/atom)", 1000.0, "{:.1f}"),
        Headline(("e_coh_mean_error",), "E_coh mean error (meV/atom)", 1000.0, "{:.1f}"),
        Headline(("fingerprint_distance_mean",), "FP distance mean", 1.0, "{:.3f}"),
        Headline(("fingerprint_distance_median",), "FP distance median", 1.0, "{:.3f}"),
        Headline(("n_unconverged",), "unconverged", 1.0, _COUNT),
    ],
    "forces": [
        *_N,
        Headline(("n_components",), "components", 1.0, _COUNT),
        Headline(("force_mae",), "force MAE (meV/A)", 1000.0, "{:.1f}"),
        Headline(("force_rmse",), "force RMSE (meV/A)", 1000.0, "{:.1f}"),
        Headline(("softening_slope",), "softening slope", 1.0, "{:.3f}"),
    ],
    "ev": [
        *_N,
        Headline(("failure_rate",), "failure rate (%)", 100.0, "{:.1f}"),
        Headline(("no_minimum_rate",), "no minimum (%)", 100.0, "{:.1f}"),
        Headline(("flips_minus_one_abs_mean",), "mean abs(flips-1)", 1.0, "{:.3f}"),
        Headline(("flips_mean",), "mean flips", 1.0, "{:.2f}"),
        Headline(("tortuosity_mean",), "tortuosity", 1.0, "{:.3f}"),
        Headline(
            ("spearman_compression_energy_mean", "spearman_compression_energy"),
            "Spearman compr. E",
            1.0,
            "{:.3f}",
        ),
        Headline(
            ("spearman_compression_derivative_mean", "spearman_compression_derivative"),
            "Spearman compr. dE",
            1.0,
            "{:.3f}",
        ),
        Headline(
            ("spearman_tension_energy_mean", "spearman_tension_energy"), "Spearman tension E", 1.0, "{:.3f}"
        ),
    ],
    "md": _md_headlines(),
}


def _headline(bench: str, key: str) -> Headline:
    return next(h for h in HEADLINES[bench] if key in h.keys)


#: Metrics drawn over iterations by :func:`write_iteration_report` (those present).
ITERATION_METRICS: list[tuple[str, Headline]] = [
    (bench, _headline(bench, key))
    for bench, key in (
        ("equilibrium", "e_coh_mae"),
        ("equilibrium", "fingerprint_distance_mean"),
        ("forces", "force_mae"),
        ("forces", "softening_slope"),
        ("ev", "failure_rate"),
        ("ev", "flips_minus_one_abs_mean"),
        ("md", "nvt_completed_share_mean"),
        ("md", "npt_completed_share_mean"),
    )
]


# ---- small helpers ------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A float from a metric value (bools and numpy scalars included), or ``None``."""
    if value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """Plain Python values from numpy ones (scalars, arrays) and tuples; NaN and inf kept."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _json_safe(value: Any) -> Any:
    """JSON-ready values: numpy to Python, NaN and inf to ``None`` (JSON has no NaN)."""
    value = _plain(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _bench_order(names: Sequence[str]) -> list[str]:
    known = [b for b in BENCH_ORDER if b in names]
    return known + [b for b in names if b not in BENCH_ORDER]


def _potentials(
    by_potential: Mapping[str, Any] | None = None, rows: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
    """Potential names in first-seen order."""
    seen: dict[str, None] = {}
    for name in by_potential or {}:
        seen.setdefault(str(name), None)
    for row in rows:
        seen.setdefault(str(row.get("potential")), None)
    return list(seen)


def _ok(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if not r.get("error")]


def _finite_pairs(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (x, y) pairs of two scalar columns over rows that have both."""
    xs, ys = [], []
    for r in rows:
        a, b = _number(r.get(x)), _number(r.get(y))
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            xs.append(a)
            ys.append(b)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _fmt(value: float | None, spec: str = "{:.3g}") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return spec.format(value)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence third-party warnings (matplotlib, pyarrow) while a report is written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per potential, the same in every figure."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(k % cmap.N) for k, name in enumerate(names)}


def _save(fig: Any, path: Path) -> Path:
    """Save a figure atomically as PNG and close it."""
    plt = pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


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
    if all(v is None or (_number(v) is not None and not isinstance(v, list)) for v in values):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array(
        [None if v is None else (v if isinstance(v, str) else json.dumps(_json_safe(v))) for v in values],
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
    with _quiet():
        for bench in _bench_order(list(rows_by_bench)):
            table = bench_table(bench, rows_by_bench[bench], columns_by_bench.get(bench, {}))
            path = Path(folder) / "tables" / f"{bench}.parquet"
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
        keys.update(dict.fromkeys(k for k, v in m.items() if _number(v) is not None))
    return [Headline((k,), k, 1.0, "{:.4g}") for k in keys]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
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
    for bench in _bench_order(list(metrics)):
        by_potential = metrics[bench]
        heads = headlines_of(bench, by_potential)
        lines += [f"## {bench}", ""]
        if not by_potential:
            lines += ["No potentials.", ""]
            continue
        rows = [[name] + [h.text(m) for h in heads] for name, m in by_potential.items()]
        lines += _markdown_table(["potential"] + [h.label for h in heads], rows)
        lines.append("")
    return "\n".join(lines)


def _wide_rows(
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> tuple[list[str], list[tuple[str, str, Headline]], list[str]]:
    """Header, (bench, column, headline) per column and the potentials of the wide comparison table."""
    columns: list[tuple[str, str, Headline]] = []
    potentials: dict[str, None] = {}
    for bench in _bench_order(list(metrics)):
        potentials.update(dict.fromkeys(_potentials(metrics[bench])))
        columns += [(bench, f"{bench}: {h.label}", h) for h in headlines_of(bench, metrics[bench])]
    return ["potential"] + [c for _, c, _ in columns], columns, list(potentials)


def _csv_value(head: Headline, value: float | None) -> float | int | None:
    """A CSV cell: counts as integers, everything else at full precision."""
    if value is not None and head.fmt == _COUNT and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
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
            row.append(None if m is None else _csv_value(head, head.value(m)))
        rows.append(row)
    return _csv_text(header, rows)


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
        "md": _write_text(folder / "comparison.md", comparison_markdown(metrics) + "\n"),
        "csv": _write_text(folder / "comparison.csv", comparison_csv(metrics)),
        "json": _write_text(
            folder / "comparison.json", json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n"
        ),
    }


# ---- figures ------------------------------------------------------------------------------------------------
def _parity_limits(ax: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    lo = float(min(x.min(), y.min()))
    hi = float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    return lo - pad, hi + pad


def _equilibrium_figures(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]], folder: Path, colors: dict
) -> list[Path]:
    plt = pyplot()
    ok = _ok(rows)
    names = _potentials(None, ok)
    out: list[Path] = []
    pairs = {
        n: _finite_pairs([r for r in ok if str(r.get("potential")) == n], "e_coh_ref", "e_coh_pred")
        for n in names
    }
    pairs = {n: p for n, p in pairs.items() if len(p[0])}
    if pairs:
        fig, ax = plt.subplots(figsize=(6.2, 6.0))
        xs = np.concatenate([p[0] for p in pairs.values()])
        ys = np.concatenate([p[1] for p in pairs.values()])
        lo, hi = _parity_limits(ax, xs, ys)
        ax.plot([lo, hi], [lo, hi], color="#888888", lw=1, zorder=0)
        text = []
        for name, (x, y) in pairs.items():
            ax.scatter(x, y, s=12, alpha=0.75, lw=0, color=colors[name], label=name, rasterized=True)
            m = metrics.get(name, {})
            err = y - x
            mae = _number(m.get("e_coh_mae")) if "e_coh_mae" in m else float(np.mean(np.abs(err)))
            std = _number(m.get("e_coh_std")) if "e_coh_std" in m else float(np.std(err))
            text.append(
                f"{name}: MAE {_fmt(_scale(mae, 1000), '{:.1f}')}  std {_fmt(_scale(std, 1000), '{:.1f}')}"
            )
        note(ax, "meV/atom\n" + "\n".join(text), loc="lower right")
        ax.set_xlabel("reference cohesive energy (eV/atom)")
        ax.set_ylabel("predicted cohesive energy (eV/atom)")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title("Equilibrium: cohesive energy parity", fontsize=11)
        fig.tight_layout()
        out.append(_save(fig, folder / "equilibrium_parity.png"))

    distances = {}
    for name in names:
        values = [_number(r.get("fingerprint_distance")) for r in ok if str(r.get("potential")) == name]
        finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        if len(finite):
            distances[name] = finite
    if distances:
        fig, ax = plt.subplots(figsize=(6.8, 4.4))
        every = np.concatenate(list(distances.values()))
        hi = float(every.max()) if every.max() > 0 else 1.0
        bins = np.linspace(0.0, hi * 1.02, 31)
        text = []
        for name, d in distances.items():
            ax.hist(d, bins=bins, histtype="step", lw=1.8, color=colors[name], label=name)
            text.append(f"{name}: mean {np.mean(d):.3f}  median {np.median(d):.3f}")
        note(ax, "\n".join(text))
        ax.set_xlabel("fingerprint distance (reference vs relaxed)")
        ax.set_ylabel("structures")
        ax.legend(loc="center right", fontsize=8)
        ax.set_title("Equilibrium: structure fingerprint distance", fontsize=11)
        fig.tight_layout()
        out.append(_save(fig, folder / "equilibrium_fingerprint.png"))
    return out


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _flat(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite pairs of two list columns, concatenated over rows (rows whose lengths disagree are skipped)."""
    xs, ys = [], []
    for r in rows:
        a, b = r.get(x), r.get(y)
        if a is None or b is None:
            continue
        a = np.asarray(a, dtype=float).ravel()
        b = np.asarray(b, dtype=float).ravel()
        if a.shape != b.shape:
            continue
        keep = np.isfinite(a) & np.isfinite(b)
        xs.append(a[keep])
        ys.append(b[keep])
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


def _forces_figure(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]], folder: Path, colors: dict
) -> list[Path]:
    plt = pyplot()
    ok = _ok(rows)
    data = {
        n: _flat([r for r in ok if str(r.get("potential")) == n], "forces_ref", "forces_pred")
        for n in _potentials(None, ok)
    }
    data = {n: d for n, d in data.items() if len(d[0])}
    if not data:
        return []
    fig, ax = plt.subplots(figsize=(6.2, 6.0))
    lo, hi = _parity_limits(
        ax, np.concatenate([d[0] for d in data.values()]), np.concatenate([d[1] for d in data.values()])
    )
    ax.plot([lo, hi], [lo, hi], color="#888888", lw=1, zorder=0, label="y = x")
    text = []
    for name, (x, y) in data.items():
        stride = max(1, math.ceil(len(x) / MAX_PARITY_POINTS))
        ax.scatter(x[::stride], y[::stride], s=5, alpha=0.5, lw=0, color=colors[name], rasterized=True)
        m = metrics.get(name, {})
        # The metric's slope is the benchmark's own; recompute it (least squares through the origin) only if absent.
        slope = _number(m.get("softening_slope"))
        if slope is None:
            denom = float(np.dot(x, x))
            slope = float(np.dot(x, y) / denom) if denom > 0 else float("nan")
        mae = _number(m.get("force_mae"))
        mae = float(np.mean(np.abs(y - x))) if mae is None else mae
        rmse = _number(m.get("force_rmse"))
        rmse = float(np.sqrt(np.mean((y - x) ** 2))) if rmse is None else rmse
        if math.isfinite(slope):
            ax.plot(
                [lo, hi],
                [slope * lo, slope * hi],
                color=colors[name],
                lw=1.5,
                label=f"{name}: y = {slope:.3f} x",
            )
        text.append(
            f"{name}: MAE {_fmt(mae * 1000, '{:.0f}')}  RMSE {_fmt(rmse * 1000, '{:.0f}')}  slope {_fmt(slope, '{:.3f}')}"
        )
    note(ax, "meV/A\n" + "\n".join(text), loc="lower right")
    ax.set_xlabel("reference force component (eV/A)")
    ax.set_ylabel("predicted force component (eV/A)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Off-equilibrium forces: parity and softening", fontsize=11)
    fig.tight_layout()
    return [_save(fig, folder / "forces_parity.png")]


def _ev_curve(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(V / V_mid, E - E_mid) of an EV row, sorted by volume, or ``None`` when it has no usable curve.

    V0 and E_mid are the middle point's (the unstrained cell), as the benchmark's reference point.
    """
    v, e = row.get("volumes"), row.get("energies")
    if v is None or e is None:
        return None
    v = np.asarray(v, dtype=float).ravel()
    e = np.asarray(e, dtype=float).ravel()
    if v.shape != e.shape or len(v) < 2:
        return None
    order = np.argsort(v, kind="stable")
    v, e = v[order], e[order]
    mid = len(v) // 2
    if not (np.isfinite(v[mid]) and v[mid] > 0 and np.isfinite(e[mid])):
        return None
    return v / v[mid], e - e[mid]


def _ev_figure(rows: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
    plt = pyplot()
    ok = _ok(rows)
    names = [
        n for n in _potentials(None, ok) if any(_ev_curve(r) for r in ok if str(r.get("potential")) == n)
    ]
    if not names:
        return []
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        mine = [r for r in ok if str(r.get("potential")) == name]
        failed = [r for r in mine if r.get("failed")]
        no_min = [r for r in mine if r.get("no_minimum") and not r.get("failed")]
        passed = [r for r in mine if not r.get("failed") and not r.get("no_minimum")]
        biggest = 0.0
        # Passes first (underneath), then no-minimum, then failures on top.
        groups = [
            (passed[:EV_PASSES_SHOWN], "#8c8c8c", "pass", 1.0),
            (no_min[:EV_FAILURES_SHOWN], "#dd8452", "no minimum", 1.3),
            (failed[:EV_FAILURES_SHOWN], "#c44e52", "failed (>1 flip)", 1.3),
        ]
        for group, color, label, lw in groups:
            for k, r in enumerate(group):
                curve = _ev_curve(r)
                if curve is None:
                    continue
                x, y = curve
                finite = np.isfinite(y)
                if finite.any():
                    biggest = max(biggest, float(np.abs(y[finite]).max()))
                ax.plot(
                    x, y, color=color, lw=lw, marker=".", ms=3, alpha=0.85, label=label if k == 0 else None
                )
        # A curve that blows up would flatten the others: symlog keeps the small ones readable.
        if biggest > 20.0:
            ax.set_yscale("symlog", linthresh=0.5, linscale=3.0)
        ax.axvline(1.0, color="#bbbbbb", lw=0.8, zorder=0)
        ax.set_xlabel("V / V0 (V0 = unstrained cell)")
        ax.set_ylabel("E - E(V0) (eV/atom)")
        ax.set_title(f"{name}: {len(failed)} failed, {len(no_min)} no minimum, of {len(mine)}", fontsize=10)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("EV scan: failed and no-minimum curves beside a few passes", fontsize=11)
    fig.tight_layout()
    return [_save(fig, folder / "ev_curves.png")]


def survival_from_shares(shares: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Share of runs still alive vs fraction of the run, as the corners of a step curve.

    Parameters
    ----------
    shares
        Each run's completed share of its scheduled steps (clipped to 0..1).

    Returns
    -------
    tuple
        ``(t, alive)`` from ``t = 0`` to ``1``: ``alive[k]`` is the share of runs that went past ``t[k]`` (held until
        ``t[k + 1]``: draw with ``where="post"``); the last point is the share that completed the whole run. The
        area under the curve is the mean completed share.
    """
    s = np.clip(np.asarray(shares, dtype=float), 0.0, 1.0)
    if len(s) == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 0.0])
    t = np.unique(np.concatenate([[0.0], s[(s > 0) & (s < 1)], [1.0]]))
    alive = np.array([np.mean(s > x) for x in t[:-1]] + [np.mean(s >= 1.0)], dtype=float)
    return t, alive


def _md_figures(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]], folder: Path, colors: dict
) -> list[Path]:
    plt = pyplot()
    ok = _ok(rows)
    names = _potentials(None, ok)
    out: list[Path] = []

    def shares(name: str, ens: str) -> np.ndarray:
        values = [_number(r.get(f"{ens}_completed_share")) for r in ok if str(r.get("potential")) == name]
        return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)

    panels = [ens for ens in ENSEMBLES if any(len(shares(n, ens)) for n in names)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
        for ax, ens in zip(axes[0], panels, strict=True):
            for k, name in enumerate(names):
                s = shares(name, ens)
                if not len(s):
                    continue
                t, alive = survival_from_shares(s)
                auc = _number(metrics.get(name, {}).get(f"{ens}_survival_auc"))
                auc = float(np.mean(np.clip(s, 0, 1))) if auc is None else auc
                # Line styles keep identical curves of two potentials apart.
                ax.step(
                    t,
                    alive,
                    where="post",
                    color=colors[name],
                    lw=1.8,
                    ls=LINE_STYLES[k % len(LINE_STYLES)],
                    label=f"{name}: AUC {_fmt(auc, '{:.3f}')}, n {len(s)}",
                )
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.05)
            ax.set_xlabel("fraction of the scheduled run")
            ax.set_ylabel("share of runs still valid")
            ax.set_title(f"MD {ens.upper()}", fontsize=10)
            ax.legend(loc="lower left", fontsize=8)
        fig.suptitle("MD stability: survival", fontsize=11)
        fig.tight_layout()
        out.append(_save(fig, folder / "md_survival.png"))

    markers = {"nvt": "o", "npt": "^"}
    speed = {
        (name, ens): _finite_pairs(
            [r for r in ok if str(r.get("potential")) == name], "n_atoms", f"{ens}_steps_per_second"
        )
        for name in names
        for ens in ENSEMBLES
    }
    speed = {k: v for k, v in speed.items() if len(v[0])}
    if speed:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for (name, ens), (x, y) in speed.items():
            hollow = ens != "nvt"
            ax.scatter(
                x,
                y,
                marker=markers.get(ens, "s"),
                s=80 if hollow else 30,  # a ring around the NVT dot when both are equally fast
                alpha=0.85,
                facecolors="none" if hollow else colors[name],
                edgecolors=colors[name],
                label=f"{name} {ens.upper()}",
            )
        if all((v[1] > 0).all() for v in speed.values()):
            from matplotlib.ticker import FormatStrFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("atoms")
        ax.set_ylabel("MD steps per second")
        ax.legend(fontsize=8)
        ax.set_title("MD speed", fontsize=11)
        fig.tight_layout()
        out.append(_save(fig, folder / "md_speed.png"))
    return out


def write_figures(
    rows_by_bench: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
    folder: str | Path,
) -> list[Path]:
    """PNG figures of each benchmark under ``figures/``.

    Parameters
    ----------
    rows_by_bench
        ``bench -> rows`` (as for :func:`write_tables`).
    metrics
        ``metrics[bench][potential]`` (numbers noted beside the plots; recomputed from the rows where absent).
    folder
        The report folder.

    Returns
    -------
    list of Path
        The figures written, in benchmark order:

        - ``equilibrium_parity.png``: predicted vs reference cohesive energy, one colour per potential, y = x,
          MAE and std noted; ``equilibrium_fingerprint.png``: histogram of fingerprint distances.
        - ``forces_parity.png``: every force component, each potential's softening line y = a x, MAE, RMSE and
          slope noted (at most :data:`MAX_PARITY_POINTS` points drawn per potential).
        - ``ev_curves.png``: one panel per potential, E - E(V0) vs V / V0 of failed (red) and no-minimum (orange)
          curves beside a few passes (grey).
        - ``md_survival.png``: share of runs still valid vs fraction of the run, NVT and NPT panels, AUC noted;
          ``md_speed.png``: steps per second vs atoms.

    A figure without data (no rows, only failed rows, or its columns missing) is not written: no empty plots.
    Benchmarks other than the four get no figures.
    """
    folder = Path(folder) / "figures"
    names: list[str] = []
    for bench in _bench_order(list(rows_by_bench)):
        names += [n for n in _potentials(metrics.get(bench), rows_by_bench[bench]) if n not in names]
    out: list[Path] = []
    with _quiet():
        colors = _colors(names)
        for bench in _bench_order(list(rows_by_bench)):
            rows = rows_by_bench[bench]
            m = metrics.get(bench, {})
            if not _ok(rows):
                continue
            if bench == "equilibrium":
                out += _equilibrium_figures(rows, m, folder, colors)
            elif bench == "forces":
                out += _forces_figure(rows, m, folder, colors)
            elif bench == "ev":
                out += _ev_figure(rows, folder)
            elif bench == "md":
                out += _md_figures(rows, m, folder, colors)
    return out


# ---- HTML ---------------------------------------------------------------------------------------------------
def collect_failures(
    rows_by_bench: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """The failed rows of each benchmark (those with an ``error``), reduced to the common columns."""
    return {
        bench: [{k: r.get(k) for k in COMMON_COLUMNS} for r in rows if r.get("error")]
        for bench, rows in rows_by_bench.items()
    }


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "td.reason{text-align:left;font-family:monospace;font-size:90%}"
    "img{max-width:100%;display:block;margin:0.5em 0 1.5em}.muted{color:#777}"
)


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> list[str]:
    e = html_lib.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for k, c in enumerate(row):
            cls = f" class='{classes[k]}'" if k < len(classes) and classes[k] else ""
            cells.append(f"<td{cls}>{e(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return out


def _figure_bench(path: Path, benches: Sequence[str]) -> str | None:
    stem = path.stem
    for bench in sorted(benches, key=len, reverse=True):
        if stem == bench or stem.startswith(f"{bench}_"):
            return bench
    return None


def write_html(
    folder: str | Path,
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
    figures: Sequence[str | Path],
    tables: Mapping[str, str | Path],
    failures: Mapping[str, Sequence[Mapping[str, Any]]],
    title: str = "aloe bench",
) -> Path:
    """``report.html``: one self-contained page (no files needed beside it to show).

    Parameters
    ----------
    folder
        The report folder (``report.html`` goes there; links are relative to it).
    metrics
        ``metrics[bench][potential]`` -> aggregate metrics (the comparison tables).
    figures
        PNG files (from :func:`write_figures`), embedded as base64 data URIs under the benchmark their name starts
        with.
    tables
        ``bench -> Parquet path`` (from :func:`write_tables`), linked.
    failures
        ``bench -> failed rows`` (:func:`collect_failures`): potential, structure, formula and reason are listed
        (at most :data:`MAX_LISTED_FAILURES` per benchmark), with a count per (potential, reason).
    title
        Page title.

    Returns
    -------
    Path
        The page. Every text from the rows, metrics and title is HTML-escaped.
    """
    e = html_lib.escape
    folder = Path(folder)
    figures = [Path(f) for f in figures]
    benches = _bench_order(list(dict.fromkeys([*metrics, *tables, *failures])))
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    names = ("comparison.md", "comparison.csv", "comparison.json")
    links = [f"<a href='{e(name)}'>{e(name)}</a>" for name in names if (folder / name).exists()]
    for path in tables.values():
        rel = _relative(Path(path), folder)
        links.append(f"<a href='{e(rel)}'>{e(rel)}</a>")
    if links:
        out.append("<p>Files: " + " · ".join(links) + "</p>")
    out.append("<p class='muted'>Energies in meV/atom, forces in meV/A, rates and shares in percent.</p>")
    for bench in benches:
        out.append(f"<h2>{e(bench)}</h2>")
        by_potential = metrics.get(bench, {})
        if by_potential:
            heads = headlines_of(bench, by_potential)
            rows = [[name] + [h.text(m) for h in heads] for name, m in by_potential.items()]
            out += _html_table(["potential"] + [h.label for h in heads], rows)
        else:
            out.append("<p class='muted'>No metrics.</p>")
        mine = [f for f in figures if _figure_bench(f, benches) == bench]
        if not mine:
            out.append("<p class='muted'>No figures (no successful structures).</p>")
        for path in mine:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(
                f"<img alt='{e(path.stem)}' title='{e(path.name)}' src='data:image/png;base64,{data}'>"
            )
        failed = list(failures.get(bench, []))
        if failed:
            out.append(f"<h3>{e(bench)}: {len(failed)} failed</h3>")
            counts: dict[tuple[str, str], int] = {}
            for r in failed:
                key = (str(r.get("potential")), str(r.get("error")))
                counts[key] = counts.get(key, 0) + 1
            out += _html_table(
                ["potential", "structures", "reason"],
                [
                    [p, str(c), reason]
                    for (p, reason), c in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1]))
                ],
                ["", "", "reason"],
            )
            shown = failed[:MAX_LISTED_FAILURES]
            out += _html_table(
                ["potential", "structure", "formula", "atoms", "reason"],
                [
                    [
                        str(r.get("potential")),
                        str(r.get("structure_id")),
                        str(r.get("formula") or ""),
                        str(r.get("n_atoms") or ""),
                        str(r.get("error")),
                    ]
                    for r in shown
                ],
                ["", "", "", "", "reason"],
            )
            if len(failed) > len(shown):
                out.append(f"<p class='muted'>... and {len(failed) - len(shown)} more (see the table).</p>")
    for path in [f for f in figures if _figure_bench(f, benches) is None]:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        out.append(f"<img alt='{e(path.stem)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return _write_text(folder / "report.html", "\n".join(out) + "\n")


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


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


# ---- over active-learning iterations ------------------------------------------------------------------------
def _iteration_columns(
    per_iteration: Mapping[int, Mapping[str, Mapping[str, Mapping[str, Any]]]],
) -> dict[str, list[Headline]]:
    """Headlines of each benchmark present in any iteration."""
    merged: dict[str, dict[str, Mapping[str, Any]]] = {}
    for it in sorted(per_iteration):
        for bench, by_potential in per_iteration[it].items():
            for name, m in by_potential.items():
                merged.setdefault(bench, {})[f"{it}/{name}"] = m
    return {bench: headlines_of(bench, merged[bench]) for bench in _bench_order(list(merged))}


def write_iteration_report(
    per_iteration: Mapping[int, Mapping[str, Mapping[str, Mapping[str, Any]]]],
    folder: str | Path,
) -> dict[str, Path]:
    """Benchmark metrics over the active-learning iterations.

    Parameters
    ----------
    per_iteration
        ``per_iteration[iteration][bench][potential]`` -> aggregate metrics; iteration 0 is the pretrained
        committee, each potential a committee member.
    folder
        Where the files go.

    Returns
    -------
    dict
        ``{"md": path, "csv": path, "png": path}``: ``bench_iterations.md`` (one table per benchmark,
        one row per iteration x potential, headline metrics), ``bench_iterations.csv`` (the same in one wide
        table, full precision) and ``bench_iterations.png`` (one panel per headline metric of
        :data:`ITERATION_METRICS` present: each member as a point, members with the same name joined, the
        committee mean as a bold line); no PNG (and no ``"png"`` key) when no such metric is present.
    """
    folder = Path(folder)
    iterations = sorted(per_iteration)
    heads = _iteration_columns(per_iteration)
    pairs: list[tuple[int, str]] = []
    for it in iterations:
        names: dict[str, None] = {}
        for bench in heads:
            names.update(dict.fromkeys(_potentials(per_iteration[it].get(bench, {}))))
        pairs += [(it, n) for n in names]

    lines = ["# Benchmarks over iterations", "", "Iteration 0 is the pretrained committee.", ""]
    if not pairs:
        lines += ["No benchmark metrics.", ""]
    for bench, hs in heads.items():
        rows = []
        for it in iterations:
            for name, m in per_iteration[it].get(bench, {}).items():
                rows.append([str(it), name] + [h.text(m) for h in hs])
        lines += [
            f"## {bench}",
            "",
            *_markdown_table(["iteration", "potential"] + [h.label for h in hs], rows),
            "",
        ]
    header = ["iteration", "potential"] + [f"{b}: {h.label}" for b, hs in heads.items() for h in hs]
    csv_rows = []
    for it, name in pairs:
        row: list[Any] = [it, name]
        for bench, hs in heads.items():
            m = per_iteration[it].get(bench, {}).get(name)
            row += [None if m is None else _csv_value(h, h.value(m)) for h in hs]
        csv_rows.append(row)
    out: dict[str, Path] = {
        "md": _write_text(folder / "bench_iterations.md", "\n".join(lines) + "\n"),
        "csv": _write_text(folder / "bench_iterations.csv", _csv_text(header, csv_rows)),
    }

    panels = [
        (bench, h)
        for bench, h in ITERATION_METRICS
        if any(h.value(m) is not None for it in iterations for m in per_iteration[it].get(bench, {}).values())
    ]
    if not panels:
        return out
    with _quiet():
        plt = pyplot()
        names = list(dict.fromkeys(n for _, n in pairs))
        colors = _colors(names)
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.8 * nrows), squeeze=False)
        for ax in axes.ravel()[len(panels) :]:
            ax.set_visible(False)
        for ax, (bench, h) in zip(axes.ravel(), panels, strict=False):
            for name in names:
                pts = [
                    (it, h.value(per_iteration[it][bench][name]))
                    for it in iterations
                    if name in per_iteration[it].get(bench, {})
                ]
                pts = [(it, v) for it, v in pts if v is not None and math.isfinite(v)]
                if pts:
                    x, y = zip(*pts, strict=True)
                    ax.plot(x, y, marker="o", ms=4, lw=1, alpha=0.7, color=colors[name], label=name)
            mean = []
            for it in iterations:
                values = [h.value(m) for m in per_iteration[it].get(bench, {}).values()]
                values = [v for v in values if v is not None and math.isfinite(v)]
                if values:
                    mean.append((it, float(np.mean(values))))
            if mean:
                x, y = zip(*mean, strict=True)
                ax.plot(x, y, color="black", lw=2.2, ls="--", label="committee mean")
            ax.set_xlabel("iteration")
            ax.set_ylabel(h.label)
            ax.set_title(bench, fontsize=10)
            ax.set_xticks(iterations)
            ax.legend(fontsize=7)
        fig.suptitle("Benchmark headline metrics over iterations (points: committee members)", fontsize=11)
        fig.tight_layout()
        out["png"] = _save(fig, folder / "bench_iterations.png")
    return out


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
