"""The bench stage: potentials side by side on the four benchmarks, one checkpoint per structure, then the report.

Run folder layout::

    run.yaml, summary.yaml, aloe.log
    structures/<bench>.jsonl           the structures each benchmark uses, at full precision (written once; every
                                       run of the folder, the first included, computes from what it reads back)
    chunks/<bench>/<potential>/<id>.json   one row per (benchmark, potential, structure): the checkpoint
    tables/<bench>.parquet             every row of a benchmark, columns documented in the schema
    metrics.parquet                    every metric of every potential, one per row (group, member, benchmark,
                                       potential, metric, value): the long table the loop and the study read
    comparison.md / .csv / .json       the metrics of every potential side by side
    figures/*.png, report.html         parity plots, EV curves, MD survival; the report with the failures

A task is a chunk of structures of one benchmark and one potential (the benchmark's batch: EV points of many
structures in one forward pass, many MD systems in one integrator). Each structure's row is written the moment it is
final, so a killed run resumes with the structures not yet done; a structure that fails is a row with its reason and
never stops the suite.

A resumed run (or a potential added to a finished folder) gives the rows of an uninterrupted run: the structures
come from the same lossless file, the chunks of a benchmark are cut from the whole set in the same places, and a
chunk whose structures are computed together by a batched model (EV points, force predictions, MD systems in one
integrator: float32 sums depend on the batch) is computed whole again, its finished rows kept as they were
written. Damaged checkpoints (empty, truncated, of another structure) are computed again, with a warning each.
Structures no benchmark can treat are refused before the run folder is made, or recorded as failed rows
(``invalid_structures``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from aloe.bench.base import COMMON_COLUMNS, Benchmark, BenchStructure, ReferenceSet, potential_label
from aloe.bench.equilibrium import atom_energies_for, potential_atom_energies_for
from aloe.bench.registry import BENCHMARKS, benchmark_class, run_order
from aloe.bench.settings import BenchSettings
from aloe.bench.structures import write_structure_file
from aloe.data.formats import json_default
from aloe.devices import wants_gpu
from aloe.errors import AloeError, exception_message, one_line
from aloe.executors import Executor, stage_executor
from aloe.layout import (
    BENCH_METRICS_FILE,
    BENCH_STRUCTURES,
    BENCH_STRUCTURES_SUFFIX,
    bench_checkpoint,
    bench_structures_file,
)
from aloe.progress import make_bar, progress_enabled
from aloe.runs import TMP_SUFFIX, atomic_path, open_stage_run, plain_data, slug
from aloe.stagekit import StageResult, Timings

STRUCTURES_DIR = BENCH_STRUCTURES
STRUCTURES_SUFFIX = BENCH_STRUCTURES_SUFFIX


# ---- names on disk --------------------------------------------------------------------------------------------
def potential_key(spec: str) -> str:
    """The checkpoint folder of a potential: its label plus a hash of the spec and, for files, their bytes."""
    path = Path(spec)
    if path.is_file():
        stat = path.stat()
        return _file_potential_key(spec, str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return slug(potential_label(spec), 40, identity=spec)


@functools.lru_cache(maxsize=64)
def _file_potential_key(spec: str, resolved: str, mtime_ns: int, size: int) -> str:
    # Hashed once per file version, not once per checkpoint (a MACE file is tens of MB; a run asks for its key
    # three times per structure and benchmark).
    from aloe.potentials.base import file_digest

    return slug(potential_label(spec), 40, identity=f"{resolved}:{file_digest(resolved)}")


def checkpoint_path(run_dir: Path, bench: str, spec: str, structure_id: str) -> Path:
    """Where the row of one (benchmark, potential, structure) is kept."""
    return bench_checkpoint(run_dir, bench, potential_key(spec), structure_id)


def write_checkpoint(path: Path, row: Mapping[str, Any]) -> None:
    """Write one row atomically (a killed run never leaves half a checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(row, default=json_default))


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The row of a checkpoint, or ``None`` when there is none or it is damaged (see :func:`checkpoint_problem`)."""
    row, problem = _load_checkpoint(path)
    return row if problem is None else None


def checkpoint_problem(path: Path, structure_id: str) -> str | None:
    """Why the checkpoint at ``path`` is no usable row of ``structure_id`` (``None``: it is; missing: ``"missing"``)."""
    row, problem = _load_checkpoint(path)
    if problem is None and row.get("structure_id") != structure_id:
        return f"holds structure {row.get('structure_id')!r}, not {structure_id!r}"
    return problem


def _load_checkpoint(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"unreadable ({exception_message(exc)})"
    if not text.strip():
        return {}, "empty"
    try:
        row = json.loads(text)
    except ValueError as exc:
        return {}, f"not JSON, truncated? ({exception_message(exc)})"
    if not isinstance(row, dict) or "structure_id" not in row or "potential" not in row:
        return {}, "not a row (no structure_id or potential)"
    return row, None


# ---- structures ---------------------------------------------------------------------------------------------
def _read_set(spec: str, settings: BenchSettings) -> ReferenceSet:
    from aloe.bench.structures import read_reference_set

    return read_reference_set(spec, mixtures=settings.mixtures)


def benchmark_structures(
    settings: BenchSettings, kept: Path | None = None
) -> tuple[dict[str, list[BenchStructure]], ReferenceSet | None]:
    """The structures of every benchmark of the suite (each chooses its own), and the reference set (if any).

    ``kept``: the ``structures/`` folder of the run; a benchmark whose structures an earlier run of the folder
    wrote there uses those (a resumed run never rebuilds random mixtures or re-reads a changed file).
    """
    reference = _read_set(settings.structures, settings) if settings.structures else None
    out: dict[str, list[BenchStructure]] = {}
    for bench in settings.suite:
        if kept is not None and kept_structures_path(kept, bench).exists():
            out[bench] = read_kept_structures(kept, bench)
            continue
        chosen = benchmark_class(bench).select_structures(
            settings, reference, lambda spec: _read_set(spec, settings)
        )
        out[bench] = list(chosen[: settings.max_structures] if settings.max_structures else chosen)
        if not out[bench]:
            raise AloeError(f"the {bench} benchmark has no structures: the set is empty")
    return out, reference


def kept_structures_path(folder: Path, bench: str) -> Path:
    """The lossless structure file of ``bench`` in a run's ``structures/`` folder (an older run's ``.extxyz``)."""
    return bench_structures_file(Path(folder).parent, bench)


def read_kept_structures(folder: Path, bench: str) -> list[BenchStructure]:
    """The structures a run of the folder keeps for ``bench``."""
    from aloe.bench.structures import read_reference_set, read_structure_file

    path = kept_structures_path(folder, bench)
    if path.suffix == STRUCTURES_SUFFIX:
        return read_structure_file(path)
    return read_reference_set(str(path)).structures  # a run made before the lossless files


def invalid_structures(
    sets: Mapping[str, Sequence[BenchStructure]], settings: BenchSettings
) -> dict[str, dict[str, str]]:
    """``{bench: {structure id: reason}}`` of the structures no benchmark can treat.

    Raises
    ------
    InputFileError
        With ``invalid_structures: refuse`` (the default): one line naming the first one's file and frame.
    """
    from aloe.bench.structures import structure_problem

    out: dict[str, dict[str, str]] = {}
    checked: dict[int, str | None] = {}  # a structure used by two benchmarks is checked once
    for b, structures in sets.items():
        for s in structures:
            if id(s) not in checked:
                checked[id(s)] = structure_problem(s.atoms, settings.min_distance)
            problem = checked[id(s)]
            if problem is None:
                continue
            if settings.invalid_structures == "refuse":
                raise AloeError(
                    f"{s.where}: {problem} (refused before anything was written; --set "
                    "invalid_structures=record makes such structures failed rows instead)"
                )
            out.setdefault(b, {})[s.id] = f"invalid structure: {problem}"
    return out


# ---- tasks ----------------------------------------------------------------------------------------------------
_POTENTIALS: dict[tuple[Any, ...], Any] = {}


def _potential(spec: str, settings: BenchSettings) -> Any:
    """The loaded potential (kept per process: a worker loads a model once for all its tasks)."""
    from aloe.potentials.registry import load_potential

    key = (spec, settings.device, settings.batch_size, settings.threads)
    if key not in _POTENTIALS:
        if len(_POTENTIALS) >= 4:
            _POTENTIALS.clear()
        options = {"device": settings.device, "batch_size": settings.batch_size, "threads": settings.threads}
        _POTENTIALS[key] = load_potential(spec, **options)
    return _POTENTIALS[key]


def _load_for_stage(spec: str, settings: BenchSettings) -> Any:
    """:func:`_potential`, with any failure of the user's code as one line (an unknown name already is one)."""
    try:
        return _potential(spec, settings)
    except AloeError:
        raise
    except Exception as exc:
        raise AloeError(f"cannot load potential {spec!r}: {one_line(exc)}") from None


