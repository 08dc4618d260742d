from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from aloe.errors import AloeError, InputFileError
from aloe.potentials.base import Potential
from aloe.potentials.references import (
    CANDIDATES,
    ElementalReferences,
    ReferenceSettings,
    ReferenceStore,
    candidate_structures,
    compute_reference,
)
from aloe.structures import StructureBatch


class EMTPotential(Potential):
    """ASE's EMT behind the aloe seam (a cheap stand-in); counts its evaluations."""

    def __init__(self, name: str = "emt-test", version: str = "1") -> None:
        self.name = name
        self.version = version
        self.calls = 0

    def identity(self) -> str:
        return f"{self.name}@{self.version}"

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        self.calls += 1
        atoms.calc = EMT()
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=True)


class NoDimerEMT(EMTPotential):
    """Fails on the dimer box (the only 2-atom structure with a large cell) and returns NaN for hcp."""

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        if atoms.cell.volume > 1000:
            raise RuntimeError("no molecules, please")
        energy, forces, stress = super()._predict_one(atoms)
        if len(atoms) == 2 and atoms.cell.angles()[2] > 100:  # hcp: gamma = 120
            energy = math.nan
        return energy, forces, stress


def own_relaxation(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    assert BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4, steps=1000)
    return atoms


def test_candidates_start_with_neighbours_at_2r():
    from ase.data import covalent_radii

    from aloe.elements import atomic_radius

    cands = candidate_structures("Cu")
    assert tuple(cands) == CANDIDATES
    r = atomic_radius("Cu")
    for name, (atoms, relax_cell) in cands.items():
        d = StructureBatch.from_atoms([atoms]).min_distances()[0]
        if name == "dimer":
            assert not relax_cell
            assert d == pytest.approx(2 * covalent_radii[29])
            assert atoms.cell.lengths() == pytest.approx([12.0] * 3)
        else:
            assert relax_cell
            assert d == pytest.approx(2 * r), name
    assert len(cands["hcp"][0]) == 2 and len(cands["diamond"][0]) == 2 and len(cands["fcc"][0]) == 1
    # H uses MP-ALOE's radius (x3); noble gases their overrides; a subset of candidates is honoured.
    h = candidate_structures("H", ReferenceSettings(candidates=["sc"]))
    assert list(h) == ["sc"]
    assert StructureBatch.from_atoms([h["sc"][0]]).min_distances()[0] == pytest.approx(2 * atomic_radius("H"))


@pytest.mark.parametrize("element", ["Ag", "Au"])
def test_emt_fcc_metals_pick_fcc_at_emt_lattice_constant(element):
    energy, info = compute_reference(EMTPotential(), element)
    assert info["winner"] == "fcc"
    assert info["converged"]
    ref = own_relaxation(bulk(element, "fcc", a=4.1))
    a_ref = ref.cell.lengths()[0] * math.sqrt(2)  # primitive fcc vector = a / sqrt(2)
    a_got = info["min_distance"] * math.sqrt(2)
    assert a_got == pytest.approx(a_ref, rel=3e-3)
    assert info["volume_per_atom"] == pytest.approx(ref.cell.volume, rel=1e-2)
    assert energy == pytest.approx(ref.get_potential_energy(), abs=2e-4)
    assert set(info["candidates"]) == set(CANDIDATES)
    assert all(c["error"] is None for c in info["candidates"].values())


@pytest.mark.parametrize("element", ["Cu", "Al", "Ni"])
def test_emt_close_packed_metals(element):
    """ASE's EMT puts ideal-ish hcp 1-4 meV/atom below fcc for Cu, Al and Ni (checked here independently)."""
    energy, info = compute_reference(EMTPotential(), element)
    fcc = own_relaxation(bulk(element, "fcc", a=3.8))
    hcp = own_relaxation(bulk(element, "hcp", a=fcc.cell.lengths()[0]))
    e_fcc, e_hcp = fcc.get_potential_energy(), hcp.get_potential_energy() / 2
    assert info["winner"] == ("hcp" if e_hcp < e_fcc else "fcc")
    assert energy == pytest.approx(min(e_fcc, e_hcp), abs=3e-4)
    # The fcc candidate relaxes to EMT's own fcc lattice constant and energy.
    cand = info["candidates"]["fcc"]
    assert cand["converged"]
    assert cand["min_distance"] * math.sqrt(2) == pytest.approx(
        fcc.cell.lengths()[0] * math.sqrt(2), rel=3e-3
    )
    assert cand["energy_per_atom"] == pytest.approx(e_fcc, abs=2e-4)
    # Open structures and the dimer are far above for a metal.
    assert info["candidates"]["dimer"]["energy_per_atom"] > energy + 0.5
    assert info["candidates"]["diamond"]["energy_per_atom"] > energy + 0.3


