"""Benchmark reading MP-ALOE JSONL.gz records and converting them to extxyz for MACE: aloe against a plain loop.

Usage::

    python benchmarks/bench_data.py [--n N] [--seed S] [--repeats R] [--check-frames K] [--output PATH]
                                    [--keep-data DIR] [--quick]

The input: N synthetic documents (default 100,000) in MP-ALOE's JSON-lines layout, gzip-compressed, with the
keys of the published documents: ``structure`` (a pymatgen ``Structure.as_dict()`` of 2-8 sites in a triclinic
cell, with lattice parameters, ``abc`` and ``xyz`` per site and a ``magmom`` site property), ``energy``,
``forces``, ``stress`` (kbar, VASP sign), ``abs_forces``, ``nsites``, ``elements``, ``nelements``,
``composition``, ``formula_pretty``, ``chemsys``, ``volume``, ``functional``, ``cohesive_energy_per_atom``,
``bandgap``, ``matpes_id`` and ``provenance`` (``original_mp_id``, a few null for aloe's own structures). The file
is generated once (seeded; not timed) in a temporary folder, or kept in ``--keep-data``.

Both paths read that file and write an extxyz file MACE trains on (``REF_energy``, ``REF_forces``,
``REF_stress`` in eV/A^3 with ASE's sign, ``REF_magmoms``, and the ids ``matpes_id``, ``functional``,
``provenance``):

(a) baseline: ``gzip`` text lines -> ``json.loads`` -> ``pymatgen Structure.from_dict`` ->
    ``AseAtomsAdaptor.get_atoms`` -> set the ``REF_`` keys -> ``ase.io.write(..., format="extxyz")`` frame by
    frame into one open file;
(b) aloe: ``aloe.data.formats.convert(input, output)`` -- orjson per line, every record checked (keys, types,
    force shape, 6 stress values), the structure read from the dict directly (no pymatgen objects), frames
    formatted as text (full ``repr`` precision), written to a temp file renamed into place.

Each runs in its own fresh subprocess (this script re-invoked with a hidden ``--child`` flag). The child imports
what it needs and runs its path once on a small file first, so imports stay out of the timing; it then times the
whole run ``--repeats`` times (fastest reported) and reports its resident set after the warm-up (``VmRSS``) and
its peak (``VmHWM`` of its own address space). The parent then reads both extxyz files back with
``ase.io.iread`` and compares the first ``--check-frames`` frames (species, cell, positions, forces, energy,
stress, magnetic moments, ids; positions and forces to 1e-7 because ASE writes them with 8 decimals) and the
number of frames in each file; the script exits with status 1 if they differ.

Results are printed and written to ``benchmarks/results/bench_data.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mib, rss_mib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_data.json"
DEFAULT_N = 100_000
QUICK_N = 5_000
WARMUP_N = 200
TARGET_SPEEDUP = 5.0
METHODS = ("baseline", "aloe")
ELEMENTS = (
    "H Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Rb Sr Y Zr Nb Mo "
    "Ru Rh Pd Ag Cd In Sn Sb Te I Cs Ba La Ce Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi"
).split()


# ---- synthetic documents ---------------------------------------------------------------------------------------
@cache
def _formula(symbols: tuple[str, ...]) -> str:
    from pymatgen.core import Composition

    return Composition(" ".join(symbols)).reduced_formula


def make_doc(rng: np.random.Generator, k: int) -> dict[str, Any]:
    """One document with the published keys (2-8 sites, triclinic cell, magnetic moments)."""
    from aloe.data.formats import structure_dict

    n = int(rng.integers(2, 9))
    chem = rng.choice(len(ELEMENTS), size=int(rng.integers(1, min(n, 4) + 1)), replace=False)
    symbols = [ELEMENTS[chem[i % len(chem)]] for i in range(n)]
    cell = np.diag(rng.uniform(2.5, 7.0, 3)) + rng.uniform(-0.8, 0.8, (3, 3))
    positions = rng.uniform(0.0, 1.0, (n, 3)) @ cell
    magmoms = np.round(rng.normal(0.0, 1.0, n), 3)
    structure = structure_dict(cell, symbols, positions, site_properties={"magmom": magmoms.tolist()})
    forces = rng.normal(0.0, 0.8, (n, 3))
    stress = rng.normal(0.0, 30.0, 6)
    energy = float(rng.normal(-5.0 * n, 2.0))
    counts: dict[str, float] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0.0) + 1.0
    elements = sorted(counts)
    return {
        "matpes_id": f"aloe-{k}",
        "structure": structure,
        "energy": energy,
        "forces": forces.tolist(),
        "stress": stress.tolist(),
        "abs_forces": np.linalg.norm(forces, axis=1).tolist(),
        "nsites": n,
        "elements": elements,
        "nelements": len(elements),
        "composition": counts,
        "formula_pretty": _formula(tuple(sorted(symbols))),
        "chemsys": "-".join(elements),
        "volume": float(abs(np.linalg.det(cell))),
        "functional": "r2SCAN",
        "cohesive_energy_per_atom": float(rng.normal(-4.0, 1.5)),
        "bandgap": float(max(0.0, rng.normal(0.5, 1.0))),
        "provenance": {
            "original_mp_id": None if k % 17 == 0 else f"mp-{int(rng.integers(1, 3_000_000))}",
            "material_id": f"mp-{int(rng.integers(1, 3_000_000))}",
            "task_id": f"mp-{int(rng.integers(1, 3_000_000))}",
        },
    }


def write_input(path: Path, n: int, seed: int) -> float:
    """Write ``n`` documents as gzip-compressed JSON lines; return the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as fh:
        for k in range(n):
            fh.write(json.dumps(make_doc(rng, k), separators=(",", ":")))
            fh.write("\n")
    return time.perf_counter() - t0


