from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("ALOE_PROGRESS", "0")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PUBLISHED_PROTOTYPES = SHARED_DATA / "mp-aloe-prototypes"

# Small hand-made prototypes (POSCAR text) with known distinct occupations.
ROCKSALT = """rocksalt
1.0
0.0 2.0 2.0
2.0 0.0 2.0
2.0 2.0 0.0
H He
1 1
direct
0.0 0.0 0.0
0.5 0.5 0.5
"""
CSCL = """CsCl
1.0
3.0 0.0 0.0
0.0 3.0 0.0
0.0 0.0 3.0
H He
1 1
direct
0.0 0.0 0.0
0.5 0.5 0.5
"""
FLUORITE = """fluorite (HHe2)
1.0
0.0 2.7 2.7
2.7 0.0 2.7
2.7 2.7 0.0
H He
1 2
direct
0.0 0.0 0.0
0.25 0.25 0.25
0.75 0.75 0.75
"""
PEROVSKITE = """cubic perovskite (H He Li3)
1.0
3.9 0.0 0.0
0.0 3.9 0.0
0.0 0.0 3.9
H He Li
1 1 3
direct
0.0 0.0 0.0
0.5 0.5 0.5
0.5 0.5 0.0
0.5 0.0 0.5
0.0 0.5 0.5
"""


def write_prototypes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "POSCAR_rocksalt").write_text(ROCKSALT)
    (folder / "POSCAR_cscl").write_text(CSCL)
    (folder / "POSCAR_fluorite").write_text(FLUORITE)
    (folder / "POSCAR_perovskite_weight0.25").write_text(PEROVSKITE)
    return folder


@pytest.fixture
def proto_dir(tmp_path: Path) -> Path:
    return write_prototypes(tmp_path / "protos")


@pytest.fixture
def published_dir() -> Path:
    if not PUBLISHED_PROTOTYPES.is_dir():
        pytest.skip(
            f"published MP-ALOE prototypes not found at {PUBLISHED_PROTOTYPES} (../shared/data is absent)"
        )
    return PUBLISHED_PROTOTYPES


# ---- a small trained MACE file ----------------------------------------------------------------------------------
#: Lennard-Jones labels for every element alike (one pair, eV and A): well depth at 2.69 A, cut at MACE's r_max.
LJ_LABELS = {"sigma": 2.4, "epsilon": 0.1, "rc": 5.0}
#: Over the ``tiny`` preset, so that a few epochs learn something: no EMA (after a dozen updates its averaged copy,
#: which mace saves, is still the random start), small batches (more updates per epoch), a larger step.
QUICK_LEARNING = {"ema": None, "batch_size": 4, "lr": 0.02}


def lj_labelled_cells(elements: Iterable[str], seed: int = 0) -> list:
    """Two-atom rocksalt and CsCl cells pairing each element with the next, doubled, rattled and strained.

    Nearest neighbours 2.5-3.0 A apart (around the Lennard-Jones minimum), labels (``REF_energy``, ``REF_forces``,
    ``REF_stress``) from ASE's Lennard-Jones with :data:`LJ_LABELS`: 4-atom cells, two per element.
    """
    from ase.build import bulk
    from ase.calculators.lj import LennardJones
    from ase.data import atomic_numbers

    symbols = sorted(set(elements), key=atomic_numbers.__getitem__)
    rng = np.random.default_rng(seed)
    frames = []
    for i, first in enumerate(symbols):
        second = symbols[(i + 1) % len(symbols)]
        for structure, a_per_d in (("rocksalt", 2.0), ("cesiumchloride", 2.0 / np.sqrt(3.0))):
            atoms = bulk("NaCl", structure, a=a_per_d * rng.uniform(2.5, 3.0)) * (2, 1, 1)
            atoms.symbols = [first, second] * 2
            atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0.0, 0.03, (3, 3))), scale_atoms=True)
            atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
            atoms.calc = LennardJones(**LJ_LABELS)
            atoms.info["REF_energy"] = atoms.get_potential_energy()
            atoms.arrays["REF_forces"] = atoms.get_forces()
            atoms.info["REF_stress"] = atoms.get_stress(voigt=True)
            atoms.calc = None
            frames.append(atoms)
    return frames


def train_tiny_mace(folder: Path, elements: Iterable[str], epochs: int = 4, **mace_options) -> Path:
    """A tiny MACE for ``elements``, trained by aloe's train stage (mace-torch's own ``run_train``).

    The data are :func:`lj_labelled_cells` (two 4-atom cells per element); E0s are the Lennard-Jones isolated atom
    (0 eV); one member of the ``tiny`` preset with :data:`QUICK_LEARNING` (``mace_options`` over both) for
    ``epochs`` epochs, tested in this process. Four epochs of 17 elements: forces up to a few 0.1 eV/A, in about
    20-40 s on 2 CPU cores, most of it mace's start-up. Returns the finished ``models/member-0.model``.
    """
    import ase.io

    from aloe.train.settings import TrainSettings
    from aloe.train.stage import train

    frames = lj_labelled_cells(elements)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "lj-labelled.extxyz"
    ase.io.write(data, frames, format="extxyz")
    e0s = {symbol: 0.0 for symbol in {str(s) for atoms in frames for s in atoms.symbols}}
    settings = TrainSettings(
        inputs=[data],
        preset="tiny",
        epochs=epochs,
        committee_size=1,
        e0s=e0s,
        mace_options={**QUICK_LEARNING, **mace_options},
        executor="local",
        output=folder / "train",
        progress=False,
    )
    train(settings)
    return folder / "train" / "models" / "member-0.model"
