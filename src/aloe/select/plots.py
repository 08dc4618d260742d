"""PNG plots of a select run: all versus selected structures in the first two principal components; cluster sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aloe.plotting import note, pyplot
from aloe.select.direct import DirectResult


def plot_pca(result: DirectResult, selected: np.ndarray, path: Path, encoder: str = "") -> None:
    """Scatter of every clustered structure (grey) and the selected ones (colour) on PC1/PC2, with counts beside.

    Parameters
    ----------
    result
        The DIRECT result.
    selected
        Shape ``(n,)`` bool.
    path
        PNG file to write.
    encoder
        Shown in the title.
    """
    plt = pyplot()
    ok = result.status == "ok"
    scores = result.scores
    x = scores[:, 0]
    y = scores[:, 1] if scores.shape[1] > 1 else np.zeros(len(x))
    fig, ax = plt.subplots(figsize=(7.5, 6))
    # Large sets: small rasterised markers keep the PNG readable and the file small.
    size = 4 if ok.sum() > 20_000 else 10
    ax.scatter(x[ok & ~selected], y[ok & ~selected], s=size, c="#b0b0b0", lw=0, label="all", rasterized=True)
    ax.scatter(x[selected], y[selected], s=size * 1.6, c="#c44e52", lw=0, label="selected", rasterized=True)
    evr = result.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({evr[0]:.1%} of variance)" if len(evr) else "PC1")
    ax.set_ylabel(f"PC2 ({evr[1]:.1%} of variance)" if len(evr) > 1 else "PC2 (none)")
    weighted = " (scores x explained-variance ratio)" if len(evr) else ""
    ax.set_title(f"DIRECT in principal components{weighted}\n{encoder}", fontsize=10)
    ax.legend(loc="lower right", markerscale=3)
    kept = float(evr[: result.n_components].sum()) if len(evr) else 0.0
    note(
        ax,
        f"structures {int(ok.sum()):,}\nselected   {int(selected.sum()):,}\nclusters   {result.n_clusters:,}\n"
        f"components {result.n_components} ({kept:.1%})",
        loc="upper left",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_cluster_sizes(result: DirectResult, path: Path, k: int) -> None:
    """Histogram of cluster sizes (log axes), with ``k`` marked: clusters left of it are taken whole."""
    plt = pyplot()
    sizes = result.cluster_sizes
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = max(int(sizes.max()), 1)
    # Edges at half-integers: every bar holds whole cluster sizes (one size per bar where sizes are small).
    edges = np.unique(np.round(np.logspace(0, np.log10(top + 1), 40)).astype(int)) - 0.5
    if len(edges) < 2:
        edges = np.array([0.5, 1.5])
    ax.hist(sizes, bins=edges, color="#4c72b0", alpha=0.9, edgecolor="white")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(k + 0.5, color="#c44e52", lw=2, label=f"k = {k}: smaller clusters taken whole")
    ax.set_xlabel("structures in the cluster")
    ax.set_ylabel("clusters")
    ax.legend(loc="lower left")
    whole = int((sizes <= k).sum())
    note(
        ax,
        f"clusters {len(sizes):,}\nmedian   {np.median(sizes):g}\nmax      {int(sizes.max()):,}\n"
        f"<= k     {whole:,} ({whole / max(len(sizes), 1):.0%})",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
