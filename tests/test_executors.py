"""Executors on real processes and a real Dask LocalCluster (loopback, two workers)."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aloe import executors
from aloe.errors import AloeError
from aloe.executors import (
    TASKS_PER_WORKER,
    ClusterSettings,
    DaskExecutor,
    Executor,
    ExecutorSettings,
    InlineExecutor,
    ProcessExecutor,
    describe_settings,
    get_executor,
    open_executor,
    render_job_script,
    stage_executor,
)


# ---- tasks (module level: they travel to worker processes by reference) -----------------------------------------
def square(x: int) -> int:
    return x * x


def record_interval(args: tuple[str, int, float]) -> int:
    """Sleep, and leave (start, end, pid) in ``folder/<i>.json``."""
    folder, i, seconds = args
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    (Path(folder) / f"{i}.json").write_text(json.dumps([start, end, os.getpid()]))
    return i


def max_overlap(folder: Path) -> int:
    """The most intervals of ``record_interval`` open at one time."""
    events = []
    for path in folder.glob("*.json"):
        start, end, _ = json.loads(path.read_text())
        events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def pids(folder: Path) -> set[int]:
    return {json.loads(path.read_text())[2] for path in folder.glob("*.json")}


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad task {x}: no convergence")
    time.sleep(0.05)
    return x


def kill_once(args: tuple[str, int]) -> int:
    """Task 2 kills its own worker process the first time it runs (the marker file remembers)."""
    marker, i = args
    time.sleep(0.1)
    if i == 2:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return i


def slow(x: int) -> int:
    time.sleep(0.3)
    return x


def start_child(x: int) -> int:
    """Start a child process (as the label stage does for each structure) and return its exit code + x."""
    child = multiprocessing.get_context("forkserver").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    return child.exitcode + x


def mark_sleep_mark(args: tuple[str, int, float]) -> int:
    """Leave ``<i>.pid``, sleep, leave ``<i>.done``."""
    folder, i, seconds = args
    (Path(folder) / f"{i}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    (Path(folder) / f"{i}.done").write_text("")
    return i


class Counting:
    """An iterable of n tasks that counts how many were taken."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.taken = 0

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            yield i


# ---- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of two worker processes for the Dask tests of this module."""
    pytest.importorskip("distributed")
    from aloe.executors import start_cluster

    c = start_cluster(ExecutorSettings(kind="dask", workers=2))
    yield c
    c.close()


@pytest.fixture(scope="module")
def client(cluster):
    from dask.distributed import Client

    c = Client(cluster)
    yield c
    c.close()


@pytest.fixture
def dask_executor(client):
    """A Dask executor on the module's cluster, both its workers connected."""
    client.wait_for_workers(2, timeout=30)
    with DaskExecutor(ExecutorSettings(kind="dask"), client=client) as ex:
        yield ex


@pytest.fixture(scope="module")
def process_executor():
    """One pool of two processes for the module, as a run has one for all its stages."""
    with ProcessExecutor(2) as ex:
        yield ex


class CountingClient:
    """A client that remembers the most futures it had unfinished at once (and forwards everything else)."""

    def __init__(self, client) -> None:
        self._client = client
        self._unfinished: list = []
        self.max_unfinished = 0
        self.submitted = 0

    def submit(self, *args, **kwargs):
        future = self._client.submit(*args, **kwargs)
        self.submitted += 1
        self._unfinished = [f for f in self._unfinished if not f.done()] + [future]
        self.max_unfinished = max(self.max_unfinished, len(self._unfinished))
        return future

    def __getattr__(self, name):
        return getattr(self._client, name)