@dataclass(frozen=True)
class BenchTask:
    """One chunk of structures of one benchmark and one potential: the unit of work of the stage's executor.

    Attributes
    ----------
    bench, potential
        Benchmark name and potential spec.
    structures
        The chunk, in set order.
    keep
        Ids among them whose rows are already written: computed again (their batch must be the one an
        uninterrupted run had) but not written again.
    settings_json
        The run's :class:`~aloe.bench.settings.BenchSettings` as JSON.
    atom_energies
        The reference's isolated-atom energies (equilibrium), or ``None``.
    run_dir
        The run folder.
    progress
        How the benchmark's own progress (MD steps) shows: ``bar`` (as the stage's), ``log`` (run log only) or
        ``none``.
    pid
        The stage's process (a task elsewhere runs in a worker).
    """

    bench: str
    potential: str
    structures: tuple[BenchStructure, ...]
    keep: frozenset[str]
    settings_json: str
    atom_energies: dict[str, float] | None
    run_dir: str
    progress: str
    pid: int


class TaskResult(NamedTuple):
    """What a task hands back: rows written, failed among them, seconds."""

    rows: int
    failed: int
    seconds: float


def _task_bar(task: BenchTask, total: int | None, desc: str, unit: str) -> Any:
    """The progress display of a benchmark's own count (MD steps) in a task.

    In the stage's process: the stage's kind of display (``bar``), or the run log only (``log``). In a pool worker
    only the run log (its output, when that is no terminal): bars of several workers on one terminal would
    overwrite each other.
    """
    from aloe.progress import make_bar, make_log_bar

    if task.progress == "none" or total is None:
        return make_bar(enabled=False)
    if task.progress == "bar" and task.pid == os.getpid():
        return make_bar(enabled=True, total=total, desc=desc, unit=unit)
    return make_log_bar(total=total, desc=desc, unit=unit)


