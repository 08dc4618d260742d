"""Settings of ``aloe run``: the active-learning loop (section ``run`` of the config) plus one section per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from aloe.executors import ExecutorSettings
from aloe.settings import AloeSettings
from aloe.stagekit import STAGES as _STAGE_TABLE

#: Stages of one iteration, in order (the registered stages of the stage kit that run in every iteration).
STAGES = tuple(name for name, spec in _STAGE_TABLE.items() if spec.in_iteration)

#: How an iteration picks the structures to label: the stages it runs (in order) for each ``run.selection``.
SELECTION_STAGES: dict[str, tuple[str, ...]] = {
    "committee": STAGES,
    "random": tuple(s for s in STAGES if s != "screen"),
    "diverse": tuple(s for s in STAGES if s != "screen"),
}


class LoopSettings(AloeSettings):
    """The loop: iterations, the first committee, stopping rules."""

    iterations: int = Field(
        2,
        ge=1,
        description="Iterations (generate -> screen -> select -> label -> train; no screen unless selection "
        "is 'committee').",
    )
    selection: Literal["committee", "random", "diverse"] = Field(
        "committee",
        description="How an iteration picks what to label: 'committee' (screen with the current committee, then "
        "DIRECT: MP-ALOE), 'random' (uniform random picks from the generated candidates: no committee, no "
        "DIRECT), 'diverse' (DIRECT on the generated candidates, no committee).",
    )
    train_first: bool = Field(
        False,
        description="Train the iteration-0 committee on seed_dataset instead of using 'committee'.",
    )
    committee: list[str] = Field(
        default_factory=lambda: ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"],
        description="Committee of iteration 0 (later iterations use the committee trained in the previous one); "
        "not used by selection 'random' or 'diverse'.",
    )
    seed_dataset: list[Path] = Field(
        default_factory=list,
        description="Labelled data to start from (label run folders or record files): part of every training set.",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Generate seed of iteration 0; iteration i uses seed + i (so do the uniform picks of "
        "selection 'random', and training unless train_seed is set).",
    )
    train_seed: int | None = Field(
        None,
        ge=0,
        description="Training seed of every committee the loop trains (the seed committee and each iteration's); "
        "None: seed + i in iteration i (seed for the seed committee).",
    )
    min_selection_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Stop when the screen's selection rate falls below this (selection 'committee' only).",
    )
    max_label: int | list[int] | None = Field(
        None,
        description="Label at most this many structures per iteration (DIRECT's picks in pick order; the number "
        "of uniform picks of selection 'random'); a list gives each iteration its own budget (item i for "
        "iteration i; at least one item per iteration).",
    )
    output: Path | None = Field(None, description="Run folder; default runs/run-<timestamp>.")
    progress: bool | None = Field(None, description="Progress bars (default: on a terminal).")
    report: Literal["markdown+html", "markdown", "none"] = Field(
        "markdown+html", description="Per-iteration report format."
    )

    @field_validator("committee")
    @classmethod
    def _committee_needed(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and info.data.get("selection") == "committee" and not info.data.get("train_first"):
            raise ValueError(
                "selection 'committee' needs a committee for iteration 0: name potentials here or set "
                "run.train_first (a committee trained on run.seed_dataset)"
            )
        return value

    @field_validator("min_selection_rate")
    @classmethod
    def _rate_needs_screen(cls, value: float, info: ValidationInfo) -> float:
        selection = info.data.get("selection")
        if value > 0 and selection not in (None, "committee"):
            raise ValueError(
                f"selection {selection!r} has no screen and so no selection rate; leave min_selection_rate at 0"
            )
        return value

    @field_validator("max_label")
    @classmethod
    def _budget_per_iteration(cls, value: int | list[int] | None, info: ValidationInfo) -> Any:
        budgets = value if isinstance(value, list) else [value] if value is not None else []
        if any(b < 1 for b in budgets):
            raise ValueError("a budget is at least 1 structure (leave max_label out for no cap)")
        iterations = info.data.get("iterations")
        if isinstance(value, list) and iterations is not None and len(value) < iterations:
            raise ValueError(
                f"a list of {len(value)} budget{'s' if len(value) != 1 else ''} for {iterations} iterations; "
                "give one per iteration"
            )
        return value

    def stages(self) -> tuple[str, ...]:
        """The stages of one iteration, in order (no screen for selection 'random' and 'diverse')."""
        return SELECTION_STAGES[self.selection]

    def budget(self, it: int) -> int | None:
        """The labelling budget of iteration ``it`` (``None``: no cap)."""
        if isinstance(self.max_label, list):
            return self.max_label[it]
        return self.max_label

    def training_seed(self, it: int | None) -> int:
        """Training seed of the committee trained in iteration ``it`` (``None``: the seed committee)."""
        if self.train_seed is not None:
            return self.train_seed
        return self.seed + (it or 0)


class RunConfig(AloeSettings):
    """A whole ``aloe run`` config: the loop plus the settings of every stage (validated by each stage)."""

    run: LoopSettings = Field(default_factory=LoopSettings, description="The loop.")
    executor: ExecutorSettings = Field(
        default_factory=ExecutorSettings,
        description="Where the run's independent work runs: one executor (or Dask cluster) for every stage.",
    )
    generate: dict[str, Any] = Field(default_factory=dict, description="GenerateSettings of every iteration.")
    screen: dict[str, Any] = Field(default_factory=dict, description="ScreenSettings of every iteration.")
    select: dict[str, Any] = Field(default_factory=dict, description="SelectSettings of every iteration.")
    label: dict[str, Any] = Field(default_factory=dict, description="LabelSettings of every iteration.")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainSettings of every iteration.")
    bench: dict[str, Any] | None = Field(
        None,
        description="BenchSettings without 'potentials': when given, every committee is benchmarked (iteration "
        "0's, then each one trained), and the run report shows each metric across iterations.",
    )
