"""A committee's training data: each member's split, written as extxyz files or as mace-torch HDF5 shards.

A member's folder (``members/member-<k>/``) holds::

    split.json          the record ids of its train / valid / test parts (member k: numpy rng([seed, k]))
    data.json           how the parts are stored: format, shard size, the files mace trains on
    train.xyz valid.xyz                       format extxyz (aloe.train.data's layout)
    train/shard-00000.h5 ... valid/shard-00000.h5 ...
                        format hdf5: mace-torch's preprocessed HDF5 shards (aloe.train.shards), shard_size
                        structures each, in the split's order (the order of the inputs)
    test.xyz            the test set, extxyz in both formats: aloe tests each finished member on it
    average_e0s.json    format hdf5 with e0s 'average': mace's least-squares E0s of the training set

Streaming: each file is written in one pass over the records it holds, read again from the inputs one at a
time (:meth:`aloe.train.data.Dataset.iter_records`) and handed to the writer as they come: mace's own
``save_configurations_as_HDF5`` takes a generator of configurations, aloe's extxyz writer a generator of
records. Memory does not grow with the dataset or with the shard size; the cost is one read of the inputs per
file (parsing the records is some 50 times cheaper than writing them into mace's HDF5 format).

Shard size: mace-torch keeps every shard file of a part open while it trains, and each open file holds HDF5's
metadata cache (some 30-60 MB once read through). Large shards therefore keep mace's memory nearly flat as the
dataset grows; the default is 50,000 structures.

Resuming: a file is complete once it has been renamed into place (a temp file beside it until then). A killed
preparation leaves temp files, which the next one removes, and it writes only the missing files. A member whose
split or layout changed loses its old parts first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aloe.data.formats import write_records
from aloe.errors import AloeError
from aloe.progress import make_bar
from aloe.runs import TMP_SUFFIX, atomic_path
from aloe.train.data import Dataset, Split, member_split, minimum_for_split
from aloe.train.settings import TrainSettings
from aloe.train.shards import HEAD, AverageE0s, ConfigMaker, shard_files, write_shard

SPLIT_FILE = "split.json"
LAYOUT_FILE = "data.json"
AVERAGE_E0S_FILE = "average_e0s.json"
TEST_FILE = "test.xyz"
PARTS = ("train", "valid", "test")


def member_name(k: int) -> str:
    """``member-<k>``."""
    return f"member-{k}"


@dataclass
class MemberData:
    """One member's data: its split and the files that hold its parts (paths relative to ``folder``)."""

    member: int
    folder: Path
    split: Split
    format: str
    shard_size: int
    notes: list[str] = field(default_factory=list)
    #: mace's least-squares E0s of the training set (format hdf5 with e0s 'average'), {Z: eV}.
    average_e0s: dict[int, float] | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """Structures per part."""
        return {"train": len(self.split.train), "valid": len(self.split.valid), "test": len(self.split.test)}

    def files(self, part: str) -> list[str]:
        """The files of ``part`` (train, valid, test), relative to the member's folder."""
        if part == "test" or self.format == "extxyz":
            return [f"{part}.xyz"]
        return shard_files(part, self.sizes[part], self.shard_size)

    def layout(self) -> dict[str, Any]:
        """What ``data.json`` holds."""
        doc: dict[str, Any] = {"format": self.format}
        if self.format == "hdf5":
            doc["shard_size"] = self.shard_size
        doc.update({part: self.files(part) for part in PARTS})
        return doc

    def mace_data_options(self) -> dict[str, Any]:
        """The ``run_train`` options that name the data.

        extxyz: ``train_file``, ``valid_file``, ``test_file``. hdf5: ``heads``, one head (mace's ``Default``)
        with its shard files listed in order. ``--train_file`` takes one path; a folder of shards would be read
        in the file system's listing order (mace globs it), which differs between file systems and would change
        the batches. mace reads no test set from HDF5 training data unless it is in ``--test_dir``, so the test
        errors come from aloe's own evaluation of ``test.xyz`` alone.
        """
        if self.format == "extxyz":
            return {f"{part}_file": f"{part}.xyz" for part in PARTS}
        return {"heads": {HEAD: {"train_file": self.files("train"), "valid_file": self.files("valid")}}}


def resolve_format(settings: TrainSettings, n: int) -> str:
    """``extxyz`` or ``hdf5`` for a dataset of ``n`` structures (``auto``: hdf5 from ``hdf5_threshold`` on)."""
    if settings.data_format != "auto":
        return settings.data_format
    return "hdf5" if n >= settings.hdf5_threshold else "extxyz"


# ---- preparation -------------------------------------------------------------------------------------------
def _remove_parts(folder: Path, split_changed: bool) -> None:
    """Remove the train and valid parts; also the test set and the fitted E0s when the split changed."""
    names = ["train.xyz", "valid.xyz"] + ([TEST_FILE, AVERAGE_E0S_FILE] if split_changed else [])
    for name in names:
        (folder / name).unlink(missing_ok=True)
    for part in ("train", "valid"):
        shutil.rmtree(folder / part, ignore_errors=True)