def test_failed_candidates_are_skipped_and_recorded():
    energy, info = compute_reference(NoDimerEMT(), "Cu")
    cands = info["candidates"]
    assert "RuntimeError" in cands["dimer"]["error"] and "no molecules" in cands["dimer"]["error"]
    assert cands["hcp"]["error"] is not None and cands["hcp"]["energy_per_atom"] is None
    assert info["winner"] == "fcc"
    assert energy == pytest.approx(cands["fcc"]["energy_per_atom"])
    json.dumps(info, allow_nan=False)  # the details are cacheable


def test_no_usable_candidate_raises():
    with pytest.raises(AloeError, match=r"emt-test: no usable reference form for Cu \(dimer: .*no molecules"):
        compute_reference(NoDimerEMT(), "Cu", ReferenceSettings(candidates=["dimer"]))


def test_collapsed_candidate_is_rejected():
    settings = ReferenceSettings(candidates=["fcc", "dimer"], min_distance=2.4)  # Cu fcc nn ~2.54, dimer ~2.2
    _, info = compute_reference(EMTPotential(), "Cu", settings)
    assert "collapsed" in info["candidates"]["dimer"]["error"]
    assert info["winner"] == "fcc"


class DeepWellEMT(EMTPotential):
    """Like CHGNet 0.3.0 for Gd: the dimer sits in an unphysical well 1000 eV/atom deep."""

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        energy, forces, stress = super()._predict_one(atoms)
        if len(atoms) == 2 and atoms.cell.volume > 1000:
            energy -= 2000.0
        return energy, forces, stress


def test_implausibly_bound_candidate_is_rejected():
    settings = ReferenceSettings(candidates=["fcc", "dimer"])
    energy, info = compute_reference(DeepWellEMT(), "Cu", settings)
    assert info["winner"] == "fcc"
    assert "implausibly bound" in info["candidates"]["dimer"]["error"]
    assert info["candidates"]["dimer"]["energy_per_atom"] is None
    # EMT's isolated Cu atom lies ~3.5 eV above fcc Cu (EMT's cohesive energy).
    assert info["isolated_atom_energy"] == pytest.approx(energy + 3.5, abs=0.6)
    unchecked = ReferenceSettings(candidates=["fcc", "dimer"], max_binding=None)
    energy, info = compute_reference(DeepWellEMT(), "Cu", unchecked)
    assert info["winner"] == "dimer" and energy < -900
    assert info["isolated_atom_energy"] is None


def test_unknown_element():
    with pytest.raises(AloeError, match="Xx"):
        compute_reference(EMTPotential(), "Xx")


# ---- the store -----------------------------------------------------------------------------------------------

FAST = ReferenceSettings(candidates=["fcc", "dimer"])


def test_store_writes_and_reuses_cache(tmp_path):
    potential = EMTPotential()
    store = ReferenceStore(tmp_path, FAST)
    refs = store.get(potential, ["Cu", "Al", "Cu"])
    assert list(refs) == ["Cu", "Al"]
    assert all(isinstance(v, float) for v in refs.values())
    path = store.path_for(potential)
    assert path.parent == tmp_path and path.name.startswith("emt-test-")
    data = json.loads(path.read_text())
    assert data["identity"] == "emt-test@1"
    assert set(data["elements"]) == {"Cu", "Al"}
    assert data["elements"]["Cu"]["info"]["winner"] == "fcc"
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left behind

    calls = potential.calls
    assert calls > 0
    again = ReferenceStore(tmp_path, FAST)  # a new process would build a new store
    assert again.get(potential, ["Al", "Cu"]) == {"Al": refs["Al"], "Cu": refs["Cu"]}
    assert potential.calls == calls
    full = again.references(potential, ["Cu"])
    assert full.provenance["Cu"].startswith("cache (fcc")
    assert full.info["Cu"]["winner"] == "fcc"

    # Only the missing element is computed, and it joins the same file.
    again.get(potential, ["Cu", "Ni"])
    assert set(json.loads(path.read_text())["elements"]) == {"Cu", "Al", "Ni"}
    assert set(again.cached(potential)) == {"Al", "Cu", "Ni"}


