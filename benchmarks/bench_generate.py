"""Benchmark the generate stage: vectorised throughput against the per-structure pymatgen baseline, and memory.

Usage::

    python benchmarks/bench_generate.py [--n N] [--prototypes builtin|PATH] [--baseline-n M] [--chunk-size C]

(a) Throughput. The same seeded sample of N candidates (drawn from the whole 89-element space over the published
    MP-ALOE prototypes when ``../shared/data/mp-aloe-prototypes`` exists, else the built-in library) is built
    by aloe's path (``CandidateSpace.build`` in chunks + ``batch_to_table``) and, for a random subset of M of
    them, by the per-candidate pymatgen reference (:func:`aloe.generate.reference.build_reference`), in this
    process. Every baseline structure is compared with its row in aloe's Arrow tables.
(b) Memory. The real generate stage streams ``sample=N`` and ``sample=10N`` candidates into a temporary run
    folder, each in a fresh subprocess. Each child reports its peak resident set (``VmHWM`` of its own address
    space; ``ru_maxrss`` where /proc is missing) and the peak RSS sampled after the plan is saved (chunk phase).

Results are printed and written to ``benchmarks/results/bench_generate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mib, status_kib

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT.parent / "shared" / "data" / "mp-aloe-prototypes"
RESULTS = ROOT / "benchmarks" / "results" / "bench_generate.json"
TARGET_SPEEDUP = 20.0


# ---- memory probes -------------------------------------------------------------------------------------------
class ChunkPhaseSampler(threading.Thread):
    """Sample this process's RSS every ``interval`` s; keep the peak seen once the plan file exists.

    The stage saves its plan just before it streams chunks, so this separates the chunk phase (build, convert,
    write) from the planning scan before it, whose memory is one scan step of the whole space.
    """

    def __init__(self, plan_file: Path, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.plan_file = plan_file
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        streaming = False
        while not self._halt.is_set():
            if not streaming:
                streaming = self.plan_file.exists()  # written atomically, right before the chunks
            if streaming:
                rss = status_kib("VmRSS") or 0
                self.peak_kib = max(self.peak_kib, rss)
                self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()


def child_memory(n: int, prototypes: str, chunk_size: int, seed: int, output: Path) -> dict[str, Any]:
    """Run the generate stage for ``sample=n`` in this (fresh) process and report its memory."""
    from aloe.generate.settings import GenerateSettings
    from aloe.generate.stage import generate

    after_imports = peak_rss_mib()
    settings = GenerateSettings.model_validate(
        {
            "prototypes": {"source": prototypes},
            "sample": n,
            "chunk_size": chunk_size,
            "seed": seed,
            "output": str(output),
            "progress": False,
        }
    )
    from aloe.generate.stage import PLAN_FILE

    sampler = ChunkPhaseSampler(output / PLAN_FILE)
    sampler.start()
    t0 = time.perf_counter()
    result = generate(settings)
    seconds = time.perf_counter() - t0
    sampler.stop()
    return {
        "sample": n,
        "candidates_written": int(result.counts["candidates_written"]),
        "chunks": int(result.counts["chunks_total"]),
        "seconds": seconds,
        "timings": {k: float(v) for k, v in result.timings.items()},
        "peak_rss_after_imports_mib": after_imports,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_chunk_phase_mib": sampler.peak_kib / 1024.0 if sampler.samples else None,
        "chunk_phase_samples": sampler.samples,
    }


def measure_memory(n: int, prototypes: str, chunk_size: int, seed: int) -> dict[str, Any]:
    """Run :func:`child_memory` in a fresh interpreter so each figure starts from the same empty process."""
    with tempfile.TemporaryDirectory(prefix="aloe-bench-") as tmp:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-memory",
            str(n),
            "--prototypes",
            prototypes,
            "--chunk-size",
            str(chunk_size),
            "--seed",
            str(seed),
            "--child-output",
            str(Path(tmp) / "run"),
        ]
        env = {**os.environ, "ALOE_PROGRESS": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for n={n} failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- throughput ----------------------------------------------------------------------------------------------
def measure_throughput(
    n: int, baseline_n: int, prototypes: str, chunk_size: int, seed: int
) -> dict[str, Any]:
    """Time aloe's path and the per-structure baseline on the same candidates; check they agree."""
    from aloe.data.candidates import CandidateRows
    from aloe.generate.io import batch_to_table
    from aloe.generate.reference import build_reference
    from aloe.generate.space import CandidateSpace
    from aloe.prototypes import load_prototypes

    t0 = time.perf_counter()
    space = CandidateSpace(load_prototypes(prototypes))
    setup = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    n = min(n, space.size)
    indices = np.sort(rng.choice(space.size, size=n, replace=False)).astype(np.int64)
    subset = np.sort(rng.choice(indices, size=min(baseline_n, n), replace=False))

    # Warm both paths so neither timing includes one-off costs: aloe caches each prototype's pair distances and
    # the combination tables on first use (one candidate per prototype fills them), the baseline imports.
    t0 = time.perf_counter()
    batch_to_table(space.build(space.offsets[:-1]), space)
    warmup = time.perf_counter() - t0
    build_reference(space, int(indices[0]))

    tables = []
    t_build = 0.0
    t0 = time.perf_counter()
    for start in range(0, n, chunk_size):
        t1 = time.perf_counter()
        batch = space.build(indices[start : start + chunk_size])
        t_build += time.perf_counter() - t1
        tables.append(batch_to_table(batch, space))
    t_aloe = time.perf_counter() - t0

    # The same count of consecutive candidates (the layout of a full run): they share random-stream blocks.
    start = int(rng.integers(0, max(space.size - n, 0) + 1))
    t0 = time.perf_counter()
    for first in range(start, start + n, chunk_size):
        batch_to_table(space.build(np.arange(first, min(first + chunk_size, start + n))), space)
    t_contig = time.perf_counter() - t0

    t0 = time.perf_counter()
    reference = [build_reference(space, int(i)) for i in subset.tolist()]
    t_base = time.perf_counter() - t0

    # Compare every baseline structure with its row in aloe's tables (what a run would write).
    pos = np.searchsorted(indices, subset)
    worst_lattice, worst_frac, species_mismatch = 0.0, 0.0, []
    rows_cache: dict[int, CandidateRows] = {}
    for structure, index, p in zip(reference, subset.tolist(), pos.tolist(), strict=True):
        chunk, row = divmod(p, chunk_size)
        rows = rows_cache.setdefault(chunk, CandidateRows(tables[chunk]))
        a, b = rows.offsets[row], rows.offsets[row + 1]
        assert rows.index[row] == index
        if [site.specie.Z for site in structure] != rows.numbers[a:b].tolist():
            species_mismatch.append(index)
            continue
        worst_lattice = max(worst_lattice, float(np.abs(rows.cell[row] - structure.lattice.matrix).max()))
        delta = rows.frac_coords[a:b] - structure.frac_coords
        delta -= np.round(delta)  # equal modulo 1
        worst_frac = max(worst_frac, float(np.abs(delta).max()))
    agree = not species_mismatch and worst_lattice < 1e-8 and worst_frac < 1e-10

    aloe_rate = n / t_aloe
    base_rate = len(subset) / t_base
    return {
        "prototypes": prototypes,
        "n_prototypes": len(space.library),
        "space_size": space.size,
        "space_setup_s": setup,
        "aloe_warmup_s": warmup,
        "n": n,
        "chunk_size": chunk_size,
        "aloe_seconds": t_aloe,
        "aloe_build_seconds": t_build,
        "aloe_table_seconds": t_aloe - t_build,
        "aloe_candidates_per_s": aloe_rate,
        "aloe_build_only_candidates_per_s": n / t_build,
        "aloe_contiguous_candidates_per_s": n / t_contig,
        "mean_sites": float(np.mean(space.build(subset).n_sites)) if len(subset) else None,
        "baseline_n": len(subset),
        "baseline_seconds": t_base,
        "baseline_candidates_per_s": base_rate,
        "baseline_ms_per_candidate": 1e3 * t_base / len(subset),
        "speedup": aloe_rate / base_rate,
        "check": {
            "compared": len(subset),
            "species_mismatches": species_mismatch[:20],
            "max_abs_lattice_diff_A": worst_lattice,
            "max_abs_frac_diff_mod1": worst_frac,
            "agree": agree,
        },
    }


