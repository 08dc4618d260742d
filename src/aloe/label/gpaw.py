"""GPAW plane-wave DFT through ASE: the labeler that runs wherever aloe installs (r2SCAN through libxc).

One structure is one static calculation (:meth:`GPAWLabeler.calculate`): plane waves at ``ecut``, Gamma-centred
k-points from ``kspacing`` (VASP's KSPACING rule), spin-polarised from ferromagnetic moments (Materials Project's
MAGMOM defaults, as the VASP backend's input set), Fermi-Dirac smearing. For r2SCAN with ``pbe_first``, PBE is
converged first and r2SCAN continues from its wave functions and density (MP-ALOE's PBE-then-r2SCAN order in
VASP). Both give the same converged numbers (NaCl, Si: within 1e-6 eV); the PBE start halves the expensive r2SCAN
SCF steps (NaCl: 6 after 8 PBE steps, against 14 from scratch). Isolated atoms are computed the same way.

GPAW is built by the Makefile against libxc 7 (``install/``): with an older libxc, whose "Fermi hole curvature"
enforcement GPAW cannot switch off, r2SCAN energies blow up wherever there is vacuum (isolated atoms), so r2SCAN
refuses to run on one (failure class ``input``). ``code_version`` records the libxc version.

The PAW setups are those of the ``gpaw-data`` package (``gpaw.setup_paths``; ``GPAW_SETUP_PATH`` adds folders
before it). gpaw is imported inside the methods only, so importing aloe stays fast.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aloe.label.base import Calculation, Labeler, LabelerError
from aloe.label.settings import GPAWSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ase import Atoms

#: The functionals as GPAW (libxc) names them.
XC_NAMES = {"r2SCAN": "MGGA_X_R2SCAN+MGGA_C_R2SCAN", "PBE": "PBE"}
#: Box of an isolated atom (A): large enough for the densities to vanish, slightly non-cubic to break symmetry.
ISOLATED_ATOM_BOX = (10.0, 10.5, 11.0)
#: Eigenstate convergence of isolated atoms (eV^2 per valence electron; GPAW's default 4e-8 is out of reach there).
ATOM_EIGENSTATES_CONVERGENCE = 1e-4
#: Energy convergence of isolated atoms (eV per valence electron): r2SCAN's total energy of an atom in vacuum keeps
#: oscillating by a few 1e-5 eV between SCF steps (seen for Li: +-2e-5 eV over 200 steps), which is far below what
#: cohesive energies and E0s need.
ATOM_ENERGY_CONVERGENCE = 1e-4
#: Initial moment (mu_B) of elements not in the MAGMOM table (MP's default).
DEFAULT_MAGMOM = 0.6
#: GPAW's text log in each work folder (with ``pbe_first``, the PBE stage logs to ``gpaw-pbe.txt``).
LOG_FILE = "gpaw.txt"
PBE_LOG_FILE = "gpaw-pbe.txt"

#: The oldest libxc whose Fermi-hole-curvature enforcement GPAW can switch off (needed for r2SCAN).
MIN_LIBXC_FOR_MGGA = 7


def kpoint_grid(atoms: Atoms, kspacing: float) -> tuple[int, int, int]:
    """VASP's KSPACING rule: ``n_i = max(1, ceil(|b_i| / kspacing))``, ``b_i`` with the 2 pi; 1 along non-periodic axes."""
    reciprocal = 2.0 * np.pi * np.asarray(atoms.cell.reciprocal(), dtype=float)
    sizes = []
    for axis in range(3):
        n = max(1, math.ceil(float(np.linalg.norm(reciprocal[axis])) / kspacing - 1e-9))
        sizes.append(n if atoms.pbc[axis] else 1)
    return (sizes[0], sizes[1], sizes[2])


@cache
def _mp_magmoms() -> dict[str, float]:
    """Materials Project's initial moments per element (the MAGMOM of pymatgen's MP24RelaxSet)."""
    from pymatgen.io.vasp.sets import MP24RelaxSet

    table = MP24RelaxSet.CONFIG["INCAR"].get("MAGMOM", {})
    return {key: float(value) for key, value in table.items() if re.fullmatch(r"[A-Z][a-z]?", key)}


def initial_magmoms(symbols: list[str]) -> list[float]:
    """Ferromagnetic initial moments (mu_B): MP's per-element MAGMOM, ``DEFAULT_MAGMOM`` for the others."""
    table = _mp_magmoms()
    return [table.get(symbol, DEFAULT_MAGMOM) for symbol in symbols]


@cache
def setup_elements() -> frozenset[str]:
    """Elements with a standard PBE PAW setup (``<El>.PBE[.gz]``) in GPAW's setup paths."""
    import gpaw

    found = set()
    for folder in gpaw.setup_paths:
        path = Path(folder)
        if path.is_dir():
            for file in path.iterdir():
                match = re.fullmatch(r"([A-Z][a-z]?)\.PBE(\.gz)?", file.name)
                if match:
                    found.add(match.group(1))
    return frozenset(found)


