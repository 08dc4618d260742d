"""Isolated calculations: a fresh child process per structure, in any process (a daemonic Dask worker included)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

import aloe.label.stage as stage
from aloe.label.base import LabelerError
from aloe.label.emt import EMTLabeler
from aloe.label.isolation import RESULT_FILE, TASK_FILE, call_isolated, child_environment
from aloe.label.settings import LabelSettings
from aloe.label.stage import label, run_calculation
from tests.label import helpers
from tests.label import isolation_helpers as ih

ROOT = Path(__file__).resolve().parents[2]


def cu():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def al():
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.05, seed=2)
    return atoms


def failure(labeler, atoms, workdir, timeout=60.0) -> LabelerError:
    with pytest.raises(LabelerError) as err:
        run_calculation(labeler, atoms, workdir, timeout, True)
    return err.value


def gone(pid: int, within: float = 5.0) -> bool:
    """The process ``pid`` ended (a zombie that nobody reaped counts as ended)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# ---- in this process ----------------------------------------------------------------------------------------------
def test_isolated_result_equals_the_in_process_one_and_leaves_no_files(tmp_path):
    lab = EMTLabeler()
    inside = run_calculation(lab, cu(), tmp_path / "in", None, False)
    isolated = run_calculation(lab, cu(), tmp_path / "iso", 60.0, True)
    assert len(isolated) == 1
    assert isolated[0].energy == inside[0].energy
    np.testing.assert_array_equal(isolated[0].forces, inside[0].forces)
    np.testing.assert_array_equal(isolated[0].stress, inside[0].stress)
    assert isolated[0].atoms == inside[0].atoms
    assert not {TASK_FILE, RESULT_FILE} & {p.name for p in (tmp_path / "iso").iterdir()}


@pytest.mark.parametrize(
    ("labeler", "message"),
    [
        (helpers.CrashingEMT(), "the calculation process died (exit code 3)"),
        (ih.SignalEMT(sig=signal.SIGSEGV), "the calculation process died (exit code -11: killed by SIGSEGV)"),
        (ih.SignalEMT(sig=signal.SIGKILL), "the calculation process died (exit code -9: killed by SIGKILL)"),
    ],
    ids=["os._exit", "segfault", "sigkill"],
)
def test_a_dying_child_is_crashed_with_its_exit_status(tmp_path, labeler, message):
    err = failure(labeler, al(), tmp_path / "w")
    assert (err.kind, err.message) == ("crashed", message)
    assert run_calculation(labeler, cu(), tmp_path / "next", 60.0, True)  # the next structure is fine


def test_a_python_exception_is_crashed_and_a_labeler_error_keeps_its_class(tmp_path):
    err = failure(ih.RaisingEMT(), al(), tmp_path / "raise")
    assert (err.kind, err.message) == ("crashed", "ValueError: no parameters here")
    err = failure(helpers.FlakyEMT(), cu(), tmp_path / "flaky")
    assert (err.kind, err.message) == ("scf_unconverged", "SCF did not converge in 2 steps (on purpose)")


def test_timeout_kills_the_child_and_its_helpers(tmp_path):
    t0 = time.perf_counter()
    err = failure(ih.HelperEMT(), cu(), tmp_path / "w", timeout=1.5)
    assert (err.kind, err.message) == ("timeout", "stopped after 1.5 s")
    assert time.perf_counter() - t0 < 10
    helper = int((tmp_path / "w" / "helper.pid").read_text())
    assert gone(helper)  # the process group went with the child
    assert failure(helpers.SleepyEMT(), cu(), tmp_path / "sleepy", timeout=1).message == "stopped after 1 s"


def test_helpers_left_behind_by_a_finished_calculation_are_stopped(tmp_path):
    assert run_calculation(ih.HelperEMT(hang=False), cu(), tmp_path, 60.0, True)
    assert gone(int((tmp_path / "helper.pid").read_text()))


