"""Combine MP-ALOE and MatPES into one training set, as the MP-ALOE authors did.

The rule (from the design notes): keep all MatPES docs; drop MP-ALOE docs whose ``provenance.original_mp_id``
appears in MatPES; keep MP-ALOE docs with a null id.

Streamed in one pass over each file: the MatPES docs are written first while their ``original_mp_id`` values are
collected into a set; then the MP-ALOE docs are filtered against that complete set. Memory holds that set of ids
(strings, tens of MB for the published MatPES) plus one document at a time, never a list of documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aloe.data.formats import RecordReader, write_records
from aloe.errors import AloeError
from aloe.progress import make_bar

#: Progress-bar updates happen every this many documents (tqdm per document would cost more than the copy).
_BAR_EVERY = 1000


@dataclass
class CombineCounts:
    """What :func:`combine` wrote."""

    matpes: int = 0
    """MatPES docs (all kept)."""
    mp_aloe_kept: int = 0
    """MP-ALOE docs kept, null ids included."""
    mp_aloe_dropped: int = 0
    """MP-ALOE docs dropped because their ``original_mp_id`` is in MatPES."""
    mp_aloe_null_id_kept: int = 0
    """MP-ALOE docs kept because their ``original_mp_id`` is null (part of ``mp_aloe_kept``)."""
    matpes_ids: int = 0
    """Distinct ``original_mp_id`` values in MatPES."""
    written: int = 0
    """Docs in the output."""
    skipped_bad: dict[str, int] = field(default_factory=dict)
    """Bad lines / records skipped per input (``skip_bad=True``)."""

    def as_dict(self) -> dict[str, Any]:
        """The counts as a plain dict."""
        return asdict(self)


def _mp_id(doc: dict[str, Any]) -> str | None:
    prov = doc.get("provenance")
    if not isinstance(prov, dict):
        return None
    value = prov.get("original_mp_id")
    return None if value is None else str(value)


def combine(
    mp_aloe_path: str | Path,
    matpes_path: str | Path,
    output_path: str | Path,
    *,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> CombineCounts:
    """Write MatPES's docs and the MP-ALOE docs the rule keeps to ``output_path`` (atomically).

    Parameters
    ----------
    mp_aloe_path
        MP-ALOE documents (any format :mod:`aloe.data.formats` reads; the published file is JSON lines).
    matpes_path
        MatPES documents (the published file is one JSON list).
    output_path
        The combined file; its format from the name (``.jsonl[.gz]``, ``.json[.gz]``, ``.xyz``, ``.db``).
    skip_bad
        Skip (and count) bad lines / invalid records instead of stopping.
    progress
        Progress bar (default: on a terminal).

    Returns
    -------
    CombineCounts
        Kept, dropped and null-id-kept counts, among others.

    Raises
    ------
    AloeError
        Bad input (nothing is written then) or an output path that is one of the inputs.
    """
    mp_aloe_path, matpes_path, output_path = Path(mp_aloe_path), Path(matpes_path), Path(output_path)
    for source in (mp_aloe_path, matpes_path):
        if source.exists() and source.resolve() == output_path.resolve():
            raise AloeError(f"{output_path}: the output would overwrite an input")
    counts = CombineCounts()
    matpes_ids: set[str] = set()
    matpes = RecordReader(matpes_path, skip_bad=skip_bad)
    mp_aloe = RecordReader(mp_aloe_path, skip_bad=skip_bad)
    bar = make_bar(enabled=progress, desc="combine", unit=" doc")

    def docs() -> Iterator[dict[str, Any]]:
        pending = 0
        bar.set_postfix(file="MatPES")
        for doc in matpes:
            mp_id = _mp_id(doc)
            if mp_id is not None:
                matpes_ids.add(mp_id)
            counts.matpes += 1
            pending += 1
            if pending == _BAR_EVERY:
                bar.update(pending)
                pending = 0
            yield doc
        counts.matpes_ids = len(matpes_ids)
        bar.set_postfix(file="MP-ALOE")
        for doc in mp_aloe:  # the id set is complete here: the generator reaches this line after MatPES
            mp_id = _mp_id(doc)
            pending += 1
            if pending == _BAR_EVERY:
                bar.update(pending)
                pending = 0
            if mp_id is None:
                counts.mp_aloe_null_id_kept += 1
            elif mp_id in matpes_ids:
                counts.mp_aloe_dropped += 1
                continue
            counts.mp_aloe_kept += 1
            yield doc
        bar.update(pending)

    with bar:
        counts.written = write_records(docs(), output_path)
    counts.skipped_bad = {str(matpes_path): matpes.n_skipped, str(mp_aloe_path): mp_aloe.n_skipped}
    return counts