def _benchmark_for(task: BenchTask, settings: BenchSettings) -> Benchmark:
    return benchmark_class(task.bench).for_stage(
        _potential(task.potential, settings), settings, spec=task.potential, atom_energies=task.atom_energies
    )


def _run_task(task: BenchTask) -> TaskResult:
    """One chunk of structures of one benchmark and one potential; each row is checkpointed as it is final."""
    from aloe.bench.base import failure_row

    t0 = time.perf_counter()
    settings = BenchSettings.model_validate_json(task.settings_json)
    label = potential_label(task.potential)
    structures = list(task.structures)
    run_dir = Path(task.run_dir)
    failed = written = 0

    def done(index: int, row: dict[str, Any]) -> None:
        nonlocal failed, written
        structure = structures[index]
        if structure.id in task.keep:
            return  # computed again for its batch's sake; the row written before stays
        failed += bool(row.get("error"))
        written += 1
        write_checkpoint(
            checkpoint_path(run_dir, task.bench, task.potential, structure.id), {"potential": label, **row}
        )

    try:
        benchmark = _benchmark_for(task, settings)
    except Exception as exc:  # a potential that cannot load fails its rows, not the suite
        reason = f"cannot load {label}: {one_line(exc)}"
        for k, s in enumerate(structures):
            done(k, failure_row(s, reason))
        return TaskResult(written, failed, time.perf_counter() - t0)
    unit = benchmark.PROGRESS_UNIT
    bar = _task_bar(task, benchmark.progress_total(structures), f"{task.bench} {label}", unit or "it")
    try:
        benchmark.progress = bar.update
        benchmark.calc_many(structures, done=done)
    finally:
        bar.close()
    return TaskResult(written, failed, time.perf_counter() - t0)


