"""The stage kit: what every stage shares (run options, the result type, timings, the table of stages).

A stage is a function ``stage(settings, command=None, executor=None) -> StageResult``:

- ``settings`` derive from :class:`StageSettings`, which holds the run options (workers, executor, scheduler,
  output, progress) once for every stage;
- ``executor`` is the caller's (the CLI's or the loop's, open for the whole run); a stage called without one
  opens its own from its run options (:func:`aloe.executors.stage_executor`) and closes it when it returns;
- the run folder follows :mod:`aloe.layout`, opened with :func:`open_stage_run`.

:data:`STAGES` names every stage's settings model and function (imported when first used), in pipeline order;
the CLI, the loop and config validation look stages up there.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from aloe.errors import AloeError
from aloe.executors import ExecutorKind
from aloe.settings import AloeSettings


class StageSettings(AloeSettings):
    """The run options of a stage (the base of every stage's settings).

    ``RUNTIME_KEYS`` are the settings that may change between a run and its resumption (they do not change what
    the stage computes); a stage adds its own (device, threads ...).
    """

    workers: int = Field(
        1,
        ge=1,
        description="Tasks of this stage that run at once: local processes, or Dask tasks (in a loop, the run's "
        "executor section sizes the pool and this caps the stage when set).",
    )
    executor: ExecutorKind = Field(
        "process",
        description="Where the stage's tasks run when the stage runs on its own: process (a pool of 'workers' "
        "local processes; this process when workers is 1), local (this process, whatever 'workers' says) or "
        "dask. In a loop the config's executor section decides.",
    )
    scheduler: str | None = Field(
        None, description="Dask scheduler address (executor 'dask'); unset: a LocalCluster of 'workers'."
    )
    output: Path | None = Field(None, description="Run folder; default runs/<verb>-<timestamp>.")
    progress: bool | None = Field(
        None, description="Progress display (default: bars on a terminal, plain lines otherwise)."
    )

    #: The run options: never part of a run's fingerprint.
    RUN_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"workers", "executor", "scheduler", "output", "progress"}
    )
    RUNTIME_KEYS: ClassVar[frozenset[str]] = RUN_OPTIONS

    def task_limit(self) -> int | None:
        """How many of the stage's tasks may run at once on a caller's executor: ``workers`` when it was set."""
        return self.workers if "workers" in self.model_fields_set else None


@dataclass
class StageResult:
    """What a stage run did.

    Attributes
    ----------
    stage
        The verb (``generate``, ``screen`` ...).
    run_dir
        Its run folder.
    counts
        The counts of its summary (what was done, resumed, failed).
    timings
        Seconds per phase (``total`` included).
    summary_path
        The summary YAML.
    products
        What the stage hands back beyond its files (select: ``direct``, the DIRECT result; train: ``models`` and
        ``errors``).
    """

    stage: str
    run_dir: Path
    counts: dict[str, Any]
    timings: dict[str, float]
    summary_path: Path
    products: dict[str, Any] = field(default_factory=dict)


class Timings(dict):
    """Seconds per phase of a stage: ``with timings("screen"): ...``; ``timings.total()`` at the end."""

    def __init__(self) -> None:
        super().__init__()
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time the block as ``phase`` (added to what the phase took before)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[phase] = self.get(phase, 0.0) + time.perf_counter() - t0

    def total(self) -> dict[str, float]:
        """The phases plus ``total`` (seconds since the stage started)."""
        self["total"] = time.perf_counter() - self._start
        return dict(self)


# ---- the table of stages -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its verb, settings model and function (``module:name``, imported on first use).

    ``loop_inputs`` are the settings the loop fills in (stand-ins are used to validate a config section);
    ``in_iteration`` is false for a stage the loop runs beside the iteration's pipeline (bench, when configured).
    """

    name: str
    settings: str
    function: str
    loop_inputs: dict[str, Any] = field(default_factory=dict)
    in_iteration: bool = True

    def settings_model(self) -> type[StageSettings]:
        """The settings class."""
        return _load(self.settings)

    def run(self) -> Any:
        """The stage function."""
        return _load(self.function)


def _load(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


#: Every stage, in pipeline order: the stages of an iteration, then those beside it (the optional bench of every
#: committee, the reference sets benchmarks need) and the study, which composes all of them.
STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("generate", "aloe.generate.settings:GenerateSettings", "aloe.generate.stage:generate"),
        StageSpec(
            "screen",
            "aloe.screen.settings:ScreenSettings",
            "aloe.screen.stage:screen",
            {"input": ".", "committee": ["placeholder"]},
        ),
        StageSpec(
            "select", "aloe.select.settings:SelectSettings", "aloe.select.stage:select", {"input": "."}
        ),
        StageSpec("label", "aloe.label.settings:LabelSettings", "aloe.label.stage:label", {"input": "."}),
        StageSpec("train", "aloe.train.settings:TrainSettings", "aloe.train.stage:train", {"inputs": ["."]}),
        StageSpec(
            "bench",
            "aloe.bench.settings:BenchSettings",
            "aloe.bench.stage:bench",
            {"potentials": ["placeholder"]},
            in_iteration=False,
        ),
        StageSpec(
            "bench-reference",
            "aloe.bench.reference:BenchReferenceSettings",
            "aloe.bench.reference:make_reference",
            in_iteration=False,
        ),
        StageSpec("study", "aloe.study.settings:StudySettings", "aloe.study.stage:study", in_iteration=False),
    )
}


def stage_spec(name: str) -> StageSpec:
    """The registered stage ``name``."""
    try:
        return STAGES[name]
    except KeyError:
        raise AloeError(f"unknown stage {name!r} (known: {', '.join(STAGES)})") from None


__all__ = ["STAGES", "StageResult", "StageSettings", "StageSpec", "Timings", "stage_spec"]
