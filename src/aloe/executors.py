"""Where independent work runs: in this process, a local pool of processes, or Dask distributed.

The caller owns the executor. The CLI or the loop opens one for the whole run (:func:`open_executor`), hands it to
every stage, and closes it at the end; a stage called without one opens its own from its run options and closes it
when it returns (:func:`stage_executor`). Science code hands an :class:`Executor` a picklable function and an
iterable of tasks and iterates the results as they finish; it never imports a workflow engine.

Every task writes its output to the run folder itself (atomically) and returns a small summary, so nothing large
travels through the scheduler, a task that runs for hours ties up one worker slot and nothing else, and a client
that is killed and started again resumes from the folder. Tasks are submitted a window at a time (a few per
worker), so the client and the scheduler hold a bounded number of tasks whatever the size of the stage.

On a Slurm or PBS cluster aloe starts, a batch job whose workers all left (its walltime, ``scancel``, a failed node)
is replaced by a new one (:class:`JobWatcher`), and the scheduler runs the lost tasks again elsewhere. Every job id
goes to the run log as it is submitted, connects and goes.

Dask is optional (``pip install 'aloe[dask]'``); Slurm and PBS clusters also need ``dask-jobqueue``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, Literal

from pydantic import Field

from aloe.errors import AloeError, one_line
from aloe.settings import AloeSettings

ExecutorKind = Literal["local", "process", "dask"]

#: Task windows: tasks in flight per worker (enough to keep a worker busy while the client handles a result).
TASKS_PER_WORKER = 2
#: How often a local pool whose worker process died is started again (per map) before the stage gives up.
MAX_POOL_RESTARTS = 3
#: Seconds a local pool's processes get to finish when the executor closes before they are stopped.
CLOSE_GRACE_S = 2.0
#: How long to try to reach a Dask scheduler given by its address.
CONNECT_TIMEOUT = "30s"
#: Seconds between two looks at a batch cluster's jobs (:class:`JobWatcher`).
WATCH_INTERVAL_S = 2.0
#: Seconds a batch job may wait for its first worker before the run log says what the queue says of it.
START_NOTICE_S = 300.0
#: Jobs in a row that end before any worker connected: then the job script is broken, and the run stops.
MAX_FAILED_STARTS = 3

#: Job events (submitted, connected, lost) go to the run log through this logger.
_log = logging.getLogger("aloe.executors")


# ---- settings -----------------------------------------------------------------------------------------------
class ClusterSettings(AloeSettings):
    """A Dask cluster aloe starts: a ``LocalCluster`` here, or batch jobs on Slurm or PBS (dask-jobqueue).

    For batch clusters every value except ``jobs`` describes ONE job; each job runs ``processes`` Dask workers.
    """

    kind: Literal["local", "slurm", "pbs"] = Field(
        "local", description="local: a LocalCluster on this machine; slurm / pbs: batch jobs (dask-jobqueue)."
    )
    jobs: int = Field(1, ge=1, description="Batch jobs to start (slurm, pbs); a LocalCluster uses 'workers'.")
    cores: int = Field(1, ge=1, description="Cores per job (slurm, pbs).")
    processes: int = Field(1, ge=1, description="Dask worker processes per job (slurm, pbs).")
    memory: str = Field("4GiB", description="Memory per job (slurm, pbs), e.g. '16GiB'.")
    gpus: int = Field(
        0,
        ge=0,
        description="GPUs per job (per worker for a LocalCluster): workers then carry the Dask resource 'GPU' and "
        "model work (screen, select, train on cuda) runs only there.",
    )
    walltime: str = Field(
        "01:00:00",
        description="Walltime per job (slurm, pbs), HH:MM:SS. A job that reaches it (or ends otherwise) is "
        "replaced by a new one; the tasks it was running start again elsewhere.",
    )
    start_notice: float = Field(
        START_NOTICE_S,
        gt=0,
        description="Seconds a job may wait for its first worker before the run log gets its queue state (slurm: "
        "squeue's state and reason), and between two such lines. A job that left the queue without any worker is "
        f"replaced; after {MAX_FAILED_STARTS} in a row the run stops (the job script fails).",
    )
    account: str | None = Field(None, description="Account / project to charge (slurm, pbs).")
    queue: str | None = Field(None, description="Partition (slurm) or queue (pbs).")
    job_script_prologue: list[str] = Field(
        default_factory=list,
        description="Shell lines run before the worker starts (module load ..., source .venv/bin/activate).",
    )
    job_directives: list[str] = Field(
        default_factory=list, description="Extra #SBATCH / #PBS directives, e.g. '--constraint=v100'."
    )
    interface: str | None = Field(None, description="Network interface of the workers (e.g. 'ib0').")
    local_directory: str | None = Field(None, description="Worker scratch folder (node-local disk).")
    log_directory: str | None = Field(None, description="Folder for the job logs (slurm, pbs).")
    python: str | None = Field(None, description="Python of the workers (default: this one).")


class ExecutorSettings(AloeSettings):
    """Where a run's independent work runs (section ``executor`` of an ``aloe run`` config)."""

    kind: ExecutorKind = Field(
        "process",
        description="local: in this process; process: a pool of 'workers' local processes (in this process "
        "when 1); dask: Dask distributed (a scheduler address, or a cluster aloe starts).",
    )
    workers: int = Field(
        1, ge=1, description="Worker processes (process; and a dask LocalCluster's worker count)."
    )
    scheduler: str | None = Field(
        None, description="Address of a running Dask scheduler (kind dask); unset: start 'cluster'."
    )
    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings, description="The cluster aloe starts (kind dask, no scheduler)."
    )