def _check_functional(xc: str) -> None:
    """Raise ``LabelerError('input')`` when this GPAW cannot compute ``xc`` correctly (r2SCAN needs libxc >= 7)."""
    if xc != "r2SCAN":
        return
    import gpaw

    libxc = gpaw.get_libraries().get("libxc") or ""
    if not libxc or int(libxc.split(".")[0]) < MIN_LIBXC_FOR_MGGA:
        raise LabelerError(
            "input",
            f"GPAW is built with libxc {libxc or '(none)'}; r2SCAN needs libxc >= {MIN_LIBXC_FOR_MGGA} "
            "(make install builds it; see install/build-libxc.sh)",
        )


@contextmanager
def _blas_threads(threads: int) -> Iterator[None]:
    """Limit OpenMP/BLAS threads in this process (GPAW's OpenBLAS included) for the block, then restore them."""
    # threadpoolctl limits only the libraries already loaded: GPAW's eigensolver imports scipy.linalg lazily, and
    # scipy's own OpenBLAS, loaded inside the block, kept all its threads (small eigh calls 20-100x slower in a
    # fresh child process, on a busy machine).
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield


class GPAWLabeler(Labeler):
    """r2SCAN (or PBE) labels from GPAW in plane-wave mode; one static calculation per structure."""

    code = "gpaw"
    RUNTIME_KEYS: ClassVar[frozenset[str]] = GPAWSettings.RUNTIME_KEYS
    settings: GPAWSettings

    def __init__(self, settings: GPAWSettings | None = None) -> None:
        super().__init__(settings or GPAWSettings())

    # ---- description ----------------------------------------------------------------------------------------
    @property
    def functional(self) -> str:
        """``r2SCAN`` or ``PBE``."""
        return self.settings.xc

    def code_version(self) -> str:
        """GPAW's version, the libxc it is linked to and the PAW setups' (gpaw-data) version."""
        import gpaw

        parts = [f"gpaw-{gpaw.__version__}"]
        libxc = gpaw.get_libraries().get("libxc")
        parts.append(f"libxc-{libxc}" if libxc else "no-libxc")
        try:
            import gpaw_data

            parts.append(f"gpaw-data-{gpaw_data.__version__}")
        except ImportError:
            parts.append("setups-unknown")
        return " ".join(parts)

    def supports(self, atoms: Atoms) -> str | None:
        """Every element needs a PAW setup (gpaw-data has none for Tc, Po, At, and from Fr on)."""
        available = setup_elements()
        missing = sorted(
            set(atoms.get_chemical_symbols()) - available, key=atoms.get_chemical_symbols().index
        )
        if missing:
            return f"not supported by this labeler: no GPAW PAW setup for {', '.join(missing)}"
        return None

    # ---- calculations -------------------------------------------------------------------------------------------
    def _parameters(self, atoms: Atoms, xc: str) -> dict[str, Any]:
        """GPAW keywords for ``atoms`` (k-points from its cell) with functional ``xc`` (aloe's name)."""
        from gpaw import PW

        _check_functional(xc)
        s = self.settings
        params: dict[str, Any] = {
            "mode": PW(s.ecut),
            "xc": XC_NAMES[xc],
            "kpts": {"size": kpoint_grid(atoms, s.kspacing), "gamma": True},
            "spinpol": s.spinpol,
            "occupations": {"name": "fermi-dirac", "width": s.smearing},
            "maxiter": s.maxiter,
            "convergence": {"energy": s.energy_convergence},
        }
        if s.mixing_beta is not None:
            params["mixer"] = {"beta": s.mixing_beta}
        return params

    def calculate(self, atoms: Atoms, workdir: Path) -> list[Calculation]:
        """One static calculation: energy, forces, stress (ASE's Voigt, tensile positive), magnetic moments."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if not all(atoms.pbc):
            raise LabelerError("input", "GPAW's plane waves need a structure periodic along all three axes")
        if atoms.cell.volume < 1e-6:
            raise LabelerError("input", "the cell has no volume")
        _check_functional(self.settings.xc)
        work = atoms.copy()
        work.calc = None
        work.set_initial_magnetic_moments(
            initial_magmoms(work.get_chemical_symbols()) if self.settings.spinpol else None
        )
        start = time.perf_counter()
        info: dict[str, Any] = {"kpts": list(kpoint_grid(work, self.settings.kspacing))}
        with self._gpaw_errors(), _blas_threads(self.settings.threads):
            calc = self._attach_calculator(work, workdir, info, {})
            energy = float(work.get_potential_energy())
            forces = np.asarray(work.get_forces(), dtype=float)
            stress = np.asarray(work.get_stress(voigt=True), dtype=float)
            magmoms = np.asarray(work.get_magnetic_moments(), dtype=float) if self.settings.spinpol else None
            info["free_energy"] = float(work.get_potential_energy(force_consistent=True))
            info["scf_iterations"] = int(calc.get_number_of_iterations())
            if magmoms is not None:
                info["total_magmom"] = float(calc.get_magnetic_moment())
        info["wall_time_s"] = round(time.perf_counter() - start, 3)
        frozen = atoms.copy()
        frozen.calc = None
        return [Calculation(frozen, energy, forces, stress, magmoms=magmoms, info=info)]

    def _attach_calculator(
        self, work: Atoms, workdir: Path, info: dict[str, Any], extra: dict[str, Any]
    ) -> Any:
        """Attach GPAW to ``work`` (keywords from the settings, updated by ``extra``); return the calculator.

        For r2SCAN with ``pbe_first``, PBE is converged here first and r2SCAN continues from its wave functions and
        density (the SCF then runs when a property is asked for). GPAW has no public call for a change of
        functional on a converged calculator; this uses the one GPAW's own cut-off convergence tool uses
        (``DFT.new`` with new parameters), and hands over the PBE kinetic-energy density that r2SCAN needs from its
        first step (GPAW 26.7 would start r2SCAN from a zero one).
        """
        from gpaw import GPAW
        from gpaw.dft import Parameters
        from gpaw.new.ase_interface import ASECalculator
        from gpaw.new.logger import Logger

        if not (self.settings.xc == "r2SCAN" and self.settings.pbe_first):
            calc = GPAW(**{**self._parameters(work, self.settings.xc), **extra}, txt=str(workdir / LOG_FILE))
            work.calc = calc
            return calc
        pbe = GPAW(**{**self._parameters(work, "PBE"), **extra}, txt=str(workdir / PBE_LOG_FILE))
        work.calc = pbe
        info["pbe_energy"] = float(work.get_potential_energy())
        info["pbe_scf_iterations"] = int(pbe.get_number_of_iterations())
        old = pbe.dft
        old.density.update_ked(old.ibzwfs)  # tau of the converged PBE orbitals
        params = Parameters(**{**self._parameters(work, "r2SCAN"), **extra})
        log = Logger(str(workdir / LOG_FILE), pbe.comm)
        dft = old.new(work, params, log=log)
        dft.density.taut_sR.data[:] = old.density.taut_sR.data
        dft.potential, dft.energies, _ = dft.pot_calc.calculate(dft.density, None, dft.potential.vHt_x)
        calc = ASECalculator(params, log=log, dft=dft, atoms=work.copy())
        work.calc = calc
        return calc

    def isolated_atom_energy(self, symbol: str, workdir: Path, spinpol: bool = True) -> float:
        """One spin-polarised atom (Hund's-rule start) in a non-cubic box, Gamma point only, same ecut and xc.

        ``spinpol=False`` gives the non-magnetic atom instead (a reference; cohesive energies use the default).
        """
        from ase import Atoms

        if symbol not in setup_elements():
            raise LabelerError(
                "unsupported", f"not supported by this labeler: no GPAW PAW setup for {symbol}"
            )
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        box = np.array(ISOLATED_ATOM_BOX)
        atom = Atoms(symbol, positions=[box / 2], cell=box, pbc=True)
        base = self._parameters(atom, self.settings.xc)
        extra = {
            "kpts": {"size": (1, 1, 1), "gamma": True},
            "spinpol": spinpol,
            "hund": spinpol,
            "symmetry": "off",
            # r2SCAN's potential is noisy in vacuum: an atom's eigenstate residuals stall near 1e-6 eV^2 per
            # electron, above GPAW's 4e-8 default, long after the energy has converged.
            "convergence": {
                **base["convergence"],
                "eigenstates": ATOM_EIGENSTATES_CONVERGENCE,
                "energy": max(self.settings.energy_convergence, ATOM_ENERGY_CONVERGENCE),
            },
        }
        with self._gpaw_errors(), _blas_threads(self.settings.threads):
            self._attach_calculator(atom, workdir, {}, extra)
            return float(atom.get_potential_energy())

    @contextmanager
    def _gpaw_errors(self) -> Iterator[None]:
        """GPAW's exceptions -> :class:`LabelerError` of the right class."""
        from gpaw import KohnShamConvergenceError

        try:
            yield
        except LabelerError:
            raise
        except KohnShamConvergenceError as exc:
            raise LabelerError(
                "scf_unconverged",
                f"GPAW's SCF did not converge in {self.settings.maxiter} steps"
                + (f" ({type(exc).__name__}: {exc})" if str(exc) else ""),
            ) from None
        except ValueError as exc:
            if "NaN" in str(exc):  # GPAW 26.7: "Some energy terms are NaN!" when the SCF blows up
                raise LabelerError("scf_unconverged", f"GPAW's SCF diverged: {exc}") from None
            raise LabelerError("crashed", f"GPAW raised ValueError: {exc}") from None
        except Exception as exc:
            raise LabelerError("crashed", f"GPAW raised {type(exc).__name__}: {exc}") from None
