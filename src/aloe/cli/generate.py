"""``aloe generate``: build the candidate space (or count it, or show single candidates)."""

from __future__ import annotations

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
    announce_run_folder,
    invocation,
    parse_sets,
    split_list,
    user_errors,
)

HELP = (
    "Substitute elements into prototypes, guess lattices, perturb, and write candidate chunks (Parquet) to a run "
    "folder. Resumes when run again on the same folder. --count prints the exact size of the space instead. "
    "--mode near-eq relaxes the unperturbed candidates and writes MD frames instead (MatPES-like; near_eq.* settings)."
)


def generate_command(
    ctx: typer.Context,
    config: ConfigOption = None,
    prototypes: Annotated[
        str | None,
        typer.Option("--prototypes", "-p", help="'builtin', 'builtin:binary', or a folder of POSCAR/CIF."),
    ] = None,
    elements: Annotated[
        str | None, typer.Option("--elements", "-e", help="Element subset, e.g. 'Fe,O,Li'.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of all random choices.")] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="'perturb' (MP-ALOE candidates, the default) or 'near-eq' (relax + short MD frames of the "
            "unperturbed candidates; settings under near_eq, e.g. --set near_eq.temperatures=[300,1000]).",
        ),
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Draw this many candidates uniformly from the space.")
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            help="Candidates per chunk file (near-eq mode: starting candidates, near_eq.chunk_size)."
        ),
    ] = None,
    shard: Annotated[str | None, typer.Option(help="Produce only shard K of N ('K/N', 0-based).")] = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    scheduler: SchedulerOption = None,
    export: Annotated[
        list[str] | None, typer.Option(help="Also export: extxyz and/or poscar. Repeatable.")
    ] = None,
    output: OutputOption = None,
    count: Annotated[
        bool, typer.Option("--count", help="Print the exact size of the space and exit.")
    ] = False,
    index: Annotated[
        list[int] | None,
        typer.Option("--index", help="Print candidate number I as POSCAR and exit. Repeatable."),
    ] = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
) -> None:
    """Generate candidates."""
    with user_errors():
        from aloe.generate.settings import GenerateSettings
        from aloe.settings import build_settings

        overrides = parse_sets(
            set_,
            {
                "prototypes.source": prototypes,
                "elements": split_list(elements),
                "seed": seed,
                "mode": mode,
                "sample": sample,
                "chunk_size": chunk_size,
                "shard": shard,
                "workers": workers,
                "executor": executor,
                "scheduler": scheduler,
                "export": export or None,
                "output": str(output) if output else None,
                "progress": progress,
            },
        )
        settings = build_settings(GenerateSettings, config, overrides, verb="generate")
        if settings.mode == "near-eq" and chunk_size is not None:  # starts per chunk: near_eq.chunk_size
            overrides = {k: v for k, v in overrides.items() if k != "chunk_size"}
            overrides["near_eq.chunk_size"] = chunk_size
            settings = build_settings(GenerateSettings, config, overrides, verb="generate")
        if count:
            _print_count(settings)
            return
        if index:
            _print_candidates(settings, index)
            return
        from aloe.generate.stage import generate
        from aloe.runs import default_run_dir

        if settings.output is None:
            settings = settings.model_copy(update={"output": default_run_dir("generate")})
        from aloe.logs import run_log
        from aloe.settings import absolute_paths

        settings = absolute_paths(settings)  # the executor's workers may run in another folder

        with run_log(settings.output, command=invocation(ctx)):  # library output to the run folder's aloe.log
            announce_run_folder(settings.output)
            result = generate(settings, command=invocation(ctx))
        c = result.counts
        if settings.mode == "near-eq":
            failures = ", ".join(f"{n} {reason}" for reason, n in c["failures"].items())
            typer.echo(
                f"wrote {c['candidates_written']:,} frames of {c['starts_written']:,} starting candidates in "
                f"{c['chunks_written']} chunks ({c['chunks_resumed']} chunks already done); in all {c['frames']:,} "
                f"frames of {c['starts']:,} starts, {c['failed']:,} failed"
                + (f" ({failures})" if failures else "")
            )
        else:
            typer.echo(
                f"wrote {c['candidates_written']:,} candidates in {c['chunks_written']} chunks "
                f"({c['chunks_resumed']} chunks already done) of a {c['plan']} plan over {c['candidates']:,} "
                "candidates"
            )
        typer.echo(f"summary: {result.summary_path}")


def _print_count(settings) -> None:
    from aloe.generate.stage import count_space, load_space

    space = load_space(settings, progress=settings.progress)
    counts = count_space(space)
    typer.echo(f"prototypes: {counts['prototypes']}   elements: {counts['elements']}")
    typer.echo(
        f"{'arity':>5} {'prototypes':>10} {'occupations':>11} {'combinations':>12} {'candidates':>14} "
        f"{'after sub-sampling (expected)':>30}"
    )
    for arity, row in counts["by_arity"].items():
        typer.echo(
            f"{arity:>5} {row['prototypes']:>10} {row['occupations']:>11} {row['combinations_per_prototype']:>12,} "
            f"{row['candidates']:>14,} {row['expected_after_subsampling']:>30,.1f}"
        )
    typer.echo(
        f"{'total':>5} {'':>10} {'':>11} {'':>12} {counts['candidates']:>14,} "
        f"{counts['expected_after_subsampling']:>30,.1f}"
    )


def _print_candidates(settings, indices: list[int]) -> None:
    from pymatgen.io.vasp import Poscar

    from aloe.generate.stage import load_space

    space = load_space(settings)
    batch = space.build(indices)
    from aloe.data.candidates import CandidateRows
    from aloe.generate.io import batch_to_table

    rows = CandidateRows(batch_to_table(batch, space))
    for r in range(len(rows)):
        structure = rows.to_structure(r)
        typer.echo(f"# candidate {rows.label(r)}  scale={batch.scale[r]:.4f}  seed={settings.seed}")
        typer.echo(Poscar(structure, comment=rows.label(r)).get_str().rstrip())


__all__ = ["HELP", "generate_command"]
