"""Benchmark aloe's scale-out on Dask: screen throughput over workers, per-chunk overhead, a full-space plan.

Usage::

    python benchmarks/bench_scale.py [--scaling] [--overhead] [--plan]
        [--n 400] [--chunk-size 25] [--workers 1 2] [--repeats 2] [--prototypes builtin|PATH]
        [--overhead-tasks 200] [--seconds-per-structure S]
        [--shards 64] [--nworkers 4] [--nthreads 16] [--stress-chunk-size 130] [--max-tasks 10000]
        [--plan-prototypes PATH] [--results DIR]

Without any of ``--scaling``, ``--overhead``, ``--plan`` all three parts run. Everything runs on this machine.

(1) ``--scaling``: screening throughput over Dask workers. ``--n`` candidates are generated (a seeded sample over
    the published MP-ALOE prototypes in ``../shared/data/mp-aloe-prototypes`` when present, else the built-in
    library; 20 everyday elements whose elemental references are cached after the first run; chunks of
    ``--chunk-size`` so that there are enough chunks for every worker), and the references are resolved once. For
    each worker count (1, then 2) a ``LocalCluster`` (``threads_per_worker=1``, ``processes=True``) is started by
    aloe itself (``open_executor``, kind ``dask``), its worker count checked with ``client.scheduler_info()``, the
    committee (chgnet-0.3.0, chgnet-0.2.0, chgnet-r2scan; one torch thread per worker) loaded on every worker by a
    small warm-up screen and checked there, then ``aloe.screen.stage.screen`` runs on the candidates into a fresh
    folder with that executor. Reported: structures/s of the screen phase (``result.timings['screen']``) and of
    the whole call, and the ratio of the last worker count to the first (target >= 1.7x with 2 workers on 2
    cores). For context, the overhead per chunk measured directly: worker-slot seconds of the screen phase
    (phase x workers) less the chunk work the tasks report, divided by the chunks (it includes the idle tail
    while the last chunk finishes).
(2) ``--overhead``: what Dask adds per chunk at the default screen chunk size (``ScreenSettings().chunk_size``).
    No-op tasks that carry the real payload of a screen chunk task (the same dict: settings JSON, references,
    paths) go through ``DaskExecutor.map_unordered`` on a 1-worker ``LocalCluster``: submission, transfer,
    scheduling and the result's return, nothing subtracted. Measured both with the executor's window (tasks
    queued ahead, as a stage runs them) and one task at a time (the full round trip on the critical path; the
    figure compared with the target). One default-size chunk of real work is the chunk-work seconds per
    structure of part 1's 1-worker run times the chunk size. Target: overhead < 5% of the chunk time.
(3) ``--plan``: a simulated large run over the full MP-ALOE space (the published prototypes, all 89 elements,
    ``GenerateSettings`` defaults). A Dask scheduler runs in a process of its own (``dask scheduler``) with
    ``--nworkers`` x ``--nthreads`` worker slots (``dask worker``; 64 by default, one per shard). Each client is
    a fresh process that runs the real generate stage (library, occupations, plan, every chunk task built as the
    stage builds it) on an executor whose tasks are swapped for a no-op (nothing is built or written), connected
    to that scheduler. Clients: the whole space unsharded and shard 0 of ``--shards``; a tenth of the space (the
    first elements by Z, same prototypes) unsharded, to show that the client's memory does not grow with the
    candidates; and with ``--stress-chunk-size`` unsharded and shard 0, to load the scheduler (the default chunk
    size cuts the 104.8 million candidates, 6.5 million kept after sub-sampling, into about 330 chunks; 130 gives
    about 50,000). Reported: time to load + plan, chunks, tasks/s, the RSS of each client before its push and its
    peak (``VmHWM``), the peak RSS of the scheduler (sampled with psutil while the client runs), and the size of
    the plan arrays. ``--max-tasks M`` (default 10,000) pushes only the first M tasks of a client and extrapolates
    its push time from their rate (marked as such in the output).

Writes ``benchmarks/results/bench_scale.json`` and ``bench_scale.md`` (``--results`` moves them; parts that did
not run keep their earlier results there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from math import comb
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, peak_rss_mib, rss_mib  # noqa: E402

ROOT = HERE.parent
PUBLISHED = ROOT.parent / "shared" / "data" / "mp-aloe-prototypes"
RESULTS = ROOT / "benchmarks" / "results"
NAME = "bench_scale"
COMMITTEE = ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"]
# The elements of bench_screen.py: their references are cached after one run (20 elements x 3 models).
ELEMENTS = "H Li C N O F Na Mg Al Si P S Cl K Ca Ti Mn Fe Ni Cu".split()
TARGET_SCALING = 1.7
TARGET_OVERHEAD = 0.05
#: The module name workers import the task functions from (this file, with its folder on their path).
MODULE = "bench_scale"
_T0 = time.perf_counter()


def log(message: str) -> None:
    """One progress line with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", flush=True)


# ---- functions that run on Dask workers (imported there by name: keep this module's imports light) --------------
def noop_screen_chunk(task: dict[str, Any]) -> dict[str, Any]:
    """Stand-in for a screen chunk task: reads nothing, screens nothing, returns a summary like the real one."""
    return {"chunk": task["name"], "structures": 0, "outcomes": {}, "seconds": 0.0, "model_seconds": 0.0}


