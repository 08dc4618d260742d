"""The screen stage: query by committee over input chunks, resumable, with metrics, selections and plots.

Per input chunk ``chunk-XXXXXX`` the run folder gets ``metrics/chunk-XXXXXX.parquet`` (every structure: the
three disagreements, thresholds, medians, per-model energies, outcome and reason) and
``selected/chunk-XXXXXX.parquet`` (the selected structures, candidate schema, ready for ``aloe select``).
The metrics file is written last, so it marks a finished chunk; a resumed run skips those.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aloe import layout
from aloe.data.candidates import read_chunk, write_table
from aloe.data.inputs import InputChunk, prepare_inputs
from aloe.devices import wants_gpu
from aloe.elements import symbol_to_z, z_to_symbol
from aloe.errors import AloeError
from aloe.executors import Executor, InlineExecutor, stage_executor
from aloe.progress import make_bar
from aloe.runs import atomic_path, open_stage_run, write_yaml_atomic
from aloe.screen.committee import Committee
from aloe.screen.metrics import OUTCOMES, SELECTED, evaluate
from aloe.screen.settings import ScreenSettings
from aloe.stagekit import StageResult, Timings

METRICS_DIR = layout.METRICS
SELECTED_DIR = layout.SELECTED
REFERENCES_FILE = layout.REFERENCES_FILE


# ---- committee and references -----------------------------------------------------------------------------
def load_screen_committee(settings: ScreenSettings) -> Committee:
    """The committee named by the settings, with device, dtype, batch size and threads applied."""
    from aloe.potentials.registry import load_committee

    members = load_committee(
        settings.committee,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        threads=settings.threads,
    )
    return Committee(members)


def _reference_task(task: tuple[str, int, str]) -> tuple[int, str, float, dict[str, Any] | str]:
    """One member's reference of one element, computed and cached in a worker.

    Returns ``(member, element, seconds, details)``, the details being the reference's info (winner ...) or, for an
    element the member has no reference for, the reason (a string): the screen goes on without that element.
    """
    settings_json, member, element = task
    from aloe.potentials.references import ReferenceStore

    t0 = time.perf_counter()
    committee = _committee_for(ScreenSettings.model_validate_json(settings_json))
    refs = ReferenceStore().references(committee.members[member], [element], strict=False)
    seconds = time.perf_counter() - t0
    return member, element, seconds, refs.failed.get(element, refs.info.get(element, {}))


def resolve_references(
    committee: Committee,
    elements: list[str],
    settings: ScreenSettings,
    settings_json: str | None = None,
    *,
    failed: dict[str, str] | None = None,
    executor: Executor | None = None,
) -> list[dict[str, float]] | None:
    """Each member's elemental reference energies (eV/atom) for ``elements``; ``None`` for the total basis.

    Missing references are computed (relaxations of elemental forms, seconds per element and model) and cached;
    with several workers they are computed in parallel, one (model, element) pair per task. Each computed element
    gets one progress line (``references chgnet-r2scan: F 12/89 (3.2 s, winner dimer)``).

    Parameters
    ----------
    executor
        Where missing references are computed, one (model, element) pair per task, when it has more than one
        worker (default: in this process).
    failed
        When given, an element that some member has no reference for (not in the table or the cache with
        computing off, or none of its forms usable: an element the model cannot handle, like Am for CHGNet) is
        left out of every member's references and recorded here, ``symbol -> "no <model> reference for <symbol>:
        <why>"``; the screen then fails only the structures containing it. When ``None``, such an element raises.

    Raises
    ------
    AloeError
        Without ``failed``, for the first element without a reference.

    """
    if settings.energy_basis == "total" and settings.references is None and not settings.compute_references:
        return None
    from aloe.potentials.references import ReferenceStore, progress_line, report_progress

    store = ReferenceStore()
    # member -> element -> why not, from the worker tasks (so the serial pass below does not try them again)
    unavailable: dict[int, dict[str, str]] = defaultdict(dict)
    executor = executor or InlineExecutor()
    parallel = executor.kind == "dask" or executor.workers > 1
    if parallel and settings.compute_references and settings.references is None and settings_json:
        tasks = [
            (settings_json, k, element)
            for k, member in enumerate(committee.members)
            for element in elements
            if element not in store.cached(member)
        ]
        if tasks:
            totals = Counter(k for _, k, _ in tasks)
            done: Counter[int] = Counter()
            for k, element, seconds, details in executor.map_unordered(
                _reference_task, tasks, limit=settings.task_limit(), gpu=wants_gpu(settings.device)
            ):
                done[k] += 1
                name = committee.members[k].name
                report_progress(
                    progress_line(name, element, done[k], totals[k], seconds, details), settings.progress
                )
                if isinstance(details, str):
                    unavailable[k][element] = details
    references = []
    missing: dict[str, str] = {}
    for k, member in enumerate(committee.members):
        refs = store.references(
            member,
            [e for e in elements if e not in unavailable[k]],
            table=settings.references,
            compute=settings.compute_references,
            progress=settings.progress,
            strict=False,
        )
        for symbol, why in {**unavailable[k], **refs.failed}.items():
            missing.setdefault(symbol, f"no {member.name} reference for {symbol}: {why}")
        references.append(refs.as_dict())
    if missing and failed is None:
        raise AloeError(next(iter(missing.values())))
    if failed is not None:
        failed.update(missing)
    # An element missing for one member is left out for all: its structures cannot be compared.
    return [{s: v for s, v in refs.items() if s not in missing} for refs in references]


def rows_with_elements(batch, reasons: Mapping[str, str]) -> dict[int, str]:
    """Rows of ``batch`` that contain an element of ``reasons`` -> that element's reason (the lowest Z first)."""
    if not reasons:
        return {}
    by_z = {symbol_to_z(symbol): why for symbol, why in reasons.items()}
    owner = np.repeat(np.arange(len(batch.offsets) - 1), np.diff(batch.offsets))
    hit = np.isin(batch.numbers, list(by_z))
    out: dict[int, str] = {}
    for z, r in sorted(zip(batch.numbers[hit].tolist(), owner[hit].tolist(), strict=True)):
        out.setdefault(int(r), by_z[int(z)])
    return out


