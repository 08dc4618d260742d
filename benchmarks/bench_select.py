"""Benchmark DIRECT selection: aloe's ``direct_select`` against maml's ``DIRECTSampler`` on one feature matrix.

Usage::

    python benchmarks/bench_select.py [--n N] [--d D] [--seed S] [--repeats R] [--output PATH] [--quick]
                                      [--latent-dim L] [--centres C] [--spread A] [--width W] [--noise E]

Both run the MP-ALOE configuration: standardise, PCA with Kaiser's rule, weight the components by their
explained-variance ratio, ``Birch(n_clusters=None, threshold=0.1)``, then ``k = 5`` per cluster at evenly spaced
ranks of distance to the centre. maml is called as MP-ALOE called it::

    DIRECTSampler(structure_encoder=False, clustering=BirchClustering(n=None, threshold_init=0.1),
                  select_k_from_clusters=SelectKFromClusters(k=5))

aloe as ``direct_select(features, DirectSettings(birch_threshold=0.1, k=5))`` (which are also its defaults).

The feature matrix (N x D, float64, seeded) has cluster structure, as real structure encodings do: C centres
(default N // 50) are drawn from a standard normal in an L-dimensional latent space (default L = 10) times
``--spread``; each centre gets a share of the rows (log-normal weights, sigma ``--size-sigma``, so cluster sizes
are uneven) and a width (``--width`` times a log-normal factor with sigma ``--width-sigma``); a row is its centre
plus isotropic Gaussian latent noise of that width, mapped to D dimensions by one random linear map
(``N(0, 1/L)`` entries), plus isotropic Gaussian noise of standard deviation ``--noise`` in all D dimensions. With
the defaults, DIRECT keeps L principal components and cuts the set about 3.5-fold at N = 200,000 (about 4.7-fold
at the ``--quick`` size of 20,000; MP-ALOE cut each batch about fourfold).

Each method runs in its own fresh subprocess (this script re-invoked with a hidden ``--child`` flag), which
regenerates the same seeded matrix; nothing is shared with the parent or with the other method. Timings come from
those children: each repeat builds a fresh matrix (not timed) and times only the selection call, so neither
method sees a matrix the other (or an earlier repeat) has touched; the fastest repeat is reported. Before the
matrix is built, each child runs its method once on a small matrix so one-off costs (lazy imports) stay out of the
timing. Memory: each child reports its resident set after imports and the warm-up, right after building the
matrix (``VmRSS``), and its peak (``VmHWM`` of its own address space), so the method's own increment is
``peak - after matrix``. The children save the selected row indices (``.npy``, in a temporary folder) and the
parent checks that the two selections are identical; the script exits with status 1 if they are not.

Results are printed and written to ``benchmarks/results/bench_select.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mib, rss_mib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_select.json"
TARGET_SPEEDUP = 2.0
DEFAULT_N = 200_000
QUICK_N = 20_000
METHODS = ("maml", "aloe")
#: MP-ALOE's DIRECT configuration (maml's arguments; aloe's defaults).
BIRCH_THRESHOLD = 0.1
K = 5


# ---- the feature matrix --------------------------------------------------------------------------------------
def matrix_params(args: argparse.Namespace) -> dict[str, Any]:
    """The generator's parameters, from the command line (``centres`` resolved)."""
    return {
        "n": args.n,
        "d": args.d,
        "seed": args.seed,
        "latent_dim": args.latent_dim,
        "centres": args.centres if args.centres is not None else max(1, args.n // 50),
        "spread": args.spread,
        "width": args.width,
        "noise": args.noise,
        "size_sigma": args.size_sigma,
        "width_sigma": args.width_sigma,
    }


def make_features(
    n: int,
    d: int,
    seed: int,
    latent_dim: int,
    centres: int,
    spread: float,
    width: float,
    noise: float,
    size_sigma: float,
    width_sigma: float,
) -> np.ndarray:
    """A seeded ``(n, d)`` float64 matrix of points around ``centres`` cluster centres in a latent space.

    Parameters
    ----------
    n, d
        Rows and columns.
    seed
        Seed of everything random here: the same arguments give the same matrix bit for bit.
    latent_dim
        Dimension of the latent space the clusters live in.
    centres
        Number of cluster centres (standard normal in latent space, times ``spread``).
    spread
        Scale of the centres' distribution.
    width
        Typical standard deviation of a cluster (per latent dimension).
    noise
        Standard deviation of the isotropic noise added in the ``d`` output dimensions.
    size_sigma
        Sigma of the log-normal weights that share the rows among the centres (0: equal shares on average).
    width_sigma
        Sigma of the log-normal factor that varies the width from cluster to cluster.

    Returns
    -------
    np.ndarray
        Shape ``(n, d)``, C-contiguous float64.
    """
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, latent_dim)) * spread
    weight = rng.lognormal(0.0, size_sigma, centres)
    member = rng.choice(centres, size=n, p=weight / weight.sum())
    widths = width * rng.lognormal(0.0, width_sigma, centres)
    latent = centre[member] + widths[member, None] * rng.standard_normal((n, latent_dim))
    mapping = rng.standard_normal((latent_dim, d)) / np.sqrt(latent_dim)
    x = latent @ mapping
    x += noise * rng.standard_normal((n, d))
    return np.ascontiguousarray(x, dtype=np.float64)


