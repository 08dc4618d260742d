"""PNG figures of each benchmark: parity plots, histograms, E-V curves, survival curves and MD speed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aloe.bench.md.benchmark import survival_auc, survival_from_shares
from aloe.bench.md.settings import ENSEMBLES
from aloe.bench.registry import BENCHMARKS
from aloe.bench.report._common import as_float, potentials_of, quiet, report_order
from aloe.layout import FIGURES
from aloe.plotting import note, pyplot
from aloe.runs import atomic_path

#: Most force components drawn per potential in the parity plot (evenly strided; the metrics use all of them).
MAX_PARITY_POINTS = 40_000
#: Line styles of overlapping curves (one per potential, in turn).
LINE_STYLES = ("-", "--", ":", "-.")
#: Passing E-V curves drawn per potential beside the failures.
EV_PASSES_SHOWN = 4
#: Failed (or no-minimum) E-V curves drawn per potential, at most.
EV_FAILURES_SHOWN = 12


def _ok(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if not r.get("error")]


def _finite_pairs(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (x, y) pairs of two scalar columns over rows that have both."""
    xs, ys = [], []
    for r in rows:
        a, b = as_float(r.get(x)), as_float(r.get(y))
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            xs.append(a)
            ys.append(b)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _fmt(value: float | None, spec: str = "{:.3g}") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return spec.format(value)


def potential_colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per potential, the same in every figure."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(k % cmap.N) for k, name in enumerate(names)}


def save_figure(fig: Any, path: Path) -> Path:
    """Save a figure atomically as PNG and close it."""
    plt = pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def _parity_limits(ax: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    lo = float(min(x.min(), y.min()))
    hi = float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    return lo - pad, hi + pad


def _finish_parity(fig: Any, ax: Any, numbers: str, labels: tuple[str, str], title: str, path: Path) -> Path:
    """Numbers beside a parity plot (lower right), axis labels, legend, title; saved to ``path``."""
    note(ax, numbers, loc="lower right")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def equilibrium_figures(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]], folder: Path, colors: dict
) -> list[Path]:
    """``equilibrium_parity.png`` and ``equilibrium_fingerprint.png`` (see :func:`write_figures`)."""
    plt = pyplot()
    ok = _ok(rows)
    names = potentials_of(None, ok)
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
            mae = as_float(m.get("e_coh_mae")) if "e_coh_mae" in m else float(np.mean(np.abs(err)))
            std = as_float(m.get("e_coh_std")) if "e_coh_std" in m else float(np.std(err))
            text.append(
                f"{name}: MAE {_fmt(_scale(mae, 1000), '{:.1f}')}  std {_fmt(_scale(std, 1000), '{:.1f}')}"
            )
        out.append(
            _finish_parity(
                fig,
                ax,
                "meV/atom\n" + "\n".join(text),
                ("reference cohesive energy (eV/atom)", "predicted cohesive energy (eV/atom)"),
                "Equilibrium: cohesive energy parity",
                folder / "equilibrium_parity.png",
            )
        )

    distances = {}
    for name in names:
        values = [as_float(r.get("fingerprint_distance")) for r in ok if str(r.get("potential")) == name]
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
        out.append(save_figure(fig, folder / "equilibrium_fingerprint.png"))
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


def forces_figures(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]], folder: Path, colors: dict
) -> list[Path]:
    """``forces_parity.png`` (see :func:`write_figures`)."""
    plt = pyplot()
    ok = _ok(rows)
    data = {
        n: _flat([r for r in ok if str(r.get("potential")) == n], "forces_ref", "forces_pred")
        for n in potentials_of(None, ok)
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
        slope = as_float(m.get("softening_slope"))
        if slope is None:
            denom = float(np.dot(x, x))
            slope = float(np.dot(x, y) / denom) if denom > 0 else float("nan")
        mae = as_float(m.get("force_mae"))
        mae = float(np.mean(np.abs(y - x))) if mae is None else mae
        rmse = as_float(m.get("force_rmse"))
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
    return [
        _finish_parity(
            fig,
            ax,
            "meV/A\n" + "\n".join(text),
            ("reference force component (eV/A)", "predicted force component (eV/A)"),
            "Off-equilibrium forces: parity and softening",
            folder / "forces_parity.png",
        )
    ]


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


def ev_figures(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]], folder: Path, colors: dict
) -> list[Path]:
    """``ev_curves.png`` (see :func:`write_figures`; ``metrics`` and ``colors`` are not used)."""
    plt = pyplot()
    ok = _ok(rows)
    names = [
        n for n in potentials_of(None, ok) if any(_ev_curve(r) for r in ok if str(r.get("potential")) == n)
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
    return [save_figure(fig, folder / "ev_curves.png")]


def md_figures(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]], folder: Path, colors: dict
) -> list[Path]:
    """``md_survival.png`` and ``md_speed.png`` (see :func:`write_figures`)."""
    plt = pyplot()
    ok = _ok(rows)
    names = potentials_of(None, ok)
    out: list[Path] = []

    def shares(name: str, ens: str) -> np.ndarray:
        values = [as_float(r.get(f"{ens}_completed_share")) for r in ok if str(r.get("potential")) == name]
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
                auc = as_float(metrics.get(name, {}).get(f"{ens}_survival_auc"))
                auc = survival_auc(t, alive) if auc is None else auc
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
        out.append(save_figure(fig, folder / "md_survival.png"))

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
        out.append(save_figure(fig, folder / "md_speed.png"))
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
    Which figures a benchmark has is its class's :meth:`~aloe.bench.base.Benchmark.figures` (the functions here);
    benchmarks outside :data:`aloe.bench.registry.BENCHMARKS` get none.
    """
    folder = Path(folder) / FIGURES
    names: list[str] = []
    for bench in report_order(list(rows_by_bench)):
        names += [n for n in potentials_of(metrics.get(bench), rows_by_bench[bench]) if n not in names]
    out: list[Path] = []
    with quiet():
        colors = potential_colors(names)
        for bench in report_order(list(rows_by_bench)):
            rows = rows_by_bench[bench]
            m = metrics.get(bench, {})
            if not _ok(rows) or bench not in BENCHMARKS:
                continue
            out += BENCHMARKS[bench].figures(rows, m, folder, colors)  # each benchmark draws its own
    return out
