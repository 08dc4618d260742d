"""PNG plots of a screen run: disagreement histograms against thresholds, selection rate per element."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aloe.plotting import pyplot

UNITS = {"energy": "eV/atom", "force": "eV/Å", "stress": "eV/Å³"}


def plot_disagreements(
    disagreements: dict[str, np.ndarray],
    factor: np.ndarray,
    thresholds: dict[str, float],
    eligible: np.ndarray,
    counts: dict[str, int],
    path: Path,
    committee: list[str],
) -> None:
    """Three histograms of disagreement / per-structure factor, with the base threshold as a line.

    Dividing by the factor puts every structure on the scale of the base threshold, so one line marks the
    selection boundary for all of them. Only the structures that passed the discard filters compete for
    selection (``eligible``: selected or rejected); those are plotted. ``counts``: structures per outcome.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    factor = factor[eligible]  # one copy for the three panels
    for ax, (name, values) in zip(axes, disagreements.items(), strict=True):
        scaled = values[eligible]
        scaled /= factor
        finite = scaled[np.isfinite(scaled) & (scaled > 0)]
        del scaled
        limit = thresholds[name]
        if len(finite):
            lo, hi = min(finite.min(), limit) / 1.5, max(finite.max(), limit) * 1.5
            bins = np.logspace(np.log10(lo), np.log10(hi), 50)
            ax.hist(finite, bins=bins, color="#4c72b0", alpha=0.85)
            ax.set_xscale("log")
        ax.axvline(limit, color="#c44e52", lw=2, label=f"threshold {limit:g} {UNITS[name]}")
        above = int((finite > limit).sum())
        text = (
            f"n = {len(finite)}\nabove threshold: {above} ({above / max(len(finite), 1):.1%})\n"
            f"median: {np.median(finite) if len(finite) else float('nan'):.3g}"
        )
        ax.text(
            0.98,
            0.97,
            text,
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
        )
        ax.set_xlabel(f"{name} disagreement / threshold factor ({UNITS[name]})")
        ax.set_ylabel("structures")
        ax.legend(loc="upper left", fontsize=8)
    counts = {k: counts.get(k, 0) for k in ("selected", "rejected", "discarded", "failed", "overlap")}
    fig.suptitle(
        f"Committee disagreement ({', '.join(committee)})   "
        + "  ".join(f"{k}: {v}" for k, v in counts.items()),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_selection_by_element(rates: dict[str, dict[str, Any]], path: Path) -> None:
    """Bar chart of the selection rate of structures containing each element (Z order)."""
    plt = pyplot()
    symbols = list(rates)
    values = [rates[s]["rate"] for s in symbols]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(symbols) + 2), 3.8))
    ax.bar(range(len(symbols)), values, color="#55a868")
    ax.set_xticks(range(len(symbols)), symbols, rotation=90 if len(symbols) > 20 else 0, fontsize=8)
    ax.set_ylabel("selected / evaluated")
    ax.set_ylim(0, max([*values, 0.01]) * 1.25)
    for k, s in enumerate(symbols):
        if len(symbols) <= 30:
            ax.text(
                k,
                values[k],
                f"{rates[s]['selected']}/{rates[s]['evaluated']}",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90 if len(symbols) > 12 else 0,
            )
    ax.set_title("Selection rate by element")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