# ---- driver --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=50_000, help="Candidates for throughput and the 1x memory run."
    )
    parser.add_argument(
        "--prototypes",
        default=str(PUBLISHED) if PUBLISHED.is_dir() else "builtin",
        help="'builtin' or a folder of prototypes (default: the published MP-ALOE set when present).",
    )
    parser.add_argument(
        "--baseline-n", type=int, default=1000, help="Candidates built by the pymatgen baseline."
    )
    parser.add_argument("--chunk-size", type=int, default=20_000, help="Candidates per chunk.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample.")
    parser.add_argument("--skip-memory", action="store_true", help="Only measure throughput.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file.")
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_memory is not None:
        result = child_memory(
            args.child_memory, args.prototypes, args.chunk_size, args.seed, args.child_output
        )
        print(json.dumps(result))
        return 0

    print(f"prototypes: {args.prototypes}")
    print(
        f"(a) throughput: {args.n:,} candidates with aloe, {args.baseline_n:,} of them with the baseline ..."
    )
    throughput = measure_throughput(args.n, args.baseline_n, args.prototypes, args.chunk_size, args.seed)
    memory: dict[str, Any] | None = None
    if not args.skip_memory:
        runs = []
        for n in (args.n, 10 * args.n):
            print(
                f"(b) memory: generate stage, sample={n:,}, chunk_size={args.chunk_size:,} (fresh process) ..."
            )
            runs.append(measure_memory(n, args.prototypes, args.chunk_size, args.seed))
        small, large = runs
        memory = {
            "runs": runs,
            "peak_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
            "chunk_phase_ratio": (
                large["peak_rss_chunk_phase_mib"] / small["peak_rss_chunk_phase_mib"]
                if small["peak_rss_chunk_phase_mib"] and large["peak_rss_chunk_phase_mib"]
                else None
            ),
        }

    results = {
        "machine": machine(("numpy", "scipy", "pymatgen", "pyarrow")),
        "throughput": throughput,
        "memory": memory,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, args.output)
    return 0 if throughput["check"]["agree"] else 1


