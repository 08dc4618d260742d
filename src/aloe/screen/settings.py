"""Settings of the screen stage (query by committee); defaults are MP-ALOE's (see ``shared/DESIGN.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from aloe.settings import AloeSettings
from aloe.stagekit import StageSettings

#: The offline CHGNet trio: the first-iteration committee of pretrained potentials.
DEFAULT_COMMITTEE = ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"]


class ThresholdSettings(AloeSettings):
    """Disagreement thresholds; a structure is selected if ANY is exceeded (after the multipliers)."""

    energy: float = Field(0.1, gt=0, description="Energy disagreement threshold (eV/atom).")
    force: float = Field(0.1, gt=0, description="Force disagreement threshold (eV/A).")
    stress: float = Field(0.1, gt=0, description="Stress disagreement threshold (eV/A^3).")


class MultiplierSettings(AloeSettings):
    """Factors on all three thresholds, by chemistry and size (MP-ALOE)."""

    noble_gas: float = Field(5.0, gt=0, description="If any noble gas is present.")
    helium: float = Field(3.0, gt=0, description="A further factor if He is present.")
    neon: float = Field(2.0, gt=0, description="A further factor if Ne is present.")
    technetium: float = Field(4.0, gt=0, description="If Tc is present.")
    actinoid: float = Field(4.0, gt=0, description="If any actinoid is present.")
    lanthanoid: float = Field(3.0, gt=0, description="If any lanthanoid is present.")
    size_exponent: float = Field(0.5, description="Always x (N_atoms / size_reference) ** size_exponent.")
    size_reference: float = Field(2.0, gt=0, description="Atom count at which the size factor is 1.")


class DiscardSettings(AloeSettings):
    """Structures too extreme to label are discarded before the thresholds (medians over the models)."""

    max_formation_energy: float = Field(
        0.25, description="Discard if the median formation energy per atom exceeds this (eV/atom)."
    )
    max_force: float = Field(
        50.0, gt=0, description="Discard if the median of the largest |F| exceeds this (eV/A)."
    )
    max_normal_stress: float = Field(
        0.5,
        gt=0,
        description="Discard if the median |mean of the three normal stresses| exceeds this (eV/A^3).",
    )
    min_distance: float = Field(
        0.5,
        ge=0,
        description="Structures with two atoms closer than this (A) are reported as overlapping, not run.",
    )


class ScreenSettings(StageSettings):
    """Query-by-committee screening of candidates."""

    input: Path | None = Field(
        None,
        description="A generate run folder, or structures: extxyz file, folder of POSCAR/CIF, MP-ALOE JSONL(.gz), "
        "MatPES JSON(.gz).",
    )
    committee: list[str] = Field(
        default_factory=lambda: list(DEFAULT_COMMITTEE),
        description="Committee members: built-in names (chgnet-0.3.0, chgnet-0.2.0, chgnet-r2scan), MACE .model "
        "paths or globs, or 'package.module:factory' for any ASE calculator.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Where models run ('auto': cuda if present)."
    )
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="Model precision (where the model allows)."
    )
    threads: int = Field(1, ge=1, description="Torch threads per process (parallelism comes from processes).")
    batch_size: int = Field(32, ge=1, description="Structures per forward pass.")
    thresholds: ThresholdSettings = Field(
        default_factory=ThresholdSettings, description="Selection thresholds."
    )
    multipliers: MultiplierSettings = Field(
        default_factory=MultiplierSettings, description="Threshold factors."
    )
    discard: DiscardSettings = Field(default_factory=DiscardSettings, description="Discard filters.")
    energy_basis: Literal["formation", "total"] = Field(
        "formation",
        description="Energy disagreement on formation energy per atom with each model's own elemental references "
        "(comparable across functionals), or on total energy per atom (only for a committee with one reference).",
    )
    references: Path | None = Field(
        None,
        description="Table of elemental reference energies (YAML/JSON: symbol -> eV/atom, or model -> table).",
    )
    compute_references: bool = Field(
        True, description="Compute missing elemental references (relaxed elemental crystals) and cache them."
    )
    chunk_size: int = Field(
        2000, ge=1, description="Structures per output chunk for inputs that are not a run."
    )
    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUNTIME_KEYS | {"device", "threads", "batch_size"}