def test_store_is_keyed_by_identity_and_settings(tmp_path):
    store = ReferenceStore(tmp_path, FAST)
    v1, v2 = EMTPotential(version="1"), EMTPotential(version="2")
    store.get(v1, ["Cu"])
    assert store.path_for(v1) != store.path_for(v2)
    store.get(v2, ["Cu"])
    assert v2.calls > 0
    assert len(list(tmp_path.glob("*.json"))) == 2
    # Other relaxation settings: the cached value is not reused.
    other = ReferenceStore(tmp_path, ReferenceSettings(candidates=["fcc"]))
    before = v1.calls
    other.get(v1, ["Cu"])
    assert v1.calls > before
    with pytest.raises(AloeError):
        store.get(v1, ["Cu"], compute=False)  # overwritten by the other settings' entry


def test_compute_false_names_model_and_elements(tmp_path):
    store = ReferenceStore(tmp_path, FAST)
    potential = EMTPotential()
    store.get(potential, ["Cu"])
    with pytest.raises(AloeError, match=r"emt-test \(emt-test@1\): no reference energy for Al, Ni"):
        store.get(potential, ["Cu", "Al", "Ni"], compute=False)
    assert store.get(potential, ["Cu"], compute=False)


def test_table_overrides_cache_and_computation(tmp_path):
    store = ReferenceStore(tmp_path, FAST)
    potential = EMTPotential()
    computed = store.get(potential, ["Cu"])
    calls = potential.calls
    refs = store.references(potential, ["Cu", "O"], table={"Cu": -3.5, "O": -4.9}, compute=False)
    assert refs.as_dict() == {"Cu": -3.5, "O": -4.9}
    assert refs.provenance["O"] == "table (table)"
    assert potential.calls == calls
    # Partial table: the rest comes from the cache; the cache itself is untouched by the table.
    assert store.get(potential, ["Cu", "O"], table={"O": -4.9}) == {"Cu": computed["Cu"], "O": -4.9}
    assert store.get(potential, ["Cu"], compute=False) == computed


