"""``aloe bench reference`` with the EMT stand-in (GPAW only in a slow test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from aloe.bench.reference import (
    BenchReferenceSettings,
    LabelerCalculator,
    binary_crystals,
    make_reference,
    ternary_crystals,
)
from aloe.bench.structures import (
    ATOM_ENERGIES_FILE,
    CRYSTALS_FILE,
    SUPERCELLS_FILE,
    read_reference_set,
    split_roles,
)
from aloe.errors import AloeError
from aloe.label.emt import STAND_IN_NAME, EMTLabeler

PRODUCTS = (CRYSTALS_FILE, SUPERCELLS_FILE, ATOM_ENERGIES_FILE)


def emt_settings(output: Path, **extra) -> BenchReferenceSettings:
    return BenchReferenceSettings(
        labeler="emt", elements=["Cu", "Al", "Ni"], output=output, progress=False, fmax=0.02, **extra
    )


def products(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in PRODUCTS}


@pytest.fixture(scope="module")
def emt_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("reference") / "run"
    result = make_reference(emt_settings(folder), command="aloe bench reference --labeler emt")
    return folder, result


def test_emt_reference_outputs(emt_run) -> None:
    folder, result = emt_run
    assert result.stage == "bench-reference" and result.run_dir == folder
    c = result.counts
    assert (c["crystals_ok"], c["supercells_ok"], c["atoms_ok"]) == (3, 3, 3)
    assert c["crystals_failed"] == c["supercells_failed"] == c["atoms_failed"] == 0
    assert c["crystals_converged"] == 3 and c["reused"] == 0
    assert result.summary_path.exists() and result.products["reference"] == folder
    for name in PRODUCTS:
        assert (folder / name).is_file()

    rs = read_reference_set(folder)
    assert rs.functional == STAND_IN_NAME
    assert set(rs.atom_energies) == {"Cu", "Al", "Ni"}
    assert rs.atom_energies["Cu"] == pytest.approx(EMTLabeler().isolated_atom_energy("Cu", folder))
    crystals, supercells = split_roles(rs)
    assert [s.id for s in crystals] == ["Cu-fcc", "Al-fcc", "Ni-fcc"]
    assert [s.id for s in supercells] == ["Cu-fcc/sc0", "Al-fcc/sc0", "Ni-fcc/sc0"]
    for s in crystals:
        # Relaxed: forces and stress x volume below fmax (FrechetCellFilter's criterion); labels are EMT's own.
        assert np.linalg.norm(s.forces, axis=1).max() < 0.02
        assert np.abs(s.stress).max() * s.atoms.get_volume() < 0.02
        atoms = s.atoms.copy()
        atoms.calc = EMT()
        assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    for s in supercells:
        assert 18 <= len(s.atoms) <= 32
        assert s.forces.shape == (len(s.atoms), 3) and np.abs(s.forces).max() > 1e-3  # displaced
        atoms = s.atoms.copy()
        atoms.calc = EMT()
        np.testing.assert_allclose(s.forces, atoms.get_forces(), atol=1e-9)
    energies = json.loads((folder / ATOM_ENERGIES_FILE).read_text())
    assert energies["labeler"] == "emt" and energies["functional"] == STAND_IN_NAME
    assert energies["settings"] == {"relax_steps": 0}


def test_rerun_recomputes_nothing_and_writes_the_same_bytes(emt_run, monkeypatch) -> None:
    folder, _ = emt_run
    before = products(folder)

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run must not label again")

    monkeypatch.setattr(EMTLabeler, "calculate", refuse)
    monkeypatch.setattr(EMTLabeler, "isolated_atom_energy", refuse)
    result = make_reference(emt_settings(folder))
    assert result.counts["computed"] == 0 and result.counts["reused"] == 9
    assert result.counts["crystals_ok"] == 3
    assert products(folder) == before


def test_killed_run_resumes_the_missing_work_only(emt_run, tmp_path: Path) -> None:
    import shutil

    folder, _ = emt_run
    before = products(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "run.lock").unlink(missing_ok=True)
    # A run killed after Cu's crystal: no products, no later checkpoints.
    for name in PRODUCTS:
        (copy / name).unlink()
    chunks = sorted((copy / "chunks").glob("*.json"))
    for chunk in chunks:
        if not chunk.name.startswith("crystal-Cu-fcc"):
            chunk.unlink()
    result = make_reference(emt_settings(copy))
    assert result.counts["reused"] == 1 and result.counts["computed"] == 8
    assert result.counts["crystals_ok"] == 3
    assert products(copy) == before


def test_failures_are_recorded_not_fatal(tmp_path: Path) -> None:
    settings = BenchReferenceSettings(
        labeler="emt", elements=["Cu", "Li"], output=tmp_path / "run", progress=False, max_steps=20
    )
    result = make_reference(settings)
    c = result.counts
    assert (c["crystals_ok"], c["crystals_failed"]) == (1, 1)
    assert c["supercells_ok"] == 1 and c["supercells_skipped"] == 1
    assert c["atoms_ok"] == 1 and c["atoms_failed"] == 1
    rs = read_reference_set(tmp_path / "run")
    assert [s.id for s in rs.structures] == ["Cu-fcc", "Cu-fcc/sc0"]
    assert set(rs.atom_energies) == {"Cu"}
    import yaml

    summary = yaml.safe_load(result.summary_path.read_text())
    failed = {f["id"]: f for f in summary["failures"]}
    assert failed["Li-bcc"]["kind"] == "unsupported" and "Li" in failed["Li-bcc"]["error"]
    assert summary["counts"]["crystals"] == 2 and "total" in summary["timings_s"]


def test_structures_input_static_and_binaries(tmp_path: Path) -> None:
    from ase.io import write

    frames = [bulk("Cu", "fcc", a=3.7), bulk("Ni", "fcc", a=3.5)]
    frames[0].info["bench_id"] = "cu-strained"
    path = tmp_path / "in.extxyz"
    write(path, frames, format="extxyz")
    settings = BenchReferenceSettings(
        labeler="emt",
        structures=str(path),
        relax=False,
        supercells_per_crystal=0,
        isolated_atoms=False,
        output=tmp_path / "run",
        progress=False,
    )
    result = make_reference(settings)
    assert result.counts["crystals_ok"] == 2 and result.counts["supercells"] == 0
    rs = read_reference_set(tmp_path / "run")
    assert [s.id for s in rs.structures] == ["cu-strained", "in-1"]
    assert rs.atom_energies is None
    np.testing.assert_allclose(rs.structures[0].atoms.cell[:], frames[0].cell[:], atol=1e-12)  # not relaxed

    made = dict(binary_crystals(["Cu", "Al"], ["B2", "L1_2"]))
    assert set(made) == {"CuAl-B2", "Cu3Al-L1_2", "Al3Cu-L1_2"}
    assert made["Cu3Al-L1_2"].get_chemical_formula() == "AlCu3"


def conventional_heusler(x: str, y: str, z: str, a: float):
    """X2YZ in the 16-atom cubic cell from the L2_1 (Cu2MnAl) Wyckoff positions: Z 4a, Y 4b, X 8c of Fm-3m."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        225, Lattice.cubic(a), [z, y, x], [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    )


