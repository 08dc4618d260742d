"""``aloe screen``: query by committee over a generate run or a structure file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aloe.cli.options import (
    BatchSizeOption,
    ConfigOption,
    DeviceOption,
    ExecutorOption,
    OutputOption,
    ProgressOption,
    SchedulerOption,
    SetOption,
    ThreadsOption,
    WorkersOption,
    parse_sets,
    run_stage,
    user_errors,
)

HELP = (
    "Run a committee of potentials over candidates and select those it disagrees on (MP-ALOE rules). Writes "
    "per-structure metrics, the selected structures and plots to a run folder; resumes when run again on it."
)


def screen_command(
    ctx: typer.Context,
    input_path: Annotated[
        Path | None,
        typer.Argument(
            help="Generate run folder, extxyz, folder of POSCAR/CIF, MP-ALOE .jsonl(.gz), MatPES .json(.gz)."
        ),
    ] = None,
    config: ConfigOption = None,
    committee: Annotated[
        list[str] | None,
        typer.Option(
            "--committee", "-m", help="Member (name, .model path/glob, module:factory). Repeatable."
        ),
    ] = None,
    device: DeviceOption = None,
    batch_size: BatchSizeOption = None,
    threads: ThreadsOption = None,
    references: Annotated[Path | None, typer.Option(help="Table of elemental reference energies.")] = None,
    compute_references: Annotated[
        bool | None,
        typer.Option("--compute-references/--no-compute-references", help="Compute missing references."),
    ] = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    scheduler: SchedulerOption = None,
    output: OutputOption = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
) -> None:
    """Screen candidates with a committee."""
    with user_errors():
        from aloe.screen.settings import ScreenSettings
        from aloe.screen.stage import screen

        overrides = parse_sets(
            set_,
            {
                "input": str(input_path) if input_path else None,
                "committee": committee or None,
                "device": device,
                "batch_size": batch_size,
                "threads": threads,
                "references": str(references) if references else None,
                "compute_references": compute_references,
                "workers": workers,
                "executor": executor,
                "scheduler": scheduler,
                "output": str(output) if output else None,
                "progress": progress,
            },
        )
        result = run_stage(ctx, ScreenSettings, config, overrides, "screen", screen)
        c = result.counts
        outcomes = ", ".join(f"{k} {v:,}" for k, v in c["outcomes"].items())
        typer.echo(f"screened {c['structures']:,} structures with {len(c['committee'])} models: {outcomes}")
        typer.echo(f"selection rate: {c['selection_rate']:.2%}   selected: {result.run_dir / 'selected'}")
        typer.echo(f"plots: {result.run_dir / 'plots'}")
        typer.echo(f"summary: {result.summary_path}")


__all__ = ["HELP", "screen_command"]
