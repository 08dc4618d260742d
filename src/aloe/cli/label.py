"""``aloe label``: label a select run (or any structures) with DFT (GPAW, VASP) or the EMT stand-in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aloe.cli.options import (
    ConfigOption,
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
    "Label structures with a DFT code (gpaw: r2SCAN here; vasp: MP-ALOE's inputs, for clusters) or the EMT "
    "stand-in. Writes records in the MatPES schema (JSON lines) and every failure with its class; resumes when run "
    "again on the same folder."
)


def label_command(
    ctx: typer.Context,
    input_path: Annotated[
        Path | None,
        typer.Argument(
            help="Select (or screen/generate) run folder, extxyz, folder of POSCAR/CIF, MP-ALOE .jsonl(.gz), "
            "MatPES .json(.gz)."
        ),
    ] = None,
    config: ConfigOption = None,
    labeler: Annotated[
        str | None, typer.Option(help="gpaw (default), vasp or emt (stand-in, not DFT).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per structure and attempt.")] = None,
    retry_failed: Annotated[
        bool | None, typer.Option("--retry-failed/--no-retry-failed", help="Label earlier failures again.")
    ] = None,
    isolated_atoms: Annotated[
        str | None, typer.Option(help="compute (default), published (VASP/MatPES values) or none.")
    ] = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    scheduler: SchedulerOption = None,
    output: OutputOption = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
) -> None:
    """Label structures."""
    with user_errors():
        from aloe.label.settings import LabelSettings
        from aloe.label.stage import label

        overrides = parse_sets(
            set_,
            {
                "input": str(input_path) if input_path else None,
                "labeler": labeler,
                "timeout": timeout,
                "retry_failed": retry_failed,
                "isolated_atoms": isolated_atoms,
                "workers": workers,
                "executor": executor,
                "scheduler": scheduler,
                "output": str(output) if output else None,
                "progress": progress,
            },
        )
        result = run_stage(ctx, LabelSettings, config, overrides, "label", label)
        c = result.counts
        failed = ", ".join(f"{k} {v}" for k, v in c["failed_by_class"].items()) or "none"
        typer.echo(
            f"labelled {c['labelled']:,} of {c['structures']:,} structures ({c['records']:,} records); "
            f"failed {c['failed']:,} ({failed})"
        )
        if c["written_only"]:
            typer.echo(
                f"inputs written (not run) for {c['written_only']:,} structures: {result.run_dir / 'work'}"
            )
        if "seconds_per_structure" in c:
            s = c["seconds_per_structure"]
            typer.echo(f"seconds per structure: mean {s['mean']:g}, median {s['median']:g}, max {s['max']:g}")
        typer.echo(f"records: {result.run_dir / 'records'}   failures: {result.run_dir / 'failures'}")
        typer.echo(f"summary: {result.summary_path}")


__all__ = ["HELP", "label_command"]
