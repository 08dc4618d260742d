"""The generate stage: plan chunks over the candidate space, build them (optionally in parallel), write them.

Two plans:

- full: every kept candidate. Chunk boundaries are placed so that each chunk holds about ``chunk_size`` candidates
  in expectation (sub-sampled regions get wider index ranges).
- sample: ``sample`` candidates drawn uniformly, without replacement, from the kept candidates (seeded); the sorted
  draw is cut into chunks of ``chunk_size``.

The plan is a pure function of the settings and is saved in the run folder. Chunk ``c`` belongs to shard ``c % N``,
so shards interleave over the whole space and any subset of them can run anywhere, in any order.

Mode ``near-eq`` (:mod:`aloe.generate.near_eq`) plans the same way over the unperturbed candidates, with
``near_eq.chunk_size`` starts per chunk; a chunk file holds the frames of its starts, and ``near-eq/chunk-*.json``
(written before the chunk, so a finished chunk always has its log) records what happened to each start.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aloe import layout
from aloe.data.candidates import chunk_files, count_rows, export_extxyz, export_poscars, read_chunk
from aloe.devices import wants_gpu
from aloe.errors import AloeError
from aloe.executors import Executor, stage_executor
from aloe.generate.io import batch_to_table
from aloe.generate.near_eq import StartRecord, failure_examples, load_calculator, sample_chunk, tally
from aloe.generate.settings import GenerateSettings
from aloe.generate.space import STREAM_VERSION, CandidateSpace
from aloe.progress import make_bar
from aloe.prototypes.library import PrototypeLibrary, load_prototypes
from aloe.runs import RunFolder, atomic_path, default_run_dir
from aloe.stagekit import StageResult, Timings

PLAN_FILE = layout.PLAN_FILE
OCCUPATIONS_FILE = layout.OCCUPATIONS_FILE
#: Folder of the near-eq mode's per-chunk logs (what happened to each start).
NEAR_EQ_DIR = layout.NEAR_EQ_LOGS
_SAMPLE_STREAM = 3
_SCAN_STEP = 1 << 22


def load_library(settings: GenerateSettings, progress: bool | None = None) -> PrototypeLibrary:
    """Load and filter the prototype library named by ``settings.prototypes``."""
    src = settings.prototypes
    library = load_prototypes(
        src.source,
        placeholders=src.placeholders,
        weights=src.weights,
        overlap_tolerance=src.overlap_tolerance,
        progress=bool(progress),
    )
    library = library.filter(
        arity=src.arity, min_sites=src.min_sites, max_sites=src.max_sites, names=src.names
    )
    if len(library) == 0:
        raise AloeError(
            f"{src.source}: no prototype is left after the filters (arity, min_sites, max_sites, names)"
        )
    return library


def load_space(
    settings: GenerateSettings,
    occupations: dict[str, list[tuple[int, ...]]] | None = None,
    progress: bool | None = None,
) -> CandidateSpace:
    """Library + occupations -> :class:`CandidateSpace` (of unperturbed candidates in near-eq mode)."""
    return CandidateSpace(
        load_library(settings, progress),
        settings.space_settings(),
        occupations=occupations,
        progress=progress,
    )


# ---- plans ---------------------------------------------------------------------------------------------------
@dataclass
class ChunkPlan:
    """How the space is cut into chunks.

    Attributes
    ----------
    mode
        ``"full"`` or ``"sample"``.
    boundaries
        Full mode: shape ``(n_chunks + 1,)`` candidate-index boundaries.
    sample
        Sample mode: shape ``(n,)`` sorted candidate indices.
    chunk_size
        Sample mode: candidates per chunk.

    """

    mode: str
    boundaries: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sample: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    chunk_size: int = 1
    kept_total: int | None = None

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        if self.mode == "full":
            return max(len(self.boundaries) - 1, 0)
        return -(-len(self.sample) // self.chunk_size)

    def indices(self, chunk: int, space: CandidateSpace) -> np.ndarray:
        """Candidate numbers of a chunk (sorted)."""
        if self.mode == "full":
            return space.kept_in_range(int(self.boundaries[chunk]), int(self.boundaries[chunk + 1]))
        return self.sample[chunk * self.chunk_size : (chunk + 1) * self.chunk_size]

    def save(self, path: Path) -> None:
        """Save atomically as ``.npz``."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                mode=np.array(self.mode),
                boundaries=self.boundaries,
                sample=self.sample,
                chunk_size=np.array(self.chunk_size),
                kept_total=np.array(-1 if self.kept_total is None else self.kept_total),
            )

    @classmethod
    def load(cls, path: Path) -> ChunkPlan:
        """Load a saved plan."""
        with np.load(path) as data:
            kept = int(data["kept_total"])
            return cls(
                mode=str(data["mode"]),
                boundaries=data["boundaries"],
                sample=data["sample"],
                chunk_size=int(data["chunk_size"]),
                kept_total=None if kept < 0 else kept,
            )


