"""Training data that stream: lazy records, mace-torch HDF5 shards, resumable preparation, shards == extxyz.

The labelled data are the train tests' 48 EMT-labelled Cu/Al/Ag cells (the ``labelled`` fixture of
``test_train.py``, made by aloe's label stage). Shards are read back with mace-torch's own ``HDF5Dataset`` and
compared with what mace-torch's own ``load_from_xyz`` makes of the same member's extxyz files.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aloe.errors import AloeError
from aloe.train.data import gather
from aloe.train.settings import TrainSettings
from tests.train.test_train import _settings, labelled  # noqa: F401  (the module-scoped fixture)

R_MAX = 5.0


@pytest.fixture(autouse=True)
def _float64():
    """mace trains in float64 (aloe's default_dtype), and AtomicData takes torch's default dtype."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _prepare(inputs, out, **kw):
    from aloe.train.stage import prepare_run

    return prepare_run(_settings(inputs, out, **kw))


def _atomic_data(configs, zs):
    from mace.data import AtomicData
    from mace.tools.utils import AtomicNumberTable

    table = AtomicNumberTable(zs)
    return [AtomicData.from_config(c, z_table=table, cutoff=R_MAX, heads=["Default"]) for c in configs]


def _xyz_part(path: Path):
    """What mace-torch's run_train reads from an extxyz part (its own load_from_xyz, its own key options)."""
    from mace.data.utils import KeySpecification, load_from_xyz, update_keyspec_from_kwargs

    from aloe.train.mace_args import validate_argv
    from aloe.train.stage import KEY_OPTIONS

    ns = validate_argv(["--name=m", *(f"--{k}={v}" for k, v in KEY_OPTIONS.items())])
    keyspec = KeySpecification()
    update_keyspec_from_kwargs(keyspec, vars(ns))
    _, configs = load_from_xyz(str(path), keyspec, head_name="Default", extract_atomic_energies=True)
    return configs


_FIELDS = (
    "positions",
    "cell",
    "node_attrs",
    "edge_index",
    "shifts",
    "energy",
    "forces",
    "stress",
    "weight",
    "energy_weight",
    "forces_weight",
    "stress_weight",
    "virials_weight",
    "head",
)


def _same_data(a, b) -> None:
    """Two mace AtomicData hold the same numbers, bit for bit."""
    for name in _FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and bool((x == y).all()), name


# ---- the dataset reads its records lazily ------------------------------------------------------------------
def test_the_dataset_keeps_ids_not_records_and_reads_them_again(labelled, tmp_path):  # noqa: F811
    from aloe.data.formats import read_records

    data = gather([labelled, labelled / "records" / sorted(os.listdir(labelled / "records"))[0]])
    assert not hasattr(data, "records")
    assert len(data.ids) == 48 and data.duplicates > 0 and len(data.ordinals) == 48
    direct = [r for f in sorted((labelled / "records").glob("chunk-*.jsonl")) for r in read_records(f)]
    again = list(data.iter_records())
    assert [i for i, _ in again] == list(range(48))
    assert [r for _, r in again] == direct
    assert data.load_records([7, 2]) == [direct[2], direct[7]]
    assert data.load_records([]) == []
    # inputs that changed under the dataset are caught, not read as other records
    copy = tmp_path / "copy.jsonl"
    lines = b"".join(p.read_bytes() for p in sorted((labelled / "records").glob("chunk-*.jsonl")))
    copy.write_bytes(lines)
    moved = gather([copy])
    copy.write_bytes(b"\n".join(reversed(lines.splitlines())) + b"\n")
    with pytest.raises(AloeError, match="inputs changed"):
        list(moved.iter_records())
    copy.write_bytes(b"\n".join(lines.splitlines()[:10]) + b"\n")
    with pytest.raises(AloeError, match="10 of 48 records"):
        list(moved.iter_records())


def test_auto_format_switches_at_the_threshold():
    from aloe.train.prepare import resolve_format

    s = TrainSettings(hdf5_threshold=100)
    assert s.data_format == "auto" and TrainSettings().hdf5_threshold == 50_000
    assert resolve_format(s, 99) == "extxyz" and resolve_format(s, 100) == "hdf5"
    assert resolve_format(TrainSettings(data_format="hdf5"), 5) == "hdf5"
    assert resolve_format(TrainSettings(data_format="extxyz", hdf5_threshold=1), 10**6) == "extxyz"
    assert {"data_format", "hdf5_threshold", "hdf5_shard_size"} <= TrainSettings.RUNTIME_KEYS


# ---- shards ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def both(labelled, tmp_path_factory):  # noqa: F811
    """The same two-member committee prepared as extxyz and as hdf5 (7 structures per shard)."""
    root = tmp_path_factory.mktemp("formats")
    xyz = _prepare([labelled], root / "xyz", committee_size=2, data_format="extxyz")
    h5 = _prepare([labelled], root / "h5", committee_size=2, data_format="hdf5", hdf5_shard_size=7)
    return xyz, h5


def test_shards_hold_exactly_the_members_train_and_valid_parts(both, labelled):  # noqa: F811
    from aloe.train.shards import read_shard

    xyz, h5 = both
    assert (xyz.format, h5.format) == ("extxyz", "hdf5")
    zs = sorted(h5.data.numbers)
    data = gather([labelled])
    index = {rid: i for i, rid in enumerate(data.ids)}
    for k in range(2):
        folder = h5.members[k].folder
        split = json.loads((folder / "split.json").read_text())
        assert split == json.loads((xyz.members[k].folder / "split.json").read_text())
        layout = json.loads((folder / "data.json").read_text())
        assert layout["format"] == "hdf5" and layout["shard_size"] == 7 and layout["test"] == ["test.xyz"]
        assert layout["train"] == [f"train/shard-{i:05d}.h5" for i in range(7)]  # 44 structures
        assert layout["valid"] == ["valid/shard-00000.h5"]
        assert not (folder / "train.xyz").exists() and (folder / "test.xyz").is_file()
        for part in ("train", "valid"):
            shards = [read_shard(folder / name, zs, R_MAX) for name in layout[part]]
            assert [len(s) for s in shards[:-1]] == [7] * (len(shards) - 1)
            from_h5 = [shard[j] for shard in shards for j in range(len(shard))]
            # exactly the split's records, in its order: energies and positions of the records themselves
            records = data.load_records(sorted(index[rid] for rid in split[part]))
            assert len(from_h5) == len(records) == len(split[part])
            for d, record in zip(from_h5, records, strict=True):
                assert float(d.energy) == record["energy"]
                assert np.array_equal(d.forces.numpy(), np.asarray(record["forces"]))
            # and exactly what mace-torch reads from the same member's extxyz part, bit for bit
            from_xyz = _atomic_data(_xyz_part(xyz.members[k].folder / f"{part}.xyz"), zs)
            for a, b in zip(from_h5, from_xyz, strict=True):
                _same_data(a, b)
        # the test set is extxyz in both formats, byte for byte
        assert (folder / "test.xyz").read_bytes() == (xyz.members[k].folder / "test.xyz").read_bytes()


def test_mace_gets_the_shards_in_order_and_nothing_else_changes(both):
    xyz, h5 = both
    for k in range(2):
        a, b = xyz.tasks[k]["argv"], h5.tasks[k]["argv"]
        assert json.loads((h5.members[k].folder / "mace_args.json").read_text())["argv"] == b
        data_flags = ("--train_file=", "--valid_file=", "--test_file=", "--heads=")
        assert [x for x in a if not x.startswith(data_flags)] == [
            x for x in b if not x.startswith(data_flags)
        ]
        assert "--train_file=train.xyz" in a and not any(x.startswith("--train_file") for x in b)
        heads = ast.literal_eval(next(x for x in b if x.startswith("--heads=")).split("=", 1)[1])
        assert heads == {
            "Default": {
                "train_file": [f"train/shard-{i:05d}.h5" for i in range(7)],
                "valid_file": ["valid/shard-00000.h5"],
            }
        }
        assert all((h5.members[k].folder / f).is_file() for f in heads["Default"]["train_file"])


def test_average_e0s_are_fitted_with_maces_own_function(labelled, both, tmp_path):  # noqa: F811
    from ase.data import atomic_numbers
    from mace.tools.scripts_utils import get_atomic_energies
    from mace.tools.utils import AtomicNumberTable

    xyz, _ = both
    prep = _prepare([labelled], tmp_path / "avg", committee_size=2, data_format="hdf5", e0s="average")
    zs = sorted(atomic_numbers[e] for e in prep.data.elements)
    for k in range(2):
        train = _xyz_part(xyz.members[k].folder / "train.xyz")
        expected = get_atomic_energies("average", train, AtomicNumberTable(zs))  # what run_train does for xyz
        assert prep.members[k].average_e0s == {int(z): float(e) for z, e in expected.items()}
        argv = prep.tasks[k]["argv"]
        e0s = next(x for x in argv if x.startswith("--E0s=")).split("=", 1)[1]
        assert ast.literal_eval(e0s) == prep.members[k].average_e0s
    # kept for a resumed run: not fitted again
    again = _prepare([labelled], tmp_path / "avg", committee_size=2, data_format="hdf5", e0s="average")
    assert again.members[0].average_e0s == prep.members[0].average_e0s


def test_switching_format_on_a_run_folder_rewrites_only_train_and_valid(labelled, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    first = _prepare([labelled], out, committee_size=1, data_format="extxyz")
    folder = first.members[0].folder
    test_stamp = (folder / "test.xyz").stat().st_mtime_ns
    second = _prepare([labelled], out, committee_size=1, data_format="hdf5", hdf5_shard_size=20)
    assert second.format == "hdf5" and not (folder / "train.xyz").exists()
    assert sorted(p.name for p in (folder / "train").iterdir()) == [
        "shard-00000.h5",
        "shard-00001.h5",
        "shard-00002.h5",
    ]
    assert (folder / "test.xyz").stat().st_mtime_ns == test_stamp
    third = _prepare([labelled], out, committee_size=1, data_format="extxyz")
    assert third.format == "extxyz" and (folder / "train.xyz").is_file() and not (folder / "train").exists()


def test_a_killed_preparation_redoes_only_the_missing_shards(labelled, tmp_path):  # noqa: F811
    """A hard kill while the fourth shard is written: the next preparation writes only the missing shards."""
    out = tmp_path / "run"
    settings = _settings([labelled], out, committee_size=1, data_format="hdf5", hdf5_shard_size=5)
    script = (
        "import os, signal\n"
        "import aloe.train.prepare as prepare\n"
        "from aloe.train.settings import TrainSettings\n"
        "from aloe.train.stage import prepare_run\n"
        "write, done = prepare.write_shard, []\n"
        "def dying(configs):\n"
        "    for j, config in enumerate(configs):\n"
        "        if j == 2:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        yield config\n"
        "def killing(path, configs):\n"
        "    done.append(path)\n"
        "    write(path, dying(configs) if len(done) == 4 else configs)\n"
        "prepare.write_shard = killing\n"
        f"prepare_run(TrainSettings.model_validate_json({settings.model_dump_json()!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    folder = out / "members" / "member-0"
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "train").glob("shard-*.h5")}
    assert sorted(before) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert [p.name[:16] for p in (folder / "train").glob(".*.tmp")] == [".shard-00003.h5."]  # half written
    import aloe.train.prepare as prepare

    written: list[str] = []
    real = prepare.write_shard

    def counting(path, configs):
        written.append(f"{path.parent.name}/{path.name}")
        real(path, configs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare, "write_shard", counting)
        from aloe.train.stage import prepare_run

        resumed = prepare_run(settings)
    assert written == [f"train/shard-{i:05d}.h5" for i in range(3, 9)] + ["valid/shard-00000.h5"]
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "train").glob("shard-0000[0-2].h5")} == before
    assert not list(folder.rglob(".*.tmp")) and (folder / "test.xyz").is_file()
    # the same shards as a preparation that was never killed
    whole = _prepare([labelled], tmp_path / "whole", committee_size=1, data_format="hdf5", hdf5_shard_size=5)
    from aloe.train.shards import read_shard

    zs = sorted(resumed.data.numbers)
    for name in resumed.members[0].files("train") + resumed.members[0].files("valid"):
        a = read_shard(folder / name, zs, R_MAX)
        b = read_shard(whole.members[0].folder / name, zs, R_MAX)
        assert len(a) == len(b)
        for j in range(len(a)):
            _same_data(a[j], b[j])
    # nothing left to do: a third preparation writes nothing
    written.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare, "write_shard", counting)
        prepare_run(settings)
    assert written == []


