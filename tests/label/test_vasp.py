"""VASP backend: MP-ALOE inputs (without POTCARs), vasprun parsing (units, signs, order), launch with a fake VASP."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read

import aloe.label.vasp as vasp
from aloe.data.records import EV_PER_A3_IN_KBAR
from aloe.label.base import LabelerError
from aloe.label.settings import LabelSettings, VASPSettings
from aloe.label.vasp import PBE_STATIC, R2SCAN_RELAX, VASPLabeler, read_outcar_magmoms, read_vasprun

DATA = Path(__file__).resolve().parent / "data"
FAKE = DATA / "fake_vasp.py"
RELAX_XML = DATA / "vasprun_relax.xml"
STATIC_XML = DATA / "vasprun_static.xml"

# The fixture's VASP order is Al, Fe (pymatgen sorts by electronegativity); the input lists Fe first.
A0 = 2.90
CELL0 = np.diag([A0, A0 * 1.01, A0 * 0.99])
# Fixture (VASP order Al, Fe): kbar, VASP sign, and eV/A forces of the three ionic steps.
KBAR = [
    [[12.5, 1.25, -2.5], [1.25, -7.5, 3.75], [-2.5, 3.75, 20.0]],
    [[6.0, 0.6, -1.2], [0.6, -3.0, 1.8], [-1.2, 1.8, 9.0]],
    [[1.5, 0.15, -0.3], [0.15, -0.75, 0.45], [-0.3, 0.45, 2.25]],
]
FORCES_AL = [[0.40, -0.20, 0.05], [0.20, -0.10, 0.02], [0.06, -0.03, 0.01]]
E0 = [-15.11, -15.23, -15.27]
MAG_FE = [2.301, 2.254, 2.231]


def fe_al() -> Atoms:
    """The fixture's step-0 structure, Fe listed first (VASP gets it sorted: Al, Fe)."""
    return Atoms("FeAl", cell=CELL0, scaled_positions=[[0.52, 0.49, 0.50], [0.0, 0.0, 0.0]], pbc=True)


@pytest.fixture
def no_potcars(tmp_path, monkeypatch):
    """A pymatgen configuration whose POTCAR folder is empty."""
    from pymatgen.core import SETTINGS

    psp = tmp_path / "psp"
    psp.mkdir()
    monkeypatch.setitem(SETTINGS, "PMG_VASP_PSP_DIR", str(psp))
    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(psp))
    return psp


@pytest.fixture
def potcars_found(monkeypatch):
    """Pretend pymatgen found every POTCAR (none is written: custodian's input reader then skips it)."""
    monkeypatch.setattr(vasp, "_write_potcar", lambda vis, folder: [])


def labeler(fake: str = "ok", **kw) -> VASPLabeler:
    """A labeler whose VASP is the fake in ``fake`` mode (see data/fake_vasp.py)."""
    settings = {"command": [sys.executable, str(FAKE), fake], "use_custodian": False, **kw}
    lab = VASPLabeler(VASPSettings.model_validate(settings))
    lab.custodian_polling_s = 0.05
    lab.custodian_monitor_freq = 1
    lab.kill_grace_s = 2.0
    return lab


def incar(folder: Path) -> dict:
    from pymatgen.io.vasp.inputs import Incar

    return dict(Incar.from_file(folder / "INCAR"))