def reference_tables(references: list[dict[str, float]] | None) -> list[np.ndarray] | None:
    """Reference dicts -> arrays indexed by atomic number (NaN where absent)."""
    if references is None:
        return None
    tables = []
    for refs in references:
        table = np.full(119, np.nan)
        for symbol, value in refs.items():
            table[symbol_to_z(symbol)] = value
        tables.append(table)
    return tables


# ---- one chunk ------------------------------------------------------------------------------------------
_COMMITTEES: dict[str, Committee] = {}


def _committee_key(settings: ScreenSettings) -> str:
    """What identifies a loaded committee: a worker reuses it for every chunk, and for the next run with it."""
    return json.dumps(
        [settings.committee, settings.device, settings.dtype, settings.batch_size, settings.threads]
    )


def _committee_for(settings: ScreenSettings) -> Committee:
    key = _committee_key(settings)
    committee = _COMMITTEES.get(key)
    if committee is None:
        committee = load_screen_committee(settings)
        _COMMITTEES.clear()  # one committee per process: models are large
        _COMMITTEES[key] = committee
    return committee


def screen_rows(
    rows,
    committee: Committee,
    settings: ScreenSettings,
    tables: list[np.ndarray] | None,
    no_reference: Mapping[str, str] | None = None,
):
    """Screen the structures of one chunk; returns ``(metrics, model_seconds, min_distances)``.

    ``no_reference`` maps elements without a reference to the reason: structures containing one fail with it.
    """
    batch = rows.batch()
    # A degenerate cell or non-finite coordinates fail that structure only (its min distance is NaN).
    invalid = {r: f"invalid structure: {problem}" for r, problem in batch.problems().items()}
    # So does an element some member has no reference for; the structure is not sent to the models.
    for r, reason in rows_with_elements(batch, no_reference or {}).items():
        invalid.setdefault(r, reason)
    min_dist = batch.min_distances()
    overlap = {
        int(r): f"atoms {min_dist[r]:.3g} A apart (< {settings.discard.min_distance} A)"
        for r in np.flatnonzero(min_dist < settings.discard.min_distance)
    }
    energies, forces, stresses, failures, seconds = [], [], [], dict(invalid), 0.0
    for rows_idx, sub in batch.chunks(settings.batch_size):
        skip = {j for j, r in enumerate(rows_idx.tolist()) if r in overlap or r in invalid}
        pred = committee.predict(sub, skip=skip)
        energies.append(pred.energy)
        forces.append(pred.forces)
        stresses.append(pred.stress)
        seconds += pred.model_seconds
        for j, reason in pred.failures.items():
            if int(rows_idx[j]) not in overlap:
                failures[int(rows_idx[j])] = reason
    metrics = evaluate(
        np.concatenate(energies, axis=1),
        np.concatenate(forces, axis=1),
        np.concatenate(stresses, axis=1),
        batch.numbers,
        batch.offsets,
        tables,
        thresholds=settings.thresholds,
        multipliers=settings.multipliers,
        discard=settings.discard,
        energy_basis=settings.energy_basis,
        failed=failures,
        overlap=overlap,
    )
    return metrics, seconds, min_dist


