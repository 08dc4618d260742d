"""Benchmark the train stage's streamed training data: preparation and first epoch at 10k and 100k records.

Usage::

    python benchmarks/bench_train_data.py [--sizes 10000 100000] [--reference-size 10000] [--shard-size N]
                                          [--threads T] [--epoch-timeout S] [--keep-data DIR] [--output PATH]
                                          [--quick]

The data: label run folders (``records/chunk-*.jsonl`` + ``isolated_atoms.yaml``, as ``aloe label`` writes
them) of small cells labelled with ASE's EMT. Each cell has 2-4 atoms and is a random binary of two EMT metals
(Al, Ni, Cu, Pd, Ag, Pt, Au) on an fcc or bcc lattice (Vegard lattice constant), with a random symmetric strain
(each component ~ N(0, 0.02)) and a 0.03 A rattle. Each record is made by aloe's ``make_record``. The largest
set is generated once (seeded, not timed, on two processes) and the smaller ones are its first chunks (the same
records, so ids and splits agree).

For each size, in fresh processes (this script re-invoked with a hidden ``--child`` flag):

preparation
    ``aloe.train.stage.prepare_run``: read the inputs (ids kept, records not), split, and write the member's
    train and valid parts as mace-torch HDF5 shards, its test set as extxyz, and the ``run_train`` arguments.
    One member, preset ``tiny``, ``data_format`` hdf5. Wall time, and peak RSS (``VmHWM`` of the child; also its
    ``ru_maxrss``).
first epoch
    mace-torch's ``run_train`` with that member's arguments and ``--max_num_epochs=1``, started from a fresh
    wrapper process the way the stage starts it (same command line and thread variables). It is stopped at the
    end of the first epoch (mace's "Epoch 0:" line: mace's final evaluation of the train and valid sets, which
    follows, is not measured), or after ``--epoch-timeout`` seconds. Peak RSS is the wrapper's
    ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, that of the mace process (its only child); ``VmRSS`` is also
    sampled every 0.2 s and its peak kept per phase. The phases come from mace's log lines: start-up, the pass
    over the training set for the average number of neighbours, the pass for the scaling statistics, building
    the model, the epoch (from the "Initial:" validation before training to the "Epoch 0:" line: one pass of
    training and one validation). Their wall times are reported; a run that was stopped reports the phases it finished, and its peak RSS so far.

The extxyz path (``data_format`` extxyz: mace reads the whole training set into memory) is measured at
``--reference-size`` as the baseline of the same run, right after the hdf5 run of that size. Printed: the
100k/10k ratios of peak RSS (target <= 1.3; for run_train also through the statistics passes, which every run
finishes) and of wall time (10 = linear), and extxyz against hdf5 at the reference size. Results go to
``benchmarks/results/bench_train_data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_train_data.json"
DEFAULT_SIZES = (10_000, 100_000)
QUICK_SIZES = (1_000, 4_000)
CHUNK = 1_000
TARGET_RSS_RATIO = 1.3
METALS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
FCC_A = {"Al": 4.05, "Ni": 3.52, "Cu": 3.61, "Pd": 3.89, "Ag": 4.09, "Pt": 3.92, "Au": 4.08}
FUNCTIONAL = "EMT (stand-in, not DFT)"
_T0 = time.perf_counter()


def log(message: str) -> None:
    """One progress line with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", flush=True)


# ---- synthetic label runs ----------------------------------------------------------------------------------------
def make_cell(rng: np.random.Generator) -> Any:
    """A random 2-4 atom binary of two EMT metals on an fcc or bcc lattice, strained and rattled."""
    from ase.build import bulk

    a_el, b_el = rng.choice(len(METALS), size=2, replace=False)
    pair = (METALS[a_el], METALS[b_el])
    a_fcc = 0.5 * (FCC_A[pair[0]] + FCC_A[pair[1]])
    n = int(rng.integers(2, 5))
    if rng.random() < 0.5:
        atoms = bulk("Cu", "fcc", a=a_fcc).repeat({2: (2, 1, 1), 3: (3, 1, 1), 4: (2, 2, 1)}[n])
    else:
        a_bcc = a_fcc / 2 ** (1 / 3)  # same volume per atom
        atoms = bulk("Cu", "bcc", a=a_bcc).repeat({2: (2, 1, 1), 3: (3, 1, 1), 4: (2, 2, 1)}[n])
    atoms.symbols = [pair[int(rng.integers(0, 2))] for _ in range(n)]
    atoms.symbols[0], atoms.symbols[1] = pair  # both elements present
    eps = rng.normal(0.0, 0.02, 6)
    strain = np.array([[eps[0], eps[5], eps[4]], [eps[5], eps[1], eps[3]], [eps[4], eps[3], eps[2]]])
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
    return atoms