# ---- inputs --------------------------------------------------------------------------------------------------
def test_inputs_follow_the_protocol_without_potcars(tmp_path, no_potcars):
    written = VASPLabeler().write_inputs(fe_al(), tmp_path / "w")
    pbe, relax = written.folders[PBE_STATIC], written.folders[R2SCAN_RELAX]
    assert pbe == tmp_path / "w" / "pbe_static" and relax == tmp_path / "w" / "r2scan_relax"

    common = {
        "ENCUT": 680,
        "EDIFF": 1e-5,
        "ISPIN": 2,
        "ISMEAR": 0,
        "SIGMA": 0.05,
        "LASPH": True,
        "KSPACING": 0.2,
    }
    static, r2scan = incar(pbe), incar(relax)
    for tags in (static, r2scan):
        for key, value in common.items():
            assert tags[key] == pytest.approx(value), key
        assert tags["PREC"].lower() == "accurate" and tags["NELM"] == 200 and tags["LMIXTAU"] is True
    # PBE static: no meta-GGA, GGA = PE, one point, writes the WAVECAR that seeds r2SCAN.
    assert "METAGGA" not in static and static["GGA"].upper() == "PE"
    assert static["NSW"] == 0 and static["IBRION"] == -1 and static["LWAVE"] is True
    assert "ISTART" not in static and "ICHARG" not in static
    # r2SCAN relaxation: exactly three ionic steps from the PBE wavefunction, cell and positions relaxed.
    assert r2scan["METAGGA"].upper() == "R2SCAN" and "GGA" not in r2scan
    assert r2scan["NSW"] == 3 and r2scan["IBRION"] == 2 and r2scan["ISIF"] == 3 and r2scan["EDIFFG"] == -0.02
    assert r2scan["ISTART"] == 1 and r2scan["ICHARG"] == 0 and r2scan["LWAVE"] is False
    # MP's default moments, in VASP's (sorted) order: Al, Fe.
    assert static["MAGMOM"] == r2scan["MAGMOM"] == [0.6, 5.0]

    for folder in (pbe, relax):
        names = {p.name for p in folder.iterdir()}
        assert {"INCAR", "POSCAR", "POTCAR.spec", "POTCAR.missing"} <= names
        assert "POTCAR" not in names and "KPOINTS" not in names  # k-points: KSPACING in the INCAR
        assert (folder / "POTCAR.spec").read_text().split() == ["Al", "Fe_pv"]
        assert (folder / "POSCAR").read_text().splitlines()[5].split() == ["Al", "Fe"]
    assert written.missing_potcars == ["Al (Al, PBE_64)", "Fe (Fe_pv, PBE_64)"]
    assert written.problem.startswith("POTCAR for Al (Al, PBE_64), Fe (Fe_pv, PBE_64) not found: ")
    assert "set PMG_VASP_PSP_DIR (pymatgen config" in written.problem and str(no_potcars) in written.problem
    assert (pbe / "POTCAR.missing").read_text().strip() == written.problem
    manifest = json.loads((tmp_path / "w" / "aloe_vasp.json").read_text())
    assert manifest["order"] == [1, 0] and manifest["stages"] == [PBE_STATIC, R2SCAN_RELAX]
    assert manifest["missing_potcars"] == written.missing_potcars


def test_missing_potcars_fail_as_input_before_anything_runs(tmp_path, no_potcars):
    for mode in ("run", "write"):
        lab = labeler("fail", mode=mode)
        with pytest.raises(LabelerError) as err:
            lab.calculate(fe_al(), tmp_path / mode)
        assert err.value.kind == "input"
        assert (
            "POTCAR for Al (Al, PBE_64), Fe (Fe_pv, PBE_64) not found: set PMG_VASP_PSP_DIR"
            in err.value.message
        )
        assert (tmp_path / mode / R2SCAN_RELAX / "INCAR").exists()
        assert not (tmp_path / mode / PBE_STATIC / "vasp.out").exists()  # never launched


def test_unset_psp_dir_is_named(tmp_path, monkeypatch):
    from pymatgen.core import SETTINGS

    monkeypatch.delitem(SETTINGS, "PMG_VASP_PSP_DIR", raising=False)
    written = VASPLabeler().write_inputs(fe_al(), tmp_path)
    assert "set PMG_VASP_PSP_DIR" in written.problem and "it is not set" in written.problem


def test_user_incar_settings_win_and_potcar_functional_passes(tmp_path, no_potcars):
    settings = VASPSettings(
        user_incar_settings={"ALGO": "All", "NELM": 300, "KSPACING": 0.3},
        potcar_functional="PBE_54",
        relax_steps=5,
    )
    written = VASPLabeler(settings).write_inputs(fe_al(), tmp_path)
    for folder in written.folders.values():
        tags = incar(folder)
        assert tags["ALGO"] == "All" and tags["NELM"] == 300 and tags["KSPACING"] == 0.3
    assert incar(written.folders[R2SCAN_RELAX])["NSW"] == 5
    assert "PBE_54" in written.problem
    assert json.loads((tmp_path / "aloe_vasp.json").read_text())["potcar_functional"] == "PBE_54"


def test_r2scan_only_when_pbe_static_first_is_off(tmp_path, no_potcars):
    written = VASPLabeler(VASPSettings(pbe_static_first=False)).write_inputs(fe_al(), tmp_path)
    assert list(written.folders) == [R2SCAN_RELAX] and not (tmp_path / PBE_STATIC).exists()
    tags = incar(written.folders[R2SCAN_RELAX])
    assert "ISTART" not in tags and "ICHARG" not in tags and tags["NSW"] == 3


def test_write_mode_writes_and_returns_nothing(tmp_path, potcars_found):
    calcs = labeler("fail", mode="write").calculate(fe_al(), tmp_path)
    assert calcs == []
    assert (tmp_path / PBE_STATIC / "INCAR").exists() and (tmp_path / R2SCAN_RELAX / "INCAR").exists()
    assert not (tmp_path / PBE_STATIC / "vasp.out").exists()
    steps = json.loads((tmp_path / "aloe_vasp.json").read_text())["how_to_run"]
    assert any("WAVECAR" in s for s in steps)