def test_ternary_heusler_crystals() -> None:
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from aloe.bench.forces import average_nearest_neighbour_distance
    from aloe.bench.structures import elemental_crystal

    made = ternary_crystals(["Cu", "Ni", "Al", "Pd"], ["L2_1"])
    # every triple in the order given: X the first, Y the second, Z the third
    assert [ident for ident, _ in made] == ["Cu2NiAl-L2_1", "Cu2NiPd-L2_1", "Cu2AlPd-L2_1", "Ni2AlPd-L2_1"]
    assert [i for i, _ in ternary_crystals(["Cu", "Ni", "Al", "Pd"], ["L2_1"], max_triples=2)] == [
        "Cu2NiAl-L2_1",
        "Cu2NiPd-L2_1",
    ]
    assert ternary_crystals(["Cu", "Ni", "Al"], []) == []
    atoms = dict(made)["Cu2NiAl-L2_1"]
    assert len(atoms) == 4 and atoms.get_chemical_formula() == "AlCu2Ni" and atoms.pbc.all()
    # lattice constant from the mean nearest-neighbour distance of the three elements' own crystals
    d = np.mean([average_nearest_neighbour_distance(elemental_crystal(s)) for s in ("Cu", "Ni", "Al")])
    a = 4.0 * d / np.sqrt(3.0)
    assert atoms.get_volume() == pytest.approx(a**3 / 4.0, rel=1e-12)
    assert average_nearest_neighbour_distance(atoms) == pytest.approx(d, rel=1e-9)
    # the same crystal as pymatgen's from the Wyckoff positions of Cu2MnAl, and of its space group
    structure = AseAtomsAdaptor.get_structure(atoms)
    assert SpacegroupAnalyzer(structure).get_space_group_number() == 225
    reference = conventional_heusler("Cu", "Ni", "Al", a)
    assert len(reference) == 16
    assert StructureMatcher(primitive_cell=True, scale=False).fit(structure, reference)
    assert not StructureMatcher(scale=False).fit(structure, conventional_heusler("Ni", "Cu", "Al", a))


