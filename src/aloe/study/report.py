"""The study's report: metric by arm (mean +- std over committee members), learning curves, budgets, leakage, verdict.

Files of a study run folder::

    study_metrics.parquet   every metric of every benchmarked member: arm, committee, budget (structures, atoms),
                            member, benchmark, potential, metric, value
    study.md, study.html    per benchmark a table of headline metric by arm (final committees), the budgets, the
                            leakage check, the verdict, the figures (embedded in the HTML)
    study.csv               the same numbers in one wide table: one row per arm (final committee), mean and std
    figures/                ev_failure_by_arm.png, md_survival_by_arm.png, force_parity_by_arm.png,
                            learning_curves.png

The verdict is computed from the numbers: for each metric a benchmark is judged by
(:attr:`aloe.bench.base.Benchmark.VERDICT`), the arm with the best mean over its members, and whether its lead
over the next arm exceeds the spread between members (the larger of the two arms' standard deviations, ``ddof=1``).
A lead within the spread is reported as no clear lead, whichever arm it is.
"""

from __future__ import annotations

import base64
import html as html_lib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe import layout
from aloe.bench.base import Headline
from aloe.bench.md.benchmark import survival_auc, survival_from_shares
from aloe.bench.registry import BENCHMARKS
from aloe.bench.report._common import quiet, write_text
from aloe.bench.report.figures import save_figure
from aloe.bench.report.tables import csv_text, markdown_table

if TYPE_CHECKING:
    from aloe.study.stage import Committee, Study

#: Files of the report (in the study's run folder).
METRICS_FILE = layout.STUDY_METRICS
FIGURES = layout.FIGURES
#: Metrics drawn over the label budget for ``al`` and ``random``: (benchmark, metric).
CURVE_METRICS: tuple[tuple[str, str], ...] = (
    ("equilibrium", "e_coh_mae"),
    ("forces", "force_mae"),
    ("ev", "failure_rate"),
    ("md", "npt_completed_share_mean"),
)
ARM_COLORS = {"al": "#c44e52", "random": "#8c8c8c", "near-eq": "#4c72b0", "combined": "#55a868"}


# ---- numbers --------------------------------------------------------------------------------------------------------
def study_rows(
    work: Study, benched: Sequence[Committee], budgets: Mapping[tuple[str, int], Mapping[str, int]]
) -> list[dict[str, Any]]:
    """Every metric of every benchmarked member, with its arm, committee and the committee's label budget."""
    rows: list[dict[str, Any]] = []
    for c in benched:
        budget = budgets[(c.arm, c.index)]
        for r in layout.bench_metrics(work.bench_dir(c)).to_pylist():
            rows.append(
                {
                    "arm": c.arm,
                    "committee": c.index,
                    "budget_structures": budget["structures"],
                    "budget_atoms": budget["atoms"],
                    **{k: r[k] for k in ("member", "benchmark", "potential", "metric", "value")},
                }
            )
    return rows


