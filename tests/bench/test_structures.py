"""Reference-set readers, built-in sets and random mixtures (aloe.bench.structures)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from aloe.bench.base import ReferenceSet
from aloe.bench.structures import (
    MixtureSettings,
    random_mixtures,
    read_reference_set,
    split_roles,
)
from aloe.data.formats import structure_dict
from aloe.errors import AloeError, InputFileError
from aloe.units import EV_PER_A3_IN_KBAR


def crystals() -> list[Atoms]:
    out = [bulk("Cu", "fcc", a=3.6), bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.6)]
    for k, atoms in enumerate(out):
        atoms.rattle(0.01, seed=k)
    return out


def document(atoms: Atoms, k: int) -> dict:
    n = len(atoms)
    return {
        "matpes_id": f"matpes-{k}",
        "structure": structure_dict(atoms.cell[:], atoms.get_chemical_symbols(), atoms.positions, atoms.pbc),
        "energy": -3.0 * n - k,
        "forces": (np.arange(3 * n).reshape(n, 3) * 0.01).tolist(),
        "stress": [10.0, 20.0, 30.0, 1.0, 2.0, 3.0],
        "functional": "r2SCAN",
    }


def min_distance(atoms: Atoms) -> float:
    _, d = neighbor_list("id", atoms, 6.0)
    return float(d.min())


# ---- MatPES / MP-ALOE documents ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["matpes.json", "matpes.json.gz", "aloe.jsonl", "aloe.jsonl.gz"])
def test_documents(tmp_path: Path, name: str) -> None:
    docs = [document(a, k) for k, a in enumerate(crystals())]
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt") as fh:
        if ".jsonl" in name:
            fh.write("\n".join(json.dumps(d) for d in docs) + "\n")
        else:
            json.dump(docs, fh)
    rs = read_reference_set(path)
    assert isinstance(rs, ReferenceSet)
    assert [s.id for s in rs.structures] == ["matpes-0", "matpes-1", "matpes-2"]
    assert rs.functional == "r2SCAN"
    first, ref = rs.structures[0], crystals()[0]
    np.testing.assert_allclose(first.atoms.positions, ref.positions, atol=1e-12)
    assert first.energy == pytest.approx(-3.0)
    np.testing.assert_allclose(first.forces, np.asarray(docs[0]["forces"]))
    # kbar with VASP's sign -> eV/A^3 with ASE's sign.
    np.testing.assert_allclose(first.stress, -np.array(docs[0]["stress"]) / EV_PER_A3_IN_KBAR)
    assert first.stress[0] == pytest.approx(-10.0 / 1602.1766208, rel=1e-6)
    crystals_, supercells = split_roles(rs)
    assert len(crystals_) == len(supercells) == 3


def test_documents_without_ids_get_stem_and_index(tmp_path: Path) -> None:
    docs = [document(a, k) for k, a in enumerate(crystals())]
    for d in docs:
        del d["matpes_id"]
    docs[2]["matpes_id"] = "x"
    path = tmp_path / "set.json"
    path.write_text(json.dumps(docs))
    assert [s.id for s in read_reference_set(path).structures] == ["set-0", "set-1", "x"]


def test_bad_record_is_one_line_naming_file_and_record(tmp_path: Path) -> None:
    docs = [document(a, k) for k, a in enumerate(crystals())]
    del docs[1]["structure"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(docs))
    with pytest.raises(InputFileError) as info:
        read_reference_set(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path)) and "record 1" in text and "structure" in text


def test_missing_file_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_reference_set(tmp_path / "nope.json")
    with pytest.raises(AloeError, match="unknown built-in set"):
        read_reference_set("builtin:nothing")
    odd = tmp_path / "set.csv"
    odd.write_text("x")
    with pytest.raises(InputFileError, match="cannot tell the format"):
        read_reference_set(odd)
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(InputFileError, match="neither"):
        read_reference_set(empty)


# ---- matcalc benchmark entries -------------------------------------------------------------------------------------
def matcalc_entry(atoms: Atoms, k: int) -> dict:
    from pymatgen.io.ase import AseAtomsAdaptor

    return {
        "material_id": f"wbm-1-{k}",
        "formula": atoms.get_chemical_formula(),
        "structure": AseAtomsAdaptor.get_structure(atoms).as_dict(),
        "formation_energy_per_atom": -0.1 * k,
        "bulk_modulus_vrh": 100.0 + k,
    }


def test_matcalc_list_gz(tmp_path: Path) -> None:
    entries = [matcalc_entry(a, k) for k, a in enumerate(crystals())]
    path = tmp_path / "wbm-random-pbe54-equilibrium-2025.1.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(entries, fh)
    rs = read_reference_set(path)
    assert [s.id for s in rs.structures] == ["wbm-1-0", "wbm-1-1", "wbm-1-2"]
    s = rs.structures[2]
    assert s.energy is None and s.forces is None and s.stress is None
    assert s.atoms.info["bulk_modulus_vrh"] == 102.0
    assert s.atoms.info["formation_energy_per_atom"] == pytest.approx(-0.2)
    np.testing.assert_allclose(
        s.atoms.get_scaled_positions(), crystals()[2].get_scaled_positions(), atol=1e-9
    )
    assert split_roles(rs) == ([], [])


def test_matcalc_mapping_and_energy_per_atom(tmp_path: Path) -> None:
    entries = {f"mp-{k}": matcalc_entry(a, k) for k, a in enumerate(crystals())}
    for entry in entries.values():
        del entry["material_id"]
    entries["mp-1"]["energy_per_atom"] = -4.0
    path = tmp_path / "elasticity.json"
    path.write_text(json.dumps(entries))
    rs = read_reference_set(path)
    assert [s.id for s in rs.structures] == ["mp-0", "mp-1", "mp-2"]
    assert rs.structures[1].energy == pytest.approx(-4.0 * 2)
    crystals_, supercells = split_roles(rs)
    assert [s.id for s in crystals_] == ["mp-1"] and supercells == []


def test_matcalc_bad_entry(tmp_path: Path) -> None:
    entries = [matcalc_entry(a, k) for k, a in enumerate(crystals())]
    del entries[2]["structure"]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(InputFileError, match=r"bench\.json: record 2: no 'structure' key"):
        read_reference_set(path)


# ---- extxyz and ASE databases ------------------------------------------------------------------------------------
def test_extxyz_labels_from_calculator_and_ref_keys(tmp_path: Path) -> None:
    from ase.io import write

    frames = []
    for k, atoms in enumerate(crystals()):
        atoms = atoms.copy()
        n = len(atoms)
        forces = np.full((n, 3), 0.1 * (k + 1))
        if k == 0:
            atoms.calc = SinglePointCalculator(atoms, energy=-1.5, forces=forces, stress=np.arange(6) * 1e-3)
            atoms.info["bench_id"] = "cu"
        elif k == 1:
            atoms.info["REF_energy"] = -2.5
            atoms.arrays["REF_forces"] = forces
        frames.append(atoms)  # the third has no labels
    path = tmp_path / "frames.extxyz"
    write(path, frames, format="extxyz")
    rs = read_reference_set(path)
    assert [s.id for s in rs.structures] == ["cu", "frames-1", "frames-2"]
    cu, si, nacl = rs.structures
    assert cu.energy == pytest.approx(-1.5)
    np.testing.assert_allclose(cu.stress, np.arange(6) * 1e-3, atol=1e-12)
    assert si.energy == pytest.approx(-2.5) and si.stress is None
    np.testing.assert_allclose(si.forces, 0.2)
    assert nacl.energy is None and nacl.forces is None
    assert cu.atoms.calc is None and "REF_forces" not in si.atoms.arrays
    crystals_, supercells = split_roles(rs)
    assert [s.id for s in crystals_] == ["cu", "frames-1"] == [s.id for s in supercells]


def test_extxyz_bad_forces(tmp_path: Path) -> None:
    path = tmp_path / "bad.xyz"
    path.write_text(
        '2\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\nCu 0 0\n'
    )
    with pytest.raises(InputFileError, match=r"bad\.xyz: frame 0"):
        read_reference_set(path)


def test_ase_database(tmp_path: Path) -> None:
    import ase.db

    path = tmp_path / "wbm_subset.db"
    with ase.db.connect(str(path)) as db:
        for k, atoms in enumerate(crystals()):
            atoms = atoms.copy()
            if k < 2:
                atoms.calc = SinglePointCalculator(atoms, energy=-1.0 - k, forces=np.zeros((len(atoms), 3)))
            if k != 1:
                db.write(atoms, wbm_id=f"wbm-{k}", formation_energy=0.5)
            else:
                db.write(atoms)
    rs = read_reference_set(path)
    assert [s.id for s in rs.structures] == ["wbm-0", "wbm_subset-2", "wbm-2"]
    assert rs.structures[0].energy == pytest.approx(-1.0)
    assert rs.structures[1].forces.shape == (2, 3)
    assert rs.structures[2].energy is None and rs.structures[2].forces is None
    assert rs.structures[0].atoms.info["formation_energy"] == 0.5
    with pytest.raises(InputFileError, match="not a readable ASE database"):
        bad = tmp_path / "bad.db"
        bad.write_text("not sqlite at all, just text " * 20)
        read_reference_set(bad)


def test_label_run_folder(tmp_path: Path) -> None:
    folder = tmp_path / "label"
    (folder / "records").mkdir(parents=True)
    (folder / "run.yaml").write_text(yaml.safe_dump({"verb": "label"}))
    docs = [document(a, k) for k, a in enumerate(crystals())]
    for k, d in enumerate(docs):
        del d["matpes_id"]
        d["provenance"] = {"aloe_id": f"s{k}", "ionic_step": None}
    (folder / "records" / "chunk-00000.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (folder / "isolated_atoms.yaml").write_text(yaml.safe_dump({"energies": {"Cu": -0.1, "Si": -0.2}}))
    rs = read_reference_set(folder)
    assert [s.id for s in rs.structures] == ["s0", "s1", "s2"]
    assert rs.atom_energies == {"Cu": -0.1, "Si": -0.2}
    assert rs.functional == "r2SCAN"


# ---- built-in sets -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["builtin:elements", "builtin:pymatgen"])
def test_builtin_sets_offline_periodic_sane(name: str) -> None:
    rs = read_reference_set(name)
    assert len(rs.structures) >= 15
    ids = [s.id for s in rs.structures]
    assert len(set(ids)) == len(ids)
    for s in rs.structures:
        assert all(s.atoms.pbc) and s.atoms.cell.volume > 1.0
        assert 0.9 < min_distance(s.atoms) < 6.0, s.id
        assert s.energy is None
    assert read_reference_set(name).structures[0].id == ids[0]  # stable


def test_builtin_elements_content() -> None:
    by_id = {s.id: s for s in read_reference_set("builtin:elements").structures}
    assert {"Cu-fcc", "Fe-bcc", "Mg-hcp", "Si-diamond", "Al-fcc"} <= set(by_id)
    cu = by_id["Cu-fcc"].atoms
    assert len(cu) == 1 and min_distance(cu) == pytest.approx(3.61 / np.sqrt(2), rel=1e-3)
    assert not any(i.startswith(("He-", "Ne-", "Ar-", "Po-")) for i in by_id)


# ---- random mixtures ---------------------------------------------------------------------------------------------
SMALL = {"n_structures": 2, "n_atoms": 24, "n_elements": 3, "relax_steps": 40}


def test_mixtures_size_elements_distances() -> None:
    settings = MixtureSettings(**SMALL, min_distance_factor=0.6)
    mixtures = random_mixtures(settings)
    assert len(mixtures) == 2
    assert len({m.id for m in mixtures}) == 2
    for m in mixtures:
        atoms = m.atoms
        assert len(atoms) == 24 and all(atoms.pbc)
        assert len(set(atoms.get_chemical_symbols())) == 3
        assert set(atoms.get_chemical_symbols()) <= set(settings.elements)
        cell = atoms.cell.lengths()
        assert cell == pytest.approx([cell[0]] * 3)
        i, j, d = neighbor_list("ijd", atoms, 6.0)
        limit = 0.6 * (covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]])
        assert np.all(d >= limit - 1e-9)
        assert atoms.info["zbl_steps"] > 0  # the relaxation ran and was kept
        assert m.energy is None and m.source == "builtin:mixtures"


def test_mixtures_are_deterministic() -> None:
    a = random_mixtures(MixtureSettings(**SMALL, seed=5))
    b = random_mixtures(MixtureSettings(**SMALL, seed=5))
    c = random_mixtures(MixtureSettings(**SMALL, seed=6))
    for x, y in zip(a, b, strict=True):
        assert x.id == y.id
        np.testing.assert_array_equal(x.atoms.positions, y.atoms.positions)
        np.testing.assert_array_equal(x.atoms.numbers, y.atoms.numbers)
    assert not np.array_equal(a[0].atoms.numbers, c[0].atoms.numbers) or not np.allclose(
        a[0].atoms.positions, c[0].atoms.positions
    )


def test_mixture_settings_checks() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="n_elements"):
        MixtureSettings(n_elements=3, elements=["Cu", "Ni"])
    with pytest.raises(AloeError, match="no room"):
        random_mixtures(MixtureSettings(n_structures=1, n_atoms=30, min_distance_factor=2.0, max_tries=500))
    rs = read_reference_set(
        "builtin:mixtures", mixtures=MixtureSettings(n_structures=1, n_atoms=10, n_elements=2)
    )
    assert len(rs.structures) == 1 and len(rs.structures[0].atoms) == 10


def test_builtin_elements_of_chosen_symbols():
    from aloe.bench.structures import read_reference_set
    from aloe.errors import AloeError

    chosen = read_reference_set("builtin:elements:Li,Na, Mg").structures
    assert [s.id for s in chosen] == ["Li-bcc", "Na-bcc", "Mg-hcp"]
    with pytest.raises(AloeError, match="Xx"):
        read_reference_set("builtin:elements:Li,Xx")
