"""VASP as MP-ALOE ran it: a PBE static, then an r2SCAN relaxation of three ionic steps from the PBE wavefunction.

Protocol (``shared/DESIGN.md``): pymatgen's ``MP24RelaxSet`` (ENCUT 680, METAGGA R2SCAN, EDIFF 1e-5, ISPIN 2,
ISMEAR 0, SIGMA 0.05, LASPH) with KSPACING 0.2. Per structure, one work folder with two sub-folders::

    <workdir>/aloe_vasp.json       atom order (input -> VASP), stages, POTCARs, how to run the folders by hand
    <workdir>/pbe_static/          MP24RelaxSet(xc_functional="PBE") + NSW 0, IBRION -1, LWAVE True
    <workdir>/r2scan_relax/        MP24RelaxSet (r2SCAN) + NSW relax_steps, ISTART 1, ICHARG 0 (PBE WAVECAR moved in)

``VASPSettings.user_incar_settings`` go on top of aloe's tags in both stages (they win). Each folder holds INCAR,
POSCAR (sites sorted as pymatgen sorts them; ``aloe_vasp.json`` keeps the map back to the input order), KSPACING in
the INCAR (no KPOINTS file), POTCAR.spec (the POTCAR symbols) and POTCAR from the user's pymatgen configuration
(``PMG_VASP_PSP_DIR``). Without the POTCARs everything else is still written, plus ``POTCAR.missing``, and the
structure fails with class ``input``.

The labeler is split ASE-style: :meth:`VASPLabeler.write_inputs` and :meth:`VASPLabeler.parse_outputs` (files only)
versus :meth:`VASPLabeler.launch` (how to run): the command (an argument list, never a shell string) runs through
custodian's VASP error handlers (``use_custodian``) or plainly through :mod:`subprocess`.

Failure classes: the code cannot start, exits non-zero, custodian gives up, or leaves no readable vasprun.xml ->
``crashed``; an ionic step whose SCF used all NELM electronic steps -> ``scf_unconverged``; past the time limit ->
``timeout`` (VASP's process group is stopped); POTCARs missing or inputs that cannot be made -> ``input``.

Write mode (``mode: write``): :meth:`VASPLabeler.calculate` writes both folders and the manifest, launches nothing
and returns ``[]`` (the stage counts the structure as ``written``). A POTCAR that is missing is still an ``input``
failure in write mode (the folders are then complete except for the POTCAR). Folders run elsewhere are read back
with :meth:`VASPLabeler.parse_outputs`.

Units and signs: vasprun.xml holds forces in eV/A and the stress in kbar with VASP's sign (positive = compressive,
the opposite of ASE's); :class:`~aloe.label.base.Calculation` gets ASE's stress, ``-kbar / 1602.1766208`` eV/A^3,
Voigt ``xx, yy, zz, yz, xz, xy``. The energy of an ionic step is ``energy(sigma->0)`` (``e_0_energy``, as MatPES uses),
taken as ``e_fr_energy`` of the step plus ``e_0_energy - e_fr_energy`` of its last SCF step: the same number when
vasprun.xml is right, and the right one with the VASP versions that write a wrong ``e_0_energy`` into the step's
``<energy>`` (pymatgen's ``Vasprun.final_energy`` and ASE do the same). With PSTRESS, the PV term VASP adds to the
step's energy is taken off (as ASE does).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aloe.data.records import stress_from_kbar
from aloe.label.base import Calculation, Labeler, LabelerError
from aloe.label.settings import VASPSettings
from aloe.units import EV_PER_A3_IN_KBAR

if TYPE_CHECKING:
    from ase import Atoms

#: Sub-folder of the PBE static and of the r2SCAN relaxation.
PBE_STATIC = "pbe_static"
R2SCAN_RELAX = "r2scan_relax"
STAGES = (PBE_STATIC, R2SCAN_RELAX)
#: The functional of each stage.
STAGE_FUNCTIONAL = {PBE_STATIC: "PBE", R2SCAN_RELAX: "r2SCAN"}
#: Written next to the stage folders: atom order, stages, POTCARs, how to run by hand.
MANIFEST = "aloe_vasp.json"
#: Written into a stage folder when POTCARs are missing.
POTCAR_NOTE = "POTCAR.missing"
#: Where custodian and the plain launcher send VASP's stdout / stderr (custodian's names).
STDOUT_FILE = "vasp.out"
STDERR_FILE = "std_err.txt"


@dataclass
class WrittenInputs:
    """What :meth:`VASPLabeler.write_inputs` wrote.

    Attributes
    ----------
    workdir
        The structure's work folder.
    folders
        Stage name -> its folder (only the stages that run).
    order
        ``order[j]`` is the input index of VASP's atom ``j`` (VASP's POSCAR is sorted by species).
    missing_potcars
        ``"Fe (Fe_pv, PBE_64)"`` for each POTCAR not found in the pymatgen configuration.
    """

    workdir: Path
    folders: dict[str, Path]
    order: list[int]
    missing_potcars: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        """Why these inputs cannot run (missing POTCARs), or ``None``."""
        if not self.missing_potcars:
            return None
        return potcar_message(self.missing_potcars)


def potcar_message(missing: list[str]) -> str:
    """The one-line explanation of missing POTCARs."""
    from pymatgen.core import SETTINGS

    where = SETTINGS.get("PMG_VASP_PSP_DIR")
    now = f"; it is now {where}" if where else "; it is not set"
    return (
        f"POTCAR for {', '.join(missing)} not found: set PMG_VASP_PSP_DIR (pymatgen config: ~/.config/.pmgrc.yaml "
        f"or the environment) to the folder holding the POTCAR sets{now}"
    )


class VASPLabeler(Labeler):
    """MP-ALOE's VASP labels: PBE static -> WAVECAR -> r2SCAN relaxation, one :class:`Calculation` per ionic step.

    Parameters
    ----------
    settings
        The VASP backend settings.
    timeout
        Seconds one :meth:`calculate` may take (both stages together); past it VASP is stopped and the structure
        fails with class ``timeout``. ``None``: no limit.

    Attributes
    ----------
    custodian_polling_s, custodian_monitor_freq
        custodian's ``polling_time_step`` (s) and ``monitor_freq`` (polls between checks of the running job). With a
        ``timeout`` the monitors run often enough to overshoot it by at most about a tenth.
    kill_grace_s
        Seconds between SIGTERM and SIGKILL when the plain launcher stops VASP's process group.
    """

    code = "vasp"
    handles_timeout = True
    RUNTIME_KEYS: ClassVar[frozenset[str]] = VASPSettings.RUNTIME_KEYS

    custodian_polling_s: float = 10.0
    custodian_monitor_freq: int = 30
    kill_grace_s: float = 10.0

    def __init__(self, settings: VASPSettings | None = None, *, timeout: float | None = None) -> None:
        super().__init__(settings or VASPSettings())
        self.timeout = timeout
        self._vasp_version: str | None = None

    # ---- identity ---------------------------------------------------------------------------------------------
    @property
    def functional(self) -> str:
        """``r2SCAN`` (the PBE static only seeds the wavefunction)."""
        return "r2SCAN"

    def code_version(self) -> str:
        """VASP's version as read from the last vasprun.xml this labeler parsed (``unknown`` before that).

        Every :class:`Calculation` also carries it in ``info['vasp_version']``.
        """
        return f"vasp-{self._vasp_version}" if self._vasp_version else "unknown"

    def supports(self, atoms: Atoms) -> str | None:
        """``None`` unless an element has no POTCAR in the MP24 input set (missing POTCAR *files* are an input failure)."""
        from pymatgen.io.vasp.sets import MP24RelaxSet

        known = set(MP24RelaxSet.CONFIG.get("POTCAR", {}))
        missing = sorted(set(atoms.get_chemical_symbols()) - known)
        if missing:
            return f"not supported by this labeler: the MP24 input set has no POTCAR for {', '.join(missing)}"
        return None

    def with_overrides(self, overrides: dict[str, Any]) -> VASPLabeler:
        """A copy with settings overrides that keeps the time limit and the custodian cadence."""
        new = super().with_overrides(overrides)
        assert isinstance(new, VASPLabeler)
        new.timeout = self.timeout
        for name in ("custodian_polling_s", "custodian_monitor_freq", "kill_grace_s"):
            if name in self.__dict__:
                setattr(new, name, self.__dict__[name])
        return new

    # ---- inputs -----------------------------------------------------------------------------------------------
    def stage_incar_settings(self, stage: str) -> dict[str, Any]:
        """The INCAR tags aloe sets on top of MP24RelaxSet for ``stage`` (user_incar_settings applied last)."""
        s = self.settings
        if stage == PBE_STATIC:
            tags: dict[str, Any] = {"NSW": 0, "IBRION": -1, "LWAVE": True, "KSPACING": s.kspacing}
        elif stage == R2SCAN_RELAX:
            tags = {"NSW": s.relax_steps, "KSPACING": s.kspacing}
            if s.pbe_static_first:
                # Read the PBE WAVECAR and build the starting density from it (ICHARG 0 is VASP's default with
                # ISTART 1; set so the folder says what it does).
                tags.update({"ISTART": 1, "ICHARG": 0})
        else:
            raise ValueError(f"unknown VASP stage {stage!r}: use one of {', '.join(STAGES)}")
        return {**tags, **s.user_incar_settings}

    def input_set(self, structure: Any, stage: str) -> Any:
        """The pymatgen ``MP24RelaxSet`` for ``stage`` (PBE for the static, r2SCAN for the relaxation)."""
        from pymatgen.io.vasp.sets import MP24RelaxSet

        return MP24RelaxSet(
            structure,
            xc_functional=STAGE_FUNCTIONAL[stage],
            user_incar_settings=self.stage_incar_settings(stage),
            user_potcar_functional=self.settings.potcar_functional,
            auto_kspacing=False,
            sort_structure=False,  # sorted here, so the map back to the input order is known
        )

    def stages(self) -> tuple[str, ...]:
        """The stages that run, in order."""
        return STAGES if self.settings.pbe_static_first else (R2SCAN_RELAX,)

    def write_inputs(self, atoms: Atoms, workdir: Path) -> WrittenInputs:
        """Write every stage's folder (INCAR, POSCAR, POTCAR.spec, and POTCAR where pymatgen finds it).

        Missing POTCARs do not raise here: they are listed in the result (``problem``) and in ``POTCAR.missing``.
        Inputs that cannot be made at all (no 3D cell, a setting pymatgen rejects) raise ``LabelerError('input')``.
        """
        from pymatgen.core import Lattice, Structure

        workdir = Path(workdir)
        if len(atoms) == 0:
            raise LabelerError("input", "empty structure")
        if not all(atoms.pbc) or atoms.cell.rank < 3:
            raise LabelerError("input", "VASP needs a 3D-periodic structure with a full cell")
        plain = Structure(
            Lattice(np.asarray(atoms.cell[:], dtype=float)),
            atoms.get_chemical_symbols(),
            np.asarray(atoms.positions, dtype=float),
            coords_are_cartesian=True,
        )  # no site properties: MAGMOM comes from the input set (or user_incar_settings), as in MP-ALOE
        order = sorted(range(len(plain)), key=lambda i: plain[i])  # what Structure.get_sorted_structure does
        structure = Structure.from_sites([plain[i] for i in order])
        folders: dict[str, Path] = {}
        missing: list[str] = []
        symbols: list[str] = []
        functional = None
        for stage in self.stages():
            folder = workdir / stage
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with warnings.catch_warnings():
                    # pymatgen's advice on the MAGMOM / LASPH defaults: these are MP's choices
                    warnings.simplefilter("ignore")
                    vis = self.input_set(structure, stage)
                    vis.get_input_set(potcar_spec=True).write_input(str(folder))  # everything but the POTCAR
                    symbols, functional = list(vis.potcar_symbols), vis.potcar_functional
            except (ValueError, KeyError, TypeError) as exc:
                raise LabelerError("input", f"pymatgen cannot make the {stage} inputs: {exc}") from None
            missing = _write_potcar(vis, folder)
            if missing:
                (folder / POTCAR_NOTE).write_text(potcar_message(missing) + "\n")
            folders[stage] = folder
        manifest = {
            "order": order,
            "stages": list(folders),
            "potcar_symbols": symbols,
            "potcar_functional": functional,
            "missing_potcars": missing,
            "how_to_run": _how_to_run(list(folders), self.settings.command),
        }
        (workdir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        return WrittenInputs(workdir, folders, order, missing)

    # ---- launch -----------------------------------------------------------------------------------------------
    def launch(self, folder: Path, timeout: float | None = None) -> None:
        """Run VASP in ``folder`` (custodian or plain subprocess), then check its vasprun.xml.

        Raises
        ------
        LabelerError
            ``crashed`` (cannot start, non-zero exit, custodian gave up, no readable vasprun.xml), ``timeout``,
            ``scf_unconverged`` (an ionic step used all NELM electronic steps).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._launch(Path(folder), deadline, timeout)

    def _launch(self, folder: Path, deadline: float | None, limit: float | None = None) -> None:
        command = [str(part) for part in self.settings.command]
        if not command:
            raise LabelerError(
                "input", "settings.command is empty: give VASP's command as a list, e.g. [vasp_std]"
            )
        stopped = f"{folder.name}: VASP stopped at the time limit" + (f" ({limit:g} s)" if limit else "")
        if deadline is not None and deadline - time.monotonic() <= 0:
            raise LabelerError("timeout", stopped.replace("VASP stopped at", "no time left before"))
        if self.settings.use_custodian:
            self._run_custodian(command, folder, deadline, stopped)
        else:
            self._run_subprocess(command, folder, deadline, stopped)
        check_outputs(folder)

    def _run_subprocess(self, command: list[str], folder: Path, deadline: float | None, stopped: str) -> None:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        with open(folder / STDOUT_FILE, "w") as out, open(folder / STDERR_FILE, "w") as err:
            try:
                proc = subprocess.Popen(command, cwd=folder, stdout=out, stderr=err, start_new_session=True)
            except OSError as exc:
                raise LabelerError("crashed", f"cannot start VASP ({command[0]}): {exc}") from None
            try:
                code = proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                _stop_group(proc, self.kill_grace_s)
                raise LabelerError("timeout", stopped) from None
            except BaseException:  # interrupted: do not leave VASP running
                _stop_group(proc, self.kill_grace_s)
                raise
        if code != 0:
            raise LabelerError("crashed", f"{folder.name}: VASP exited with status {code}{_tail(folder)}")

    def _run_custodian(self, command: list[str], folder: Path, deadline: float | None, stopped: str) -> None:
        from custodian import Custodian
        from custodian.custodian import CustodianError, NonRecoverableError
        from custodian.vasp.handlers import NonConvergingErrorHandler, UnconvergedErrorHandler
        from custodian.vasp.jobs import VaspJob
        from custodian.vasp.validators import VasprunXMLValidator
        from pymatgen.io.vasp.outputs import UnconvergedVASPWarning

        handlers = custodian_handlers(relaxation=_incar_nsw(folder) > 0)
        monitor_freq = max(1, int(self.custodian_monitor_freq))
        if deadline is not None:
            handlers.append(_deadline_handler(deadline))
            remaining = max(0.0, deadline - time.monotonic())
            monitor_freq = max(1, min(monitor_freq, int(remaining / 10.0 / self.custodian_polling_s)))
        # auto_gamma off: the user's command is run as given (no silent switch to a vasp_gam build).
        job = VaspJob(command, output_file=STDOUT_FILE, stderr_file=STDERR_FILE, auto_gamma=False)
        runner = Custodian(
            handlers,
            [job],
            validators=[VasprunXMLValidator(output_file=STDOUT_FILE, stderr_file=STDERR_FILE)],
            max_errors=self.settings.max_errors,
            polling_time_step=self.custodian_polling_s,
            monitor_freq=monitor_freq,
            directory=str(folder),
        )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UnconvergedVASPWarning)  # NSW = 3 by design
                warnings.filterwarnings("ignore", message="No POTCAR file with matching TITEL")
                runner.run()
        except NonRecoverableError as exc:
            if getattr(exc.handler, "aloe_deadline", False):
                raise LabelerError("timeout", stopped) from None
            if isinstance(exc.handler, NonConvergingErrorHandler | UnconvergedErrorHandler):
                raise LabelerError(
                    "scf_unconverged", f"{folder.name}: custodian could not make the SCF converge ({exc})"
                ) from None
            self._custodian_failure(folder, exc)
        except CustodianError as exc:
            self._custodian_failure(folder, exc)
        except OSError as exc:  # the command cannot start
            raise LabelerError("crashed", f"cannot start VASP ({command[0]}): {exc}") from None
        except Exception as exc:  # a handler that choked on odd output
            raise LabelerError(
                "crashed", f"{folder.name}: custodian failed: {type(exc).__name__}: {exc}"
            ) from None

    @staticmethod
    def _custodian_failure(folder: Path, exc: Exception) -> None:
        """After custodian gave up: SCF non-convergence if the outputs say so, else a crash."""
        check_outputs(folder, missing_ok=True)
        raise LabelerError("crashed", f"{folder.name}: custodian gave up: {exc}{_tail(folder)}")

    # ---- outputs ----------------------------------------------------------------------------------------------
    def parse_outputs(
        self, workdir: Path, stage: str = R2SCAN_RELAX, keep_steps: str | None = None
    ) -> list[Calculation]:
        """The calculations of one stage's vasprun.xml (ionic steps of the relaxation; the static's one point).

        Parameters
        ----------
        workdir
            The structure's work folder (holding the stage folders and ``aloe_vasp.json``).
        stage
            ``r2scan_relax`` (the labels) or ``pbe_static``.
        keep_steps
            ``all`` or ``last`` (default: the settings'). Applies to the relaxation.
        """
        workdir = Path(workdir)
        if stage not in STAGES:
            raise ValueError(f"unknown VASP stage {stage!r}: use one of {', '.join(STAGES)}")
        folder = workdir / stage
        order = None
        if (workdir / MANIFEST).exists():
            order = json.loads((workdir / MANIFEST).read_text()).get("order")
        try:
            calcs = read_vasprun(
                folder / "vasprun.xml",
                order=order,
                outcar=folder / "OUTCAR",
                static=stage == PBE_STATIC,
            )
        except FileNotFoundError:
            raise LabelerError("crashed", f"{stage}: no vasprun.xml{_tail(folder)}") from None
        except LabelerError:
            raise
        except Exception as exc:
            raise LabelerError(
                "crashed", f"{stage}: unreadable vasprun.xml ({type(exc).__name__}: {exc})"
            ) from None
        for calc in calcs:
            calc.info["vasp_stage"] = stage
        if calcs and calcs[0].info.get("vasp_version"):
            self._vasp_version = str(calcs[0].info["vasp_version"])
        if stage == R2SCAN_RELAX and (keep_steps or self.settings.keep_steps) == "last":
            calcs = calcs[-1:]
        return calcs

    # ---- the whole thing --------------------------------------------------------------------------------------
    def calculate(self, atoms: Atoms, workdir: Path, timeout: float | None = None) -> list[Calculation]:
        """Write inputs; in ``run`` mode launch the PBE static, move its WAVECAR over, launch r2SCAN and parse it.

        In ``write`` mode this returns ``[]`` once the folders are written (nothing runs). Missing POTCARs raise
        ``LabelerError('input')`` in both modes, after everything else is written. ``timeout`` (default: the
        labeler's) bounds both stages together.
        """
        workdir = Path(workdir)
        limit = self.timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        written = self.write_inputs(atoms, workdir)
        if written.problem:
            raise LabelerError("input", written.problem)
        if self.settings.mode == "write":
            return []
        if PBE_STATIC in written.folders:
            pbe, relax = written.folders[PBE_STATIC], written.folders[R2SCAN_RELAX]
            self._launch(pbe, deadline, limit)
            wavecar = pbe / "WAVECAR"
            if not wavecar.is_file() or wavecar.stat().st_size == 0:
                raise LabelerError("crashed", "the PBE static wrote no WAVECAR to start r2SCAN from")
            os.replace(wavecar, relax / "WAVECAR")
        self._launch(written.folders[R2SCAN_RELAX], deadline, limit)
        return self.parse_outputs(workdir)

    def isolated_atom_energy(self, symbol: str, workdir: Path) -> float:
        """Not computed by aloe for VASP: use the published MatPES values.

        MatPES' isolated-atom energies need their own box, symmetry and spin settings (MatPESStaticSet); a
        relaxation-set calculation of an atom here would not reproduce them.
        """
        raise NotImplementedError(
            "aloe does not compute VASP isolated-atom energies: set 'isolated_atoms: published' (the MatPES "
            "r2SCAN/PBE values shipped with aloe, computed with VASP and MatPES settings) or 'none'"
        )


