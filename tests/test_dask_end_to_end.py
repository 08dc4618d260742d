"""Every stage on a real Dask ``LocalCluster`` (two worker processes on loopback) equals the serial run, byte for byte.

Also: a worker process killed in the middle of a chunk costs nothing (its chunk runs again elsewhere and the output
is the same), and a two-iteration loop on Dask gives the dataset of the serial loop.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("distributed")

from aloe.executors import InlineExecutor, open_executor
from aloe.generate.settings import GenerateSettings
from aloe.generate.stage import generate
from aloe.label.settings import LabelSettings
from aloe.label.stage import label
from aloe.screen.settings import ScreenSettings
from aloe.screen.stage import screen
from aloe.select.settings import SelectSettings
from aloe.select.stage import select
from tests.loop.test_loop import LJ_COMMITTEE

#: The stages' products (what the next stage reads) and their per-chunk outputs: these must be identical.
PRODUCTS = {
    "generate": ["chunks/*.parquet", "occupations.json", "plan.npz"],
    "screen": ["metrics/*.parquet", "selected/*.parquet", "selection_by_*.csv"],
    "select": ["selected/*.parquet", "points.parquet", "clusters.csv"],
    "label": ["records/*", "failures/*", "isolated_atoms.yaml"],
}


def start_cluster(env: dict[str, str] | None = None):
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        env=env or {},
    )
    return cluster, Client(cluster)


@pytest.fixture(scope="module")
def dask_client():
    cluster, client = start_cluster()
    yield client
    client.close()
    cluster.close()


def product_bytes(run: Path, stage: str) -> dict[str, bytes]:
    files = {}
    for pattern in PRODUCTS[stage]:
        for path in sorted(run.glob(pattern)):
            if path.is_file():
                files[str(path.relative_to(run))] = path.read_bytes()
    return files


def run_stages(root: Path, proto_dir: Path, executor) -> dict[str, Path]:
    """generate -> screen -> select -> label (EMT, each structure in a child process) on ``executor``."""
    runs = {stage: root / stage for stage in PRODUCTS}
    generate(
        GenerateSettings.model_validate(
            {
                "prototypes": {"source": str(proto_dir), "arity": [2]},
                "elements": ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"],
                "sample": 48,
                "chunk_size": 8,
                "seed": 3,
                "subsampling": {"enabled": False},
                "output": str(runs["generate"]),
            }
        ),
        executor=executor,
    )
    screen(
        ScreenSettings.model_validate(
            {
                "input": str(runs["generate"]),
                "committee": LJ_COMMITTEE,
                "energy_basis": "total",
                "compute_references": False,
                "thresholds": {"energy": 1e-4, "force": 1e-4, "stress": 1e-4},
                "batch_size": 5,
                "output": str(runs["screen"]),
            }
        ),
        executor=executor,
    )
    select(
        SelectSettings.model_validate(
            {
                "input": str(runs["screen"]),
                "encoder": "matminer",
                "direct": {"k": 2, "birch_threshold": 0.3},
                "output": str(runs["select"]),
            }
        ),
        executor=executor,
    )
    label(
        LabelSettings.model_validate(
            {"input": str(runs["select"]), "labeler": "emt", "chunk_size": 3, "output": str(runs["label"])}
        ),
        executor=executor,
    )
    return runs


def test_stages_on_dask_equal_the_serial_run_byte_for_byte(tmp_path, proto_dir, dask_client):
    serial = run_stages(tmp_path / "serial", proto_dir, InlineExecutor())
    dask = run_stages(tmp_path / "dask", proto_dir, open_executor(client=dask_client))
    for stage in PRODUCTS:
        expected = product_bytes(serial[stage], stage)
        got = product_bytes(dask[stage], stage)
        assert expected, stage
        assert sorted(got) == sorted(expected), stage
        for name in expected:
            assert got[name] == expected[name], f"{stage}/{name} differs"
    # the work really ran on the cluster's workers, in several chunks
    assert len(list((serial["generate"] / "chunks").glob("*.parquet"))) == 6
    assert len(list((serial["label"] / "records").glob("*"))) >= 1
    # features are the same numbers (the npz container is not compared byte for byte)
    for path in sorted((serial["select"] / "features").glob("*.npz")):
        with np.load(path) as a, np.load(dask["select"] / "features" / path.name) as b:
            assert np.array_equal(a["features"], b["features"])


# ---- a worker killed in the middle of a chunk ----------------------------------------------------------------
KILL_MARKER_ENV = "ALOE_TEST_KILL_MARKER"


def dying_lj():
    """An LJ calculator whose first use in a process that finds no marker file kills that process (SIGKILL).

    Used as a committee member ``tests.test_dask_end_to_end:dying_lj``: with ``$ALOE_TEST_KILL_MARKER`` set (the
    cluster's workers only), the first chunk a worker screens kills it once; without it, a plain LJ calculator.
    """
    import signal

    from ase.calculators.lj import LennardJones

    class Dying(LennardJones):
        def calculate(self, *args, **kwargs):
            marker = os.environ.get(KILL_MARKER_ENV)
            if marker and not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().calculate(*args, **kwargs)

    return Dying(sigma=2.35, epsilon=0.05, rc=6.0)


def test_a_worker_killed_mid_chunk_changes_nothing(tmp_path, proto_dir):
    gen = tmp_path / "gen"
    generate(
        GenerateSettings.model_validate(
            {
                "prototypes": {"source": str(proto_dir), "arity": [2]},
                "elements": ["Al", "Cu", "Ag", "Au"],
                "chunk_size": 6,
                "subsampling": {"enabled": False},
                "output": str(gen),
            }
        )
    )

    def settings(out: Path) -> ScreenSettings:
        return ScreenSettings.model_validate(
            {
                "input": str(gen),
                "committee": [*LJ_COMMITTEE[:2], "tests.test_dask_end_to_end:dying_lj"],
                "energy_basis": "total",
                "compute_references": False,
                "output": str(out),
            }
        )

    serial = screen(settings(tmp_path / "serial"), executor=InlineExecutor())
    marker = tmp_path / "killed-once"
    cluster, client = start_cluster(env={KILL_MARKER_ENV: str(marker)})
    try:
        killed = screen(settings(tmp_path / "dask"), executor=open_executor(client=client))
    finally:
        client.close()
        cluster.close()
    assert marker.exists()  # a worker did die in the middle of a chunk
    assert killed.counts["structures"] == serial.counts["structures"] > 6
    assert product_bytes(killed.run_dir, "screen") == product_bytes(serial.run_dir, "screen")


# ---- the loop --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_iteration_loop_on_dask_gives_the_serial_dataset(tmp_path, proto_dir, dask_client, monkeypatch):
    from aloe.label.stage import iter_records
    from aloe.loop.loop import run_loop
    from aloe.loop.settings import RunConfig
    from tests.loop.test_loop import loop_config

    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))

    def config(out: Path, executor: dict) -> RunConfig:
        # test_loop's EMT + tiny MACE loop, each label in a child process
        data = loop_config(proto_dir, out, iterations=2, label={"isolate": True})
        return RunConfig.model_validate({**data, "executor": executor})

    serial = run_loop(config(tmp_path / "serial", {"kind": "local"}))
    dask = run_loop(config(tmp_path / "dask", {"kind": "dask"}), executor=open_executor(client=dask_client))
    assert serial.stopped == dask.stopped == "finished 2 iterations"

    def records(run: Path) -> list[dict]:
        out = []
        for folder in sorted(run.glob("iter-*/label")):
            out += list(iter_records(folder))
        return out

    a, b = records(serial.run_dir), records(dask.run_dir)
    assert [r["aloe_record_id"] for r in a] == [r["aloe_record_id"] for r in b] and a
    for x, y in zip(a, b, strict=True):
        assert x["energy"] == y["energy"] and x["forces"] == y["forces"] and x["stress"] == y["stress"]
    for stage in ("generate", "screen", "select", "label"):
        for it in ("iter-00", "iter-01"):
            assert product_bytes(dask.run_dir / it / stage, stage) == product_bytes(
                serial.run_dir / it / stage, stage
            ), (it, stage)
    summary = yaml.safe_load((dask.run_dir / "summary.yaml").read_text())
    assert "Dask" in summary["executor"]
