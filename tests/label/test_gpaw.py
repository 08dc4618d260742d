"""The GPAW labeler: how GPAW is built, the wrapper's inputs and outputs, failure classes, and real (cheap) DFT.

The fast tests check the installation (libxc for r2SCAN, FFTW/BLAS, the gpaw-data setups) and the pure helpers;
the slow ones run GPAW at low cut-offs and coarse k-points (a few seconds each on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aloe.label.base import LabelerError
from aloe.label.gpaw import GPAWLabeler, initial_magmoms, kpoint_grid
from aloe.label.settings import GPAWSettings

R2SCAN = "MGGA_X_R2SCAN+MGGA_C_R2SCAN"
#: Cheap settings for real calculations in tests (the defaults are production settings).
CHEAP = {"ecut": 300.0, "kspacing": 0.5}


@pytest.fixture(scope="module")
def gpaw():
    return pytest.importorskip("gpaw", reason="gpaw is not installed (make install builds it)")


def si(a: float = 5.43) -> Atoms:
    return bulk("Si", "diamond", a=a)


# ---- installation (fast) ---------------------------------------------------------------------------------------
def test_gpaw_is_built_with_libxc_7_and_r2scan_exists(gpaw):
    from gpaw.xc.libxc import LibXC

    libxc = gpaw.get_libraries().get("libxc")
    assert libxc, "GPAW was built without libxc: r2SCAN does not exist (see install/gpaw-siteconfig.py)"
    # libxc < 7: GPAW cannot switch off the Fermi-hole-curvature enforcement and r2SCAN blows up in vacuum
    assert int(libxc.split(".")[0]) >= 7, f"GPAW uses libxc {libxc}; make install builds libxc 7"
    assert LibXC(R2SCAN).type == "MGGA"


def test_r2scan_refuses_an_old_libxc(gpaw, monkeypatch, tmp_path):
    monkeypatch.setattr(gpaw, "get_libraries", lambda: {"libxc": "5.2.3"})
    with pytest.raises(LabelerError) as err:
        GPAWLabeler().calculate(si(), tmp_path)
    assert err.value.kind == "input" and "libxc >= 7" in err.value.message
    with pytest.raises(LabelerError):
        GPAWLabeler().isolated_atom_energy("H", tmp_path)
    assert not list(tmp_path.iterdir())  # refused before GPAW started


def test_gpaw_is_built_with_fftw_and_blas(gpaw):
    import gpaw.cgpaw as cgpaw
    import gpaw.fftw as fftw

    assert fftw.have_fftw(), "GPAW was built without FFTW (slow numpy FFTs)"
    assert hasattr(cgpaw, "mmm"), "GPAW was built without a native BLAS"


def test_setups_come_from_gpaw_data(gpaw):
    from pathlib import Path

    import gpaw_data

    from aloe.label.gpaw import setup_elements

    assert Path(gpaw_data.datapath()) in [Path(p) for p in gpaw.setup_paths]
    elements = setup_elements()
    assert {"H", "O", "Si", "Na", "Cl", "Fe", "Bi", "Rn", "Lu"} <= elements
    assert not {"Tc", "Po", "At", "Fr", "Ra", "Ac", "Th", "U", "Pu"} & elements
    assert GPAWLabeler().code_version().startswith(f"gpaw-{gpaw.__version__} libxc-")


def test_unsupported_elements_are_named(gpaw):
    labeler = GPAWLabeler()
    assert labeler.supports(si()) is None
    assert labeler.supports(Atoms("NaCl", cell=[5, 5, 5])) is None
    reason = labeler.supports(Atoms("TcO2", cell=[5, 5, 5], pbc=True))
    assert reason == "not supported by this labeler: no GPAW PAW setup for Tc"
    assert "U" in labeler.supports(Atoms("UO2", cell=[5, 5, 5], pbc=True))


# ---- pure helpers (fast) -------------------------------------------------------------------------------------------
def test_kpoint_grid_follows_vasp_kspacing():
    atoms = Atoms("H", cell=[2.0, 4.0, 10.0], pbc=True)
    # |b_i| = 2 pi / a_i: 3.1416, 1.5708, 0.6283 1/A
    assert kpoint_grid(atoms, 0.25) == (13, 7, 3)
    assert kpoint_grid(atoms, 0.5) == (7, 4, 2)
    assert kpoint_grid(atoms, 100.0) == (1, 1, 1)
    atoms.pbc = [True, True, False]
    assert kpoint_grid(atoms, 0.25) == (13, 7, 1)
    # fcc primitive cell: |b| = 2 pi sqrt(3) / a
    assert kpoint_grid(si(), 0.25) == (9, 9, 9)


def test_initial_moments_are_mp_ferromagnetic():
    assert initial_magmoms(["Fe", "O", "Ni", "Si"]) == [5.0, 0.6, 5.0, 0.6]


def test_threads_stay_out_of_the_record_settings():
    one = GPAWLabeler(GPAWSettings(threads=1))
    four = GPAWLabeler(GPAWSettings(threads=4))
    assert "threads" not in one.label_settings()
    assert one.label_settings() == four.label_settings()
    assert GPAWLabeler(GPAWSettings(ecut=400)).label_settings() != one.label_settings()
    assert GPAWLabeler().functional == "r2SCAN"
    assert GPAWLabeler(GPAWSettings(xc="PBE")).functional == "PBE"
    assert GPAWLabeler().with_overrides({"maxiter": 600}).settings.maxiter == 600


def test_non_periodic_structure_is_an_input_failure(tmp_path):
    with pytest.raises(LabelerError) as err:
        GPAWLabeler().calculate(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[8, 8, 8]), tmp_path)
    assert err.value.kind == "input"


def test_gpaw_errors_are_crashes(gpaw, tmp_path):
    overlapping = Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0.05]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(LabelerError) as err:
        GPAWLabeler(GPAWSettings(xc="PBE", **CHEAP)).calculate(overlapping, tmp_path)
    assert err.value.kind == "crashed"


# ---- real DFT at cheap settings (slow) ---------------------------------------------------------------------------
@pytest.mark.slow
def test_pbe_silicon_lattice_constant(gpaw, tmp_path):
    labeler = GPAWLabeler(GPAWSettings(xc="PBE", ecut=300.0, kspacing=0.3, spinpol=False))
    lattice = np.array([5.30, 5.40, 5.50, 5.60])
    energies, pressures = [], []
    for a in lattice:
        [calc] = labeler.calculate(si(a), tmp_path / f"a{a}")
        energies.append(calc.energy)
        pressures.append(-calc.stress[:3].mean())  # ASE's stress: tensile positive
        assert calc.magmoms is None
    volumes = lattice**3 / 4
    fit = np.polyfit(volumes, energies, 3)
    roots = [
        r.real
        for r in np.roots(np.polyder(fit))
        if abs(r.imag) < 1e-9 and np.polyval(np.polyder(fit, 2), r) > 0
    ]
    a0 = (4 * roots[0]) ** (1 / 3)
    assert a0 == pytest.approx(5.47, rel=0.015)
    # compressed cells push outwards (positive pressure), stretched ones pull in: ASE's sign convention
    assert pressures[0] > 0 > pressures[-1]


@pytest.mark.slow
def test_r2scan_matches_plain_gpaw(gpaw, tmp_path):
    """The wrapper (PBE first, then r2SCAN) against GPAW called directly with the same settings (r2SCAN from scratch)."""
    from gpaw import GPAW, PW

    atoms = si()
    labeler = GPAWLabeler(GPAWSettings(**CHEAP))  # r2SCAN, spin-polarised, pbe_first
    [calc] = labeler.calculate(atoms, tmp_path / "aloe")
    assert np.isfinite(calc.energy)
    assert np.abs(calc.forces).max() < 1e-3  # zero by symmetry
    assert calc.stress.shape == (6,)
    assert (
        calc.stress[0] == pytest.approx(calc.stress[1], abs=1e-5) == pytest.approx(calc.stress[2], abs=1e-5)
    )
    assert np.abs(calc.stress[3:]).max() < 1e-5
    assert calc.magmoms is not None and np.abs(calc.magmoms).max() < 1e-3  # Si is not magnetic
    assert calc.info["pbe_scf_iterations"] > 0 and calc.info["scf_iterations"] > 0
    assert calc.info["kpts"] == [5, 5, 5]
    assert (tmp_path / "aloe" / "gpaw.txt").is_file() and (tmp_path / "aloe" / "gpaw-pbe.txt").is_file()

    plain = atoms.copy()
    plain.set_initial_magnetic_moments([0.6, 0.6])
    plain.calc = GPAW(
        mode=PW(300),
        xc=R2SCAN,
        kpts={"size": (5, 5, 5), "gamma": True},  # |b| = 2.004 1/A, kspacing 0.5
        occupations={"name": "fermi-dirac", "width": 0.05},
        spinpol=True,
        convergence={"energy": 1e-5},
        txt=str(tmp_path / "plain.txt"),
    )
    assert calc.energy == pytest.approx(plain.get_potential_energy(), abs=2e-4)
    assert calc.stress == pytest.approx(plain.get_stress(), abs=1e-4)


@pytest.mark.slow
def test_scf_failure_is_classified(gpaw, tmp_path):
    labeler = GPAWLabeler(GPAWSettings(xc="PBE", maxiter=2, **CHEAP))
    with pytest.raises(LabelerError) as err:
        labeler.calculate(si(), tmp_path)
    assert err.value.kind == "scf_unconverged"
    assert "2 steps" in err.value.message


@pytest.mark.slow
def test_isolated_atom_is_lowered_by_spin_polarisation(gpaw, tmp_path):
    labeler = GPAWLabeler(GPAWSettings(xc="r2SCAN", ecut=300.0))
    spin = labeler.isolated_atom_energy("H", tmp_path / "spin")
    flat = labeler.isolated_atom_energy("H", tmp_path / "flat", spinpol=False)
    assert np.isfinite(spin) and np.isfinite(flat)
    assert spin < flat - 0.5  # H: about 0.9 eV in PBE
    assert (tmp_path / "spin" / "gpaw.txt").is_file()