def metrics_table(
    rows, metrics, min_dist: np.ndarray, settings: ScreenSettings, names: list[str]
) -> pa.Table:
    """Arrow table of one chunk's metrics."""
    t = settings.thresholds
    n_atoms = np.diff(rows.offsets)
    energy_total = metrics.energy_per_atom * n_atoms
    columns = {
        "index": pa.array(rows.index, pa.int64()),
        "id": pa.array([rows.label(r) for r in range(len(rows))], pa.string()),
        "prototype": pa.array([str(p) for p in rows.prototype], pa.string()),
        "elements": pa.array(rows.elements, pa.string()),
        "n_atoms": pa.array(n_atoms.astype(np.int32)),
        "outcome": pa.array(metrics.outcome.tolist(), pa.string()),
        "reason": pa.array(metrics.reason, pa.string()),
        "factor": pa.array(metrics.factor),
        "energy_disagreement": pa.array(metrics.energy_disagreement),
        "force_disagreement": pa.array(metrics.force_disagreement),
        "stress_disagreement": pa.array(metrics.stress_disagreement),
        "energy_threshold": pa.array(t.energy * metrics.factor),
        "force_threshold": pa.array(t.force * metrics.factor),
        "stress_threshold": pa.array(t.stress * metrics.factor),
        "median_formation_energy": pa.array(metrics.median_formation_energy),
        "median_max_force": pa.array(metrics.median_max_force),
        "median_normal_stress": pa.array(metrics.median_normal_stress),
        "min_distance": pa.array(min_dist),
        "energy": pa.array(energy_total.T.tolist(), pa.list_(pa.float64())),
        "formation_energy": pa.array(metrics.formation_energy.T.tolist(), pa.list_(pa.float64())),
    }
    table = pa.table(columns)
    return table.replace_schema_metadata({"aloe.kind": "screen-metrics", "aloe.committee": json.dumps(names)})


