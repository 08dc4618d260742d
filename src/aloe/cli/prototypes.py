"""``aloe prototypes list|show|stats``: inspect a prototype library."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer

from aloe.cli.options import ConfigOption, SetOption, parse_sets, user_errors

app = typer.Typer(
    help="Inspect a prototype library (built-in or a folder of POSCAR/CIF files).", no_args_is_help=True
)

SourceOption = Annotated[
    str | None, typer.Option("--source", "-s", help="'builtin', 'builtin:binary', or a folder of POSCAR/CIF.")
]


def _library(config, source, set_, progress=False):
    from aloe.generate.settings import GenerateSettings
    from aloe.generate.stage import load_library
    from aloe.settings import build_settings

    overrides = parse_sets(set_)
    overrides["prototypes.source"] = source
    settings = build_settings(GenerateSettings, config, overrides, verb="prototypes")
    return settings, load_library(settings, progress)


def _report_skipped(library) -> None:
    lines = library.report.lines()
    if lines:
        typer.echo(f"skipped {len(lines)} file(s):", err=True)
        for line in lines:
            typer.echo(f"  {line}", err=True)


@app.command("list")
def list_command(config: ConfigOption = None, source: SourceOption = None, set_: SetOption = None) -> None:
    """One line per prototype: name, sites, arity, placeholder formula, weight."""
    with user_errors():
        _, library = _library(config, source, set_)
        typer.echo(f"{'name':<60} {'sites':>5} {'arity':>5} {'formula':<14} {'weight':>10}")
        for p in library:
            weight = "-" if p.weight is None else f"{p.weight:.6g}"
            typer.echo(f"{p.name:<60} {p.n_sites:>5} {p.arity:>5} {p.formula:<14} {weight:>10}")
        typer.echo(f"{len(library)} prototypes from {library.source}")
        _report_skipped(library)


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Prototype name (see 'aloe prototypes list').")],
    config: ConfigOption = None,
    source: SourceOption = None,
    set_: SetOption = None,
) -> None:
    """Details of one prototype: lattice, sites, distinct occupations, POSCAR."""
    with user_errors():
        from pymatgen.io.vasp import Poscar

        from aloe.prototypes import distinct_occupations

        settings, library = _library(config, source, set_)
        proto = library[name]
        occ = settings.occupations
        perms = distinct_occupations(
            proto, ltol=occ.ltol, stol=occ.stol, angle_tol=occ.angle_tol, primitive_cell=occ.primitive_cell
        )
        structure = proto.to_structure()
        typer.echo(f"name:        {proto.name}")
        typer.echo(f"source:      {proto.source}")
        typer.echo(f"formula:     {proto.formula}  ({proto.n_sites} sites, arity {proto.arity})")
        typer.echo(f"weight:      {'-' if proto.weight is None else proto.weight}")
        typer.echo(
            f"space group: {structure.get_space_group_info()[0]} ({structure.get_space_group_info()[1]})"
        )
        for key, value in proto.metadata.items():
            typer.echo(f"{key + ':':<13}{value}")
        ph = proto.placeholders
        typer.echo(f"distinct occupations ({len(perms)}):")
        for k, perm in enumerate(perms):
            mapping = ", ".join(f"{ph[i]}->{ph[perm[i]]}" for i in range(proto.arity))
            typer.echo(f"  {k}: {mapping}")
        typer.echo(Poscar(structure, comment=proto.name).get_str().rstrip())


@app.command("stats")
def stats_command(
    config: ConfigOption = None,
    source: SourceOption = None,
    set_: SetOption = None,
    occupations: Annotated[
        bool, typer.Option(help="Also count distinct occupations (StructureMatcher).")
    ] = True,
) -> None:
    """Counts by arity and site count, distinct occupations, weights, skipped files."""
    with user_errors():
        from aloe.prototypes import distinct_occupations

        settings, library = _library(config, source, set_)
        by = Counter((p.arity, p.n_sites) for p in library)
        typer.echo(f"{len(library)} prototypes from {library.source}")
        for arity in sorted({a for a, _ in by}):
            row = "  ".join(f"{n}:{by[(arity, n)]}" for n in sorted(n for a, n in by if a == arity))
            typer.echo(
                f"  arity {arity}: {sum(v for (a, _), v in by.items() if a == arity):>4} prototypes; by sites {row}"
            )
        weights = [p.weight for p in library if p.weight is not None]
        if weights:
            typer.echo(
                f"  weights: {len(weights)} prototypes, min {min(weights):.6g}, max {max(weights):.6g}, "
                f"sum {sum(weights):.6g}"
            )
        if occupations:
            occ = settings.occupations
            hist = Counter()
            for p in library:
                hist[
                    (
                        p.arity,
                        len(
                            distinct_occupations(
                                p,
                                ltol=occ.ltol,
                                stol=occ.stol,
                                angle_tol=occ.angle_tol,
                                primitive_cell=occ.primitive_cell,
                            )
                        ),
                    )
                ] += 1
            for arity in sorted({a for a, _ in hist}):
                row = "  ".join(f"{k}:{hist[(arity, k)]}" for k in sorted(k for a, k in hist if a == arity))
                typer.echo(f"  arity {arity}: prototypes by number of distinct occupations {row}")
        _report_skipped(library)