def noop_generate_chunk(task: dict[str, Any]) -> dict[str, Any]:
    """Stand-in for a generate chunk task: builds and writes nothing, returns a summary like the real one."""
    return {"chunk": task["chunk"], "rows": 0, "seconds": 0.0}


def load_committee_here(settings_json: str) -> dict[str, Any]:
    """Load the screen committee of ``settings_json`` in this worker, models included; what the process now holds.

    The stage caches the committee per process (``_committee_for``); its CHGNet members load their weights (and set
    torch's thread count) on first use, so each member's model is touched here.
    """
    import torch

    from aloe.screen import stage

    committee = stage._committee_for(stage.ScreenSettings.model_validate_json(settings_json))
    for member in committee.members:
        getattr(member, "model", None)
    return {
        "pid": os.getpid(),
        "committees": list(stage._COMMITTEES),
        "models_loaded": all(getattr(m, "_model", True) is not None for m in committee.members),
        "torch_threads": torch.get_num_threads(),
    }


def worker_function(name: str) -> Any:
    """``name`` of this module imported as :data:`MODULE`, so it is pickled by reference, not by value.

    Run as a script this file is ``__main__``, whose functions cloudpickle sends by value; the real stage sends its
    task function by reference (the worker imports it), and so does this benchmark.
    """
    import importlib

    return getattr(importlib.import_module(MODULE), name)


# ---- helpers ------------------------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """Sample the resident set of process ``pid`` (and, with ``tree``, of its descendants) every ``interval`` s.

    Keeps the peak and the last sample (MiB). Needs psutil (a dependency of distributed).
    """

    def __init__(self, pid: int, interval: float = 0.05, tree: bool = False) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.tree = tree
        self.peak_mib = 0.0
        self.last_mib = 0.0
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> float:
        """The resident set now (MiB; 0 when the process is gone)."""
        import psutil

        try:
            procs = [self.process, *(self.process.children(recursive=True) if self.tree else [])]
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
        except psutil.Error:
            return 0.0
        return total / 2**20

    def run(self) -> None:
        while not self._halt.is_set():
            self.last_mib = self.sample()
            self.peak_mib = max(self.peak_mib, self.last_mib)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()


def scheduler_workers(client: Any) -> list[dict[str, Any]]:
    """The workers the scheduler knows now (all of them; some versions of distributed list 5 by default)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:
        info = client.scheduler_info()
    return list(info.get("workers", {}).values())


def check_workers(client: Any, processes: int, threads: int, timeout: float = 180.0) -> dict[str, Any]:
    """Wait for ``processes`` workers with ``threads`` task slots in all; raise if the cluster has another shape."""
    client.wait_for_workers(processes, timeout=timeout)
    workers = scheduler_workers(client)
    slots = sum(int(w.get("nthreads", 1) or 1) for w in workers)
    if len(workers) != processes or slots != threads:
        raise RuntimeError(
            f"cluster has {len(workers)} workers / {slots} threads; wanted {processes} / {threads}"
        )
    return {"workers": len(workers), "threads": slots}


def make_candidates(out: Path, n: int, chunk_size: int, prototypes: str, seed: int) -> Path:
    """A generate run of ``n`` sampled candidates over :data:`ELEMENTS` in chunks of ``chunk_size``."""
    from aloe.generate.settings import GenerateSettings
    from aloe.generate.stage import generate

    settings = GenerateSettings.model_validate(
        {
            "prototypes": {"source": prototypes},
            "elements": ELEMENTS,
            "sample": n,
            "seed": seed,
            "chunk_size": chunk_size,
            "output": str(out),
            "progress": False,
        }
    )
    generate(settings)
    return out


def screen_settings(run: Path, output: Path | None) -> Any:
    """Screen settings of this benchmark: the default committee and options (one torch thread per worker)."""
    from aloe.screen.settings import ScreenSettings

    return ScreenSettings.model_validate(
        {
            "input": str(run),
            "committee": COMMITTEE,
            "executor": "dask",
            "output": None if output is None else str(output),
            "progress": False,
        }
    )


def settings_json_of(settings: Any) -> str:
    """The settings JSON a screen chunk task carries (as the stage makes it)."""
    return settings.model_copy(update={"output": None}).model_dump_json()


def resolve_elements_references(settings: Any) -> list[dict[str, float]] | None:
    """The committee's references for :data:`ELEMENTS` as the stage resolves them (computed once, then cached)."""
    from aloe.screen.stage import _committee_for, resolve_references

    settings_json = settings_json_of(settings)
    committee = _committee_for(settings)
    return resolve_references(committee, ELEMENTS, settings, settings_json, failed={})


