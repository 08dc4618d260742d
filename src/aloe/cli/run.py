"""``aloe run CONFIG.yaml``: the active-learning loop, the main job."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aloe.cli.options import (
    DryRunOption,
    ExecutorKindOption,
    OutputOption,
    ProgressOption,
    SchedulerOption,
    SetOption,
    WorkersOption,
    announce_run_folder,
    invocation,
    parse_sets,
    user_errors,
)

if TYPE_CHECKING:
    from aloe.loop.settings import RunConfig

HELP = (
    "Run the active-learning loop of a config (sections run, generate, screen, select, label, train): iteration "
    "after iteration generate -> screen -> select -> label -> train. Run it again on the same folder to resume."
)


def run_command(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Loop config (YAML), e.g. examples/quickstart.yaml.")],
    iterations: Annotated[int | None, typer.Option(help="Iterations (overrides run.iterations).")] = None,
    output: OutputOption = None,
    set_: SetOption = None,
    progress: ProgressOption = None,
    executor: ExecutorKindOption = None,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Run the active-learning loop."""
    with user_errors():
        from aloe.logs import echo, run_log
        from aloe.loop.loop import load_run_config, run_loop, selection_rate
        from aloe.runs import default_run_dir

        overrides = parse_sets(
            set_,
            {
                "run.iterations": iterations,
                "run.output": str(output) if output else None,
                "run.progress": progress,
                "executor.kind": executor,
                "executor.workers": workers,
                "executor.scheduler": scheduler,
            },
        )
        config_model = load_run_config(config, overrides)
        if dry_run:
            _dry_run(config, config_model)
            return
        if config_model.run.output is None:
            run = config_model.run.model_copy(update={"output": default_run_dir("run")})
            config_model = config_model.model_copy(update={"run": run})
        with run_log(config_model.run.output, command=invocation(ctx)):
            announce_run_folder(config_model.run.output)
            result = run_loop(config_model)
            echo(f"{result.stopped}")
            for record in result.iterations:
                lab = record.get("label", {}).get("counts", {})
                rate = selection_rate(record)
                picked = (
                    f"selected {record.get('select', {}).get('counts', {}).get('selected', 0)} "
                    f"({config_model.run.selection})"
                    if rate is None
                    else f"screened {record['screen']['counts'].get('structures', 0)}, selection rate {rate:.1%}"
                )
                echo(
                    f"[iter {record['iteration'] + 1}/{config_model.run.iterations}] {picked}, labelled "
                    f"{lab.get('labelled', 0)} ({lab.get('failed', 0)} failed)"
                )
            if result.report_path is not None:
                echo(f"report: {result.report_path}")
                html = result.report_path.with_suffix(".html")
                if html.exists():
                    echo(f"report (HTML): {html}")
            echo(f"summary: {result.summary_path}")


def _dry_run(path: Path, config: RunConfig) -> None:
    """Print what a run of ``config`` would do and where its work would run; start and write nothing."""
    from aloe.executors import describe_settings, render_job_script

    settings, run = config.executor, config.run
    folder = run.output if run.output is not None else "runs/run-<time>"
    typer.echo(
        f"{path}: valid; {run.iterations} iterations into {folder} (dry run: nothing started or written)"
    )
    typer.echo(f"executor: {describe_settings(settings)}")
    if settings.kind == "dask" and not settings.scheduler and settings.cluster.kind != "local":
        typer.echo(
            f"batch script of each of the {settings.cluster.jobs} {settings.cluster.kind} jobs "
            "(the scheduler address is filled in when the run starts):"
        )
        typer.echo(render_job_script(settings).rstrip("\n"))
    _echo_training(config)


def _echo_training(config: RunConfig) -> None:
    """The command each MACE member's training runs (data, E0s and elements are placeholders until labelled)."""
    import contextlib
    import io
    import shlex
    import warnings

    from aloe.train.settings import TrainSettings

    train = TrainSettings(**config.train)
    # mace's argument parser imports e3nn and cuequivariance, which print warnings: not aloe's messages
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        from aloe.train.stage import planned_command

        command = planned_command(train)
    where = {
        "local": "one process in its task",
        "torchrun": f"torchrun on its task's node, {train.gpus_per_member} GPU(s)",
        "slurm": f"a Slurm job of its own (srun), {train.gpus_per_member} GPU(s)"
        if train.device == "cuda"
        else "a Slurm job of its own (srun)",
    }[train.launcher]
    typer.echo(
        f"train: {train.committee_size} MACE members (preset {train.preset}), each in {where}; member 0 runs:"
    )
    typer.echo(shlex.join(command))


__all__ = ["HELP", "run_command"]
