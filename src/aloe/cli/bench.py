"""``aloe bench``: benchmark potentials side by side, and make reference sets (``aloe bench reference``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

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
    split_list,
    user_errors,
)

HELP = (
    "Benchmark potentials side by side on the MP-ALOE paper's four benchmarks: equilibrium (relax, cohesive energy, "
    "fingerprint distance), off-equilibrium forces (parity, softening), energy-volume scans (flips, tortuosity) and "
    "MD stability (NVT/NPT ramps to 3000 K). 'aloe bench POTENTIAL... --suite all --structures REF -o DIR' writes "
    "Parquet tables, a comparison table, figures and an HTML report; 'aloe bench reference' makes a reference set "
    "with a DFT labeler. Resumes when run again on the same folder."
)
RUN_HELP = (
    "Run the benchmarks on one or more potentials (the default command: 'aloe bench POTENTIAL...' runs this)."
)
REFERENCE_HELP = (
    "Make a reference set with a labeler (gpaw r2SCAN here; emt as a stand-in): relaxed crystals with their "
    "energies, isolated-atom energies and displaced supercells with forces, for --structures of 'aloe bench'."
)


class _DefaultRunGroup(TyperGroup):
    """``aloe bench ARGS`` means ``aloe bench run ARGS`` unless ARGS start with a subcommand or ask for help."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultRunGroup, help=HELP, no_args_is_help=True, add_completion=False)


@app.command("run", help=RUN_HELP)
def bench_command(
    ctx: typer.Context,
    potentials: Annotated[
        list[str] | None,
        typer.Argument(
            help="Potentials: chgnet-0.3.0, chgnet-0.2.0, chgnet-r2scan, emt, lj-nowall, MACE .model files, "
            "package.module:factory."
        ),
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option(help="all (default), or some of equilibrium, forces, ev, md (comma-separated)."),
    ] = None,
    structures: Annotated[
        str | None,
        typer.Option(
            help="Reference set: an 'aloe bench reference' folder, MatPES/MP-ALOE documents, extxyz with "
            "energies and forces, an ASE .db, a matcalc benchmark JSON, or builtin:elements / builtin:pymatgen."
        ),
    ] = None,
    ev_structures: Annotated[
        str | None, typer.Option(help="Structures of the EV scan (default: the reference crystals).")
    ] = None,
    md_structures: Annotated[
        str | None,
        typer.Option(
            help="Structures of the MD benchmark: builtin:mixtures (default), reference, or a path."
        ),
    ] = None,
    max_structures: Annotated[
        int | None, typer.Option(help="At most this many structures per benchmark.")
    ] = None,
    atom_energies: Annotated[
        str | None,
        typer.Option(help="reference (default), matpes-r2scan, matpes-pbe, or a JSON file {symbol: eV}."),
    ] = None,
    config: ConfigOption = None,
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
    """Benchmark potentials."""
    with user_errors():
        from aloe.bench.settings import BenchSettings
        from aloe.bench.stage import bench

        overrides = parse_sets(
            set_,
            {
                "potentials": list(potentials) if potentials else None,
                "suite": split_list(suite),
                "structures": structures,
                "ev_structures": ev_structures,
                "md_structures": md_structures,
                "max_structures": max_structures,
                "atom_energies": atom_energies,
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
        result = run_stage(ctx, BenchSettings, config, overrides, "bench", bench)
        _print_result(result)


def _print_result(result: Any) -> None:
    counts = result.counts
    for name, c in counts.items():
        if isinstance(c, dict):
            typer.echo(
                f"{name}: {c['rows']:,} rows of {c['structures']:,} structures, {c['failed']:,} failed"
            )
    report = result.products.get("report") or {}
    comparison = report.get("comparison", {}) if isinstance(report, dict) else {}
    md = comparison.get("md") if isinstance(comparison, dict) else None
    if md and Path(md).exists():
        typer.echo("")
        typer.echo(Path(md).read_text().rstrip())
        typer.echo("")
    if report.get("html"):
        typer.echo(f"report: {report['html']}")
    from aloe.layout import FIGURES, TABLES

    typer.echo(f"tables: {result.run_dir / TABLES}   figures: {result.run_dir / FIGURES}")
    typer.echo(f"summary: {result.summary_path}")


@app.command("reference", help=REFERENCE_HELP)
def reference_command(
    ctx: typer.Context,
    labeler: Annotated[str | None, typer.Option(help="gpaw (default), emt (stand-in) or vasp.")] = None,
    elements: Annotated[
        str | None, typer.Option(help="Elements of the elemental crystals, e.g. 'Li,Na,Mg'.")
    ] = None,
    structures: Annotated[
        str | None, typer.Option(help="Relax these structures instead (any file 'aloe bench' reads).")
    ] = None,
    config: ConfigOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    scheduler: SchedulerOption = None,
    output: OutputOption = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
) -> None:
    """Make a reference set."""
    with user_errors():
        from aloe.bench.reference import BenchReferenceSettings, make_reference

        overrides = parse_sets(
            set_,
            {
                "labeler": labeler,
                "elements": split_list(elements),
                "structures": structures,
                "workers": workers,
                "executor": executor,
                "scheduler": scheduler,
                "output": str(output) if output else None,
                "progress": progress,
            },
        )
        result = run_stage(ctx, BenchReferenceSettings, config, overrides, "bench-reference", make_reference)
        c = result.counts
        typer.echo(", ".join(f"{k}: {v}" for k, v in c.items() if not isinstance(v, dict)))
        typer.echo(f"reference set: {result.run_dir}   (use: aloe bench ... --structures {result.run_dir})")
        typer.echo(f"summary: {result.summary_path}")


__all__ = ["HELP", "app"]