# ---- executors ------------------------------------------------------------------------------------------------
class Executor:
    """Runs ``fn(task)`` for each task and yields the results as they finish (the seam every stage uses).

    ``map_unordered(fn, tasks, limit=None, gpu=False)``:

    - ``limit``: at most this many of these tasks run at once (a stage's ``workers``); ``None``: as many as the
      executor has workers.
    - ``gpu``: the tasks run models on a GPU; on a cluster with GPU workers they go only there. A number: the
      GPUs each task needs at once (a member's multi-GPU training; Dask's resource ``GPU``).

    An executor is a context manager; :meth:`close` ends what it started (pool processes, a cluster).
    """

    kind: str = "local"
    #: Tasks that run at once (the pool size, or the cluster's worker count when known).
    workers: int = 1

    def map_unordered(
        self,
        fn: Callable[[Any], Any],
        tasks: Iterable[Any],
        *,
        limit: int | None = None,
        gpu: bool | int = False,
    ) -> Iterator[Any]:
        """Yield ``fn(task)`` for every task, in completion order."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: what runs where."""
        return self.kind

    def close(self) -> None:
        """Stop what this executor started (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs tasks one after another in this process (easiest to debug; what a one-worker pool does)."""

    kind = "local"

    def map_unordered(self, fn, tasks, *, limit=None, gpu=False):
        """Yield ``fn(task)`` in task order."""
        for task in tasks:
            yield fn(task)

    def describe(self) -> str:
        """One line for the log."""
        return "in this process"