# ---- module helpers ---------------------------------------------------------------------------------------------
def custodian_handlers(relaxation: bool) -> list[Any]:
    """The standard custodian VASP handlers (as atomate2 uses them), less those that would change the protocol.

    Left out: ``LargeSigmaHandler``, ``IncorrectSmearingHandler``, ``KspacingMetalHandler`` (they change SIGMA,
    ISMEAR or KSPACING, i.e. the labels' settings) and, for the relaxation, ``UnconvergedErrorHandler``: an NSW = 3
    relaxation is ionically "unconverged" by design, and that handler would restart it from CONTCAR with IBRION 1.
    Electronic non-convergence of the relaxation is caught from vasprun.xml afterwards (``scf_unconverged``).
    """
    from custodian.vasp.handlers import (
        FrozenJobErrorHandler,
        MeshSymmetryErrorHandler,
        NonConvergingErrorHandler,
        PositiveEnergyErrorHandler,
        PotimErrorHandler,
        StdErrHandler,
        UnconvergedErrorHandler,
        VaspErrorHandler,
    )

    handlers: list[Any] = [VaspErrorHandler(output_filename=STDOUT_FILE), MeshSymmetryErrorHandler()]
    if not relaxation:
        handlers.append(UnconvergedErrorHandler())
    handlers += [
        NonConvergingErrorHandler(),
        PotimErrorHandler(),
        PositiveEnergyErrorHandler(),
        FrozenJobErrorHandler(output_filename=STDOUT_FILE),
        StdErrHandler(output_filename=STDERR_FILE),
    ]
    return handlers