def write_chunk(args: tuple[Path, int, int]) -> int:
    """Label chunk ``index`` (``CHUNK`` cells, seeded by its index) with EMT and write it as JSON lines."""
    from ase.calculators.emt import EMT

    from aloe.data.formats import write_records
    from aloe.data.records import make_record

    folder, index, seed = args
    target = folder / "records" / f"chunk-{index:05d}.jsonl"
    if target.exists():
        return 0
    rng = np.random.default_rng([seed, index])
    records = []
    for j in range(CHUNK):
        atoms = make_cell(rng)
        atoms.calc = EMT()
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = None
        records.append(
            make_record(
                atoms,
                energy,
                forces,
                stress,
                functional=FUNCTIONAL,
                code="emt",
                code_version="ase",
                settings={"benchmark": "bench_train_data"},
                aloe_id=f"bench-{index}-{j}",
            )
        )
    write_records(records, target, "jsonl")
    return CHUNK


def make_label_run(folder: Path, n: int, seed: int) -> float:
    """A label run folder of ``n`` EMT records (``n`` a multiple of ``CHUNK``); the seconds it took."""
    from multiprocessing import get_context

    import yaml
    from ase import Atoms
    from ase.calculators.emt import EMT

    t0 = time.perf_counter()
    (folder / "records").mkdir(parents=True, exist_ok=True)
    energies = {}
    for symbol in METALS:
        atom = Atoms(symbol, cell=[20.0, 20.5, 21.0], pbc=True)
        atom.calc = EMT()
        energies[symbol] = float(atom.get_potential_energy())
    (folder / "isolated_atoms.yaml").write_text(
        yaml.safe_dump({"code": "emt", "source": "ASE EMT, one atom in a 20 A box", "energies": energies})
    )
    tasks = [(folder, i, seed) for i in range(n // CHUNK)]
    with get_context("spawn").Pool(min(2, os.cpu_count() or 1)) as pool:
        for done, _ in enumerate(pool.imap_unordered(write_chunk, tasks), start=1):
            if done % 10 == 0 or done == len(tasks):
                log(f"  {done * CHUNK:,} / {n:,} records")
    return time.perf_counter() - t0


def subset(full: Path, folder: Path, n: int) -> Path:
    """A label run folder holding the first ``n`` records of ``full`` (hard links to its chunks)."""
    (folder / "records").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(full / "isolated_atoms.yaml", folder / "isolated_atoms.yaml")
    for i in range(n // CHUNK):
        name = f"chunk-{i:05d}.jsonl"
        if not (folder / "records" / name).exists():
            os.link(full / "records" / name, folder / "records" / name)
    return folder


# ---- children --------------------------------------------------------------------------------------------------------
def _settings(inputs: Path, output: Path, fmt: str, shard_size: int, threads: int) -> Any:
    from aloe.train.settings import TrainSettings

    return TrainSettings(
        inputs=[inputs],
        output=output,
        preset="tiny",
        epochs=1,
        committee_size=1,
        data_format=fmt,
        hdf5_shard_size=shard_size,
        threads=threads,
        progress=False,
    )


def child_prepare(inputs: Path, output: Path, fmt: str, shard_size: int, threads: int) -> dict[str, Any]:
    """Time ``prepare_run`` in this fresh process (imports first, not timed)."""
    from aloe.potentials.mace import ensure_e3nn_importable
    from aloe.train.stage import prepare_run

    ensure_e3nn_importable()
    import mace.data.utils  # noqa: F401  (the imports a preparation needs, out of the timing)

    settings = _settings(inputs, output, fmt, shard_size, threads)
    t0 = time.perf_counter()
    prep = prepare_run(settings)
    seconds = time.perf_counter() - t0
    member = prep.members[0]
    files = [member.folder / f for part in ("train", "valid", "test") for f in member.files(part)]
    return {
        "format": prep.format,
        "structures": len(prep.data.ids),
        "sizes": member.sizes,
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "seconds": seconds,
        "timings": prep.timings,
        "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "folder": str(member.folder),
        "argv": prep.tasks[0]["argv"],
    }


#: mace's line at the end of the first epoch's validation: the measurement stops there.
EPOCH_DONE = "INFO: Epoch 0:"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) INFO: (.*)$")
#: mace's log lines that open and close each phase of run_train (the phases follow one another).
PHASES = {
    "startup": (None, "Computing average number of neighbors"),
    "neighbours_pass": ("Computing average number of neighbors", "Average number of neighbors:"),
    "scaling_pass": ("===========MODEL DETAILS===========", "Building model"),
    "build": ("Building model", "Initial:"),
    "epoch": ("Initial:", "Epoch 0:"),
    "final_evaluation": ("Computing metrics", "Error-table on TRAIN and VALID"),
}


def _stamps(log_text: str) -> list[tuple[float, str]]:
    """(time, message) of mace's timestamped log lines."""
    out = []
    for line in log_text.splitlines():
        m = _STAMP.match(line)
        if m:
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp(), m.group(2)))
    return out