# ---- (1) screening throughput over workers -------------------------------------------------------------------------
def screen_figures(result: Any, wall: float, workers: int) -> dict[str, Any]:
    """Throughput and the overhead accounting of one screen run on ``workers`` workers."""
    t = result.timings
    structures = int(result.counts["structures_screened_now"])
    chunks = int(result.counts["chunks_total"]) - int(result.counts["chunks_resumed"])
    slot_seconds = t["screen"] * workers
    overhead = slot_seconds - t["chunk_work"]
    return {
        "workers": workers,
        "structures": structures,
        "chunks": chunks,
        "wall_seconds": wall,
        "timings": {k: float(v) for k, v in t.items()},
        "per_s_screen": structures / t["screen"],
        "per_s_wall": structures / wall,
        "chunk_work_per_structure_s": t["chunk_work"] / structures,
        # chunks running at once on average: near the worker count when the tasks really run side by side (a
        # ratio below it with this near it means each chunk got slower: cores shared, not scheduling)
        "mean_running": t["chunk_work"] / t["screen"],
        "share_inside_models": t["inside_models"] / t["chunk_work"],
        "slot_overhead_seconds": overhead,
        "slot_overhead_per_chunk_ms": 1000.0 * overhead / chunks,
        "slot_overhead_share": overhead / slot_seconds,
        "load_average": os.getloadavg(),
    }


def measure_scaling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part (1): the screen stage on the same candidates over LocalClusters of each worker count in turn."""
    from aloe.executors import ExecutorSettings, open_executor
    from aloe.screen.stage import _committee_key, screen

    log(f"(1) candidates: {args.n} in chunks of {args.chunk_size} from {args.prototypes}")
    run = make_candidates(work / "candidates", args.n, args.chunk_size, args.prototypes, seed=7)
    warm = make_candidates(work / "warm-up", 2 * args.chunk_size, args.chunk_size, args.prototypes, seed=8)
    base = screen_settings(run, None)
    settings_json = settings_json_of(base)
    t0 = time.perf_counter()
    resolve_elements_references(base)
    log(f"(1) references of {len(ELEMENTS)} elements: {time.perf_counter() - t0:.1f} s (cached afterwards)")
    key = _committee_key(base)
    per_workers: list[dict[str, Any]] = []
    for workers in args.workers:
        log(f"(1) {workers} worker(s): starting a LocalCluster")
        t0 = time.perf_counter()
        with open_executor(ExecutorSettings(kind="dask", workers=workers)) as executor:
            shape = check_workers(executor.client, workers, workers)
            started = time.perf_counter() - t0
            t0 = time.perf_counter()
            screen(screen_settings(warm, work / f"warm-up-screen-{workers}"), executor=executor)
            loaded = executor.client.run(worker_function("load_committee_here"), settings_json)
            if len(loaded) != workers or any(
                v["committees"] != [key] or not v["models_loaded"] or v["torch_threads"] != base.threads
                for v in loaded.values()
            ):
                raise RuntimeError(
                    f"committee not loaded on every worker with {base.threads} thread(s): {loaded}"
                )
            warm_seconds = time.perf_counter() - t0
            log(
                f"(1) {workers} worker(s): cluster {shape['workers']} workers / {shape['threads']} threads in "
                f"{started:.1f} s; warm-up screen + committee on every worker {warm_seconds:.1f} s"
            )
            repeats = []
            for r in range(args.repeats):
                out = work / f"screen-{workers}w-{r}"
                t0 = time.perf_counter()
                result = screen(screen_settings(run, out), executor=executor)
                figures = screen_figures(result, time.perf_counter() - t0, workers)
                repeats.append(figures)
                log(
                    f"(1) {workers} worker(s), run {r + 1}/{args.repeats}: {figures['structures']} structures, "
                    f"screen phase {figures['timings']['screen']:.1f} s ({figures['per_s_screen']:.2f}/s), "
                    f"wall {figures['wall_seconds']:.1f} s; slot overhead "
                    f"{figures['slot_overhead_per_chunk_ms']:.0f} ms/chunk"
                )
        best = min(repeats, key=lambda f: f["timings"]["screen"])
        per_workers.append(
            {
                "workers": workers,
                "cluster": shape,
                "cluster_start_seconds": started,
                "warm_up_seconds": warm_seconds,
                "worker_processes": list(loaded.values()),
                "runs": repeats,
                "best": best,
            }
        )
    first, last = per_workers[0]["best"], per_workers[-1]["best"]
    return {
        "n": args.n,
        "chunk_size": args.chunk_size,
        "prototypes": args.prototypes,
        "elements": ELEMENTS,
        "committee": COMMITTEE,
        "repeats": args.repeats,
        "by_workers": per_workers,
        "ratio_screen": last["per_s_screen"] / first["per_s_screen"],
        "ratio_wall": last["per_s_wall"] / first["per_s_wall"],
        "ratio_of": [first["workers"], last["workers"]],
        # one core's chunk work per structure: what a chunk of real work costs (part 2)
        "per_structure_chunk_work_s": first["chunk_work_per_structure_s"],
    }


# ---- (2) per-chunk overhead at the default chunk size ----------------------------------------------------------------
def screen_payloads(work: Path, count: int) -> list[dict[str, Any]]:
    """``count`` task dicts exactly as the screen stage builds them (settings JSON, references, paths)."""
    run = work / "candidates"
    settings = screen_settings(run, None)
    settings_json = settings_json_of(settings)
    references = resolve_elements_references(settings)
    out = work / "screen-payload"
    return [
        {
            "name": f"chunk-{i:06d}",
            "input": str(run / "candidates" / f"chunk-{i:06d}.parquet"),
            "metrics": str(out / "metrics" / f"chunk-{i:06d}.parquet"),
            "selected": str(out / "selected" / f"chunk-{i:06d}.parquet"),
            "settings": settings_json,
            "references": references,
            "no_reference": {},
        }
        for i in range(count)
    ]


def time_map(executor: Any, fn: Any, tasks: list[dict[str, Any]], limit: int | None) -> dict[str, Any]:
    """Push ``tasks`` through ``executor.map_unordered``; seconds per task."""
    t0 = time.perf_counter()
    n = sum(1 for _ in executor.map_unordered(fn, tasks, limit=limit))
    seconds = time.perf_counter() - t0
    return {"tasks": n, "seconds": seconds, "ms_per_task": 1000.0 * seconds / n, "tasks_per_s": n / seconds}


def measure_overhead(args: argparse.Namespace, work: Path, per_structure_s: float | None) -> dict[str, Any]:
    """Part (2): round trips of no-op tasks with a screen chunk's payload on a 1-worker LocalCluster."""
    from aloe.executors import ExecutorSettings, open_executor
    from aloe.screen.settings import ScreenSettings

    chunk_size = ScreenSettings().chunk_size
    tasks = screen_payloads(work, args.overhead_tasks)
    payload = len(pickle.dumps(tasks[0], protocol=pickle.HIGHEST_PROTOCOL))
    fn = worker_function("noop_screen_chunk")
    log(f"(2) {len(tasks)} no-op tasks with a screen chunk's payload ({payload} bytes pickled), 1 worker")
    with open_executor(ExecutorSettings(kind="dask", workers=1)) as executor:
        check_workers(executor.client, 1, 1)
        time_map(executor, fn, tasks[: min(20, len(tasks))], None)  # connections, imports, first-task costs
        windowed = time_map(executor, fn, tasks, None)
        serial = time_map(executor, fn, tasks, 1)
    log(
        f"(2) per task: {windowed['ms_per_task']:.2f} ms with the executor's window, {serial['ms_per_task']:.2f} ms "
        "one at a time"
    )
    chunk_seconds = per_structure_s * chunk_size if per_structure_s else None
    return {
        "default_chunk_size": chunk_size,
        "payload_bytes": payload,
        "references_elements": len(tasks[0]["references"][0]) if tasks[0]["references"] else 0,
        "windowed": windowed,
        "one_at_a_time": serial,
        "per_structure_chunk_work_s": per_structure_s,
        "chunk_seconds": chunk_seconds,
        "overhead_share": serial["ms_per_task"] / 1000.0 / chunk_seconds if chunk_seconds else None,
        "overhead_share_windowed": windowed["ms_per_task"] / 1000.0 / chunk_seconds
        if chunk_seconds
        else None,
    }


