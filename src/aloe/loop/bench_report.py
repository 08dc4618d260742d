"""The benchmarks of the active-learning loop's committees, followed over iterations.

The loop benchmarks each iteration's committee (iteration 0 is the pretrained committee) and calls
:func:`write_bench_iterations` with their metrics: one table per benchmark, a wide CSV and one panel per headline
metric (:data:`ITERATION_METRICS`). The headlines, their units and formats are the benchmark report's
(:data:`aloe.bench.report.HEADLINES`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aloe.bench.report._common import potentials_of, quiet, report_order, write_text
from aloe.bench.report.figures import potential_colors, save_figure
from aloe.bench.report.tables import HEADLINES, Headline, csv_text, csv_value, headlines_of, markdown_table
from aloe.plotting import pyplot


def _headline(bench: str, key: str) -> Headline:
    return next(h for h in HEADLINES[bench] if key in h.keys)


#: Metrics drawn over iterations by :func:`write_bench_iterations` (those present).
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


def _iteration_columns(
    per_iteration: Mapping[int, Mapping[str, Mapping[str, Mapping[str, Any]]]],
) -> dict[str, list[Headline]]:
    """Headlines of each benchmark present in any iteration."""
    merged: dict[str, dict[str, Mapping[str, Any]]] = {}
    for it in sorted(per_iteration):
        for bench, by_potential in per_iteration[it].items():
            for name, m in by_potential.items():
                merged.setdefault(bench, {})[f"{it}/{name}"] = m
    return {bench: headlines_of(bench, merged[bench]) for bench in report_order(list(merged))}


def write_bench_iterations(
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
            names.update(dict.fromkeys(potentials_of(per_iteration[it].get(bench, {}))))
        pairs += [(it, n) for n in names]

    first = (
        "Iteration 0 is the first committee (pretrained, or trained on the seed dataset); iteration k > 0 is "
        "the one trained in iteration k - 1."
    )
    lines = ["# Benchmarks over iterations", "", first, ""]
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
            *markdown_table(["iteration", "potential"] + [h.label for h in hs], rows),
            "",
        ]
    header = ["iteration", "potential"] + [f"{b}: {h.label}" for b, hs in heads.items() for h in hs]
    csv_rows = []
    for it, name in pairs:
        row: list[Any] = [it, name]
        for bench, hs in heads.items():
            m = per_iteration[it].get(bench, {}).get(name)
            row += [None if m is None else csv_value(h, h.value(m)) for h in hs]
        csv_rows.append(row)
    out: dict[str, Path] = {
        "md": write_text(folder / "bench_iterations.md", "\n".join(lines) + "\n"),
        "csv": write_text(folder / "bench_iterations.csv", csv_text(header, csv_rows)),
    }

    panels = [
        (bench, h)
        for bench, h in ITERATION_METRICS
        if any(h.value(m) is not None for it in iterations for m in per_iteration[it].get(bench, {}).values())
    ]
    if not panels:
        return out
    with quiet():
        plt = pyplot()
        names = list(dict.fromkeys(n for _, n in pairs))
        colors = potential_colors(names)
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
        out["png"] = save_figure(fig, folder / "bench_iterations.png")
    return out


__all__ = ["ITERATION_METRICS", "write_bench_iterations"]
