"""The select stage: encode structures in chunks, run DIRECT over all of them, write the subset, points and plots.

Or, with ``mode: uniform``, pick ``direct.max_selected`` structures uniformly at random (seeded by ``seed``; the
baseline DIRECT is measured against): nothing is encoded, there is no PCA and no clustering, and the run folder holds
the same ``points.parquet`` (cluster, distance, rank and PC columns null), ``selected/`` and ``summary.yaml``, without
``clusters.csv`` and plots.

Run folder layout::

    run.yaml, summary.yaml
    inputs/                  structure files converted to candidate chunks (only when the input is not a run)
    features/chunk-*.npz     per input chunk: features (m, d), per-structure errors, encoder identity
    points.parquet           every structure: chunk, row, id, status, cluster, cluster size, distance to the
                             centre, rank, selected, principal-component scores
    selected/chunk-*.parquet the selected structures (candidate schema; one file per input chunk, maybe empty)
    selected.extxyz          the same as one file (with ``export: extxyz``)
    clusters.csv             cluster sizes and how many were taken from each
    plots/pca.png, plots/cluster_sizes.png

Features are the durable, expensive part: a killed run resumes with the chunks not yet encoded, and running again
on the same folder with other DIRECT settings re-selects from the stored features without encoding anything.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aloe import layout
from aloe.data.candidates import chunk_files, export_extxyz, read_chunk, write_table
from aloe.data.inputs import InputChunk, prepare_inputs
from aloe.devices import wants_gpu
from aloe.errors import AloeError, InputFileError
from aloe.executors import Executor, stage_executor
from aloe.progress import make_bar
from aloe.runs import RunFolder, atomic_path, open_stage_run
from aloe.select.direct import DirectResult, direct_select
from aloe.select.settings import SelectSettings
from aloe.select.uniform import uniform_pick
from aloe.stagekit import StageResult, Timings

FEATURES_DIR = layout.FEATURES
SELECTED_DIR = layout.SELECTED
POINTS_FILE = "points.parquet"
CLUSTERS_FILE = "clusters.csv"
EXPORT_FILE = "selected.extxyz"


# ---- encoding -----------------------------------------------------------------------------------------------
_ENCODERS: dict[str, Any] = {}


def load_select_encoder(settings: SelectSettings) -> Any:
    """The encoder named by the settings, with device, batch size and threads applied."""
    from aloe.select.encoders import load_encoder

    return load_encoder(
        settings.encoder, device=settings.device, batch_size=settings.batch_size, threads=settings.threads
    )


def _encoder_for(settings_json: str) -> Any:
    encoder = _ENCODERS.get(settings_json)
    if encoder is None:
        encoder = load_select_encoder(SelectSettings.model_validate_json(settings_json))
        _ENCODERS.clear()
        _ENCODERS[settings_json] = encoder
    return encoder


def _encode_chunk(task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    encoder = _encoder_for(task["settings"])
    rows = read_chunk(task["input"])
    encoded = encoder.encode(rows.batch())
    errors = np.array(["" if e is None else e for e in encoded.errors], dtype=str)
    with atomic_path(task["features"]) as tmp:
        with open(tmp, "wb") as fh:  # np.savez would append .npz to a temp name
            np.savez(
                fh,
                features=encoded.features,
                errors=errors,
                encoder=np.array(encoder.identity()),
                feature_names=np.array(encoder.feature_names(), dtype=str),
            )
    return {
        "chunk": task["name"],
        "structures": len(rows),
        "failed": int(sum(e is not None for e in encoded.errors)),
        "seconds": time.perf_counter() - t0,
    }


@dataclass
class FeatureTable:
    """The features of every input structure, in chunk order.

    Attributes
    ----------
    features
        Shape ``(n, d)``.
    chunk
        ``n`` input chunk names.
    row
        Shape ``(n,)``: row inside the chunk.
    errors
        ``n`` strings (empty = encoded).
    encoder
        The encoder identity stored with the features.
    feature_names
        ``d`` names.
    """

    features: np.ndarray
    chunk: np.ndarray
    row: np.ndarray
    errors: np.ndarray
    encoder: str
    feature_names: list[str]


def read_features(run_dir: Path, chunks: list[InputChunk]) -> FeatureTable:
    """Load every chunk's features; features of different length or encoder are an error naming the chunk."""
    blocks, names, rows, errors = [], [], [], []
    encoder = ""
    feature_names: list[str] = []
    for c in chunks:
        path = run_dir / FEATURES_DIR / f"{c.name}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                feats = np.asarray(data["features"], dtype=np.float64)
                errs = np.asarray(data["errors"], dtype=str)
                ident = str(data["encoder"])
                fnames = [str(v) for v in data["feature_names"]]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise InputFileError(
                path, f"unreadable feature file ({exc}); delete it to encode again"
            ) from None
        if feats.ndim != 2 or len(errs) != len(feats):
            raise InputFileError(path, f"malformed features of shape {feats.shape}")
        if blocks and feats.shape[1] != blocks[0].shape[1]:
            raise InputFileError(
                path,
                f"features have {feats.shape[1]} columns, earlier chunks {blocks[0].shape[1]}; "
                "all structures need features of the same length",
            )
        if encoder and ident != encoder:
            raise InputFileError(
                path, f"encoded by {ident}, earlier chunks by {encoder}; use a new run folder"
            )
        encoder, feature_names = ident, fnames
        blocks.append(feats)
        names.append(np.full(len(feats), c.name, dtype=object))
        rows.append(np.arange(len(feats), dtype=np.int64))
        errors.append(errs)
    return FeatureTable(
        features=np.concatenate(blocks) if blocks else np.empty((0, 0)),
        chunk=np.concatenate(names) if names else np.empty(0, dtype=object),
        row=np.concatenate(rows) if rows else np.empty(0, dtype=np.int64),
        errors=np.concatenate(errors) if errors else np.empty(0, dtype=str),
        encoder=encoder,
        feature_names=feature_names,
    )


