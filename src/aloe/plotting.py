"""Matplotlib without a display (every stage saves PNG files)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: importing aloe stays fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def note(ax: Any, text: str, loc: str = "upper right") -> None:
    """Numbers beside a plot: a text box in a corner of ``ax``."""
    x, ha = (0.98, "right") if loc.endswith("right") else (0.02, "left")
    y, va = (0.97, "top") if loc.startswith("upper") else (0.03, "bottom")
    ax.text(
        x,
        y,
        text,
        transform=ax.transAxes,
        ha=ha,
        va=va,
        fontsize=9,
        family="monospace",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "#999999"},
    )
