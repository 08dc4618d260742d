"""The run-folder contract between stages: folder and file names, and where each stage leaves its product.

Stages, the loop and the readers agree on these names through this module only. A stage's run folder::

    run.yaml, run.lock, aloe.log, summary.yaml     every stage (see aloe.runs)
    inputs/                                          structure files a stage read, converted to chunks
    chunks/                                          generate: candidate chunks (its product)
    metrics/, selected/, references.yaml            screen: per-chunk metrics; the selected structures (product)
    features/, selected/, points.parquet            select: per-chunk features; DIRECT's picks (product)
    records/, failures/, done/, work/, isolated_atoms.yaml    label: labelled records (product), failures ...
    members/, models/                                train: one folder per member; the trained models (product)

A loop run folder holds ``config.yaml``, ``state.yaml`` and one folder per iteration, ``iter-00/<stage>``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# ---- every stage run ----------------------------------------------------------------------------------------
MANIFEST = "run.yaml"
SUMMARY = "summary.yaml"
LOCK_FILE = "run.lock"
RUN_LOG = "aloe.log"
CHUNKS = "chunks"
INPUTS = "inputs"
PLOTS = "plots"

# ---- generate -------------------------------------------------------------------------------------------------
PLAN_FILE = "plan.npz"
OCCUPATIONS_FILE = "occupations.json"

# ---- screen and select ------------------------------------------------------------------------------------------
METRICS = "metrics"
SELECTED = "selected"
REFERENCES_FILE = "references.yaml"
FEATURES = "features"

# ---- label ------------------------------------------------------------------------------------------------------
RECORDS = "records"
FAILURES = "failures"
DONE = "done"
WORK = "work"
ISOLATED_ATOMS_FILE = "isolated_atoms.yaml"

# ---- train ------------------------------------------------------------------------------------------------------
MEMBERS = "members"
MODELS = "models"
MODEL_SUFFIX = ".model"

# ---- the loop ---------------------------------------------------------------------------------------------------
LOOP_CONFIG = "config.yaml"
LOOP_STATE = "state.yaml"

#: Stage runs whose structures another stage reads -> the sub-folder holding them (their product).
STRUCTURE_OUTPUTS: dict[str, str] = {"generate": CHUNKS, "screen": SELECTED, "select": SELECTED}


def iteration_dir(loop_dir: str | Path, iteration: int | str) -> Path:
    """``<loop>/iter-00`` for iteration 0 (``iter-seed`` for the seed committee)."""
    name = f"iter-{iteration:02d}" if isinstance(iteration, int) else f"iter-{iteration}"
    return Path(loop_dir) / name


def stage_dir(loop_dir: str | Path, iteration: int | str, stage: str) -> Path:
    """The run folder of ``stage`` in a loop's iteration."""
    return iteration_dir(loop_dir, iteration) / stage


def run_verb(path: str | Path) -> str | None:
    """The verb of the aloe stage run folder at ``path``, or ``None`` when it is not one."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return (yaml.safe_load(manifest.read_text()) or {}).get("verb")
    except (OSError, yaml.YAMLError):
        return None


def structures_dir(run_dir: str | Path, verb: str) -> Path:
    """Where a ``verb`` run leaves the structures the next stage reads."""
    return Path(run_dir) / STRUCTURE_OUTPUTS[verb]


def records_dir(label_dir: str | Path) -> Path:
    """A label run's records."""
    return Path(label_dir) / RECORDS


def trained_models(train_dir: str | Path) -> list[Path]:
    """A train run's models, in member order (empty when none is trained yet)."""
    return sorted((Path(train_dir) / MODELS).glob(f"*{MODEL_SUFFIX}"))
