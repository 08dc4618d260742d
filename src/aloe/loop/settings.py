"""Settings of ``aloe run``: the active-learning loop (section ``run`` of the config) plus one section per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from aloe.executors import ExecutorSettings
from aloe.settings import AloeSettings
from aloe.stagekit import STAGES as _STAGE_TABLE

#: Stages of one iteration, in order (the registered stages of the stage kit that run in every iteration).
STAGES = tuple(name for name, spec in _STAGE_TABLE.items() if spec.in_iteration)


class LoopSettings(AloeSettings):
    """The loop: iterations, the first committee, stopping rules."""

    iterations: int = Field(
        2, ge=1, description="Iterations (generate -> screen -> select -> label -> train)."
    )
    committee: list[str] = Field(
        default_factory=lambda: ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"],
        description="Committee of iteration 0 (later iterations use the committee trained in the previous one).",
    )
    seed_dataset: list[Path] = Field(
        default_factory=list,
        description="Labelled data to start from (label run folders or record files): part of every training set.",
    )
    train_first: bool = Field(
        False,
        description="Train the iteration-0 committee on seed_dataset instead of using 'committee'.",
    )
    seed: int = Field(0, ge=0, description="Generate seed of iteration 0; iteration i uses seed + i.")
    min_selection_rate: float = Field(
        0.0, ge=0, le=1, description="Stop when the screen's selection rate falls below this."
    )
    max_label: int | None = Field(
        None,
        ge=1,
        description="Label at most this many structures per iteration (DIRECT's picks in pick order).",
    )
    output: Path | None = Field(None, description="Run folder; default runs/run-<timestamp>.")
    progress: bool | None = Field(None, description="Progress bars (default: on a terminal).")
    report: Literal["markdown+html", "markdown", "none"] = Field(
        "markdown+html", description="Per-iteration report format."
    )


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