def plan_tasks(
    run_dir: Path,
    settings: BenchSettings,
    sets: Mapping[str, Sequence[BenchStructure]],
    invalid: Mapping[str, Mapping[str, str]],
    common: Mapping[str, Any],
) -> tuple[list[BenchTask], int]:
    """The tasks still to run, and how many rows an earlier run of the folder left.

    Chunks are cut from a benchmark's whole set (without its invalid structures) in the same places every time.
    A chunk with no usable checkpoint missing is skipped; one with some missing becomes a task (all of its
    structures when the benchmark computes them together, else only the missing ones). Damaged checkpoints are
    deleted, with one warning line each; invalid structures get their failure rows here, without a task.
    """
    from aloe.bench.base import failure_row
    from aloe.logs import echo

    tasks: list[BenchTask] = []
    resumed = 0
    for b in settings.suite:
        for spec in settings.potentials:
            label = potential_label(spec)
            atom_energies = common["atom_energies"] if benchmark_class(b).needs_atom_energies else None
            probe = _benchmark_for(
                BenchTask(b, spec, (), frozenset(), "", atom_energies, "", "none", 0), settings
            )
            done: set[str] = set()
            usable: list[BenchStructure] = []
            for s in sets[b]:
                path = checkpoint_path(run_dir, b, spec, s.id)
                problem = checkpoint_problem(path, s.id)
                if problem is None:
                    done.add(s.id)
                    resumed += 1
                elif problem != "missing":
                    echo(f"bench: warning: damaged checkpoint {path} ({problem}); computing it again")
                    path.unlink(missing_ok=True)
                reason = invalid.get(b, {}).get(s.id)
                if reason is None:
                    usable.append(s)
                elif s.id not in done:
                    write_checkpoint(path, {"potential": label, **failure_row(s, reason)})
            size = max(1, probe.task_size())
            coupled = probe.coupled()
            chunks = [usable[k : k + size] for k in range(0, len(usable), size)]
            if not coupled:  # independent structures: only the missing ones, regrouped
                missing = [s for s in usable if s.id not in done]
                chunks = [missing[k : k + size] for k in range(0, len(missing), size)]
            for chunk in chunks:
                if all(s.id in done for s in chunk):
                    continue
                keep = frozenset(s.id for s in chunk if s.id in done)
                tasks.append(
                    BenchTask(
                        b,
                        spec,
                        tuple(chunk),
                        keep,
                        common["settings_json"],
                        atom_energies,
                        str(run_dir),
                        common["progress"],
                        os.getpid(),
                    )
                )
    return tasks, resumed