def test_table_files_and_per_model_sections(tmp_path):
    store = ReferenceStore(tmp_path / "cache", FAST)
    a, b = EMTPotential("model-a"), EMTPotential("model-b")
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps({"Si": -5.4, "O": -4.9}))
    assert store.get(a, ["Si"], table=shared, compute=False) == {"Si": -5.4}
    assert store.references(a, ["Si"], table=shared).provenance["Si"] == f"table ({shared})"
    per_model = tmp_path / "refs.yaml"
    per_model.write_text("model-a:\n  Si: -5.4\nmodel-b@1:\n  Si: -4.1\n")  # by name or by identity
    assert store.get_committee([a, b], ["Si"], table=per_model, compute=False) == [{"Si": -5.4}, {"Si": -4.1}]
    with pytest.raises(AloeError, match=r"model-a \(model-a@1\): no reference energy for O.*model-b"):
        store.get_committee([a, b], ["Si", "O"], table=per_model, compute=False)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"Si": -5.4, "model": {"Si": 1}}', "not both"),
        ('{"Xx": -1.0}', "unknown element symbol 'Xx'"),
        ('{"Si": "abc"}', "finite number"),
        ('{"Si": NaN}', "finite number"),
    ],
)
def test_bad_tables(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(AloeError, match=match):
        ReferenceStore(tmp_path, FAST).get(EMTPotential(), ["Si"], table=path, compute=False)


def test_unreadable_table_file(tmp_path):
    store = ReferenceStore(tmp_path, FAST)
    with pytest.raises(InputFileError, match="cannot read"):
        store.get(EMTPotential(), ["Si"], table=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputFileError, match="invalid reference table"):
        store.get(EMTPotential(), ["Si"], table=bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(InputFileError, match="must map"):
        store.get(EMTPotential(), ["Si"], table=listed)


@pytest.mark.parametrize("content", ["{truncated", "[1, 2]", '{"format": 99, "elements": {}}'])
def test_corrupted_cache_is_ignored_with_warning(tmp_path, content):
    store = ReferenceStore(tmp_path, FAST)
    potential = EMTPotential()
    path = store.path_for(potential)
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match="ignoring reference cache"):
        refs = store.get(potential, ["Cu"])
    assert potential.calls > 0
    data = json.loads(path.read_text())  # rewritten as a valid cache
    assert data["elements"]["Cu"]["energy_per_atom"] == refs["Cu"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get(potential, ["Cu"], compute=False) == refs


def test_invalid_cache_entry_is_recomputed(tmp_path):
    store = ReferenceStore(tmp_path, FAST)
    potential = EMTPotential()
    good = store.get(potential, ["Cu"])
    path = store.path_for(potential)
    data = json.loads(path.read_text())
    data["elements"]["Cu"]["energy_per_atom"] = "oops"
    path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="invalid entry 'Cu'"):
        assert store.get(potential, ["Cu"]) == pytest.approx(good)


def test_committee_bulk_computation(tmp_path):
    store = ReferenceStore(tmp_path, FAST)
    members = [EMTPotential("a"), EMTPotential("b"), EMTPotential("c")]
    refs = store.committee_references(members, ["Cu", "Ag"], progress=False)
    assert [r.model for r in refs] == ["a@1", "b@1", "c@1"]
    assert all(isinstance(r, ElementalReferences) and set(r) == {"Cu", "Ag"} for r in refs)
    assert refs[0]["Cu"] == pytest.approx(refs[2]["Cu"])
    assert len(list(tmp_path.glob("*.json"))) == 3
    assert store.get_committee(members, ["Ag"], compute=False) == [{"Ag": r["Ag"]} for r in refs]


def test_default_directory_follows_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "c"))
    assert ReferenceStore().directory == tmp_path / "c" / "references"


def test_concurrent_writers_keep_each_others_elements(tmp_path):
    # Two stores that read the (empty) cache before either wrote, as two processes would.
    potential = EMTPotential()
    first, second = ReferenceStore(tmp_path, FAST), ReferenceStore(tmp_path, FAST)
    assert first.cached(potential).as_dict() == {} == second.cached(potential).as_dict()
    first.get(potential, ["Cu"])
    second.get(potential, ["Ag"])
    assert set(json.loads(first.path_for(potential).read_text())["elements"]) == {"Cu", "Ag"}