def member_values(
    rows: Sequence[Mapping[str, Any]], arm: str, committee: int, bench: str, metric: str
) -> np.ndarray:
    """The finite values of one metric over the members of one committee."""
    values = [
        r["value"]
        for r in rows
        if r["arm"] == arm
        and r["committee"] == committee
        and r["benchmark"] == bench
        and r["metric"] == metric
    ]
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one member); ``None`` without values."""
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def _shown(head: Headline, value: float | None) -> str:
    return "-" if value is None else head.fmt.format(value * head.scale)


def verdict(rows: Sequence[Mapping[str, Any]], finals: Mapping[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Per benchmark, per verdict metric: every arm's mean and std, the best arm, and whether its lead is clear.

    Parameters
    ----------
    rows
        :func:`study_rows`.
    finals
        Arm -> the index of its final committee.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for bench, cls in BENCHMARKS.items():
        heads = {h.key: h for h in cls.HEADLINES}
        for metric in cls.VERDICT:
            head = heads[metric]
            stats = {arm: mean_std(member_values(rows, arm, k, bench, metric)) for arm, k in finals.items()}
            ranked = sorted(
                ((arm, m, s) for arm, (m, s) in stats.items() if m is not None),
                key=lambda t: t[1] if head.better == "lower" else -t[1],
            )
            entry: dict[str, Any] = {
                "metric": metric,
                "label": head.label,
                "better": head.better,
                "arms": {arm: {"mean": m, "std": s} for arm, (m, s) in stats.items()},
            }
            if "al" in stats and stats["al"][0] is not None:
                entry["al_against"] = _against(head, stats, "al")
            if ranked:
                best, mean, std = ranked[0]
                entry["best"] = best
                entry["tied"] = [arm for arm, m, _ in ranked if m == mean]
                if len(ranked) > 1:
                    second, mean2, std2 = ranked[1]
                    lead, spread = abs(mean - mean2), max(std or 0.0, std2 or 0.0)
                    entry.update(runner_up=second, lead=lead, spread=spread, clear=bool(lead > spread))
                else:
                    entry.update(runner_up=None, lead=None, spread=std, clear=False)
            out.setdefault(bench, []).append(entry)
    return out


def _against(
    head: Headline, stats: Mapping[str, tuple[float | None, float | None]], arm: str
) -> dict[str, Any]:
    """``arm`` against every other arm.

    The difference of the means (positive: ``arm`` is better) and whether it exceeds the spread (the larger
    standard deviation of the two).
    """
    mean, std = stats[arm]
    out = {}
    for other, (m, s) in stats.items():
        if other == arm or m is None:
            continue
        gain = (m - mean) if head.better == "lower" else (mean - m)
        spread = max(std or 0.0, s or 0.0)
        out[other] = {"gain": gain, "spread": spread, "clear": bool(abs(gain) > spread)}
    return out


def al_summary(found: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """Does ``al`` win? Against each other arm: on how many verdict metrics it is clearly better or worse."""
    tally: dict[str, dict[str, list[str]]] = {}
    for bench, entries in found.items():
        for e in entries:
            for other, pair in (e.get("al_against") or {}).items():
                kind = ("better" if pair["gain"] > 0 else "worse") if pair["clear"] else "within the spread"
                tally.setdefault(other, {}).setdefault(kind, []).append(f"{bench} {e['label']}")
    lines = []
    for other, kinds in tally.items():
        parts = [
            f"clearly {kind} on {len(kinds[kind])} ({', '.join(kinds[kind])})"
            if kind != "within the spread"
            else f"within the spread on {len(kinds[kind])}"
            for kind in ("better", "worse", "within the spread")
            if kind in kinds
        ]
        lines.append(f"- al against {other}: " + "; ".join(parts) + ".")
    return lines


def verdict_lines(found: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """The verdict in words, one line per metric."""
    lines = []
    for bench, entries in found.items():
        for e in entries:
            head = next(h for h in BENCHMARKS[bench].HEADLINES if h.key == e["metric"])
            if "best" not in e:
                lines.append(f"- {bench}, {e['label']}: no values.")
                continue
            best = e["arms"][e["best"]]
            if len(e.get("tied", [])) > 1:
                tied = ", ".join(e["tied"])
                lines.append(f"- {bench}, {e['label']}: {tied} tie at {_shown(head, best['mean'])}: no lead.")
                continue
            text = f"- {bench}, {e['label']} ({e['better']} is better): best **{e['best']}** ({_shown(head, best['mean'])})"
            if e["runner_up"] is None:
                lines.append(text + ", the only arm with values.")
                continue
            second = e["arms"][e["runner_up"]]
            lead = f"lead {_shown(head, e['lead'])} over {e['runner_up']} ({_shown(head, second['mean'])})"
            spread = f"spread between members {_shown(head, e['spread'])}"
            lines.append(
                f"{text}; {lead}, {spread}: " + ("a clear lead." if e["clear"] else "**no clear lead**.")
            )
    return lines


# ---- figures -------------------------------------------------------------------------------------------------------
def _figure_ev(rows: Sequence[Mapping[str, Any]], finals: Mapping[str, int], folder: Path) -> Path | None:
    from aloe.plotting import pyplot

    plt = pyplot()
    arms = [a for a in finals if member_values(rows, a, finals[a], "ev", "failure_rate").size]
    if not arms:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = np.arange(len(arms))
    for offset, metric, label in (
        (-0.2, "failure_rate", "failure (>1 flip)"),
        (0.2, "no_minimum_rate", "no minimum"),
    ):
        stats = [mean_std(member_values(rows, a, finals[a], "ev", metric)) for a in arms]
        means = [100 * (m or 0.0) for m, _ in stats]
        stds = [100 * (s or 0.0) for _, s in stats]
        ax.bar(
            x + offset,
            means,
            0.38,
            yerr=stds,
            capsize=3,
            label=label,
            color=[ARM_COLORS.get(a, "#777777") for a in arms],
            alpha=1.0 if offset < 0 else 0.45,
        )
    ax.set_xticks(x, arms)
    ax.set_ylabel("EV scans (%) , mean +- std over members")
    ax.set_title("EV scan failures by arm (final committees)", fontsize=11)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, folder / "ev_failure_by_arm.png")


def _member_rows(work: Study, committee: Committee, bench: str) -> list[dict[str, Any]]:
    path = layout.bench_table_path(work.bench_dir(committee), bench)
    if not path.exists():
        return []
    return [r for r in layout.bench_table(work.bench_dir(committee), bench).to_pylist() if not r.get("error")]


def _figure_md(work: Study, finals: Mapping[str, Committee], folder: Path) -> Path | None:
    from aloe.bench.md.settings import ENSEMBLES
    from aloe.plotting import note, pyplot

    plt = pyplot()
    rows = {arm: _member_rows(work, c, "md") for arm, c in finals.items()}
    if not any(rows.values()):
        return None
    fig, axes = plt.subplots(1, len(ENSEMBLES), figsize=(5.6 * len(ENSEMBLES), 4.2), squeeze=False)
    for ax, ens in zip(axes[0], ENSEMBLES, strict=True):
        text = []
        for arm, arm_rows in rows.items():
            shares = [
                r[f"{ens}_completed_share"] for r in arm_rows if r.get(f"{ens}_completed_share") is not None
            ]
            if not shares:
                continue
            t, alive = survival_from_shares(shares)
            ax.step(t, alive, where="post", color=ARM_COLORS.get(arm, "#777777"), lw=1.8, label=arm)
            text.append(f"{arm}: AUC {survival_auc(t, alive):.3f} (n {len(shares)})")
        note(ax, "\n".join(text), loc="lower left")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("fraction of the scheduled run")
        ax.set_ylabel("share of runs still valid (all members)")
        ax.set_title(f"MD {ens.upper()}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle("MD stability by arm (final committees, every member's runs)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, folder / "md_survival_by_arm.png")


def _figure_forces(work: Study, finals: Mapping[str, Committee], folder: Path) -> Path | None:
    from aloe.plotting import note, pyplot

    plt = pyplot()
    data = {}
    for arm, c in finals.items():
        ref = np.array([v for r in _member_rows(work, c, "forces") for v in r["forces_ref"]], dtype=float)
        pred = np.array([v for r in _member_rows(work, c, "forces") for v in r["forces_pred"]], dtype=float)
        if ref.size:
            data[arm] = (ref, pred)
    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 4.4), squeeze=False)
    lo = min(min(r.min(), p.min()) for r, p in data.values())
    hi = max(max(r.max(), p.max()) for r, p in data.values())
    for ax, (arm, (ref, pred)) in zip(axes[0], data.items(), strict=True):
        stride = max(1, ref.size // 20000)
        ax.scatter(
            ref[::stride],
            pred[::stride],
            s=3,
            alpha=0.4,
            lw=0,
            color=ARM_COLORS.get(arm, "#777777"),
            rasterized=True,
        )
        ax.plot([lo, hi], [lo, hi], color="#888888", lw=1)
        slope = float(np.dot(ref, pred) / np.dot(ref, ref)) if np.dot(ref, ref) > 0 else float("nan")
        note(ax, f"MAE {1000 * np.mean(np.abs(pred - ref)):.0f} meV/A\nslope {slope:.3f}", loc="lower right")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(arm, fontsize=10)
        ax.set_xlabel("reference force (eV/A)")
        ax.set_ylabel("predicted force (eV/A)")
    fig.suptitle("Off-equilibrium forces by arm (all members of the final committee)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, folder / "force_parity_by_arm.png")


def learning_curve(
    rows: Sequence[Mapping[str, Any]], arm: str, bench: str, metric: str
) -> list[tuple[int, float, float]]:
    """``(budget, mean, std)`` of one metric over an arm's committees, in budget order."""
    committees = sorted({(r["committee"], r["budget_structures"]) for r in rows if r["arm"] == arm})
    out = []
    for k, budget in committees:
        m, s = mean_std(member_values(rows, arm, k, bench, metric))
        if m is not None:
            out.append((int(budget), m, s or 0.0))
    return out


