"""``aloe select``: DIRECT down-sampling of a screen run (or any structures) to a diverse subset."""

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
    "Pick a diverse subset with DIRECT (encode -> PCA -> BIRCH -> k per cluster). Reads a screen run's selected "
    "structures or a structure file; writes the subset, every structure's cluster and PCA coordinates, and plots. "
    "Run again on the same folder with other DIRECT settings to re-select without encoding again."
)


def select_command(
    ctx: typer.Context,
    input_path: Annotated[
        Path | None,
        typer.Argument(
            help="Screen (or generate/select) run folder, extxyz, folder of POSCAR/CIF, MP-ALOE .jsonl(.gz), "
            "MatPES .json(.gz)."
        ),
    ] = None,
    config: ConfigOption = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="chgnet-0.3.0 (default), chgnet-0.2.0, chgnet-r2scan, matminer, or module:factory."
        ),
    ] = None,
    k: Annotated[int | None, typer.Option("--k", "-k", help="Structures per cluster (default 5).")] = None,
    threshold: Annotated[float | None, typer.Option(help="BIRCH threshold (default 0.1).")] = None,
    n_clusters: Annotated[
        int | None, typer.Option(help="A fixed number of clusters instead of the threshold alone.")
    ] = None,
    components: Annotated[
        str | None, typer.Option(help="kaiser (default), variance or fixed (see --set direct.*).")
    ] = None,
    export: Annotated[str | None, typer.Option(help="none or extxyz (selected.extxyz).")] = None,
    device: DeviceOption = None,
    batch_size: BatchSizeOption = None,
    threads: ThreadsOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    scheduler: SchedulerOption = None,
    output: OutputOption = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
) -> None:
    """Select a diverse subset with DIRECT."""
    with user_errors():
        from aloe.select.settings import SelectSettings
        from aloe.select.stage import select

        overrides = parse_sets(
            set_,
            {
                "input": str(input_path) if input_path else None,
                "encoder": encoder,
                "direct.k": k,
                "direct.birch_threshold": threshold,
                "direct.n_clusters": n_clusters,
                "direct.components": components,
                "export": export,
                "device": device,
                "batch_size": batch_size,
                "threads": threads,
                "workers": workers,
                "executor": executor,
                "scheduler": scheduler,
                "output": str(output) if output else None,
                "progress": progress,
            },
        )
        result = run_stage(ctx, SelectSettings, config, overrides, "select", select)
        c = result.counts
        if c.get("mode") == "uniform":
            typer.echo(f"selected {c['selected']:,} of {c['structures']:,} structures uniformly at random")
        else:
            d = result.products["direct"]
            typer.echo(
                f"selected {c['selected']:,} of {c['clustered']:,} structures ({c['reduction']:g}x fewer) from "
                f"{c['clusters']:,} clusters; {d.n_components} principal components"
            )
            if c["encoder_failed"] or c["left_out_nonfinite"]:
                typer.echo(
                    f"left out: {c['encoder_failed']} not encodable, {c['left_out_nonfinite']} with NaN features"
                )
        typer.echo(f"selected: {result.run_dir / 'selected'}   points: {result.run_dir / 'points.parquet'}")
        if c.get("mode") != "uniform":
            typer.echo(f"plots: {result.run_dir / 'plots'}")
        typer.echo(f"summary: {result.summary_path}")


__all__ = ["HELP", "select_command"]
