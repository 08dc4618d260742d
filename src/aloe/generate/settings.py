"""Settings of the generate stage; every default is the MP-ALOE value (see ``shared/DESIGN.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from aloe.elements import RADIUS_MULTIPLIERS, RADIUS_OVERRIDES
from aloe.prototypes.library import DEFAULT_PLACEHOLDERS
from aloe.settings import AloeSettings
from aloe.stagekit import StageSettings


class PrototypeSource(AloeSettings):
    """Where prototypes come from and which of them to use."""

    source: str = Field(
        "builtin",
        description="'builtin' (AFLOW prototypes shipped with pymatgen; 'builtin:binary', 'builtin:ternary'), "
        "a folder of POSCAR/CIF files with placeholder species, or one such file.",
    )
    placeholders: list[str] = Field(
        list(DEFAULT_PLACEHOLDERS),
        description="Placeholder species in the order of the elements they stand for (lowest Z first).",
    )
    weights: Path | None = Field(
        None,
        description="Side table of sampling weights (CSV 'name,weight' or YAML); overrides file-name weights.",
    )
    arity: list[int] | None = Field(None, description="Keep only prototypes with these numbers of species.")
    min_sites: int | None = Field(
        None, ge=1, description="Keep only prototypes with at least this many sites."
    )
    max_sites: int | None = Field(
        None, ge=1, description="Keep only prototypes with at most this many sites."
    )
    names: list[str] | None = Field(None, description="Keep only the prototypes with these names.")
    overlap_tolerance: float = Field(
        0.05,
        gt=0,
        description="Sites closer than this fraction of the mean spacing (V/N)^(1/3) are overlapping.",
    )


class OccupationSettings(AloeSettings):
    """StructureMatcher tolerances for deduplicating placeholder permutations (MP-ALOE: ltol = stol = 0.01)."""

    ltol: float = Field(0.01, gt=0, description="Fractional length tolerance of StructureMatcher.")
    stol: float = Field(0.01, gt=0, description="Site tolerance of StructureMatcher.")
    angle_tol: float = Field(5.0, gt=0, description="Angle tolerance (degrees) of StructureMatcher.")
    primitive_cell: bool = Field(False, description="Reduce to primitive cells before matching.")


class LatticeGuessSettings(AloeSettings):
    """Lattice guess from atomic radii: s = factor * max_ij (r_i + r_j) / d_ij; the lattice is scaled by s."""

    enabled: bool = Field(True, description="Scale the prototype cell from atomic radii.")
    factor: float = Field(
        0.96, gt=0, description="Overall factor on the scale (MP-ALOE: 0.96; 0.92 in iteration 1)."
    )
    neighbor_cutoff: float = Field(
        9.0,
        gt=0,
        description="Pairs whose shortest periodic distance exceeds this (A, prototype scale) are ignored.",
    )
    radius_overrides: dict[str, float] = Field(
        dict(RADIUS_OVERRIDES), description="Radii (A) replacing pymatgen's atomic_radius (noble gases)."
    )
    radius_multipliers: dict[str, float] = Field(
        dict(RADIUS_MULTIPLIERS), description="Factors on pymatgen's atomic_radius (H x3; K, Rb, Cs x0.9)."
    )


class PerturbationSettings(AloeSettings):
    """Random displacements (fractional) and six sequential Green-Lagrange strains."""

    enabled: bool = Field(True, description="Perturb atoms and lattice.")
    displacement_sigma: float = Field(
        0.02,
        ge=0,
        description="Std of each fractional displacement component, divided by N_atoms when per-atom.",
    )
    displacement_per_atom: bool = Field(True, description="Divide displacement_sigma by the number of atoms.")
    displacement_truncation: float = Field(
        3.0, gt=0, description="Displacements truncated at +-this many sigma."
    )
    strain_sigma: float = Field(0.02, ge=0, description="Std of each of the six Voigt strain components.")
    strain_truncation: float = Field(2.0, gt=0, description="Strains truncated at +-this many sigma.")
    wrap: bool = Field(True, description="Wrap displaced fractional coordinates into [0, 1).")


class SubsamplingSettings(AloeSettings):
    """Random thinning of weighted (ternary) prototypes: keep each candidate with probability scale * w**exponent."""

    enabled: bool = Field(True, description="Apply the sub-sampling rule to prototypes that carry a weight.")
    scale: float = Field(1.0 / 3.0, gt=0, description="Probability scale (MP-ALOE: 1/3).")
    exponent: float = Field(0.5, description="Exponent on the weight (MP-ALOE: 0.5, i.e. sqrt(w)).")


class GenerateSettings(StageSettings):
    """Everything that defines a candidate space and how a run produces it."""

    prototypes: PrototypeSource = Field(default_factory=PrototypeSource, description="Prototype library.")
    elements: list[str] | None = Field(
        None, description="Element subset (symbols); default: the 89 MP-ALOE elements (Z 1..94 less Po-Ra)."
    )
    seed: int = Field(
        0, ge=0, description="Seed of all random choices (sub-sampling, perturbations, samples)."
    )
    occupations: OccupationSettings = Field(
        default_factory=OccupationSettings, description="Occupation dedup."
    )
    lattice: LatticeGuessSettings = Field(default_factory=LatticeGuessSettings, description="Lattice guess.")
    perturbation: PerturbationSettings = Field(
        default_factory=PerturbationSettings, description="Perturbations."
    )
    subsampling: SubsamplingSettings = Field(
        default_factory=SubsamplingSettings, description="Ternary thinning."
    )
    sample: int | None = Field(
        None,
        ge=1,
        description="Produce this many candidates drawn uniformly (seeded) from the space, not all.",
    )
    chunk_size: int = Field(
        20000,
        ge=1,
        description="Candidates per output chunk: exactly (sample mode), or expected after sub-sampling (full "
        "plan: each chunk spans the candidate indices expected to keep about this many).",
    )
    shard: str | None = Field(
        None,
        description="'K/N': produce only shard K (0-based) of N; shards split the chunks and can run anywhere.",
    )
    export: list[Literal["extxyz", "poscar"]] = Field(
        default_factory=list, description="Also write the candidates as extxyz and/or POSCAR files."
    )

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            k, n = (int(x) for x in value.split("/"))
        except ValueError:
            raise ValueError("shard must look like 'K/N' with integers, e.g. '0/4'") from None
        if n < 1 or not 0 <= k < n:
            raise ValueError(f"shard {value!r} needs 0 <= K < N")
        return value

    @model_validator(mode="after")
    def _check_placeholders(self) -> GenerateSettings:
        if len(set(self.prototypes.placeholders)) != len(self.prototypes.placeholders):
            raise ValueError("prototypes.placeholders must be distinct")
        return self

    def shard_tuple(self) -> tuple[int, int]:
        """``(K, N)`` of the shard setting (``(0, 1)`` when unsharded)."""
        if self.shard is None:
            return (0, 1)
        k, n = (int(x) for x in self.shard.split("/"))
        return (k, n)

    #: Keys that do not change which candidates a run produces (a resumed run may change them).
    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUNTIME_KEYS | {"shard", "export"}