def test_not_periodic_is_an_input_failure(tmp_path):
    with pytest.raises(LabelerError) as err:
        VASPLabeler().write_inputs(Atoms("Fe", cell=[3, 3, 3], pbc=[True, True, False]), tmp_path)
    assert err.value.kind == "input"


def test_supports_and_isolated_atoms():
    lab = VASPLabeler()
    assert lab.code == "vasp" and lab.functional == "r2SCAN"
    assert lab.supports(fe_al()) is None
    assert "Es" in lab.supports(Atoms("Es", cell=[5, 5, 5], pbc=True))
    with pytest.raises(NotImplementedError, match="isolated_atoms: published"):
        lab.isolated_atom_energy("Fe", Path("."))


def test_runtime_keys_stay_out_of_the_record_settings():
    lab = VASPLabeler(VASPSettings(command=["srun", "vasp_std"], max_errors=9, use_custodian=False))
    kept = lab.label_settings()
    assert not {"command", "use_custodian", "max_errors", "mode"} & set(kept)
    assert kept["kspacing"] == 0.2 and kept["relax_steps"] == 3
    assert "vasp.max_errors" in LabelSettings.RUNTIME_KEYS


def test_overrides_keep_the_time_limit():
    lab = VASPLabeler(timeout=12.0)
    lab.custodian_polling_s = 0.5
    new = lab.with_overrides({"user_incar_settings": {"ALGO": "All"}})
    assert isinstance(new, VASPLabeler) and new.timeout == 12.0 and new.custodian_polling_s == 0.5
    assert new.settings.user_incar_settings == {"ALGO": "All"}


# ---- parsing -------------------------------------------------------------------------------------------------
def test_vasprun_steps_units_signs_and_order():
    calcs = read_vasprun(RELAX_XML, order=[1, 0], outcar=DATA / "OUTCAR_relax")
    assert [c.step for c in calcs] == [0, 1, 2]
    for i, calc in enumerate(calcs):
        assert calc.atoms.get_chemical_symbols() == ["Fe", "Al"]  # back in the input's order
        assert calc.energy == pytest.approx(E0[i], abs=1e-8)  # energy(sigma->0)
        assert calc.info["e_fr_energy"] != pytest.approx(calc.energy)
        np.testing.assert_allclose(calc.forces, [np.negative(FORCES_AL[i]), FORCES_AL[i]], atol=1e-8)
        k = np.asarray(KBAR[i])
        # ASE sign (tensile positive), eV/A^3, Voigt xx yy zz yz xz xy
        expected = -np.array([k[0, 0], k[1, 1], k[2, 2], k[1, 2], k[0, 2], k[0, 1]]) / EV_PER_A3_IN_KBAR
        np.testing.assert_allclose(calc.stress, expected, rtol=1e-10)
        np.testing.assert_allclose(calc.magmoms, [MAG_FE[i], [-0.012, -0.010, -0.009][i]], atol=1e-9)
        assert calc.info["vasp_version"] == "6.4.2"
    # zz of step 0 is +20 kbar in VASP (compressive): ASE says -0.01248 eV/A^3
    assert calcs[0].stress[2] == pytest.approx(-20.0 / 1602.1766208)
    # the cell changes from step to step (ISIF 3)
    assert calcs[0].atoms.cell[0, 0] == pytest.approx(2.90) and calcs[2].atoms.cell[0, 0] == pytest.approx(
        2.875
    )
    np.testing.assert_allclose(calcs[0].atoms.get_scaled_positions()[0], [0.52, 0.49, 0.50], atol=1e-8)


def test_vasprun_agrees_with_ase_reader():
    """Independent check of energies, forces and the stress sign/units against ASE's vasprun reader."""
    paths = [RELAX_XML]
    import ase

    real = Path(ase.__file__).parent / "test" / "testdata" / "vasp" / "vasprun_pstress.xml"  # VASP 6.3 output
    if real.exists():
        paths.append(real)
    for path in paths:
        ours = read_vasprun(path)
        theirs = read(path, index=":", format="vasp-xml")
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a.energy == pytest.approx(b.get_potential_energy(), abs=1e-7)
            np.testing.assert_allclose(a.forces, b.get_forces(), atol=1e-8)
            np.testing.assert_allclose(a.stress, b.get_stress(), atol=1e-10)