def _phases(stamps: list[tuple[float, str]], t_start: float) -> dict[str, tuple[float, float]]:
    """Start and end (s since the epoch) of each phase mace finished."""
    first = {}
    for t, message in stamps:
        for _, (opening, closing) in PHASES.items():
            for marker in (opening, closing):
                if marker and message.startswith(marker) and marker not in first:
                    first[marker] = t
    done = {}
    for name, (opening, closing) in PHASES.items():
        t0 = t_start if opening is None else first.get(opening)
        if t0 is not None and closing in first:
            done[name] = (t0, first[closing])
    return done


def child_epoch(folder: Path, threads: int, timeout: float) -> dict[str, Any]:
    """Run mace's run_train once (``--max_num_epochs=1``) as the stage does, for at most ``timeout`` s.

    Peak RSS: ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (mace is this process's only child), and the peak of
    ``VmRSS`` samples (every 0.2 s) within each phase mace finished.
    """
    import threading

    import psutil

    from aloe.train.mace_args import ENTRY_POINT
    from aloe.train.stage import _thread_env

    argv = json.loads((folder / "mace_args.json").read_text())["argv"]
    argv = [a for a in argv if not a.startswith("--max_num_epochs=")] + ["--max_num_epochs=1"]
    samples: list[tuple[float, float]] = []
    t_start = time.time()
    with open(folder / "train.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", ENTRY_POINT, *argv],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_thread_env(threads),
        )
        halt = threading.Event()

        def sample() -> None:
            handle = psutil.Process(proc.pid)
            while not halt.is_set():
                try:
                    samples.append((time.time(), handle.memory_info().rss / 2**20))
                except psutil.Error:
                    return
                halt.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # The first epoch ends at mace's "Epoch 0:" line; the final evaluation after it is not measured.
        deadline = time.time() + timeout
        completed, code = False, None
        while time.time() < deadline:
            try:
                code = proc.wait(2.0)
                completed = True
                break
            except subprocess.TimeoutExpired:
                if EPOCH_DONE in (folder / "train.log").read_text(errors="replace"):
                    completed = True
                    break
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        halt.set()
        sampler.join()
    seconds = time.time() - t_start
    text = (folder / "train.log").read_text(errors="replace")
    phases = _phases(_stamps(text), t_start)
    phase_rss = {
        name: max((r for t, r in samples if t0 <= t <= t1), default=None) for name, (t0, t1) in phases.items()
    }
    last = [m for _, m in _stamps(text)][-1:] or [""]
    return {
        "completed": completed,
        "exit_code": code,
        "timeout_s": timeout,
        "seconds": seconds,
        "epoch_seconds": (phases["epoch"][1] - phases["epoch"][0]) if "epoch" in phases else None,
        "phase_seconds": {name: t1 - t0 for name, (t0, t1) in phases.items()},
        "phase_peak_rss_mib": phase_rss,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        "sampled_peak_rss_mib": max((r for _, r in samples), default=None),
        "last_log_line": last[0][:200],
        "log_tail": text.splitlines()[-5:] if completed and code else [],
    }


