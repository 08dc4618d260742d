"""Dataset statistics: counts, element coverage and the three distributions of the MP-ALOE paper's dataset figure.

For each file (any format :mod:`aloe.data.formats` reads), streamed one document at a time:

* counts: documents and atoms (sum of the structures' sites);
* element coverage: documents containing each element;
* (a) cohesive energy per atom (eV/atom): the document's ``cohesive_energy_per_atom`` when it has one, else
  ``(energy - sum of isolated-atom energies) / nsites`` with the published MatPES isolated-atom energies of the
  document's ``functional`` (``aloe/data/matpes_elemental_refs.json``); documents where neither works (no
  functional, a functional without published energies, an element without one) are skipped and counted;
* (b) force magnitude per atom ``|F|`` (eV/A), on logarithmic bins;
* (c) pressure, one third of the stress trace, in GPa, compression positive (the records' VASP sign).

Values go into histograms with fixed bins (:data:`BINS`), never into lists, so memory does not grow with the
number of documents. Mean, standard deviation, minimum and maximum are exact (running sums); quantiles come from
the histogram, interpolated linearly inside a bin (logarithmically for ``|F|``): their error is at most one bin
width (0.01 eV/atom; 2.3 % of ``|F|``; 0.1 GPa) inside the binned range, and values outside that range fall in an
under- or overflow bin that spans to the exact minimum or maximum.

Outputs (in the output folder): ``distributions.png`` (the three panels, datasets overlaid, legend with names and
counts, the numbers in a box beside each panel), ``elements.png`` (documents per element, by atomic number) and
``stats.yaml`` (every number, quantiles included).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from aloe.data.formats import RecordReader
from aloe.errors import AloeError
from aloe.progress import make_bar
from aloe.runs import atomic_path, write_yaml_atomic
from aloe.units import KBAR_IN_GPA

#: Quantiles reported for each quantity.
QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)

#: Fixed bin edges of each quantity: (low, high, bins, logarithmic).
BINS: dict[str, tuple[float, float, int, bool]] = {
    "cohesive_energy_per_atom": (-20.0, 10.0, 3000, False),
    "force_magnitude": (1e-6, 1e4, 1000, True),
    "pressure": (-1000.0, 2000.0, 30000, False),
}
UNITS = {"cohesive_energy_per_atom": "eV/atom", "force_magnitude": "eV/A", "pressure": "GPa"}
LABELS = {
    "cohesive_energy_per_atom": "(a) cohesive energy per atom (eV/atom)",
    "force_magnitude": "(b) force magnitude |F| per atom (eV/A)",
    "pressure": "(c) pressure = tr(stress)/3 (GPa, compression > 0)",
}
#: Values are binned in batches of about this many (bounded buffers).
_FLUSH = 1 << 16
QUANTILE_METHOD = (
    "fixed-bin histogram, linear interpolation inside a bin (logarithmic for force_magnitude); error at most "
    "one bin width inside [low, high]; under/overflow bins span to the exact min/max"
)


@cache
def isolated_atom_energies() -> dict[str, dict[str, float]]:
    """Functional -> element -> published MatPES isolated-atom energy (eV), from ``matpes_elemental_refs.json``."""
    text = resources.files("aloe.data").joinpath("matpes_elemental_refs.json").read_text()
    table = json.loads(text)["functionals"]
    return {name: dict(entry["isolated_atom"]) for name, entry in table.items()}


def reference_functional(name: str | None) -> str | None:
    """The key of the published references for a document's ``functional`` (``r2SCAN``, ``PBE``), or ``None``."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower().replace("-", "").replace("_", "")
    return {"r2scan": "r2SCAN", "pbe": "PBE"}.get(key)