def test_parse_outputs_keep_steps_and_pbe(tmp_path):
    for stage, src in ((R2SCAN_RELAX, RELAX_XML), (PBE_STATIC, STATIC_XML)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "vasprun.xml").write_text(src.read_text())
    (tmp_path / "aloe_vasp.json").write_text(json.dumps({"order": [1, 0]}))
    lab = VASPLabeler()
    assert [c.step for c in lab.parse_outputs(tmp_path)] == [0, 1, 2]
    last = lab.parse_outputs(tmp_path, keep_steps="last")
    assert [c.step for c in last] == [2] and last[0].energy == pytest.approx(E0[2])
    assert [c.step for c in VASPLabeler(VASPSettings(keep_steps="last")).parse_outputs(tmp_path)] == [2]
    assert last[0].magmoms is None  # no OUTCAR here
    (pbe,) = lab.parse_outputs(tmp_path, stage=PBE_STATIC)
    assert pbe.step is None and pbe.energy == pytest.approx(-14.49) and pbe.info["vasp_stage"] == PBE_STATIC
    assert pbe.atoms.get_chemical_symbols() == ["Fe", "Al"]
    assert lab.code_version() == "vasp-6.4.2"
    with pytest.raises(LabelerError) as err:
        lab.parse_outputs(tmp_path / "nothing")
    assert err.value.kind == "crashed"


def test_outcar_tables_per_step():
    tables = read_outcar_magmoms(DATA / "OUTCAR_relax", 2)
    assert len(tables) == 3
    np.testing.assert_allclose(tables[-1], [-0.009, 2.231])


# ---- launching a fake VASP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("use_custodian", [False, True], ids=["subprocess", "custodian"])
def test_calculate_runs_both_stages(tmp_path, potcars_found, use_custodian):
    lab = labeler("ok", use_custodian=use_custodian)
    calcs = lab.calculate(fe_al(), tmp_path)
    assert [c.step for c in calcs] == [0, 1, 2]
    assert [c.energy for c in calcs] == pytest.approx(E0)
    assert calcs[0].atoms.get_chemical_symbols() == ["Fe", "Al"]
    np.testing.assert_allclose(calcs[-1].magmoms, [2.231, -0.009])
    assert all(c.info["vasp_stage"] == R2SCAN_RELAX for c in calcs)
    # the PBE WAVECAR moved over to seed r2SCAN (the fake refuses ISTART 1 without it)
    assert (tmp_path / R2SCAN_RELAX / "WAVECAR").exists() and not (tmp_path / PBE_STATIC / "WAVECAR").exists()
    assert (tmp_path / PBE_STATIC / "vasprun.xml").exists()
    assert (tmp_path / R2SCAN_RELAX / "custodian.json").exists() == use_custodian
    assert lab.parse_outputs(tmp_path, stage=PBE_STATIC)[0].energy == pytest.approx(-14.49)


def test_keep_last_step_only(tmp_path, potcars_found):
    calcs = labeler("ok", keep_steps="last").calculate(fe_al(), tmp_path)
    assert [c.step for c in calcs] == [2]


@pytest.mark.parametrize("use_custodian", [False, True], ids=["subprocess", "custodian"])
def test_nonzero_exit_is_crashed(tmp_path, potcars_found, use_custodian):
    with pytest.raises(LabelerError) as err:
        labeler("fail", use_custodian=use_custodian, max_errors=1).calculate(fe_al(), tmp_path)
    assert err.value.kind == "crashed"
    assert "pbe_static" in err.value.message


def test_missing_command_is_crashed(tmp_path, potcars_found):
    lab = VASPLabeler(VASPSettings(command=[str(tmp_path / "no-such-vasp")], use_custodian=False))
    with pytest.raises(LabelerError) as err:
        lab.calculate(fe_al(), tmp_path)
    assert err.value.kind == "crashed" and "cannot start VASP" in err.value.message


@pytest.mark.parametrize("use_custodian", [False, True], ids=["subprocess", "custodian"])
def test_time_limit_stops_vasp(tmp_path, potcars_found, use_custodian):
    lab = labeler("sleep", use_custodian=use_custodian)
    t0 = time.monotonic()
    with pytest.raises(LabelerError) as err:
        lab.calculate(fe_al(), tmp_path, timeout=1.0)
    assert err.value.kind == "timeout"
    assert time.monotonic() - t0 < 8
    pid = int((tmp_path / PBE_STATIC / "fake_vasp.pid").read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # the fake VASP was stopped, not left running
        os.kill(pid, 0)


def test_labeler_timeout_attribute_applies(tmp_path, potcars_found):
    lab = labeler("sleep")
    lab.timeout = 0.5
    with pytest.raises(LabelerError) as err:
        lab.calculate(fe_al(), tmp_path)
    assert err.value.kind == "timeout"


@pytest.mark.parametrize("use_custodian", [False, True], ids=["subprocess", "custodian"])
def test_unconverged_scf_is_classified(tmp_path, potcars_found, use_custodian):
    with pytest.raises(LabelerError) as err:
        labeler("unconverged", use_custodian=use_custodian).calculate(fe_al(), tmp_path)
    assert err.value.kind == "scf_unconverged"
    assert "r2scan_relax" in err.value.message and "NELM = 4" in err.value.message