def test_child_writes_to_our_fds_and_sees_our_path_and_environment(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    calc = run_calculation(ih.TalkingEMT(), cu(), tmp_path / "w", 60.0, True)[0]
    out, err = capfd.readouterr()
    assert "hello from the calculation (stdout)" in out
    assert "hello from the calculation (stderr)" in err
    assert calc.info["pid"] != os.getpid() and calc.info["pgid"] == calc.info["pid"]  # its own session
    assert calc.info["omp"] == "3"
    # where `tests` comes from: not installed, found through our sys.path
    assert str(ROOT) in calc.info["sys_path"]


def test_child_environment_adds_only_paths_the_interpreter_lacks(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    entries = child_environment()["PYTHONPATH"].split(os.pathsep)
    assert entries[0] == str(tmp_path.resolve()) and entries[-1] == "/somewhere/else"
    assert not any("site-packages" in e or "lib-dynload" in e for e in entries)


def test_blas_thread_limits_hold_in_the_child(tmp_path, monkeypatch):
    # As test_gpaw_threads, in an isolated child: OpenBLAS would start 4 threads per library by default.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = call_isolated(ih.blas_threads_probe, (), tmp_path, 120.0)
    assert not result["scipy_before"]
    assert result["threads"] and set(result["threads"].values()) == {1}, result


def test_passthrough_exceptions_come_back_as_they_are(tmp_path):
    with pytest.raises(NotImplementedError, match="emt does not do this"):
        call_isolated(ih.not_implemented, (), tmp_path, 60.0, passthrough=(NotImplementedError,))
    with pytest.raises(LabelerError, match="NotImplementedError: emt does not do this"):
        call_isolated(ih.not_implemented, (), tmp_path, 60.0)


def test_a_child_whose_parent_dies_stops(tmp_path):
    record = tmp_path / "child.json"
    parent_code = textwrap.dedent(
        f"""
        from aloe.label.isolation import call_isolated
        from tests.label.isolation_helpers import sleep_and_record
        call_isolated(sleep_and_record, ({str(record)!r}, 120.0), {str(tmp_path / "w")!r}, None)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=child_environment(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = json.loads(record.read_text())["pid"]
    finally:
        parent.kill()
        parent.wait()
    assert gone(pid, within=5.0)


# ---- in a Dask worker (a daemonic process) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    import dask

    # Daemonic workers, Dask's default (and what `dask worker` starts), whatever another test set for its clusters
    # (aloe's own LocalCluster asks for non-daemonic ones): this is the case multiprocessing refuses.
    with dask.config.set({"distributed.worker.daemon": True}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = distributed.Client(cluster)
        try:
            yield cluster, client
        finally:
            client.close()
            cluster.close()


def test_isolation_in_a_daemonic_dask_worker_costs_one_structure(dask_cluster, tmp_path):
    _, client = dask_cluster
    worker = sorted(client.scheduler_info()["workers"])[0]
    # the reason for the mechanism: the old multiprocessing child cannot start there
    refused = client.submit(ih.worker_forkserver_child, workers=[worker], pure=False).result()
    assert "daemonic processes are not allowed to have children" in refused
    cases = [
        ("ok", EMTLabeler(), cu(), None),
        ("exit", helpers.CrashingEMT(), al(), None),
        ("segfault", ih.SignalEMT(sig=signal.SIGSEGV), al(), None),
        ("timeout", helpers.SleepyEMT(), cu(), 1.0),
        ("exception", ih.RaisingEMT(), al(), None),
        ("ok-after", EMTLabeler(), cu(), None),
    ]
    results = {}
    for name, labeler, atoms, timeout in cases:  # one after another, on the same worker
        future = client.submit(
            ih.worker_calculate,
            labeler,
            atoms,
            str(tmp_path / name),
            timeout,
            workers=[worker],
            allow_other_workers=False,
            pure=False,
        )
        results[name] = future.result(timeout=60)
    assert {r["worker_pid"] for r in results.values()} == {results["ok"]["worker_pid"]}  # the worker survived
    assert all(r["daemon"] for r in results.values())
    assert {n: r["kind"] for n, r in results.items()} == {
        "ok": "ok",
        "exit": "crashed",
        "segfault": "crashed",
        "timeout": "timeout",
        "exception": "crashed",
        "ok-after": "ok",
    }
    assert results["exit"]["message"] == "the calculation process died (exit code 3)"
    assert results["segfault"]["message"].endswith("(exit code -11: killed by SIGSEGV)")
    assert results["timeout"]["message"] == "stopped after 1 s"
    assert results["exception"]["message"] == "ValueError: no parameters here"
    assert results["ok-after"]["energy"] == results["ok"]["energy"]


def test_label_stage_on_dask_writes_the_same_records_as_local(dask_cluster, tmp_path, monkeypatch):
    cluster, client = dask_cluster
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    # the dataset plots of a finished run are not what this test is about (matplotlib takes seconds)
    monkeypatch.setattr("aloe.data.stats.dataset_stats", lambda *a, **k: {"files": {}}, raising=False)
    frames = []
    for i, (symbol, a) in enumerate([("Cu", 3.6), ("Al", 4.05), ("Ag", 4.1)]):
        atoms = bulk(symbol, "fcc", a=a, cubic=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    path = tmp_path / "in.extxyz"
    write(path, frames)
    assert len(read(path, ":")) == 3

    def settings(out, **kw):
        data = {"input": str(path), "labeler": "emt", "output": str(out), "chunk_size": 2, "isolate": True}
        # isolated_atoms 'none': CrashingEMT would crash Al's isolated atom too (isolated atoms on Dask are covered
        # by tests/test_dask_end_to_end.py)
        data["isolated_atoms"] = "none"
        return LabelSettings.model_validate({**data, **kw})

    # Al crashes its calculation process (os._exit) in this process and in the workers
    real_load = stage.load_labeler
    monkeypatch.setattr(
        stage, "load_labeler", lambda s: helpers.CrashingEMT(s.emt) if s.labeler == "emt" else real_load(s)
    )
    local = label(settings(tmp_path / "local", executor="local"))
    client.run(ih.use_labeler_in_this_process, "CrashingEMT")
    try:
        dask = label(
            settings(tmp_path / "dask", executor="dask", workers=2, scheduler=cluster.scheduler_address)
        )
    finally:
        client.run(ih.use_labeler_in_this_process, None)
    for result in (local, dask):
        c = result.counts
        assert (c["labelled"], c["failed"], c["failed_by_class"]) == (2, 1, {"crashed": 1})
    for folder in ("records", "failures"):
        names = sorted(p.name for p in (local.run_dir / folder).iterdir())
        assert names and names == sorted(p.name for p in (dask.run_dir / folder).iterdir())
    for name in names:
        records = [(r.run_dir / "records" / name).read_bytes() for r in (local, dask)]
        assert records[0] == records[1]
        failures = [failure_docs(r.run_dir / "failures" / name) for r in (local, dask)]
        assert failures[0] == failures[1]
    (failure,) = [doc for name in names for doc in failure_docs(dask.run_dir / "failures" / name)]
    assert (failure["kind"], failure["message"]) == ("crashed", "the calculation process died (exit code 3)")


def failure_docs(path: Path) -> list[dict]:
    """The failures of a chunk file, without the attempts (they carry their seconds)."""
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in doc.items() if k != "attempts"} for doc in docs]