def scheduler_task_count(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


# ---- results -------------------------------------------------------------------------------------------------------
def test_inline_results_in_order():
    assert list(InlineExecutor().map_unordered(square, range(10))) == [x * x for x in range(10)]


def test_process_results_complete(process_executor):
    results = list(process_executor.map_unordered(square, range(50)))
    assert sorted(results) == [x * x for x in range(50)]


def test_dask_results_complete(dask_executor):
    results = list(dask_executor.map_unordered(square, range(50)))
    assert sorted(results) == [x * x for x in range(50)]


def test_empty_task_lists(process_executor, dask_executor):
    for ex in (InlineExecutor(), process_executor, dask_executor):
        assert list(ex.map_unordered(square, [])) == []


# ---- limits and windows ----------------------------------------------------------------------------------------------
def test_process_limit_one_runs_here_and_pool_runs_in_parallel(process_executor, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    tasks = [(str(one), i, 0.05) for i in range(6)]
    assert sorted(process_executor.map_unordered(record_interval, tasks, limit=1)) == list(range(6))
    assert max_overlap(one) == 1 and pids(one) == {os.getpid()}  # parallelism 1: in this process

    two = tmp_path / "two"
    two.mkdir()
    tasks = [(str(two), i, 0.4) for i in range(6)]
    assert sorted(process_executor.map_unordered(record_interval, tasks)) == list(range(6))
    assert max_overlap(two) <= 2
    assert os.getpid() not in pids(two)

    single = tmp_path / "single"
    single.mkdir()  # one task: here too (no process start, no second copy of a model loaded here)
    assert list(process_executor.map_unordered(record_interval, iter([(str(single), 0, 0.0)]))) == [0]
    assert pids(single) == {os.getpid()}


def test_dask_limit_respected(dask_executor, tmp_path):
    tasks = [(str(tmp_path), i, 0.1) for i in range(8)]
    assert sorted(dask_executor.map_unordered(record_interval, tasks, limit=1)) == list(range(8))
    assert max_overlap(tmp_path) == 1


def test_dask_window_bounds_submitted_tasks(client):
    counting = CountingClient(client)
    ex = DaskExecutor(ExecutorSettings(kind="dask"), client=counting)
    assert ex.workers == 2
    assert sorted(ex.map_unordered(square, range(40))) == [x * x for x in range(40)]
    assert counting.submitted == 40
    assert counting.max_unfinished <= TASKS_PER_WORKER * 2
    counting = CountingClient(client)
    ex = DaskExecutor(ExecutorSettings(kind="dask"), client=counting)
    assert sorted(ex.map_unordered(square, range(10), limit=3)) == [x * x for x in range(10)]
    assert counting.max_unfinished <= 3
    # every future is released once its result is taken: nothing stays on the scheduler
    assert wait_until(lambda: scheduler_task_count(client) == 0)


def test_dask_generator_taken_lazily_and_closing_cancels(dask_executor, client):
    tasks = Counting(100_000)
    results = dask_executor.map_unordered(slow, tasks)
    window = TASKS_PER_WORKER * dask_executor.workers
    got = [next(results) for _ in range(3)]
    assert len(got) == 3
    assert tasks.taken <= window + len(got)
    assert scheduler_task_count(client) <= window + len(got)
    results.close()  # a caller that stops early (an error of its own, Ctrl-C, break)
    assert tasks.taken <= window + len(got)
    assert wait_until(lambda: scheduler_task_count(client) == 0)


def test_process_generator_taken_lazily_and_closing_cancels(process_executor):
    tasks = Counting(100_000)
    results = process_executor.map_unordered(slow, tasks)
    got = [next(results) for _ in range(3)]
    assert tasks.taken <= TASKS_PER_WORKER * 2 + len(got)
    results.close()
    assert tasks.taken <= TASKS_PER_WORKER * 2 + len(got)
    assert sorted(process_executor.map_unordered(square, range(4))) == [0, 1, 4, 9]  # the pool still serves


# ---- failures --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["inline", "process", "dask"])
def test_task_exception_reaches_the_caller(kind, process_executor, dask_executor):
    ex = {"inline": InlineExecutor(), "process": process_executor, "dask": dask_executor}[kind]
    with pytest.raises(ValueError, match="bad task 3: no convergence"):
        list(ex.map_unordered(fail_on_three, range(8)))
    assert sorted(ex.map_unordered(square, range(5))) == [0, 1, 4, 9, 16]  # usable afterwards


def test_process_pool_survives_a_killed_worker(process_executor, tmp_path):
    marker = tmp_path / "killed"
    restarts = process_executor.restarts
    results = list(process_executor.map_unordered(kill_once, [(str(marker), i) for i in range(10)]))
    assert marker.exists()
    assert sorted(results) == list(range(10))  # every result exactly once
    assert process_executor.restarts == restarts + 1
    assert sorted(process_executor.map_unordered(square, range(4))) == [0, 1, 4, 9]


def test_interleaved_maps_share_the_pool_and_survive_a_kill(process_executor, tmp_path):
    marker = tmp_path / "killed"
    a = process_executor.map_unordered(kill_once, [(str(marker), i) for i in range(6)])
    b = process_executor.map_unordered(square, range(6))
    pairs = list(itertools.zip_longest(a, b))  # the two maps take turns
    assert marker.exists()
    assert sorted(x for x, _ in pairs) == list(range(6))
    assert sorted(y for _, y in pairs) == [x * x for x in range(6)]


def test_process_pool_gives_up_on_a_task_that_always_kills(process_executor, monkeypatch):
    monkeypatch.setattr(executors, "MAX_POOL_RESTARTS", 1)
    with pytest.raises(AloeError, match="died"):
        list(process_executor.map_unordered(_kill_self, range(3)))
    assert sorted(process_executor.map_unordered(square, range(4))) == [0, 1, 4, 9]  # a fresh pool serves


def _kill_self(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_dask_survives_a_killed_worker(dask_executor, client, tmp_path):
    marker = tmp_path / "killed"
    results = list(dask_executor.map_unordered(kill_once, [(str(marker), i) for i in range(10)]))
    assert marker.exists()
    assert sorted(results) == list(range(10))  # the task ran again elsewhere; each result once
    client.wait_for_workers(2, timeout=30)  # the nanny started the killed worker again


def test_dask_workers_may_start_child_processes(dask_executor):
    assert sorted(dask_executor.map_unordered(start_child, range(2))) == [0, 1]


# ---- lifetime --------------------------------------------------------------------------------------------------------
def test_process_executor_reused_across_maps_and_closed_twice(tmp_path):
    ex = ProcessExecutor(2)
    seen = []
    for k in range(3):
        folder = tmp_path / str(k)
        folder.mkdir()
        tasks = [(str(folder), i, 0.05) for i in range(4)]
        assert sorted(ex.map_unordered(record_interval, tasks)) == list(range(4))
        seen.append(pids(folder))
        if k == 0:
            pool = ex._pool
        assert ex._pool is pool  # one pool for the whole run
    assert len(set.union(*seen)) <= 2  # the same two processes served every map
    ex.close()
    ex.close()
    assert ex._pool is None


def test_process_close_stops_a_task_left_running(tmp_path):
    ex = ProcessExecutor(2)
    results = ex.map_unordered(mark_sleep_mark, [(str(tmp_path), 0, 0.0), (str(tmp_path), 1, 30.0)])
    assert next(results) == 0
    assert wait_until(lambda: (tmp_path / "1.pid").exists())
    pid = int((tmp_path / "1.pid").read_text())
    results.close()  # the caller stops (an error of its own, Ctrl-C): the long task is still running
    ex.close()  # not waited for
    assert not (tmp_path / "1.done").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_dask_executor_with_its_own_cluster(tmp_path):
    lines: list[str] = []
    settings = ExecutorSettings(kind="dask", workers=2)
    ex = open_executor(settings, announce=lines.append)
    try:
        assert isinstance(ex, DaskExecutor) and ex.cluster is not None
        assert len(lines) == 1 and "dashboard http" in lines[0] and "LocalCluster of 2" in lines[0]
        for _ in range(3):  # one executor for every stage of a run
            assert sorted(ex.map_unordered(square, range(6))) == [x * x for x in range(6)]
        cluster = ex.cluster
    finally:
        ex.close()
    ex.close()  # idempotent
    assert ex.client is None and ex.cluster is None
    assert cluster.status.name == "closed"
    with pytest.raises(AloeError, match="closed"):
        list(ex.map_unordered(square, range(2)))


def test_dask_executor_on_a_scheduler_address(cluster):
    ex = open_executor(ExecutorSettings(kind="dask", scheduler=cluster.scheduler_address))
    with ex:
        assert isinstance(ex, DaskExecutor) and ex.cluster is None
        assert ex.workers >= 1
        assert sorted(ex.map_unordered(square, range(4))) == [0, 1, 4, 9]
    assert cluster.status.name == "running"  # closing the executor leaves a scheduler it did not start


def test_unreachable_scheduler_is_one_line_error(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(AloeError, match="cannot reach the Dask scheduler"):
        DaskExecutor(ExecutorSettings(kind="dask", scheduler="tcp://127.0.0.1:1"))


def test_open_executor_kinds():
    assert isinstance(open_executor(), InlineExecutor)  # process with one worker: in this process
    assert isinstance(open_executor(ExecutorSettings(kind="local", workers=4)), InlineExecutor)
    with open_executor(ExecutorSettings(kind="process", workers=2)) as ex:
        assert isinstance(ex, ProcessExecutor) and ex.workers == 2
    assert isinstance(get_executor("process", 3), ProcessExecutor)
    with pytest.raises(AloeError, match="unknown executor"):
        get_executor("threads")


def test_stage_executor_uses_the_callers_or_opens_its_own():
    given = ProcessExecutor(2)
    with stage_executor(given, None) as ex:
        assert ex is given
        assert sorted(ex.map_unordered(square, range(4))) == [0, 1, 4, 9]
    assert given._pool is not None  # the caller's executor stays open
    given.close()
    options = SimpleNamespace(executor="process", workers=2, scheduler=None)
    with stage_executor(None, options) as ex:
        assert isinstance(ex, ProcessExecutor)
        assert sorted(ex.map_unordered(square, range(4))) == [0, 1, 4, 9]
    assert ex._pool is None  # closed with the stage


def test_a_stage_with_workers_alone_runs_a_process_pool():
    """``--workers 2`` without ``--executor`` means two local processes (as in ``aloe run``), not one."""
    from aloe.stagekit import StageSettings

    with stage_executor(None, StageSettings(workers=2)) as ex:
        assert isinstance(ex, ProcessExecutor) and "2" in ex.describe()
    with stage_executor(None, StageSettings()) as ex:
        assert isinstance(ex, InlineExecutor)
    with stage_executor(None, StageSettings(workers=2, executor="local")) as ex:
        assert isinstance(ex, InlineExecutor)


def test_executor_base_is_a_context_manager():
    with Executor() as ex:
        assert ex.describe() == "local"


# ---- batch clusters ----------------------------------------------------------------------------------------------
SLURM = ClusterSettings(
    kind="slurm",
    jobs=4,
    cores=16,
    processes=2,
    memory="64GiB",
    gpus=2,
    walltime="12:00:00",
    account="matsci",
    queue="gpu",
    job_script_prologue=["module load cuda/12.4", "source /project/aloe/.venv/bin/activate"],
    job_directives=["--constraint=a100"],
    python="python",
)


def test_slurm_job_script_carries_every_resource():
    pytest.importorskip("dask_jobqueue")
    script = render_job_script(ExecutorSettings(kind="dask", cluster=SLURM))
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for expected in (
        "#SBATCH -J aloe-worker",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64G",
        "#SBATCH -t 12:00:00",
        "#SBATCH -A matsci",
        "#SBATCH -p gpu",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --constraint=a100",
        "module load cuda/12.4",
        "source /project/aloe/.venv/bin/activate",
        "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
    ):
        assert expected in lines, (expected, script)
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert worker.startswith("python -m distributed.cli.dask_worker tcp://<scheduler>:8786")
    assert "--nworkers 2" in worker and "--nthreads 8" in worker
    assert "--resources GPU=1" in worker  # two GPUs over two worker processes
    # the prologue runs before the worker starts
    assert lines.index("module load cuda/12.4") < lines.index(worker)


def test_slurm_job_script_without_gpus_tags_cpu_workers():
    pytest.importorskip("dask_jobqueue")
    cpu = SLURM.model_copy(update={"gpus": 0, "processes": 4})
    script = render_job_script(ExecutorSettings(kind="dask", cluster=cpu))
    assert "--gres" not in script
    assert "--resources CPU=4" in script


def test_pbs_job_script_carries_every_resource():
    pytest.importorskip("dask_jobqueue")
    pbs = SLURM.model_copy(update={"kind": "pbs", "queue": "workq", "job_directives": ["-m abe"]})
    script = render_job_script(ExecutorSettings(kind="dask", cluster=pbs))
    lines = script.splitlines()
    for expected in (
        "#PBS -N aloe-worker",
        "#PBS -q workq",
        "#PBS -A matsci",
        "#PBS -l select=1:ncpus=16:ngpus=2:mem=64GB",
        "#PBS -l walltime=12:00:00",
        "#PBS -m abe",
        "module load cuda/12.4",
    ):
        assert expected in lines, (expected, script)
    assert "--resources GPU=1" in script


def test_local_cluster_has_no_job_script():
    with pytest.raises(AloeError, match="slurm or pbs"):
        render_job_script(ExecutorSettings(kind="dask"))


def test_describe_settings():
    assert describe_settings(ExecutorSettings(kind="local")) == "in this process"
    assert describe_settings(ExecutorSettings(kind="process", workers=3)) == "a pool of 3 local processes"
    assert "scheduler at tcp://h:8786" in describe_settings(
        ExecutorSettings(kind="dask", scheduler="tcp://h:8786")
    )
    assert "LocalCluster of 2" in describe_settings(ExecutorSettings(kind="dask", workers=2))
    line = describe_settings(ExecutorSettings(kind="dask", cluster=SLURM))
    assert "4 slurm partition gpu jobs" in line and "account matsci" in line and "2 GPUs" in line