def test_ternaries_relax_with_emt_and_read_back(tmp_path: Path) -> None:
    settings = BenchReferenceSettings(
        labeler="emt",
        elements=["Cu", "Ni", "Al", "Pd"],
        ternaries=["L2_1"],
        max_ternaries=2,
        binaries=["B2"],
        supercells_per_crystal=1,
        output=tmp_path / "run",
        progress=False,
        fmax=0.02,
    )
    result = make_reference(settings)
    c = result.counts
    # 4 elements, 6 B2 pairs, the first 2 of the 4 triples
    assert (c["crystals"], c["crystals_ok"], c["crystals_converged"]) == (12, 12, 12)
    assert c["supercells_ok"] == 12 and c["atoms_ok"] == 4
    rs = read_reference_set(tmp_path / "run")
    crystals, supercells = split_roles(rs)
    by_id = {s.id: s for s in crystals}
    assert {"Cu2NiAl-L2_1", "Cu2NiPd-L2_1"} <= set(by_id)
    assert not {i for i in by_id if i.endswith("-L2_1")} - {"Cu2NiAl-L2_1", "Cu2NiPd-L2_1"}
    start = dict(ternary_crystals(["Cu", "Ni", "Al", "Pd"], ["L2_1"], max_triples=2))
    for ident in ("Cu2NiAl-L2_1", "Cu2NiPd-L2_1"):
        relaxed = by_id[ident].atoms
        assert sorted(relaxed.get_chemical_symbols()) == sorted(start[ident].get_chemical_symbols())
        # relaxed with EMT: the labels are EMT's at the relaxed structure, forces and stress below fmax
        check = relaxed.copy()
        check.calc = EMT()
        assert by_id[ident].energy == pytest.approx(check.get_potential_energy(), abs=1e-8)
        assert np.abs(check.get_forces()).max() < 0.02
        # FrechetCellFilter: the cell converges when |stress| x volume / atoms < fmax
        assert np.abs(check.get_stress()).max() * check.get_volume() / len(check) < 0.02
        assert relaxed.get_volume() != pytest.approx(start[ident].get_volume(), rel=1e-6)  # the cell relaxed
    assert {s.id for s in supercells} >= {"Cu2NiAl-L2_1/sc0", "Cu2NiPd-L2_1/sc0"}
    assert all(18 <= len(s.atoms) <= 32 for s in supercells)


def test_labeler_calculator_matches_the_labeler(tmp_path: Path) -> None:
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = LabelerCalculator(EMTLabeler(), tmp_path / "work")
    direct = atoms.copy()
    direct.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), direct.get_forces(), atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), direct.get_stress(), atol=1e-12)
    assert atoms.calc.n_calls == 1
    assert not any((tmp_path / "work").glob("call-*"))  # successful work folders are removed


def test_settings_checks(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown element"):
        BenchReferenceSettings(elements=["Cu", "Xx"])
    with pytest.raises(ValidationError, match="ternaries"):
        BenchReferenceSettings(ternaries=["L2_2"])
    with pytest.raises(ValidationError, match="max_ternaries"):
        BenchReferenceSettings(max_ternaries=0)
    with pytest.raises(AloeError, match="supercell_min_atoms"):
        make_reference(
            BenchReferenceSettings(
                labeler="emt",
                supercell_min_atoms=40,
                supercell_max_atoms=32,
                output=tmp_path / "r",
                progress=False,
            )
        )


@pytest.mark.slow
def test_gpaw_tiny_lithium(tmp_path: Path) -> None:
    pytest.importorskip("gpaw")
    settings = BenchReferenceSettings(
        labeler="gpaw",
        elements=["Li"],
        gpaw={"ecut": 200.0, "kspacing": 1.0, "xc": "PBE", "spinpol": False, "pbe_first": False},
        max_steps=3,
        fmax=0.1,
        supercell_min_atoms=2,
        supercell_max_atoms=4,
        output=tmp_path / "run",
        progress=False,
    )
    result = make_reference(settings)
    assert result.counts["crystals_ok"] == 1 and result.counts["supercells_ok"] == 1
    assert result.counts["atoms_ok"] == 1
    rs = read_reference_set(tmp_path / "run")
    assert rs.functional == "PBE" and set(rs.atom_energies) == {"Li"}
    crystals, supercells = split_roles(rs)
    assert len(crystals) == 1 and 2 <= len(supercells[0].atoms) <= 4


def test_a_process_pool_writes_the_same_bytes_as_one_process(emt_run, tmp_path: Path) -> None:
    """Tasks finish in any order on two worker processes; the products follow the inputs' order all the same."""
    from aloe.executors import ProcessExecutor

    folder, _ = emt_run
    with ProcessExecutor(2) as executor:
        result = make_reference(emt_settings(tmp_path / "pool"), executor=executor)
    assert result.counts["computed"] == 9 and result.counts["reused"] == 0
    assert products(tmp_path / "pool") == products(folder)
    checkpoints = sorted(p.name for p in (tmp_path / "pool" / "chunks").glob("*.json"))
    assert checkpoints == sorted(p.name for p in (folder / "chunks").glob("*.json"))
    # The run options open a pool when no executor is given.
    result = make_reference(emt_settings(tmp_path / "options", executor="process", workers=2))
    assert products(tmp_path / "options") == products(folder)
    import yaml

    assert "process" in yaml.safe_load(result.summary_path.read_text())["executor"].lower()
