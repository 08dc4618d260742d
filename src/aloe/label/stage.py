"""The label stage: every input structure -> records in the MatPES schema, or a failure with its class.

Run folder layout::

    run.yaml, summary.yaml
    inputs/                    structure files converted to candidate chunks (only when the input is not a run)
    isolated_atoms.yaml        the labeler's isolated-atom energies (eV) used for cohesive energies, and their source
    done/<chunk>/<row>.json    one file per finished structure (records or failure), written atomically
    records/<chunk>.jsonl      the records of a finished input chunk (JSON lines, MP-ALOE file format)
    failures/<chunk>.jsonl     its failures: id, class, message, every attempt, the structure
    work/<chunk>-<row>/        the code's own files (kept for failures by default)

A structure is labelled at most once per settings: a killed run resumes with the structures that have no ``done``
file, finished chunks are merged into ``records/`` and ``failures/`` (the ``done`` files then go), and failed
structures are tried again only with ``retry_failed``. Each structure runs in a child process by default
(``isolate``), so a crash, a kill or a timeout costs that structure only.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from aloe import layout
from aloe.data.candidates import count_rows, read_chunk
from aloe.data.inputs import InputChunk, prepare_inputs
from aloe.data.records import make_record, settings_id
from aloe.elements import z_to_symbol
from aloe.errors import AloeError
from aloe.executors import Executor, InlineExecutor, stage_executor
from aloe.label.base import Calculation, Labeler, LabelerError, check_physical
from aloe.label.isolation import call_isolated
from aloe.label.registry import load_labeler
from aloe.label.settings import LabelSettings
from aloe.progress import make_bar
from aloe.runs import atomic_path, open_stage_run, write_yaml_atomic
from aloe.stagekit import StageResult, Timings
from aloe.structures import StructureBatch, cell_problem

if TYPE_CHECKING:
    from ase import Atoms

RECORDS_DIR = layout.RECORDS
FAILURES_DIR = layout.FAILURES
DONE_DIR = layout.DONE
WORK_DIR = layout.WORK
ATOMS_FILE = layout.ISOLATED_ATOMS_FILE
PUBLISHED_REFS = Path(__file__).resolve().parents[1] / "data" / "matpes_elemental_refs.json"


# ---- one structure ----------------------------------------------------------------------------------------
def run_calculation(
    labeler: Labeler, atoms: Atoms, workdir: Path, timeout: float | None, isolate: bool
) -> list[Calculation]:
    """``labeler.calculate`` in this process, or in a child process that is killed after ``timeout`` seconds.

    The child is a fresh interpreter (:func:`aloe.label.isolation.call_isolated`), which any process may start: a
    local pool worker, a daemonic Dask worker, a Slurm job. A crash, a kill or a timeout costs this structure only
    (``LabelerError`` ``crashed`` or ``timeout``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if not isolate:
        return labeler.calculate(atoms, workdir)
    # the bound method, not a function of this module: the child then imports the labeler's module only
    return call_isolated(labeler.calculate, (atoms, workdir), workdir, timeout)


def _kill_after(labeler: Labeler, settings: LabelSettings) -> float | None:
    """How long the stage waits before it kills a calculation process."""
    if settings.timeout is None:
        return None
    if labeler.handles_timeout:  # the backend stops its own processes; give it time to do so and report
        return settings.timeout * 1.1 + 30.0
    return settings.timeout


def label_structure(
    labeler: Labeler,
    atoms: Atoms,
    aloe_id: str,
    workdir: Path,
    settings: LabelSettings,
    isolated: dict[str, float] | None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Label one structure with retries; returns ``{"status", "records", "failure", "attempts", "seconds"}``.

    ``status`` is ``ok`` (records), ``written`` (inputs written, nothing run: VASP ``mode: write``) or ``failed``.
    """
    t0 = time.perf_counter()
    attempts: list[dict[str, Any]] = []
    # A degenerate cell or NaN coordinates: no code can treat it, and it costs this structure only.
    problem = StructureBatch.from_atoms([atoms]).problems().get(0)
    if problem:
        failure = {"kind": "input", "message": f"invalid structure: {problem}"}
        return {"status": "failed", "records": [], "failure": failure, "attempts": [], "seconds": 0.0}
    reason = labeler.supports(atoms)
    if reason:
        failure = {"kind": "unsupported", "message": reason}
        return {"status": "failed", "records": [], "failure": failure, "attempts": [], "seconds": 0.0}
    # Per failure class, the overrides of this backend for each further attempt; steps that would not change its
    # settings are dropped (another identical attempt cannot help; VASP corrects itself inside custodian).
    prefix = f"{settings.labeler}."
    pending = {
        kind: [
            o
            for o in (
                {k.removeprefix(prefix): v for k, v in st.items() if k.startswith(prefix)} for st in steps
            )
            if o
        ]
        for kind, steps in settings.retry.items()
    }
    overrides: dict[str, Any] = {}
    current = labeler
    while True:
        t_attempt = time.perf_counter()
        attempt_dir = workdir / f"attempt-{len(attempts)}" if attempts else workdir
        try:
            calcs = run_calculation(
                current, atoms, attempt_dir, _kill_after(current, settings), settings.isolate
            )
            for calc in calcs:
                check_physical(calc, settings.max_force, settings.max_energy_per_atom)
        except LabelerError as exc:
            attempts.append(
                {
                    "kind": exc.kind,
                    "message": exc.message,
                    "seconds": round(time.perf_counter() - t_attempt, 3),
                    "overrides": dict(overrides),
                }
            )
            steps = pending.get(exc.kind) or []
            if not steps:
                failure = {"kind": exc.kind, "message": exc.message}
                return {
                    "status": "failed",
                    "records": [],
                    "failure": failure,
                    "attempts": attempts,
                    "seconds": time.perf_counter() - t0,
                }
            overrides.update(steps.pop(0))
            current = labeler.with_overrides(overrides)
            continue
        break
    code_settings = current.label_settings()
    version = current.code_version()
    records = [
        make_record(
            calc.atoms,
            calc.energy,
            calc.forces,
            calc.stress,
            functional=current.functional,
            code=current.code,
            code_version=version,
            settings=code_settings,
            aloe_id=aloe_id,
            step=calc.step,
            magmoms=calc.magmoms,
            isolated_atom_energies=isolated,
            extra_provenance={**(provenance or {}), "attempts": len(attempts) + 1, **calc.info},
        )
        for calc in calcs
    ]
    return {
        "status": "ok" if records else "written",
        "records": records,
        "failure": None,
        "attempts": attempts,
        "seconds": time.perf_counter() - t0,
    }


def _label_task(task: dict[str, Any]) -> dict[str, Any]:
    settings = LabelSettings.model_validate_json(task["settings"])
    labeler = load_labeler(settings)
    workdir = Path(task["workdir"])
    if workdir.exists():  # leftovers of a killed attempt
        shutil.rmtree(workdir)
    provenance = {"aloe_input": {"chunk": task["chunk"], "row": task["row"]}}
    result = label_structure(
        labeler, task["atoms"], task["id"], workdir, settings, task["isolated"], provenance
    )
    result.update({"id": task["id"], "chunk": task["chunk"], "row": task["row"]})
    if result["failure"] is not None:
        result["structure"] = _structure_dict(task["atoms"])
    # Written-only inputs (VASP mode 'write') are the product: always kept.
    keep = (
        settings.keep_workdirs == "all"
        or result["status"] == "written"
        or (settings.keep_workdirs == "failed" and result["status"] == "failed")
    )
    if not keep and workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)
    target = Path(task["done"])
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(result))
    return {
        "chunk": task["chunk"],
        "status": result["status"],
        "kind": (result["failure"] or {}).get("kind"),
        "records": len(result["records"]),
        "seconds": result["seconds"],
        "retried": int(result["status"] == "ok" and bool(result["attempts"])),
    }


# ---- isolated atoms -------------------------------------------------------------------------------------------
def _atom_task(task: dict[str, Any]) -> tuple[str, float | None, str | None]:
    settings = LabelSettings.model_validate_json(task["settings"])
    labeler = load_labeler(settings)
    workdir = Path(task["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        energy = _isolated_energy(labeler, task["symbol"], workdir, settings)
    except LabelerError as exc:
        return task["symbol"], None, f"{exc.kind}: {exc.message}"
    except NotImplementedError as exc:
        return task["symbol"], None, str(exc)
    return task["symbol"], energy, None


def _isolated_energy(labeler: Labeler, symbol: str, workdir: Path, settings: LabelSettings) -> float:
    if not settings.isolate:
        return float(labeler.isolated_atom_energy(symbol, workdir))
    # In a child process like every calculation (works in daemonic Dask workers too).
    try:
        energy = call_isolated(
            labeler.isolated_atom_energy,
            (symbol, workdir),
            workdir,
            settings.timeout,
            passthrough=(NotImplementedError,),
        )
    except LabelerError as exc:
        if exc.kind == "timeout":
            raise LabelerError("timeout", f"isolated {symbol} atom {exc.message}") from None
        raise
    return float(energy)


def isolated_atom_energies(
    labeler: Labeler,
    elements: list[str],
    settings: LabelSettings,
    run_dir: Path,
    executor: Executor | None = None,
) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """Isolated-atom energies for ``elements`` and a description of their source (written to the run folder).

    Missing energies are computed on ``executor`` (one element per task; default: in this process) and cached.
    """
    if settings.isolated_atoms == "none":
        return None, {"source": "none"}
    if settings.isolated_atoms == "published":
        if labeler.code != "vasp":
            raise AloeError(
                "isolated_atoms 'published' are VASP energies with MatPES settings; with labeler "
                f"{labeler.code} use 'compute' (or 'none')"
            )
        data = json.loads(PUBLISHED_REFS.read_text())
        table = data["functionals"].get(labeler.functional, {}).get("isolated_atom", {})
        return {e: table[e] for e in elements if e in table}, {"source": data["source"]}
    from aloe.cache import cache_dir

    sid = settings_id(labeler.code, labeler.label_settings())
    cache_file = cache_dir() / "isolated-atoms" / f"{labeler.code}-{sid}.yaml"
    cached: dict[str, float] = {}
    if cache_file.exists():
        cached = (yaml.safe_load(cache_file.read_text()) or {}).get("energies", {})
    from ase import Atoms

    # Elements the labeler cannot treat have no isolated-atom energy either (their structures fail 'unsupported').
    missing = [
        e for e in elements if e not in cached and labeler.supports(Atoms(e, cell=[10, 10, 10])) is None
    ]
    errors: dict[str, str] = {}
    if missing:
        tasks = [
            {
                "settings": settings.model_copy(update={"output": None}).model_dump_json(),
                "symbol": e,
                "workdir": str(run_dir / WORK_DIR / f"atom-{e}"),
            }
            for e in missing
        ]
        bar = make_bar(enabled=settings.progress, total=len(tasks), desc="isolated atoms", unit="atom")
        executor = executor or InlineExecutor()
        for symbol, energy, error in executor.map_unordered(_atom_task, tasks, limit=settings.task_limit()):
            if energy is None:
                errors[symbol] = error or "failed"
            else:
                cached[symbol] = energy
                current = (yaml.safe_load(cache_file.read_text()) or {}) if cache_file.exists() else {}
                merged = {**current.get("energies", {}), symbol: energy}
                write_yaml_atomic(
                    cache_file,
                    {"code": labeler.code, "settings": labeler.label_settings(), "energies": merged},
                )
            bar.update(1)
        bar.close()
    energies = {e: cached[e] for e in elements if e in cached}
    info: dict[str, Any] = {"source": f"computed by {labeler.code} (cached in {cache_file})"}
    if errors:
        info["failed"] = errors
    return energies, info


# ---- the stage ----------------------------------------------------------------------------------------------
def label(
    settings: LabelSettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Run the label stage (resumable; see the module docstring).

    ``executor`` runs the isolated atoms and the structures, one per task (the caller's, left open); default: one
    opened from the run options. Each calculation runs in a child process of its task (``isolate``), which works
    in Dask workers too: a crash or a timeout costs that structure, not the worker.
    """
    if settings.input is None:
        raise AloeError("label needs an input: a select run folder or a structure file")
    with stage_executor(executor, settings) as executor:
        return _label(settings, command, executor)


def _label(settings: LabelSettings, command: str | None, executor: Executor) -> StageResult:
    timings = Timings()
    run, settings = open_stage_run(
        settings, "label", LabelSettings.RUNTIME_KEYS, (RECORDS_DIR, FAILURES_DIR, DONE_DIR, WORK_DIR)
    )
    t0 = time.perf_counter()
    chunks = prepare_inputs(
        settings.input, run.path, settings.chunk_size, settings.progress, reader="aloe label"
    )
    labeler = load_labeler(settings)
    timings["inputs"] = time.perf_counter() - t0

    # What is left to do: rows without a done file, not in a merged chunk (failed ones again with retry_failed).
    t0 = time.perf_counter()
    todo: list[tuple[InputChunk, int, str, Atoms]] = []
    elements: set[str] = set()
    for chunk in chunks:
        rows = read_chunk(chunk.path)
        batch = rows.batch()  # its atoms also carry a degenerate cell on to its per-structure failure
        finished = _finished_rows(run.path, chunk.name, settings.retry_failed)
        for r in range(len(rows)):
            # Every row's elements, finished or not: the isolated-atom table (training's E0s) must cover all the
            # run's records, also when a resumed run has only some elements left to label.
            elements.update(
                z_to_symbol(int(z)) for z in set(rows.numbers[rows.offsets[r] : rows.offsets[r + 1]])
            )
            if r in finished:
                continue
            atoms = batch.to_atoms(r)
            atoms.info.clear()
            todo.append((chunk, r, rows.label(r), atoms))
    isolated, isolated_info = isolated_atom_energies(labeler, sorted(elements), settings, run.path, executor)
    write_yaml_atomic(
        run.path / ATOMS_FILE,
        {
            "labeler": labeler.code,
            "functional": labeler.functional,
            "settings": labeler.label_settings(),
            "energies": isolated or {},
            **isolated_info,
        },
    )
    timings["isolated_atoms"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    settings_json = settings.model_copy(update={"output": None}).model_dump_json()
    tasks = (
        {
            "settings": settings_json,
            "chunk": chunk.name,
            "row": r,
            "id": aloe_id,
            "atoms": atoms,
            "isolated": isolated,
            "workdir": str(run.path / WORK_DIR / f"{chunk.name}-{r:06d}"),
            "done": str(run.path / DONE_DIR / chunk.name / f"{r:06d}.json"),
        }
        for chunk, r, aloe_id, atoms in todo
    )
    outcome: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    seconds: list[float] = []
    n_records = retried = 0
    bar = make_bar(
        enabled=settings.progress, total=len(todo), desc=f"label ({labeler.code})", unit="structure"
    )
    for result in executor.map_unordered(_label_task, tasks, limit=settings.task_limit()):
        outcome[result["status"]] += 1
        if result["kind"]:
            kinds[result["kind"]] += 1
        n_records += result["records"]
        retried += result["retried"]
        seconds.append(result["seconds"])
        bar.update(1)
        bar.set_postfix(ok=outcome["ok"], failed=outcome["failed"])
    bar.close()
    timings["label"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    totals = _merge_chunks(run.path, chunks)
    timings["merge"] = time.perf_counter() - t0
    plots: list[str] = []
    if (
        totals["records"]
        and totals["labelled"] == totals["structures"] - totals["failed"] - totals["written"]
    ):
        from aloe.data.stats import dataset_stats

        # The paper's dataset figure for these labels: cohesive energy, |F| and pressure distributions.
        t0 = time.perf_counter()
        stats = dataset_stats(
            [run.path], run.path / "plots", names=[f"{labeler.code} ({labeler.functional})"]
        )
        plots = [
            str(Path(f).relative_to(run.path)) for key, f in stats["files"].items() if f.endswith(".png")
        ]
        timings["plots"] = time.perf_counter() - t0
    counts: dict[str, Any] = {
        "structures": totals["structures"],
        "labelled": totals["labelled"],
        "records": totals["records"],
        "failed": totals["failed"],
        "failed_by_class": dict(sorted(totals["failed_by_class"].items())),
        "written_only": totals["written"],
        "labelled_now": outcome["ok"],
        "failed_now": outcome["failed"],
        "failed_now_by_class": dict(sorted(kinds.items())),
        "succeeded_after_retry_now": retried,
        "resumed": len(todo) < totals["structures"],
    }
    if seconds:
        s = np.asarray(seconds)
        counts["seconds_per_structure"] = {
            "mean": round(float(s.mean()), 3),
            "median": round(float(np.median(s)), 3),
            "max": round(float(s.max()), 3),
        }
    extra = {
        "labeler": {
            "code": labeler.code,
            "functional": labeler.functional,
            "stand_in": labeler.stand_in,
            "code_version": labeler.code_version(),
            "settings": labeler.label_settings(),
        },
        "isolated_atoms": {"file": ATOMS_FILE, **isolated_info},
        "plots": plots,
    }
    if labeler.stand_in:
        extra["warning"] = f"{labeler.functional}: these labels are a stand-in, not DFT"
    seconds_by_phase = timings.total()
    summary = run.write_summary(counts, seconds_by_phase, extra=extra, command=command)
    return StageResult("label", run.path, counts, seconds_by_phase, summary)


# ---- bookkeeping --------------------------------------------------------------------------------------------
def _finished_rows(run_dir: Path, chunk: str, retry_failed: bool) -> set[int]:
    """Rows of ``chunk`` that need no labelling (merged or done; failed ones count unless ``retry_failed``)."""
    return {
        row
        for row, result in _chunk_results(run_dir, chunk).items()
        if not (retry_failed and result["status"] == "failed")
    }


def _chunk_results(run_dir: Path, chunk: str) -> dict[int, dict[str, Any]]:
    """Every finished row of ``chunk``: its merged records/failure, overlaid by its newer ``done`` file."""
    by_row: dict[int, dict[str, Any]] = {}
    for line in _lines(run_dir / RECORDS_DIR / f"{chunk}.jsonl"):
        doc = json.loads(line)
        row = int(doc["provenance"]["aloe_input"]["row"])
        by_row.setdefault(row, {"status": "ok", "records": []})["records"].append(doc)
    for line in _lines(run_dir / FAILURES_DIR / f"{chunk}.jsonl"):
        doc = json.loads(line)
        by_row[int(doc["row"])] = {"status": "failed", "failure_doc": doc}
    for path in _done_files(run_dir, chunk):
        result = json.loads(path.read_text())
        by_row[int(result["row"])] = result
    return by_row


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _done_files(run_dir: Path, chunk: str) -> list[Path]:
    return sorted((run_dir / DONE_DIR / chunk).glob("*.json"))


def _merge_chunks(run_dir: Path, chunks: list[InputChunk]) -> dict[str, Any]:
    """Fold finished chunks' done files into records/ and failures/; count everything."""
    totals: dict[str, Any] = {
        "structures": 0,
        "labelled": 0,
        "records": 0,
        "failed": 0,
        "written": 0,
        "failed_by_class": Counter(),
    }
    for chunk in chunks:
        n_rows = count_rows(chunk.path)  # from the Parquet footer
        totals["structures"] += n_rows
        by_row = _chunk_results(run_dir, chunk.name)
        done_files = _done_files(run_dir, chunk.name)
        complete = len(by_row) == n_rows
        if done_files and complete:
            _write_merged(
                run_dir / RECORDS_DIR / f"{chunk.name}.jsonl",
                run_dir / FAILURES_DIR / f"{chunk.name}.jsonl",
                by_row,
            )
            shutil.rmtree(run_dir / DONE_DIR / chunk.name, ignore_errors=True)
        for result in by_row.values():
            if result["status"] == "ok":
                totals["labelled"] += 1
                totals["records"] += len(result["records"])
            elif result["status"] == "written":
                totals["written"] += 1
            else:
                totals["failed"] += 1
                kind = (result.get("failure") or result.get("failure_doc") or {}).get("kind", "unknown")
                totals["failed_by_class"][kind] += 1
    return totals


def _write_merged(records_path: Path, failures_path: Path, by_row: dict[int, dict[str, Any]]) -> None:
    seen: set[str] = set()
    record_lines: list[str] = []
    failure_lines: list[str] = []
    for row in sorted(by_row):
        result = by_row[row]
        if result["status"] == "ok":
            for doc in result["records"]:
                if doc["aloe_record_id"] in seen:  # the same structure twice in the input: one record
                    continue
                seen.add(doc["aloe_record_id"])
                record_lines.append(json.dumps(doc))
        elif result["status"] == "failed":
            doc = result.get("failure_doc") or {
                "id": result["id"],
                "chunk": result["chunk"],
                "row": result["row"],
                "kind": result["failure"]["kind"],
                "message": result["failure"]["message"],
                "attempts": result["attempts"],
                "structure": result.get("structure"),
            }
            failure_lines.append(json.dumps(doc))
    with atomic_path(failures_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in failure_lines))
    # records last: its presence marks the chunk as merged
    with atomic_path(records_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in record_lines))


def _structure_dict(atoms: Atoms) -> dict[str, Any]:
    from pymatgen.io.ase import AseAtomsAdaptor

    if cell_problem(atoms.cell[:]) is not None:  # pymatgen cannot invert the cell: keep what there is
        return {
            "cell": np.asarray(atoms.cell[:], dtype=float).tolist(),
            "symbols": atoms.get_chemical_symbols(),
            "positions": np.asarray(atoms.positions, dtype=float).tolist(),
        }
    plain = atoms.copy()
    plain.calc = None
    return AseAtomsAdaptor.get_structure(plain).as_dict()


def iter_records(run_dir: str | Path):
    """Every record of a label run, chunk by chunk (one chunk in memory at a time)."""
    folder = Path(run_dir) / RECORDS_DIR
    for path in sorted(folder.glob("chunk-*.jsonl")):
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
