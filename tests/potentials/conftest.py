from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aloe.structures import StructureBatch


def _deform(atoms: Atoms, seed: int, rattle: float = 0.05, strain: float = 0.02) -> Atoms:
    """Rattle positions and apply a random (non-symmetric) cell deformation: non-zero forces, shear stress."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0.0, strain, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def small_structures() -> list[Atoms]:
    """Ten small periodic structures of several chemistries, all rattled and strained."""
    base = [
        bulk("Cu", "fcc", a=3.62),
        bulk("Al", "fcc", a=4.05, cubic=True),
        bulk("NaCl", "rocksalt", a=5.64),
        bulk("Si", "diamond", a=5.43),
        bulk("MgO", "rocksalt", a=4.21),
        bulk("Fe", "bcc", a=2.87, cubic=True),
        bulk("CsCl", "cesiumchloride", a=4.12),
        bulk("ZnO", "wurtzite", a=3.25, c=5.21),
        bulk("Li", "bcc", a=3.51) * (2, 1, 1),
        Atoms(
            "BaTiO3",
            cell=np.eye(3) * 4.0,
            scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            pbc=True,
        ),
    ]
    return [_deform(a, seed) for seed, a in enumerate(base)]


def emt_structures() -> list[Atoms]:
    """Structures of EMT elements (Al, Cu, Ni, Pd, Ag, Pt, Au)."""
    base = [
        bulk("Cu", "fcc", a=3.62),
        bulk("Al", "fcc", a=4.05, cubic=True),
        bulk("Ni", "fcc", a=3.52) * (1, 1, 2),
        bulk("AuCu", "rocksalt", a=5.2),
        Atoms(
            "PdAg3",
            cell=np.eye(3) * 4.0,
            scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            pbc=True,
        ),
    ]
    return [_deform(a, 100 + seed) for seed, a in enumerate(base)]


@pytest.fixture(scope="session")
def chgnet_batch() -> StructureBatch:
    return StructureBatch.from_atoms(small_structures(), ids=[f"s{i}" for i in range(10)])


@pytest.fixture
def emt_batch() -> StructureBatch:
    return StructureBatch.from_atoms(emt_structures())


@pytest.fixture(scope="session")
def tiny_mace_file(tmp_path_factory) -> Path:
    """A randomly initialised, tiny float64 MACE model for Al and Cu (r_max 4 A), saved whole like mace-torch does."""
    pytest.importorskip("mace")
    from aloe.potentials.mace import ensure_e3nn_importable

    ensure_e3nn_importable()
    import torch
    from e3nn import o3
    from mace import modules
    from mace.tools import torch_tools

    torch.manual_seed(7)
    with torch_tools.default_dtype("float64"):
        model = modules.ScaleShiftMACE(
            r_max=4.0,
            num_bessel=4,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2,
            num_elements=2,
            hidden_irreps=o3.Irreps("8x0e+8x1o"),
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=np.array([-3.7, -4.1]),
            avg_num_neighbors=10.0,
            atomic_numbers=[13, 29],
            correlation=2,
            gate=torch.nn.functional.silu,
            atomic_inter_scale=1.3,
            atomic_inter_shift=0.1,
        )
    path = tmp_path_factory.mktemp("mace") / "tiny.model"
    torch.save(model, path)
    return path


def alcu_structures() -> list[Atoms]:
    """Al/Cu structures (the tiny MACE model's elements), rattled and strained."""
    base = [
        bulk("Cu", "fcc", a=3.62),
        bulk("Al", "fcc", a=4.05, cubic=True),
        bulk("AlCu", "cesiumchloride", a=3.0),
        bulk("Cu", "fcc", a=3.62) * (2, 1, 1),
        Atoms(
            "AlCu3",
            cell=np.eye(3) * 3.7,
            scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            pbc=True,
        ),
        Atoms("Al", cell=np.eye(3) * 5.0, pbc=True),  # no neighbour within r_max
    ]
    return [_deform(a, 200 + seed) for seed, a in enumerate(base)]
