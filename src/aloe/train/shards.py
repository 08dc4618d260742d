"""Training data as mace-torch's preprocessed HDF5 shards, made from records a shard at a time.

The format is mace-torch's own, written by mace-torch's own code. A shard is what its preprocessing script
(``mace/cli/preprocess_data.py``, ``multi_train_hdf5``) writes per process: one ``.h5`` file with the attribute
``drop_last`` and one group ``config_batch_0``. That group holds a group ``config_<j>`` per structure (atomic
numbers, positions, cell, pbc, weight, config type, ``properties/*``, ``property_weights/*``), written by
``mace.data.utils.save_configurations_as_HDF5`` from mace configurations. mace-torch reads a shard with
``mace.data.HDF5Dataset``, and ``run_train`` concatenates the shards of a part.

The configurations are the ones ``run_train`` would build from the member's extxyz files, number for number. A
record becomes ASE ``Atoms`` with :func:`aloe.data.formats.record_to_atoms`, which gives the same numbers as
aloe's extxyz written and read back: numbers are written in their shortest exact form. Then
``load_from_xyz``'s steps follow: ``info[head_key]`` is set to the head's name, and ``config_from_atoms`` runs
with ``run_train``'s key specification (its ``--*_key`` options) and ``--config_type_weights``.
``--keep_isolated_atoms`` has nothing to act on: aloe's records carry no ``config_type``, so no structure is an
``IsolatedAtom``, in either format.

``drop_last`` is False. mace reads it only for test sets (``--test_dir``), and the test set stays extxyz (see
:mod:`aloe.train.prepare`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aloe.runs import atomic_path

#: The head aloe trains (mace-torch's default head).
HEAD = "Default"
#: Shard file names inside a part's folder (``train/shard-00000.h5``).
SHARD_PATTERN = "shard-{:05d}.h5"


def _mace() -> None:
    from aloe.potentials.mace import ensure_e3nn_importable

    ensure_e3nn_importable()


def shard_files(part: str, n: int, size: int) -> list[str]:
    """Paths (relative to the member's folder) of the shards of a part of ``n`` structures, ``size`` per shard."""
    count = max(1, -(-n // size))
    return [f"{part}/{SHARD_PATTERN.format(i)}" for i in range(count)]


class ConfigMaker:
    """Records -> mace configurations as ``run_train`` builds them from extxyz (see the module docstring).

    Parameters
    ----------
    namespace
        The member's ``run_train`` options, parsed by mace-torch's own parser: key names (``--energy_key`` ...)
        and ``--config_type_weights``.
    """

    def __init__(self, namespace: argparse.Namespace) -> None:
        _mace()
        from mace.data.utils import KeySpecification, update_keyspec_from_kwargs
        from mace.tools.scripts_utils import get_config_type_weights

        self.keyspec = KeySpecification()
        update_keyspec_from_kwargs(self.keyspec, vars(namespace))  # as run_train does
        self.weights = get_config_type_weights(namespace.config_type_weights)
        self.head_key = self.keyspec.info_keys["head"]

    def __call__(self, record: dict[str, Any]) -> Any:
        """The mace ``Configuration`` of one record."""
        from mace.data.utils import config_from_atoms

        from aloe.data.formats import record_to_atoms

        atoms = record_to_atoms(record)
        atoms.info[self.head_key] = HEAD  # load_from_xyz does this before config_from_atoms
        return config_from_atoms(
            atoms, key_specification=self.keyspec, config_type_weights=self.weights, head_name=HEAD
        )


def write_shard(path: Path, configs: Iterable[Any]) -> None:
    """Write one shard with mace-torch's ``save_configurations_as_HDF5``: a temp file renamed onto ``path``.

    ``configs`` may be a generator: mace's function writes each configuration as it comes, so a shard is
    never in memory at once. A shard at ``path`` is complete: a killed writer leaves only its temp file
    (``.shard-*.tmp``).
    """
    _mace()
    import h5py
    from mace.data.utils import save_configurations_as_HDF5

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["drop_last"] = False
            save_configurations_as_HDF5(configs, 0, fh)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 otherwise


def read_shard(path: Path, z_table: Sequence[int], r_max: float) -> Any:
    """A shard as mace-torch's ``HDF5Dataset`` (what ``run_train`` trains on)."""
    _mace()
    from mace.data import HDF5Dataset
    from mace.tools.utils import AtomicNumberTable

    return HDF5Dataset(
        str(path), r_max=r_max, z_table=AtomicNumberTable(list(z_table)), heads=[HEAD], head=HEAD
    )


@dataclass
class _E0Row:
    """What mace's ``compute_average_E0s`` reads from a configuration."""

    atomic_numbers: np.ndarray
    properties: dict[str, float]


@dataclass
class AverageE0s:
    """Collects a training set's compositions and energies for mace's least-squares E0s (``--E0s=average``).

    ``run_train`` cannot fit them from HDF5 data, so aloe calls the function mace itself calls on
    ``collections.train``, ``mace.data.compute_average_E0s``. It gets the same rows, in the same order: the
    atomic numbers of the structure's sites and ``float(record["energy"])``, what ``config_from_atoms`` reads
    from the ``Atoms`` of :func:`aloe.data.formats.record_to_atoms`. Memory per structure: its atomic numbers
    (one byte per atom) and one energy; mace's fit itself builds a structures x elements matrix.
    """

    numbers: bytearray = field(default_factory=bytearray)
    offsets: list[int] = field(default_factory=lambda: [0])
    energies: list[float] = field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        """One training record: its atomic numbers and energy, as ``config_from_atoms`` reads them."""
        from ase.data import atomic_numbers

        from aloe.data.formats import structure_arrays

        _, symbols, _, _ = structure_arrays(record["structure"])
        self.numbers.extend(bytes(atomic_numbers[s] for s in symbols))
        self.offsets.append(len(self.numbers))
        self.energies.append(float(record["energy"]))

    def __len__(self) -> int:
        return len(self.energies)

    def __getitem__(self, i: int) -> _E0Row:
        zs = np.frombuffer(self.numbers, dtype=np.uint8)[self.offsets[i] : self.offsets[i + 1]]
        return _E0Row(zs.astype(np.int64), {"energy": self.energies[i]})

    def solve(self, zs: Sequence[int]) -> dict[int, float]:
        """Run mace's ``compute_average_E0s`` over the collected rows, for the atomic numbers ``zs`` (sorted)."""
        _mace()
        from mace.data.utils import compute_average_E0s
        from mace.tools.utils import AtomicNumberTable

        fitted = compute_average_E0s(self, AtomicNumberTable(sorted(int(z) for z in zs)))
        return {int(z): float(e) for z, e in fitted.items()}