def test_import_is_cheap():
    import subprocess
    import sys

    code = (
        "import sys, aloe.potentials.references; "
        "print(sorted(m for m in ('ase', 'torch', 'pymatgen', 'chgnet') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- a real model --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_chgnet_references(tmp_path: Path):
    pytest.importorskip("chgnet")
    from aloe.potentials.registry import load_potential

    potential = load_potential("chgnet-0.3.0", threads=1)
    store = ReferenceStore(tmp_path)
    refs = store.references(potential, ["Si", "O"])
    assert refs.info["Si"]["winner"] == "diamond"
    assert refs.info["O"]["winner"] == "dimer"
    assert -5.7 < refs["Si"] < -5.0
    assert -5.3 < refs["O"] < -4.4
    # The O2 bond relaxes near the real 1.21 A.
    assert 1.1 < refs.info["O"]["min_distance"] < 1.35
    assert json.loads(store.path_for(potential).read_text())["functional"] == potential.functional


def test_shortest_distance_of_sheared_cells():
    from aloe.potentials.references import _shortest_distance

    atoms = bulk("Cu", "fcc", a=3.6)
    expected = 3.6 / math.sqrt(2)
    assert _shortest_distance(atoms) == pytest.approx(expected)
    # The same lattice described by a long, strongly sheared basis.
    sheared = atoms.copy()
    sheared.set_cell(np.array([[1, 0, 0], [7, 1, 0], [-5, 3, 1]]) @ atoms.cell[:], scale_atoms=False)
    assert _shortest_distance(sheared) == pytest.approx(expected)


class BrokenAtomEMT(EMTPotential):
    """Like chgnet-r2scan for P: the isolated atom sits absurdly high (+300 eV), the condensed forms are fine."""

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        energy, forces, stress = super()._predict_one(atoms)
        alone = len(atoms) == 1 and atoms.cell.volume > 1000  # the isolated atom in its box, not 1-atom fcc
        return (energy + 300.0 if alone else energy), forces, stress


def test_a_broken_isolated_atom_does_not_reject_every_form():
    energy, info = compute_reference(BrokenAtomEMT(), "Cu", ReferenceSettings(candidates=["fcc", "dimer"]))
    assert info["winner"] == "fcc" and info["isolated_atom_energy"] > 250
    assert all(c["error"] is None for c in info["candidates"].values())
    assert energy == pytest.approx(
        compute_reference(EMTPotential(), "Cu", ReferenceSettings(candidates=["fcc"]))[0]
    )


# ---- guards while a form relaxes -------------------------------------------------------------------------------


class Crusher(Potential):
    """E = p V with no forces: a constant tensile stress that shrinks any cell without end; logs what it sees."""

    def __init__(self, pressure: float = 0.05, sleep: float = 0.0) -> None:
        self.name = "crusher"
        self.pressure = pressure
        self.sleep = sleep
        self.volumes_seen: list[float] = []

    def identity(self) -> str:
        return "crusher@1"

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        import time

        time.sleep(self.sleep)
        volume = abs(atoms.cell.volume)
        self.volumes_seen.append(volume / len(atoms))
        p = self.pressure
        return p * volume, np.zeros((len(atoms), 3)), np.array([p, p, p, 0.0, 0.0, 0.0])


def _sphere(cutoff: float) -> float:
    return 4.0 / 3.0 * math.pi * cutoff**3


def test_a_shrinking_cell_stops_before_the_model_sees_it_too_dense():
    settings = ReferenceSettings(candidates=["fcc"], min_volume_ratio=0.01, max_binding=None)
    potential = Crusher()
    with pytest.raises(AloeError, match=r"crusher: no usable reference form for Cu \(fcc: stopped at step"):
        compute_reference(potential, "Cu", settings)
    # It did shrink (from Cu's 2 r start, ~79 neighbours), and the model never got a structure above the bound.
    assert min(potential.volumes_seen) < 0.5 * potential.volumes_seen[0]
    assert max(_sphere(6.0) / v for v in potential.volumes_seen) <= settings.max_neighbors


class CrushedFccEMT(EMTPotential):
    """EMT, except that 1-atom cells (the fcc form) are crushed as by :class:`Crusher`."""

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        if len(atoms) == 1:
            return Crusher()._predict_one(atoms)
        return super()._predict_one(atoms)


@pytest.mark.parametrize(
    ("settings", "guard", "reason"),
    [
        (
            ReferenceSettings(candidates=["fcc", "dimer"], min_volume_ratio=0.01),
            "neighbors",
            "too dense: about",
        ),
        (ReferenceSettings(candidates=["fcc", "dimer"]), "volume", "collapsed or exploded: volume per atom"),
    ],
)
def test_a_stopped_form_is_recorded_and_the_others_still_count(settings, guard, reason):
    energy, info = compute_reference(CrushedFccEMT(), "Cu", settings)
    fcc, dimer = info["candidates"]["fcc"], info["candidates"]["dimer"]
    assert fcc["stopped"] == guard and fcc["energy_per_atom"] is None
    assert fcc["error"].startswith(f"stopped at step {fcc['steps']}: {reason}") and fcc["steps"] > 0
    assert dimer["stopped"] is None and dimer["error"] is None
    assert info["winner"] == "dimer" and energy == dimer["energy_per_atom"]
    json.dumps(info, allow_nan=False)  # cacheable
    # A plain EMT run is stopped by no guard.
    _, plain = compute_reference(EMTPotential(), "Cu", settings)
    assert all(c["stopped"] is None for c in plain["candidates"].values())


def test_too_dense_starting_forms_never_reach_the_model():
    """F's close-packed 2 r starts (nearest neighbours 1.0 A, ~1300 atoms within 6 A) are rejected at step 0."""
    potential = EMTPotential()  # EMT has no F parameters: any call for these forms would raise
    settings = ReferenceSettings(candidates=["fcc", "bcc", "hcp", "sc", "diamond"], max_binding=None)
    with pytest.raises(AloeError) as caught:
        compute_reference(potential, "F", settings)
    assert potential.calls == 0
    message = str(caught.value)
    assert "fcc, hcp: stopped at step 0: too dense: about 1280 atoms within 6 A per atom" in message
    assert "sc: stopped at step 0: too dense: about 905 atoms" in message


def test_neighbour_estimate_matches_ase_neighbour_list():
    """Density x sphere volume is close to the count of atoms within the cutoff (ASE's neighbour list) where the
    guard acts: hundreds of neighbours, where the discrete shells average out (within 12% for these forms)."""
    from ase.neighborlist import neighbor_list

    for element in ("C", "N", "O", "F"):
        for name, (atoms, _) in candidate_structures(element).items():
            if name == "dimer":
                continue
            estimate = _sphere(6.0) * len(atoms) / atoms.cell.volume
            counted = len(neighbor_list("i", atoms, 6.0)) / len(atoms)
            assert estimate > 200
            assert counted == pytest.approx(estimate, rel=0.15), (element, name)


def test_time_limit_ends_a_form():
    settings = ReferenceSettings(
        candidates=["fcc"], max_seconds=0.2, max_binding=None, min_volume_ratio=1e-3, max_neighbors=None
    )
    slow = Crusher(sleep=0.05)
    with pytest.raises(AloeError, match=r"fcc: stopped at step \d+: time limit: relaxing for"):
        compute_reference(slow, "Cu", settings)
    assert len(slow.volumes_seen) < 300


def test_guarded_calculator_passes_results_through():
    from aloe.potentials.calculator import GuardedCalculator, PotentialCalculator

    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    seen = []
    guarded = atoms.copy()
    guarded.calc = GuardedCalculator(PotentialCalculator(EMTPotential()), lambda a: seen.append(len(a)))
    atoms.calc = EMT()
    assert guarded.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    assert guarded.get_forces() == pytest.approx(atoms.get_forces(), abs=1e-10)
    assert guarded.get_stress() == pytest.approx(atoms.get_stress(), abs=1e-10)
    assert seen == [2]  # one model call for all three properties, checked once


def test_one_progress_line_per_element(tmp_path, caplog):
    import logging

    store = ReferenceStore(tmp_path, FAST)
    with caplog.at_level(logging.INFO, logger="aloe.potentials.references"):
        refs = store.references(EMTPotential(), ["Cu", "Ag"], progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "aloe.potentials.references"]
    assert len(lines) == 2
    assert lines[0].startswith("references emt-test: Cu 1/2 (") and lines[0].endswith(
        f"s, winner {refs.info['Cu']['winner']})"
    )
    assert lines[1].startswith("references emt-test: Ag 2/2 (")


def test_strict_false_records_elements_without_reference(tmp_path):
    store = ReferenceStore(tmp_path, FAST)
    refs = store.references(EMTPotential(), ["Cu", "Fe"], strict=False)  # EMT has no Fe: every form fails
    assert list(refs) == ["Cu"]
    assert set(refs.failed) == {"Fe"}
    assert refs.failed["Fe"].startswith("every form: CalculationFailed: emt-test: prediction failed for Fe")
    with pytest.raises(AloeError, match="no usable reference form for Fe"):
        store.references(EMTPotential(), ["Fe"])
    missing = store.references(EMTPotential(), ["Cu", "Ni"], compute=False, strict=False)
    assert missing.as_dict() == {"Cu": refs["Cu"]}  # from the cache
    assert missing.failed == {"Ni": "not in the table or the cache, and computing references is off"}
