"""Entry point: ``aloe <verb>``; verbs follow the pipeline (only the ones built so far are listed)."""

from __future__ import annotations

import typer

from aloe import __version__
from aloe.cli import bench as bench_cli
from aloe.cli import data as data_cli
from aloe.cli import generate as generate_cli
from aloe.cli import label as label_cli
from aloe.cli import prototypes as prototypes_cli
from aloe.cli import run as run_cli
from aloe.cli import screen as screen_cli
from aloe.cli import select as select_cli
from aloe.cli import study as study_cli
from aloe.cli import train as train_cli

app = typer.Typer(
    name="aloe",
    help="Build MP-ALOE-style training data for universal interatomic potentials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(prototypes_cli.app, name="prototypes")
app.add_typer(data_cli.app, name="data")
app.command("generate", help=generate_cli.HELP)(generate_cli.generate_command)
app.command("screen", help=screen_cli.HELP)(screen_cli.screen_command)
app.command("select", help=select_cli.HELP)(select_cli.select_command)
app.command("label", help=label_cli.HELP)(label_cli.label_command)
app.command("train", help=train_cli.HELP)(train_cli.train_command)
app.command("run", help=run_cli.HELP)(run_cli.run_command)
app.add_typer(bench_cli.app, name="bench", help=bench_cli.HELP)
app.command("study", help=study_cli.HELP)(study_cli.study_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aloe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Build MP-ALOE-style training data for universal interatomic potentials."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
