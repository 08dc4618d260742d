"""``aloe run`` on a real Slurm cluster (``install/local-slurm.sh``): batch jobs through dask-jobqueue.

The LJ/EMT two-iteration loop (test_loop's, tiny MACE committees) runs with ``executor.cluster.kind: slurm`` (two
jobs of one core, one worker each) and its products are compared byte for byte with the same loop on a pool of two
local processes:

- plain: the jobs appear in ``squeue``, their workers connect, the run log names the scheduler and every job id,
  the jobs are gone when the run ends;
- a job ``scancel``-led while its worker screens a chunk: its chunk runs again on the other worker, a new job is
  submitted in its place, and the run ends with the same products;
- jobs with a one-minute walltime, one of them stalled in a screen task until Slurm ends it at its time limit
  (``TIMEOUT``): new jobs take over, and nothing is lost or duplicated (one iteration; the pool run's first).

Stage verbs reach Slurm through ``--scheduler``: a scheduler kept open in this process (aloe's own Slurm cluster)
runs ``aloe bench reference`` (EMT; byte for byte against the pool) and a tiny EMT ``aloe study``.

The rules of :class:`aloe.executors.JobWatcher` (when a job counts as lost) are also checked on a stand-in cluster,
in a second. Every test is slow (the whole file: about 8 minutes on 2 idle cores) and the Slurm ones skip where
Slurm cannot run (see :mod:`tests.slurm_cluster`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from aloe.executors import JOB_NAME, ClusterSettings, ExecutorSettings, open_executor
from tests.conftest import write_prototypes
from tests.loop.test_loop import LJ_COMMITTEE, loop_config
from tests.slurm_cluster import slurm_cluster, slurm_jobs, wait_for  # noqa: F401
from tests.test_dask_end_to_end import PRODUCTS, product_bytes
from tests.train.test_train import labelled  # noqa: F401  (the module-scoped fixture)

# Not importorskip: the workers import this module for its committee member, in a thread, and importing
# dask_jobqueue there fails (it sets a signal handler on import).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(importlib.util.find_spec("dask_jobqueue") is None, reason="needs dask-jobqueue"),
]

ROOT = Path(__file__).resolve().parents[1]
#: Seconds one ``aloe run`` may take before the test gives up on it.
RUN_TIMEOUT_S = 600
#: Set (in the job script) to a path: the first committee calculation on a worker that finds no file there writes
#: the worker's Slurm job id to it and stalls until the job ends (scancel, walltime; :func:`stalling_lj`).
STALL_MARKER_ENV = "ALOE_TEST_STALL_MARKER"
#: How long a stalled calculation waits for its job to end before it gives up and goes on.
STALL_S = 300.0
#: The first committee: test_loop's LJ trio, its third member stalling where ``$ALOE_TEST_STALL_MARKER`` says so.
COMMITTEE = [*LJ_COMMITTEE[:2], "tests.test_slurm:stalling_lj"]

SUBMITTED = re.compile(r"slurm job (\d+) submitted \(([\w-]+)(?:, replacing job (\d+))?\)")
CONNECTED = re.compile(r"(\d\d:\d\d:\d\d) \S+ \S+ slurm job (\d+) \(([\w-]+)\): \d+ workers? connected after")
LEFT = re.compile(r"(\d\d:\d\d:\d\d) \S+ \S+ slurm job (\d+) \(([\w-]+)\): its workers left")
LOST = re.compile(r"(\d\d:\d\d:\d\d) .*slurm job (\d+) \(([\w-]+)\) lost")


def stalling_lj():
    """``lj(sigma=2.3, epsilon=0.07, rc=6.0)`` that, once per marker file, stalls in a Slurm worker.

    With ``$ALOE_TEST_STALL_MARKER`` set (the workers of the scancel and walltime tests), the first calculation in
    any process that claims the marker writes ``$SLURM_JOB_ID`` to it and sleeps until its job ends; everywhere else
    (the process pool, the other tests' workers, the task run again after the job ended) a plain LJ calculator.
    """
    from ase.calculators.lj import LennardJones

    class Stalling(LennardJones):
        def calculate(self, *args, **kwargs):
            marker = os.environ.get(STALL_MARKER_ENV)
            if marker:
                try:  # only one worker claims it, even when two start at once
                    fd = os.open(f"{marker}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.close(fd)
                    tmp = Path(f"{marker}.tmp")
                    tmp.write_text(os.environ.get("SLURM_JOB_ID", "?"))
                    tmp.replace(marker)
                    time.sleep(STALL_S)
            return super().calculate(*args, **kwargs)

    return Stalling(sigma=2.3, epsilon=0.07, rc=6.0)


# ---- runs ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def protos(tmp_path_factory) -> Path:
    return write_prototypes(tmp_path_factory.mktemp("protos"))


def slurm_executor(
    folder: Path, partition: str, *, walltime: str = "00:20:00", prologue: tuple[str, ...] = ()
) -> dict:
    """The ``executor`` section: two Slurm jobs of one core and one worker each."""
    return {
        "kind": "dask",
        "cluster": {
            "kind": "slurm",
            "jobs": 2,
            "cores": 1,
            "processes": 1,
            "memory": "2GiB",
            "walltime": walltime,
            "queue": partition,
            "python": sys.executable,
            # the workers import the test committee member from this checkout
            "job_script_prologue": [f"export PYTHONPATH={ROOT}", "export OMP_NUM_THREADS=1", *prologue],
            "local_directory": str(folder / "dask-scratch"),
            "log_directory": str(folder / "dask-logs"),
        },
    }


def write_config(folder: Path, protos: Path, executor: dict, iterations: int = 2) -> Path:
    """The LJ/EMT loop (test_loop's config, two iterations) into ``folder/run``, on ``executor``."""
    data = loop_config(protos, folder / "run", iterations=iterations, run={"committee": COMMITTEE})
    data["executor"] = executor
    path = folder / "loop.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_run(config: Path, folder: Path) -> subprocess.Popen:
    """``aloe run CONFIG`` in a child process (as a user runs it), started in ``folder``."""
    env = {
        **os.environ,
        "ALOE_CACHE_DIR": str(folder.parent / "cache"),
        "ALOE_PROGRESS": "0",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "aloe.cli.main", "run", str(config)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, run: Path) -> str:
    """Wait for ``aloe run`` to end; its terminal output (fails with the log's tail when it did not succeed)."""
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    log = run / "aloe.log"
    tail = log.read_text()[-4000:] if log.exists() else ""
    assert proc.returncode == 0, (
        f"aloe run ended with {proc.returncode}\n{err[-3000:]}\n--- aloe.log:\n{tail}"
    )
    return out


def run_loop(folder: Path, protos: Path, executor: dict, iterations: int = 2) -> Path:
    """Run the loop on ``executor`` to its end; its run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    finish(start_run(write_config(folder, protos, executor, iterations), folder), folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory, protos) -> Path:
    """The loop on a pool of two local processes: what every Slurm run must produce."""
    return run_loop(tmp_path_factory.mktemp("pool"), protos, {"kind": "process", "workers": 2})


def assert_same_products(run: Path, expected: Path, iterations: int = 2) -> None:
    """Every stage's products of the first ``iterations`` are byte-identical; the records are there once each."""
    from aloe.label.stage import iter_records

    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["stopped"] == f"finished {iterations} iterations"
    for it in [f"iter-{i:02d}" for i in range(iterations)]:
        for stage in PRODUCTS:
            want = product_bytes(expected / it / stage, stage)
            got = product_bytes(run / it / stage, stage)
            assert want, (it, stage)
            assert sorted(got) == sorted(want), (it, stage)
            for name in want:
                assert got[name] == want[name], f"{it}/{stage}/{name} differs"
        ids = [r["aloe_record_id"] for r in iter_records(run / it / "label")]
        assert ids and len(ids) == len(set(ids)), it
        assert ids == [r["aloe_record_id"] for r in iter_records(expected / it / "label")], it
        assert len(list((run / it / "train" / "models").glob("*.model"))) == 2


# ---- the run log ---------------------------------------------------------------------------------------------------
REPLACES = re.compile(r"slurm job (\d+) \([\w-]+\) replaces job (\d+)")


def job_events(log: str) -> dict[str, dict]:
    """The job lines of a run log: per job id its name, what it replaced, when it connected, left, was lost."""
    jobs: dict[str, dict] = {}
    for job_id, name, replacing in SUBMITTED.findall(log):
        jobs[job_id] = {
            "name": name,
            "replacing": replacing or None,
            "connected": None,
            "left": None,
            "lost": None,
        }
    for job_id, replaced in REPLACES.findall(
        log
    ):  # a job the cluster had submitted again under the same name
        jobs.setdefault(job_id, {})["replacing"] = replaced
    for clock, job_id, _name in CONNECTED.findall(log):
        jobs.setdefault(job_id, {})["connected"] = clock
    for clock, job_id, _name in LEFT.findall(log):
        jobs.setdefault(job_id, {})["left"] = clock  # the last time (a worker its nanny restarted came back)
    for clock, job_id, _name in LOST.findall(log):
        jobs.setdefault(job_id, {})["lost"] = clock
    return jobs


def seconds_between(start: str, end: str) -> int:
    """Seconds from one ``HH:MM:SS`` of the log to a later one (the same day, or just after midnight)."""

    def sec(clock: str) -> int:
        h, m, s = map(int, clock.split(":"))
        return h * 3600 + m * 60 + s

    return (sec(end) - sec(start)) % 86400


def replacements(jobs: dict[str, dict]) -> list[tuple[str, str, int | None]]:
    """``(lost job, new job, seconds from its workers leaving to the new job's connecting)`` for each lost job."""
    out = []
    for job_id, info in jobs.items():
        if info.get("replacing"):
            left = jobs[info["replacing"]]["left"]
            delay = seconds_between(left, info["connected"]) if info["connected"] and left else None
            out.append((info["replacing"], job_id, delay))
    return out


def assert_jobs_gone(ids: set[str]) -> None:
    """None of the jobs ``ids`` is still queued or running (aloe cancelled them when it closed the cluster)."""
    wait_for(
        lambda: not [j for j in slurm_jobs(JOB_NAME) if j.id in ids and j.state in ("PENDING", "RUNNING")],
        60,
        what=f"jobs {sorted(ids)} to end",
    )


def two_running_jobs() -> list | None:
    """The running aloe-worker jobs in ``squeue`` once there are two."""
    jobs = [j for j in slurm_jobs(JOB_NAME) if j.state == "RUNNING"]
    return jobs if len(jobs) >= 2 else None


# ---- the tests -----------------------------------------------------------------------------------------------------
def test_loop_on_slurm_gives_the_process_pool_products(slurm_cluster, pool_run, protos, tmp_path):  # noqa: F811
    executor = slurm_executor(tmp_path, slurm_cluster.partition)
    proc = start_run(write_config(tmp_path, protos, executor), tmp_path)
    run = tmp_path / "run"
    try:
        running = wait_for(two_running_jobs, 120, what="two running aloe-worker jobs in squeue")
        # the run log names both jobs as they connect
        wait_for(
            lambda: all(
                (job_events((run / "aloe.log").read_text()).get(j.id) or {}).get("connected") for j in running
            ),
            120,
            what="both jobs' workers connected (run log)",
        )
    finally:
        finish(proc, run)
    log = (run / "aloe.log").read_text()
    assert re.search(
        r"Dask distributed: 2 slurm partition \w+ jobs.*; scheduler tcp://[\d.]+:\d+, dashboard", log
    )
    jobs = job_events(log)
    assert {j.id for j in running} <= set(jobs)
    assert len(jobs) == 2 and not replacements(jobs)
    assert "slurm jobs: 2 submitted" in log
    assert_same_products(run, pool_run)
    assert_jobs_gone(set(jobs))
    assert "Dask distributed" in yaml.safe_load((run / "summary.yaml").read_text())["executor"]


def test_a_job_cancelled_in_the_middle_of_a_screen_costs_nothing(slurm_cluster, pool_run, protos, tmp_path):  # noqa: F811
    marker = tmp_path / "stalled-job"
    executor = slurm_executor(
        tmp_path, slurm_cluster.partition, prologue=(f"export {STALL_MARKER_ENV}={marker}",)
    )
    proc = start_run(write_config(tmp_path, protos, executor), tmp_path)
    run = tmp_path / "run"
    try:
        # a worker is inside the first screen, in a committee calculation: cancel its job
        job_id = wait_for(
            lambda: marker.exists() and marker.read_text().strip(), 180, what="a stalled screen task"
        )
        assert (run / "iter-00" / "screen").is_dir() and not (run / "iter-01").exists()
        subprocess.run(["scancel", job_id], check=True, timeout=30)
        cancelled = time.monotonic()
    finally:
        finish(proc, run)
    elapsed = time.monotonic() - cancelled
    log = (run / "aloe.log").read_text()
    jobs = job_events(log)
    assert jobs[job_id]["lost"], log[-3000:]
    replaced = replacements(jobs)
    assert [lost for lost, _new, _delay in replaced] == [job_id]
    new_job, delay = replaced[0][1], replaced[0][2]
    assert delay is not None, f"job {new_job} did not connect in the {elapsed:.0f} s the run went on"
    print(
        f"scancel {job_id}: job {new_job} replaced it, its worker connected {delay} s after the old one left"
    )
    assert any(j.id == job_id and j.state == "CANCELLED" for j in slurm_jobs(JOB_NAME, finished=True))
    assert_same_products(run, pool_run)
    assert_jobs_gone(set(jobs))


def test_a_job_that_reaches_its_walltime_is_replaced(slurm_cluster, pool_run, protos, tmp_path):  # noqa: F811
    # One minute per job: a worker stalls in a screen task until Slurm ends its job at the time limit (60 to 95 s
    # after it started, here), and the other job reaches it too. One iteration: its products are the pool run's first.
    marker = tmp_path / "stalled-job"
    export = f"export {STALL_MARKER_ENV}={marker}"
    executor = slurm_executor(tmp_path, slurm_cluster.partition, walltime="00:01:00", prologue=(export,))
    t0 = time.monotonic()
    run = run_loop(tmp_path, protos, executor, iterations=1)
    seconds = time.monotonic() - t0
    stalled = marker.read_text().strip()
    states = {j.id: j.state for j in slurm_jobs(JOB_NAME, finished=True)}
    assert states.get(stalled) == "TIMEOUT", states
    jobs = job_events((run / "aloe.log").read_text())
    replaced = replacements(jobs)
    # every lost job (the stalled one among them) has its replacement
    assert stalled in [lost for lost, _new, _delay in replaced], replaced
    assert sorted(lost for lost, _new, _delay in replaced) == sorted(i for i in jobs if jobs[i].get("lost"))
    # new jobs took over (one submitted as the run ends may not get to connect)
    assert any(delay is not None for *_, delay in replaced), replaced
    print(
        f"walltime run: {seconds:.0f} s, {len(jobs)} jobs, job {stalled} stalled until its time limit; "
        f"replaced (lost, new, s from leaving to connecting): {replaced}; states: {[states.get(i) for i in jobs]}"
    )
    assert_same_products(run, pool_run, iterations=1)
    assert_jobs_gone(set(jobs))


def test_a_job_script_that_fails_stops_the_run_with_a_clear_error(slurm_cluster, tmp_path):  # noqa: F811
    """A prologue that exits: every job ends before its worker starts; after three such jobs the map raises."""
    from aloe.errors import AloeError

    section = slurm_executor(tmp_path, slurm_cluster.partition, prologue=("exit 3",))
    section["cluster"]["start_notice"] = 3
    cluster = ClusterSettings.model_validate(section["cluster"])
    t0 = time.monotonic()
    outcome: list[BaseException] = []
    with open_executor(ExecutorSettings(kind="dask", cluster=cluster)) as executor:

        def stage() -> None:
            try:
                list(executor.map_unordered(abs, [-1, -2, -3]))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=stage, daemon=True)
        thread.start()
        thread.join(
            180
        )  # the jobs need free cores to start (and fail): none of this module's fixtures hold them
        assert not thread.is_alive(), "the stage still waits for workers after 180 s"
        ids = list(executor.watcher.seen)
    print(f"stopped after {time.monotonic() - t0:.0f} s; jobs {ids}")
    assert len(outcome) == 1 and isinstance(outcome[0], AloeError), outcome
    assert re.search(r"3 slurm jobs in a row \(.*\) ended before any worker connected", str(outcome[0]))
    assert len(ids) >= 3
    assert_jobs_gone(set(ids))


def test_a_killed_clients_jobs_end_by_themselves_and_the_rerun_finishes(
    slurm_cluster,  # noqa: F811
    pool_run,
    protos,
    tmp_path,
):
    """SIGKILL the client once its workers work: nothing cancels its jobs, their workers' death timeout ends them.

    dask-jobqueue starts workers with ``--death-timeout 60``: a worker that cannot reach its scheduler for 60 s
    exits, and its job ends with it. The same command run again resumes the run and gives the pool's products.
    """
    config = write_config(tmp_path, protos, slurm_executor(tmp_path, slurm_cluster.partition))
    proc = start_run(config, tmp_path)
    try:
        jobs = wait_for(two_running_jobs, 120, what="two running jobs")
        run = tmp_path / "run"
        wait_for(
            lambda: any(run.glob("iter-00/screen/metrics/*.parquet")),
            300,
            interval=0.5,
            what="a screen chunk",
        )
    finally:
        proc.kill()
        proc.communicate()
    ids = {j.id for j in jobs}
    t_kill = time.monotonic()
    wait_for(
        lambda: not [j for j in slurm_jobs(JOB_NAME) if j.id in ids and j.state in ("PENDING", "RUNNING")],
        180,
        what=f"the killed client's jobs {sorted(ids)} to end by themselves",
    )
    print(f"jobs of the killed client ended {time.monotonic() - t_kill:.0f} s after the kill")
    finish(start_run(config, tmp_path), run)
    assert_same_products(run, pool_run)


# ---- training members as Slurm jobs of their own (train.launcher slurm) -------------------------------------------
def test_a_member_trained_in_a_slurm_job_of_its_own_equals_one_trained_locally(
    slurm_cluster,  # noqa: F811
    labelled,  # noqa: F811
    tmp_path,
):
    """``launcher: slurm`` on CPUs: srun runs mace's run_train as its own job; the model is the local one's."""
    import numpy as np

    from aloe.train.stage import job_name, load_predictions, train
    from tests.train.test_train import _settings

    runs = {}
    for launcher in ("local", "slurm"):
        extra = {"srun_options": [f"--partition={slurm_cluster.partition}"]} if launcher == "slurm" else {}
        settings = _settings(
            [labelled], tmp_path / launcher, committee_size=1, epochs=2, launcher=launcher, **extra
        )
        runs[launcher] = train(settings)
    folder = runs["slurm"].run_dir / "members" / "member-0"
    name = job_name(runs["slurm"].run_dir, 0)
    jobs = slurm_jobs(name, finished=True)
    assert [job.state for job in jobs] == ["COMPLETED"], jobs
    assert f"# aloe: srun --job-name={name} --nodes=1 --ntasks=1" in (folder / "train.log").read_text()
    local = load_predictions(runs["local"].run_dir / "members" / "member-0" / "test_predictions.npz")
    remote = load_predictions(folder / "test_predictions.npz")
    for key in ("e_pred", "f_pred", "s_pred"):
        assert np.allclose(local[key], remote[key], rtol=1e-9, atol=1e-12), key


@pytest.fixture(scope="module")
def slurm_scheduler(slurm_cluster, tmp_path_factory):  # noqa: F811
    """A Dask scheduler in this process whose two workers are Slurm jobs (as a user would keep one open)."""
    folder = tmp_path_factory.mktemp("scheduler")
    cluster = ClusterSettings.model_validate(slurm_executor(folder, slurm_cluster.partition)["cluster"])
    lines: list[str] = []
    with open_executor(ExecutorSettings(kind="dask", cluster=cluster), announce=lines.append) as executor:
        executor.client.wait_for_workers(2, timeout=120)
        address = executor.scheduler_address
        assert address and address in lines[0]
        jobs = set(wait_for(lambda: len(executor.watcher.seen) == 2 and executor.watcher.seen, 30))
        yield address
    assert_jobs_gone(jobs)


def aloe(*args: str, cwd: Path) -> None:
    """Run ``aloe ARGS`` in a child process; fail with its error output when it fails."""
    env = {**os.environ, "ALOE_CACHE_DIR": str(cwd / "cache"), "ALOE_PROGRESS": "0"}
    command = [sys.executable, "-m", "aloe.cli.main", *args]
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_bench_reference_on_a_scheduler_with_slurm_workers(slurm_scheduler, tmp_path):
    from aloe.bench.structures import ATOM_ENERGIES_FILE, CRYSTALS_FILE, SUPERCELLS_FILE

    # absolute run folders: the workers run where their jobs started, not in this folder
    common = ("bench", "reference", "--labeler", "emt", "--elements", "Cu,Al,Ni", "--set", "fmax=0.02")
    aloe(*common, "-o", str(tmp_path / "pool"), "--executor", "process", "--workers", "2", cwd=tmp_path)
    aloe(
        *common,
        "-o",
        str(tmp_path / "slurm"),
        "--executor",
        "dask",
        "--scheduler",
        slurm_scheduler,
        cwd=tmp_path,
    )
    for name in (CRYSTALS_FILE, SUPERCELLS_FILE, ATOM_ENERGIES_FILE):
        assert (tmp_path / "slurm" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes(), name
    summary = yaml.safe_load((tmp_path / "slurm" / "summary.yaml").read_text())
    assert slurm_scheduler in summary["executor"] and summary["counts"]["computed"] == 9
    # the workers' checkpoints are in the run folder
    assert len(list((tmp_path / "slurm" / "chunks").glob("*.json"))) == 9


#: A tiny EMT study (two arms, one iteration; tests/study's TINY made smaller): about two minutes on two workers.
STUDY = {
    "elements": ["Cu", "Ni"],
    "arms": ["al", "random"],
    "seed_structures": 6,
    "iterations": 1,
    "per_iteration": 3,
    "seed": 0,
    "generate": {"prototypes": {"source": "builtin", "arity": [2], "max_sites": 3}, "sample": 12},
    "screen": {"thresholds": {"energy": 0.001, "force": 0.001, "stress": 0.001}},
    "select": {"encoder": "matminer"},
    "label": {"labeler": "emt", "isolate": False},
    "train": {"preset": "tiny", "committee_size": 2, "epochs": 2},
    "reference": {"binaries": ["B2"], "ternaries": [], "supercells_per_crystal": 1},
    "bench": {
        "equilibrium": {"max_steps": 30, "compute_fingerprint": False},
        "ev": {"n_points": 9},
        "md": {"duration_ps": 0.02, "ensembles": ["nvt"]},
        "mixtures": {"n_structures": 2, "n_atoms": 8, "n_elements": 2},
    },
}


def test_a_tiny_study_on_a_scheduler_with_slurm_workers(slurm_scheduler, tmp_path):
    # Not compared with a pool run here (that doubles the time; checked by hand on 2026-12-07: the 240 rows of
    # study_metrics.parquet, timings aside, were equal).
    import pyarrow.parquet as pq

    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    run = tmp_path / "study"
    on_slurm = ("--executor", "dask", "--scheduler", slurm_scheduler)
    aloe("study", "study.yaml", "-o", str(run), *on_slurm, cwd=tmp_path)
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["settings"]["scheduler"] == slurm_scheduler
    assert f"the scheduler at {slurm_scheduler}" in (run / "aloe.log").read_text()
    budget = summary["counts"]["budget"]
    assert budget["al"]["structures"] == budget["random"]["structures"] > 6
    rows = pq.read_table(run / "study_metrics.parquet").to_pylist()
    assert {r["arm"] for r in rows} == {"al", "random"}
    assert {r["benchmark"] for r in rows} == {"equilibrium", "forces", "ev", "md"}
    assert {r["committee"] for r in rows if r["arm"] == "al"} == {0, 1}
    assert "## Verdict" in (run / "study.md").read_text()


# ---- the watcher's rules, on a stand-in cluster (no Slurm needed) --------------------------------------------------
class FakeJob:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


class FakeCluster:
    """What :class:`aloe.executors.JobWatcher` reads and calls of a dask-jobqueue cluster."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self.workers: dict[str, FakeJob] = {}
        self.worker_spec: dict[str, dict] = {}
        self.scheduler_info: dict = {"workers": {}}
        self.next_id = 100
        self.next_name = 0

    def submit(self) -> str:
        name = f"aloe-{self.next_name}"
        self.next_name += 1
        self.next_id += 1
        self.workers[name] = FakeJob(str(self.next_id))
        self.worker_spec[name] = {}
        return name

    def connect(self, name: str) -> None:
        names = [name] if self.processes == 1 else [f"{name}-{i}" for i in range(self.processes)]
        for worker in names:
            self.scheduler_info["workers"][f"tcp://{worker}"] = {"name": worker}

    def leave(self, name: str) -> None:
        for address, info in list(self.scheduler_info["workers"].items()):
            if info["name"] == name or info["name"].startswith(f"{name}-"):
                del self.scheduler_info["workers"][address]

    async def scale_down(self, names: list[str]) -> None:
        for name in names:
            self.worker_spec.pop(name, None)
            self.workers.pop(name, None)

    def scale(self, jobs: int) -> None:
        while len(self.worker_spec) < jobs:
            self.submit()


@pytest.mark.parametrize("processes", [1, 2])
def test_the_watcher_replaces_a_job_whose_workers_left_and_only_that(processes, caplog):
    import asyncio
    import logging

    from aloe.executors import JobWatcher

    cluster = FakeCluster(processes)
    said: list[str] = []
    settings = ClusterSettings(kind="slurm", jobs=2, cores=2, processes=processes)
    queue = {"102": "PENDING (Priority)"}
    watcher = JobWatcher(
        cluster, settings, say=said.append, grace=15, lookup=lambda kind, job: queue.get(job, "")
    )

    def check(now: float) -> None:
        asyncio.run(watcher.check(now))

    caplog.set_level(logging.INFO, logger="aloe.executors")
    a, b = cluster.submit(), cluster.submit()
    check(0)
    assert set(watcher.seen) == {"101", "102"}
    cluster.connect(a)
    check(2)
    assert watcher.seen["101"].connected == 2 and watcher.seen["102"].connected is None
    # b never connects (queued for hours): never lost; the log says what the queue says of it, every 300 s
    check(1000)
    assert not watcher.lost
    assert (
        "slurm job 102 (aloe-1): no worker 1000 s after it was submitted; the queue says PENDING (Priority)"
        in (caplog.text)
    )
    # a's worker restarts (its nanny): back within the grace period, not lost
    cluster.leave(a)
    check(1002)
    cluster.connect(a)
    check(1010)
    assert not watcher.lost and "(aloe-0): its workers are back after 8 s" in caplog.text
    # a's job ends: its workers stay away for the grace period -> replaced by a new job
    cluster.leave(a)
    check(1012)
    check(1020)
    assert not watcher.lost
    check(1027)
    assert watcher.lost == ["101"] and len(said) == 1 and "slurm job 101 (aloe-0) lost" in said[0]
    assert a not in cluster.worker_spec and len(cluster.worker_spec) == 2
    check(1029)
    assert "103" in watcher.seen
    assert "slurm job 103 submitted (aloe-2, replacing job 101)" in caplog.text
    assert f"slurm job 101 ({a}): {processes} worker" in caplog.text
    # a job the cluster dropped itself (dask's own lost-worker timeout) is replaced at once
    cluster.connect(b)
    check(1030)
    cluster.leave(b)
    cluster.workers.pop(b)
    check(1032)
    assert watcher.lost == ["101", "102"]
    check(1034)
    watcher.stop()
    assert "slurm jobs: 4 submitted (101, 102, 103, 104), 2 lost and replaced (101, 102)" in caplog.text


def test_the_watcher_stops_the_run_after_three_jobs_in_a_row_ended_without_a_worker(caplog):
    import asyncio
    import logging

    from aloe.executors import MAX_FAILED_STARTS, JobWatcher

    cluster = FakeCluster()
    said: list[str] = []
    failed: list[bool] = []
    watcher = JobWatcher(
        cluster,
        ClusterSettings(kind="slurm", jobs=1),
        say=said.append,
        grace=15,
        notice=60,
        on_failure=lambda: failed.append(True),
        lookup=lambda kind, job: "",  # every job has left the queue (its prologue fails)
    )
    caplog.set_level(logging.INFO, logger="aloe.executors")
    cluster.submit()
    for attempt in range(MAX_FAILED_STARTS):
        asyncio.run(watcher.check(100 * attempt))
        assert watcher.failure is None and not failed
        asyncio.run(watcher.check(100 * attempt + 60))
    assert watcher.failed_starts == ["101", "102", "103"]
    assert "slurm job 101 (aloe-0) ended before any worker connected (1 of 3" in said[0]
    assert (
        watcher.failure is not None
        and "3 slurm jobs in a row (101, 102, 103) ended before any worker" in said[-1]
    )
    assert failed == [True] and not cluster.worker_spec  # no job submitted again
    asyncio.run(watcher.check(1000))
    assert len(said) == 3 and "104" not in watcher.seen
    # a worker that connects resets the count: a node that failed once is not a broken script
    cluster2 = FakeCluster()
    w2 = JobWatcher(
        cluster2, ClusterSettings(kind="slurm", jobs=1), grace=15, notice=60, lookup=lambda k, j: ""
    )
    cluster2.submit()
    asyncio.run(w2.check(0))
    asyncio.run(w2.check(60))  # 101 gone -> 102
    asyncio.run(w2.check(61))
    cluster2.connect(next(iter(cluster2.workers)))
    asyncio.run(w2.check(62))
    assert w2.failed_starts == [] and w2.failure is None


def test_the_watcher_names_the_job_the_cluster_submitted_again_itself(caplog):
    import asyncio
    import logging

    from aloe.executors import JobWatcher

    cluster = FakeCluster()
    watcher = JobWatcher(cluster, ClusterSettings(kind="slurm", jobs=1), grace=15)
    caplog.set_level(logging.INFO, logger="aloe.executors")
    a = cluster.submit()
    cluster.connect(a)
    asyncio.run(watcher.check(0))
    cluster.leave(a)
    asyncio.run(watcher.check(2))
    # dask's own lost-worker timeout dropped the job, and the cluster submitted one under the same name; its worker
    # connects before the watcher looks again: the worker is the new job's, the old job is lost
    cluster.workers[a] = FakeJob("200")
    cluster.connect(a)
    asyncio.run(watcher.check(4))
    assert watcher.lost == ["101"] and watcher.seen["200"].connected == 4
    assert "slurm job 200 (aloe-0) replaces job 101" in caplog.text
    assert len(cluster.worker_spec) == 1  # nothing more submitted