def _deadline_handler(deadline: float) -> Any:
    """A custodian monitor that stops the job at ``deadline`` (``time.monotonic()``) and gives up."""
    from custodian.custodian import ErrorHandler

    class AloeDeadline(ErrorHandler):
        is_monitor = True
        aloe_deadline = True

        def __init__(self, deadline: float) -> None:
            self.deadline = deadline

        def check(self, directory: str = "./") -> bool:
            return time.monotonic() > self.deadline

        def correct(self, directory: str = "./") -> dict[str, Any]:
            return {"errors": ["aloe time limit"], "actions": None}

    return AloeDeadline(deadline)


def _write_potcar(vis: Any, folder: Path) -> list[str]:
    """Write the POTCAR of input set ``vis`` into ``folder``; return the POTCARs that could not be found."""
    from pymatgen.io.vasp.inputs import PotcarSingle

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vis.potcar.write_file(str(folder / "POTCAR"))
        return []
    except (OSError, ValueError) as exc:  # PmgVaspPspDirError is a ValueError
        first_error = exc
    functional = vis.potcar_functional
    missing = []
    for element, symbol in zip(vis.poscar.site_symbols, vis.potcar_symbols, strict=False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                PotcarSingle.from_symbol_and_functional(symbol, functional)
        except (OSError, ValueError):
            missing.append(f"{element} ({symbol}, {functional})")
    return missing or [f"this structure ({first_error})"]


def _how_to_run(stages: list[str], command: list[str]) -> list[str]:
    steps = []
    if PBE_STATIC in stages:
        steps += [
            f"cd {PBE_STATIC} && {' '.join(command)}",
            f"mv {PBE_STATIC}/WAVECAR {R2SCAN_RELAX}/WAVECAR",
        ]
    steps.append(f"cd {R2SCAN_RELAX} && {' '.join(command)}")
    steps.append("read back with aloe.label.vasp.VASPLabeler(settings).parse_outputs(<this folder>)")
    return steps


def _incar_nsw(folder: Path) -> int:
    from pymatgen.io.vasp.inputs import Incar

    try:
        return int(Incar.from_file(str(folder / "INCAR")).get("NSW", 0) or 0)
    except (OSError, ValueError):
        return 0


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM VASP's process group (its own session), then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()


def _tail(folder: Path, lines: int = 3) -> str:
    """``: <last lines of stderr or stdout>`` for failure messages ('' when both are empty)."""
    for name in (STDERR_FILE, STDOUT_FILE):
        path = folder / name
        if path.is_file():
            with open(path, errors="replace") as fh:
                text = " | ".join(line.strip() for line in deque(fh, maxlen=lines) if line.strip())
            if text:
                return f": {text[-300:]}"
    return ""


def _load_vasprun(path: Path) -> Any:
    from pymatgen.io.vasp.outputs import Vasprun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UnconvergedVASPWarning: NSW = 3 is "unconverged" by design
        return Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)


