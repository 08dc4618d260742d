"""Settings of the label stage and of each labelling backend (defaults follow ``shared/DESIGN.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from aloe.settings import AloeSettings
from aloe.stagekit import StageSettings


class EMTSettings(AloeSettings):
    """ASE's EMT: a stand-in for tests and demos, NOT DFT (every record says so)."""

    relax_steps: int = Field(
        0, ge=0, description="Ionic steps of a BFGS relaxation after the static point (0: static only)."
    )


class GPAWSettings(AloeSettings):
    """GPAW plane-wave DFT through ASE (runs anywhere aloe installs; r2SCAN via libxc)."""

    xc: Literal["r2SCAN", "PBE"] = Field("r2SCAN", description="Functional (r2SCAN through libxc).")
    ecut: float = Field(520.0, gt=0, description="Plane-wave cutoff (eV).")
    kspacing: float = Field(
        0.25,
        gt=0,
        description="k-point spacing in 1/A, VASP's KSPACING convention (2 pi included): "
        "n_i = max(1, ceil(|b_i| / kspacing)), Gamma-centred.",
    )
    spinpol: bool = Field(
        True, description="Spin-polarised (MP's ISPIN 2), starting from ferromagnetic moments."
    )
    smearing: float = Field(0.05, ge=0, description="Fermi-Dirac smearing width (eV).")
    maxiter: int = Field(300, ge=1, description="SCF step limit (beyond it: failure class scf_unconverged).")
    mixing_beta: float | None = Field(
        None, gt=0, le=1, description="Density mixing parameter (None: GPAW's)."
    )
    energy_convergence: float = Field(
        1e-5, gt=0, description="SCF energy convergence (eV per valence electron)."
    )
    pbe_first: bool = Field(
        True,
        description="For r2SCAN, converge PBE first and start r2SCAN from its density (as MP-ALOE does in VASP).",
    )
    threads: int = Field(1, ge=1, description="OpenMP/BLAS threads per process.")

    RUNTIME_KEYS: ClassVar[frozenset[str]] = frozenset({"threads"})


class VASPSettings(AloeSettings):
    """VASP as MP-ALOE ran it: MP24RelaxSet r2SCAN inputs, a PBE static, then a 3-step r2SCAN relaxation."""

    command: list[str] = Field(
        default_factory=lambda: ["vasp_std"],
        description="How to launch VASP, as an argument list (e.g. [srun, vasp_std]); never a shell string.",
    )
    kspacing: float = Field(0.2, gt=0, description="KSPACING (1/A).")
    relax_steps: int = Field(3, ge=1, description="NSW of the r2SCAN relaxation (MP-ALOE: exactly three).")
    pbe_static_first: bool = Field(
        True, description="Run a PBE static first and start r2SCAN from its WAVECAR (MP-ALOE's two stages)."
    )
    keep_steps: Literal["all", "last"] = Field(
        "all", description="Records from every ionic step of the r2SCAN stage, or only the last."
    )
    user_incar_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="INCAR tags set on top of the MP24RelaxSet inputs of both stages (they win over aloe's "
        "stage tags NSW, IBRION, LWAVE, ISTART, ICHARG, KSPACING).",
    )
    potcar_functional: str | None = Field(None, description="POTCAR set (None: the input set's default).")
    use_custodian: bool = Field(True, description="Run through custodian's VASP error handlers.")
    max_errors: int = Field(
        5, ge=1, description="custodian: corrections allowed per VASP run before giving up (then: crashed)."
    )
    mode: Literal["run", "write"] = Field(
        "run",
        description="'write': only write the input folders (to run elsewhere); 'run': write, launch, parse.",
    )

    RUNTIME_KEYS: ClassVar[frozenset[str]] = frozenset({"command", "use_custodian", "max_errors", "mode"})


#: Default retry overrides per failure class (applied in order; each entry is one more attempt).
DEFAULT_RETRY: dict[str, list[dict[str, Any]]] = {
    "scf_unconverged": [{"gpaw.maxiter": 600, "gpaw.mixing_beta": 0.02}, {"gpaw.smearing": 0.1}],
    "timeout": [],
    "crashed": [],
    "unphysical": [],
}


class LabelSettings(StageSettings):
    """Label structures with a DFT code (or a named stand-in) and write records in the MatPES schema."""

    input: Path | None = Field(
        None,
        description="A select (or screen/generate) run folder, or structures: extxyz file, folder of POSCAR/CIF, "
        "MP-ALOE JSONL(.gz), MatPES JSON(.gz).",
    )
    labeler: Literal["gpaw", "vasp", "emt"] = Field(
        "gpaw", description="Backend: gpaw (r2SCAN DFT, runs here), vasp (clusters), emt (stand-in, not DFT)."
    )
    gpaw: GPAWSettings = Field(default_factory=GPAWSettings, description="GPAW backend.")
    vasp: VASPSettings = Field(default_factory=VASPSettings, description="VASP backend.")
    emt: EMTSettings = Field(default_factory=EMTSettings, description="EMT stand-in.")
    retry: dict[str, list[dict[str, Any]]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_RETRY.items()},
        description="Per failure class, settings overrides for each further attempt (dotted keys, e.g. "
        "gpaw.maxiter).",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds one structure may take (per attempt); beyond it: failure class timeout.",
    )
    max_force: float = Field(200.0, gt=0, description="Forces above this (eV/A) make a result unphysical.")
    max_energy_per_atom: float = Field(
        1000.0, gt=0, description="|Energy| per atom above this (eV) makes a result unphysical."
    )
    isolated_atoms: Literal["compute", "published", "none"] = Field(
        "compute",
        description="Isolated-atom energies for cohesive energies: computed by the labeler (cached), the "
        "published MatPES r2SCAN/PBE values (VASP data with MatPES settings), or none.",
    )
    isolate: bool = Field(
        True,
        description="Run each structure in its own child process, so a crash, a kill or a timeout costs only it.",
    )
    retry_failed: bool = Field(
        False, description="On a resumed run, label structures that failed before again."
    )
    keep_workdirs: Literal["failed", "all", "none"] = Field(
        "failed", description="Keep the work folders of failed structures, of all, or of none."
    )
    chunk_size: int = Field(100, ge=1, description="Structures per record chunk.")

    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUNTIME_KEYS | frozenset(
        {
            "retry_failed",
            "keep_workdirs",
            "timeout",
            "retry",
            "isolate",
            *(f"gpaw.{k}" for k in GPAWSettings.RUNTIME_KEYS),
            *(f"vasp.{k}" for k in VASPSettings.RUNTIME_KEYS),
        }
    )