def run_child(mode: str, *args: str) -> dict[str, Any]:
    """This script in a fresh interpreter as ``--child mode``; its JSON report."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(
    inputs: Path, work: Path, fmt: str, shard_size: int, threads: int, timeout: float
) -> dict[str, Any]:
    """Preparation and first epoch of one dataset in one format."""
    output = work / f"run-{inputs.name}-{fmt}"
    shutil.rmtree(output, ignore_errors=True)
    log(f"{inputs.name} ({fmt}): preparation ...")
    prep = run_child("prepare", str(inputs), str(output), fmt, str(shard_size), str(threads))
    log(f"  {prep['seconds']:.1f} s, peak RSS {prep['peak_rss_mib']:.0f} MiB; first epoch ...")
    epoch = run_child("epoch", prep["folder"], str(threads), str(timeout))
    if epoch["exit_code"] not in (0, None):
        raise RuntimeError(f"run_train failed: {epoch['log_tail']}")
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in epoch["phase_seconds"].items())
    log(
        f"  run_train {'done' if epoch['completed'] else 'stopped'} after {epoch['seconds']:.1f} s ({phases}), "
        f"peak RSS {epoch['peak_rss_mib']:.0f} MiB"
    )
    shutil.rmtree(output, ignore_errors=True)
    prep.pop("argv")
    return {"prepare": prep, "epoch": epoch}


# ---- driver ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="Records (default 10000 100000).")
    parser.add_argument(
        "--reference-size", type=int, default=None, help="Size of the extxyz run (the smallest)."
    )
    parser.add_argument(
        "--shard-size", type=int, default=None, help="Structures per HDF5 shard (default: the setting's)."
    )
    parser.add_argument("--threads", type=int, default=2, help="Torch threads of the mace process.")
    parser.add_argument(
        "--epoch-timeout",
        type=float,
        default=1200.0,
        help="Seconds after which a run_train is stopped (its phases so far and peak RSS are reported).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic records.")
    parser.add_argument(
        "--keep-data", type=Path, default=None, help="Folder to keep (and reuse) the records in."
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file.")
    parser.add_argument("--quick", action="store_true", help=f"Smoke run: sizes {QUICK_SIZES}.")
    parser.add_argument("--child", choices=("prepare", "epoch"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child == "prepare":
        inputs, output, fmt, shard_size, threads = args.child_args
        print(json.dumps(child_prepare(Path(inputs), Path(output), fmt, int(shard_size), int(threads))))
        return 0
    if args.child == "epoch":
        folder, threads, timeout = args.child_args
        print(json.dumps(child_epoch(Path(folder), int(threads), float(timeout))))
        return 0
    sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    if args.shard_size is None:
        from aloe.train.settings import TrainSettings

        args.shard_size = TrainSettings.model_fields["hdf5_shard_size"].default
    if any(n % CHUNK for n in sizes):
        raise SystemExit(f"sizes must be multiples of {CHUNK}")
    reference = args.reference_size or sizes[0]
    if reference not in sizes:
        raise SystemExit("--reference-size must be one of --sizes")
    with tempfile.TemporaryDirectory(prefix="aloe-bench-train-data-") as tmp:
        work = Path(tmp)
        data_dir = args.keep_data or work
        full = data_dir / f"emt-{max(sizes)}-seed{args.seed}"
        generate_s = None
        if not (full / "records" / f"chunk-{max(sizes) // CHUNK - 1:05d}.jsonl").exists():
            log(f"labelling {max(sizes):,} small cells with EMT -> {full} ...")
            generate_s = make_label_run(full, max(sizes), args.seed)
        inputs = {n: (full if n == max(sizes) else subset(full, work / f"emt-{n}", n)) for n in sizes}
        runs: dict[str, dict[str, Any]] = {}
        for n in sizes:  # the extxyz baseline right after hdf5 at the same size
            for fmt in ("hdf5", "extxyz") if n == reference else ("hdf5",):
                runs[f"{fmt}-{n}"] = measure(
                    inputs[n], work, fmt, args.shard_size, args.threads, args.epoch_timeout
                )
    small, large = f"hdf5-{sizes[0]}", f"hdf5-{sizes[-1]}"

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x is not None and y else None

    def get(name: str, stage: str, key: str, sub: str | None = None) -> float | None:
        value = runs[name][stage][key]
        return value.get(sub) if sub is not None else value

    def data_passes_rss(name: str) -> float | None:
        """Peak RSS of mace through start-up and its two statistics passes (every run gets that far)."""
        peaks = [
            get(name, "epoch", "phase_peak_rss_mib", p)
            for p in ("startup", "neighbours_pass", "scaling_pass")
        ]
        return max((p for p in peaks if p is not None), default=None)

    xyz, ref = f"extxyz-{reference}", f"hdf5-{reference}"
    ratios = {
        "sizes": f"{sizes[-1]}/{sizes[0]}",
        "records": sizes[-1] / sizes[0],
        "large_run_train_completed": runs[large]["epoch"]["completed"],
        "prepare_rss": ratio(get(large, "prepare", "peak_rss_mib"), get(small, "prepare", "peak_rss_mib")),
        "prepare_wall": ratio(get(large, "prepare", "seconds"), get(small, "prepare", "seconds")),
        "run_train_rss": ratio(get(large, "epoch", "peak_rss_mib"), get(small, "epoch", "peak_rss_mib")),
        "run_train_data_passes_rss": ratio(data_passes_rss(large), data_passes_rss(small)),
        "neighbours_pass_wall": ratio(
            get(large, "epoch", "phase_seconds", "neighbours_pass"),
            get(small, "epoch", "phase_seconds", "neighbours_pass"),
        ),
        "epoch_wall": ratio(get(large, "epoch", "epoch_seconds"), get(small, "epoch", "epoch_seconds")),
        "extxyz_over_hdf5_run_train_rss": ratio(
            get(xyz, "epoch", "peak_rss_mib"), get(ref, "epoch", "peak_rss_mib")
        ),
        "extxyz_over_hdf5_prepare_wall": ratio(
            get(xyz, "prepare", "seconds"), get(ref, "prepare", "seconds")
        ),
        "extxyz_over_hdf5_epoch_wall": ratio(
            get(xyz, "epoch", "epoch_seconds"), get(ref, "epoch", "epoch_seconds")
        ),
    }
    results = {
        "machine": machine(("numpy", "ase", "torch", "mace-torch", "h5py")),
        "input": {
            "sizes": sizes,
            "atoms_per_cell": "2-4",
            "labels": "ASE EMT",
            "seed": args.seed,
            "generate_s": generate_s,
        },
        "config": {"preset": "tiny", "epochs": 1, "shard_size": args.shard_size, "threads": args.threads},
        "runs": runs,
        "ratios": ratios,
        "target_rss_ratio": TARGET_RSS_RATIO,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, args.output)
    return 0


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if value is not None else "n/a"


def print_summary(results: dict[str, Any], path: Path) -> None:
    """Print the final block of figures."""
    mach, runs, r = results["machine"], results["runs"], results["ratios"]
    lines = [
        "",
        "=" * 108,
        "train data benchmark (records -> member's training data -> first mace epoch; preset tiny)",
        f"machine   {mach['cpu_count']} CPUs, {mach['platform']}, Python {mach['python']}, torch "
        f"{mach.get('torch', '?')}, mace-torch {mach.get('mace-torch', '?')}, h5py {mach.get('h5py', '?')}",
        f"{'run':<14}{'prepare s':>10}{'prep RSS':>10}{'MiB on disk':>12}{'run_train s':>12}{'nbr pass s':>11}"
        f"{'epoch s':>9}{'train RSS':>11}  phases reached",
    ]
    for name, run in runs.items():
        p, e = run["prepare"], run["epoch"]
        lines.append(
            f"{name:<14}{p['seconds']:>10.1f}{p['peak_rss_mib']:>10.0f}{p['bytes'] / 2**20:>12.1f}"
            f"{e['seconds']:>12.1f}{_f(e['phase_seconds'].get('neighbours_pass'), '{:.1f}'):>11}"
            f"{_f(e['epoch_seconds'], '{:.1f}'):>9}{e['peak_rss_mib']:>11.0f}  "
            + (
                "all"
                if e["completed"]
                else f"stopped at {e['timeout_s']:.0f} s: {', '.join(e['phase_seconds'])}"
            )
        )
    rss = [x for x in (r["prepare_rss"], r["run_train_rss"]) if x is not None]
    ok = bool(rss) and all(x <= TARGET_RSS_RATIO for x in rss)
    lines += [
        f"-- hdf5, {r['sizes']} records ({r['records']:.0f}x the data) --",
        f"peak RSS ratio   preparation {_f(r['prepare_rss'])}, run_train {_f(r['run_train_rss'])} "
        f"(through the statistics passes {_f(r['run_train_data_passes_rss'])})  "
        f"(target <= {TARGET_RSS_RATIO}: {'met' if ok else 'NOT met'})"
        + ("" if r["large_run_train_completed"] else "; the large run_train was stopped, see phases"),
        f"wall ratio       preparation {_f(r['prepare_wall'])}, one pass over the training data "
        f"{_f(r['neighbours_pass_wall'])}, epoch {_f(r['epoch_wall'])}  ({r['records']:.0f} = linear)",
        "-- extxyz against hdf5 at the reference size --",
        f"extxyz / hdf5    run_train RSS {_f(r['extxyz_over_hdf5_run_train_rss'])}, preparation wall "
        f"{_f(r['extxyz_over_hdf5_prepare_wall'])}, epoch wall {_f(r['extxyz_over_hdf5_epoch_wall'])}",
        f"results: {path}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
