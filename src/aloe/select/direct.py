"""DIRECT sampling (DImensionality REduction, Clustering, sTratified sampling) over a feature matrix.

The steps, as MP-ALOE ran them (maml's ``DIRECTSampler`` with ``BirchClustering(threshold_init=0.1)`` and
``SelectKFromClusters(k=5)``), each a field of :class:`~aloe.select.settings.DirectSettings`:

1. ``StandardScaler`` on the features;
2. ``PCA`` with all components; keep those whose explained variance exceeds 1 (Kaiser's rule);
3. multiply each kept component's scores by its explained-variance ratio;
4. ``Birch(n_clusters=None, threshold=0.1)``; every structure belongs to its nearest subcluster centre;
5. in each cluster sort the members by distance to the centre and take ranks ``int(linspace(0, n - 1, k))``,
   ``k = 5``: clusters of at most ``k`` members are taken whole; a structure picked twice counts once.

scikit-learn does steps 1, 2 and the BIRCH tree of step 4 (the same calls maml makes, so the same numbers). aloe's
own parts are what made maml slow on large sets, with the result unchanged:

- maml labels the points twice (``Birch.fit`` labels them, then ``predict`` does it again), each time comparing
  every point with every subcluster centre (``O(N x subclusters)``; with threshold 0.1 there are nearly as many
  subclusters as points). aloe builds the tree without labels and finds each point's nearest centre with a KD-tree
  (``scipy.spatial.cKDTree``); the few points whose two nearest centres are equally far up to round-off are
  labelled with scikit-learn's own ``pairwise_distances_argmin``, exactly as ``Birch.predict`` would.
- maml loops over clusters with a full scan of the labels per cluster (``O(N x clusters)``); aloe sorts once by
  (cluster, distance) and reads the ranks off. Ties in distance inside a cluster (identical features) are resolved
  per cluster with the same ``argpartition`` call maml makes, so even then the picks agree.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from aloe.errors import AloeError
from aloe.select.settings import DirectSettings

log = logging.getLogger(__name__)

#: Row status values in :attr:`DirectResult.status`.
STATUS_OK = "ok"
STATUS_ENCODER_FAILED = "encoder_failed"
STATUS_NONFINITE = "nonfinite_features"


@dataclass
class DirectResult:
    """What DIRECT made of a feature matrix of ``n`` rows.

    Attributes
    ----------
    selected
        Shape ``(s,)`` int64, ascending: the selected rows.
    labels
        Shape ``(n,)`` int64: cluster of each row (``-1`` for rows left out, see :attr:`status`).
    scores
        Shape ``(n, m)`` float64: (weighted) principal-component scores, ``m`` kept components; NaN rows left out.
    distance
        Shape ``(n,)``: Euclidean distance to the row's cluster centre in score space (NaN if left out).
    rank
        Shape ``(n,)`` int64: rank of that distance inside the cluster (0 = closest; -1 if left out).
    centers
        Shape ``(c, m)``: cluster centres (``c`` clusters).
    cluster_sizes
        Shape ``(c,)`` int64.
    explained_variance
        Shape ``(p,)``: explained variance of every principal component (before choosing ``m``).
    explained_variance_ratio
        Shape ``(p,)``.
    n_components
        ``m``.
    status
        ``n`` strings: ``ok``, ``encoder_failed`` (all features non-finite), ``nonfinite_features``
        (some non-finite, with ``nonfinite='drop_rows'``).
    dropped_features
        Feature columns left out (constant columns stay; non-finite ones with ``nonfinite='drop_columns'``).
    notes
        Human-readable remarks on edge cases that changed the procedure (recorded in the run summary).
    """

    selected: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    distance: np.ndarray
    rank: np.ndarray
    centers: np.ndarray
    cluster_sizes: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    n_components: int
    status: np.ndarray
    dropped_features: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    birch_threshold: float = float("nan")

    @property
    def n_clusters(self) -> int:
        """Number of clusters."""
        return len(self.cluster_sizes)


def direct_select(
    features: np.ndarray,
    settings: DirectSettings | None = None,
    n_atoms: np.ndarray | None = None,
    row_names: list[str] | None = None,
) -> DirectResult:
    """Run DIRECT on ``features``.

    Parameters
    ----------
    features
        Shape ``(n, d)``: one feature vector per structure.
    settings
        DIRECT settings (MP-ALOE defaults when omitted).
    n_atoms
        Shape ``(n,)``: atom counts, needed by ``criterion='smallest'``.
    row_names
        Names of the rows for error messages (default ``row <i>``).

    Returns
    -------
    DirectResult
    """
    settings = settings or DirectSettings()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise AloeError(f"features must be a 2-D array (structures x features), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        raise AloeError("no structures to select from")
    if x.shape[1] == 0:
        raise AloeError("features have no columns")
    if settings.criterion == "smallest":
        if n_atoms is None or len(n_atoms) != n:
            raise AloeError("criterion 'smallest' needs the atom count of every structure")
    names = row_names or [f"row {i}" for i in range(n)]
    notes: list[str] = []

    # ---- rows and columns that cannot enter PCA ---------------------------------------------------------
    finite = np.isfinite(x)
    status = np.full(n, STATUS_OK, dtype=object)
    status[~finite.any(axis=1)] = STATUS_ENCODER_FAILED
    partial = finite.any(axis=1) & ~finite.all(axis=1)
    dropped: list[int] = []
    if partial.any():
        first = int(np.flatnonzero(partial)[0])
        bad_cols = np.flatnonzero(~finite[first])
        if settings.nonfinite == "error":
            raise AloeError(
                f"{names[first]}: feature(s) {bad_cols[:5].tolist()} are NaN/inf "
                f"({int(partial.sum())} structures have such features); set direct.nonfinite to "
                "'drop_columns' or 'drop_rows'"
            )
        if settings.nonfinite == "drop_rows":
            status[partial] = STATUS_NONFINITE
            notes.append(f"{int(partial.sum())} structures with NaN/inf features left out")
        else:
            keep_rows = status == STATUS_OK
            dropped = np.flatnonzero(~finite[keep_rows].all(axis=0)).tolist()
            notes.append(f"{len(dropped)} feature columns with NaN/inf values dropped")
    usable = np.flatnonzero(status == STATUS_OK)
    if len(usable) == 0:
        raise AloeError(f"none of the {n} structures has usable features")
    columns = np.setdiff1d(np.arange(x.shape[1]), dropped)
    if len(columns) == 0:
        raise AloeError("every feature column has NaN/inf values; nothing left to select on")
    # One float64 copy (never the caller's array): the scaler then works in place on it.
    xu = np.ascontiguousarray(x[np.ix_(usable, columns)]) if dropped or len(usable) < n else x.copy()

    scores, ev, evr, m = _principal_scores(xu, settings, notes)
    labels_u, centers, used_threshold = _cluster(scores, settings, notes)
    # A BIRCH subcluster can end up with no member once every point goes to its nearest centre; drop those
    # (the reference loops over the labels that occur, so they select nothing there either).
    occupied, labels_u = np.unique(labels_u, return_inverse=True)
    if len(occupied) < len(centers):
        notes.append(f"{len(centers) - len(occupied)} BIRCH subclusters without members dropped")
        centers = centers[occupied]
    labels_u = labels_u.astype(np.int64)
    distance_u = np.linalg.norm(scores - centers[labels_u], axis=1)
    rng = np.random.default_rng(settings.seed)
    picked, rank_u = _pick(
        labels_u, distance_u, len(centers), settings, n_atoms[usable] if n_atoms is not None else None, rng
    )

    if settings.max_selected is not None and len(picked) > settings.max_selected:
        picked = _budget(picked, labels_u, rank_u, len(centers), settings.max_selected)
        notes.append(f"labelling budget: kept {settings.max_selected} of the picks")
    labels = np.full(n, -1, dtype=np.int64)
    labels[usable] = labels_u
    distance = np.full(n, np.nan)
    distance[usable] = distance_u
    rank = np.full(n, -1, dtype=np.int64)
    rank[usable] = rank_u
    full_scores = np.full((n, m), np.nan)
    full_scores[usable] = scores
    return DirectResult(
        selected=np.sort(usable[picked]).astype(np.int64),
        labels=labels,
        scores=full_scores,
        distance=distance,
        rank=rank,
        centers=centers,
        cluster_sizes=np.bincount(labels_u, minlength=len(centers)).astype(np.int64),
        explained_variance=ev,
        explained_variance_ratio=evr,
        n_components=m,
        status=status,
        dropped_features=[int(c) for c in dropped],
        notes=notes,
        birch_threshold=used_threshold,
    )


# ---- steps ------------------------------------------------------------------------------------------------
def _principal_scores(
    x: np.ndarray, settings: DirectSettings, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scaled, projected and weighted scores ``(n, m)``, explained variance (ratio) of all components, ``m``."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    n = x.shape[0]
    if settings.scale:
        x = StandardScaler(copy=False).fit_transform(x)
    if n == 1:
        notes.append("a single structure: no principal components; it is selected")
        return np.zeros((1, 1)), np.zeros(1), np.zeros(1), 1
    total = float(np.var(x, axis=0, ddof=1).sum())
    if total == 0.0:
        notes.append("every feature is constant: the structures are indistinguishable, one cluster")
        return np.zeros((n, 1)), np.zeros(1), np.zeros(1), 1
    pca = PCA()
    pca.fit(x)
    ev = np.asarray(pca.explained_variance_, dtype=np.float64)
    evr = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
    if settings.components == "kaiser":
        m = int((ev > settings.kaiser_threshold).sum())
    elif settings.components == "variance":
        m = int(np.searchsorted(np.cumsum(evr), settings.explained_variance - 1e-12) + 1)
    else:
        m = int(settings.n_components or 1)
    m_max = len(ev)
    if m < 1:
        notes.append(
            f"no component has explained variance > {settings.kaiser_threshold} (largest {ev[0]:.3g}); kept one"
        )
        m = 1
    if m > m_max:
        notes.append(f"only {m_max} components exist; kept all")
        m = m_max
    # transform() after fit(), not fit_transform(): the same arithmetic as maml (fit_transform rounds differently).
    scores = pca.transform(x)[:, :m]
    if settings.weight_components:
        scores = scores * evr[:m]
    log.info("kept %d principal components explaining %.2f%% of the variance", m, 100 * evr[:m].sum())
    return np.ascontiguousarray(scores), ev, evr, m


def _cluster(
    scores: np.ndarray, settings: DirectSettings, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Cluster labels ``(n,)``, centres ``(c, m)`` and the BIRCH threshold used."""
    from sklearn.cluster import Birch

    n = scores.shape[0]
    threshold = settings.birch_threshold
    if n == 1:
        return np.zeros(1, dtype=np.int64), scores.copy(), threshold
    if settings.n_clusters is None:
        birch = Birch(
            n_clusters=None,
            threshold=threshold,
            branching_factor=settings.branching_factor,
            compute_labels=False,
        ).fit(scores)
        centers = np.asarray(birch.subcluster_centers_, dtype=np.float64)
        return nearest_center(scores, centers), centers, threshold

    target = settings.n_clusters
    if target > n:
        notes.append(f"n_clusters {target} > {n} structures: every structure is its own cluster")
        target = n
    for _ in range(100):
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # "fewer subclusters than n_clusters": handled by lowering the threshold
            birch = Birch(
                n_clusters=target,
                threshold=threshold,
                branching_factor=settings.branching_factor,
                compute_labels=False,
            ).fit(scores)
        n_sub = len(birch.subcluster_centers_)
        if n_sub >= target:
            break
        # maml's rule: shrink the threshold in proportion to the shortfall.
        threshold = threshold / target * max(n_sub, 1)
    else:
        raise AloeError(f"could not reach {target} clusters by lowering the BIRCH threshold")
    sub_centers = np.asarray(birch.subcluster_centers_, dtype=np.float64)
    sub_labels = np.asarray(birch.subcluster_labels_, dtype=np.int64)
    labels = sub_labels[nearest_center(scores, sub_centers)]
    _, labels = np.unique(labels, return_inverse=True)
    c = int(labels.max()) + 1
    # The centre of a global cluster is the mean of its members (maml takes the last subcluster's centroid,
    # which depends on the tree's layout; the mean is what "distance to the centroid" means).
    sums = np.zeros((c, scores.shape[1]))
    np.add.at(sums, labels, scores)
    centers = sums / np.bincount(labels, minlength=c)[:, None]
    notes.append(f"fixed n_clusters={target}: BIRCH threshold {threshold:.4g}, centres are member means")
    return labels.astype(np.int64), centers, threshold


