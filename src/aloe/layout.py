"""The run-folder contract between stages: folder and file names, and where each stage leaves its product.

Stages, the loop and the readers agree on these names through this module only. A stage's run folder::

    run.yaml, run.lock, aloe.log, summary.yaml     every stage (see aloe.runs)
    inputs/                                          structure files a stage read, converted to chunks
    chunks/                                          generate: candidate chunks (its product)
    metrics/, selected/, references.yaml            screen: per-chunk metrics; the selected structures (product)
    features/, selected/, points.parquet            select: per-chunk features; DIRECT's picks (product)
    records/, failures/, done/, work/, isolated_atoms.yaml    label: labelled records (product), failures ...
    members/, models/                                train: one folder per member; the trained models (product)

A bench run folder (``aloe bench``)::

    structures/<bench>.jsonl             the structures each benchmark uses, at full precision
    chunks/<bench>/<potential>/<id>.json one row per (benchmark, potential, structure): the checkpoint
    tables/<bench>.parquet               every row of a benchmark          (read: bench_table)
    metrics.parquet                      every metric, one per row (long)  (read: bench_metrics)
    comparison.md/.csv/.json, figures/, report.html

A bench reference run folder (``aloe bench reference``): crystals.extxyz, supercells.extxyz, atom_energies.json.

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
#: generate --mode near-eq: one log per chunk of what happened to each starting structure.
NEAR_EQ_LOGS = "near-eq"
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

# ---- bench --------------------------------------------------------------------------------------------------------
BENCH_STRUCTURES = "structures"
#: Suffix of the lossless structure files of a bench run (runs made before them kept ``.extxyz``).
BENCH_STRUCTURES_SUFFIX = ".jsonl"
TABLES = "tables"
FIGURES = "figures"
#: ``comparison.md``, ``comparison.csv``, ``comparison.json``.
COMPARISON = "comparison"
REPORT_HTML = "report.html"
BENCH_METRICS_FILE = "metrics.parquet"
#: Columns of the long metrics table: one metric of one potential (member) of one group per row.
METRICS_COLUMNS = ("group", "member", "benchmark", "potential", "metric", "value")
#: Files of an ``aloe bench reference`` run folder.
REFERENCE_CRYSTALS = "crystals.extxyz"
REFERENCE_SUPERCELLS = "supercells.extxyz"
REFERENCE_ATOM_ENERGIES = "atom_energies.json"

# ---- study ------------------------------------------------------------------------------------------------------
#: Folders and files of a study run (``aloe study``), see :mod:`aloe.study.stage`.
STUDY_TEST = "test"
STUDY_HELDOUT = "heldout"
STUDY_SEED = "seed"
STUDY_ARMS = "arms"
STUDY_BENCH = "bench"
STUDY_DATASETS = "datasets"
STUDY_MODELS = "models"
STUDY_STATE = "state.yaml"
STUDY_LEAKAGE = "leakage.json"
STUDY_METRICS = "study_metrics.parquet"

# ---- the loop ---------------------------------------------------------------------------------------------------
LOOP_CONFIG = "config.yaml"
LOOP_STATE = "state.yaml"
#: The metrics of every benchmarked committee in one long table (``group``: ``committee k``).
LOOP_BENCH_METRICS = "bench_metrics.parquet"

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


# ---- bench: paths and readers -----------------------------------------------------------------------------------
def bench_structures_file(run_dir: str | Path, bench: str) -> Path:
    """The structure file a bench run keeps for ``bench`` (an older run's ``.extxyz`` when that is what it has)."""
    folder = Path(run_dir) / BENCH_STRUCTURES
    path = folder / f"{bench}{BENCH_STRUCTURES_SUFFIX}"
    legacy = folder / f"{bench}.extxyz"
    return legacy if legacy.exists() and not path.exists() else path


def bench_checkpoint(run_dir: str | Path, bench: str, potential_key: str, structure_id: str) -> Path:
    """Where the row of one (benchmark, potential, structure) is kept (``potential_key``: its folder name)."""
    from aloe.runs import slug

    return Path(run_dir) / CHUNKS / bench / potential_key / f"{slug(structure_id)}.json"


def bench_table_path(run_dir: str | Path, bench: str) -> Path:
    """``tables/<bench>.parquet`` of a bench run."""
    return Path(run_dir) / TABLES / f"{bench}.parquet"


def bench_table(run_dir: str | Path, bench: str):
    """The rows of one benchmark of a bench run (a ``pyarrow.Table``; columns described in its schema)."""
    import pyarrow.parquet as pq

    return pq.read_table(bench_table_path(run_dir, bench))


def bench_metrics(run_dir: str | Path):
    """Every metric of a bench run as one long ``pyarrow.Table`` (:data:`METRICS_COLUMNS`).

    One row per (potential, benchmark, metric): a groupby away from the mean and spread over members.
    """
    import pyarrow.parquet as pq

    return pq.read_table(Path(run_dir) / BENCH_METRICS_FILE)


def study_metrics(run_dir: str | Path):
    """Every metric of every benchmarked member of a study, as one long ``pyarrow.Table``.

    Columns: arm, committee, budget_structures, budget_atoms, member, benchmark, potential, metric, value.
    """
    import pyarrow.parquet as pq

    return pq.read_table(Path(run_dir) / STUDY_METRICS)
