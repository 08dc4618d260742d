"""``aloe study CONFIG``: active-learning data against random and near-equilibrium data, at equal label budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aloe.cli.options import (
    ExecutorOption,
    OutputOption,
    ProgressOption,
    SchedulerOption,
    SetOption,
    WorkersOption,
    parse_sets,
    run_stage,
    user_errors,
)

HELP = (
    "Does the loop's data make better potentials? Build a training set per arm at the same label budget (al: the "
    "active-learning loop; random: uniform picks from the same candidates; near-eq: MD frames of relaxed "
    "structures + DIRECT; combined: al + near-eq), train a MACE committee on each, benchmark every member on a "
    "held-out test set made with the same labeler, and report metric by arm with a verdict. Resumes when run again "
    "on the same folder."
)


def study_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Study config (YAML), e.g. examples/study-emt.yaml; default: every setting's default."
        ),
    ] = None,
    output: OutputOption = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Run a study."""
    with user_errors():
        from aloe.study.settings import StudySettings
        from aloe.study.stage import study

        overrides = parse_sets(
            set_,
            {
                "output": str(output) if output else None,
                "progress": progress,
                "workers": workers,
                "executor": executor,
                "scheduler": scheduler,
            },
        )
        result = run_stage(ctx, StudySettings, config, overrides, "study", study)
        from aloe.study.report import verdict_lines

        typer.echo("")
        for line in verdict_lines(result.products["verdict"]):
            typer.echo(line.replace("**", ""))
        typer.echo("")
        paths = result.products["paths"]
        typer.echo(f"report: {paths['html']}   ({paths['md']}, {paths['csv']})")
        typer.echo(f"summary: {result.summary_path}")


__all__ = ["HELP", "study_command"]
