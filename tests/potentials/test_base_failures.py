"""Failure isolation of Potential.predict, exercised through small potentials built for the purpose."""

from __future__ import annotations

import numpy as np

from aloe.potentials.base import Potential, Predictions
from aloe.structures import StructureBatch
from tests.potentials.conftest import emt_structures


class _Toy(Potential):
    """Energy = number of atoms; zero forces and stress; misbehaves on chosen ids."""

    name = "toy"

    def __init__(self, raise_on=(), nan_on=(), batch_size=32):
        self.raise_on, self.nan_on, self.batch_size = set(raise_on), set(nan_on), batch_size
        self.calls: list[int] = []

    def _predict_batch(self, batch, shared):
        self.calls.append(len(batch))
        if self.raise_on & set(batch.ids):
            raise RuntimeError(f"cannot handle {sorted(self.raise_on & set(batch.ids))[0]}\nsecond line")
        out = Predictions.empty(batch)
        out.energy[:] = batch.n_atoms
        out.forces[:] = 0.0
        out.stress[:] = 0.0
        out.errors = [None] * len(batch)
        for r, i in enumerate(batch.ids):
            if i in self.nan_on:
                out.forces[batch.atom_slice(r)][0, 0] = np.nan
        return out


def _batch() -> StructureBatch:
    return StructureBatch.from_atoms(emt_structures(), ids=list("abcde"))


def test_raising_batch_falls_back_one_by_one():
    batch = _batch()
    pot = _Toy(raise_on={"c"}, batch_size=4)
    pred = pot.predict(batch)
    # chunk [a b c d] raised -> retried one by one (4 calls); chunk [e] fine
    assert pot.calls == [4, 1, 1, 1, 1, 1]
    assert pred.errors == [None, None, "toy raised RuntimeError: cannot handle c", None, None]
    np.testing.assert_array_equal(pred.energy[[0, 1, 3, 4]], batch.n_atoms[[0, 1, 3, 4]])
    assert np.isnan(pred.energy[2]) and np.isnan(pred.forces[batch.atom_slice(2)]).all()
    assert np.isfinite(pred.forces[batch.atom_slice(3)]).all()


def test_non_finite_output_is_flagged():
    batch = _batch()
    pred = _Toy(nan_on={"b"}).predict(batch)
    assert pred.errors == [None, "toy returned non-finite forces", None, None, None]
    assert list(pred.ok) == [True, False, True, True, True]


def test_single_structure_batch_that_raises():
    batch = _batch().take([2])
    pred = _Toy(raise_on={"c"}, batch_size=1).predict(batch)
    assert pred.errors == ["toy raised RuntimeError: cannot handle c"]


def test_per_structure_potential_isolates_failures():
    class _One(Potential):
        name = "one"

        def _predict_one(self, atoms):
            if atoms.info["aloe_id"] == "d":
                raise ValueError("bad d")
            return 1.0, np.zeros((len(atoms), 3)), np.zeros(6)

    pred = _One().predict(_batch())
    assert pred.errors == [None, None, None, "one raised ValueError: bad d", None]
    assert np.isnan(pred.energy[3]) and (pred.energy[[0, 1, 2, 4]] == 1.0).all()