def nearest_center(points: np.ndarray, centers: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Index of the nearest centre of every point (``(n, m)``, ``(c, m)`` -> ``(n,)``), as ``Birch.predict`` finds it.

    A KD-tree gives the two nearest centres of every point. scikit-learn computes squared distances as
    ``|x|^2 - 2 x.c + |c|^2``, whose round-off can swap two centres that are equally far within ~1e-16 of the
    squared norms; points that close to a tie (relative ``rtol``) get scikit-learn's own answer.
    """
    from scipy.spatial import cKDTree
    from sklearn.metrics import pairwise_distances_argmin
    from sklearn.utils.extmath import row_norms

    if len(centers) == 1:
        return np.zeros(len(points), dtype=np.int64)
    tree = cKDTree(centers)
    dist, idx = tree.query(points, k=2)
    scale = (
        np.einsum("ij,ij->i", points, points)
        + float(np.max(np.einsum("ij,ij->i", centers, centers)))
        + 1e-300
    )
    close = (dist[:, 1] ** 2 - dist[:, 0] ** 2) <= rtol * scale
    labels = idx[:, 0].astype(np.int64)
    if close.any():
        labels[close] = pairwise_distances_argmin(
            points[close], centers, metric_kwargs={"Y_norm_squared": row_norms(centers, squared=True)}
        )
    return labels


def _pick(
    labels: np.ndarray,
    distance: np.ndarray,
    n_clusters: int,
    settings: DirectSettings,
    n_atoms: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Selected rows (unique) and every row's distance rank within its cluster."""
    k = settings.k
    order = np.lexsort((distance, labels))  # by cluster, then distance; ties keep row order
    sizes = np.bincount(labels, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - np.repeat(starts, sizes)

    if settings.criterion == "center":
        positions = linspace_ranks(sizes, k)  # (clusters, k)
        picked_sorted = (starts[:, None] + positions).ravel()
        picked = order[picked_sorted]
        picked = _resolve_ties(picked, distance, order, sizes, starts, positions)
    elif settings.criterion == "smallest":
        order_small = np.lexsort((distance, n_atoms, labels))
        small_rank = np.empty(len(labels), dtype=np.int64)
        small_rank[order_small] = np.arange(len(labels)) - np.repeat(starts, sizes)
        picked = np.flatnonzero(small_rank < k)
    else:
        keys = rng.random(len(labels))
        order_rand = np.lexsort((keys, labels))
        rand_rank = np.empty(len(labels), dtype=np.int64)
        rand_rank[order_rand] = np.arange(len(labels)) - np.repeat(starts, sizes)
        picked = np.flatnonzero(rand_rank < k)
    return np.unique(picked), rank


def _budget(
    picked: np.ndarray, labels: np.ndarray, rank: np.ndarray, n_clusters: int, limit: int
) -> np.ndarray:
    """The first ``limit`` picks in round-robin order.

    Every cluster's closest pick first, then every cluster's next one, and so on; larger clusters first in a round.
    """
    sizes = np.bincount(labels, minlength=n_clusters)
    lab = labels[picked]
    order = np.lexsort((rank[picked], lab))  # by cluster, then distance rank
    picked, lab = picked[order], lab[order]
    first = np.concatenate([[0], np.flatnonzero(np.diff(lab)) + 1])
    counts = np.diff(np.concatenate([first, [len(lab)]]))
    round_ = np.arange(len(lab)) - np.repeat(first, counts)
    keep = np.lexsort((lab, -sizes[lab], round_))[:limit]
    return np.sort(picked[keep])


def linspace_ranks(sizes: np.ndarray, k: int) -> np.ndarray:
    """Ranks ``int(np.linspace(0, n - 1, k))`` for every cluster size ``n``: shape ``(len(sizes), k)``.

    numpy's own linspace per distinct size (few), so the integer parts agree with the reference to the last bit.
    A cluster of ``n <= k`` members gets every rank ``0..n-1`` (with repeats): it is taken whole.
    """
    out = np.empty((len(sizes), k), dtype=np.int64)
    for n in np.unique(sizes).tolist():
        out[sizes == n] = np.array([int(v) for v in np.linspace(0, n - 1, k)], dtype=np.int64)
    return out


def _resolve_ties(
    picked: np.ndarray,
    distance: np.ndarray,
    order: np.ndarray,
    sizes: np.ndarray,
    starts: np.ndarray,
    positions: np.ndarray,
) -> np.ndarray:
    """Where a picked rank sits among equal distances, choose as ``np.argpartition`` does (maml's call)."""
    d_sorted = distance[order]
    n = len(d_sorted)
    at = (starts[:, None] + positions).ravel()
    cluster_of = np.repeat(np.arange(len(sizes)), positions.shape[1])
    prev_same = (at > starts[cluster_of]) & (d_sorted[np.maximum(at - 1, 0)] == d_sorted[at])
    end = starts[cluster_of] + sizes[cluster_of]
    next_same = (at + 1 < end) & (d_sorted[np.minimum(at + 1, n - 1)] == d_sorted[at])
    tied_clusters = np.unique(cluster_of[prev_same | next_same])
    if len(tied_clusters) == 0:
        return picked
    picked = picked.reshape(len(sizes), -1).copy()
    for c in tied_clusters.tolist():
        members = np.sort(order[starts[c] : starts[c] + sizes[c]])  # ascending rows, as np.where gives maml
        kth = positions[c]
        picked[c] = members[np.argpartition(distance[members], kth)[kth]]
    return picked.ravel()
