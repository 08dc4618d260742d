"""The train stage: a committee of MACE models, each trained by mace-torch's ``run_train`` on its own split.

Run folder layout::

    run.yaml, summary.yaml
    dataset.yaml                 how many structures, their elements, a digest of their ids, the E0s used
    members/member-<k>/
        split.json               the record ids of this member's train / valid / test parts
        data.json                how the parts are stored (format, shard size, files)
        train.xyz valid.xyz      the train and valid parts as extxyz (REF_energy, REF_forces, REF_stress; see
                                 aloe.train.data), or, for large datasets,
        train/shard-*.h5 valid/shard-*.h5
                                 mace-torch's preprocessed HDF5 shards (see aloe.train.prepare, aloe.train.shards)
        test.xyz                 the test part, extxyz in both formats
        mace_args.json           the exact command line given to ``python -m mace.cli.run_train``
        train.log                everything mace printed (epoch by epoch)
        checkpoints/ logs/ results/
                                 mace-torch's own folders (a killed training continues from checkpoints/)
        member-<k>.model         what mace saved (plus member-<k>_compiled.model, TorchScript)
        test_predictions.npz     the model's predictions on test.xyz (cached; keyed by the model's digest)
    models/member-<k>.model      the finished members: whole-module files for MACEPotential and
                                 ``aloe screen -m 'models/*.model'``
    errors.csv                   test errors per member (and their mean)
    plots/parity-member-<k>.png  energy / force / stress parity on the member's test set, numbers beside

Units of the error table: energy per atom in meV/atom, forces (per Cartesian component) in meV/A, stress (per
Voigt component, 6 per structure) in GPa. Test errors come from loading each finished model with
:class:`aloe.potentials.mace.MACEPotential` (float64) and predicting the member's test set, not from mace's
logs.

Training data (setting ``data_format``): extxyz files for small datasets, mace-torch's HDF5 shards from
``hdf5_threshold`` structures on. The shards are written while the records stream past, so neither aloe nor mace
holds the dataset in memory. mace gets them through ``--heads`` (one ``Default`` head with its shard files in
order) and computes its statistics (average number of neighbours, scale and shift) from them while it trains, as
it does from extxyz; E0s 'average' are fitted by aloe with mace's own function (mace cannot fit them from HDF5).
The same data, split, E0s and seed therefore give the same member in either format.

Resuming: a member whose ``models/member-<k>.model`` exists is not trained again; a member without it is
(re)started with ``--restart_latest``, so mace continues from its last checkpoint (mace-torch keeps the
checkpoint of the best validation loss so far, so the epochs after it are repeated). Raising
``committee_size`` adds members. The inputs must still hold the same records (their digest is checked).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aloe import layout
from aloe.devices import wants_gpu
from aloe.errors import AloeError
from aloe.executors import Executor, InlineExecutor, stage_executor
from aloe.progress import make_bar, progress_enabled
from aloe.runs import RunFolder, atomic_path, open_stage_run, write_yaml_atomic
from aloe.stagekit import StageResult
from aloe.train.data import Dataset, gather, member_split, read_extxyz
from aloe.train.launch import check_launcher, launch_environment, launch_options, member_command
from aloe.train.mace_args import ENTRY_POINT, check_user_options, e0s_literal, format_args, validate_argv
from aloe.train.prepare import MemberData, member_name, prepare_members, resolve_format
from aloe.train.settings import TrainSettings
from aloe.train.shards import ConfigMaker
from aloe.units import EV_PER_A3_IN_GPA

MEMBERS_DIR = layout.MEMBERS
MODELS_DIR = layout.MODELS
PLOTS_DIR = layout.PLOTS
ERRORS_FILE = "errors.csv"
DATASET_FILE = "dataset.yaml"
PREDICTIONS_FILE = "test_predictions.npz"
#: Where mace reads the labels in aloe's extxyz files and HDF5 shards.
KEY_OPTIONS = {"energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": "REF_stress"}
ERROR_COLUMNS = (
    "member",
    "n_train",
    "n_valid",
    "n_test",
    "n_test_failed",
    "energy_mae_meV_per_atom",
    "energy_rmse_meV_per_atom",
    "forces_mae_meV_per_A",
    "forces_rmse_meV_per_A",
    "stress_mae_GPa",
    "stress_rmse_GPa",
)


# ---- E0s ---------------------------------------------------------------------------------------------------
def resolve_e0s(settings: TrainSettings, data: Dataset) -> tuple[str, dict[str, float] | None, str]:
    """``(value for mace --E0s, {element: eV} or None, source)``.

    Raises
    ------
    AloeError
        An element of the dataset without an isolated-atom energy.
    """
    from ase.data import atomic_numbers

    elements = data.elements
    if settings.e0s in ("average", "foundation"):
        return str(settings.e0s), None, str(settings.e0s)
    if isinstance(settings.e0s, dict):
        table, source = dict(settings.e0s), "settings (e0s)"
    else:
        if not data.isolated_sources:
            raise AloeError(
                "e0s 'isolated_atoms' needs label run folders with isolated_atoms.yaml among the inputs "
                "(record files carry no isolated-atom energies); set e0s to 'average' or to {element: eV}"
            )
        table, source = dict(data.isolated), ", ".join(data.isolated_sources)
    missing = [e for e in elements if e not in table]
    if missing:
        raise AloeError(
            f"no isolated-atom energy (E0) for {', '.join(missing)} in {source}; set e0s to 'average' or "
            "give {element: eV} for every element"
        )
    used = {e: float(table[e]) for e in elements}
    return e0s_literal({atomic_numbers[e]: v for e, v in used.items()}), used, source


# ---- members -----------------------------------------------------------------------------------------------
def _member_argv(
    settings: TrainSettings,
    options: dict[str, Any],
    member: MemberData,
    e0s: str,
    numbers: list[int],
    foundation: str | None,
) -> tuple[list[str], list[str]]:
    k, n_train = member.member, member.sizes["train"]
    opts = dict(options)
    notes = []
    batch = int(opts.get("batch_size", 10))
    if n_train < batch:
        opts["batch_size"] = n_train
        notes.append(
            f"{member_name(k)}: batch_size {batch} > {n_train} training structures; using {n_train} "
            "(mace drops incomplete batches)"
        )
    if member.average_e0s is not None:
        # hdf5 with e0s 'average': mace cannot fit them from shards; aloe did, with mace's own function
        e0s = e0s_literal(member.average_e0s)
    opts.update(
        {
            "name": member_name(k),
            "work_dir": ".",
            **member.mace_data_options(),
            **KEY_OPTIONS,
            "E0s": e0s,
            "atomic_numbers": repr(sorted(numbers)),
            "seed": settings.seed + k,
            "device": settings.device,
            "restart_latest": True,
        }
    )
    if foundation is not None:
        opts["foundation_model"] = foundation
        opts.setdefault("multiheads_finetuning", False)
    return format_args(opts), notes


def planned_command(settings: TrainSettings, k: int = 0) -> list[str]:
    """The command member ``k`` would run, before any data exist (``--dry-run``).

    The arguments that come from the labelled data are shown as placeholders: the data files (extxyz, or HDF5
    shards through ``--heads`` from ``hdf5_threshold`` structures on), the E0s and the atomic numbers.
    """
    from types import SimpleNamespace

    if settings.mace_options:
        check_user_options(settings.mace_options)
    data = {f"{part}_file": f"{part}.xyz" for part in ("train", "valid", "test")}
    stand_in = SimpleNamespace(
        member=k, sizes={"train": 10**9}, average_e0s=None, mace_data_options=lambda: data
    )
    argv, _ = _member_argv(
        settings,
        settings.preset_options(),
        stand_in,  # type: ignore[arg-type]
        "<E0s: {Z: eV} of the labelled elements>",
        [],
        _resolve_foundation(settings.foundation_model),
    )
    argv = [
        a if not a.startswith("--atomic_numbers=") else "--atomic_numbers=<Z of the labelled elements>"
        for a in argv
    ]
    return member_command(
        argv, launch_options(settings), settings.threads, name=f"aloe-<run>-{member_name(k)}"
    )


def job_name(run_dir: Path, k: int) -> str:
    """The Slurm job name of member ``k``'s training (launcher slurm): ``aloe-<run folder>-member-<k>``."""
    return f"aloe-{run_dir.name}-{member_name(k)}"


