"""Test-only encoders importable by path (``tests.select.helpers:FailsOnIron``), and the tests' select settings."""

from __future__ import annotations

import numpy as np

from aloe.select.encoders import Encoded, Encoder
from aloe.select.settings import SelectSettings
from aloe.structures import StructureBatch

#: Settings that give clusters both smaller and larger than k on the 100 candidates of the ``gen_run`` fixture
#: (matminer features).
DIRECT = {"birch_threshold": 0.5, "k": 2}


def select_settings(inp, out, **kw) -> SelectSettings:
    data = {"input": str(inp), "encoder": "matminer", "output": str(out), "direct": dict(DIRECT)}
    data.update(kw)
    return SelectSettings.model_validate(data)


class ToyEncoder(Encoder):
    """Cheap geometric/compositional features (9 numbers): volume per atom, Z statistics, atom count, cell lengths."""

    name = "toy"
    dim = 9

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = int(batch_size)
        self.calls = 0

    def _features(self, batch: StructureBatch, r: int) -> np.ndarray:
        z = batch.numbers[batch.atom_slice(r)].astype(float)
        lengths = np.linalg.norm(batch.cell[r], axis=1)
        return np.array(
            [batch.volumes[r] / len(z), z.mean(), z.std(), z.min(), z.max(), len(z), *lengths], dtype=float
        )

    def _encode_batch(self, batch: StructureBatch) -> Encoded:
        self.calls += 1
        features = np.array([self._features(batch, r) for r in range(len(batch))]).reshape(len(batch), -1)
        return Encoded(features[:, : self.dim], [None] * len(batch))


class WideToyEncoder(ToyEncoder):
    """The toy features plus three more columns (a different ``dim``)."""

    name = "toy-wide"
    dim = 12

    def _features(self, batch: StructureBatch, r: int) -> np.ndarray:
        base = super()._features(batch, r)
        return np.concatenate([base, base[:3] ** 2])


class WrongShapeEncoder(ToyEncoder):
    """Declares 9 features but returns 10: every batch breaks :meth:`Encoder._checked`."""

    name = "toy-wrong-shape"

    def _encode_batch(self, batch: StructureBatch) -> Encoded:
        part = super()._encode_batch(batch)
        return Encoded(np.hstack([part.features, np.zeros((len(batch), 1))]), part.errors)


class FailsOnElement(ToyEncoder):
    """Toy encoder whose batch raises when any structure in it contains atomic number ``element``."""

    name = "toy-fails"

    def __init__(self, element: int = 26, batch_size: int = 64) -> None:
        super().__init__(batch_size=batch_size)
        self.element = int(element)

    def _encode_batch(self, batch: StructureBatch) -> Encoded:
        if self.element in batch.numbers:
            raise RuntimeError(f"no element {self.element}\nsecond line is not reported")
        return super()._encode_batch(batch)


class FailsOnIron(FailsOnElement):
    """:class:`FailsOnElement` for iron (loadable as ``tests.select.helpers:FailsOnIron``)."""

    name = "toy-fails-on-fe"

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__(element=26, batch_size=batch_size)


class PartlyNaN(ToyEncoder):
    """Toy encoder whose second feature is NaN for structures with an odd atom count."""

    name = "toy-partly-nan"

    def _encode_batch(self, batch: StructureBatch) -> Encoded:
        part = super()._encode_batch(batch)
        part.features[batch.n_atoms % 2 == 1, 1] = np.nan
        return part


def toy_encoder(batch_size: int = 64, device: str = "cpu") -> ToyEncoder:
    """Factory that records the options :func:`aloe.select.encoders.load_encoder` passes."""
    encoder = ToyEncoder(batch_size=batch_size)
    encoder.device = device  # type: ignore[attr-defined]
    return encoder


def not_an_encoder() -> dict:
    """A factory that returns something else."""
    return {"name": "not an encoder"}