def _run_chunk(task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    settings = ScreenSettings.model_validate_json(task["settings"])
    committee = _committee_for(settings)
    rows = read_chunk(task["input"])
    tables = reference_tables(task["references"])
    metrics, model_seconds, min_dist = screen_rows(
        rows, committee, settings, tables, task.get("no_reference")
    )
    selected = rows.table.filter(pa.array(metrics.selected))
    with atomic_path(task["selected"]) as tmp:
        write_table(selected, tmp)
    table = metrics_table(rows, metrics, min_dist, settings, committee.names)
    with atomic_path(task["metrics"]) as tmp:
        pq.write_table(table, str(tmp), compression="zstd")
    return {
        "chunk": task["name"],
        "structures": len(rows),
        "outcomes": dict(Counter(metrics.outcome.tolist())),
        "seconds": time.perf_counter() - t0,
        "model_seconds": model_seconds,
    }


# ---- the stage ------------------------------------------------------------------------------------------
def _elements_of(chunks: list[InputChunk]) -> list[str]:
    seen: set[int] = set()
    for chunk in chunks:
        numbers = pq.read_table(str(chunk.path), columns=["numbers"]).column("numbers").combine_chunks()
        seen.update(np.unique(np.asarray(numbers.flatten())).tolist())
    return [z_to_symbol(z) for z in sorted(seen)]


def screen(
    settings: ScreenSettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Run the screen stage (resumable; see the module docstring).

    Parameters
    ----------
    settings
        What to screen, with which committee, and where.
    command
        The command line to record in the summary (default: ``sys.argv``).
    executor
        Where the chunks and missing elemental references run (the caller's, left open); default: one opened
        from the run options of ``settings``.
    """
    if settings.input is None:
        raise AloeError("screen needs an input: a generate run folder or a structure file")
    timings = Timings()
    run, settings = open_stage_run(
        settings, "screen", ScreenSettings.RUNTIME_KEYS, (METRICS_DIR, SELECTED_DIR)
    )
    with timings("inputs"):
        chunks = prepare_inputs(
            settings.input, run.path, settings.chunk_size, settings.progress, reader="aloe screen"
        )
        elements = _elements_of(chunks)
    settings_json = settings.model_copy(update={"output": None}).model_dump_json()
    with timings("load_committee"):
        committee = _committee_for(settings)  # reused by chunks that run in this process
    with stage_executor(executor, settings) as executor:
        with timings("references"):
            no_reference: dict[str, str] = {}
            references = resolve_references(
                committee, elements, settings, settings_json, failed=no_reference, executor=executor
            )
            if references is not None:
                write_yaml_atomic(
                    run.path / REFERENCES_FILE, dict(zip(committee.names, references, strict=True))
                )

        todo = [c for c in chunks if not (run.path / METRICS_DIR / f"{c.name}.parquet").exists()]
        tasks = (
            {
                "name": c.name,
                "input": str(c.path),
                "metrics": str(run.path / METRICS_DIR / f"{c.name}.parquet"),
                "selected": str(run.path / SELECTED_DIR / f"{c.name}.parquet"),
                "settings": settings_json,
                "references": references,
                "no_reference": no_reference,
            }
            for c in todo
        )
        total = sum(pq.ParquetFile(str(c.path)).metadata.num_rows for c in todo)
        done = Counter()
        work_seconds = model_seconds = 0.0
        with timings("screen"):
            t0 = time.perf_counter()
            bar = make_bar(enabled=settings.progress, total=total, desc="screen", unit="structure")
            for result in executor.map_unordered(
                _run_chunk, tasks, limit=settings.task_limit(), gpu=wants_gpu(settings.device)
            ):
                done.update(result["outcomes"])
                work_seconds += result["seconds"]
                model_seconds += result["model_seconds"]
                bar.update(result["structures"])
                n = sum(done.values())
                bar.set_postfix(
                    per_s=f"{n / max(time.perf_counter() - t0, 1e-9):.1f}",
                    selected=f"{done[SELECTED] / n:.1%}",
                    failed=done["failed"],
                )
            bar.close()
    timings["chunk_work"] = work_seconds
    timings["inside_models"] = model_seconds

    with timings("summary"):
        counts, extra = summarize(run.path, chunks, committee.names, settings)
        counts.update(
            {
                "chunks_total": len(chunks),
                "chunks_resumed": len(chunks) - len(todo),
                "structures_screened_now": sum(done.values()),
                "elements": elements,
            }
        )
        if no_reference:
            counts["elements_without_reference"] = no_reference
        if work_seconds > 0:
            counts["share_inside_models"] = round(model_seconds / work_seconds, 4)
    seconds = timings.total()
    summary = run.write_summary(counts, seconds, extra=extra, command=command)
    return StageResult("screen", run.path, counts, seconds, summary)


def read_metrics(run_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All metrics of a screen run as one table."""
    files = sorted((Path(run_dir) / METRICS_DIR).glob("chunk-*.parquet"))
    if not files:
        raise AloeError(f"{run_dir}: no screen metrics found")
    return pa.concat_tables([pq.read_table(str(f), columns=columns) for f in files])


def summarize(run_dir: Path, chunks: list[InputChunk], names: list[str], settings: ScreenSettings):
    """Counts per outcome, selection rates per element and prototype, tables and plots.

    The metrics are read one chunk file at a time into arrays of the final size: the client keeps four numbers and
    one code per structure (for the exact quantiles and histograms; 33 bytes), not the table, so a screen of
    millions of candidates ends in little memory.
    """
    from aloe.screen.plots import plot_disagreements, plot_selection_by_element

    files = sorted((Path(run_dir) / METRICS_DIR).glob("chunk-*.parquet"))
    if not files:
        raise AloeError(f"{run_dir}: no screen metrics found")
    code_of = {name: i for i, name in enumerate(OUTCOMES)}
    kinds = ("energy", "force", "stress")
    # Filled in place, chunk by chunk (sizes from the files' footers): no list of parts, no concatenated copy.
    n = sum(pq.ParquetFile(str(file)).metadata.num_rows for file in files)
    codes = np.empty(n, dtype=np.int8)
    factor = np.empty(n)
    dis = {k: np.empty(n) for k in kinds}
    per_element: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_proto: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    columns = ["outcome", "elements", "prototype", "factor", *(f"{k}_disagreement" for k in kinds)]
    at = 0
    for file in files:
        table = pq.read_table(str(file), columns=columns)
        if at + table.num_rows > n:
            raise AloeError(f"{file}: the metric files changed while they were read")
        rows = slice(at, at + table.num_rows)
        at += table.num_rows
        outcomes = table.column("outcome").to_pylist()
        codes[rows] = [code_of.get(o, len(OUTCOMES)) for o in outcomes]
        factor[rows] = np.asarray(table.column("factor").to_numpy(zero_copy_only=False), dtype=float)
        for k in kinds:
            column = table.column(f"{k}_disagreement").to_numpy(zero_copy_only=False)
            dis[k][rows] = np.asarray(column, dtype=float)
        for elements, proto, out in zip(
            table.column("elements").to_pylist(), table.column("prototype").to_pylist(), outcomes, strict=True
        ):
            if out not in ("selected", "rejected", "discarded"):
                continue
            hit = out == SELECTED
            for symbol in elements.split("-"):
                per_element[symbol][0] += 1
                per_element[symbol][1] += hit
            per_proto[proto][0] += 1
            per_proto[proto][1] += hit
        del table, outcomes
    if at != n:
        raise AloeError(f"{run_dir}: the metric files changed while they were read ({at} rows, {n} expected)")
    per_outcome = np.bincount(codes, minlength=len(OUTCOMES) + 1)
    counts: dict[str, Any] = {"structures": n, "committee": names}
    counts["outcomes"] = {name: int(per_outcome[i]) for i, name in enumerate(OUTCOMES)}
    evaluated = sum(int(per_outcome[code_of[o]]) for o in ("selected", "rejected", "discarded"))
    counts["selection_rate"] = round(float(per_outcome[code_of[SELECTED]] / max(evaluated, 1)), 6)
    rates_el = {
        k: {"evaluated": v[0], "selected": int(v[1]), "rate": round(v[1] / v[0], 4)}
        for k, v in sorted(per_element.items(), key=lambda kv: symbol_to_z(kv[0]))
    }
    rates_pr = {
        k: {"evaluated": v[0], "selected": int(v[1]), "rate": round(v[1] / v[0], 4)}
        for k, v in sorted(per_proto.items())
    }
    _write_csv(run_dir / "selection_by_element.csv", "element", rates_el)
    _write_csv(run_dir / "selection_by_prototype.csv", "prototype", rates_pr)

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    t = settings.thresholds
    eligible = (codes == code_of["selected"]) | (codes == code_of["rejected"])
    del codes
    plot_disagreements(
        dis,
        factor,
        {"energy": t.energy, "force": t.force, "stress": t.stress},
        eligible,
        {name: int(per_outcome[code_of[name]]) for name in OUTCOMES},
        plots / "disagreements.png",
        names,
    )
    del eligible, factor
    if rates_el:
        plot_selection_by_element(rates_el, plots / "selection_by_element.png")
    quantiles = {}
    for k in kinds:
        finite = dis[k][np.isfinite(dis[k])]
        del dis[k]
        if len(finite):  # overwrite_input: partition the copy in place (the same numbers, no second copy)
            quantiles[k] = {
                f"p{q}": float(np.percentile(finite, q, overwrite_input=True)) for q in (5, 25, 50, 75, 95)
            }
        del finite
    extra = {
        "disagreement_quantiles": quantiles,
        "selection_by_element": rates_el,
        "plots": sorted(str(p.relative_to(run_dir)) for p in plots.glob("*.png")),
    }
    return counts, extra


def _write_csv(path: Path, key: str, rows: dict[str, dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        lines = [f"{key},evaluated,selected,rate"]
        lines += [f"{k},{v['evaluated']},{v['selected']},{v['rate']}" for k, v in rows.items()]
        tmp.write_text("\n".join(lines) + "\n")