def _gpus_asked(settings: TrainSettings) -> int:
    """GPUs a member's task asks its executor for: gpus_per_member where mace runs in the task's allocation.

    Launcher slurm trains in a Slurm job of its own; its task needs one GPU only to test the finished member.
    """
    if not wants_gpu(settings.device):
        return 0
    return 1 if settings.launcher == "slurm" else settings.gpus_per_member


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_mace(folder: Path, command: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run ``command`` (mace's run_train, launched) in ``folder``, output appended to train.log.

    Returns
    -------
    tuple
        (exit code, seconds).
    """
    t0 = time.perf_counter()
    with open(folder / "train.log", "ab") as log:
        log.write(f"\n# aloe: {shlex.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait()
        finally:  # interrupted: do not leave a training behind (its checkpoints stay for the next run)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return code, time.perf_counter() - t0


def _failure_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if re.search(r"(Error|error:|Exception)", line):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def _forget_training(folder: Path, k: int) -> None:
    """Remove what a killed training of member ``k`` left, so that it starts from the beginning.

    mace-torch's checkpoints, logs, results and model files go; the member's inputs (split, data parts,
    arguments) stay.
    """
    for name in ("checkpoints", "logs", "results"):
        shutil.rmtree(folder / name, ignore_errors=True)
    for leftover in folder.glob(f"{member_name(k)}*.model"):
        leftover.unlink(missing_ok=True)


def _member_task(task: dict[str, Any]) -> dict[str, Any]:
    """Train one member (unless its model exists) and test it (unless cached); runs in a worker process."""
    folder = Path(task["folder"])
    model = Path(task["model"])
    k = task["member"]
    out: dict[str, Any] = {"member": k, "trained_now": False, "evaluated_now": False, "seconds_train": 0.0}
    if not model.exists():
        if task.get("resume") == "restart":
            _forget_training(folder, k)
        launch = task.get("launch", {})
        check_launcher(launch)
        command = member_command(
            task["argv"], launch, task["threads"], name=task.get("job_name", "aloe-train")
        )
        code, seconds = _run_mace(folder, command, launch_environment(launch, _thread_env(task["threads"])))
        out["seconds_train"] = seconds
        produced = folder / f"{member_name(k)}.model"
        if code != 0 or not produced.exists():
            why = f"exit code {code}" if code != 0 else f"no {produced.name} written"
            out.update(
                status="failed",
                message=f"{member_name(k)}: mace-torch training failed ({why}): "
                f"{_failure_line(folder / 'train.log')}; see {folder / 'train.log'}",
            )
            return out
        with atomic_path(model) as tmp:
            shutil.copyfile(produced, tmp)
            shutil.copymode(produced, tmp)  # mace's file mode, not the temp file's 0600
        out["trained_now"] = True
    out["epochs"] = _last_epoch(folder / "train.log")
    try:
        out["evaluated_now"] = evaluate_member(
            model, folder, task["threads"], task["device"], task["eval_batch_size"]
        )
    except AloeError as exc:
        out.update(status="failed", message=f"{member_name(k)}: {exc}")
        return out
    out["status"] = "ok"
    return out


# ---- testing -----------------------------------------------------------------------------------------------
def evaluate_member(model: Path, folder: Path, threads: int, device: str, batch_size: int) -> bool:
    """Predict the member's test set with aloe's MACEPotential (float64), cached by model digest.

    Returns
    -------
    bool
        Whether the predictions were computed now (False: the cache was still valid).
    """
    from aloe.potentials.base import file_digest

    digest = file_digest(str(model))
    target = folder / PREDICTIONS_FILE
    if target.exists():
        with np.load(target, allow_pickle=False) as old:
            if str(old["model_digest"]) == digest:
                return False
    from aloe.potentials.mace import MACEPotential
    from aloe.structures import StructureBatch

    frames = read_extxyz(folder / "test.xyz")
    ids = [str(a.info.get("aloe_record_id", i)) for i, a in enumerate(frames)]
    batch = StructureBatch.from_atoms(frames, ids)
    potential = MACEPotential(model, device=device, dtype="float64", batch_size=batch_size, threads=threads)
    pred = potential.predict(batch)
    s_ref = np.array(
        [
            np.asarray(a.info["REF_stress"], float) if "REF_stress" in a.info else np.full(6, np.nan)
            for a in frames
        ]
    ).reshape(-1, 6)
    f_ref = np.concatenate(
        [np.asarray(a.arrays.get("REF_forces", np.full((len(a), 3), np.nan)), float) for a in frames]
    ).reshape(-1, 3)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            ids=np.array(ids, dtype=str),
            n_atoms=batch.n_atoms,
            e_ref=np.array([float(a.info["REF_energy"]) for a in frames]),
            e_pred=pred.energy,
            f_ref=f_ref,
            f_pred=pred.forces,
            s_ref=s_ref,
            s_pred=pred.stress,
            errors=np.array(["" if e is None else e for e in pred.errors], dtype=str),
            model_digest=np.array(digest),
        )
    return True


def load_predictions(path: Path) -> dict[str, Any]:
    """A member's cached test predictions as flat arrays in report units (eV/atom, eV/A, GPa, VASP sign)."""
    with np.load(path, allow_pickle=False) as z:
        n = np.asarray(z["n_atoms"], dtype=float)
        ok = np.array([e == "" for e in z["errors"]], dtype=bool)
        atom_ok = np.repeat(ok, z["n_atoms"])
        to_gpa = -EV_PER_A3_IN_GPA  # ASE sign (tensile +) -> VASP/MatPES sign (compressive +)
        return {
            "ids": z["ids"],
            "n_test": len(ok),
            "failed": int((~ok).sum()),
            "e_ref": (z["e_ref"] / n)[ok],
            "e_pred": (z["e_pred"] / n)[ok],
            "f_ref": z["f_ref"][atom_ok].reshape(-1),
            "f_pred": z["f_pred"][atom_ok].reshape(-1),
            "s_ref": (z["s_ref"][ok] * to_gpa).reshape(-1),
            "s_pred": (z["s_pred"][ok] * to_gpa).reshape(-1),
        }


def error_metrics(arrays: dict[str, Any]) -> dict[str, float]:
    """MAE and RMSE: energy per atom (meV/atom), force components (meV/A), stress components (GPa)."""

    def pair(ref, pred, scale):
        ref, pred = np.asarray(ref, float), np.asarray(pred, float)
        ok = np.isfinite(ref) & np.isfinite(pred)
        if not ok.any():
            return math.nan, math.nan
        d = (pred[ok] - ref[ok]) * scale
        return float(np.abs(d).mean()), float(np.sqrt((d**2).mean()))

    e_mae, e_rmse = pair(arrays["e_ref"], arrays["e_pred"], 1000.0)
    f_mae, f_rmse = pair(arrays["f_ref"], arrays["f_pred"], 1000.0)
    s_mae, s_rmse = pair(arrays["s_ref"], arrays["s_pred"], 1.0)
    return {
        "energy_mae": e_mae,
        "energy_rmse": e_rmse,
        "forces_mae": f_mae,
        "forces_rmse": f_rmse,
        "stress_mae": s_mae,
        "stress_rmse": s_rmse,
    }


def _write_errors_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if not np.isfinite(v) else f"{v:.6g}"
        return str(v)

    lines = [",".join(ERROR_COLUMNS)]
    for row in rows:
        lines.append(",".join(cell(row[c]) for c in ERROR_COLUMNS))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _error_row(k: int, sizes: dict[str, int], arrays: dict[str, Any], m: dict[str, float]) -> dict[str, Any]:
    return {
        "member": member_name(k),
        "n_train": sizes["train"],
        "n_valid": sizes["valid"],
        "n_test": arrays["n_test"],
        "n_test_failed": arrays["failed"],
        "energy_mae_meV_per_atom": m["energy_mae"],
        "energy_rmse_meV_per_atom": m["energy_rmse"],
        "forces_mae_meV_per_A": m["forces_mae"],
        "forces_rmse_meV_per_A": m["forces_rmse"],
        "stress_mae_GPa": m["stress_mae"],
        "stress_rmse_GPa": m["stress_rmse"],
    }


# ---- progress ----------------------------------------------------------------------------------------------
_EPOCH = re.compile(rb"Epoch (\d+):")


def _log_tail(log: Path) -> bytes | None:
    """The last 64 kB of ``log``, or None when it cannot be read."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            return fh.read()
    except OSError:
        return None


def _last_epoch(log: Path) -> int | None:
    """The last epoch mace reported in ``log`` (0-based), or None."""
    tail = _log_tail(log)
    found = _EPOCH.findall(tail) if tail is not None else []
    return int(found[-1]) if found else None


#: What mace is doing before its first epoch ends, from the last of these lines in its log (at 10^6 structures
#: read from HDF5 shards, each statistics pass takes hours).
_MACE_PHASES = (
    (b"Computing average number of neighbors", "neighbour statistics (a pass over the training data)"),
    (b"===========MODEL DETAILS===========", "scale and shift (a pass over the training data)"),
    (b"Building model", "building the model"),
    (b"Initial:", "training the first epoch"),
)


def _mace_phase(log: Path) -> str | None:
    """What mace is doing according to the end of ``log`` (before its first epoch ends), or None."""
    tail = _log_tail(log)
    if tail is None:
        return None
    found = [(tail.rfind(marker), phase) for marker, phase in _MACE_PHASES]
    at, phase = max(found)
    return phase if at >= 0 else None


class _EpochWatcher(threading.Thread):
    """Shows each running member's epoch (read from its train.log) beside the bar over members.

    Before a member's first epoch ends, what mace is doing instead (its statistics passes, building the model).
    """

    def __init__(self, bar: Any, logs: dict[int, Path], epochs: int) -> None:
        super().__init__(daemon=True)
        self.bar, self.logs, self.epochs = bar, logs, epochs
        self.done: set[int] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(2.0):
            parts = []
            for k, log in self.logs.items():
                if k in self.done:
                    continue
                epoch = _last_epoch(log)
                if epoch is not None:
                    parts.append(f"{member_name(k)} epoch {epoch + 1}/{self.epochs}")
                elif (phase := _mace_phase(log)) is not None:
                    parts.append(f"{member_name(k)} {phase}")
            if parts:
                self.bar.set_postfix_str(", ".join(parts))


# ---- the stage ---------------------------------------------------------------------------------------------
def _check_dataset(run_dir: Path, data: Dataset, e0s: dict[str, float] | None, e0_source: str) -> None:
    path = run_dir / DATASET_FILE
    doc = {
        "structures": len(data.ids),
        "digest": data.digest(),
        "elements": data.elements,
        "e0s_eV": e0s,
        "e0s_source": e0_source,
    }
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        if old.get("digest") != doc["digest"]:
            raise AloeError(
                f"{run_dir}: the inputs now hold other records ({doc['structures']} structures) than when "
                f"this run started ({old.get('structures')}); use a new --output folder"
            )
        return
    write_yaml_atomic(path, doc)


def _data_summary(prep: PreparedRun) -> dict[str, Any]:
    """The summary's ``training_data``: format, shard size, and files per member (or the shard counts)."""
    doc: dict[str, Any] = {"format": prep.format, "test": "extxyz (test.xyz)"}
    if prep.format == "hdf5":
        doc["shard_size"] = prep.settings.hdf5_shard_size
        doc["shards"] = {
            member_name(k): {part: len(m.files(part)) for part in ("train", "valid")}
            for k, m in prep.members.items()
        }
        fitted = {member_name(k): m.average_e0s for k, m in prep.members.items() if m.average_e0s}
        if fitted:
            doc["average_e0s_eV"] = fitted
    return doc


def _resolve_foundation(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return str(path.resolve())
    if "/" in value or value.endswith(".model") or path.exists():
        raise AloeError(f"foundation_model {value}: no such MACE .model file")
    return value  # a mace-torch model name (mace downloads it: needs a network)


@dataclass
class PreparedRun:
    """Everything :func:`train` does before training: the run folder, the data on disk, the mace arguments."""

    run: RunFolder
    settings: TrainSettings
    data: Dataset
    format: str
    members: dict[int, MemberData]
    #: One task per member for :func:`_member_task`; ``argv`` is empty for a member whose model exists.
    tasks: list[dict[str, Any]]
    options: dict[str, Any]
    e0s: tuple[str, dict[str, float] | None, str]
    foundation: str | None
    notes: list[str]
    timings: dict[str, float]


def _mace_namespace(options: dict[str, Any]) -> Any:
    """The members' ``run_train`` options as mace-torch's parser reads them (key names, config type weights)."""
    return validate_argv(format_args({**options, **KEY_OPTIONS, "name": "aloe"}))


def prepare_run(settings: TrainSettings) -> PreparedRun:
    """Read the inputs, open the run folder, write every member's split and data, and its mace arguments.

    Raises
    ------
    AloeError
        As :func:`train` does before training.
    """
    timings: dict[str, float] = {}
    if settings.mace_options:
        check_user_options(settings.mace_options)
    foundation = _resolve_foundation(settings.foundation_model)

    t0 = time.perf_counter()
    data = gather(settings.inputs)
    # too few structures: fail before a run folder exists
    member_split(data.ids, settings.split, settings.seed, 0)
    e0s_arg, e0s_used, e0_source = resolve_e0s(settings, data)
    timings["read"] = time.perf_counter() - t0

    run, settings = open_stage_run(settings, "train", TrainSettings.RUNTIME_KEYS, (MEMBERS_DIR, MODELS_DIR))
    _check_dataset(run.path, data, e0s_used, e0_source)
    from ase.data import atomic_numbers

    numbers = [atomic_numbers[e] for e in data.elements]
    options = settings.preset_options()
    models_dir = run.path / MODELS_DIR

    t0 = time.perf_counter()
    fmt = resolve_format(settings, len(data.ids))
    maker = ConfigMaker(_mace_namespace(options)) if fmt == "hdf5" else None
    prepared = prepare_members(
        run.path / MEMBERS_DIR,
        data,
        settings,
        list(range(settings.committee_size)),
        fmt,
        maker,
        average_e0s=settings.e0s == "average",
    )
    notes: list[str] = []
    tasks = []
    launch = launch_options(settings)
    for k, member in prepared.items():
        notes += member.notes
        model = models_dir / f"{member_name(k)}.model"
        argv: list[str] = []
        if not model.exists():
            argv, argv_notes = _member_argv(settings, options, member, e0s_arg, numbers, foundation)
            notes += argv_notes
            validate_argv(argv)
            command = member_command(argv, launch, settings.threads, name=job_name(run.path, k))
            with atomic_path(member.folder / "mace_args.json") as tmp:
                tmp.write_text(
                    json.dumps(
                        {"entry_point": f"python -m {ENTRY_POINT}", "argv": argv, "command": command},
                        indent=1,
                    )
                )
        tasks.append(
            {
                "member": k,
                "folder": str(member.folder),
                "model": str(model),
                "argv": argv,
                "launch": launch,
                "job_name": job_name(run.path, k),
                "threads": settings.threads,
                "device": settings.device,
                "eval_batch_size": settings.eval_batch_size,
                "resume": settings.resume,
            }
        )
    timings["prepare"] = time.perf_counter() - t0
    return PreparedRun(
        run,
        settings,
        data,
        fmt,
        prepared,
        tasks,
        options,
        (e0s_arg, e0s_used, e0_source),
        foundation,
        notes,
        timings,
    )


def train(
    settings: TrainSettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Train (or resume) a MACE committee; see the module docstring.

    ``executor`` runs the members (the caller's, left open); default: one opened from the run options. The
    result's ``products`` hold ``models`` (paths, member order) and ``errors`` (the test-error table).

    Raises
    ------
    AloeError
        No inputs or records, too few structures for a split, an unknown or reserved mace option, missing
        E0s, or a member whose training failed (after the others finished and the summary was written).
    """
    t_start = time.perf_counter()
    prep = prepare_run(settings)
    run, settings, data, options, tasks = prep.run, prep.settings, prep.data, prep.options, prep.tasks
    notes = prep.notes
    e0s_arg, e0s_used, e0_source = prep.e0s
    foundation = prep.foundation
    timings = dict(prep.timings)
    members = list(prep.members)
    sizes = {k: m.sizes for k, m in prep.members.items()}
    models_dir = run.path / MODELS_DIR

    t0 = time.perf_counter()
    to_train = [t["member"] for t in tasks if t["argv"]]
    bar = make_bar(enabled=settings.progress, total=len(tasks), desc="train (mace)", unit="member")
    watcher = None
    if to_train and progress_enabled(settings.progress):
        logs = {k: run.path / MEMBERS_DIR / member_name(k) / "train.log" for k in to_train}
        watcher = _EpochWatcher(bar, logs, int(options.get("max_num_epochs", 0)))
        watcher.start()
    results: dict[int, dict[str, Any]] = {}
    try:
        # Nothing to train: at most a test set to predict, here.
        with stage_executor(executor if to_train else InlineExecutor(), settings) as executor:
            for result in executor.map_unordered(
                _member_task, tasks, limit=settings.task_limit(), gpu=_gpus_asked(settings)
            ):
                results[result["member"]] = result
                if watcher is not None:
                    watcher.done.add(result["member"])
                bar.update(1)
    finally:
        if watcher is not None:
            watcher.halt.set()
        bar.close()
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from aloe.train.plots import plot_parity

    plots = run.subfolder(PLOTS_DIR)
    rows: list[dict[str, Any]] = []
    plot_files: list[str] = []
    for k in members:
        if results[k]["status"] != "ok":
            continue
        arrays = load_predictions(run.path / MEMBERS_DIR / member_name(k) / PREDICTIONS_FILE)
        metrics = error_metrics(arrays)
        rows.append(_error_row(k, sizes[k], arrays, metrics))
        png = plots / f"parity-{member_name(k)}.png"
        plot_parity(
            arrays,
            metrics,
            png,
            f"{member_name(k)} on its test set ({arrays['n_test']} structures; preset {settings.preset})",
        )
        plot_files.append(str(png.relative_to(run.path)))
    if rows:
        mean = {c: float(np.nanmean([r[c] for r in rows])) for c in ERROR_COLUMNS if c != "member"}
        table = [*rows, {"member": "mean", **mean}]
    else:
        table = []
    _write_errors_csv(run.path / ERRORS_FILE, table)
    timings["test_and_plots"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    failures = [results[k]["message"] for k in members if results[k]["status"] != "ok"]
    counts: dict[str, Any] = {
        "records_read": data.read,
        "duplicates": data.duplicates,
        "structures": len(data.ids),
        "elements": data.elements,
        "members": len(members),
        "trained_now": sum(bool(results[k]["trained_now"]) for k in members),
        "tested_now": sum(bool(results[k]["evaluated_now"]) for k in members),
        "finished": sum(results[k]["status"] == "ok" for k in members),
        "failed": len(failures),
        "split": {member_name(k): sizes[k] for k in members},
    }
    warnings = []
    stand_ins = sorted(f for f in data.functionals if "stand-in" in f.lower())
    if stand_ins:
        warnings.append(f"trained on stand-in labels, not DFT: {', '.join(stand_ins)}")
    if len(data.functionals) > 1:
        warnings.append(f"inputs mix functionals: {dict(data.functionals)}")
    extra: dict[str, Any] = {
        "trainer": {"entry_point": f"python -m {ENTRY_POINT}", "preset": settings.preset, "options": options},
        "foundation_model": foundation,
        "e0s": {"eV": e0s_used, "mace_argument": e0s_arg, "source": e0_source},
        "training_data": _data_summary(prep),
        "inputs": data.sources,
        "members": [
            {
                "member": member_name(k),
                "status": results[k]["status"],
                "trained_now": results[k]["trained_now"],
                "last_epoch": results[k].get("epochs"),
                "seconds_train": round(float(results[k]["seconds_train"]), 3),
                "model": str(Path(MODELS_DIR) / f"{member_name(k)}.model"),
            }
            for k in members
        ],
        "test_errors": {
            "units": "energy meV/atom, forces meV/A (per component), stress GPa (per Voigt component)",
            "table": [
                {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                for r in table
            ],
        },
        "plots": plot_files,
        "notes": notes,
    }
    if warnings:
        extra["warning"] = "; ".join(warnings)
    if failures:
        extra["failures"] = failures
    summary = run.write_summary(counts, timings, extra=extra, command=command)
    if failures:
        raise AloeError(failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
    models = [models_dir / f"{member_name(k)}.model" for k in members]
    return StageResult("train", run.path, counts, timings, summary, {"models": models, "errors": table})
