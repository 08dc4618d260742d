"""Equilibrium: cohesive energies by hand, seeded perturbation, EMT against itself, failures and unconverged runs."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from pydantic import ValidationError

from aloe.bench.base import COMMON_COLUMNS, BenchStructure
from aloe.bench.equilibrium import (
    Equilibrium,
    EquilibriumSettings,
    cohesive_energy_per_atom,
    displace_sites,
    shipped_atom_energies,
    structure_seed,
)

NO_FINGERPRINT = EquilibriumSettings(compute_fingerprint=False)


def _emt_relaxed(atoms: Atoms) -> tuple[Atoms, float]:
    """A cubic crystal with symmetric sites at EMT's minimum volume, and its EMT energy (a reference that equals
    the potential). Only the lattice constant can relax, so a 1D minimisation is exact and cheap."""
    from scipy.optimize import minimize_scalar

    def scaled(f: float) -> Atoms:
        out = atoms.copy()
        out.set_cell(atoms.cell * f, scale_atoms=True)
        return out

    def energy(f: float) -> float:
        work = scaled(f)
        work.calc = EMT()
        return float(work.get_potential_energy())

    best = minimize_scalar(energy, bounds=(0.9, 1.1), method="bounded", options={"xatol": 1e-8})
    return scaled(best.x), energy(best.x)


def _emt_atom_energies(symbols: tuple[str, ...] = ("Cu", "Au", "Ni", "Al")) -> dict[str, float]:
    """EMT's isolated-atom energies (one atom in a box larger than EMT's cutoff)."""
    out = {}
    for symbol in symbols:
        atom = Atoms(symbol, cell=[12.0, 12.0, 12.0], pbc=True)
        atom.calc = EMT()
        out[symbol] = float(atom.get_potential_energy())
    return out


def _cu3au() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms.symbols[0] = "Au"  # L1_2
    return atoms


@pytest.fixture(scope="module")
def emt_references() -> list[BenchStructure]:
    out = []
    for name, atoms in (("Cu", bulk("Cu", cubic=True)), ("Cu3Au", _cu3au()), ("Cu-1", bulk("Cu"))):
        relaxed, energy = _emt_relaxed(atoms)
        out.append(BenchStructure(name, relaxed, energy=energy))
    return out


# ---- pure helpers ------------------------------------------------------------------------------------------
def test_cohesive_energy_by_hand_and_a_missing_element_is_named():
    atom_energies = {"Fe": -3.0, "O": -1.5}
    # Fe2O3 with E = -40 eV: (-40 - (2 * -3 + 3 * -1.5)) / 5 = -5.9
    assert cohesive_energy_per_atom(-40.0, ["Fe", "Fe", "O", "O", "O"], atom_energies) == pytest.approx(-5.9)
    with pytest.raises(KeyError, match="Li, Zr"):
        cohesive_energy_per_atom(-10.0, ["Fe", "Zr", "Li"], atom_energies)


def test_shipped_atom_energies_are_matpes_energy_atomic():
    table = json.loads(resources.files("aloe.data").joinpath("matpes_elemental_refs.json").read_text())
    r2scan = shipped_atom_energies()
    assert r2scan["Cu"] == table["functionals"]["r2SCAN"]["isolated_atom"]["Cu"]
    assert shipped_atom_energies("matpes-pbe")["O"] == table["functionals"]["PBE"]["isolated_atom"]["O"]


def test_perturbation_is_seeded_per_structure_and_moves_every_site_by_the_distance():
    atoms = bulk("Cu", cubic=True)
    bench = Equilibrium("emt", NO_FINGERPRINT)
    s1 = BenchStructure("a", atoms, energy=0.0)
    start = bench.start(s1)
    np.testing.assert_allclose(np.linalg.norm(start.positions - atoms.positions, axis=1), 0.1, rtol=1e-12)
    # Same id, same start, whatever else was computed before; another id or seed: another start.
    bench.start(BenchStructure("b", atoms, energy=0.0))
    np.testing.assert_array_equal(bench.start(s1).positions, start.positions)
    assert not np.allclose(bench.start(BenchStructure("b", atoms, energy=0.0)).positions, start.positions)
    other_seed = Equilibrium("emt", EquilibriumSettings(seed=1, compute_fingerprint=False))
    assert not np.allclose(other_seed.start(s1).positions, start.positions)
    assert structure_seed(0, "a") == structure_seed(0, "a") != structure_seed(0, "b")
    moved = displace_sites(atoms, 0.25, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(moved.positions - atoms.positions, axis=1), 0.25)


def test_settings_are_documented_and_strict():
    s = EquilibriumSettings()
    assert (s.displacement, s.fmax, s.max_steps, s.atom_energies) == (0.1, 0.05, 500, "matpes-r2scan")
    for name, field in EquilibriumSettings.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        EquilibriumSettings(atom_energies="my-own")
    assert isinstance(s.fingerprint(), str)  # the settings' own hash is not shadowed by a field


def test_aggregate_over_constructed_rows():
    rows = [
        {"error": None, "e_coh_error": 0.1, "fingerprint_distance": 0.0, "converged": True},
        {"error": None, "e_coh_error": -0.3, "fingerprint_distance": 0.4, "converged": False},
        {"error": None, "e_coh_error": 0.2, "fingerprint_distance": None, "converged": True},
        {"error": "no isolated-atom energy for Xe"},
    ]
    agg = Equilibrium.aggregate(rows)
    assert agg["n"] == 4 and agg["n_failed"] == 1 and agg["n_unconverged"] == 1
    assert agg["e_coh_mae"] == pytest.approx(0.2)
    assert agg["e_coh_mean_error"] == pytest.approx(0.0)
    assert agg["e_coh_std"] == pytest.approx(np.std([0.1, -0.3, 0.2]))
    assert agg["fingerprint_distance_mean"] == pytest.approx(0.2)
    assert agg["fingerprint_distance_median"] == pytest.approx(0.2)
    assert Equilibrium.aggregate([])["e_coh_mae"] is None


# ---- the benchmark with EMT -----------------------------------------------------------------------------------
def test_emt_against_itself_gives_zero_error_and_near_zero_fingerprint_distance(emt_references):
    atom_energies = _emt_atom_energies()
    structures = emt_references[:2]  # 4-atom cells: the 0.1 A perturbation is more than a translation
    rows = Equilibrium("emt", atom_energies=atom_energies).calc_many(structures)
    for structure, row in zip(structures, rows, strict=True):
        assert row["error"] is None, row
        assert set(row) == set(COMMON_COLUMNS) - {"potential"} | set(Equilibrium.COLUMNS)
        assert row["converged"] is True and 0 < row["relax_steps"] <= 500
        assert abs(row["e_coh_error"]) < 1e-3
        assert row["fingerprint_distance"] < 0.05
        n = structure.n_atoms
        assert row["energy_ref"] == pytest.approx(structure.energy / n)
        expected = (
            structure.energy - sum(atom_energies[s] for s in structure.atoms.get_chemical_symbols())
        ) / n
        assert row["e_coh_ref"] == pytest.approx(expected)
        assert row["e_coh_error"] == pytest.approx(row["e_coh_pred"] - row["e_coh_ref"])
        assert row["volume_pred"] == pytest.approx(row["volume_ref"], rel=1e-2)
    agg = Equilibrium.aggregate(rows)
    assert agg["e_coh_mae"] < 1e-3 and agg["n_unconverged"] == 0 and agg["fingerprint_distance_mean"] < 0.05


def test_default_atom_energies_are_the_shipped_matpes_r2scan_ones(emt_references):
    cu = emt_references[2]
    row = Equilibrium("emt", NO_FINGERPRINT).calc(cu)
    e_cu = shipped_atom_energies()["Cu"]
    assert row["e_coh_ref"] == pytest.approx(cu.energy / cu.n_atoms - e_cu)
    assert row["fingerprint_distance"] is None


def test_an_element_without_an_atom_energy_is_a_failure_row_naming_it(emt_references):
    rows = Equilibrium("emt", NO_FINGERPRINT, atom_energies=_emt_atom_energies(("Cu",))).calc_many(
        emt_references
    )
    assert rows[0]["error"] is None
    assert "Au" in rows[1]["error"] and "isolated-atom energy" in rows[1]["error"]
    assert "e_coh_error" not in rows[1]
    assert Equilibrium.aggregate(rows)["n_failed"] == 1


def test_an_unconverged_relaxation_still_gives_a_row_and_is_counted(emt_references):
    settings = EquilibriumSettings(max_steps=1, compute_fingerprint=False)
    squeezed = BenchStructure("squeezed", bulk("Cu", a=3.3), energy=emt_references[2].energy)
    rows = Equilibrium("emt", settings, atom_energies=_emt_atom_energies()).calc_many([squeezed])
    assert rows[0]["error"] is None
    assert rows[0]["converged"] is False and rows[0]["relax_steps"] == 1
    agg = Equilibrium.aggregate(rows)
    assert agg["n_unconverged"] == 1 and agg["n_failed"] == 0 and agg["e_coh_mae"] is not None


def test_a_structure_without_reference_energy_fails_alone(emt_references):
    rows = Equilibrium("emt", NO_FINGERPRINT, atom_energies=_emt_atom_energies()).calc_many(
        [BenchStructure("no-energy", bulk("Cu")), emt_references[2]]
    )
    assert rows[0]["error"] == "no reference energy" and rows[1]["error"] is None