# ---- the stage ------------------------------------------------------------------------------------------------
def bench(
    settings: BenchSettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Run the suite for every potential, resuming from the checkpoints of an earlier run of the folder.

    Returns
    -------
    StageResult
        ``counts``: rows, failures and resumed rows per benchmark; ``products``: ``metrics``
        (benchmark -> potential -> metrics) and ``report`` (paths of the tables, figures and report).
    """
    from aloe.logs import echo, log_open
    from aloe.runs import default_run_dir

    timings = Timings()
    output = Path(settings.output or default_run_dir("bench"))
    # Inputs are read and checked before the run folder is made: a bad file is one line and leaves nothing behind.
    with timings("structures"):
        sets, reference = benchmark_structures(settings, kept=output / STRUCTURES_DIR)
        for b, structures in sets.items():
            ids = [s.id for s in structures]
            if len(set(ids)) != len(ids):
                duplicate = next(i for i in ids if ids.count(i) > 1)
                raise AloeError(f"{b} structures: id {duplicate!r} occurs more than once")
        invalid = invalid_structures(sets, settings)
    with timings("load"):
        for spec in settings.potentials:  # an unknown name, a missing file, a failing factory: one line, now
            _load_for_stage(spec, settings)
    energies, energies_source = (None, "")
    if any(benchmark_class(b).needs_atom_energies for b in settings.suite):
        energies, energies_source = atom_energies_for(settings.atom_energies, reference)
        for spec in settings.potentials:  # a bad table is one line now, not a failed row per structure
            potential_atom_energies_for(spec, settings.potential_atom_energies)
    run, settings = open_stage_run(
        settings.model_copy(update={"output": output}),
        "bench",
        settings.RUNTIME_KEYS,
        subfolders=(STRUCTURES_DIR,),
    )
    kept = run.path / STRUCTURES_DIR
    for b, structures in sets.items():
        if not kept_structures_path(kept, b).exists():
            write_structure_file(kept_structures_path(kept, b), structures)
        # The first run computes from what it reads back too: a resumed run sees exactly the same numbers.
        sets[b] = read_kept_structures(kept, b)
    for leftover in (run.path / "chunks").glob(f"*/*/.*{TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)  # half-written checkpoints of a killed run

    # Decided here, once: a pool worker cannot tell whether the CLI shows progress or has a run log.
    progress = "bar" if progress_enabled(settings.progress) else ("log" if log_open() else "none")
    common = {
        "settings_json": settings.model_dump_json(),
        "atom_energies": energies,
        "progress": progress,
    }
    tasks, resumed = plan_tasks(run.path, settings, sets, invalid, common)
    total = sum(len(t.structures) - len(t.keep) for t in tasks)
    if resumed:
        echo(f"bench: {resumed} rows from an earlier run of {run.path}, {total} to compute")
    with timings("benchmarks"), stage_executor(executor, settings) as ex:
        bar = make_bar(enabled=settings.progress, total=total, desc="bench", unit="structure")
        failed = 0
        try:
            # Cheap benchmarks first: a user sees the EV and forces tables while the MD runs.
            order = run_order(settings.suite)
            tasks.sort(key=lambda t: order.index(t.bench))
            for result in ex.map_unordered(
                _run_task, tasks, limit=settings.task_limit(), gpu=wants_gpu(settings.device)
            ):
                failed += result.failed
                bar.update(result.rows)
                bar.set_postfix(failed=failed)
        finally:
            bar.close()

    with timings("report"):
        rows = collect_rows(run.path, settings, sets)
        metrics = {
            b: {
                potential_label(spec): benchmark_class(b).aggregate(
                    [r for r in rows[b] if r.get("potential") == potential_label(spec)]
                )
                for spec in settings.potentials
            }
            for b in settings.suite
        }
        from aloe.bench.report.tables import metrics_rows, write_metrics_table

        members = {potential_label(spec): k for k, spec in enumerate(settings.potentials)}
        paths: dict[str, Any] = {
            "metrics": write_metrics_table(
                metrics_rows(metrics, members=members), run.path / BENCH_METRICS_FILE
            )
        }
        if settings.report != "none":
            from aloe.bench.report import write_report

            columns = {b: {**COMMON_COLUMNS, **benchmark_class(b).COLUMNS} for b in settings.suite}
            paths.update(
                write_report(
                    rows, columns, metrics, run.path, title="aloe bench: " + ", ".join(settings.potentials)
                )
            )
    counts = {
        b: {
            "structures": len(sets[b]),
            "rows": len(rows[b]),
            "failed": sum(bool(r.get("error")) for r in rows[b]),
        }
        for b in settings.suite
    }
    counts["resumed_rows"] = resumed
    summary = run.write_summary(
        counts,
        timings.total(),
        extra={
            "potentials": [potential_label(p) for p in settings.potentials],
            "atom_energies": energies_source or None,
            "reference_set": reference.name if reference is not None else None,
            "reference_functional": reference.functional if reference is not None else None,
            "metrics": plain_data(metrics),
        },
        command=command,
    )
    run.close()
    return StageResult(
        "bench",
        run.path,
        counts,
        timings.total(),
        summary,
        {"metrics": metrics, "report": paths, "rows": rows},
    )


def collect_rows(
    run_dir: Path, settings: BenchSettings, sets: Mapping[str, Sequence[BenchStructure]]
) -> dict[str, list[dict[str, Any]]]:
    """Every checkpointed row of the suite's benchmarks and potentials, in structure order per potential.

    A row that is missing or damaged now (a checkpoint lost after its task ended) is left out with a warning line;
    the next run of the folder computes it.
    """
    from aloe.logs import echo

    out: dict[str, list[dict[str, Any]]] = {}
    for b in settings.suite:
        rows: list[dict[str, Any]] = []
        for spec in settings.potentials:
            for s in sets[b]:
                path = checkpoint_path(run_dir, b, spec, s.id)
                problem = checkpoint_problem(path, s.id)
                if problem is None:
                    rows.append(read_checkpoint(path))
                else:
                    echo(
                        f"bench: warning: no row for {b} / {potential_label(spec)} / {s.id} ({problem}: {path})"
                    )
        out[b] = rows
    return out


#: Benchmark name -> class (the table of :mod:`aloe.bench.registry`; kept under its old name).
BENCHMARK_CLASSES = BENCHMARKS

__all__ = [
    "BENCHMARK_CLASSES",
    "atom_energies_for",
    "bench",
    "benchmark_class",
    "benchmark_structures",
    "checkpoint_path",
    "collect_rows",
    "potential_label",
]