class ProcessExecutor(Executor):
    """A pool of local worker processes (``concurrent.futures``, forkserver), kept for the executor's lifetime.

    The pool starts on the first map that runs more than one task at once and serves every stage of the run, so
    a worker loads a model once for all the chunks it screens. When the effective parallelism is one (one worker,
    or ``limit=1``) or a map has a single task, it runs in this process: a second process would only add start-up
    time. A worker process
    that dies (killed, out of memory) breaks the pool: it is started again and the tasks that were in flight are
    submitted again (tasks write their output atomically, so a repeated task changes nothing), at most
    :data:`MAX_POOL_RESTARTS` times per map. Several maps may run on the executor at once (interleaved
    generators); they share the pool.
    """

    kind = "process"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver, not fork: forking a parent whose torch/OpenMP thread pool is running can deadlock the child.
            context = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def map_unordered(self, fn, tasks, *, limit=None, gpu=False):
        """Yield results as workers finish them."""
        parallel = min(limit or self.workers, self.workers)
        task_iter = iter(tasks)
        # A single task runs here too: the pool would only add a process start and a second copy of the model the
        # stage has loaded in this process already (a select stage of one chunk, a screen of one chunk).
        first = list(islice(task_iter, 2))
        if parallel <= 1 or len(first) <= 1:
            yield from InlineExecutor().map_unordered(fn, chain(first, task_iter))
            return
        task_iter = chain(first, task_iter)
        # Below the pool size, the window is the limit (at most `limit` tasks in the pool, so at most that many
        # run); otherwise a few per process, so a process never waits for the client to hand it the next task.
        window = parallel if parallel < self.workers else TASKS_PER_WORKER * parallel
        pending: dict[Future, Any] = {}
        backlog: deque[Any] = deque()  # tasks of a broken pool, submitted again before new ones
        restarts = 0
        pool: ProcessPoolExecutor | None = None  # the pool this map's pending tasks run in

        def fill() -> bool:
            """Submit tasks until the window is full; False when the pool turned out to be broken."""
            nonlocal pool
            while len(pending) < window:
                if backlog:
                    task = backlog.popleft()
                else:
                    task = next(task_iter, _END)
                    if task is _END:
                        return True
                pool = self._get_pool()
                try:
                    pending[pool.submit(fn, task)] = task
                except BrokenProcessPool:
                    backlog.appendleft(task)
                    return False
            return True

        try:
            while True:
                if not fill():
                    broken = True
                else:
                    if not pending:
                        return
                    broken = False
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        try:
                            result = future.result()
                        except BrokenProcessPool:
                            backlog.append(task)
                            broken = True
                            continue
                        yield result
                if broken:
                    # A worker process died: the pool is broken and every task still in it fails. Start a new
                    # pool and run those tasks again (a task writes its output atomically: a repeat changes
                    # nothing), each result still yielded once.
                    backlog.extend(pending.values())
                    pending.clear()
                    restarts += 1
                    self._restart(restarts, pool)
        finally:
            for future in pending:
                future.cancel()

    def _restart(self, attempt: int, broken: ProcessPoolExecutor | None) -> None:
        """Drop the pool ``broken`` after a worker process died (``attempt``: restarts during this map).

        The next submit starts a new pool; another map on the executor that already replaced ``broken`` keeps its
        new pool.
        """
        self.restarts += 1
        if broken is not None and self._pool is broken:
            self._pool = None
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)
        if attempt > MAX_POOL_RESTARTS:
            raise AloeError(f"a worker process died {attempt} times (killed, or out of memory); giving up")

    def describe(self) -> str:
        """One line for the log."""
        return f"a pool of {self.workers} local processes"

    def close(self) -> None:
        """Shut the pool down: idle processes end at once, a task still running is stopped after a grace period.

        A task is still running only when a map was left early (an error, Ctrl-C): it is not waited for (it may
        be an hour of DFT); it writes its output atomically, so stopping it loses nothing but its own work.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + CLOSE_GRACE_S
        for process in processes:
            process.join(max(deadline - time.monotonic(), 0))
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


_END = object()


class DaskExecutor(Executor):
    """Tasks on Dask distributed: a running scheduler, or a cluster aloe starts (``LocalCluster``, Slurm, PBS).

    Parameters
    ----------
    settings
        Kind ``dask``: ``scheduler`` (an address) or ``cluster`` (what to start).
    client
        Use this client (tests, notebooks) instead; it is not closed by :meth:`close`.
    announce
        Called with one line naming the scheduler and its dashboard when the executor opens (the CLI prints it and
        the run log records it), and with a line for each batch job that is lost and replaced.
    """

    kind = "dask"

    def __init__(
        self,
        settings: ExecutorSettings,
        client: Any = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        try:
            from dask.distributed import Client
        except ImportError:
            raise AloeError("executor 'dask' needs dask distributed: pip install 'aloe[dask]'") from None
        self.settings = settings
        self.cluster = None
        self.watcher: JobWatcher | None = None
        #: The futures of the stage in flight (the watcher cancels them when no job can start).
        self._outstanding: set[Any] = set()
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif settings.scheduler:
            try:
                self.client = Client(settings.scheduler, timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                raise AloeError(f"cannot reach the Dask scheduler at {settings.scheduler} ({exc})") from None
        else:
            self.cluster = start_cluster(settings)
            try:
                self.client = Client(self.cluster)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.cluster.close()
                raise
        self.workers = self._expected_workers()
        if announce is not None:
            link = getattr(self.client, "dashboard_link", None)
            where = (
                describe_settings(settings)
                if client is None
                else f"the caller's client, {self.workers} workers"
            )
            address = "" if settings.scheduler else f"scheduler {self.scheduler_address}, "
            announce(f"{where}; {address}dashboard {link}")
        if self.cluster is not None and settings.cluster.kind != "local":
            self.watcher = JobWatcher(
                self.cluster,
                settings.cluster,
                say=announce,
                notice=settings.cluster.start_notice,
                on_failure=self._cancel_outstanding,
            )
            self.watcher.start()

    @property
    def scheduler_address(self) -> str | None:
        """The address of the scheduler the tasks go to (``tcp://host:port``)."""
        with contextlib.suppress(Exception):
            return self.client.scheduler.address
        return self.settings.scheduler

    def _scheduler_workers(self) -> list[dict[str, Any]]:
        """The scheduler's view of its workers (those connected now)."""
        try:
            info = self.client.scheduler_info(n_workers=-1)  # all of them (some versions default to 5)
        except TypeError:  # a distributed without the argument: it returns all
            info = self.client.scheduler_info()
        return list(info.get("workers", {}).values())

    def _expected_workers(self) -> int:
        """Task slots: those of the cluster aloe started (its jobs may still be queued), or those connected."""
        s, c = self.settings, self.settings.cluster
        if self.cluster is not None and c.kind != "local":
            expected = c.jobs * c.processes * max(c.cores // c.processes, 1)
        elif self.cluster is not None:
            expected = s.workers
        else:
            expected = 1
        connected = sum(int(w.get("nthreads", 1) or 1) for w in self._scheduler_workers())
        return max(expected, connected, 1)

    def _resources(self, gpu: bool | int) -> dict[str, float] | None:
        """Dask resources the tasks ask for.

        ``GPU`` for model work on a cluster with GPU workers; ``CPU`` for the rest when some workers are tagged
        ``CPU`` (then CPU-only work stays off the GPU workers). The tags are those of the connected workers and,
        for a cluster aloe started, those its workers will carry (batch jobs may still wait in the queue).
        """
        tags: set[str] = set()
        for worker in self._scheduler_workers():
            tags |= set((worker.get("resources") or {}).keys())
        if self.cluster is not None:
            tags |= _worker_resources(self.settings.cluster).keys()
        if gpu and "GPU" in tags:
            return {"GPU": int(gpu)}  # True: one GPU
        if not gpu and "CPU" in tags:
            return {"CPU": 1}
        return None

    def map_unordered(self, fn, tasks, *, limit=None, gpu=False):
        """Submit a window of tasks; as each finishes, yield its result and submit the next.

        The client holds at most a window of futures (``limit``, or :data:`TASKS_PER_WORKER` per task slot) and
        pulls tasks from ``tasks`` only as slots free up, so a stage of millions of tasks costs the client and the
        scheduler no more than one of a few. A task that raises raises here with its message; leaving the loop
        early (an exception, ``break``, closing the generator) cancels the tasks still submitted. A task whose
        worker dies (killed, out of memory) is run again by the scheduler on another worker.
        """
        from dask.distributed import as_completed

        if self.client is None:
            raise AloeError("this executor was closed")
        self.workers = self._expected_workers()
        window = limit or TASKS_PER_WORKER * self.workers
        resources = self._resources(gpu)
        task_iter = iter(tasks)
        outstanding: set[Any] = set()

        def submit(task: Any) -> Any:
            future = self.client.submit(fn, task, pure=False, resources=resources)
            outstanding.add(future)
            return future

        # with_results: the client fetches each result as its task finishes, in the background (a blocking
        # future.result() per task capped the client at about 100 tasks/s).
        running = as_completed(with_results=True)
        self._outstanding = outstanding
        try:
            self._check_jobs()
            for task in islice(task_iter, window):
                running.add(submit(task))
            for future, result in self._completed(running):
                outstanding.discard(future)
                future.release()
                nxt = next(task_iter, _END)
                if nxt is not _END:
                    running.add(submit(nxt))
                yield result
        finally:
            if outstanding and self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.cancel(list(outstanding))
            outstanding.clear()

    def _check_jobs(self) -> None:
        """Raise the watcher's failure (the cluster's jobs cannot start), if any."""
        if self.watcher is not None and self.watcher.failure is not None:
            raise AloeError(self.watcher.failure)

    def _completed(self, running: Any) -> Iterator[tuple[Any, Any]]:
        """``running``'s (future, result) pairs; a cancelled task stops the stage with the reason.

        A cancelled future comes out of ``as_completed`` with its ``CancelledError`` as its result.
        """
        for future, result in running:
            if future.status == "cancelled":
                self._check_jobs()
                raise AloeError(f"a task was cancelled on the Dask scheduler ({future.key})")
            yield future, result

    def _cancel_outstanding(self) -> None:
        """Cancel the tasks in flight (the watcher found that no job can start: the stage stops).

        Called on the cluster's event loop: the client's blocking ``cancel`` runs in a thread of its own.
        """
        client, futures = self.client, list(self._outstanding)
        if client is not None and futures:
            threading.Thread(target=client.cancel, args=(futures,), daemon=True).start()

    def describe(self) -> str:
        """One line for the log."""
        where = self.settings.scheduler or f"a {self.settings.cluster.kind} cluster aloe started"
        return f"Dask distributed ({where}, {self.workers} workers)"

    def close(self) -> None:
        """Close our client and the cluster we started (a client handed in stays open)."""
        if self.watcher is not None:
            self.watcher.stop()  # first: the jobs cancelled below are not lost jobs to replace
            self.watcher = None
        if self._own_client and self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
        self.client = None
        self.cluster = None


# ---- clusters ---------------------------------------------------------------------------------------------------
#: Name of the batch jobs aloe submits.
JOB_NAME = "aloe-worker"
#: Placeholder for the scheduler address in a job script shown before the scheduler runs (``--dry-run``).
SCHEDULER_PLACEHOLDER = "tcp://<scheduler>:8786"
#: Set in every worker's environment: Dask workers are daemonic by default and then refuse child processes
#: (dask/distributed#2142), while tasks may isolate each structure in a process of its own (label).
NON_DAEMONIC_WORKERS = "export DASK_DISTRIBUTED__WORKER__DAEMON=False"


def _worker_resources(c: ClusterSettings) -> dict[str, int]:
    """Dask resources each worker of the cluster ``c`` carries.

    GPU workers carry ``GPU`` (the job's GPUs shared out over its worker processes, at least one each); the
    workers of a batch cluster without GPUs carry ``CPU`` (their threads), so that on a scheduler that also has
    GPU workers, CPU-only work stays off those. LocalCluster workers without GPUs carry nothing.
    """
    if c.kind == "local":
        return {"GPU": c.gpus} if c.gpus else {}
    if c.gpus:
        return {"GPU": max(c.gpus // c.processes, 1)}
    return {"CPU": max(c.cores // c.processes, 1)}


def _jobqueue_kwargs(c: ClusterSettings) -> dict[str, Any]:
    """Keyword arguments of dask-jobqueue's ``SLURMCluster`` / ``PBSCluster`` (and of their ``Job`` classes)."""
    directives = list(c.job_directives)
    kwargs: dict[str, Any] = {}
    if c.gpus and c.kind == "slurm":
        directives.append(f"--gres=gpu:{c.gpus}")
    elif c.gpus:  # PBS Pro: GPUs are part of the job's resource chunk
        from dask.utils import parse_bytes
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        kwargs["resource_spec"] = (
            f"select=1:ncpus={c.cores}:ngpus={c.gpus}:mem={pbs_format_bytes_ceil(parse_bytes(c.memory))}"
        )
    resources = ",".join(f"{name}={count}" for name, count in _worker_resources(c).items())
    kwargs.update(
        {
            "cores": c.cores,
            "processes": c.processes,
            "memory": c.memory,
            "walltime": c.walltime,
            "account": c.account,
            "queue": c.queue,
            "job_script_prologue": [NON_DAEMONIC_WORKERS, *c.job_script_prologue],
            "job_extra_directives": directives,
            "worker_extra_args": ["--resources", resources],
            "python": c.python or sys.executable,
            "job_name": JOB_NAME,
        }
    )
    for key in ("interface", "local_directory", "log_directory"):
        if getattr(c, key) is not None:
            kwargs[key] = getattr(c, key)
    return kwargs


def _jobqueue_class(kind: str, job: bool = False):
    """dask-jobqueue's cluster class of ``kind`` (slurm, pbs), or the class of one of its jobs."""
    import importlib

    try:
        module = importlib.import_module(f"dask_jobqueue.{kind}")
    except ImportError:
        raise AloeError(f"cluster kind '{kind}' needs dask-jobqueue: pip install 'aloe[dask]'") from None
    name = {"slurm": "SLURM", "pbs": "PBS"}[kind]
    return getattr(module, f"{name}Job" if job else f"{name}Cluster")


def start_cluster(settings: ExecutorSettings):
    """Start the cluster ``settings.cluster`` describes (a ``LocalCluster``, or Slurm / PBS jobs)."""
    c = settings.cluster
    if c.kind == "local":
        import logging

        import dask
        from dask.distributed import LocalCluster

        # Read by each nanny whenever it (re)starts its worker process, so it is set for the process, not for a
        # block (see NON_DAEMONIC_WORKERS).
        dask.config.set({"distributed.worker.daemon": False})
        return LocalCluster(
            n_workers=settings.workers,
            threads_per_worker=1,
            processes=True,
            resources=_worker_resources(c) or None,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            local_directory=c.local_directory,
        )
    # Its jobs' workers are named aloe-0, aloe-1, ...
    cluster = _jobqueue_class(c.kind)(name="aloe", **_jobqueue_kwargs(c))
    cluster.scale(jobs=c.jobs)
    return cluster


@dataclass
class _Job:
    """One batch job of a cluster, as :class:`JobWatcher` follows it (times: ``time.monotonic()``)."""

    id: str
    name: str
    job: Any
    submitted: float
    connected: float | None = None
    left: float | None = None
    lost: bool = False
    #: When the job's state in the queue was last looked up (it has no worker yet).
    looked: float | None = None


class JobWatcher:
    """Follows the batch jobs of a dask-jobqueue cluster: logs each one, and replaces each one that is lost.

    dask-jobqueue submits a cluster's jobs once (``scale``). When a job ends (its walltime, ``scancel``, a failed
    node) its workers leave the scheduler, which runs their tasks again on the others, but with ``scale`` no job is
    submitted in its place, and the cluster shrinks until nothing runs the work. (``adapt`` submits a lost job again
    only when each job runs one worker: the cluster finds the job of a lost worker by the worker's name, and the
    workers of a job of several processes are named ``<job>-0``, ``<job>-1``; seen with dask-jobqueue 0.9.0 and
    distributed 2026.8.0 on a real Slurm cluster.) Every ``interval`` seconds the
    watcher compares the cluster's jobs with the workers connected to the scheduler:

    - a new job id: ``slurm job 123 submitted (aloe-0)`` in the run log;
    - its workers connect: ``slurm job 123 (aloe-0): 1 worker connected after 4 s (tcp://...)``;
    - every worker of a job that had connected has been gone for ``grace`` seconds (Dask's
      ``distributed.deploy.lost-worker-timeout``, 15 s; a worker that its nanny restarts is back sooner), or the
      cluster dropped the job: the job is lost (``say`` gets a line). It is cancelled if it still runs, dropped from
      the cluster, and a new job is submitted, so the cluster keeps ``jobs`` jobs;
    - a job without a worker ``notice`` seconds after its submission (Slurm): the run log gets its state and reason
      from ``squeue`` (``PENDING (Priority)``), again every ``notice`` seconds. A job that has left the queue without
      any worker connecting (a failing prologue, a wrong python) is replaced like a lost one. After
      :data:`MAX_FAILED_STARTS` such jobs in a row the job script is broken: :attr:`failure` says so, no job is
      submitted again, and the executor stops the stage with that message.

    The checks run on the cluster's event loop (the thread only wakes it), so the cluster's state is read and
    changed where Dask changes it.

    Workers get no ``--lifetime`` (dask-jobqueue's advice for walltimes). A worker that retires leaves the scheduler
    at once, but the task it runs goes on in its thread and child processes until the worker process exits. With
    the local Slurm cluster, a MACE training went on for 13 s after its worker had retired, while the scheduler
    started the same task on another worker, in the same folder. At the walltime, Slurm signals every process of
    the job at once.

    Parameters
    ----------
    cluster
        A dask-jobqueue cluster (``SLURMCluster``, ``PBSCluster``).
    settings
        What it was started with (``kind``, ``jobs``, ``processes``).
    say
        Called with the line of each lost job (the CLI shows it); default: the run log only.
    interval, grace
        Seconds between two looks; seconds a job may have no worker before it counts as lost.
    notice
        Seconds a job may wait for its first worker before its queue state is looked up (and between lookups).
    on_failure
        Called (on the cluster's event loop) once the job script is found broken; the executor cancels its tasks.
    lookup
        ``(kind, job id) -> state`` as :func:`queue_state` gives it (the default; tests give a stand-in).
    """

    def __init__(
        self,
        cluster: Any,
        settings: ClusterSettings,
        *,
        say: Callable[[str], None] | None = None,
        interval: float = WATCH_INTERVAL_S,
        grace: float | None = None,
        notice: float = START_NOTICE_S,
        on_failure: Callable[[], None] | None = None,
        lookup: Callable[[str, str], str | None] | None = None,
    ) -> None:
        if grace is None:
            import dask
            from dask.utils import parse_timedelta

            grace = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))
        self.cluster = cluster
        self.kind = settings.kind
        self.jobs = settings.jobs
        self.processes = settings.processes
        self.interval = interval
        self.grace = float(grace)
        self._say = say
        self.notice = float(notice)
        self._on_failure = on_failure
        self._lookup = lookup or queue_state
        #: Jobs in a row that left the queue before any worker connected.
        self.failed_starts: list[str] = []
        #: Why the jobs cannot start (set after MAX_FAILED_STARTS failed starts); None while they can.
        self.failure: str | None = None
        #: Every job seen, by id.
        self.seen: dict[str, _Job] = {}
        #: Ids of the lost jobs, in order.
        self.lost: list[str] = []
        self._replacing: deque[str] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (a daemon thread)."""
        self._thread = threading.Thread(target=self._run, name="aloe-job-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the cluster closes: its jobs then end, and are not lost) and log a summary."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self.seen:
            ids = ", ".join(self.seen)
            _log.info(
                "%s jobs: %d submitted (%s), %d lost and replaced%s",
                self.kind,
                len(self.seen),
                ids,
                len(self.lost),
                f" ({', '.join(self.lost)})" if self.lost else "",
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if str(getattr(self.cluster, "status", "")).endswith(("closing", "closed")):
                return
            try:
                self.cluster.sync(self.check)
            except Exception as exc:
                if self._stop.is_set():
                    return
                _log.warning("watching the %s jobs: %s", self.kind, one_line(exc))

    def _belongs(self, worker: str, job: str) -> bool:
        """Whether the worker named ``worker`` runs in the job named ``job`` (``job``, or ``job-<i>``)."""
        if worker == job:
            return True
        head, _, tail = worker.rpartition("-")
        return self.processes > 1 and head == job and tail.isdigit()

    def _tell(self, line: str) -> None:
        if self._say is not None:
            self._say(line)
        else:
            _log.warning(line)

    async def check(self, now: float | None = None) -> None:
        """One look at the jobs: log the new, connected and lost ones; replace the lost ones (on the cluster's loop)."""
        now = time.monotonic() if now is None else now
        cluster = self.cluster
        for name, job in list(cluster.workers.items()):
            job_id = getattr(job, "job_id", None)
            if job_id and str(job_id) not in self.seen:
                self.seen[str(job_id)] = _Job(str(job_id), str(name), job, now)
                replacing = f", replacing job {self._replacing.popleft()}" if self._replacing else ""
                _log.info("%s job %s submitted (%s%s)", self.kind, job_id, name, replacing)
        workers = {
            str(info.get("name")): address
            for address, info in dict(cluster.scheduler_info.get("workers", {})).items()
        }
        jobs_now = {str(name): job for name, job in cluster.workers.items()}
        for record in list(self.seen.values()):
            if record.lost:
                continue
            # The cluster may have submitted a new job under this job's name: the workers of that name are its.
            holder = jobs_now.get(record.name)
            superseded = holder is not None and holder is not record.job
            mine = (
                [] if superseded else sorted(a for n, a in workers.items() if self._belongs(n, record.name))
            )
            if mine:
                if record.connected is None:
                    record.connected = now
                    self.failed_starts.clear()
                    _log.info(
                        "%s job %s (%s): %d worker%s connected after %.0f s (%s)",
                        self.kind,
                        record.id,
                        record.name,
                        len(mine),
                        "s" if len(mine) > 1 else "",
                        now - record.submitted,
                        ", ".join(mine),
                    )
                elif record.left is not None:
                    _log.info(
                        "%s job %s (%s): its workers are back after %.0f s",
                        self.kind,
                        record.id,
                        record.name,
                        now - record.left,
                    )
                record.left = None
            elif record.connected is not None or superseded:
                if record.left is None:
                    record.left = now
                    _log.info("%s job %s (%s): its workers left", self.kind, record.id, record.name)
                if superseded or holder is None or now - record.left >= self.grace:
                    await self._replace(record, now)
            elif self.failure is None and now - record.submitted >= self.notice:
                if record.looked is None or now - record.looked >= self.notice:
                    record.looked = now
                    await self._look_up(record, now)

    async def _look_up(self, record: _Job, now: float) -> None:
        """A job without a worker for ``notice`` s: log its queue state, or replace it if it left the queue."""
        state = self._lookup(self.kind, record.id)
        if state is None:  # not a Slurm cluster, or squeue did not answer
            return
        if state:
            _log.info(
                "%s job %s (%s): no worker %.0f s after it was submitted; the queue says %s",
                self.kind,
                record.id,
                record.name,
                now - record.submitted,
                state,
            )
            return
        self.failed_starts.append(record.id)
        record.left = now
        if len(self.failed_starts) >= MAX_FAILED_STARTS:
            record.lost = True
            self.failure = (
                f"{len(self.failed_starts)} {self.kind} jobs in a row ({', '.join(self.failed_starts)}) ended "
                "before any worker connected: the job script fails (see the jobs' output in log_directory; "
                "'aloe run CONFIG --dry-run' prints the script)"
            )
            self._tell(self.failure)
            if record.name in self.cluster.worker_spec:
                await self.cluster.scale_down([record.name])
            if self._on_failure is not None:
                self._on_failure()
            return
        self._tell(
            f"{self.kind} job {record.id} ({record.name}) ended before any worker connected "
            f"({len(self.failed_starts)} of {MAX_FAILED_STARTS} such jobs in a row before aloe stops); see its "
            "output in log_directory; submitting a new job"
        )
        await self._replace(record, now, quiet=True)

    async def _replace(self, record: _Job, now: float, quiet: bool = False) -> None:
        """Drop the lost job ``record`` from the cluster (cancelling it if it still runs) and submit a new one."""
        record.lost = True
        self.lost.append(record.id)
        if not quiet:
            self._tell(
                f"{self.kind} job {record.id} ({record.name}) lost: its workers left "
                f"{record.left - record.submitted:.0f} s after it was submitted (walltime, scancel or a failed "
                "node); their tasks run again on the other workers; submitting a new job"
            )
        cluster = self.cluster
        current = cluster.workers.get(record.name)
        if current is not None and current is not record.job:
            # The cluster submitted the job again itself, under the same name (it does so for a job of one worker
            # whenever it next corrects its state, e.g. while another lost job is dropped).
            new_id = str(getattr(current, "job_id", None) or "")
            if new_id in self.seen:
                _log.info("%s job %s (%s) replaces job %s", self.kind, new_id, record.name, record.id)
            else:
                self._replacing.append(record.id)
            return
        if record.name in cluster.worker_spec:
            await cluster.scale_down([record.name])
        self._replacing.append(record.id)
        cluster.scale(jobs=self.jobs)


def queue_state(kind: str, job_id: str) -> str | None:
    """What the batch system says of a job: ``"PENDING (Priority)"``; ``""`` once it has left the queue.

    None where it cannot tell (not Slurm, or ``squeue`` failed). Slurm lists an ended job for ``MinJobAge``
    (300 s by default) with its final state: such a state counts as gone.
    """
    if kind != "slurm":
        return None
    import subprocess

    try:
        result = subprocess.run(
            ["squeue", "--noheader", f"--jobs={job_id}", "--format=%T|%r"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout.strip()
    if result.returncode != 0:
        return "" if "Invalid job id" in result.stderr else None
    if not text:
        return ""
    state, _, reason = text.splitlines()[0].partition("|")
    if state not in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"):
        return ""  # COMPLETED, FAILED, CANCELLED, TIMEOUT, ...: it ended
    return f"{state} ({reason})" if reason and reason != "None" else state


def render_job_script(settings: ExecutorSettings) -> str:
    """The batch script one job of ``settings.cluster`` would run (``--dry-run``; nothing is submitted or written)."""
    c = settings.cluster
    if c.kind == "local":
        raise AloeError("a job script needs a batch cluster: set executor.cluster.kind to slurm or pbs")
    kwargs = _jobqueue_kwargs(c)
    job_class = _jobqueue_class(c.kind, job=True)
    if "log_directory" not in kwargs:
        return job_class(scheduler=SCHEDULER_PLACEHOLDER, name="aloe-0", **kwargs).job_script()
    # A job creates its log folder: let it create a throw-away one and show the real one in its place.
    with tempfile.TemporaryDirectory(prefix="aloe-dry-run-") as tmp:
        stand_in = os.path.join(tmp, "logs")
        kwargs["log_directory"] = stand_in
        script = job_class(scheduler=SCHEDULER_PLACEHOLDER, name="aloe-0", **kwargs).job_script()
    return script.replace(stand_in, str(c.log_directory))


def describe_settings(settings: ExecutorSettings) -> str:
    """One line saying where the work of ``settings`` would run (nothing is started; ``--dry-run``)."""
    c = settings.cluster
    if settings.kind == "local" or (settings.kind == "process" and settings.workers <= 1):
        return "in this process"
    if settings.kind == "process":
        return f"a pool of {settings.workers} local processes"
    if settings.scheduler:
        return f"Dask distributed: the scheduler at {settings.scheduler}"
    gpus = f", {c.gpus} GPU{'s' if c.gpus > 1 else ''} each" if c.gpus else ""
    if c.kind == "local":
        return (
            f"Dask distributed: a LocalCluster of {settings.workers} worker processes on this machine{gpus}"
        )
    where = f"{c.kind} {'partition' if c.kind == 'slurm' else 'queue'} {c.queue}" if c.queue else c.kind
    account = f", account {c.account}" if c.account else ""
    return (
        f"Dask distributed: {c.jobs} {where} job{'s' if c.jobs > 1 else ''}{account}, each {c.processes} "
        f"worker process{'es' if c.processes > 1 else ''} on {c.cores} core{'s' if c.cores > 1 else ''}, "
        f"{c.memory}{gpus}, walltime {c.walltime}"
    )


# ---- opening ----------------------------------------------------------------------------------------------------
def open_executor(
    settings: ExecutorSettings | None = None,
    *,
    announce: Callable[[str], None] | None = None,
    client: Any = None,
) -> Executor:
    """Open the executor ``settings`` describe (close it, or use it as a context manager, when done)."""
    settings = settings or ExecutorSettings()
    if client is not None:
        return DaskExecutor(settings.model_copy(update={"kind": "dask"}), client=client, announce=announce)
    if settings.kind == "local" or (settings.kind == "process" and settings.workers <= 1):
        return InlineExecutor()
    if settings.kind == "process":
        return ProcessExecutor(settings.workers)
    return DaskExecutor(settings, announce=announce)


def get_executor(kind: str, workers: int = 1, *, scheduler: str | None = None) -> Executor:
    """An executor by name: ``local``, ``process`` or ``dask`` (see :func:`open_executor`)."""
    if kind not in ("local", "process", "dask"):
        raise AloeError(f"unknown executor {kind!r} (choose local, process or dask)")
    return open_executor(ExecutorSettings(kind=kind, workers=workers, scheduler=scheduler))


@contextlib.contextmanager
def stage_executor(given: Executor | None, options: Any) -> Iterator[Executor]:
    """The executor a stage runs on: the caller's (left open), or one opened from the stage's run options.

    ``options`` has ``executor``, ``workers`` and ``scheduler`` (a stage's settings).
    """
    if given is not None:
        yield given
        return
    from aloe.logs import echo

    settings = ExecutorSettings(kind=options.executor, workers=options.workers, scheduler=options.scheduler)
    executor = open_executor(settings, announce=echo)
    try:
        yield executor
    finally:
        executor.close()