def unconverged_steps(vasprun: Any) -> list[int]:
    """Ionic steps whose SCF used all NELM electronic steps (pymatgen's ``converged_electronic``, for every step)."""
    nelm = int(vasprun.parameters.get("NELM", 60))
    return [i for i, step in enumerate(vasprun.ionic_steps) if len(step.get("electronic_steps", [])) >= nelm]


def check_outputs(folder: Path, missing_ok: bool = False) -> None:
    """Raise ``crashed`` for a missing/unreadable vasprun.xml, ``scf_unconverged`` for an unconverged ionic step.

    With ``missing_ok`` an absent or unreadable vasprun.xml passes silently (used after custodian gave up).
    """
    path = Path(folder) / "vasprun.xml"
    try:
        vasprun = _load_vasprun(path)
    except Exception as exc:
        if missing_ok:
            return
        if not path.exists():
            raise LabelerError(
                "crashed", f"{Path(folder).name}: VASP left no vasprun.xml{_tail(Path(folder))}"
            ) from None
        raise LabelerError(
            "crashed", f"{Path(folder).name}: unreadable vasprun.xml ({type(exc).__name__}: {exc})"
        ) from None
    if not vasprun.ionic_steps:
        if missing_ok:
            return
        raise LabelerError("crashed", f"{Path(folder).name}: vasprun.xml has no ionic step")
    bad = unconverged_steps(vasprun)
    if bad:
        nelm = int(vasprun.parameters.get("NELM", 60))
        raise LabelerError(
            "scf_unconverged",
            f"{Path(folder).name}: the SCF did not converge within NELM = {nelm} electronic steps "
            f"(ionic step{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))})",
        )


