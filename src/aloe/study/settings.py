"""Settings of ``aloe study``: which chemistry, which arms, which budget; the stages' own sections inside.

A study config is one YAML file: the study's keys at the top level (or under ``study:``) and one section per stage it
runs (``generate``, ``near_eq``, ``screen``, ``select``, ``label``, ``train``, ``reference``, ``bench``), each exactly
that stage's settings (the study fills in what it owns: elements, inputs, seeds, budgets, outputs).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from aloe.settings import AloeSettings
from aloe.stagekit import StageSettings

#: The arms a study can compare, in report order.
ARM_NAMES: tuple[str, ...] = ("al", "random", "near-eq", "combined")
ArmName = Literal["al", "random", "near-eq", "combined"]
#: The elements of the default study: EMT's metals (EMT is exact, instant, and repulsive under compression).
DEFAULT_ELEMENTS: tuple[str, ...] = ("Al", "Ni", "Cu", "Pd", "Ag")


class LeakageSettings(AloeSettings):
    """How test structures are matched against training structures (pymatgen StructureMatcher)."""

    ltol: float = Field(
        0.2, gt=0, description="StructureMatcher fractional length tolerance (pymatgen default)."
    )
    stol: float = Field(0.3, gt=0, description="StructureMatcher site tolerance (pymatgen default).")
    angle_tol: float = Field(5.0, gt=0, description="StructureMatcher angle tolerance, degrees (default).")
    scale: bool = Field(
        False,
        description="Scale volumes before matching (pymatgen's default is True; off here, so a strained or "
        "compressed copy of a test crystal is a different structure, as it is for the benchmarks).",
    )


class StudySettings(StageSettings):
    """``aloe study``: active-learning data against random and near-equilibrium data at equal label budget.

    Every arm's dataset is labelled by the same labeler (section ``label``) with the same budget: ``seed_structures``
    random structures, then ``iterations`` x ``per_iteration`` more (the ``al`` arm picks them with a committee
    and DIRECT; ``random`` picks the same number uniformly from the same candidates; ``near-eq`` labels as many
    MD frames of relaxed structures, down-sampled with DIRECT; ``combined`` trains on ``al`` and ``near-eq``
    together). Every arm trains committees with the same preset, epochs and seeds, and every member runs the
    benchmarks on a held-out test set made with ``aloe bench reference`` and the same labeler.
    """

    elements: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ELEMENTS), min_length=1, description="The study's chemistry."
    )
    arms: list[ArmName] = Field(
        default_factory=lambda: list(ARM_NAMES),
        min_length=1,
        description="Arms to run: al (QBC + DIRECT loop), random (uniform picks), near-eq (MD frames + DIRECT), "
        "combined (al + near-eq).",
    )
    seed_structures: int = Field(
        24,
        ge=1,
        description="Random structures labelled first: the first committee of 'al' learns from them; they are "
        "part of the budget of 'al' and 'random' (which both start from them).",
    )
    iterations: int = Field(2, ge=1, description="Active-learning iterations of 'al' (and 'random').")
    per_iteration: int = Field(
        16, ge=1, description="Structures labelled per iteration ('random' labels as many as 'al' did)."
    )
    near_eq_starts: int = Field(
        12,
        ge=1,
        description="Starting crystals of the near-eq sampler (each gives len(temperatures) x frames MD frames; "
        "DIRECT then picks the budget from them).",
    )
    seed: int = Field(0, ge=0, description="Seed of the study (candidates, picks, training, benchmarks).")
    learning_curves: bool = Field(
        True,
        description="Benchmark every committee of 'al' and 'random' (not only the last): learning curves.",
    )
    leakage: LeakageSettings = Field(
        default_factory=LeakageSettings,
        description="Test structures that match a training structure are dropped from the test set and counted.",
    )
    generate: dict[str, Any] = Field(
        default_factory=dict,
        description="GenerateSettings of the candidates (the study sets elements and seeds).",
    )
    near_eq: dict[str, Any] = Field(
        default_factory=dict,
        description="The near-eq sampler (GenerateSettings.near_eq: potential, temperatures, steps, frames ...).",
    )
    screen: dict[str, Any] = Field(default_factory=dict, description="ScreenSettings of the 'al' arm.")
    select: dict[str, Any] = Field(
        default_factory=dict, description="SelectSettings (DIRECT) of 'al' and near-eq."
    )
    label: dict[str, Any] = Field(
        default_factory=lambda: {"labeler": "emt"},
        description="LabelSettings: the ground truth of every arm and of the test set (default: EMT).",
    )
    train: dict[str, Any] = Field(
        default_factory=lambda: {"preset": "tiny", "committee_size": 3},
        description="TrainSettings of every committee (the same preset, epochs and seeds in every arm).",
    )
    reference: dict[str, Any] = Field(
        default_factory=lambda: {"binaries": ["B2"], "ternaries": ["L2_1"]},
        description="BenchReferenceSettings of the test set (the study sets elements and the labeler).",
    )
    bench: dict[str, Any] = Field(
        default_factory=dict,
        description="BenchSettings of every member's benchmarks (the study sets potentials, structures and the "
        "elements of the MD mixtures).",
    )

    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUN_OPTIONS

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, value: list[str]) -> list[str]:
        from ase.data import atomic_numbers

        unknown = [s for s in value if s not in atomic_numbers]
        if unknown:
            raise ValueError(f"unknown element symbol(s): {', '.join(unknown)}")
        if len(set(value)) != len(value):
            raise ValueError("elements must be distinct")
        return value

    @field_validator("arms")
    @classmethod
    def _ordered_arms(cls, value: list[str]) -> list[str]:
        return [name for name in ARM_NAMES if name in value]

    @model_validator(mode="after")
    def _consistent(self) -> StudySettings:
        if "combined" in self.arms and not {"al", "near-eq"} <= set(self.arms):
            raise ValueError("arm 'combined' trains on the data of 'al' and 'near-eq': list both in arms")
        for section in ("generate", "screen", "select", "label", "train", "reference", "bench", "near_eq"):
            for key in ("executor", "scheduler", "output"):
                if key in getattr(self, section):
                    raise ValueError(
                        f"section '{section}': key '{key}' is the study's to set (its run options and folders)"
                    )
        return self

    def budget(self) -> int:
        """Structures labelled for the ``al`` arm: the seed set plus every iteration's picks (at most)."""
        return self.seed_structures + self.iterations * self.per_iteration


__all__ = ["ARM_NAMES", "DEFAULT_ELEMENTS", "ArmName", "LeakageSettings", "StudySettings"]
