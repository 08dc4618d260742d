"""``aloe data convert|combine|stats``: labelled datasets (MP-ALOE JSONL, MatPES JSON, extxyz for MACE, ASE db)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aloe.cli.options import ProgressOption, user_errors

app = typer.Typer(
    help="Labelled datasets: convert between MP-ALOE JSONL, MatPES JSON, extxyz (MACE's REF_ keys) and ASE db; "
    "combine MP-ALOE with MatPES; plot dataset statistics.",
    no_args_is_help=True,
)

FORMAT_HELP = "jsonl, json, extxyz or db (default: from the file name)."
SkipBadOption = Annotated[
    bool,
    typer.Option(
        "--skip-bad", help="Skip (and count) bad JSON lines and invalid records instead of stopping."
    ),
]


def _report_skipped(n: int, messages: tuple[str, ...] | list[str]) -> None:
    if n:
        typer.echo(f"skipped {n:,} bad line(s)/record(s); first ones:", err=True)
        for line in messages[:5]:
            typer.echo(f"  {line}", err=True)


@app.command("convert")
def convert_command(
    input_path: Annotated[Path, typer.Argument(help="Records: .jsonl(.gz), .json(.gz), .xyz/.extxyz, .db.")],
    output_path: Annotated[Path, typer.Argument(help="Output file (format from its name unless --format).")],
    format: Annotated[
        str | None, typer.Option("--format", "-f", help=f"Output format: {FORMAT_HELP}")
    ] = None,
    input_format: Annotated[
        str | None, typer.Option("--input-format", help=f"Input format: {FORMAT_HELP}")
    ] = None,
    skip_bad: SkipBadOption = False,
    progress: ProgressOption = None,
) -> None:
    """Convert records between formats, streamed (written atomically: no partial file on error)."""
    with user_errors():
        from aloe.data.formats import convert

        result = convert(
            input_path,
            output_path,
            source_format=input_format,
            target_format=format,
            skip_bad=skip_bad,
            progress=progress,
        )
        typer.echo(f"wrote {result.n_written:,} records to {output_path}")
        _report_skipped(result.n_skipped, result.messages)


@app.command("combine")
def combine_command(
    mp_aloe: Annotated[Path, typer.Argument(help="MP-ALOE records (MP-ALOE-2025.jsonl.gz).")],
    matpes: Annotated[Path, typer.Argument(help="MatPES records (MatPES-R2SCAN-2025.1.json.gz).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Combined file (format from its name).")],
    skip_bad: SkipBadOption = False,
    progress: ProgressOption = None,
) -> None:
    """Keep all MatPES docs and the MP-ALOE docs whose original_mp_id is null or absent from MatPES."""
    with user_errors():
        from aloe.data.combine import combine

        counts = combine(mp_aloe, matpes, output, skip_bad=skip_bad, progress=progress)
        typer.echo(
            f"MatPES   {counts.matpes:>10,} docs kept ({counts.matpes_ids:,} distinct original_mp_ids)"
        )
        typer.echo(
            f"MP-ALOE  {counts.mp_aloe_kept:>10,} docs kept ({counts.mp_aloe_null_id_kept:,} with a null id), "
            f"{counts.mp_aloe_dropped:,} dropped (id in MatPES)"
        )
        typer.echo(f"wrote {counts.written:,} docs to {output}")
        skipped = sum(counts.skipped_bad.values())
        if skipped:
            typer.echo(f"skipped {skipped:,} bad line(s)/record(s): {counts.skipped_bad}", err=True)


@app.command("stats")
def stats_command(
    files: Annotated[list[Path], typer.Argument(help="One or more record files (overlaid in the plots).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the plots and stats.yaml.")],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", "-n", help="Legend name of each file, in order (repeatable)."),
    ] = None,
    functional: Annotated[
        str | None,
        typer.Option(help="Functional assumed for docs without one (cohesive energies): r2SCAN or PBE."),
    ] = None,
    skip_bad: SkipBadOption = False,
    progress: ProgressOption = None,
) -> None:
    """Counts, element coverage, and histograms of cohesive energy, |F| and pressure (the paper's figure)."""
    with user_errors():
        from aloe.data.stats import dataset_stats

        summary = dataset_stats(
            files, output, names=name, functional=functional, skip_bad=skip_bad, progress=progress
        )
        for ds_name, ds in summary["datasets"].items():
            coh = ds["cohesive_energy_per_atom_eV"]
            p = ds["pressure_GPa"].get("quantiles", {})
            typer.echo(
                f"{ds_name}: {ds['docs']:,} docs, {ds['atoms']:,} atoms, {ds['n_elements']} elements; "
                f"cohesive energy for {coh['n']:,} ({coh['skipped']:,} skipped); "
                f"median pressure {p.get('0.5', float('nan')):.3g} GPa"
            )
        for key, path in summary["files"].items():
            typer.echo(f"{key:<14} {path}")