# ---- the two paths ---------------------------------------------------------------------------------------------
def run_baseline(src: Path, dst: Path) -> int:
    """gzip -> json.loads -> Structure.from_dict -> AseAtomsAdaptor -> REF_ keys -> ase.io.write, per document."""
    import ase.io
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    n = 0
    with gzip.open(src, "rt", encoding="utf-8") as fin, open(dst, "w") as fout:
        for line in fin:
            doc = json.loads(line)
            structure = Structure.from_dict(doc["structure"])
            atoms = AseAtomsAdaptor.get_atoms(structure)
            magmoms = structure.site_properties.get("magmom")
            for key in list(atoms.arrays):
                if key not in ("numbers", "positions"):
                    del atoms.arrays[key]
            atoms.info.clear()
            atoms.calc = None
            atoms.info["REF_energy"] = float(doc["energy"])
            atoms.info["REF_stress"] = -np.asarray(doc["stress"], dtype=float) / 1602.1766208
            atoms.info["matpes_id"] = doc["matpes_id"]
            atoms.info["functional"] = doc["functional"]
            atoms.info["provenance"] = doc["provenance"]
            atoms.arrays["REF_forces"] = np.asarray(doc["forces"], dtype=float)
            if magmoms is not None:
                atoms.arrays["REF_magmoms"] = np.asarray(magmoms, dtype=float)
            ase.io.write(fout, atoms, format="extxyz")
            n += 1
    return n


def run_aloe(src: Path, dst: Path) -> int:
    """aloe's streamed, checked conversion."""
    from aloe.data.formats import convert

    return convert(src, dst, progress=False).n_written


RUNNERS = {"baseline": run_baseline, "aloe": run_aloe}


# ---- child -------------------------------------------------------------------------------------------------------
def child(method: str, src: Path, dst: Path, warmup: Path, repeats: int) -> dict[str, Any]:
    """Run ``method`` in this (fresh) process: warm-up on a small file, then ``repeats`` timed runs."""
    runner = RUNNERS[method]
    runner(warmup, dst)
    dst.unlink()
    after_warmup = rss_mib()
    times = []
    n = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = runner(src, dst)
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mib()
    return {
        "method": method,
        "records": n,
        "seconds": min(times),
        "seconds_all": times,
        "records_per_s": n / min(times),
        "output_bytes": dst.stat().st_size,
        "rss_after_warmup_mib": after_warmup,
        "peak_rss_mib": peak,
        "increment_mib": peak - after_warmup if after_warmup is not None else None,
    }


