"""Benchmark aloe at a million candidates: generate + screen through the CLI on a 2-worker Dask LocalCluster.

Usage::

    python benchmarks/bench_million.py [--identity] [--scale] [--summary]
        [--n 1000000] [--sizes 1e5 1e6] [--kill-at 0.5] [--subset 1e4] [--stages generate screen]
        [--workers 2] [--chunk-size 1000] [--prototypes PATH] [--seed 0] [--metrics-from SCREEN_RUN]
        [--keep DIR] [--results DIR]

Without any of ``--identity``, ``--scale``, ``--summary`` all three parts run. Everything runs on this machine.

Each run is the CLI as a user runs it, in a subprocess of its own: ``aloe generate -c CFG -o GEN`` (``--sample N``
candidates drawn from the 817 published MP-ALOE prototypes in ``../shared/data/mp-aloe-prototypes``, all 89
elements, chunks of ``--chunk-size``), then ``aloe screen GEN -c CFG -o SCREEN`` with a cheap committee (three
Lennard-Jones parameter sets, total-energy basis, no references), both with ``--executor dask --workers 2`` (aloe
starts its own ``LocalCluster``; its nannies live in the CLI process, its worker processes are the CLI's children).

While a run goes, the CLI process (the client) and its child processes (the Dask workers, and multiprocessing's
resource trackers) are sampled with psutil every 0.2 s: the peak RSS of the client, of each child, of the largest
worker, and of all workers together. ``os.getloadavg()`` is recorded with every run (other jobs on the machine
slow the throughput figures down).

A killed run: when ``--kill-at`` of the stage's chunk files exist (``chunks/`` of generate, ``metrics/`` of screen),
the client process alone gets SIGKILL (as ``kill -9`` of a login-node client would; the process group is left
alone). Its worker processes are then watched for 60 s: when each one exits (they should notice their parent is
gone), and any still alive after that is killed by its pid and reported. Then the same command runs again: it
must resume (``chunks_resumed`` > 0) and finish.

(1) ``--identity``: at ``--subset`` candidates, an uninterrupted run into folder A and a killed + resumed run
    (both stages killed at ``--kill-at``) into folder B; every product file (the stages' products as in
    ``tests/test_dask_end_to_end.py``: ``chunks/*.parquet``, ``occupations.json``, ``plan.npz`` of generate;
    ``metrics/*.parquet``, ``selected/*.parquet``, ``selection_by_*.csv`` of screen) compared byte for byte.
(2) ``--scale``: a run at each of ``--sizes``; the run at ``--n`` is killed at ``--kill-at`` in both stages and
    resumed (its RSS is the peak over both attempts), the others run uninterrupted (a size already run by part 1
    uninterrupted is reused). Reported per size and stage: candidates/s (of the stage's own work phase,
    ``timings_s.generate`` / ``timings_s.screen`` of ``summary.yaml``, and of the wall clock), the peak RSS of the
    client and of the workers, and the ratio of the largest size to the smallest (flat: at most 1.2 x); disk per
    million candidates (the run folders' allocated size, scaled). ``--stages generate`` runs only that stage (its
    results go under ``scale-generate``).
(3) ``--summary``: what the screen client holds at the end of a run: ``aloe.screen.stage.summarize`` (counts,
    ``selection_by_*.csv``, plots over all metric rows) in a fresh process over ``--subset`` and each of ``--sizes``
    metric rows, made of the metric files of a real screen run (part 1's uninterrupted one, or ``--metrics-from``)
    repeated; its time and peak RSS (``VmHWM``). Cheap: a screen at 10^6 takes hours, its summary seconds.

Writes ``benchmarks/results/bench_million.json`` and ``bench_million.md`` (``--results`` moves them; results are
saved after every run, so an interrupted benchmark keeps what it measured; parts that did not run keep their
earlier results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, peak_rss_mib, rss_mib  # noqa: E402

ROOT = HERE.parent
PUBLISHED = ROOT.parent / "shared" / "data" / "mp-aloe-prototypes"
RESULTS = ROOT / "benchmarks" / "results"
NAME = "bench_million"
ALOE = str(Path(sys.executable).with_name("aloe"))
#: Cheap committee: three Lennard-Jones parameter sets (tests/loop/test_loop.py); rc: ``--lj-cutoff``.
COMMITTEE = [
    "lj(sigma=2.3,epsilon=0.05,rc=6.0)",
    "lj(sigma=2.4,epsilon=0.05,rc=6.0)",
    "lj(sigma=2.3,epsilon=0.07,rc=6.0)",
]
#: The stages' products (tests/test_dask_end_to_end.py PRODUCTS), and the files that mark a chunk done.
PRODUCTS = {
    "generate": ["chunks/*.parquet", "occupations.json", "plan.npz"],
    "screen": ["metrics/*.parquet", "selected/*.parquet", "selection_by_*.csv"],
}


def committee(rc: float) -> list[str]:
    """:data:`COMMITTEE` with the cutoff ``rc``."""
    return [name.replace("rc=6.0", f"rc={rc:g}") for name in COMMITTEE]


DONE_FILES = {"generate": "chunks/chunk-*.parquet", "screen": "metrics/chunk-*.parquet"}
TARGET_FLAT = 1.2
SAMPLE_INTERVAL = 0.2
ORPHAN_WATCH_S = 60.0
PROGRESS_EVERY_S = 60.0
_T0 = time.perf_counter()


def log(message: str) -> None:
    """One progress line with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", flush=True)