# ---- (3) a simulated large run ---------------------------------------------------------------------------------------
def child_plan(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh client process: the generate stage on the scheduler ``spec['address']``, chunk tasks as no-ops.

    Every chunk task is built by the stage itself (``generate``'s own task generator) and pushed through aloe's
    ``DaskExecutor``; only the function that runs is swapped for :func:`noop_generate_chunk`.
    """
    from itertools import islice

    from aloe.executors import DaskExecutor, ExecutorSettings
    from aloe.generate.settings import GenerateSettings
    from aloe.generate.stage import PLAN_FILE, ChunkPlan, generate

    after_imports = peak_rss_mib()
    noop = worker_function("noop_generate_chunk")
    push: dict[str, Any] = {}

    class PushExecutor(DaskExecutor):
        """aloe's DaskExecutor with every task's function replaced by a no-op (and at most ``max_tasks``)."""

        def map_unordered(self, fn, tasks, *, limit=None, gpu=False):
            push.update(
                {
                    "replaced": f"{fn.__module__}.{fn.__qualname__}",
                    "rss_before_push_mib": rss_mib(),
                    "peak_rss_before_push_mib": peak_rss_mib(),
                    "window": limit or 2 * self._expected_workers(),
                    "slots": self._expected_workers(),
                }
            )
            if spec["max_tasks"]:
                tasks = islice(tasks, spec["max_tasks"])
            t0 = time.perf_counter()
            n = 0
            for result in super().map_unordered(noop, tasks, limit=limit, gpu=gpu):
                n += 1
                yield result
            push.update({"tasks": n, "seconds": time.perf_counter() - t0})

    settings = GenerateSettings.model_validate(
        {
            "prototypes": {"source": spec["prototypes"]},
            "elements": spec["elements"],
            "chunk_size": spec["chunk_size"],
            "shard": spec["shard"],
            "output": spec["output"],
            "progress": False,
        }
    )
    executor = PushExecutor(ExecutorSettings(kind="dask", scheduler=spec["address"]))
    try:
        t0 = time.perf_counter()
        result = generate(settings, executor=executor)
        wall = time.perf_counter() - t0
    finally:
        executor.close()
    plan = ChunkPlan.load(Path(spec["output"]) / PLAN_FILE)
    counts = result.counts
    return {
        "label": spec["label"],
        "shard": spec["shard"],
        "chunk_size": spec["chunk_size"],
        "elements": len(settings.elements) if settings.elements else 89,
        "candidates": int(counts["candidates"]),
        "expected_after_subsampling": float(counts["expected_after_subsampling"]),
        "by_arity": counts["by_arity"],
        "chunks_total": int(counts["chunks_total"]),
        "chunks_in_shard": int(counts["chunks_in_shard"]),
        "plan_bytes": int(plan.boundaries.nbytes + plan.sample.nbytes),
        "plan_file_bytes": (Path(spec["output"]) / PLAN_FILE).stat().st_size,
        "wall_seconds": wall,
        "timings": {k: float(v) for k, v in result.timings.items()},
        "setup_seconds": sum(result.timings.get(k, 0.0) for k in ("load_prototypes", "occupations", "plan")),
        "push": push,
        "peak_rss_after_imports_mib": after_imports,
        "peak_rss_mib": peak_rss_mib(),
        "max_tasks": spec["max_tasks"],
    }


def run_client(spec: dict[str, Any], scheduler_pid: int, workers_pid: int, timeout: float) -> dict[str, Any]:
    """Run :func:`child_plan` in a fresh interpreter while sampling the scheduler's and the workers' memory."""
    sched = RssSampler(scheduler_pid)
    workers = RssSampler(workers_pid, interval=0.2, tree=True)
    sched_before = sched.sample()
    sched.start()
    workers.start()
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child-plan", json.dumps(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, "ALOE_PROGRESS": "0"},
            timeout=timeout,
            check=False,
        )
    finally:
        sched.stop()
        workers.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"client {spec['label']} failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    push = out["push"]
    push["tasks_per_s"] = push["tasks"] / push["seconds"] if push.get("seconds") else None
    push["extrapolated"] = push["tasks"] < out["chunks_in_shard"]
    push["all_tasks_seconds"] = (
        out["chunks_in_shard"] / push["tasks_per_s"] if push["extrapolated"] else push.get("seconds")
    )
    out["scheduler_rss_before_mib"] = sched_before
    out["scheduler_peak_rss_mib"] = sched.peak_mib
    out["scheduler_rss_after_mib"] = sched.last_mib
    out["workers_peak_rss_mib"] = workers.peak_mib
    return out


def tenth_elements(by_arity: dict[str, Any], size: int) -> tuple[list[str], int]:
    """The first k elements (by Z) whose space over the same prototypes is nearest a tenth of ``size``.

    A prototype of arity a over k elements has ``occupations x C(k, a)`` candidates, and the occupations do not
    depend on the elements, so the sizes follow from the full space's counts per arity.
    """
    from aloe.elements import default_elements

    elements = list(default_elements())

    def size_of(k: int) -> int:
        return sum(int(v["occupations"]) * comb(k, int(a)) for a, v in by_arity.items())

    if size_of(len(elements)) != size:
        raise RuntimeError("the space's counts per arity do not add up to its size")
    k = min(range(2, len(elements) + 1), key=lambda k: abs(size_of(k) - size / 10))
    return elements[:k], size_of(k)


def start_process(cmd: list[str], log_file: Path, env: dict[str, str], stack: contextlib.ExitStack):
    """Start ``cmd`` in a session of its own (logs to ``log_file``); the stack ends it and its children."""
    fh = stack.enter_context(open(log_file, "w"))
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack.callback(stop_process, proc)
    return proc


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group this benchmark started (by its id), then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def dask_cluster(work: Path, nworkers: int, nthreads: int) -> Iterator[tuple[str, int, int]]:
    """A scheduler process and ``nworkers`` x ``nthreads`` worker slots; yields (address, scheduler pid, workers pid).

    The workers get this folder on ``PYTHONPATH`` so that they import the no-op task from this module.
    """
    from dask.distributed import Client

    dask_cli = str(Path(sys.executable).with_name("dask"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    scheduler_file = work / "scheduler.json"
    with contextlib.ExitStack() as stack:
        scheduler = start_process(
            [dask_cli, "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
            work / "scheduler.log",
            env,
            stack,
        )
        deadline = time.monotonic() + 120
        while not scheduler_file.exists():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the scheduler did not start:\n{(work / 'scheduler.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go; give it a moment to be complete
        address = json.loads(scheduler_file.read_text())["address"]
        workers = start_process(
            [
                dask_cli,
                "worker",
                address,
                "--nworkers",
                str(nworkers),
                "--nthreads",
                str(nthreads),
                "--no-dashboard",
                "--local-directory",
                str(work / "dask-workers"),
            ],
            work / "workers.log",
            env,
            stack,
        )
        with Client(address, timeout="60s") as client:
            check_workers(client, nworkers, nworkers * nthreads)
        yield address, scheduler.pid, workers.pid


def measure_plan(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part (3): clients of the generate stage over the full space against a scheduler in its own process."""
    from aloe.generate.settings import GenerateSettings

    default_chunk = GenerateSettings().chunk_size
    slots = args.nworkers * args.nthreads
    log(f"(3) starting a scheduler process and {args.nworkers} x {args.nthreads} = {slots} worker slots")
    t0 = time.perf_counter()
    clients: list[dict[str, Any]] = []
    with dask_cluster(work, args.nworkers, args.nthreads) as (address, scheduler_pid, workers_pid):
        start = time.perf_counter() - t0
        idle = RssSampler(scheduler_pid).sample()
        log(f"(3) cluster up in {start:.1f} s at {address}; scheduler RSS {idle:.0f} MiB")

        def client(label: str, chunk_size: int, shard: str | None, elements: list[str] | None = None) -> None:
            spec = {
                "label": label,
                "address": address,
                "prototypes": args.plan_prototypes,
                "elements": elements,
                "chunk_size": chunk_size,
                "shard": shard,
                "output": str(work / f"generate-{len(clients)}"),
                "max_tasks": args.max_tasks,
            }
            log(f"(3) client '{label}': generate stage, chunk tasks as no-ops ...")
            out = run_client(spec, scheduler_pid, workers_pid, args.client_timeout)
            push = out["push"]
            log(
                f"(3) client '{label}': {out['candidates']:,} candidates, {out['chunks_total']:,} chunks "
                f"({out['chunks_in_shard']:,} in shard); load + plan {out['setup_seconds']:.1f} s; "
                f"{push['tasks']:,} tasks in {push['seconds']:.1f} s ({push['tasks_per_s']:.0f}/s"
                f"{', extrapolated to all: ' + format(push['all_tasks_seconds'], '.0f') + ' s' if push['extrapolated'] else ''}"
                f"); client peak RSS {out['peak_rss_mib']:.0f} MiB, scheduler peak {out['scheduler_peak_rss_mib']:.0f} MiB"
            )
            clients.append(out)

        client("full space", default_chunk, None)
        client(f"full space, shard 0/{args.shards}", default_chunk, f"0/{args.shards}")
        elements, size = tenth_elements(clients[0]["by_arity"], clients[0]["candidates"])
        log(f"(3) a tenth of the space: the first {len(elements)} elements ({size:,} candidates)")
        client(f"tenth: {len(elements)} elements", default_chunk, None, elements)
        if args.stress_chunk_size:
            client(f"full space, chunks of {args.stress_chunk_size}", args.stress_chunk_size, None)
            client(
                f"full space, chunks of {args.stress_chunk_size}, shard 0/{args.shards}",
                args.stress_chunk_size,
                f"0/{args.shards}",
            )
    full, tenth = clients[0], clients[2]
    return {
        "prototypes": args.plan_prototypes,
        "slots": slots,
        "nworkers": args.nworkers,
        "nthreads": args.nthreads,
        "shards": args.shards,
        "default_chunk_size": default_chunk,
        "cluster_start_seconds": start,
        "scheduler_idle_rss_mib": idle,
        "clients": clients,
        "client_peak_ratio_full_vs_tenth": full["peak_rss_mib"] / tenth["peak_rss_mib"],
        "candidates_ratio_full_vs_tenth": full["candidates"] / tenth["candidates"],
    }


# ---- reports ---------------------------------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The summary block (plain text) of the parts in ``results``."""
    lines = []
    meta = results.get("meta", {})
    if meta:
        m = meta["machine"]
        lines.append(f"machine        {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}")
    if "scaling" in results:
        s = results["scaling"]
        lines.append(f"(1) screen on Dask, {s['n']} structures in chunks of {s['chunk_size']} ({s['date']})")
        for w in s["by_workers"]:
            b = w["best"]
            lines.append(
                f"  {w['workers']} worker(s)  {b['per_s_screen']:7.2f} structures/s screen phase "
                f"({b['timings']['screen']:.1f} s), {b['per_s_wall']:.2f}/s wall ({b['wall_seconds']:.1f} s); "
                f"slot overhead {b['slot_overhead_per_chunk_ms']:.0f} ms/chunk ({b['slot_overhead_share']:.1%})"
            )
            lines.append(
                f"               chunk work {1000 * b['chunk_work_per_structure_s']:.0f} ms/structure, "
                f"{b['mean_running']:.2f} chunks running at once on average"
            )
        lo, hi = s["ratio_of"]
        lines.append(
            f"  ratio {hi} vs {lo}: {s['ratio_screen']:.2f} x screen phase, {s['ratio_wall']:.2f} x wall "
            f"(target >= {TARGET_SCALING} x: {_met(s['ratio_screen'] >= TARGET_SCALING)})"
        )
    if "overhead" in results:
        o = results["overhead"]
        lines.append(f"(2) Dask overhead per chunk, 1 worker, {o['payload_bytes']} B payload ({o['date']})")
        lines.append(
            f"  {o['one_at_a_time']['ms_per_task']:.2f} ms per task one at a time, "
            f"{o['windowed']['ms_per_task']:.2f} ms with the executor's window"
        )
        if o["chunk_seconds"]:
            lines.append(
                f"  one chunk of {o['default_chunk_size']} structures: {o['chunk_seconds']:.0f} s of work "
                f"({o['per_structure_chunk_work_s'] * 1000:.0f} ms/structure); overhead {o['overhead_share']:.4%} "
                f"(target < {TARGET_OVERHEAD:.0%}: {_met(o['overhead_share'] < TARGET_OVERHEAD)})"
            )
        else:
            lines.append(
                "  (no per-structure time: run --scaling or pass --seconds-per-structure for the share)"
            )
    if "plan" in results:
        p = results["plan"]
        lines.append(
            f"(3) simulated run, scheduler in its own process, {p['slots']} slots "
            f"({p['nworkers']} x {p['nthreads']}) ({p['date']})"
        )
        for c in p["clients"]:
            push = c["push"]
            extra = (
                f", all {c['chunks_in_shard']:,}: ~{push['all_tasks_seconds']:.0f} s"
                if push["extrapolated"]
                else ""
            )
            lines.append(
                f"  {c['label']:<40} {c['candidates']:>12,} cand. {c['chunks_in_shard']:>7,} tasks; "
                f"plan {c['setup_seconds']:5.1f} s; push {push['tasks_per_s']:6.0f}/s{extra}; "
                f"client {c['peak_rss_mib']:.0f} MiB, scheduler {c['scheduler_peak_rss_mib']:.0f} MiB"
            )
        lines.append(
            f"  client peak RSS full / tenth of the space: {p['client_peak_ratio_full_vs_tenth']:.3f} "
            f"for {p['candidates_ratio_full_vs_tenth']:.1f} x the candidates"
        )
    return lines


def _md_scaling(s: dict[str, Any]) -> list[str]:
    """Markdown of part (1)."""
    md = ["", f"## (1) Screen throughput over Dask workers ({s['date']}, load {s['load_average']})", ""]
    md.append(
        f"{s['n']} candidates ({len(s['elements'])} elements, {s['prototypes']}), chunks of {s['chunk_size']}, "
        f"committee {', '.join(s['committee'])}; LocalCluster, 1 thread per worker; best of {s['repeats']}."
    )
    md += [
        "",
        "| workers | screen phase (s) | structures/s | wall (s) | structures/s (wall) | chunk work (s) | "
        "chunk work per structure (ms) | chunks running at once | slot overhead per chunk (ms) | share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in s["by_workers"]:
        b = w["best"]
        md.append(
            f"| {w['workers']} | {b['timings']['screen']:.1f} | {b['per_s_screen']:.2f} | {b['wall_seconds']:.1f} "
            f"| {b['per_s_wall']:.2f} | {b['timings']['chunk_work']:.1f} | {1000 * b['chunk_work_per_structure_s']:.0f} "
            f"| {b['mean_running']:.2f} | {b['slot_overhead_per_chunk_ms']:.0f} "
            f"| {b['slot_overhead_share']:.1%} |"
        )
    lo, hi = s["ratio_of"]
    md += [
        "",
        "Chunks running at once = chunk work / screen phase: near the worker count, the workers really ran side "
        "by side, and a ratio short of it comes from slower chunks (shared cores, memory bandwidth); slot "
        "overhead = screen phase x workers - chunk work (scheduling, and the idle tail while the last chunk "
        "runs).",
        "",
        f"Ratio {hi} vs {lo} workers: **{s['ratio_screen']:.2f} x** (screen phase), {s['ratio_wall']:.2f} x "
        f"(wall); target >= {TARGET_SCALING} x: {_met(s['ratio_screen'] >= TARGET_SCALING)}.",
    ]
    return md


def _md_overhead(o: dict[str, Any]) -> list[str]:
    """Markdown of part (2)."""
    md = ["", f"## (2) Dask overhead per chunk ({o['date']}, load {o['load_average']})", ""]
    md.append(
        f"No-op tasks with a screen chunk's payload ({o['payload_bytes']} bytes pickled, references of "
        f"{o['references_elements']} elements) through DaskExecutor.map_unordered, 1-worker LocalCluster."
    )
    md += ["", "| mode | tasks | ms per task | tasks/s |", "|---|---|---|---|"]
    for label, key in (("one at a time", "one_at_a_time"), ("executor window", "windowed")):
        r = o[key]
        md.append(f"| {label} | {r['tasks']} | {r['ms_per_task']:.2f} | {r['tasks_per_s']:.0f} |")
    if o["chunk_seconds"]:
        md += [
            "",
            f"A default chunk ({o['default_chunk_size']} structures) is {o['chunk_seconds']:.0f} s of work "
            f"({1000 * o['per_structure_chunk_work_s']:.0f} ms per structure on one core): overhead "
            f"**{o['overhead_share']:.4%}** of it (target < {TARGET_OVERHEAD:.0%}: "
            f"{_met(o['overhead_share'] < TARGET_OVERHEAD)}).",
        ]
    return md


def _md_plan(p: dict[str, Any]) -> list[str]:
    """Markdown of part (3)."""
    md = ["", f"## (3) Simulated large run ({p['date']}, load {p['load_average']})", ""]
    md.append(
        f"The generate stage over {p['prototypes']} in fresh client processes, chunk tasks swapped for no-ops, "
        f"on a scheduler in its own process with {p['slots']} worker slots ({p['nworkers']} processes x "
        f"{p['nthreads']} threads); scheduler RSS when idle {p['scheduler_idle_rss_mib']:.0f} MiB."
    )
    md += [
        "",
        "| client | candidates | chunks (tasks) | load + plan (s) | plan arrays (KiB) | tasks/s | push (s) | "
        "client RSS before push (MiB) | client peak RSS (MiB) | scheduler peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in p["clients"]:
        push = c["push"]
        pushed = (
            f"~{push['all_tasks_seconds']:.0f} (from {push['tasks']:,})"
            if push["extrapolated"]
            else f"{push['seconds']:.1f}"
        )
        md.append(
            f"| {c['label']} | {c['candidates']:,} | {c['chunks_in_shard']:,} | {c['setup_seconds']:.1f} | "
            f"{c['plan_bytes'] / 1024:.1f} | {push['tasks_per_s']:.0f} | {pushed} | "
            f"{push['rss_before_push_mib']:.0f} | {c['peak_rss_mib']:.0f} | "
            f"{c['scheduler_peak_rss_mib']:.0f} |"
        )
    md += [
        "",
        f"Client peak RSS, full space / a tenth: {p['client_peak_ratio_full_vs_tenth']:.3f} for "
        f"{p['candidates_ratio_full_vs_tenth']:.1f} x the candidates.",
    ]
    return md


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """The tables of ``results`` as Markdown."""
    meta = results["meta"]
    md = ["# Scale-out on Dask (bench_scale.py)", ""]
    md.append(
        f"Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs, Python "
        f"{meta['machine']['python']}, dask {meta['machine'].get('distributed', '?')}"
    )
    for key, render in (("scaling", _md_scaling), ("overhead", _md_overhead), ("plan", _md_plan)):
        if key in results:
            try:
                md += render(results[key])
            except (KeyError, TypeError):  # kept from an older version of this script
                md += ["", f"## {key}: stored by an older version of this script; see {NAME}.json"]
    path.write_text("\n".join(md) + "\n")


def save(results: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Merge ``results`` into ``folder/bench_scale.json`` (parts not run keep their results) and write the .md."""
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


def earlier_per_structure(folder: Path) -> float | None:
    """Part (1)'s chunk-work seconds per structure from an earlier run's results, if any."""
    path = folder / f"{NAME}.json"
    with contextlib.suppress(OSError, json.JSONDecodeError, KeyError):
        return float(json.loads(path.read_text())["scaling"]["per_structure_chunk_work_s"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = parser.add_argument_group("parts (all when none is given)")
    parts.add_argument("--scaling", action="store_true", help="(1) screen throughput over 1 and 2 workers")
    parts.add_argument("--overhead", action="store_true", help="(2) Dask overhead per default-size chunk")
    parts.add_argument("--plan", action="store_true", help="(3) full-space plan over a scheduler process")
    one = parser.add_argument_group("(1) scaling")
    one.add_argument("--n", type=int, default=400, help="candidates screened")
    one.add_argument("--chunk-size", type=int, default=25, help="candidates per chunk")
    one.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts, in this order")
    one.add_argument("--repeats", type=int, default=2, help="timed screens per worker count (best kept)")
    one.add_argument("--prototypes", default=str(PUBLISHED) if PUBLISHED.is_dir() else "builtin")
    two = parser.add_argument_group("(2) overhead")
    two.add_argument("--overhead-tasks", type=int, default=200, help="no-op tasks per mode")
    two.add_argument(
        "--seconds-per-structure",
        type=float,
        default=None,
        help="chunk work per structure when --scaling does not run (default: the earlier results)",
    )
    three = parser.add_argument_group("(3) plan")
    three.add_argument("--plan-prototypes", default=str(PUBLISHED) if PUBLISHED.is_dir() else "builtin")
    three.add_argument("--shards", type=int, default=64)
    three.add_argument("--nworkers", type=int, default=4, help="dask worker processes")
    three.add_argument("--nthreads", type=int, default=16, help="threads per dask worker process")
    three.add_argument(
        "--stress-chunk-size", type=int, default=130, help="a second plan with this chunk size (0: none)"
    )
    three.add_argument(
        "--max-tasks",
        type=int,
        default=10000,
        help="push at most this many tasks per client, extrapolate the rest from their rate (0: all)",
    )
    three.add_argument("--client-timeout", type=float, default=3600.0, help="seconds per client process")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of bench_scale.json / .md")
    parser.add_argument("--child-plan", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("ALOE_PROGRESS", "0")
    if args.child_plan:
        print(json.dumps(child_plan(json.loads(args.child_plan))), flush=True)
        return
    if not (args.scaling or args.overhead or args.plan):
        args.scaling = args.overhead = args.plan = True
    # LocalCluster workers get this folder on their path too (they import the no-op tasks from this module).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(("numpy", "torch", "chgnet", "dask", "distributed", "psutil")),
        "command": " ".join(sys.argv),
    }
    results: dict[str, Any] = {"meta": meta}
    log(f"load average {os.getloadavg()}")
    per_structure = args.seconds_per_structure
    with tempfile.TemporaryDirectory(prefix="aloe-bench-scale-") as tmp:
        work = Path(tmp)
        if args.scaling:
            results["scaling"] = {**measure_scaling(args, work), **_stamp()}
            per_structure = results["scaling"]["per_structure_chunk_work_s"]
        elif per_structure is None:
            per_structure = earlier_per_structure(args.results)
        if args.overhead:
            results["overhead"] = {**measure_overhead(args, work, per_structure), **_stamp()}
        if args.plan:
            results["plan"] = {**measure_plan(args, work), **_stamp()}
    print()
    print("=" * 100)
    print("\n".join(summary_lines(results)))
    json_path, md_path = save(results, args.results)
    print(f"results        {json_path}, {md_path}")
    print("=" * 100)


def _stamp() -> dict[str, Any]:
    """When a part finished, and the load on the machine then."""
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    main()
