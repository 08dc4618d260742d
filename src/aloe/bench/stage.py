"""The bench stage: potentials side by side on the four benchmarks, one checkpoint per structure, then the report.

Run folder layout::

    run.yaml, summary.yaml, aloe.log
    structures/<bench>.jsonl           the structures each benchmark uses, at full precision (written once; every
                                       run of the folder, the first included, computes from what it reads back)
    chunks/<bench>/<potential>/<id>.json   one row per (benchmark, potential, structure): the checkpoint
    tables/<bench>.parquet             every row of a benchmark, columns documented in the schema
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
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from aloe.bench.base import COMMON_COLUMNS, Benchmark, BenchStructure, ReferenceSet
from aloe.bench.settings import BENCHMARK_NAMES, BenchSettings
from aloe.bench.structures import write_structure_file
from aloe.data.formats import json_default
from aloe.devices import wants_gpu
from aloe.errors import AloeError, InputFileError, exception_message, one_line
from aloe.executors import Executor, stage_executor
from aloe.progress import make_bar, progress_enabled
from aloe.runs import TMP_SUFFIX, atomic_path, open_stage_run, plain_data
from aloe.stagekit import StageResult, Timings

STRUCTURES_DIR = "structures"
#: Suffix of the lossless structure files under :data:`STRUCTURES_DIR` (older runs kept ``.extxyz``).
STRUCTURES_SUFFIX = ".jsonl"
#: Benchmark name -> its class (imported on first use).
BENCHMARK_CLASSES: dict[str, str] = {
    "equilibrium": "aloe.bench.equilibrium:Equilibrium",
    "forces": "aloe.bench.forces:ForceParity",
    "ev": "aloe.bench.ev:EVScan",
    "md": "aloe.bench.md:MDStability",
}


def benchmark_class(name: str) -> type[Benchmark]:
    """The :class:`~aloe.bench.base.Benchmark` subclass of ``name`` (equilibrium, forces, ev, md)."""
    import importlib

    try:
        module, attr = BENCHMARK_CLASSES[name].split(":")
    except KeyError:
        raise AloeError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARK_NAMES)})") from None
    return getattr(importlib.import_module(module), attr)


# ---- names on disk --------------------------------------------------------------------------------------------
def _slug(text: str, length: int = 48) -> str:
    """A file-name-safe, unique key of ``text``: readable prefix plus a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:length] or "x"
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def potential_label(spec: str) -> str:
    """How a potential is named in tables: the spec, or a model file's name."""
    path = Path(spec)
    return path.name if path.suffix == ".model" or path.is_file() else spec