def load() -> list[float]:
    """The load average now (1, 5, 15 min)."""
    return [round(x, 2) for x in os.getloadavg()]


def write_config(path: Path, args: argparse.Namespace, n: int) -> Path:
    """The YAML settings of both stages for ``n`` candidates."""
    runtime = {"executor": "dask", "workers": args.workers, "progress": False}
    config = {
        "generate": {
            "prototypes": {"source": args.prototypes},
            "sample": n,
            "seed": args.seed,
            "chunk_size": args.chunk_size,
            **runtime,
        },
        "screen": {
            "committee": committee(args.lj_cutoff),
            "energy_basis": "total",
            "compute_references": False,
            **runtime,
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- one CLI process, sampled and perhaps killed -----------------------------------------------------------------
class Watch(threading.Thread):
    """Sample the RSS of process ``proc`` and of its descendants every :data:`SAMPLE_INTERVAL` s; maybe kill it.

    With ``kill_when`` (a function returning True when it is time), the client process alone gets SIGKILL.
    """

    def __init__(self, proc: subprocess.Popen, kill_when: Any = None, progress: Any = None) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = proc
        self.client = psutil.Process(proc.pid)
        self.kill_when = kill_when
        self.client_peak = 0.0
        self.children: dict[int, dict[str, Any]] = {}
        self.workers_sum_peak = 0.0
        self.killed_at: float | None = None
        self.children_at_kill: list[int] = []
        self.samples = 0
        self.progress = progress
        self._halt = threading.Event()

    def _sample(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            self.client_peak = max(self.client_peak, self.client.memory_info().rss / 2**20)
        try:
            kids = self.client.children(recursive=True)
        except psutil.Error:
            return
        total = 0.0
        for kid in kids:
            try:
                rss = kid.memory_info().rss / 2**20
                entry = self.children.get(kid.pid)
                if entry is None:
                    cmd = " ".join(kid.cmdline())
                    role = "resource_tracker" if "resource_tracker" in cmd else "worker"
                    entry = self.children[kid.pid] = {"pid": kid.pid, "role": role, "peak_mib": 0.0}
                entry["peak_mib"] = max(entry["peak_mib"], rss)
                if entry["role"] == "worker":
                    total += rss
            except psutil.Error:
                continue
        self.workers_sum_peak = max(self.workers_sum_peak, total)
        self.samples += 1

    def run(self) -> None:
        last_report = time.perf_counter()
        while not self._halt.is_set() and self.proc.poll() is None:
            self._sample()
            if self.progress is not None and time.perf_counter() - last_report > PROGRESS_EVERY_S:
                last_report = time.perf_counter()
                f = self.figures()
                log(
                    f"    {self.progress()}; so far client {f['client_peak_mib']:.0f} MiB, worker "
                    f"{f['worker_peak_mib']:.0f} MiB (all workers {f['workers_sum_peak_mib']:.0f}); load {load()}"
                )
            if self.kill_when is not None and self.killed_at is None and self.kill_when():
                self.children_at_kill = [c.pid for c in self.client.children(recursive=True)]
                self._sample()
                os.kill(self.proc.pid, signal.SIGKILL)  # the client alone, not its process group
                self.killed_at = time.perf_counter()
                return
            self._halt.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()

    def figures(self) -> dict[str, Any]:
        """Peak RSS of the client and of its workers (MiB)."""
        workers = [c for c in self.children.values() if c["role"] == "worker"]
        return {
            "client_peak_mib": round(self.client_peak, 1),
            "worker_peak_mib": round(max((w["peak_mib"] for w in workers), default=0.0), 1),
            "workers_sum_peak_mib": round(self.workers_sum_peak, 1),
            "children": [{**c, "peak_mib": round(c["peak_mib"], 1)} for c in self.children.values()],
            "samples": self.samples,
        }


def watch_orphans(pids: list[int], seconds: float = ORPHAN_WATCH_S) -> dict[str, Any]:
    """What becomes of the killed client's child processes: when each exits; kill (by pid) those that stay."""
    import psutil

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    t0 = time.perf_counter()
    gone: dict[int, float] = {}
    while time.perf_counter() - t0 < seconds and len(gone) < len(pids):
        for pid in pids:
            if pid not in gone and not alive(pid):
                gone[pid] = round(time.perf_counter() - t0, 2)
        time.sleep(0.1)
    survivors = [pid for pid in pids if pid not in gone]
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {
        "children_at_kill": len(pids),
        "exited_within_s": {str(pid): s for pid, s in gone.items()},
        "last_exit_s": max(gone.values(), default=None),
        "survivors_after_watch": survivors,
        "watch_seconds": seconds,
    }


def done_chunks(folder: Path, stage: str) -> int:
    """Chunk files of ``stage`` finished in ``folder`` (written atomically: temp files start with a dot)."""
    return sum(1 for _ in folder.glob(DONE_FILES[stage]))


def run_cli(cmd: list[str], log_file: Path, kill_when: Any = None, progress: Any = None) -> dict[str, Any]:
    """Run one CLI command to its end (or to its kill); wall time, return code, RSS peaks, orphans."""
    load_before = load()
    t0 = time.perf_counter()
    with open(log_file, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ALOE_PROGRESS": "0"},
            start_new_session=True,
        )
        watch = Watch(proc, kill_when, progress)
        watch.start()
        rc = proc.wait()
        watch.stop()
    out = {
        "command": " ".join(cmd),
        "returncode": rc,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "load_before": load_before,
        "load_after": load(),
        **watch.figures(),
    }
    if watch.killed_at is not None:
        out["killed_after_s"] = round(watch.killed_at - t0, 2)
        out["orphans"] = watch_orphans(watch.children_at_kill)
    elif rc != 0:
        raise RuntimeError(f"{cmd} failed ({rc}); see {log_file}:\n{log_file.read_text()[-3000:]}")
    return out


def summary_of(run: Path) -> dict[str, Any]:
    """``summary.yaml`` of a finished run."""
    return yaml.safe_load((run / "summary.yaml").read_text())


def run_stage(
    stage: str, cmd: list[str], folder: Path, n: int, chunk_size: int, kill_at: float | None
) -> dict:
    """One stage: perhaps killed at ``kill_at`` of its chunks and run again; its figures."""
    total = math.ceil(n / chunk_size)
    log_file = folder.parent / f"{folder.name}.log"
    attempts = []

    def progress() -> str:
        return f"{stage}: {done_chunks(folder, stage)}/{total} chunks"

    if kill_at is not None:
        threshold = max(1, round(kill_at * total))

        def kill_when() -> bool:
            return done_chunks(folder, stage) >= threshold

        first = run_cli(cmd, log_file, kill_when, progress)
        first["chunks_done_at_kill"] = done_chunks(folder, stage)
        attempts.append(first)
        orphans = first.get("orphans", {})
        log(
            f"  {stage}: client killed after {first.get('killed_after_s')} s at {first['chunks_done_at_kill']}"
            f"/{total} chunks; {orphans.get('children_at_kill')} child processes, last exited after "
            f"{orphans.get('last_exit_s')} s, survivors {orphans.get('survivors_after_watch')}"
        )
        if "killed_after_s" not in first:
            log(f"  {stage}: the run finished before the kill; nothing to resume")
    if not attempts or "killed_after_s" in attempts[-1]:
        attempts.append(run_cli(cmd, log_file, progress=progress))
    summary = summary_of(folder)
    counts, timings = summary["counts"], summary["timings_s"]
    phase = float(timings[stage])
    now = int(counts["candidates_written"] if stage == "generate" else counts["structures_screened_now"])
    last = attempts[-1]
    figures = {
        "stage": stage,
        "n": n,
        "chunks": total,
        "killed": kill_at is not None,
        "attempts": attempts,
        "resumed": bool(summary.get("resumed")),
        "chunks_resumed": int(counts["chunks_resumed"]),
        "done_now": now,
        "phase_seconds": phase,
        "timings_s": timings,
        # the last attempt's own rate (the stage's work phase, and its wall clock)
        "per_s_phase": now / phase if phase else None,
        "per_s_wall": now / last["wall_seconds"],
        "wall_seconds_total": round(sum(a["wall_seconds"] for a in attempts), 2),
        "client_peak_mib": max(a["client_peak_mib"] for a in attempts),
        "worker_peak_mib": max(a["worker_peak_mib"] for a in attempts),
        "workers_sum_peak_mib": max(a["workers_sum_peak_mib"] for a in attempts),
        "disk_bytes": disk_bytes(folder),
        "load_average": load(),
    }
    if stage == "screen":
        figures["outcomes"] = counts.get("outcomes")
    log(
        f"  {stage} n={n}: {figures['per_s_phase']:.1f}/s phase, {figures['per_s_wall']:.1f}/s wall "
        f"({now} done now, {figures['chunks_resumed']} chunks resumed); client {figures['client_peak_mib']:.0f} "
        f"MiB, worker {figures['worker_peak_mib']:.0f} MiB (all workers {figures['workers_sum_peak_mib']:.0f}); "
        f"load {figures['load_average']}"
    )
    return figures


def disk_bytes(folder: Path) -> int:
    """Allocated bytes of the files under ``folder`` (as ``du``)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def run_both(args: argparse.Namespace, root: Path, n: int, kill_at: float | None) -> dict[str, Any]:
    """generate then screen at ``n`` candidates into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = write_config(root / "config.yaml", args, n)
    gen, scr = root / "generate", root / "screen"
    log(f"n={n} into {root} ({'killed at ' + str(kill_at) if kill_at else 'uninterrupted'})")
    out = {"n": n, "folder": str(root), "chunk_size": args.chunk_size, "workers": args.workers}
    commands = {
        "generate": [ALOE, "generate", "-c", str(cfg), "-o", str(gen)],
        "screen": [ALOE, "screen", str(gen), "-c", str(cfg), "-o", str(scr)],
    }
    for stage, folder in (("generate", gen), ("screen", scr)):
        if stage in args.stages:
            out[stage] = run_stage(stage, commands[stage], folder, n, args.chunk_size, kill_at)
    disk = sum(out[stage]["disk_bytes"] for stage in PRODUCTS if stage in out)
    out["disk_bytes"] = disk
    out["disk_gib_per_million"] = disk * 1e6 / n / 2**30
    return out


# ---- (1) identity of a resumed run -----------------------------------------------------------------------------
def product_files(run: Path, stage: str) -> dict[str, Path]:
    """The product files of ``stage`` in ``run`` by their relative path."""
    files = {}
    for pattern in PRODUCTS[stage]:
        for path in sorted(run.glob(pattern)):
            if path.is_file():
                files[str(path.relative_to(run))] = path
    return files


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Every product file of both stages in ``a`` and ``b`` compared byte for byte."""
    out: dict[str, Any] = {}
    for stage in PRODUCTS:
        fa, fb = product_files(a / stage, stage), product_files(b / stage, stage)
        differ = [name for name in fa if name in fb and fa[name].read_bytes() != fb[name].read_bytes()]
        out[stage] = {
            "files": len(fa),
            "only_in_uninterrupted": sorted(set(fa) - set(fb)),
            "only_in_resumed": sorted(set(fb) - set(fa)),
            "differ": differ,
            "identical": bool(fa) and set(fa) == set(fb) and not differ,
        }
    out["identical"] = all(out[stage]["identical"] for stage in PRODUCTS)
    return out


def measure_identity(args: argparse.Namespace, work: Path, save_now: Any) -> dict[str, Any]:
    """Part (1): uninterrupted into A, killed + resumed into B, at ``--subset`` candidates."""
    n = args.subset
    a = run_both(args, work / f"identity-{n}-A", n, None)
    save_now({"identity": {"n": n, "uninterrupted": a, "partial": True}})
    b = run_both(args, work / f"identity-{n}-B", n, args.kill_at)
    result = compare(Path(a["folder"]), Path(b["folder"]))
    log(f"identity at n={n}: {'IDENTICAL' if result['identical'] else 'DIFFERENT'} ({result})")
    return {"n": n, "kill_at": args.kill_at, "uninterrupted": a, "resumed": b, "comparison": result}


# ---- (2) throughput, RSS and disk over sizes -------------------------------------------------------------------
def measure_scale(
    args: argparse.Namespace, work: Path, reuse: dict[int, dict[str, Any]], save_now: Any
) -> dict[str, Any]:
    """Part (2): a run at each size (the one at ``--n`` killed and resumed)."""
    runs: list[dict[str, Any]] = []
    sizes = sorted(set(args.sizes))
    for n in sizes:
        killed = n == args.n
        if not killed and n in reuse:
            log(f"n={n}: reusing the uninterrupted run of part (1)")
            runs.append({**reuse[n], "reused_from": "identity"})
            continue
        runs.append(run_both(args, work / f"scale-{n}", n, args.kill_at if killed else None))
        save_now({scale_key(args): scale_figures(args, runs, partial=n != sizes[-1])})
    return scale_figures(args, runs, partial=False)


def scale_key(args: argparse.Namespace) -> str:
    """Where part (2)'s results go: ``scale``, or ``scale-<stage>`` when only one stage ran."""
    return "scale" if set(args.stages) == set(PRODUCTS) else "scale-" + "-".join(args.stages)


def scale_figures(args: argparse.Namespace, runs: list[dict[str, Any]], partial: bool) -> dict[str, Any]:
    """The runs and, with two sizes or more, the RSS ratios of the largest to the smallest."""
    out: dict[str, Any] = {"n": args.n, "kill_at": args.kill_at, "runs": runs, "partial": partial}
    if len(runs) >= 2:
        lo, hi = runs[0], runs[-1]
        out["ratio_of"] = [lo["n"], hi["n"]]
        out["ratios"] = {
            stage: {
                key: hi[stage][key] / lo[stage][key] if lo[stage][key] else None
                for key in ("client_peak_mib", "worker_peak_mib", "workers_sum_peak_mib")
            }
            for stage in PRODUCTS
            if stage in hi and stage in lo
        }
    return out


# ---- (3) the screen client's summary over all metrics -----------------------------------------------------------
def child_summary(run: str) -> dict[str, Any]:
    """In a fresh process: ``aloe.screen.stage.summarize`` over the metrics of ``run``; its time and peak RSS."""
    from aloe.screen.settings import ScreenSettings
    from aloe.screen.stage import summarize

    settings = ScreenSettings.model_validate({"committee": COMMITTEE, "energy_basis": "total"})
    before = rss_mib()
    t0 = time.perf_counter()
    counts, _ = summarize(Path(run), [], COMMITTEE, settings)
    return {
        "rows": counts["structures"],
        "seconds": round(time.perf_counter() - t0, 2),
        "rss_before_mib": round(before or 0.0, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def measure_summary(args: argparse.Namespace, work: Path, source: Path) -> dict[str, Any]:
    """Part (3): the screen stage's summary (run by the client) over the metric files of ``source`` repeated."""
    files = sorted((source / "metrics").glob("chunk-*.parquet"))
    if not files:
        raise RuntimeError(f"{source}: no screen metrics to summarize")
    rows = []
    for n in sorted({args.subset, *args.sizes}):
        folder = work / f"summary-{n}" / "metrics"
        shutil.rmtree(folder.parent, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(math.ceil(n / args.chunk_size)):
            (folder / f"chunk-{i:06d}.parquet").symlink_to(files[i % len(files)])
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child-summary", str(folder.parent)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "n": n, "load_average": load()}
        log(
            f"(3) summary of {row['rows']:,} metric rows: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']} MiB"
        )
        rows.append(row)
    out: dict[str, Any] = {"source": str(source), "rows": rows}
    if len(rows) >= 2:
        out["ratio_of"] = [rows[0]["n"], rows[-1]["n"]]
        out["peak_ratio"] = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
        out["mib_per_million_rows"] = (
            (rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]) * 1e6 / (rows[-1]["n"] - rows[0]["n"])
        )
    return out


# ---- reports ---------------------------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _run_rows(run: dict[str, Any], label: str) -> list[str]:
    rows = []
    for stage in (stage for stage in PRODUCTS if stage in run):
        s = run[stage]
        a = s["attempts"][-1]
        rows.append(
            f"| {label} | {run['n']:,} | {stage} | {'killed + resumed' if s['killed'] else 'uninterrupted'} | "
            f"{s['per_s_phase']:.1f} | {s['per_s_wall']:.1f} | {s['wall_seconds_total']:.0f} | "
            f"{s['client_peak_mib']:.0f} | {s['worker_peak_mib']:.0f} | {s['workers_sum_peak_mib']:.0f} | "
            f"{s['disk_bytes'] / 2**20:.1f} | {a['load_before']} / {a['load_after']} |"
        )
    return rows


TABLE_HEAD = [
    "| run | n | stage | how | candidates/s (phase) | candidates/s (wall) | wall, all attempts (s) | "
    "client peak RSS (MiB) | largest worker peak RSS (MiB) | all workers peak RSS (MiB) | disk (MiB) | "
    "load before / after (last attempt) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _kill_lines(run: dict[str, Any]) -> list[str]:
    lines = []
    for stage in (stage for stage in PRODUCTS if stage in run):
        s = run[stage]
        if not s["killed"]:
            continue
        first = s["attempts"][0]
        if "killed_after_s" not in first:
            lines.append(f"- {stage}: finished before the kill point")
            continue
        o = first["orphans"]
        lines.append(
            f"- {stage} (n={run['n']:,}): client SIGKILLed after {first['killed_after_s']:.0f} s with "
            f"{first['chunks_done_at_kill']}/{s['chunks']} chunks done; its {o['children_at_kill']} child "
            f"processes (workers, resource trackers) exited on their own within {o['last_exit_s']} s, "
            f"survivors after {o['watch_seconds']:.0f} s: {o['survivors_after_watch'] or 'none'}; rerun: "
            f"resumed={s['resumed']}, {s['chunks_resumed']} chunks resumed, {s['done_now']:,} done by the rerun "
            f"in {s['attempts'][-1]['wall_seconds']:.0f} s (rc {s['attempts'][-1]['returncode']})"
        )
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """The tables of ``results`` as Markdown."""
    meta = results["meta"]
    m = meta["machine"]
    md = ["# A million candidates through generate + screen on Dask (bench_million.py)", ""]
    md.append(
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, distributed "
        f"{m.get('distributed', '?')}. Shared with other jobs: see the load averages. Command: `{meta['command']}`"
    )
    md.append("")
    md.append(
        "CLI runs (`aloe generate -c CFG`, `aloe screen GEN -c CFG`), executor dask, LocalCluster of 2 workers; "
        "candidates sampled from the 817 published prototypes, 89 elements; committee: three LJ parameter sets. "
        "Phase = the stage's own work phase from summary.yaml (after loading/planning); for a killed + resumed "
        "run the rates are the rerun's own (the candidates it did / its time)."
    )
    if "identity" in results:
        i = results["identity"]
        md += [
            "",
            f"## (1) Resumed run = uninterrupted run, n = {i['n']:,}",
            "",
            f"`{i.get('command', '?')}` ({i.get('date', '?')})",
            "",
        ]
        if i.get("partial"):
            md.append("Only the uninterrupted run finished.")
        else:
            c = i["comparison"]
            for stage in PRODUCTS:
                md.append(
                    f"- {stage}: {c[stage]['files']} product files; identical byte for byte: "
                    f"**{c[stage]['identical']}** (differ: {c[stage]['differ'] or 'none'}; only in one: "
                    f"{c[stage]['only_in_uninterrupted'] + c[stage]['only_in_resumed'] or 'none'})"
                )
            md += ["", *_kill_lines(i["resumed"]), "", *TABLE_HEAD]
            md += _run_rows(i["uninterrupted"], "A") + _run_rows(i["resumed"], "B")
    for key in sorted(k for k in results if k.startswith("scale")):
        s = results[key]
        only = f", {key.removeprefix('scale-')} only" if key != "scale" else ""
        md += [
            "",
            f"## (2) Throughput, RSS and disk over sizes{only}{' (partial)' if s.get('partial') else ''}",
            "",
            f"`{s.get('command', '?')}` ({s.get('date', '?')})",
            "",
        ]
        md += TABLE_HEAD
        for run in s["runs"]:
            md += _run_rows(run, "scale" if "reused_from" not in run else "A of (1)")
        md.append("")
        for run in s["runs"]:
            per_stage = ", ".join(
                f"{stage} {run[stage]['disk_bytes'] * 1e6 / run['n'] / 2**30:.2f}"
                for stage in PRODUCTS
                if stage in run
            )
            md.append(
                f"- n={run['n']:,}: disk {run['disk_gib_per_million']:.2f} GiB per million candidates ({per_stage})"
            )
        for run in s["runs"]:
            md += _kill_lines(run)
        if "ratios" in s:
            lo, hi = s["ratio_of"]
            md += ["", f"Peak RSS ratio n={hi:,} / n={lo:,} (flat: <= {TARGET_FLAT} x):", ""]
            for stage, r in s["ratios"].items():
                md.append(
                    f"- {stage}: client {r['client_peak_mib']:.2f} x "
                    f"({_met(r['client_peak_mib'] <= TARGET_FLAT)}), largest worker "
                    f"{r['worker_peak_mib']:.2f} x ({_met(r['worker_peak_mib'] <= TARGET_FLAT)}), all workers "
                    f"{r['workers_sum_peak_mib']:.2f} x"
                )
    if "summary" in results:
        u = results["summary"]
        md += [
            "",
            "## (3) The screen client's summary over all metrics",
            "",
            f"`{u.get('command', '?')}` ({u.get('date', '?')})",
            "",
            f"`aloe.screen.stage.summarize` (run by the client after the last chunk: counts, selection_by_*.csv, "
            f"plots) in a fresh process over the metric files of `{u['source']}` repeated to each size.",
            "",
            "| metric rows | seconds | RSS before (MiB) | peak RSS (MiB) | load |",
            "|---|---|---|---|---|",
        ]
        for r in u["rows"]:
            md.append(
                f"| {r['rows']:,} | {r['seconds']:.1f} | {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                f"{r['load_average']} |"
            )
        if "peak_ratio" in u:
            lo, hi = u["ratio_of"]
            md += [
                "",
                f"Peak ratio {hi:,} / {lo:,} rows: {u['peak_ratio']:.2f} x ({u['mib_per_million_rows']:.0f} MiB more "
                f"per million rows; flat <= {TARGET_FLAT} x: {_met(u['peak_ratio'] <= TARGET_FLAT)}).",
            ]
    path.write_text("\n".join(md) + "\n")


def save(results: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Merge ``results`` into ``folder/bench_million.json`` (parts not run keep their results) and write the .md."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{NAME}.json", folder / f"{NAME}.md"
    merged: dict[str, Any] = {}
    if json_path.exists():
        with contextlib.suppress(json.JSONDecodeError):
            merged = json.loads(json_path.read_text())
    merged.update(results)
    json_path.write_text(json.dumps(merged, indent=1) + "\n")
    write_markdown(merged, md_path)
    return json_path, md_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = parser.add_argument_group("parts (all when none is given)")
    parts.add_argument(
        "--identity", action="store_true", help="(1) killed + resumed = uninterrupted, at --subset"
    )
    parts.add_argument("--scale", action="store_true", help="(2) throughput, RSS and disk at --sizes")
    parts.add_argument(
        "--summary",
        action="store_true",
        help="(3) the screen client's summary over --subset and --sizes rows",
    )
    parser.add_argument(
        "--metrics-from", type=Path, default=None, help="(3) a screen run folder (default: part (1)'s)"
    )
    parser.add_argument("--n", type=float, default=1_000_000, help="the size killed and resumed in part (2)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6], help="sizes of part (2)")
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the chunks done at the kill")
    parser.add_argument("--subset", type=float, default=1e4, help="size of part (1)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=list(PRODUCTS),
        default=list(PRODUCTS),
        help="stages of part (2) (part (1) runs both); results of one stage alone go under 'scale-<stage>'",
    )
    parser.add_argument("--chunk-size", type=int, default=1000, help="candidates per chunk (all sizes)")
    parser.add_argument("--prototypes", default=str(PUBLISHED) if PUBLISHED.is_dir() else "builtin")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument(
        "--lj-cutoff",
        type=float,
        default=6.0,
        help="cutoff rc (A) of the three LJ committee members (4.0: about 1.45 x faster screening; ASE's "
        "neighbour list is two thirds of the time)",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="run folders here (kept) instead of a temp folder"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of bench_million.json / .md")
    parser.add_argument("--child-summary", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_summary:
        print(json.dumps(child_summary(args.child_summary)), flush=True)
        return
    args.n, args.subset = int(args.n), int(args.subset)
    args.sizes = [int(s) for s in args.sizes]
    if not (args.identity or args.scale or args.summary):
        args.identity = args.scale = args.summary = True

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(("numpy", "dask", "distributed", "psutil", "pyarrow")),
        "command": " ".join(sys.argv),
    }
    results: dict[str, Any] = {"meta": meta}

    def save_now(part: dict[str, Any]) -> None:
        stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": meta["command"]}
        results.update({k: {**v, **stamp} for k, v in part.items()})
        save(results, args.results)

    log(f"load average {load()}")
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aloe-bench-million-")))
        reuse: dict[int, dict[str, Any]] = {}
        if args.identity:
            identity = measure_identity(args, work, save_now)
            save_now({"identity": identity})
            reuse[identity["n"]] = identity["uninterrupted"]
        if args.scale:
            save_now({scale_key(args): measure_scale(args, work, reuse, save_now)})
        if args.summary:
            source = args.metrics_from
            if source is None and args.identity:
                source = Path(results["identity"]["uninterrupted"]["folder"]) / "screen"
            if source is None:
                raise SystemExit("--summary needs --metrics-from SCREEN_RUN (or --identity in the same call)")
            save_now({"summary": measure_summary(args, work, source)})
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    json_path, md_path = save(results, args.results)
    print()
    print("=" * 100)
    print(md_path.read_text())
    print(f"results        {json_path}, {md_path}")
    print("=" * 100)


if __name__ == "__main__":
    main()