def read_vasprun(
    path: Path,
    order: list[int] | None = None,
    outcar: Path | None = None,
    static: bool = False,
) -> list[Calculation]:
    """One :class:`Calculation` per ionic step of a vasprun.xml (units and signs: see the module docstring).

    Parameters
    ----------
    path
        The vasprun.xml.
    order
        ``order[j]`` = input index of VASP's atom ``j``; the calculations then list atoms in the input's order.
    outcar
        An OUTCAR to take magnetic moments from (``magnetization (x)``, column ``tot``), if it exists.
    static
        Mark the calculations as static (``step`` None) rather than ionic steps ``0, 1, ...``.
    """
    from ase import Atoms

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    vasprun = _load_vasprun(path)
    steps = vasprun.ionic_steps
    n = len(vasprun.atomic_symbols)
    if order is not None and sorted(order) != list(range(n)):
        raise LabelerError("crashed", f"{path}: atom order of {len(order)} atoms does not fit {n} atoms")
    back = np.argsort(order) if order is not None else np.arange(n)  # input index i <- VASP atom back[i]
    moments = read_outcar_magmoms(outcar, n) if outcar is not None and Path(outcar).is_file() else []
    if len(moments) != len(steps):  # not one table per ionic step: only the final one is certain
        moments = [None] * (len(steps) - 1) + [moments[-1]] if moments else [None] * len(steps)
    pstress = float(vasprun.parameters.get("PSTRESS", 0.0) or 0.0)
    version = str(getattr(vasprun, "vasp_version", "") or "").strip()
    calcs = []
    for i, step in enumerate(steps):
        structure = step["structure"]
        scf = step.get("electronic_steps") or []
        e_fr = float(step["e_fr_energy"])
        if scf and "e_0_energy" in scf[-1] and "e_fr_energy" in scf[-1]:
            # vasprun.xml has 8 decimals: round off the float noise of the sum (as pymatgen's final_energy does)
            energy = round(e_fr + float(scf[-1]["e_0_energy"]) - float(scf[-1]["e_fr_energy"]), 8)
        else:
            energy = float(step["e_0_energy"])
        energy -= pstress / EV_PER_A3_IN_KBAR * float(structure.volume)  # VASP's step energy holds + PV
        kbar = np.asarray(step["stress"], dtype=float)
        voigt = np.array([kbar[0, 0], kbar[1, 1], kbar[2, 2], kbar[1, 2], kbar[0, 2], kbar[0, 1]])
        atoms = Atoms(
            [str(site.specie) for site in structure],
            cell=np.asarray(structure.lattice.matrix, dtype=float),
            scaled_positions=np.asarray(structure.frac_coords, dtype=float),
            pbc=True,
        )[back]
        mags = moments[i]
        calcs.append(
            Calculation(
                atoms=atoms,
                energy=float(energy),
                forces=np.asarray(step["forces"], dtype=float)[back],
                stress=stress_from_kbar(voigt),
                magmoms=None if mags is None else np.asarray(mags, dtype=float)[back],
                step=None if static else i,
                info={
                    "vasp_version": version,
                    "scf_steps": len(scf),
                    "e_fr_energy": float(step["e_fr_energy"]),
                    "e_wo_entrp": float(step.get("e_wo_entrp", np.nan)),
                },
            )
        )
    return calcs


_ION_ROW = re.compile(r"^\s*(\d+)((?:\s+-?\d+\.\d+)+)\s*$")


def read_outcar_magmoms(path: Path, natoms: int) -> list[np.ndarray]:
    """Every ``magnetization (x)`` table of an OUTCAR (one per ionic step with LORBIT), column ``tot`` per atom."""
    tables: list[np.ndarray] = []
    current: list[float] | None = None
    with open(path, errors="replace") as fh:
        for line in fh:
            if line.strip() == "magnetization (x)":
                current = []
                continue
            if current is None:
                continue
            match = _ION_ROW.match(line)
            if match:
                current.append(float(match.group(2).split()[-1]))
                if len(current) == natoms:
                    tables.append(np.array(current))
                    current = None
            elif current and not line.strip().startswith("-"):
                current = None  # a table that ended early: not this structure's
    return tables