# ---- slow: a member trained from shards is the member trained from extxyz ----------------------------------
def _eval_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted((folder / "results").glob("*_train.txt")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("mode") == "eval"]


@pytest.mark.slow
def test_a_member_trained_from_shards_equals_one_trained_from_extxyz(labelled, tmp_path):  # noqa: F811
    from aloe.train.stage import load_predictions, train

    runs = {}
    for fmt in ("extxyz", "hdf5"):
        runs[fmt] = train(
            _settings(
                [labelled], tmp_path / fmt, committee_size=1, epochs=3, data_format=fmt, hdf5_shard_size=10
            )
        )
    folders = {fmt: r.run_dir / "members" / "member-0" for fmt, r in runs.items()}
    assert (folders["hdf5"] / "train" / "shard-00004.h5").is_file() and not (
        folders["hdf5"] / "train.xyz"
    ).exists()
    rows = {fmt: _eval_rows(folder) for fmt, folder in folders.items()}
    # validation before the first epoch and after every epoch
    assert len(rows["extxyz"]) == len(rows["hdf5"]) == 4
    for a, b in zip(rows["extxyz"], rows["hdf5"], strict=True):
        assert a["epoch"] == b["epoch"] and a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float) and key != "time":
                assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # the same model: the same test predictions and errors
    pa, pb = (load_predictions(folders[f] / "test_predictions.npz") for f in ("extxyz", "hdf5"))
    for key in ("e_pred", "f_pred", "s_pred"):
        assert np.allclose(pa[key], pb[key], rtol=1e-9, atol=1e-12)
    ea, eb = runs["extxyz"].products["errors"][0], runs["hdf5"].products["errors"][0]
    for key, value in ea.items():
        if isinstance(value, float):
            assert eb[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    log = (folders["hdf5"] / "train.log").read_text()
    assert "Loading single HDF5 file" in log or "HDF5" in log