def _remove_temp_files(folder: Path) -> None:
    for sub in (folder, folder / "train", folder / "valid"):
        for leftover in sub.glob(f".*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def _member(run_members: Path, data: Dataset, settings: TrainSettings, k: int, fmt: str) -> MemberData:
    """The member's split and layout on disk (old parts removed when either changed)."""
    folder = run_members / member_name(k)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_temp_files(folder)
    split = member_split(data.ids, settings.split, settings.seed, k)
    member = MemberData(k, folder, split, fmt, settings.hdf5_shard_size)
    doc = {
        "member": k,
        "rng_seed": [settings.seed, k],
        "fractions": list(settings.split),
        **{
            name: [data.ids[i] for i in idx]
            for name, idx in zip(PARTS, (split.train, split.valid, split.test), strict=True)
        },
    }
    split_file = folder / SPLIT_FILE
    if not split_file.exists() or json.loads(split_file.read_text()) != doc:
        _remove_parts(folder, split_changed=True)
        with atomic_path(split_file) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
    layout_file = folder / LAYOUT_FILE
    layout = member.layout()
    if not layout_file.exists() or json.loads(layout_file.read_text()) != layout:
        _remove_parts(folder, split_changed=False)  # test.xyz is the same in every layout
        with atomic_path(layout_file) as tmp:
            tmp.write_text(json.dumps(layout, indent=1))
    if split.rounded_up:
        member.notes.append(
            f"{member_name(k)}: {len(data.ids)} structures are fewer than the "
            f"{minimum_for_split(settings.split)} the split needs: valid and test rounded up to "
            f"{len(split.valid)} and {len(split.test)}"
        )
    return member


def prepare_members(
    run_members: Path,
    data: Dataset,
    settings: TrainSettings,
    members: list[int],
    fmt: str,
    maker: ConfigMaker | None = None,
    average_e0s: bool = False,
) -> dict[int, MemberData]:
    """Write every member's split, and the files of its parts that are missing.

    Each missing file is written in one pass over the records it holds, read again from the inputs one at a
    time (:meth:`~aloe.train.data.Dataset.iter_records`) and handed to the writer as they come: to mace's
    ``save_configurations_as_HDF5`` as a generator of configurations, to aloe's extxyz writer as a generator of
    records. No file's contents are ever in memory at once.

    Parameters
    ----------
    run_members
        The run's ``members/`` folder.
    data, settings, members
        The dataset, the stage's settings and the members to prepare.
    fmt
        ``extxyz`` or ``hdf5`` (:func:`resolve_format`).
    maker
        Records -> mace configurations, from the members' ``run_train`` options (format hdf5).
    average_e0s
        Fit mace's least-squares E0s on each member's training set (format hdf5 with e0s 'average').

    Raises
    ------
    AloeError
        A record a part cannot hold, or inputs that changed since they were gathered.
    """
    if fmt == "hdf5" and maker is None:
        raise ValueError("hdf5 training data need a ConfigMaker")
    prepared = {k: _member(run_members, data, settings, k, fmt) for k in members}
    todo: list[tuple[Path, np.ndarray]] = []  # the missing files and the dataset indices they hold
    for member in prepared.values():
        for part in PARTS:
            idx = getattr(member.split, part)
            files = member.files(part)
            size = member.shard_size if len(files) > 1 else len(idx)
            for s, name in enumerate(files):
                if not (member.folder / name).exists():
                    todo.append((member.folder / name, idx[s * size : (s + 1) * size]))
    fits = [m for m in prepared.values() if average_e0s and fmt == "hdf5"]
    total = sum(len(idx) for _, idx in todo)
    bar = make_bar(
        enabled=settings.progress, total=total or None, desc=f"train data ({fmt})", unit="structure"
    )
    try:
        for path, idx in todo:
            records = _counted(data.iter_records(idx), bar)
            if path.suffix == ".xyz":
                write_records((record for _, record in records), path, "extxyz")
            else:
                assert maker is not None
                write_shard(path, _configs(records, maker, data, path))
        for member in fits:
            member.average_e0s = _average_e0s(member, data)
    finally:
        bar.close()
    return prepared


def _counted(items: Iterator[Any], bar: Any) -> Iterator[Any]:
    """``items``, counted on ``bar`` as they are taken."""
    for item in items:
        yield item
        bar.update(1)


def _configs(
    records: Iterator[tuple[int, dict[str, Any]]], maker: ConfigMaker, data: Dataset, path: Path
) -> Iterator[Any]:
    """Mace configurations of ``records``, one at a time (a bad record: an AloeError naming it and the file)."""
    for i, record in records:
        try:
            yield maker(record)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise AloeError(
                f"{path}: record {data.ids[i]} cannot be written ({type(exc).__name__}: {exc})"
            ) from None


def _average_e0s(member: MemberData, data: Dataset) -> dict[int, float]:
    """Mace's least-squares E0s of the member's training set: cached, else fitted in a pass over its records."""
    cached = member.folder / AVERAGE_E0S_FILE
    if cached.exists():
        return {int(z): float(e) for z, e in json.loads(cached.read_text()).items()}
    fit = AverageE0s()
    for _, record in data.iter_records(member.split.train):
        fit.add(record)
    e0s = fit.solve(sorted(data.numbers))
    with atomic_path(cached) as tmp:
        tmp.write_text(json.dumps({str(z): e for z, e in e0s.items()}, indent=1))
    return e0s
