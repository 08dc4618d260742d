"""Option types shared by every verb, and the error handling that turns AloeError into one line."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from aloe.errors import AloeError

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML settings file (a verb's section or the whole file); flags override it."
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override any setting: --set lattice.factor=0.92 (value parsed as YAML). Repeatable."
    ),
]
OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Run folder (default runs/<verb>-<time>).")
]
ProgressOption = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Progress bars (default: on a terminal).")
]
WorkersOption = Annotated[int | None, typer.Option(help="Worker processes.")]
ExecutorOption = Annotated[str | None, typer.Option(help="local, process or dask.")]
ExecutorKindOption = Annotated[
    Literal["local", "process", "dask"] | None,
    typer.Option(
        "--executor",
        help="Where work runs: local (this process), process (a pool of --workers local processes), dask (Dask "
        "distributed: --scheduler, or the cluster of the config's executor.cluster; a LocalCluster by default).",
    ),
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Check the config and show where work would run (the batch job script of a Slurm/PBS cluster); "
        "nothing is started or written.",
    ),
]
SchedulerOption = Annotated[str | None, typer.Option(help="Dask scheduler address.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda or auto.")]
BatchSizeOption = Annotated[int | None, typer.Option(help="Structures per forward pass.")]
ThreadsOption = Annotated[int | None, typer.Option(help="Torch threads per process.")]


def parse_sets(items: list[str] | None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a.b": 1, "c": ["x", "y"]}``; a malformed item is an AloeError.

    ``options`` (dotted key -> value of a dedicated command-line option) are merged on top; options left unset
    (``None``) do not erase a ``--set`` of the same key.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise AloeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lattice.factor=0.92")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise AloeError(f"--set {item!r}: value is not valid YAML") from None
    out.update({key: value for key, value in (options or {}).items() if value is not None})
    return out


def split_list(value: str | None) -> list[str] | None:
    """``"Fe,O Li"`` -> ``["Fe", "O", "Li"]`` (commas or spaces)."""
    if value is None:
        return None
    return [tok for tok in value.replace(",", " ").split() if tok]


def invocation(ctx: typer.Context) -> str:
    """The command as typed: ``sys.argv`` when run as ``aloe``, else rebuilt from the context's parameters."""
    if Path(sys.argv[0]).name == "aloe":
        return shlex.join(["aloe", *sys.argv[1:]])
    parts = ctx.command_path.split()
    for name, value in ctx.params.items():
        if value is None or value is False or value == [] or value == ():
            continue
        flag = "--" + name.rstrip("_").replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            for item in value if isinstance(value, list | tuple) else [value]:
                parts += [flag, str(item)]
    return shlex.join(parts)


#: The run folder of the command in progress (named in the message after Ctrl-C).
_CURRENT_RUN: dict[str, Path] = {}


def run_stage(
    ctx: typer.Context,
    model: type,
    config: Path | None,
    overrides: dict[str, Any],
    verb: str,
    stage: Any,
) -> Any:
    """Build a stage's settings (config file + options), name its run folder, announce it, run the stage.

    The stage runs inside the run folder's log (:func:`aloe.logs.run_log`): library warnings and output go to
    ``aloe.log`` there, the terminal shows aloe's messages and progress.
    """
    from aloe.logs import run_log
    from aloe.runs import default_run_dir
    from aloe.settings import absolute_paths, build_settings

    settings = build_settings(model, config, overrides, verb=verb)
    if settings.output is None:
        settings = settings.model_copy(update={"output": default_run_dir(verb)})
    settings = absolute_paths(settings)  # the executor's workers may run in another folder
    command = invocation(ctx)
    with run_log(settings.output, command=command):
        announce_run_folder(settings.output)
        from aloe.executors import stage_executor

        # The CLI owns the executor: opened from the stage's run options, closed when the stage returns.
        with stage_executor(None, settings) as executor:
            return stage(settings, command=command, executor=executor)


def announce_run_folder(path: Path) -> None:
    """Print the run folder before a long stage starts, and remember it for the interrupt message."""
    from aloe.logs import LOG_FILE, echo, log_open

    _CURRENT_RUN["path"] = Path(path)
    echo(f"run folder: {path}" + (f" (log: {Path(path) / LOG_FILE})" if log_open() else ""))


@contextlib.contextmanager
def _remember_interrupts() -> Iterator[dict[str, bool]]:
    """Note every Ctrl-C while raising ``KeyboardInterrupt`` as Python does.

    A ``KeyboardInterrupt`` raised while Python runs a finaliser (``__del__``, a weakref callback) is printed as
    "Exception ignored" and lost, and the command would go on and exit 0; the note lets :func:`user_errors` still
    end with status 130. Only Python's default handler in the main thread is replaced (restored on exit).
    """
    import signal
    import threading

    seen = {"interrupted": False}
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield seen
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        seen["interrupted"] = True
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print an :class:`AloeError` as one line on stderr and exit with status 2 (130 after Ctrl-C)."""
    try:
        with _remember_interrupts() as seen:
            yield
            if seen["interrupted"]:
                raise KeyboardInterrupt  # one that a finaliser swallowed on its way up
    except AloeError as exc:
        typer.echo(f"aloe: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        run = _CURRENT_RUN.get("path")
        hint = f"run the same command with --output {run} to resume" if run else "run the same command again"
        typer.echo(f"aloe: interrupted; finished chunks are kept: {hint}", err=True)
        raise typer.Exit(130) from None