def potential_key(spec: str) -> str:
    """The checkpoint folder of a potential: its label plus a hash of the spec and, for files, their bytes."""
    path = Path(spec)
    if path.is_file():
        stat = path.stat()
        return _file_potential_key(spec, str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return _key_of(spec, spec)


def _key_of(spec: str, identity: str) -> str:
    return _slug(potential_label(spec), 40)[:-9] + "-" + hashlib.sha1(identity.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=64)
def _file_potential_key(spec: str, resolved: str, mtime_ns: int, size: int) -> str:
    # Hashed once per file version, not once per checkpoint (a MACE file is tens of MB; a run asks for its key
    # three times per structure and benchmark).
    from aloe.potentials.base import file_digest

    return _key_of(spec, f"{resolved}:{file_digest(resolved)}")


def checkpoint_path(run_dir: Path, bench: str, spec: str, structure_id: str) -> Path:
    """Where the row of one (benchmark, potential, structure) is kept."""
    return Path(run_dir) / "chunks" / bench / potential_key(spec) / f"{_slug(structure_id)}.json"


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
def atom_energies_for(choice: str, reference: ReferenceSet | None) -> tuple[dict[str, float] | None, str]:
    """Isolated-atom energies for cohesive energies, and where they come from.

    ``reference``: the reference set's own (its labeler's), else MatPES r2SCAN; ``matpes-r2scan`` /
    ``matpes-pbe``: the published MatPES values; anything else: a JSON file ``{symbol: eV}`` (or an
    ``atom_energies.json`` of ``aloe bench reference`` with an ``energies`` key).
    """
    from aloe.data.stats import isolated_atom_energies

    published = isolated_atom_energies()
    if choice == "reference":
        if reference is not None and reference.atom_energies:
            return dict(reference.atom_energies), f"reference set ({reference.functional or 'its labeler'})"
        return dict(published["r2SCAN"]), "MatPES r2SCAN (published)"
    if choice in ("matpes-r2scan", "matpes-pbe"):
        key = "r2SCAN" if choice.endswith("r2scan") else "PBE"
        return dict(published[key]), f"MatPES {key} (published)"
    path = Path(choice)
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise InputFileError(path, "atom energies: no such file") from None
    except ValueError as exc:
        raise InputFileError(path, f"atom energies: not JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("energies"), dict):
        data = data["energies"]
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise InputFileError(path, "atom energies: expected an object {symbol: energy in eV}")
    return {str(k): float(v) for k, v in data.items()}, str(path)


def potential_atom_energies_for(spec: str, settings: BenchSettings) -> dict[str, float] | None:
    """The isolated-atom energies of ``spec``'s own energy scale, or ``None`` for the reference's ('same')."""
    choice = settings.potential_atom_energies
    if isinstance(choice, dict):
        choice = choice.get(spec, choice.get(potential_label(spec), "same"))
    if choice == "same":
        return None
    if choice == "reference":
        raise AloeError("potential_atom_energies: use 'same' for the reference's isolated-atom energies")
    return atom_energies_for(choice, None)[0]


def _read_set(spec: str, settings: BenchSettings) -> ReferenceSet:
    from aloe.bench.structures import read_reference_set

    return read_reference_set(spec, mixtures=settings.mixtures)


def benchmark_structures(
    settings: BenchSettings, kept: Path | None = None
) -> tuple[dict[str, list[BenchStructure]], ReferenceSet | None]:
    """The structures of every benchmark of the suite, and the reference set they came from (if any).

    ``kept``: the ``structures/`` folder of the run; a benchmark whose structures an earlier run of the folder
    wrote there uses those (a resumed run never rebuilds random mixtures or re-reads a changed file).
    """
    from aloe.bench.structures import split_roles

    reference = _read_set(settings.structures, settings) if settings.structures else None
    crystals, supercells = split_roles(reference) if reference is not None else ([], [])
    out: dict[str, list[BenchStructure]] = {}
    for bench in settings.suite:
        if kept is not None and kept_structures_path(kept, bench).exists():
            out[bench] = read_kept_structures(kept, bench)
            continue
        if bench in ("equilibrium", "forces"):
            if reference is None:
                raise AloeError(
                    f"the {bench} benchmark needs reference structures: give --structures (an 'aloe bench "
                    "reference' folder, MatPES documents, extxyz with energies and forces ...)"
                )
            chosen = crystals if bench == "equilibrium" else supercells
        elif bench == "ev":
            if settings.ev_structures:
                chosen = _read_set(settings.ev_structures, settings).structures
            elif reference is not None:
                chosen = crystals or reference.structures
            else:
                chosen = _read_set("builtin:elements", settings).structures
        else:
            if settings.md_structures == "reference":
                if reference is None:
                    raise AloeError("md_structures 'reference' needs --structures")
                chosen = crystals or reference.structures
            else:
                chosen = _read_set(settings.md_structures, settings).structures
        out[bench] = list(chosen[: settings.max_structures] if settings.max_structures else chosen)
        if not out[bench]:
            raise AloeError(
                f"the {bench} benchmark has no structures: {_why_none(bench, settings, reference)}"
            )
    return out, reference


def _why_none(bench: str, settings: BenchSettings, reference: ReferenceSet | None) -> str:
    name = reference.name if reference is not None else settings.structures
    if bench == "equilibrium":
        return f"{name} holds no crystal with a reference energy"
    if bench == "forces":
        return f"{name} holds no structure with reference forces"
    return "the set is empty"


def kept_structures_path(folder: Path, bench: str) -> Path:
    """The lossless structure file of ``bench`` in a run's ``structures/`` folder (an older run's ``.extxyz``)."""
    path = Path(folder) / f"{bench}{STRUCTURES_SUFFIX}"
    legacy = Path(folder) / f"{bench}.extxyz"
    return legacy if legacy.exists() and not path.exists() else path


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
    extra: dict[str, Any] = {}
    if task.bench == "equilibrium":
        extra["potential_atom_energies"] = potential_atom_energies_for(task.potential, settings)
    return benchmark_class(task.bench)(
        _potential(task.potential, settings),
        getattr(settings, task.bench),
        atom_energies=task.atom_energies,
        **extra,
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
            probe = _benchmark_for(
                BenchTask(b, spec, (), frozenset(), "", common["atom_energies"].get(b), "", "none", 0),
                settings,
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
                        common["atom_energies"].get(b),
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
    if "equilibrium" in settings.suite:
        energies, energies_source = atom_energies_for(settings.atom_energies, reference)
        for spec in settings.potentials:  # a bad table is one line now, not a failed row per structure
            potential_atom_energies_for(spec, settings)
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
        "atom_energies": {"equilibrium": energies},
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
            tasks.sort(key=lambda t: ("ev", "forces", "equilibrium", "md").index(t.bench))
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
        paths: dict[str, Any] = {}
        if settings.report != "none":
            from aloe.bench.report import write_report

            columns = {b: {**COMMON_COLUMNS, **benchmark_class(b).COLUMNS} for b in settings.suite}
            paths = write_report(
                rows, columns, metrics, run.path, title="aloe bench: " + ", ".join(settings.potentials)
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
