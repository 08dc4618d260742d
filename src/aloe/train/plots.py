"""Parity plots of a trained member on its test set: energy per atom, force components, stress components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aloe.plotting import note, pyplot


def plot_parity(pred: dict[str, Any], errors: dict[str, Any], path: Path, title: str) -> None:
    """One figure, three panels (reference on x, model on y), MAE/RMSE beside each.

    Parameters
    ----------
    pred
        :func:`aloe.train.stage.load_predictions` output: ``e_ref``/``e_pred`` (eV/atom), ``f_ref``/``f_pred``
        (eV/A, flat components), ``s_ref``/``s_pred`` (GPa, VASP sign, flat components).
    errors
        The member's error row (meV/atom, meV/A, GPa).
    path
        PNG file to write.
    title
        Figure title.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    panels = [
        ("e", "energy (eV/atom)", "energy", "meV/atom"),
        ("f", "force components (eV/A)", "forces", "meV/A"),
        ("s", "stress components (GPa, compressive +)", "stress", "GPa"),
    ]
    for ax, (key, label, name, unit) in zip(axes, panels, strict=True):
        ref = np.asarray(pred[f"{key}_ref"], dtype=float)
        out = np.asarray(pred[f"{key}_pred"], dtype=float)
        ok = np.isfinite(ref) & np.isfinite(out)
        ref, out = ref[ok], out[ok]
        if len(ref):
            lo = float(min(ref.min(), out.min()))
            hi = float(max(ref.max(), out.max()))
            pad = 0.05 * (hi - lo) if hi > lo else 1.0
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=1, zorder=0)
            ax.scatter(ref, out, s=8 if len(ref) < 5000 else 3, alpha=0.7, lw=0, rasterized=True)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"model {label}")
        ax.set_aspect("equal", adjustable="box")
        mae = errors.get(f"{name}_mae")
        rmse = errors.get(f"{name}_rmse")
        text = f"n    {len(ref):,}\nMAE  {_fmt(mae)} {unit}\nRMSE {_fmt(rmse)} {unit}"
        note(ax, text, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.4g}"
