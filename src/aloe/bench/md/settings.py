"""Settings of the MD stability benchmark: every number of the protocol (paper Fig. 6, MLIP Arena) and its rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aloe.settings import AloeSettings

#: The ensembles, in the order they run and are reported; also the prefixes of the MD columns.
ENSEMBLES: tuple[str, ...] = ("nvt", "npt")
Ensemble = Literal["nvt", "npt"]


class MDSettings(AloeSettings):
    """MD stability (paper Fig. 6; MLIP Arena protocol with the paper's validity rules)."""

    ensembles: list[Ensemble] = Field(
        ["nvt", "npt"], min_length=1, description="Ensembles to run for every structure: nvt and/or npt."
    )
    thermostat: Literal["nose-hoover", "langevin"] = Field(
        "nose-hoover",
        description="NVT thermostat: nose-hoover (ASE NPT without barostat, Melchionna's equations) or langevin "
        "(ASE Langevin, no centre-of-mass fixing). NPT always runs ASE NPT's Nose-Hoover + barostat equations "
        "(ASE has no Langevin barostat to check against).",
    )
    friction_per_ps: float = Field(
        10.0, gt=0, description="Langevin friction (1/ps); 10/ps is MLIP Arena's (and VASP's) default."
    )
    temperature_start: float = Field(
        300.0, gt=0, description="Temperature at the start (K): velocities, target."
    )
    temperature_end: float = Field(
        3000.0, gt=0, description="Target temperature at the end of the run (K); linear ramp in between."
    )
    duration_ps: float = Field(10.0, gt=0, description="Simulated time of each run (ps).")
    timestep_fs: float = Field(2.0, gt=0, description="Time step (fs).")
    timestep_fs_hydrogen: float = Field(
        0.5, gt=0, description="Time step (fs) of structures that contain hydrogen."
    )
    ttime_fs: float = Field(25.0, gt=0, description="Nose-Hoover thermostat time (fs).")
    ptime_fs: float = Field(
        75.0, gt=0, description="Barostat time (fs); pfactor = ptime^2 * bulk_modulus (ASE NPT)."
    )
    bulk_modulus_gpa: float = Field(
        100.0, gt=0, description="Bulk modulus (GPa) in the barostat's pfactor = ptime^2 * B."
    )
    pressure_start_gpa: float = Field(0.0, description="NPT target pressure at the start (GPa).")
    pressure_end_gpa: float = Field(
        100.0,
        description="NPT target pressure at the end (GPa), linear ramp; the paper's 100 GPa (MLIP Arena's "
        "original protocol ramps to 500 GPa).",
    )
    seed: int = Field(0, description="Seed of the start velocities (and Langevin noise), mixed with the id.")
    max_energy_change_per_atom: float = Field(
        100.0,
        gt=0,
        description="A frame is valid while |E - E_first| / N of the model's potential energy stays at or below "
        "this (eV/atom).",
    )
    max_kinetic_per_atom: float = Field(
        100.0,
        gt=0,
        description="A frame is valid while the largest per-atom kinetic energy is below this (eV).",
    )
    volume_ratio_min: float = Field(0.1, gt=0, description="NPT: smallest valid V / V_first.")
    volume_ratio_max: float = Field(10.0, gt=0, description="NPT: largest valid V / V_first.")
    check_every: int = Field(
        1, ge=1, description="Steps between validity checks (the last step is always checked)."
    )
    batch_systems: int = Field(8, ge=1, description="Systems in one batched integrator.")
    neighbour_skin: float = Field(
        1.0,
        ge=0,
        description="Batched integrator: Verlet skin (A) of each system's neighbour list, which is rebuilt only "
        "when an atom moved more than half of it or the cell changed more than neighbour_max_strain; 0 rebuilds "
        "every step. For models that take aloe's neighbour lists (CHGNet, MACE, Lennard-Jones).",
    )
    neighbour_max_strain: float = Field(
        0.02,
        gt=0,
        description="Batched integrator: largest change of a system's cell (any component of h0^-1 h - 1) before "
        "its neighbour list is rebuilt (NPT).",
    )
    backend: Literal["auto", "batched", "ase"] = Field(
        "auto",
        description="Integrator. batched: aloe's batched integrator, batch_systems structures per integrator "
        "(one predict call per step for all of them); auto: the same, but one structure per integrator for "
        "models without a batched path (interleaving structures only defeats their calculators' neighbour-list "
        "caches: 3x slower for EMT); ase: ASE's NPT/Langevin per structure (the reference).",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> MDSettings:
        if self.volume_ratio_min >= self.volume_ratio_max:
            raise ValueError("volume_ratio_min must be below volume_ratio_max")
        return self


__all__ = ["ENSEMBLES", "Ensemble", "MDSettings"]