# ---- the two methods -----------------------------------------------------------------------------------------
def run_maml(x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """maml's ``DIRECTSampler`` in MP-ALOE's configuration: sorted selected rows and a few facts of the run."""
    from maml.sampling.direct import BirchClustering, DIRECTSampler, SelectKFromClusters

    sampler = DIRECTSampler(
        structure_encoder=False,
        clustering=BirchClustering(n=None, threshold_init=BIRCH_THRESHOLD),
        select_k_from_clusters=SelectKFromClusters(k=K),
    )
    out = sampler.fit_transform(x)
    selected = np.sort(np.asarray(out["selected_indexes"], dtype=np.int64))
    pca = sampler.named_steps["PrincipalComponentAnalysis"].pca
    birch = sampler.named_steps["BirchClustering"].model
    info = {
        "n_components": int((pca.explained_variance_ > 1).sum()),
        "n_clusters": len(birch.subcluster_centers_),
    }
    return selected, info


def run_aloe(x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """aloe's ``direct_select`` with its defaults (MP-ALOE's configuration)."""
    from aloe.select.direct import direct_select
    from aloe.select.settings import DirectSettings

    result = direct_select(x, DirectSettings(birch_threshold=BIRCH_THRESHOLD, k=K))
    sizes = result.cluster_sizes
    m = result.n_components
    info = {
        "n_components": int(m),
        "n_clusters": int(result.n_clusters),
        "explained_variance_ratio_kept": float(result.explained_variance_ratio[:m].sum()),
        "cluster_size_mean": float(sizes.mean()),
        "cluster_size_median": float(np.median(sizes)),
        "cluster_size_max": int(sizes.max()),
        "clusters_larger_than_k": int((sizes > K).sum()),
        "empty_clusters": int((sizes == 0).sum()),
        "rows_in_clusters_larger_than_k": int(sizes[sizes > K].sum()),
        "notes": list(result.notes),
    }
    return np.asarray(result.selected, dtype=np.int64), info


RUNNERS = {"maml": run_maml, "aloe": run_aloe}


# ---- child ---------------------------------------------------------------------------------------------------
def child(method: str, params: dict[str, Any], repeats: int, out_dir: Path) -> dict[str, Any]:
    """Run ``method`` on the seeded matrix ``repeats`` times in this (fresh) process; save the selection.

    Parameters
    ----------
    method
        ``'maml'`` or ``'aloe'``.
    params
        :func:`make_features` arguments.
    repeats
        Timed runs, each on a freshly built matrix.
    out_dir
        Where ``<method>.npy`` (the selected rows, sorted) is written.

    Returns
    -------
    dict
        Timings, memory figures and what the method reported.
    """
    logging.disable(logging.INFO)  # maml logs every step at INFO
    runner = RUNNERS[method]
    # Warm-up on a small matrix of the same kind: imports and one-off set-up stay out of the timing.
    small = {**params, "n": min(2000, params["n"]), "centres": max(1, min(2000, params["n"]) // 50)}
    runner(make_features(**small))
    after_imports = rss_mib()
    peak_after_imports = peak_rss_mib()

    times: list[float] = []
    selected: np.ndarray | None = None
    info: dict[str, Any] = {}
    after_matrix: float | None = None
    build_s = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = make_features(**params)
        build_s = time.perf_counter() - t0
        if after_matrix is None:
            after_matrix = rss_mib()
        t0 = time.perf_counter()
        selected, info = runner(x)
        times.append(time.perf_counter() - t0)
        del x
    assert selected is not None
    np.save(out_dir / f"{method}.npy", selected)
    peak = peak_rss_mib()
    return {
        "method": method,
        "seconds": min(times),
        "seconds_all": times,
        "matrix_build_s": build_s,
        "n_selected": len(selected),
        "rss_after_imports_mib": after_imports,
        "peak_rss_after_imports_mib": peak_after_imports,
        "rss_after_matrix_mib": after_matrix,
        "peak_rss_mib": peak,
        "method_increment_mib": peak - after_matrix if after_matrix is not None else None,
        **info,
    }


def run_child(method: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Re-invoke this script as ``--child method`` in a fresh interpreter and return its report."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        method,
        "--child-out",
        str(out_dir),
        "--n",
        str(args.n),
        "--d",
        str(args.d),
        "--seed",
        str(args.seed),
        "--repeats",
        str(args.repeats),
        "--latent-dim",
        str(args.latent_dim),
        "--centres",
        str(matrix_params(args)["centres"]),
        "--spread",
        repr(args.spread),
        "--width",
        repr(args.width),
        "--noise",
        repr(args.noise),
        "--size-sigma",
        repr(args.size_sigma),
        "--width-sigma",
        repr(args.width_sigma),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- driver --------------------------------------------------------------------------------------------------


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Whether two sorted selections are identical, and how they differ if not."""
    only_a = np.setdiff1d(a, b)
    only_b = np.setdiff1d(b, a)
    return {
        "identical": bool(a.shape == b.shape and np.array_equal(a, b)),
        "only_maml": len(only_a),
        "only_aloe": len(only_b),
        "only_maml_first": only_a[:20].tolist(),
        "only_aloe_first": only_b[:20].tolist(),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=None, help=f"Rows (default {DEFAULT_N:,}; {QUICK_N:,} with --quick)."
    )
    parser.add_argument("--d", type=int, default=128, help="Feature columns.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the feature matrix.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed runs per method (fastest reported).")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file.")
    parser.add_argument(
        "--quick", action="store_true", help=f"Smoke run: n = {QUICK_N:,} (unless --n is given)."
    )
    gen = parser.add_argument_group("feature matrix")
    gen.add_argument("--latent-dim", type=int, default=10, help="Dimension of the latent cluster space.")
    gen.add_argument("--centres", type=int, default=None, help="Cluster centres (default n // 50).")
    gen.add_argument("--spread", type=float, default=1.0, help="Standard deviation of the centres.")
    gen.add_argument("--width", type=float, default=0.04, help="Typical standard deviation of a cluster.")
    gen.add_argument("--noise", type=float, default=0.1, help="Isotropic noise in the D output dimensions.")
    gen.add_argument("--size-sigma", type=float, default=1.0, help="Log-normal sigma of the cluster shares.")
    gen.add_argument("--width-sigma", type=float, default=0.5, help="Log-normal sigma of the cluster widths.")
    parser.add_argument("--child", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else DEFAULT_N
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    params = matrix_params(args)

    if args.child is not None:
        print(json.dumps(child(args.child, params, args.repeats, args.child_out)))
        return 0

    print(
        f"feature matrix: {params['n']:,} x {params['d']} float64 "
        f"({params['n'] * params['d'] * 8 / 2**20:,.0f} MiB), seed {params['seed']}; "
        f"{params['centres']:,} centres in {params['latent_dim']} latent dims (spread {params['spread']}, "
        f"width {params['width']}, size sigma {params['size_sigma']}, width sigma {params['width_sigma']}), "
        f"noise {params['noise']}"
    )
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aloe-bench-select-") as tmp:
        out_dir = Path(tmp)
        selections = {}
        for method in METHODS:
            print(
                f"{method}: DIRECT (threshold {BIRCH_THRESHOLD}, k={K}), {args.repeats} run(s), fresh process ..."
            )
            runs[method] = run_child(method, args, out_dir)
            selections[method] = np.load(out_dir / f"{method}.npy")
            print(f"  {runs[method]['seconds']:.2f} s, {runs[method]['n_selected']:,} selected")
    check = compare(selections["maml"], selections["aloe"])
    results = {
        "machine": machine(("numpy", "scipy", "scikit-learn", "maml")),
        "matrix": params,
        "config": {"birch_threshold": BIRCH_THRESHOLD, "k": K, "repeats": args.repeats},
        "timing_source": "children (fresh process per method; fastest of --repeats, matrix build not timed)",
        "maml": runs["maml"],
        "aloe": runs["aloe"],
        "speedup": runs["maml"]["seconds"] / runs["aloe"]["seconds"],
        "reduction": params["n"] / runs["aloe"]["n_selected"],
        "check": check,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, args.output)
    return 0 if check["identical"] else 1


def _mib(value: float | None) -> str:
    return f"{value:,.0f} MiB" if value is not None else "n/a"


def print_summary(results: dict[str, Any], path: Path) -> None:
    """Print the final block of figures."""
    mat = results["matrix"]
    mach = results["machine"]
    a, m, check = results["aloe"], results["maml"], results["check"]
    lines = [
        "",
        "=" * 78,
        "select benchmark (DIRECT, MP-ALOE configuration)",
        f"machine        {mach['cpu_count']} CPUs, {mach['platform']}, Python {mach['python']}, "
        f"scikit-learn {mach.get('scikit-learn', '?')}, maml {mach.get('maml', '?')}",
        f"matrix         {mat['n']:,} x {mat['d']}, seed {mat['seed']}: {mat['centres']:,} centres in "
        f"{mat['latent_dim']} latent dims, width {mat['width']}, noise {mat['noise']}",
        f"DIRECT         {a['n_components']} components kept ({100 * a['explained_variance_ratio_kept']:.1f}% of "
        f"the variance), {a['n_clusters']:,} clusters (maml: {m['n_components']}, {m['n_clusters']:,})",
        f"clusters       mean size {a['cluster_size_mean']:.1f}, median {a['cluster_size_median']:.0f}, "
        f"max {a['cluster_size_max']:,}; {a['clusters_larger_than_k']:,} larger than k={results['config']['k']} "
        f"holding {a['rows_in_clusters_larger_than_k']:,} rows; {a['empty_clusters']} empty",
        f"selected       {a['n_selected']:,} of {mat['n']:,} ({results['reduction']:.2f}-fold reduction)",
        "-- time (fresh process per method; fastest of "
        f"{results['config']['repeats']}; matrix build not timed) --",
        f"maml           {m['seconds']:>9.2f} s",
        f"aloe           {a['seconds']:>9.2f} s",
        f"speed-up       {results['speedup']:>9.2f} x   (target >= {TARGET_SPEEDUP:.0f} x: "
        f"{'met' if results['speedup'] >= TARGET_SPEEDUP else 'NOT met'})",
        f"identical      {'yes' if check['identical'] else 'NO'}"
        + (
            ""
            if check["identical"]
            else f" ({check['only_maml']} rows only in maml's, {check['only_aloe']} only in aloe's)"
        ),
        "-- memory (VmRSS after imports + warm-up / after building the matrix; peak VmHWM; increment) --",
    ]
    for name, run in (("maml", m), ("aloe", a)):
        lines.append(
            f"{name:<14} {_mib(run['rss_after_imports_mib'])} / {_mib(run['rss_after_matrix_mib'])}; "
            f"peak {_mib(run['peak_rss_mib'])}; method +{_mib(run['method_increment_mib'])}"
        )
    lines += [f"results        {path}", "=" * 78]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
