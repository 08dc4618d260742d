"""The encoder seam for DIRECT: structures -> fixed-length feature vectors.

Built-in encoders (resolved by :func:`load_encoder`, lazily, so importing aloe stays fast):

``chgnet-0.3.0`` (default), ``chgnet-0.2.0``, ``chgnet-r2scan``
    CHGNet's atom features after the last message-passing layer (and the readout normalisation), averaged over
    the atoms of the structure (CHGNet itself sums them: aloe divides by the atom count, so a supercell encodes
    like its cell); 64 numbers. The weights ship in the chgnet
    wheel, so this works offline, and it sees both composition and geometry (like the M3GNet features maml's
    ``DIRECTSampler`` uses by default, which need a download).
``matminer``
    Descriptors, no model: Magpie composition statistics (``ElementProperty`` preset ``magpie``, 132 numbers,
    missing element data imputed by matminer), ``DensityFeatures`` (density, volume per atom, packing fraction)
    and a radial distribution function (``RadialDistributionFunction``, 0-6 A in 0.25 A bins, 24 numbers); 159.
``package.module:factory``
    Any callable returning an :class:`Encoder` (called with ``device``, ``batch_size`` and ``threads`` when it
    accepts them).

Every encoder isolates failures: a batch that raises is retried one structure at a time, and a structure that
cannot be encoded gets a row of NaN plus a one-line reason; the select stage leaves such structures out.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from aloe.errors import AloeError, one_line
from aloe.structures import StructureBatch

#: Built-in encoder names (for help texts and errors).
BUILTIN_ENCODERS = ("chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "matminer")


@dataclass
class Encoded:
    """Features of one batch.

    Attributes
    ----------
    features
        Shape ``(m, d)`` float64; a row of NaN where the structure failed.
    errors
        ``m`` entries: ``None`` or a one-line reason.
    """

    features: np.ndarray
    errors: list[str | None]


class Encoder:
    """Base class: implement :meth:`_encode_batch` (and set :attr:`name`, :attr:`dim`).

    Attributes
    ----------
    name
        Short name recorded in outputs.
    dim
        Length of every feature vector.
    batch_size
        Structures per call of :meth:`_encode_batch`.
    """

    name: str = "encoder"
    dim: int = 0
    batch_size: int = 64

    def _encode_batch(self, batch: StructureBatch) -> Encoded:
        """Features of a whole batch (override)."""
        raise NotImplementedError

    def identity(self) -> str:
        """A string that changes when the encoder's output would (name plus a weight hash where known)."""
        return self.name

    def feature_names(self) -> list[str]:
        """Names of the ``dim`` features."""
        return [f"{self.name}_{i}" for i in range(self.dim)]

    def encode(self, batch: StructureBatch) -> Encoded:
        """Features of every structure in ``batch``, never raising for one bad structure.

        Returns
        -------
        Encoded
            ``features`` of shape ``(len(batch), dim)``.
        """
        m = len(batch)
        features = np.full((m, self.dim), np.nan)
        errors: list[str | None] = ["not encoded"] * m
        for rows, sub in batch.chunks(max(1, self.batch_size)):
            try:
                part = self._checked(sub)
            except Exception as exc:  # isolate the structure that breaks the batch
                if len(sub) == 1:
                    part = Encoded(np.full((1, self.dim), np.nan), [f"{self.name} raised {one_line(exc)}"])
                else:
                    part = self._one_by_one(sub)
            features[rows] = part.features
            for j, r in enumerate(rows.tolist()):
                errors[r] = part.errors[j]
        for r in range(m):
            if errors[r] is None and not np.isfinite(features[r]).any():
                errors[r] = f"{self.name} returned no finite feature"
        return Encoded(features, errors)

    def _checked(self, batch: StructureBatch) -> Encoded:
        part = self._encode_batch(batch)
        if part.features.shape != (len(batch), self.dim):
            raise AloeError(
                f"encoder {self.name} returned features of shape {part.features.shape}, "
                f"expected ({len(batch)}, {self.dim})"
            )
        return part

    def _one_by_one(self, batch: StructureBatch) -> Encoded:
        features = np.full((len(batch), self.dim), np.nan)
        errors: list[str | None] = []
        for rows, single in batch.chunks(1):
            try:
                part = self._checked(single)
                features[rows] = part.features
                errors.append(part.errors[0])
            except Exception as exc:
                errors.append(f"{self.name} raised {one_line(exc)}")
        return Encoded(features, errors)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class CHGNetEncoder(Encoder):
    """CHGNet crystal features (64 numbers per structure) of a model shipped inside the chgnet wheel.

    Parameters
    ----------
    model_name
        ``"0.3.0"``, ``"0.2.0"`` or ``"r2scan"``.
    device, batch_size, threads
        As for :class:`aloe.potentials.chgnet.CHGNetPotential` (whose model loading and graphs this reuses).
    """

    dim = 64

    def __init__(
        self,
        model_name: str = "0.3.0",
        *,
        device: str = "cpu",
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        from aloe.potentials.chgnet import CHGNetPotential

        self.potential = CHGNetPotential(model_name, device=device, batch_size=batch_size, threads=threads)
        self.name = self.potential.name
        self.batch_size = int(batch_size)

    def identity(self) -> str:
        """The model's identity (name and weight-file hash)."""
        return self.potential.identity()

    def _encode_batch(self, batch: StructureBatch) -> Encoded:
        import torch

        potential = self.potential
        features = np.full((len(batch), self.dim), np.nan)
        errors: list[str | None] = [None] * len(batch)
        # The graphs of the whole batch from one neighbour-list pass (the potential's batched graph path).
        rows, usable, index = potential.usable_graph(batch, errors)
        if not len(rows):
            return Encoded(features, errors)
        with torch.no_grad():
            # In the potential's batch-invariant groups: chgnet-0.2.0 gives a structure without bond-graph angles
            # other features in a batch with structures that have angles (see aloe.potentials.chgnet).
            parts = potential.compute_batch(usable, index, return_crystal_feas=True)
        for group, _, _, pred in parts:
            # The shipped models pool by SUM over atoms (GraphPooling(average=False)); dividing by the atom count
            # gives the mean, so a supercell encodes like its cell and structure size does not dominate the features.
            pooled = pred["crystal_fea"].double() / pred["atoms_per_graph"].double().view(-1, 1)
            features[rows[group]] = pooled.cpu().numpy()
        return Encoded(features, errors)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()  # the potential drops its weights when pickled


class MatminerEncoder(Encoder):
    """Descriptor features from matminer: Magpie composition statistics, density features and a binned RDF.

    Parameters
    ----------
    rdf_cutoff, rdf_bin
        Radial distribution function range and bin width (A).
    impute_nan
        Let matminer fill missing elemental data (otherwise those features are NaN, and the select stage's
        ``nonfinite`` rule applies).
    """

    name = "matminer"
    batch_size = 256

    def __init__(self, rdf_cutoff: float = 6.0, rdf_bin: float = 0.25, impute_nan: bool = True) -> None:
        try:
            from matminer.featurizers.composition import ElementProperty
            from matminer.featurizers.structure import DensityFeatures, RadialDistributionFunction
        except ImportError as exc:
            raise AloeError(
                f"encoder 'matminer' needs the package matminer: pip install matminer ({exc})"
            ) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._composition = ElementProperty.from_preset("magpie", impute_nan=impute_nan)
        self._density = DensityFeatures()
        self._rdf = RadialDistributionFunction(cutoff=rdf_cutoff, bin_size=rdf_bin)
        self.rdf_cutoff, self.rdf_bin, self.impute_nan = rdf_cutoff, rdf_bin, impute_nan
        self.dim = len(self.feature_names())

    def identity(self) -> str:
        """Name, matminer version and settings."""
        from importlib import metadata

        return f"matminer-{metadata.version('matminer')}:rdf{self.rdf_cutoff}/{self.rdf_bin}:impute{self.impute_nan}"

    def feature_names(self) -> list[str]:
        """Magpie, density and RDF feature labels."""
        return [
            *self._composition.feature_labels(),
            *self._density.feature_labels(),
            *self._rdf.feature_labels(),
        ]

    def _encode_batch(self, batch: StructureBatch) -> Encoded:
        features = np.full((len(batch), self.dim), np.nan)
        errors: list[str | None] = []
        for r in range(len(batch)):
            try:
                structure = batch.to_structure(r)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = np.concatenate(
                        [
                            np.asarray(self._composition.featurize(structure.composition), dtype=float),
                            np.asarray(self._density.featurize(structure), dtype=float),
                            np.asarray(self._rdf.featurize(structure), dtype=float).ravel(),
                        ]
                    )
                features[r] = values
                errors.append(None)
            except Exception as exc:
                errors.append(f"matminer raised {one_line(exc)}")
        return Encoded(features, errors)


def load_encoder(
    spec: str | Encoder, *, device: str = "cpu", batch_size: int = 64, threads: int | None = None
) -> Encoder:
    """Resolve an encoder name (see the module docstring) or pass an :class:`Encoder` through."""
    if isinstance(spec, Encoder):
        return spec
    name = str(spec).strip()
    if name.startswith("chgnet-"):
        return CHGNetEncoder(
            name.removeprefix("chgnet-"), device=device, batch_size=batch_size, threads=threads
        )
    if name == "matminer":
        return MatminerEncoder()
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise AloeError(f"encoder {name!r}: cannot import ({exc})") from None
        options = {"device": device, "batch_size": batch_size, "threads": threads}
        accepted = inspect.signature(factory).parameters
        encoder = factory(**{k: v for k, v in options.items() if k in accepted})
        if not isinstance(encoder, Encoder):
            raise AloeError(
                f"encoder {name!r}: the factory returned {type(encoder).__name__}, not an aloe Encoder"
            )
        return encoder
    raise AloeError(
        f"unknown encoder {name!r}: use one of {', '.join(BUILTIN_ENCODERS)} or 'package.module:factory'"
    )
