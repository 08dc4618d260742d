"""Generated candidates -> rows of the candidate schema (:mod:`aloe.data.candidates`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
