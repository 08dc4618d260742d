"""``aloe screen`` with the CHGNet trio equals the reference code's per-structure loop, even for mixed batches.

The input mixes alkali halides and PbTe without bond-graph angles (whose chgnet-0.2.0 energy used to depend on the
batch: up to 0.16 eV/atom) with ordinary crystals, an isolated atom in a big box, 1-atom cells and a 32-atom cell, and
screens them as ONE sub-batch. The oracle is ``benchmarks/bench_screen.py``'s baseline: each structure alone through
``CHGNetCalculator`` of each model, formation energy per atom from the same references, disagreements with numpy
per pair, then the medians, factor and thresholds.
"""

from __future__ import annotations

import contextlib
import io
from itertools import combinations

import numpy as np
import pytest
import yaml
from ase.io import write

from aloe.screen.settings import ScreenSettings
from aloe.screen.stage import read_metrics, screen
from tests.potentials.test_batch_invariance import mixed_structures

pytest.importorskip("chgnet")

COMMITTEE = ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"]


@pytest.fixture(scope="module")
def calculators() -> list:
    """Each model's own ASE calculator (an independent copy of the weights), as the reference code uses them."""
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        return [
            CHGNetCalculator(
                model=CHGNet.load(model_name=m.removeprefix("chgnet-"), verbose=False), use_device="cpu"
            )
            for m in COMMITTEE
        ]


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, float]]:
    """Per-model elemental references: each model's energy per atom of a 1-atom fcc cell.

    Not relaxed (that takes minutes), but per model and of the right size, so formation energies are comparable
    across the committee and the outcomes are a mix, not all 'selected'. Both sides of the comparison read this same
    table, so it is computed the quick way (one batch per model).
    """
    from ase.build import bulk
    from pymatgen.core import Element

    from aloe.potentials.registry import load_potential
    from aloe.structures import StructureBatch

    elements = sorted({s for atoms in mixed_structures() for s in atoms.get_chemical_symbols()})
    # nearest neighbours at twice the atomic radius, but at least 2.6 A (N, O: no collapsed molecules)
    cells = [
        bulk(el, "fcc", a=np.sqrt(2) * max(2 * float(Element(el).atomic_radius), 2.6)) for el in elements
    ]
    refs: dict[str, dict[str, float]] = {}
    for name in COMMITTEE:
        pred = load_potential(name, threads=1).predict(StructureBatch.from_atoms(cells))
        assert pred.errors == [None] * len(cells)
        refs[name] = {el: float(e) for el, e in zip(elements, pred.energy, strict=True)}
    return refs


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


def per_structure_loop(structures, calculators, references) -> list[dict]:
    """The reference code's loop (as in benchmarks/bench_screen.py): one structure at a time, ASE calculators."""
    from pymatgen.core import Element

    out = []
    for atoms in structures:
        atoms = atoms.copy()
        energy, formation, forces, stress = [], [], [], []
        for name, calc in zip(COMMITTEE, calculators, strict=True):
            atoms.calc = calc
            e = atoms.get_potential_energy()
            energy.append(e)
            formation.append(
                (e - sum(references[name][s] for s in atoms.get_chemical_symbols())) / len(atoms)
            )
            forces.append(atoms.get_forces())
            stress.append(atoms.get_stress())
        e_dis = np.std(formation)
        f_dis = np.mean(
            [np.sqrt(np.mean(np.square(np.linalg.norm(a - b, axis=1)))) for a, b in combinations(forces, 2)]
        )
        s_dis = np.mean([np.linalg.norm(a - b) for a, b in combinations(stress, 2)])
        med_e = np.median(formation)
        med_f = np.median([np.linalg.norm(f, axis=1).max() for f in forces])
        med_s = np.median([abs(np.mean(s[:3])) for s in stress])
        z = {Element(s) for s in atoms.get_chemical_symbols()}  # the reference code's factor, via pymatgen
        factor = 5.0 if any(el.is_noble_gas for el in z) else 1.0
        factor *= 3 if any(el.symbol == "He" for el in z) else 1
        factor *= 2 if any(el.symbol == "Ne" for el in z) else 1
        factor *= 4 if any(el.symbol == "Tc" for el in z) else 1
        factor *= 4 if any(el.is_actinoid for el in z) else 1
        factor *= 3 if any(el.is_lanthanoid for el in z) else 1
        limit = 0.1 * factor * np.sqrt(len(atoms)) / np.sqrt(2)
        if med_e > 0.25 or med_f > 50 or med_s > 0.5:
            outcome = "discarded"
        elif e_dis > limit or f_dis > limit or s_dis > limit:
            outcome = "selected"
        else:
            outcome = "rejected"
        out.append(
            {
                "energy": energy,
                "formation_energy": formation,
                "energy_disagreement": e_dis,
                "force_disagreement": f_dis,
                "stress_disagreement": s_dis,
                "outcome": outcome,
                "n_atoms": len(atoms),
            }
        )
    return out


def test_screen_of_a_mixed_batch_equals_the_per_structure_loop(tmp_path, calculators, references):
    structures = mixed_structures()
    write(tmp_path / "mixed.extxyz", structures)
    refs = tmp_path / "refs.yaml"
    refs.write_text(yaml.safe_dump(references))
    settings = ScreenSettings.model_validate(
        {
            "input": str(tmp_path / "mixed.extxyz"),
            "committee": COMMITTEE,
            "references": str(refs),
            "compute_references": False,
            "batch_size": 64,  # every structure in one forward pass per model
            "output": str(tmp_path / "screen"),
            "progress": False,
        }
    )
    table = read_metrics(screen(settings).run_dir).sort_by("index").to_pylist()
    expected = per_structure_loop(structures, calculators, references)
    assert len(table) == len(expected)
    for r, (row, ref) in enumerate(zip(table, expected, strict=True)):
        where = f"row {r} ({structures[r].get_chemical_formula()}): {row['reason']}"
        n = ref["n_atoms"]
        # float32 models: 1e-5 eV/atom, and the disagreements to the same round-off
        np.testing.assert_allclose(row["energy"], ref["energy"], rtol=0, atol=1e-5 * n, err_msg=where)
        np.testing.assert_allclose(
            row["formation_energy"], ref["formation_energy"], rtol=0, atol=1e-5, err_msg=where
        )
        for key, tol in (
            ("energy_disagreement", 1e-5),
            ("force_disagreement", 1e-4),
            ("stress_disagreement", 1e-5),
        ):
            assert row[key] == pytest.approx(ref[key], abs=tol), (key, where)
        assert row["outcome"] == ref["outcome"], where
    # the mix exercises all three outcomes, so outcomes are compared, not just one default
    assert {row["outcome"] for row in table} == {"selected", "rejected", "discarded"}