def plan_full(space: CandidateSpace, chunk_size: int) -> ChunkPlan:
    """Chunks of about ``chunk_size`` expected kept candidates each."""
    expected = space.counts * space.keep_probability
    cum = np.concatenate([[0.0], np.cumsum(expected)])
    total = cum[-1]
    targets = np.arange(1, int(total // chunk_size) + 1) * float(chunk_size)
    proto = np.clip(np.searchsorted(cum, targets, side="right") - 1, 0, len(space.counts) - 1)
    prob = space.keep_probability[proto]
    cuts = space.offsets[proto] + np.ceil((targets - cum[proto]) / prob).astype(np.int64)
    cuts = np.clip(cuts, 0, space.size)
    boundaries = np.unique(np.concatenate([[0], cuts, [space.size]]).astype(np.int64))
    return ChunkPlan(mode="full", boundaries=boundaries)


def plan_sample(space: CandidateSpace, n: int, chunk_size: int, progress: bool | None = None) -> ChunkPlan:
    """Draw ``n`` kept candidates uniformly without replacement (seeded), sorted, cut into chunks.

    Sub-sampled regions are scanned twice (count, then pick); memory holds one scan step and the draw.
    """
    steps = np.arange(0, space.size, _SCAN_STEP, dtype=np.int64)
    counts = np.empty(len(steps), dtype=np.int64)
    bar = make_bar(
        enabled=progress, total=space.size, desc="sample: counting kept", unit="cand", unit_scale=True
    )
    for s, start in enumerate(steps.tolist()):
        stop = min(start + _SCAN_STEP, space.size)
        counts[s] = len(space.kept_in_range(start, stop))
        bar.update(stop - start)
    bar.close()
    kept_total = int(counts.sum())
    if n > kept_total:
        raise AloeError(f"sample of {n} exceeds the {kept_total} candidates of the space")
    seq = np.random.SeedSequence(space.settings.seed, spawn_key=(STREAM_VERSION, _SAMPLE_STREAM))
    ranks = np.sort(np.random.Generator(np.random.Philox(seq)).choice(kept_total, size=n, replace=False))
    cum = np.concatenate([[0], np.cumsum(counts)])
    picked = []
    step_of_rank = np.searchsorted(cum, ranks, side="right") - 1
    for s in np.unique(step_of_rank).tolist():
        start, stop = int(steps[s]), min(int(steps[s]) + _SCAN_STEP, space.size)
        kept = space.kept_in_range(start, stop)
        picked.append(kept[ranks[step_of_rank == s] - cum[s]])
    sample = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return ChunkPlan(
        mode="sample", sample=sample.astype(np.int64), chunk_size=chunk_size, kept_total=kept_total
    )


def make_plan(space: CandidateSpace, progress: bool | None = None) -> ChunkPlan:
    """The plan the settings ask for."""
    settings = space.settings
    if settings.sample is not None:
        return plan_sample(space, settings.sample, settings.plan_chunk_size(), progress)
    return plan_full(space, settings.plan_chunk_size())


def chunk_name(chunk: int) -> str:
    """File name of chunk ``chunk``."""
    return f"chunk-{chunk:06d}.parquet"


def near_eq_log_name(chunk: int) -> str:
    """File name of chunk ``chunk``'s near-eq log (in :data:`NEAR_EQ_DIR`)."""
    return f"chunk-{chunk:06d}.json"


# ---- workers -------------------------------------------------------------------------------------------------
_SPACES: dict[str, CandidateSpace] = {}


def _space_for(settings_json: str, occupations_file: str) -> CandidateSpace:
    # One space per process and settings: a worker builds it once (occupations from the run folder's file, so a
    # task carries a path, not the map) and reuses it for every chunk.
    space = _SPACES.get(settings_json)
    if space is None:
        settings = GenerateSettings.model_validate_json(settings_json)
        space = load_space(settings, _load_occupations(Path(occupations_file)))
        _SPACES.clear()
        _SPACES[settings_json] = space
    return space


def _run_chunk(task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    space = _space_for(task["settings"], task["occupations"])
    indices = np.asarray(task["indices"], dtype=np.int64) if task["indices"] is not None else None
    if indices is None:
        indices = space.kept_in_range(task["start"], task["stop"])
    if task.get("log") is not None:
        return _run_near_eq_chunk(task, space, indices, t0)
    batch = space.build(indices)
    table = batch_to_table(batch, space)
    from aloe.data.candidates import write_table

    target = Path(task["path"])
    with atomic_path(target) as tmp:
        write_table(table, tmp)
    return {"chunk": task["chunk"], "rows": len(batch), "seconds": time.perf_counter() - t0}


def _run_near_eq_chunk(
    task: dict[str, Any], space: CandidateSpace, indices: np.ndarray, t0: float
) -> dict[str, Any]:
    """Frames of a chunk of starts: the log first, then the chunk (both atomic; the chunk marks it done)."""
    from aloe.data.candidates import write_table
    from aloe.progress import make_log_bar

    desc = f"near-eq chunk {task['chunk']}"
    # In the stage's process the run log only (the stage shows its own bar); a pool worker's output is the run log
    # (or a terminal, then nothing).
    if task.get("pid") == os.getpid():
        bar = make_bar(enabled=False, total=len(indices), desc=desc, unit="start")
    else:
        bar = make_log_bar(total=len(indices), desc=desc, unit="start")
    frames = 0

    def on_start(record: StartRecord) -> None:
        nonlocal frames
        frames += sum(run.frames for run in record.runs)
        bar.update(1)
        bar.set_postfix(frames=frames)

    table, records = sample_chunk(space, indices, space.settings, on_start=on_start)
    bar.close()
    data = [r.to_json() for r in records]
    with atomic_path(Path(task["log"])) as tmp:
        tmp.write_text(json.dumps({"chunk": task["chunk"], "starts": data}, indent=1) + "\n")
    with atomic_path(Path(task["path"])) as tmp:
        write_table(table, tmp)
    counts = tally(data)
    return {
        "chunk": task["chunk"],
        "rows": table.num_rows,
        "starts": counts["starts"],
        "failed": counts["failed"],
        "seconds": time.perf_counter() - t0,
    }


def read_near_eq_logs(run_dir: Path, chunks: range | list[int]) -> list[dict[str, Any]]:
    """The start records of these chunks' near-eq logs (chunks without a finished chunk file are left out)."""
    records: list[dict[str, Any]] = []
    for c in chunks:
        path = Path(run_dir) / NEAR_EQ_DIR / near_eq_log_name(c)
        if not (Path(run_dir) / layout.CHUNKS / chunk_name(c)).exists() or not path.exists():
            continue
        records.extend(json.loads(path.read_text())["starts"])
    return records


# ---- the stage -----------------------------------------------------------------------------------------------
def count_space(space: CandidateSpace) -> dict[str, Any]:
    """Exact sizes of the space, per arity and in total (sub-sampled size as an expected value)."""
    by_arity: dict[str, Any] = {}
    for k in sorted(set(space.arity.tolist())):
        rows = space.arity == k
        by_arity[str(k)] = {
            "prototypes": int(rows.sum()),
            "occupations": int(space.n_occupations[rows].sum()),
            "combinations_per_prototype": int(space.n_combinations[rows][0]),
            "candidates": int(space.counts[rows].sum()),
            "expected_after_subsampling": float(np.sum(space.counts[rows] * space.keep_probability[rows])),
        }
    return {
        "elements": len(space.elements),
        "prototypes": len(space.library),
        "candidates": space.size,
        "expected_after_subsampling": space.expected_kept,
        "by_arity": by_arity,
    }


def _load_occupations(path: Path) -> dict[str, list[tuple[int, ...]]] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {k: [tuple(p) for p in v] for k, v in data.items()}


def generate(
    settings: GenerateSettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Run the generate stage (resumable; see the module docstring).

    Parameters
    ----------
    settings
        What to generate and where.
    command
        The command line to record in the summary (default: ``sys.argv``).
    executor
        Where the chunks run (the caller's, left open); default: one opened from the run options of ``settings``.

    Returns
    -------
    StageResult
        Run folder, counts and timings; ``summary.yaml`` (or ``summary-shard-K-of-N.yaml``) is written.

    """
    timings = Timings()
    output = settings.output or default_run_dir("generate")
    settings = settings.model_copy(update={"output": Path(output)})
    run = RunFolder(output, "generate", settings, settings.resume_exclusions())
    near_eq = settings.mode == "near-eq"
    if near_eq:
        run.subfolder(NEAR_EQ_DIR)

    with timings("load_prototypes"):
        library = load_library(settings, settings.progress)

    with timings("occupations"):
        occ_path = run.path / OCCUPATIONS_FILE
        space = CandidateSpace(
            library,
            settings.space_settings(),
            occupations=_load_occupations(occ_path),
            progress=settings.progress,
        )
        if not occ_path.exists():
            with atomic_path(occ_path) as tmp:
                tmp.write_text(json.dumps(space.occupation_map()))

    with timings("plan"):
        plan_path = run.path / PLAN_FILE
        plan = ChunkPlan.load(plan_path) if plan_path.exists() else make_plan(space, settings.progress)
        if not plan_path.exists():
            plan.save(plan_path)

    shard_k, shard_n = settings.shard_tuple()
    # Chunk numbers are generated lazily: a full plan has tens of thousands of chunks.
    in_shard = range(shard_k, plan.n_chunks, shard_n)
    todo = [c for c in in_shard if not run.done(chunk_name(c))]
    settings_json = settings.model_copy(update={"output": None, "workers": 1, "export": []}).model_dump_json()
    if (
        near_eq
    ):  # a bad potential spec stops here, before any task; chunks run in this process reuse the model
        load_calculator(settings.near_eq)

    def tasks():
        for c in todo:
            task = {
                "chunk": c,
                "path": str(run.chunk_path(chunk_name(c))),
                "settings": settings_json,
                "occupations": str(occ_path),
                "indices": None,
                "start": None,
                "stop": None,
            }
            if near_eq:
                task["log"] = str(run.path / NEAR_EQ_DIR / near_eq_log_name(c))
                task["pid"] = os.getpid()
            if plan.mode == "full":
                task["start"], task["stop"] = int(plan.boundaries[c]), int(plan.boundaries[c + 1])
            else:
                task["indices"] = plan.indices(c, space)
            yield task

    _SPACES.clear()
    _SPACES[settings_json] = space  # in-process chunks reuse this space
    written = starts = failed = 0
    gpu = near_eq and wants_gpu(settings.near_eq.device)
    with timings("generate"), stage_executor(executor, settings) as executor:
        t0 = time.perf_counter()
        desc = "generate (near-eq)" if near_eq else "generate"
        bar = make_bar(enabled=settings.progress, total=len(todo), desc=desc, unit="chunk")
        for result in executor.map_unordered(_run_chunk, tasks(), limit=settings.task_limit(), gpu=gpu):
            written += result["rows"]
            bar.update(1)
            elapsed = time.perf_counter() - t0
            if near_eq:
                starts += result["starts"]
                failed += result["failed"]
                bar.set_postfix(
                    frames=f"{written:,}",
                    starts=f"{starts:,}",
                    failed=f"{failed:,}",
                    s_per_start=f"{elapsed / max(starts, 1):.2f}",
                )
            else:
                bar.set_postfix(candidates=f"{written:,}", per_s=f"{written / max(elapsed, 1e-9):,.0f}")
        bar.close()

    if settings.export:
        with timings("export"):
            exported = _export(run, in_shard, settings)
    else:
        exported = {}

    existing = [run.chunk_path(chunk_name(c)) for c in in_shard if run.done(chunk_name(c))]
    counts = count_space(space)
    counts.update(
        {
            "plan": plan.mode,
            "kept_total": plan.kept_total,
            "chunks_total": plan.n_chunks,
            "chunks_in_shard": len(in_shard),
            "chunks_resumed": len(in_shard) - len(todo),
            "chunks_written": len(todo),
            "candidates_written": written,
            "candidates_in_shard": int(sum(count_rows(p) for p in existing)),
            "exported": exported,
            "prototype_files_skipped": len(library.report.skipped),
        }
    )
    extra: dict[str, Any] = {}
    if near_eq:
        records = read_near_eq_logs(run.path, in_shard)
        counts.update(tally(records))
        counts["starts_written"] = starts
        examples = failure_examples(records)
        if examples:
            extra["near_eq_failure_examples"] = examples
    seconds = timings.total()
    name = "summary.yaml" if shard_n == 1 else f"summary-shard-{shard_k}-of-{shard_n}.yaml"
    if library.report.skipped:
        extra["skipped_prototype_files"] = library.report.lines()
    summary = run.write_summary(counts, seconds, extra=extra or None, name=name, command=command)
    return StageResult("generate", run.path, counts, seconds, summary)


def _export(run: RunFolder, chunks: range | list[int], settings: GenerateSettings) -> dict[str, int]:
    """Export chunks to extxyz / POSCAR (one file or folder per chunk, atomic, skipped when present)."""
    done: dict[str, int] = {}
    for fmt in settings.export:
        n = 0
        base = run.path / "export" / fmt
        base.mkdir(parents=True, exist_ok=True)
        for c in chunks:
            source = run.chunk_path(chunk_name(c))
            if not source.exists():
                continue
            stem = chunk_name(c).removesuffix(".parquet")
            target = base / (f"{stem}.extxyz" if fmt == "extxyz" else stem)
            if target.exists():
                continue
            rows = read_chunk(source)
            if fmt == "extxyz":
                with atomic_path(target) as tmp:
                    export_extxyz(rows, tmp)
            else:
                tmp_dir = base / f".{stem}.tmp"
                if tmp_dir.exists():
                    import shutil

                    shutil.rmtree(tmp_dir)
                export_poscars(rows, tmp_dir)
                tmp_dir.rename(target)
            n += len(rows)
        done[fmt] = n
    return done


__all__ = [
    "ChunkPlan",
    "chunk_files",
    "count_space",
    "generate",
    "load_library",
    "load_space",
    "make_plan",
    "plan_full",
    "plan_sample",
    "read_near_eq_logs",
]
