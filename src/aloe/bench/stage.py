"""The bench stage: potentials side by side on the four benchmarks, one checkpoint per structure, then the report.

Run folder layout::

    run.yaml, summary.yaml, aloe.log
    structures/<bench>.extxyz          the structures each benchmark used (made once: a resumed run reads them back)
    chunks/<bench>/<potential>/<id>.json   one row per (benchmark, potential, structure): the checkpoint
    tables/<bench>.parquet             every row of a benchmark, columns documented in the schema
    comparison.md / .csv / .json       the metrics of every potential side by side
    figures/*.png, report.html         parity plots, EV curves, MD survival; the report with the failures

A task is a chunk of structures of one benchmark and one potential (the benchmark's batch: EV points of many
structures in one forward pass, many MD systems in one integrator). Each structure's row is written the moment it is
final, so a killed run resumes with the structures not yet done; a structure that fails is a row with its reason and
never stops the suite.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aloe.bench.base import COMMON_COLUMNS, Benchmark, BenchStructure, ReferenceSet
from aloe.bench.settings import BENCHMARK_NAMES, BenchSettings
from aloe.data.formats import json_default
from aloe.devices import wants_gpu
from aloe.errors import AloeError, InputFileError
from aloe.executors import Executor, stage_executor
from aloe.progress import make_bar, progress_enabled
from aloe.runs import TMP_SUFFIX, atomic_path, open_stage_run, plain_data
from aloe.stagekit import StageResult, Timings

STRUCTURES_DIR = "structures"
#: Benchmark name -> its class (imported on first use).
BENCHMARK_CLASSES: dict[str, str] = {
    "equilibrium": "aloe.bench.equilibrium:Equilibrium",
    "forces": "aloe.bench.forces:ForceParity",
    "ev": "aloe.bench.ev:EVScan",
    "md": "aloe.bench.md:MDStability",
}
#: Structures per task when a benchmark's settings name no batch of their own.
DEFAULT_TASK_STRUCTURES = 4


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
    """The row of a checkpoint, or ``None`` when there is none (an unreadable one is computed again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
    from aloe.bench.structures import read_reference_set, split_roles

    reference = _read_set(settings.structures, settings) if settings.structures else None
    crystals, supercells = split_roles(reference) if reference is not None else ([], [])
    out: dict[str, list[BenchStructure]] = {}
    for bench in settings.suite:
        if kept is not None and (kept / f"{bench}.extxyz").exists():
            out[bench] = read_reference_set(str(kept / f"{bench}.extxyz")).structures
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
    return out, reference


def _write_structures(path: Path, structures: Sequence[BenchStructure]) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for s in structures:
        atoms = s.atoms.copy()
        atoms.info = {"bench_id": s.id, "source": s.source}
        results: dict[str, Any] = {}
        if s.energy is not None:
            results["energy"] = float(s.energy)
        if s.forces is not None:
            results["forces"] = s.forces
        if s.stress is not None:
            results["stress"] = s.stress
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    with atomic_path(path) as tmp:
        write(str(tmp), frames, format="extxyz")


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


def _md_progress(task: dict[str, Any]) -> bool:
    """Whether an MD task shows its steps: as the stage does, and in another process only where lines go to a log.

    A pool worker of the CLI writes to the run's ``aloe.log`` (plain lines, one per batch of systems); on a terminal
    that several workers share, their bars would overwrite each other, so they stay silent there.
    """
    if not task["progress"]:
        return False
    if task["pid"] == os.getpid():
        return True
    from aloe.logs import console

    return not console().isatty()


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One chunk of structures of one benchmark and one potential; each row is checkpointed as it is final."""
    t0 = time.perf_counter()
    settings = BenchSettings.model_validate_json(task["settings"])
    bench = task["bench"]
    spec = task["potential"]
    label = potential_label(spec)
    structures: list[BenchStructure] = task["structures"]
    cls = benchmark_class(bench)
    failed = 0
    try:
        if bench == "md":  # MD shows its steps (a batch of systems can run for hours)
            extra: dict[str, Any] = {"progress": _md_progress(task)}
        elif bench == "equilibrium":
            extra = {"potential_atom_energies": potential_atom_energies_for(spec, settings)}
        else:
            extra = {}
        benchmark = cls(
            _potential(spec, settings), getattr(settings, bench), atom_energies=task["atom_energies"], **extra
        )
    except Exception as exc:  # a potential that cannot load fails its rows, not the suite
        from aloe.bench.base import failure_row, one_line

        reason = f"cannot load {label}: {one_line(exc)}"
        for s in structures:
            write_checkpoint(
                checkpoint_path(Path(task["run_dir"]), bench, spec, s.id),
                {"potential": label, **failure_row(s, reason)},
            )
        return {"structures": len(structures), "failed": len(structures), "seconds": time.perf_counter() - t0}

    def done(index: int, row: dict[str, Any]) -> None:
        nonlocal failed
        failed += bool(row.get("error"))
        row = {"potential": label, **row}
        write_checkpoint(checkpoint_path(Path(task["run_dir"]), bench, spec, structures[index].id), row)

    benchmark.calc_many(structures, done=done)
    return {"structures": len(structures), "failed": failed, "seconds": time.perf_counter() - t0}


def _task_size(bench: str, settings: BenchSettings) -> int:
    sub = getattr(settings, bench)
    for name in ("batch_structures", "batch_systems"):
        if hasattr(sub, name):
            return max(1, int(getattr(sub, name)))
    return DEFAULT_TASK_STRUCTURES


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
    from aloe.logs import echo
    from aloe.runs import default_run_dir

    timings = Timings()
    output = Path(settings.output or default_run_dir("bench"))
    # Inputs are read before the run folder is made: a bad file is one line and leaves nothing behind.
    with timings("structures"):
        sets, reference = benchmark_structures(settings, kept=output / STRUCTURES_DIR)
        for b, structures in sets.items():
            ids = [s.id for s in structures]
            if len(set(ids)) != len(ids):
                duplicate = next(i for i in ids if ids.count(i) > 1)
                raise AloeError(f"{b} structures: id {duplicate!r} occurs more than once")
    with timings("load"):
        for (
            spec
        ) in settings.potentials:  # an unknown name or a missing file is one line before anything is written
            _potential(spec, settings)
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
    for b, structures in sets.items():
        kept = run.path / STRUCTURES_DIR / f"{b}.extxyz"
        if not kept.exists():
            _write_structures(kept, structures)
    for leftover in (run.path / "chunks").glob(f"*/*/.*{TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)  # half-written checkpoints of a killed run

    settings_json = settings.model_dump_json()
    show_progress = progress_enabled(
        settings.progress
    )  # decided here: a worker cannot tell (see _md_progress)
    tasks: list[dict[str, Any]] = []
    resumed = 0
    for b in settings.suite:
        size = _task_size(b, settings)
        for spec in settings.potentials:
            todo = [s for s in sets[b] if not checkpoint_path(run.path, b, spec, s.id).exists()]
            resumed += len(sets[b]) - len(todo)
            for start in range(0, len(todo), size):
                tasks.append(
                    {
                        "settings": settings_json,
                        "bench": b,
                        "potential": spec,
                        "structures": todo[start : start + size],
                        "atom_energies": energies if b == "equilibrium" else None,
                        "run_dir": str(run.path),
                        "progress": show_progress,
                        "pid": os.getpid(),
                    }
                )
    total = sum(len(t["structures"]) for t in tasks)
    if resumed:
        echo(f"bench: {resumed} rows from an earlier run of {run.path}, {total} to compute")
    with timings("benchmarks"), stage_executor(executor, settings) as ex:
        bar = make_bar(enabled=settings.progress, total=total, desc="bench", unit="structure")
        failed = 0
        try:
            # Cheap benchmarks first: a user sees the EV and forces tables while the MD runs.
            tasks.sort(key=lambda t: ("ev", "forces", "equilibrium", "md").index(t["bench"]))
            for result in ex.map_unordered(
                _run_task, tasks, limit=settings.task_limit(), gpu=wants_gpu(settings.device)
            ):
                failed += result["failed"]
                bar.update(result["structures"])
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
    """Every checkpointed row of the suite's benchmarks and potentials, in structure order per potential."""
    out: dict[str, list[dict[str, Any]]] = {}
    for b in settings.suite:
        rows: list[dict[str, Any]] = []
        for spec in settings.potentials:
            for s in sets[b]:
                row = read_checkpoint(checkpoint_path(run_dir, b, spec, s.id))
                if row is not None:
                    rows.append(row)
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