class Histogram:
    """Counts of values in fixed bins, plus exact count, sum, sum of squares, min and max.

    Parameters
    ----------
    low, high, bins
        The binned range and the number of bins (values below / above go to ``under`` / ``over``).
    log
        Logarithmically spaced bins (values <= 0 count as underflow).
    """

    def __init__(self, low: float, high: float, bins: int, log: bool = False) -> None:
        self.log = log
        self.edges = np.geomspace(low, high, bins + 1) if log else np.linspace(low, high, bins + 1)
        self.counts = np.zeros(bins, dtype=np.int64)
        self.under = 0
        self.over = 0
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: Any) -> None:
        """Count ``values`` (any array-like of numbers)."""
        v = np.asarray(values, dtype=float).reshape(-1)
        if v.size == 0:
            return
        self.n += v.size
        self.total += float(v.sum())
        self.total_sq += float(np.dot(v, v))
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        idx = np.searchsorted(self.edges, v, side="right") - 1
        nbins = len(self.counts)
        idx[v == self.edges[-1]] = nbins - 1  # the last bin is closed on the right
        self.under += int((idx < 0).sum())
        self.over += int((idx >= nbins).sum())
        inside = idx[(idx >= 0) & (idx < nbins)]
        self.counts += np.bincount(inside, minlength=nbins)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) from the bins (see the module docstring), or ``None`` when empty."""
        if self.n == 0:
            return None
        target = q * self.n
        # bins with the under/overflow at either end, spanning to the exact min/max
        lo_edge = min(self.min, self.edges[0])
        hi_edge = max(self.max, self.edges[-1])
        edges = np.concatenate(([lo_edge], self.edges, [hi_edge]))
        counts = np.concatenate(([self.under], self.counts, [self.over]))
        cum = np.cumsum(counts)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(counts) - 1)
        before = cum[i - 1] if i > 0 else 0
        frac = (target - before) / counts[i] if counts[i] else 0.0
        a, b = edges[i], edges[i + 1]
        if self.log and a > 0 and b > 0:
            value = math.exp(math.log(a) + frac * (math.log(b) - math.log(a)))
        else:
            value = a + frac * (b - a)
        return float(min(max(value, self.min), self.max))

    def summary(self) -> dict[str, Any]:
        """Count, mean, std, min, max, quantiles, under/overflow, as plain numbers."""
        if self.n == 0:
            return {"n": 0}
        mean = self.total / self.n
        var = max(self.total_sq / self.n - mean * mean, 0.0)
        return {
            "n": int(self.n),
            "mean": mean,
            "std": math.sqrt(var),
            "min": self.min,
            "max": self.max,
            "quantiles": {f"{q:g}": self.quantile(q) for q in QUANTILES},
            "below_range": int(self.under),
            "above_range": int(self.over),
        }


@dataclass
class DatasetStats:
    """The accumulated numbers of one dataset."""

    name: str
    path: Path
    docs: int = 0
    atoms: int = 0
    elements: Counter = field(default_factory=Counter)
    cohesive_from_doc: int = 0
    cohesive_computed: int = 0
    cohesive_skipped: int = 0
    cohesive_skipped_why: Counter = field(default_factory=Counter)
    skipped_bad: int = 0
    hists: dict[str, Histogram] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hists = {key: Histogram(*spec) for key, spec in BINS.items()}

    def summary(self) -> dict[str, Any]:
        """Every number of the dataset, for ``stats.yaml``."""
        cohesive = self.hists["cohesive_energy_per_atom"].summary()
        cohesive.update(
            {
                "from_doc": self.cohesive_from_doc,
                "computed_from_isolated_atoms": self.cohesive_computed,
                "skipped": self.cohesive_skipped,
                "skipped_why": dict(self.cohesive_skipped_why),
            }
        )
        from ase.data import atomic_numbers

        elements = dict(sorted(self.elements.items(), key=lambda kv: atomic_numbers.get(kv[0], 999)))
        return {
            "path": str(self.path),
            "docs": self.docs,
            "atoms": self.atoms,
            "skipped_bad_records": self.skipped_bad,
            "n_elements": len(self.elements),
            "docs_per_element": {k: int(v) for k, v in elements.items()},
            "cohesive_energy_per_atom_eV": cohesive,
            "force_magnitude_eV_per_A": self.hists["force_magnitude"].summary(),
            "pressure_GPa": self.hists["pressure"].summary(),
        }


def _doc_elements(sites: list[dict[str, Any]]) -> Counter:
    return Counter(site["species"][0]["element"] for site in sites)


def accumulate(
    path: str | Path,
    name: str,
    *,
    functional: str | None = None,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> DatasetStats:
    """Stream one file into a :class:`DatasetStats` (``functional``: assumed for documents without one)."""
    stats = DatasetStats(name=name, path=Path(path))
    refs = isolated_atom_energies()
    reader = RecordReader(Path(path), skip_bad=skip_bad)
    cohesive_buf: list[float] = []
    force_buf: list[list[float]] = []
    pressure_buf: list[float] = []
    hists = stats.hists

    def flush() -> None:
        if cohesive_buf:
            hists["cohesive_energy_per_atom"].add(cohesive_buf)
            cohesive_buf.clear()
        if force_buf:
            f = np.asarray(force_buf, dtype=float)
            hists["force_magnitude"].add(np.sqrt((f * f).sum(axis=1)))
            force_buf.clear()
        if pressure_buf:
            hists["pressure"].add(pressure_buf)
            pressure_buf.clear()

    bar = make_bar(enabled=progress, desc=f"stats {name}", unit=" doc")
    reported = 0
    with bar:
        for doc in reader:
            sites = doc["structure"]["sites"]
            n = len(sites)
            stats.docs += 1
            stats.atoms += n
            counts = _doc_elements(sites)
            stats.elements.update(counts.keys())
            cohesive = doc.get("cohesive_energy_per_atom")
            if (
                isinstance(cohesive, int | float)
                and not isinstance(cohesive, bool)
                and math.isfinite(cohesive)
            ):
                cohesive_buf.append(float(cohesive))
                stats.cohesive_from_doc += 1
            else:
                key = reference_functional(doc.get("functional") or functional)
                table = refs.get(key) if key else None
                if table is None:
                    stats.cohesive_skipped += 1
                    stats.cohesive_skipped_why["no published isolated-atom energies for the functional"] += 1
                elif not all(el in table for el in counts):
                    stats.cohesive_skipped += 1
                    stats.cohesive_skipped_why["an element without a published isolated-atom energy"] += 1
                else:
                    e_atoms = sum(table[el] * k for el, k in counts.items())
                    cohesive_buf.append((float(doc["energy"]) - e_atoms) / n)
                    stats.cohesive_computed += 1
            force_buf.extend(doc["forces"])
            s = doc["stress"]
            pressure_buf.append((s[0] + s[1] + s[2]) / 3.0 * KBAR_IN_GPA)
            if len(force_buf) >= _FLUSH:
                flush()
                bar.update(stats.docs - reported)
                reported = stats.docs
        flush()
        bar.update(stats.docs - reported)
    stats.skipped_bad = reader.n_skipped
    return stats


def dataset_name(path: str | Path) -> str:
    """A short name of a dataset file: its name without the format's extensions."""
    name = Path(path).name
    for ext in (".gz", ".jsonl", ".json", ".extxyz", ".xyz", ".db"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name or str(path)


def dataset_stats(
    paths: list[str | Path] | tuple[str | Path, ...],
    output: str | Path,
    *,
    names: list[str] | None = None,
    functional: str | None = None,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Statistics and plots of one or more datasets, overlaid (see the module docstring).

    Parameters
    ----------
    paths
        Dataset files (MP-ALOE JSONL, MatPES JSON, extxyz, ASE db).
    output
        Folder for ``distributions.png``, ``elements.png`` and ``stats.yaml`` (created).
    names
        Legend names, one per path (default: the file names without extensions).
    functional
        Functional assumed for documents that name none (for the cohesive energy); ``None``: such documents'
        cohesive energies are skipped unless they carry one.
    skip_bad
        Skip (and count) bad lines / invalid records.
    progress
        Progress bars.

    Returns
    -------
    dict
        The content of ``stats.yaml`` (``datasets``: name -> numbers; ``files``: the written paths).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AloeError("no dataset files given")
    if names is not None and len(names) != len(paths):
        raise AloeError(f"{len(names)} name(s) for {len(paths)} file(s): give one --name per file or none")
    if names is None:
        names = [dataset_name(p) for p in paths]
    seen: Counter = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    if functional is not None and reference_functional(functional) is None:
        raise AloeError(
            f"--functional {functional!r}: published isolated-atom energies exist for r2SCAN and PBE"
        )
    all_stats = [
        accumulate(p, n, functional=functional, skip_bad=skip_bad, progress=progress)
        for p, n in zip(paths, unique, strict=True)
    ]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = {
        "distributions": str(output / "distributions.png"),
        "elements": str(output / "elements.png"),
        "summary": str(output / "stats.yaml"),
    }
    plot_distributions(all_stats, Path(files["distributions"]))
    plot_elements(all_stats, Path(files["elements"]))
    summary = {
        "datasets": {s.name: s.summary() for s in all_stats},
        "bins": {k: {"low": lo, "high": hi, "bins": nb, "log": lg} for k, (lo, hi, nb, lg) in BINS.items()},
        "quantile_method": QUANTILE_METHOD,
        "cohesive_energy_references": "doc's cohesive_energy_per_atom, else MatPES isolated-atom energies "
        "(aloe/data/matpes_elemental_refs.json) of the doc's functional",
        "files": files,
    }
    write_yaml_atomic(files["summary"], summary)
    return summary


# ---- plots ---------------------------------------------------------------------------------------------------
def _display(hist: Histogram, lo_i: int, hi_i: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine bins ``lo_i..hi_i`` merged ``step`` at a time: (edges, counts)."""
    idx = np.arange(lo_i, hi_i, step)
    edges = np.append(hist.edges[idx], hist.edges[min(hi_i, len(hist.edges) - 1)])
    counts = np.add.reduceat(hist.counts[lo_i:hi_i], idx - lo_i)
    return edges, counts


def _display_range(hists: list[Histogram], target_bins: int = 80) -> tuple[int, int, int] | None:
    """Fine-bin index range to draw, and the merge step for about ``target_bins`` bins.

    The range covers every dataset's 0.05 % .. 99.95 % quantiles (so a few far outliers do not squeeze the
    plot; the numbers in ``stats.yaml`` include them), clipped to the occupied bins.
    """
    filled = [h for h in hists if h.counts.any()]
    if not filled:
        return None
    nbins = len(filled[0].counts)
    occupied_lo = min(int(np.nonzero(h.counts)[0][0]) for h in filled)
    occupied_hi = max(int(np.nonzero(h.counts)[0][-1]) for h in filled) + 1
    edges = filled[0].edges
    lo_value = min(h.quantile(0.0005) for h in filled)
    hi_value = max(h.quantile(0.9995) for h in filled)
    lo_i = max(occupied_lo, int(np.searchsorted(edges, lo_value, side="right")) - 1)
    hi_i = min(occupied_hi, int(np.searchsorted(edges, hi_value, side="left")) + 1)
    if hi_i <= lo_i:
        lo_i, hi_i = occupied_lo, occupied_hi
    step = max(1, math.ceil((hi_i - lo_i) / target_bins))
    hi_i = min(lo_i + step * math.ceil((hi_i - lo_i) / step), nbins)
    return lo_i, hi_i, step


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"


def plot_distributions(all_stats: list[DatasetStats], path: Path) -> None:
    """The three panels (cohesive energy, |F|, pressure), datasets overlaid, numbers in a box below each panel."""
    from aloe.plotting import note, pyplot

    plt = pyplot()
    n_lines = 2 * len(all_stats) + 1
    fig, axes = plt.subplots(
        2,
        3,
        figsize=(17, 5.0 + 0.28 * n_lines),
        gridspec_kw={"height_ratios": [5.0, 0.35 + 0.28 * n_lines]},
        squeeze=False,
    )
    for col, key in enumerate(BINS):
        ax, text_ax = axes[0, col], axes[1, col]
        hists = [s.hists[key] for s in all_stats]
        rng = _display_range(hists)
        lines = [f"{'':<16}{'n':>10} {'p1':>9} {'median':>9} {'p99':>9}"]
        for s, hist in zip(all_stats, hists, strict=True):
            label = f"{s.name} ({s.docs:,} docs)"
            if rng is not None and hist.counts.any():
                edges, counts = _display(hist, *rng)
                ax.stairs(counts / max(hist.n, 1), edges, label=label, linewidth=1.4)
            else:
                ax.plot([], [], label=label)
            lines.append(
                f"{s.name[:16]:<16}{hist.n:>10,} {_fmt(hist.quantile(0.01)):>9} {_fmt(hist.quantile(0.5)):>9} "
                f"{_fmt(hist.quantile(0.99)):>9}"
            )
            extra = []
            if key == "cohesive_energy_per_atom":
                extra.append(f"no refs: {s.cohesive_skipped:,}")
            extra.append(f"min {_fmt(hist.quantile(0.0))}  max {_fmt(hist.quantile(1.0))}")
            lines.append(f"{'':<16}" + "  ".join(extra))
        if BINS[key][3]:
            ax.set_xscale("log")
        ax.set_yscale("log")
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, top * 20)  # room for the legend above the curves
        ax.set_xlabel(LABELS[key])
        ax.set_ylabel("fraction per bin")
        ax.legend(loc="upper left", fontsize=8)
        text_ax.axis("off")
        note(text_ax, "\n".join(lines), loc="upper left")
    fig.suptitle("dataset distributions (fixed bins, streamed; plotted range 0.05-99.95 %)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_elements(all_stats: list[DatasetStats], path: Path) -> None:
    """Documents per element, by atomic number, one bar series per dataset (log scale)."""
    from ase.data import atomic_numbers

    from aloe.plotting import note, pyplot

    plt = pyplot()
    elements = sorted(
        {el for s in all_stats for el in s.elements}, key=lambda el: (atomic_numbers.get(el, 999), el)
    )
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(elements) * max(1, len(all_stats)) + 3), 4.8))
    x = np.arange(len(elements))
    width = 0.8 / max(1, len(all_stats))
    for k, s in enumerate(all_stats):
        heights = [s.elements.get(el, 0) for el in elements]
        ax.bar(
            x + (k - (len(all_stats) - 1) / 2) * width, heights, width, label=f"{s.name} ({s.docs:,} docs)"
        )
    ax.set_xticks(x, elements, fontsize=7, rotation=90)
    ax.set_xlim(-1, max(len(elements), 1))
    counts = [v for s in all_stats for v in s.elements.values()]
    if counts and max(counts) > 20 * min(counts):
        ax.set_yscale("log")
    ax.set_ylabel("documents containing the element")
    ax.set_title("element coverage")
    ax.legend(loc="upper left", fontsize=8)
    note(ax, "\n".join(f"{s.name[:20]}: {len(s.elements)} elements" for s in all_stats), loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
