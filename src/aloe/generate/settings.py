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


class NearEqSettings(AloeSettings):
    """Near-equilibrium sampling (mode ``near-eq``): relax each unperturbed candidate, run short MD, keep frames.

    MatPES sampled its structures this way: MD snapshots of relaxed structures run with a pretrained universal
    potential (then down-sampled with DIRECT, which is ``aloe select``'s job). Every starting candidate gives
    ``len(temperatures) * frames`` frames unless it fails (skipped, its reason counted) or a run stops early (the
    frames before the stop are kept, the reason recorded).
    """

    potential: str = Field(
        "emt",
        description="Potential that relaxes and drives the MD: any spec aloe.potentials.registry.load_potential "
        "accepts ('emt', 'chgnet-0.3.0', a MACE .model file, 'package.module:factory').",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Where the potential runs ('auto': cuda if present)."
    )
    dtype: Literal["float32", "float64"] | None = Field(
        None, description="Model precision where the model allows a choice (default: the model's own)."
    )
    threads: int = Field(1, ge=1, description="Torch threads per process (parallelism comes from processes).")
    relax: bool = Field(
        True, description="Relax cell and positions before the MD (FIRE on FrechetCellFilter)."
    )
    fmax: float = Field(
        0.05, gt=0, description="Relaxation converged below this force (eV/A, filter forces)."
    )
    max_steps: int = Field(
        200, ge=1, description="Most FIRE steps of one relaxation (unconverged ones go on)."
    )
    max_volume_change: float = Field(
        4.0,
        gt=1.0,
        description="A relaxation whose cell volume leaves [1/x, x] of the start is stopped and the candidate "
        "skipped as 'cell collapsed' (a collapsing cell would build ever larger neighbour lists).",
    )
    supercell_min_atoms: int = Field(
        8,
        ge=1,
        description="Repeat the relaxed cell (shortest repeated axis first) to at least this many atoms before MD.",
    )
    temperatures: list[float] = Field(
        default_factory=lambda: [300.0, 1000.0], description="One MD run per temperature (K)."
    )
    steps: int = Field(200, ge=1, description="MD steps per temperature.")
    timestep_fs: float = Field(2.0, gt=0, description="MD time step (fs).")
    hydrogen_timestep_fs: float = Field(
        0.5, gt=0, description="MD time step (fs) for structures that contain hydrogen."
    )
    frames: int = Field(
        5, ge=1, description="Snapshots kept per temperature run, evenly spaced (steps k * steps / frames)."
    )
    thermostat: Literal["langevin"] = Field("langevin", description="Thermostat (ASE's Langevin, NVT).")
    friction_per_ps: float = Field(10.0, gt=0, description="Langevin friction (1/ps).")
    max_energy_change: float = Field(
        100.0,
        gt=0,
        description="An MD run stops when its potential energy per atom leaves the first frame's by more (eV/atom).",
    )
    max_kinetic_energy: float = Field(
        100.0, gt=0, description="An MD run stops when an atom's kinetic energy exceeds this (eV)."
    )
    chunk_size: int = Field(
        10,
        ge=1,
        description="Starting candidates per chunk file (replaces chunk_size in near-eq mode: a start costs a "
        "relaxation and MD, not microseconds).",
    )

    @field_validator("temperatures")
    @classmethod
    def _check_temperatures(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one temperature")
        if any(not t > 0 for t in value):
            raise ValueError("temperatures must be positive (K)")
        return value

    @model_validator(mode="after")
    def _check_frames(self) -> NearEqSettings:
        if self.frames > self.steps:
            raise ValueError(f"frames ({self.frames}) must not exceed steps ({self.steps})")
        return self

    #: Keys that do not change what a run computes.
    RUNTIME_KEYS: ClassVar[frozenset[str]] = frozenset({"device", "threads"})


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
    mode: Literal["perturb", "near-eq"] = Field(
        "perturb",
        description="'perturb': the MP-ALOE candidates (lattice guess + random perturbation); 'near-eq': MatPES-like "
        "frames: each unperturbed candidate relaxed and run through short MD at a few temperatures (near_eq).",
    )
    near_eq: NearEqSettings = Field(
        default_factory=NearEqSettings, description="Near-equilibrium sampling (mode 'near-eq')."
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

    def space_settings(self) -> GenerateSettings:
        """The settings the candidate space is built with: near-eq mode starts from unperturbed candidates."""
        if self.mode == "perturb" or not self.perturbation.enabled:
            return self
        return self.model_copy(
            update={"perturbation": self.perturbation.model_copy(update={"enabled": False})}
        )

    def plan_chunk_size(self) -> int:
        """Candidates per chunk of the plan: ``chunk_size``, or ``near_eq.chunk_size`` starts in near-eq mode."""
        return self.near_eq.chunk_size if self.mode == "near-eq" else self.chunk_size

    def resume_exclusions(self) -> frozenset[str]:
        """Settings left out of the run fingerprint: the runtime keys and what the mode ignores.

        A perturb run's fingerprint leaves out ``mode`` and ``near_eq``, so it equals the fingerprint of a run made
        before the near-eq mode existed (such folders resume); a near-eq run's leaves out ``perturbation`` and
        ``chunk_size``, which it does not use.
        """
        if self.mode == "perturb":
            return self.RUNTIME_KEYS | {"mode", "near_eq"}
        return self.RUNTIME_KEYS | {"perturbation", "chunk_size"}

    #: Keys that do not change which candidates a run produces (a resumed run may change them).
    RUNTIME_KEYS: ClassVar[frozenset[str]] = (
        StageSettings.RUNTIME_KEYS
        | {"shard", "export"}
        | {f"near_eq.{k}" for k in NearEqSettings.RUNTIME_KEYS}
    )
