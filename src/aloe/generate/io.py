"""Generated candidates and near-equilibrium frames -> rows of the candidate schema (:mod:`aloe.data.candidates`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from aloe.data.candidates import SCHEMA, symbol_table

if TYPE_CHECKING:
    from aloe.generate.space import CandidateBatch, CandidateSpace


def batch_to_table(batch: CandidateBatch, space: CandidateSpace) -> pa.Table:
    """Arrow table of a batch (see module docstring for the columns)."""
    m = len(batch)
    names = np.array([p.name for p in space.library], dtype=object)
    symbols = symbol_table()
    elements = np.empty(m, dtype=object)
    for p in np.unique(batch.prototype).tolist():
        rows = batch.prototype == p
        zs = space.element_numbers(p, batch.combination[rows])
        joined = symbols[zs[:, 0]]
        for col in range(1, zs.shape[1]):
            joined = joined + "-" + symbols[zs[:, col]]
        elements[rows] = joined
    offsets = batch.offsets
    proto_codes = batch.prototype.astype(np.int32)
    used, codes = np.unique(proto_codes, return_inverse=True)
    arrays = [
        pa.array(batch.index, pa.int64()),
        pa.DictionaryArray.from_arrays(
            pa.array(codes.astype(np.int32)), pa.array(names[used].tolist(), pa.string())
        ),
        pa.array(batch.occupation, pa.int16()),
        pa.array(elements.tolist(), pa.string()),
        pa.array(np.full(m, space.settings.seed, dtype=np.int64)),
        pa.array(batch.universe_index, pa.int64()),
        pa.array(batch.n_sites, pa.int16()),
        pa.FixedSizeListArray.from_arrays(pa.array(batch.cell.reshape(-1)), 9),
        pa.ListArray.from_arrays(pa.array(offsets * 3, pa.int32()), pa.array(batch.frac_coords.reshape(-1))),
        pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(batch.numbers, pa.int16())),
        pa.array(batch.scale, pa.float64()),
        pa.FixedSizeListArray.from_arrays(pa.array(batch.strain.reshape(-1)), 6),
        pa.nulls(m, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


class FrameRow(NamedTuple):
    """One near-equilibrium frame and the starting candidate it came from (a row of :func:`frames_to_table`).

    ``index`` is the frame's number (start index * frames per start + its slot); ``prototype``, ``occupation``,
    ``elements``, ``universe_index`` and ``scale`` are the starting candidate's; ``source_id`` the readable id
    ``<prototype>:<occupation>:<elements>@<T>K#<slot>``; ``cell`` (3, 3), ``frac_coords`` (n, 3) in ``[0, 1)`` and
    ``numbers`` (n,) the frame's (super)cell.
    """

    index: int
    prototype: str
    occupation: int
    elements: str
    universe_index: int
    scale: float
    source_id: str
    cell: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray


def frames_to_table(frames: list[FrameRow], seed: int) -> pa.Table:
    """Arrow table of near-equilibrium frames in the candidate schema.

    Columns as a generate candidate's, with the starting candidate's prototype, occupation, elements,
    universe_index and scale, the run ``seed``, the frame's own structure (``n_sites`` atoms of the MD supercell)
    and ``source_id``; ``strain`` is NaN (no perturbation was applied).
    """
    m = len(frames)
    n_sites = np.array([len(f.numbers) for f in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_sites)]).astype(np.int64)
    names = sorted({f.prototype for f in frames})
    code = {name: c for c, name in enumerate(names)}

    def stacked(column: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        parts = [np.asarray(getattr(f, column), dtype=dtype).reshape(shape) for f in frames]
        return np.concatenate(parts) if parts else np.zeros((0, *shape[1:]), dtype=dtype)

    arrays = [
        pa.array(np.array([f.index for f in frames], dtype=np.int64)),
        pa.DictionaryArray.from_arrays(
            pa.array(np.array([code[f.prototype] for f in frames], dtype=np.int32)),
            pa.array(names, pa.string()),
        ),
        pa.array(np.array([f.occupation for f in frames], dtype=np.int16)),
        pa.array([f.elements for f in frames], pa.string()),
        pa.array(np.full(m, seed, dtype=np.int64)),
        pa.array(np.array([f.universe_index for f in frames], dtype=np.int64)),
        pa.array(n_sites.astype(np.int16)),
        pa.FixedSizeListArray.from_arrays(pa.array(stacked("cell", (-1,), np.float64)), 9),
        pa.ListArray.from_arrays(
            pa.array(offsets * 3, pa.int32()), pa.array(stacked("frac_coords", (-1,), np.float64))
        ),
        pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), pa.array(stacked("numbers", (-1,), np.int16), pa.int16())
        ),
        pa.array(np.array([f.scale for f in frames], dtype=np.float64)),
        pa.FixedSizeListArray.from_arrays(pa.array(np.full(6 * m, np.nan)), 6),
        pa.array([f.source_id for f in frames], pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)