def run_child(method: str, src: Path, dst: Path, warmup: Path, repeats: int) -> dict[str, Any]:
    """Re-invoke this script as ``--child method`` in a fresh interpreter and return its report."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        method,
        "--child-input",
        str(src),
        "--child-output",
        str(dst),
        "--child-warmup",
        str(warmup),
        "--repeats",
        str(repeats),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- check ---------------------------------------------------------------------------------------------------------
def count_frames(path: Path) -> int:
    """Frames in an extxyz file (header lines)."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.startswith(b"Lattice="))


def compare(ours: Path, theirs: Path, k: int) -> dict[str, Any]:
    """Read the first ``k`` frames of both files with ``ase.io.iread`` and compare them."""
    from itertools import islice

    import ase.io

    problems: list[str] = []
    max_dev = {"positions": 0.0, "forces": 0.0, "cell": 0.0, "energy": 0.0, "stress": 0.0, "magmoms": 0.0}
    checked = 0
    pairs = zip(
        islice(ase.io.iread(str(ours), index=":", format="extxyz"), k),
        islice(ase.io.iread(str(theirs), index=":", format="extxyz"), k),
        strict=True,
    )
    for i, (a, b) in enumerate(pairs):
        checked += 1
        if a.get_chemical_symbols() != b.get_chemical_symbols() or not (a.pbc == b.pbc).all():
            problems.append(f"frame {i}: species or pbc differ")
        for key, x, y in (
            ("positions", a.positions, b.positions),
            ("forces", a.arrays["REF_forces"], b.arrays["REF_forces"]),
            ("magmoms", a.arrays["REF_magmoms"], b.arrays["REF_magmoms"]),
            ("cell", a.cell[:], b.cell[:]),
            ("energy", a.info["REF_energy"], b.info["REF_energy"]),
            ("stress", a.info["REF_stress"], b.info["REF_stress"]),
        ):
            max_dev[key] = max(max_dev[key], float(np.max(np.abs(np.asarray(x) - np.asarray(y)))))
        for key in ("matpes_id", "functional", "provenance"):
            if a.info.get(key) != b.info.get(key):
                problems.append(
                    f"frame {i}: info[{key!r}] differs ({a.info.get(key)!r} vs {b.info.get(key)!r})"
                )
        if len(problems) > 10:
            break
    tolerances = {
        "positions": 1e-7,
        "forces": 1e-7,
        "magmoms": 1e-7,
        "cell": 1e-12,
        "energy": 0.0,
        "stress": 1e-15,
    }
    for key, tol in tolerances.items():
        if max_dev[key] > tol:
            problems.append(f"{key}: max deviation {max_dev[key]:.3g} > {tol:g}")
    frames = {"aloe": count_frames(ours), "baseline": count_frames(theirs)}
    if frames["aloe"] != frames["baseline"]:
        problems.append(f"frame counts differ: {frames}")
    return {
        "equivalent": not problems,
        "frames_compared": checked,
        "frames": frames,
        "max_deviation": max_dev,
        "tolerances": tolerances,
        "problems": problems[:10],
    }


