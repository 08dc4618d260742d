"""What a stage reads: the structure chunks of an earlier run, or any structure file turned into chunks once.

Structure files are converted into candidate-schema Parquet chunks inside the reading stage's run folder
(``inputs/``), written atomically, so a resumed or parallel run reads the same chunks as the first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from aloe.data.candidates import chunk_files, table_from_atoms, write_table
from aloe.errors import AloeError
from aloe.layout import INPUTS, run_verb, structures_dir
from aloe.runs import atomic_path


@dataclass(frozen=True)
class InputChunk:
    """One chunk of input: its name (also the name of its outputs) and its Parquet file."""

    name: str
    path: Path


def prepare_inputs(
    source: Path,
    run_dir: Path,
    chunk_size: int,
    progress: bool | None = None,
    accept: tuple[str, ...] = ("generate", "screen", "select"),
    reader: str = "aloe",
) -> list[InputChunk]:
    """Input chunks for ``source``: a run's chunk files, or a structure file converted into ``run_dir/inputs``.

    A generate run gives its chunks; a screen or select run gives its ``selected/`` chunks (the structures that
    survived it). Anything else is read with :func:`aloe.data.readers.iter_structures`.

    Parameters
    ----------
    accept
        The verbs of run folders this stage reads.
    reader
        The reading stage, for error messages.
    """
    source = Path(source)
    verb = run_verb(source)
    if verb in accept:
        folder = structures_dir(source, verb)
        files = chunk_files(folder)
        if not files:
            raise AloeError(f"{source}: run folder has no chunk files yet (is the run finished?)")
        return [InputChunk(f.name.removesuffix(".parquet"), f) for f in files]
    if verb is not None:
        runs = ", ".join(accept)
        raise AloeError(
            f"{source}: a '{verb}' run folder is not an input of {reader} (use a {runs} run or structures)"
        )
    folder = run_dir / INPUTS
    done_marker = folder / "complete.yaml"
    if done_marker.exists():
        return [InputChunk(f.name.removesuffix(".parquet"), f) for f in chunk_files(folder)]
    from aloe.data.readers import iter_structures
    from aloe.progress import make_bar

    folder.mkdir(parents=True, exist_ok=True)
    chunks: list[InputChunk] = []
    pending_atoms: list = []
    pending_ids: list[str] = []
    start = 0
    bar = make_bar(enabled=progress, desc=f"reading {source.name}", unit="structure")

    def flush() -> None:
        nonlocal pending_atoms, pending_ids, start
        name = f"chunk-{len(chunks):06d}"
        table = table_from_atoms(pending_atoms, pending_ids, start, source.name)
        target = folder / f"{name}.parquet"
        with atomic_path(target) as tmp:
            write_table(table, tmp)
        chunks.append(InputChunk(name, target))
        start += len(pending_atoms)
        pending_atoms, pending_ids = [], []

    for structure_id, atoms in iter_structures(source):
        pending_atoms.append(atoms)
        pending_ids.append(structure_id)
        bar.update(1)
        if len(pending_atoms) >= chunk_size:
            flush()
    if pending_atoms:
        flush()
    bar.close()
    if not chunks:
        raise AloeError(f"{source}: no structures found")
    with atomic_path(done_marker) as tmp:
        tmp.write_text(yaml.safe_dump({"source": str(source), "chunks": len(chunks), "structures": start}))
    return chunks
