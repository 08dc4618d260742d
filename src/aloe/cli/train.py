"""``aloe train``: train a committee of MACE models (mace-torch's own run_train) on labelled records."""

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
    ThreadsOption,
    WorkersOption,
    parse_sets,
    run_stage,
    user_errors,
)

HELP = (
    "Train a committee of MACE models with mace-torch's own run_train, each member on its own seeded 90/5/5 "
    "train/valid/test split, from label run folders or record files (.jsonl(.gz), .json(.gz), extxyz, .db). "
    "Writes models/member-<k>.model (usable with aloe screen -m), test errors per member (errors.csv) and "
    "parity plots. Run again on the same folder to resume: finished members are skipped, a killed one "
    "continues from its checkpoint."
)


def train_command(
    ctx: typer.Context,
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Label run folders and/or record files: MP-ALOE .jsonl(.gz), MatPES .json(.gz), extxyz "
            "(REF_energy/REF_forces/REF_stress or a calculator's results), ASE .db."
        ),
    ] = None,
    config: ConfigOption = None,
    preset: Annotated[
        str | None,
        typer.Option(help="mp0a-large (default; MACE-MP-0a large), small (minutes on CPU) or tiny (tests)."),
    ] = None,
    committee_size: Annotated[
        int | None, typer.Option("--committee-size", "-n", help="Committee members (default 3).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (default: the preset's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the splits and of mace (default 0).")] = None,
    e0s: Annotated[
        str | None,
        typer.Option(
            help="isolated_atoms (default: the label runs' isolated_atoms.yaml), average or foundation; "
            "an explicit table with --set e0s='{Cu: -0.5, ...}'."
        ),
    ] = None,
    foundation_model: Annotated[
        str | None, typer.Option(help="Fine-tune every member from this MACE .model file.")
    ] = None,
    mace: Annotated[
        list[str] | None,
        typer.Option(
            "--mace",
            help="Any mace-torch run_train option over the preset: --mace num_channels=32. Repeatable.",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu (default), cuda, mps or xpu.")] = None,
    threads: ThreadsOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    scheduler: SchedulerOption = None,
    output: OutputOption = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
) -> None:
    """Train a MACE committee."""
    with user_errors():
        from aloe.errors import AloeError
        from aloe.train.settings import TrainSettings
        from aloe.train.stage import train

        mace_sets = []
        for item in mace or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise AloeError(f"--mace {item!r}: expected OPTION=VALUE, e.g. --mace num_channels=32")
            mace_sets.append(f"mace_options.{key.strip()}={value}")
        overrides = parse_sets(
            [*mace_sets, *(set_ or [])],
            {
                "inputs": [str(p) for p in inputs] if inputs else None,
                "preset": preset,
                "committee_size": committee_size,
                "epochs": epochs,
                "seed": seed,
                "e0s": e0s,
                "foundation_model": foundation_model,
                "device": device,
                "threads": threads,
                "workers": workers,
                "executor": executor,
                "scheduler": scheduler,
                "output": str(output) if output else None,
                "progress": progress,
            },
        )
        result = run_stage(ctx, TrainSettings, config, overrides, "train", train)
        c = result.counts
        typer.echo(
            f"committee of {c['members']}: {c['trained_now']} trained now, {c['finished']} finished; "
            f"{c['structures']:,} structures ({c['duplicates']:,} duplicates dropped)"
        )
        for row in result.products["errors"]:
            typer.echo(
                f"  {row['member']:>9}: energy MAE {row['energy_mae_meV_per_atom']:.2f} meV/atom, forces MAE "
                f"{row['forces_mae_meV_per_A']:.2f} meV/A, stress MAE {row['stress_mae_GPa']:.4f} GPa"
            )
        typer.echo(f"models: {result.run_dir / 'models'}   errors: {result.run_dir / 'errors.csv'}")
        typer.echo(f"plots: {result.run_dir / 'plots'}")
        typer.echo(f"summary: {result.summary_path}")


__all__ = ["HELP", "train_command"]