# ---- driver --------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=None, help=f"Documents (default {DEFAULT_N:,}; {QUICK_N:,} with --quick)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic documents.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed runs per method (fastest reported).")
    parser.add_argument("--check-frames", type=int, default=5000, help="Frames compared with ase.io.iread.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file.")
    parser.add_argument(
        "--keep-data", type=Path, default=None, help="Folder to keep (and reuse) the input in."
    )
    parser.add_argument("--quick", action="store_true", help=f"Smoke run: n = {QUICK_N:,} (unless --n).")
    parser.add_argument("--child", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-input", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-warmup", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        report = child(args.child, args.child_input, args.child_output, args.child_warmup, args.repeats)
        print(json.dumps(report))
        return 0
    if args.n is None:
        args.n = QUICK_N if args.quick else DEFAULT_N
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")

    with tempfile.TemporaryDirectory(prefix="aloe-bench-data-") as tmp:
        work = Path(tmp)
        data_dir = args.keep_data or work
        data_dir.mkdir(parents=True, exist_ok=True)
        src = data_dir / f"MP-ALOE-synthetic-{args.n}-seed{args.seed}.jsonl.gz"
        warmup = data_dir / f"MP-ALOE-synthetic-{WARMUP_N}-seed{args.seed + 1}.jsonl.gz"
        generate_s = None
        if not src.exists():
            print(f"generating {args.n:,} synthetic MP-ALOE documents -> {src} ...")
            generate_s = write_input(src, args.n, args.seed)
        if not warmup.exists():
            write_input(warmup, WARMUP_N, args.seed + 1)
        with gzip.open(src, "rb") as fh:
            raw_bytes = sum(len(line) for line in fh)
        print(
            f"input: {args.n:,} docs, {src.stat().st_size / 2**20:,.1f} MiB gzip "
            f"({raw_bytes / 2**20:,.1f} MiB JSON)"
        )
        runs: dict[str, dict[str, Any]] = {}
        outputs = {m: work / f"{m}.extxyz" for m in METHODS}
        for method in METHODS:
            print(f"{method}: read + convert to extxyz, {args.repeats} run(s), fresh process ...")
            runs[method] = run_child(method, src, outputs[method], warmup, args.repeats)
            print(f"  {runs[method]['seconds']:.2f} s, {runs[method]['records']:,} records")
        print(f"checking the two extxyz files with ase.io.iread (first {args.check_frames:,} frames) ...")
        check = compare(outputs["aloe"], outputs["baseline"], args.check_frames)
    results = {
        "machine": machine(("numpy", "pymatgen", "ase", "orjson")),
        "input": {
            "docs": args.n,
            "seed": args.seed,
            "gzip_mib": src.stat().st_size / 2**20 if src.exists() else None,
            "json_mib": raw_bytes / 2**20,
            "sites_per_doc": "2-8",
            "generate_s": generate_s,
        },
        "config": {"repeats": args.repeats, "warmup_docs": WARMUP_N},
        "timing_source": "children (fresh process per method; fastest of --repeats; imports and a warm-up run "
        "on a small file not timed)",
        "baseline": runs["baseline"],
        "aloe": runs["aloe"],
        "speedup": runs["baseline"]["seconds"] / runs["aloe"]["seconds"],
        "check": check,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, args.output)
    return 0 if check["equivalent"] else 1


def _mib(value: float | None) -> str:
    return f"{value:,.0f} MiB" if value is not None else "n/a"


def print_summary(results: dict[str, Any], path: Path) -> None:
    """Print the final block of figures."""
    mach, inp, check = results["machine"], results["input"], results["check"]
    b, a = results["baseline"], results["aloe"]
    lines = [
        "",
        "=" * 78,
        "data benchmark (MP-ALOE JSONL.gz -> extxyz for MACE)",
        f"machine        {mach['cpu_count']} CPUs, {mach['platform']}, Python {mach['python']}, "
        f"pymatgen {mach.get('pymatgen', '?')}, ase {mach.get('ase', '?')}, orjson {mach.get('orjson', '?')}",
        f"input          {inp['docs']:,} docs (2-8 sites), {inp['json_mib']:,.0f} MiB of JSON",
        "-- time (fresh process per method; fastest of "
        f"{results['config']['repeats']}; imports and warm-up not timed) --",
        f"baseline       {b['seconds']:>9.2f} s  ({b['records_per_s']:>9,.0f} records/s)",
        f"aloe           {a['seconds']:>9.2f} s  ({a['records_per_s']:>9,.0f} records/s)",
        f"speed-up       {results['speedup']:>9.2f} x   (target >= {TARGET_SPEEDUP:.0f} x: "
        f"{'met' if results['speedup'] >= TARGET_SPEEDUP else 'NOT met'})",
        f"equivalent     {'yes' if check['equivalent'] else 'NO'} ({check['frames_compared']:,} frames compared "
        f"with ase.io.iread; {check['frames']['aloe']:,} / {check['frames']['baseline']:,} frames)"
        + ("" if check["equivalent"] else f": {'; '.join(check['problems'][:3])}"),
        "-- memory (VmRSS after imports + warm-up; peak VmHWM; increment) --",
    ]
    for name, run in (("baseline", b), ("aloe", a)):
        lines.append(
            f"{name:<14} {_mib(run['rss_after_warmup_mib'])}; peak {_mib(run['peak_rss_mib'])}; "
            f"+{_mib(run['increment_mib'])}"
        )
    lines += [f"results        {path}", "=" * 78]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