# ---- the stage ----------------------------------------------------------------------------------------------
def select(
    settings: SelectSettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Run the select stage (resumable; see the module docstring).

    Parameters
    ----------
    settings
        What to select from, how, and where.
    command
        The command line to record in the summary (default: ``sys.argv``).
    executor
        Where the chunks are encoded (the caller's, left open); default: one opened from the run options.

    Returns
    -------
    StageResult
        With ``products["selected"]`` (the picked rows, ascending, in input order) and ``products["direct"]``, the
        :class:`~aloe.select.direct.DirectResult` (``None`` in mode ``uniform``); ``counts["mode"]`` names the
        mode.
    """
    if settings.input is None:
        raise AloeError("select needs an input: a screen run folder or a structure file")
    timings = Timings()
    run, settings = open_stage_run(
        settings, "select", SelectSettings.RUNTIME_KEYS, (FEATURES_DIR, SELECTED_DIR)
    )
    with timings("inputs"):
        chunks = prepare_inputs(
            settings.input, run.path, settings.chunk_size, settings.progress, reader="aloe select"
        )
    if settings.mode == "uniform":
        return _select_uniform(run, settings, chunks, timings, command)

    todo = [c for c in chunks if not (run.path / FEATURES_DIR / f"{c.name}.npz").exists()]
    encoded_now = failed_now = 0
    with timings("encode"):
        if todo:
            t0 = time.perf_counter()
            settings_json = settings.model_copy(update={"output": None}).model_dump_json()
            encoder = load_select_encoder(settings)
            _ENCODERS.clear()
            _ENCODERS[settings_json] = encoder
            tasks = (
                {
                    "name": c.name,
                    "input": str(c.path),
                    "features": str(run.path / FEATURES_DIR / f"{c.name}.npz"),
                    "settings": settings_json,
                }
                for c in todo
            )
            total = sum(pq.ParquetFile(str(c.path)).metadata.num_rows for c in todo)
            bar = make_bar(
                enabled=settings.progress, total=total, desc=f"encode ({settings.encoder})", unit="structure"
            )
            with stage_executor(executor, settings) as executor:
                for result in executor.map_unordered(
                    _encode_chunk, tasks, limit=settings.task_limit(), gpu=wants_gpu(settings.device)
                ):
                    encoded_now += result["structures"]
                    failed_now += result["failed"]
                    bar.update(result["structures"])
                    bar.set_postfix(
                        per_s=f"{encoded_now / max(time.perf_counter() - t0, 1e-9):.1f}", failed=failed_now
                    )
            bar.close()

    with timings("read_features"):
        table = read_features(run.path, chunks)
        meta = _input_meta(chunks)
        if len(meta["id"]) != len(table.row):
            raise AloeError(f"{run.path}: features and inputs disagree in length; use a new run folder")

    with timings("direct"):
        result = direct_select(table.features, settings.direct, n_atoms=meta["n_atoms"], row_names=meta["id"])

    with timings("write"):
        mask = np.zeros(len(table.row), dtype=bool)
        mask[result.selected] = True
        _write_points(run.path, table, result, mask, meta)
        _write_selected(run.path, chunks, table.chunk, mask)
        if settings.export == "extxyz":
            _export(run.path, chunks)
        else:  # a re-selection must not leave the export of an earlier selection beside it
            (run.path / EXPORT_FILE).unlink(missing_ok=True)
        _write_clusters_csv(run.path, result, mask)

    with timings("plots"):
        from aloe.select.plots import plot_cluster_sizes, plot_pca

        plots = run.path / "plots"
        plots.mkdir(exist_ok=True)
        plot_pca(result, mask, plots / "pca.png", encoder=table.encoder)
        plot_cluster_sizes(result, plots / "cluster_sizes.png", k=settings.direct.k)
    seconds = timings.total()

    counts = _counts(result, mask, table, chunks, todo, encoded_now, failed_now)
    extra = {
        "encoder": table.encoder,
        "n_features": int(table.features.shape[1]),
        "direct": {
            "n_components": result.n_components,
            "explained_variance_kept": round(
                float(result.explained_variance_ratio[: result.n_components].sum()), 6
            ),
            "explained_variance": [round(float(v), 6) for v in result.explained_variance[:20]],
            "birch_threshold_used": result.birch_threshold,
            "dropped_features": result.dropped_features,
            "notes": result.notes,
        },
        "plots": ["plots/pca.png", "plots/cluster_sizes.png"],
    }
    summary = run.write_summary(counts, seconds, extra=extra, command=command)
    products = {"selected": np.flatnonzero(mask), "direct": result}
    return StageResult("select", run.path, counts, seconds, summary, products)


def _select_uniform(
    run: RunFolder,
    settings: SelectSettings,
    chunks: list[InputChunk],
    timings: Timings,
    command: str | None,
) -> StageResult:
    """Mode ``uniform``: ``direct.max_selected`` structures picked uniformly at random over the inputs, in order."""
    budget = settings.direct.max_selected
    with timings("read_inputs"):
        meta = _input_meta(chunks)
    n = len(meta["id"])
    if n == 0:
        raise AloeError("no structures to select from")
    with timings("pick"):
        picks = uniform_pick(n, budget, settings.seed)
        mask = np.zeros(n, dtype=bool)
        mask[picks] = True
    with timings("write"):
        _write_uniform_points(run.path, meta, mask)
        _write_selected(run.path, chunks, meta["chunk"], mask)
        if settings.export == "extxyz":
            _export(run.path, chunks)
        else:
            (run.path / EXPORT_FILE).unlink(missing_ok=True)
        # What an earlier DIRECT selection in this folder left does not describe this one.
        (run.path / CLUSTERS_FILE).unlink(missing_ok=True)
        for plot in ("pca.png", "cluster_sizes.png"):
            (run.path / "plots" / plot).unlink(missing_ok=True)
    seconds = timings.total()
    selected = int(mask.sum())
    counts = {
        "mode": "uniform",
        "structures": n,
        "chunks_total": len(chunks),
        "chunks_resumed": 0,  # nothing is computed per chunk, so nothing is resumed
        "encoded_now": 0,
        "encoder_failed": 0,
        "left_out_nonfinite": 0,
        "selected": selected,
        "reduction": round(n / max(selected, 1), 4),
    }
    extra = {
        "encoder": None,
        "uniform": {"seed": settings.seed, "max_selected": budget},
        "plots": [],
    }
    summary = run.write_summary(counts, seconds, extra=extra, command=command)
    return StageResult("select", run.path, counts, seconds, summary, {"selected": picks, "direct": None})


def _counts(result, mask, table, chunks, todo, encoded_now, failed_now) -> dict[str, Any]:
    sizes = result.cluster_sizes
    n = len(mask)
    usable = int((result.status == "ok").sum())
    selected = int(mask.sum())
    return {
        "structures": n,
        "chunks_total": len(chunks),
        "chunks_resumed": len(chunks) - len(todo),
        "encoded_now": encoded_now,
        "encoder_failed": int((result.status == "encoder_failed").sum()),
        "left_out_nonfinite": int((result.status == "nonfinite_features").sum()),
        "clustered": usable,
        "clusters": len(sizes),
        "cluster_size": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "mean": round(float(sizes.mean()), 3),
            "max": int(sizes.max()),
            "singletons": int((sizes == 1).sum()),
        },
        "selected": selected,
        "reduction": round(usable / max(selected, 1), 4),
        "mode": "direct",
    }


# ---- outputs ------------------------------------------------------------------------------------------------
def _input_meta(chunks: list[InputChunk]) -> dict[str, Any]:
    """Per input structure, in chunk order: chunk name, row, id, elements, index and atom count.

    One chunk in memory at a time.
    """
    ids: list[str] = []
    elements: list[str] = []
    names, row, index, n_atoms = [], [], [], []
    for c in chunks:
        rows = read_chunk(c.path)
        ids.extend(rows.label(r) for r in range(len(rows)))
        elements.extend(rows.elements)
        names.append(np.full(len(rows), c.name, dtype=object))
        row.append(np.arange(len(rows), dtype=np.int64))
        index.append(np.asarray(rows.index, dtype=np.int64))
        n_atoms.append(np.diff(rows.offsets).astype(np.int64))
    return {
        "chunk": np.concatenate(names) if names else np.empty(0, dtype=object),
        "row": np.concatenate(row) if row else np.empty(0, np.int64),
        "id": ids,
        "elements": elements,
        "index": np.concatenate(index) if index else np.empty(0, np.int64),
        "n_atoms": np.concatenate(n_atoms) if n_atoms else np.empty(0, np.int64),
    }


def _write_points(run_dir: Path, table: FeatureTable, result: DirectResult, mask: np.ndarray, meta) -> None:
    m = result.scores.shape[1]
    sizes = np.where(result.labels >= 0, result.cluster_sizes[np.maximum(result.labels, 0)], 0)
    columns = {
        "chunk": pa.array(table.chunk.tolist(), pa.string()),
        "row": pa.array(table.row.astype(np.int32)),
        "index": pa.array(meta["index"]),
        "id": pa.array(meta["id"], pa.string()),
        "elements": pa.array(meta["elements"], pa.string()),
        "n_atoms": pa.array(meta["n_atoms"].astype(np.int32)),
        "status": pa.array(result.status.tolist(), pa.string()),
        "error": pa.array([e or None for e in table.errors.tolist()], pa.string()),
        "cluster": pa.array(result.labels),
        "cluster_size": pa.array(sizes.astype(np.int64)),
        "distance": pa.array(result.distance),
        "rank": pa.array(result.rank),
        "selected": pa.array(mask),
        "pc": pa.FixedSizeListArray.from_arrays(pa.array(result.scores.reshape(-1)), m),
    }
    out = pa.table(columns).replace_schema_metadata(
        {"aloe.kind": "select-points", "aloe.encoder": table.encoder}
    )
    with atomic_path(run_dir / POINTS_FILE) as tmp:
        pq.write_table(out, str(tmp), compression="zstd")


def _write_uniform_points(run_dir: Path, meta: dict[str, Any], mask: np.ndarray) -> None:
    """``points.parquet`` of a uniform selection: the columns of a DIRECT one, the clustering ones null."""
    n = len(mask)
    columns = {
        "chunk": pa.array(meta["chunk"].tolist(), pa.string()),
        "row": pa.array(meta["row"].astype(np.int32)),
        "index": pa.array(meta["index"]),
        "id": pa.array(meta["id"], pa.string()),
        "elements": pa.array(meta["elements"], pa.string()),
        "n_atoms": pa.array(meta["n_atoms"].astype(np.int32)),
        "status": pa.array(["ok"] * n, pa.string()),
        "error": pa.nulls(n, pa.string()),
        "cluster": pa.nulls(n, pa.int64()),
        "cluster_size": pa.nulls(n, pa.int64()),
        "distance": pa.nulls(n, pa.float64()),
        "rank": pa.nulls(n, pa.int64()),
        "selected": pa.array(mask),
        "pc": pa.nulls(n, pa.list_(pa.float64())),
    }
    out = pa.table(columns).replace_schema_metadata({"aloe.kind": "select-points", "aloe.mode": "uniform"})
    with atomic_path(run_dir / POINTS_FILE) as tmp:
        pq.write_table(out, str(tmp), compression="zstd")


def _write_selected(run_dir: Path, chunks: list[InputChunk], chunk_of: np.ndarray, mask: np.ndarray) -> None:
    """``selected/``: one file per input chunk (maybe empty) with its picked rows; ``chunk_of`` names each row's."""
    folder = run_dir / SELECTED_DIR
    wanted = {f"{c.name}.parquet" for c in chunks}
    for stale in folder.glob("chunk-*.parquet"):
        if stale.name not in wanted:
            stale.unlink()
    for c in chunks:
        keep = mask[chunk_of == c.name]
        with atomic_path(folder / f"{c.name}.parquet") as tmp:
            write_table(read_chunk(c.path).table.filter(pa.array(keep)), tmp)


def _export(run_dir: Path, chunks: list[InputChunk]) -> None:
    from aloe.data.candidates import CandidateRows

    tables = [read_chunk(p).table for p in chunk_files(run_dir / SELECTED_DIR)]
    rows = CandidateRows(pa.concat_tables(tables)) if tables else None
    with atomic_path(run_dir / EXPORT_FILE) as tmp:
        if rows is not None and len(rows):
            export_extxyz(rows, tmp)
        else:
            tmp.write_text("")


def _write_clusters_csv(run_dir: Path, result: DirectResult, mask: np.ndarray) -> None:
    taken = np.bincount(result.labels[mask & (result.labels >= 0)], minlength=result.n_clusters)
    lines = ["cluster,size,selected," + ",".join(f"center_pc{i + 1}" for i in range(result.centers.shape[1]))]
    for c in range(result.n_clusters):
        centre = ",".join(f"{v:.6g}" for v in result.centers[c])
        lines.append(f"{c},{result.cluster_sizes[c]},{taken[c]},{centre}")
    with atomic_path(run_dir / CLUSTERS_FILE) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_points(run_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The points table of a select run."""
    path = Path(run_dir) / POINTS_FILE
    if not path.exists():
        raise AloeError(f"{run_dir}: no {POINTS_FILE} (is the select run finished?)")
    return pq.read_table(str(path), columns=columns)