def print_summary(results: dict[str, Any], path: Path) -> None:
    """Print the final block of figures."""
    t = results["throughput"]
    m = results["memory"]
    mach = results["machine"]
    check = t["check"]
    lines = [
        "",
        "=" * 78,
        "generate benchmark",
        f"machine        {mach['cpu_count']} CPUs, {mach['platform']}, Python {mach['python']}",
        f"space          {t['n_prototypes']} prototypes ({t['prototypes']}), {t['space_size']:,} candidates "
        f"(setup {t['space_setup_s']:.1f} s, aloe warm-up {t['aloe_warmup_s']:.2f} s, not timed below)",
        "-- (a) throughput (one process; same seeded random sample for aloe and baseline) --",
        f"aloe           {t['aloe_candidates_per_s']:>12,.0f} cand/s  ({t['n']:,} in {t['aloe_seconds']:.2f} s; "
        f"build {t['aloe_build_seconds']:.2f} s + Arrow table {t['aloe_table_seconds']:.2f} s)",
        f"aloe (full)    {t['aloe_contiguous_candidates_per_s']:>12,.0f} cand/s  ({t['n']:,} consecutive candidates, "
        "the layout of a full run; for information)",
        f"baseline       {t['baseline_candidates_per_s']:>12,.0f} cand/s  ({t['baseline_n']:,} in "
        f"{t['baseline_seconds']:.2f} s; {t['baseline_ms_per_candidate']:.2f} ms each, pymatgen per structure)",
        f"speed-up       {t['speedup']:>12.1f} x     (target >= {TARGET_SPEEDUP:.0f} x: "
        f"{'met' if t['speedup'] >= TARGET_SPEEDUP else 'NOT met'})",
        f"agreement      {check['compared']} compared: species mismatches {len(check['species_mismatches'])}, "
        f"max |dL| {check['max_abs_lattice_diff_A']:.1e} A, max |dfrac| {check['max_abs_frac_diff_mod1']:.1e}"
        f" -> {'OK' if check['agree'] else 'DISAGREE'}",
    ]
    if m is not None:
        small, large = m["runs"]
        lines.append("-- (b) memory (generate stage, fresh subprocess each) --")
        for run in (small, large):
            phase = run["peak_rss_chunk_phase_mib"]
            phase_txt = f"{phase:,.0f} MiB" if phase is not None else "n/a"
            lines.append(
                f"sample={run['sample']:<10,} peak RSS {run['peak_rss_mib']:>7,.0f} MiB "
                f"(after imports {run['peak_rss_after_imports_mib']:,.0f}; chunk phase {phase_txt}); "
                f"{run['candidates_written']:,} written in {run['chunks']} chunks, {run['seconds']:.1f} s "
                f"(plan {run['timings'].get('plan', 0.0):.1f} s)"
            )
        ratio_phase = m["chunk_phase_ratio"]
        lines.append(
            f"10N / N        peak {m['peak_ratio']:.2f} x"
            + (f", chunk phase {ratio_phase:.2f} x" if ratio_phase is not None else "")
            + "   (target: flat, ~1 x)"
        )
    lines += [f"results        {path}", "=" * 78]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