def _figure_curves(rows: Sequence[Mapping[str, Any]], folder: Path) -> Path | None:
    from aloe.plotting import pyplot

    plt = pyplot()
    panels = [
        (b, m) for b, m in CURVE_METRICS if any(learning_curve(rows, a, b, m) for a in ("al", "random"))
    ]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    for ax, (bench, metric) in zip(axes[0], panels, strict=True):
        head = next(h for h in BENCHMARKS[bench].HEADLINES if h.key == metric)
        for arm in ("al", "random"):
            curve = learning_curve(rows, arm, bench, metric)
            if curve:
                x, m, s = (np.array(v, dtype=float) for v in zip(*curve, strict=True))
                ax.errorbar(
                    x,
                    m * head.scale,
                    yerr=s * head.scale,
                    marker="o",
                    ms=4,
                    capsize=3,
                    color=ARM_COLORS[arm],
                    label=arm,
                )
        ax.set_xlabel("labelled structures")
        ax.set_ylabel(head.label)
        ax.set_title(bench, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Learning curves: al against random at the same budget (mean +- std over members)", fontsize=11
    )
    fig.tight_layout()
    return save_figure(fig, folder / "learning_curves.png")


# ---- the report -----------------------------------------------------------------------------------------------------
def write_study_report(
    work: Study,
    benched: Sequence[Committee],
    finals: Mapping[str, Committee],
    budgets: Mapping[tuple[str, int], Mapping[str, int]],
    leakage: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the study's tables, figures and pages (see the module docstring); returns paths and the verdict."""
    path = work.path
    rows = study_rows(work, benched, budgets)
    # random's curve starts where al's does: both arms' first committee is the seed set's
    if "al" in finals and "random" in finals:
        rows += [{**r, "arm": "random"} for r in rows if r["arm"] == "al" and r["committee"] == 0]
    _write_rows(rows, path / METRICS_FILE)
    final_index = {arm: c.index for arm, c in finals.items()}
    found = verdict(rows, final_index)

    lines = [f"# Study: {', '.join(work.settings.arms)} on {'-'.join(work.settings.elements)}", ""]
    labeler = work.settings.label.get("labeler", "emt")
    lines += [
        f"Ground truth: {labeler}. Every arm labelled by it; committees of "
        f"{work.settings.train.get('committee_size', 3)} members trained with the same preset, epochs and seeds. "
        "Numbers are mean +- std (ddof 1) over the members of each arm's final committee.",
        "",
        "## Budgets",
        "",
    ]
    budget_rows = [
        [arm, str(c.index), str(budgets[(arm, c.index)]["structures"]), str(budgets[(arm, c.index)]["atoms"])]
        for arm, c in finals.items()
    ]
    lines += [
        *markdown_table(["arm", "final committee", "labelled structures", "labelled atoms"], budget_rows),
        "",
    ]
    lines += [
        "## Leakage check",
        "",
        f"{leakage['test_structures']} test structures compared with {leakage['training_structures']} training "
        f"structures of every arm (pymatgen StructureMatcher, same reduced formula): {leakage['matched']} matched, "
        f"{leakage['dropped']} dropped (with their supercells), {leakage['kept']} kept in the held-out set.",
        "",
        "## Verdict",
        "",
        "Per metric, the arm with the best mean over its members, and whether its lead over the next arm exceeds "
        "the spread between members:",
        "",
        *verdict_lines(found),
        "",
        "Does active learning win? `al` against each other arm, over the same metrics (clearly: the difference of "
        "the means exceeds the spread between members):",
        "",
        *al_summary(found),
        "",
    ]
    csv_header = ["arm", "committee", "budget_structures", "budget_atoms"]
    csv_rows: dict[str, list[Any]] = {
        arm: [arm, c.index, budgets[(arm, c.index)]["structures"], budgets[(arm, c.index)]["atoms"]]
        for arm, c in finals.items()
    }
    for bench, cls in BENCHMARKS.items():
        heads = [h for h in cls.HEADLINES if h.key not in ("n",)]
        table = []
        for arm, k in final_index.items():
            cells = [arm]
            for h in heads:
                m, s = mean_std(member_values(rows, arm, k, bench, h.key))
                cells.append("-" if m is None else f"{_shown(h, m)} +- {_shown(h, s)}")
                csv_rows[arm] += [None if m is None else m * h.scale, None if s is None else s * h.scale]
            table.append(cells)
        csv_header += [f"{bench}: {h.label} {part}" for h in heads for part in ("mean", "std")]
        lines += [f"## {bench}", "", *markdown_table(["arm", *(h.label for h in heads)], table), ""]
    figures_dir = path / FIGURES
    with quiet():
        figures = [
            f
            for f in (
                _figure_ev(rows, final_index, figures_dir),
                _figure_md(work, finals, figures_dir),
                _figure_forces(work, finals, figures_dir),
                _figure_curves(rows, figures_dir),
            )
            if f is not None
        ]
    if figures:
        lines += ["## Figures", "", *[f"![{f.stem}]({f.relative_to(path).as_posix()})" for f in figures], ""]
    md = write_text(path / "study.md", "\n".join(lines) + "\n")
    csv = write_text(path / "study.csv", csv_text(csv_header, list(csv_rows.values())))
    page = write_text(path / "study.html", _html("\n".join(lines), figures, path))
    return {
        "paths": {"md": md, "csv": csv, "html": page, "metrics": path / METRICS_FILE, "figures": figures},
        "verdict": found,
    }


def _write_rows(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aloe.runs import atomic_path

    schema = pa.schema(
        [
            ("arm", pa.string()),
            ("committee", pa.int64()),
            ("budget_structures", pa.int64()),
            ("budget_atoms", pa.int64()),
            ("member", pa.int64()),
            ("benchmark", pa.string()),
            ("potential", pa.string()),
            ("metric", pa.string()),
            ("value", pa.float64()),
        ],
        metadata={"aloe.kind": "study-metrics"},
    )
    with atomic_path(path) as tmp:
        pq.write_table(
            pa.Table.from_pylist([dict(r) for r in rows], schema=schema), str(tmp), compression="zstd"
        )


def _html(markdown: str, figures: Sequence[Path], root: Path) -> str:
    """A self-contained page: the Markdown's text (tables as tables) and the figures embedded."""
    e = html_lib.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>aloe study</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
    ]
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            out.append("<table>")
            for k, cells in enumerate(table):
                if k == 1:
                    continue  # the Markdown alignment row
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{e(c.strip())}</{tag}>" for c in cells) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line.strip("|").split("|"))
            continue
        flush()
        if line.startswith("!["):
            continue
        if line.startswith("# "):
            out.append(f"<h1>{e(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{e(line[3:])}</h2>")
        elif line.startswith("- "):
            out.append(f"<p>{e(line[2:]).replace('**', '')}</p>")
        elif line.strip():
            out.append(f"<p>{e(line)}</p>")
    flush()
    for f in figures:
        data = base64.b64encode(f.read_bytes()).decode("ascii")
        out.append(f"<img alt='{e(f.stem)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


__all__ = [
    "al_summary",
    "learning_curve",
    "mean_std",
    "study_rows",
    "verdict",
    "verdict_lines",
    "write_study_report",
]
