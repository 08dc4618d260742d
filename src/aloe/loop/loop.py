"""``aloe run``: the active-learning loop, iteration after iteration, every stage resumable.

Run folder layout::

    config.yaml                   the config the loop was started with (a resumed run must use the same one)
    state.yaml                    which stage of which iteration has finished, with its summary file
    iter-00/generate ... iter-00/train    each stage's own run folder
    iter-00/report.md, report.html        the iteration's report (counts, selection rate, failures, errors, times)
    report.md, report.html, summary.yaml  the whole run

Iteration ``i``: generate (seed ``run.seed + i``) -> screen with the current committee -> select -> label -> train a
committee on every record so far (seed dataset included). That is ``run.selection: committee`` (MP-ALOE); with
``random`` an iteration is generate -> select (uniform random picks, seed ``run.seed + i``) -> label -> train, with
``diverse`` generate -> select (DIRECT) -> label -> train: neither screens, so neither needs a committee (and
committee 0 is benchmarked only when ``run.train_first`` trained one). ``run.max_label`` caps the picks of every
iteration (a list: iteration ``i``'s cap is item ``i``); ``run.train_seed`` gives every committee the same training
seed (default ``run.seed + i``). With a ``bench`` section, ``iter-XX/bench`` benchmarks committee ``XX`` (the one
iteration ``XX`` screens with; the last one, trained in the final iteration, gets the folder of the iteration after
it), and ``bench_iterations.md/.csv/.png`` show every metric across committees. The committee of iteration 0 is
``run.committee`` (the offline CHGNet trio by default) or, with ``run.train_first``, one trained on the seed dataset;
iteration ``i + 1`` uses iteration ``i``'s. A stage that finished is not run again; a stage that was killed is run
again on its own folder and resumes there, so a killed loop ends with the same dataset as one that was never killed.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aloe import layout
from aloe.errors import AloeError
from aloe.executors import Executor, open_executor
from aloe.loop.settings import STAGES, LoopSettings, RunConfig
from aloe.runs import claim_folder, default_run_dir, package_versions, plain_data, write_yaml_atomic
from aloe.settings import format_validation_error
from aloe.stagekit import stage_spec

CONFIG_FILE = layout.LOOP_CONFIG
STATE_FILE = layout.LOOP_STATE
#: Sections that may change when a loop is resumed: where the work runs does not change what it computes.
VOLATILE_SECTIONS = ("executor",)


@dataclass
class LoopResult:
    """What a loop run did."""

    run_dir: Path
    iterations: list[dict[str, Any]]
    stopped: str
    summary_path: Path
    report_path: Path | None


class LoopRun:
    """One loop run folder: its config, its state, and the stage runs of every iteration."""

    def __init__(
        self, config: RunConfig, run_dir: Path, executor: Executor | None = None, name: str | None = None
    ) -> None:
        self.config = config
        self.settings: LoopSettings = config.run
        self.path = run_dir
        #: The run's executor, handed to every stage (opened by :meth:`run` when none is given).
        self.executor = executor
        #: Put before the loop's progress tags (``[al iter 1/2]``) when it runs inside a study.
        self.name = name
        # Locked while the loop works here; each stage locks its own sub-folder as well (separate lock files).
        self._claim = claim_folder(self.path, CONFIG_FILE, "aloe run")
        weakref.finalize(self, self._claim.release)
        self._check_config()
        self.state: dict[str, Any] = self._load_state()

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def _check_config(self) -> None:
        data = self.config.model_dump(mode="json")
        for volatile in ("output", "progress", "report"):
            data["run"].pop(volatile, None)
        for section in VOLATILE_SECTIONS:
            data.pop(section, None)
        path = self.path / CONFIG_FILE
        if path.exists():
            old = yaml.safe_load(path.read_text()) or {}
            if isinstance(old.get("run"), dict):
                # A folder started before a run setting existed was started with its default.
                defaults = LoopSettings().model_dump(mode="json")
                old["run"] = {**{k: v for k, v in defaults.items() if k in data["run"]}, **old["run"]}
            if old != data:
                changed = sorted(k for k in set(old) | set(data) if old.get(k) != data.get(k))
                raise AloeError(
                    f"{self.path}: this loop was started with another config (sections differ: "
                    f"{', '.join(changed)}); use a new output folder"
                )
        else:
            write_yaml_atomic(path, data)

    def _load_state(self) -> dict[str, Any]:
        path = self.path / STATE_FILE
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {"iterations": {}}

    def _mark(self, it: int, stage: str, info: dict[str, Any]) -> None:
        self.state.setdefault("iterations", {}).setdefault(it, {})[stage] = info
        write_yaml_atomic(self.path / STATE_FILE, self.state)

    def _tag(self, text: str) -> str:
        """``[text]``, or ``[name text]`` for a named loop (an arm of a study)."""
        return f"[{self.name} {text}]" if self.name else f"[{text}]"

    def done(self, it: int, stage: str) -> dict[str, Any] | None:
        """The recorded outcome of a finished stage, or ``None``."""
        return (self.state.get("iterations", {}).get(it) or {}).get(stage)

    def stage_dir(self, it: int | str, stage: str) -> Path:
        """Run folder of ``stage`` in iteration ``it``."""
        return layout.stage_dir(self.path, it, stage)

    # ---- stages -----------------------------------------------------------------------------------------
    def _stage_settings(self, stage: str, it: int, **fixed: Any) -> Any:
        model = stage_spec(stage).settings_model()
        data = dict(getattr(self.config, stage))
        data.update({k: v for k, v in fixed.items() if v is not None})
        data["output"] = str(self.stage_dir(it, stage))
        if self.settings.progress is not None and "progress" in model.model_fields:
            data["progress"] = self.settings.progress
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise AloeError(format_validation_error(exc, f"config section '{stage}'")) from None

    def validate_sections(self) -> None:
        """Validate every stage section before anything runs (a typo must not surface after an hour of DFT)."""
        validate_stage_sections(self.config)

    def run_stage(self, it: int, stage: str, settings: Any, tag: str | None = None) -> dict[str, Any]:
        """Run (or resume) one stage unless it finished before; returns its recorded outcome."""
        from aloe.logs import echo, format_seconds
        from aloe.loop.report import stage_headline
        from aloe.progress import progress_prefix

        tag = self._tag(tag or f"iter {it + 1}/{self.settings.iterations}")
        info = self.done(it, stage)
        if info is not None:
            echo(f"{tag} {stage}: finished in an earlier run ({stage_headline(stage, info['counts'])})")
            return info
        echo(f"{tag} {stage} ... ({self.stage_dir(it, stage)})")
        t0 = time.perf_counter()
        with progress_prefix(f"{tag} "):
            result = stage_spec(stage).run()(
                settings, command=f"aloe run (iteration {it}, {stage})", executor=self.executor
            )
        info = {
            "folder": str(self.stage_dir(it, stage).relative_to(self.path)),
            "summary": str(Path(result.summary_path).relative_to(self.path)),
            "seconds": round(time.perf_counter() - t0, 2),
            "counts": plain_data(result.counts),
        }
        self._mark(it, stage, info)
        echo(
            f"{tag} {stage}: done in {format_seconds(info['seconds'])} "
            f"({stage_headline(stage, info['counts'])})"
        )
        return info

    def committee_for(self, it: int) -> list[str]:
        """Iteration ``it``'s committee: the first one, or the models trained in iteration ``it - 1``."""
        if it == 0:
            if self.settings.train_first:
                return self._models(self.stage_dir("seed", "train"))
            return list(self.settings.committee)
        return self._models(self.stage_dir(it - 1, "train"))

    @staticmethod
    def _models(train_dir: Path) -> list[str]:
        models = layout.trained_models(train_dir)
        if not models:
            raise AloeError(f"{train_dir}: no trained models to use as the committee")
        return [str(m) for m in models]

    def dataset(self, it: int) -> list[str]:
        """Labelled data for training after iteration ``it``: the seed dataset plus every label run so far."""
        runs = [str(p) for p in self.settings.seed_dataset]
        for j in range(it + 1):
            folder = self.stage_dir(j, "label")
            if layout.records_dir(folder).is_dir():
                runs.append(str(folder))
        return runs

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        """Run every iteration (resuming finished stages) on one executor; write reports and the run summary.

        The executor is the one given to the constructor, or one opened from the config's ``executor`` section
        for the whole run and closed at its end.
        """
        self.validate_sections()
        if self.executor is not None:
            return self._run()
        from aloe.logs import echo

        with open_executor(self.config.executor, announce=echo) as executor:
            self.executor = executor
            try:
                return self._run()
            finally:
                self.executor = None

    # Per stage of an iteration: the settings the loop fills in (from the folders of the stages before it).
    def _inputs_generate(self, it: int) -> dict[str, Any]:
        return {"seed": self.settings.seed + it}

    def _inputs_screen(self, it: int) -> dict[str, Any]:
        return {"input": str(self.stage_dir(it, "generate")), "committee": self.committee_for(it)}

    def _inputs_select(self, it: int) -> dict[str, Any]:
        if self.settings.selection == "committee":
            return {"input": str(self.stage_dir(it, "screen"))}
        inputs: dict[str, Any] = {"input": str(self.stage_dir(it, "generate"))}
        if self.settings.selection == "random":
            inputs.update(mode="uniform", seed=self.settings.seed + it)
        else:
            inputs["mode"] = "direct"
        return inputs

    def _inputs_label(self, it: int) -> dict[str, Any]:
        return {"input": str(self.stage_dir(it, "select"))}

    def _inputs_train(self, it: int) -> dict[str, Any]:
        return {"inputs": self.dataset(it), "seed": self.settings.training_seed(it)}

    def _inputs_bench(self, it: int) -> dict[str, Any]:
        return {"potentials": self.committee_for(it)}

    def bench_committee(self, k: int) -> dict[str, Any] | None:
        """Benchmark committee ``k`` (0: the first one; ``k``: trained in iteration ``k - 1``) in ``iter-k/bench``."""
        if self.config.bench is None:
            return None
        if k == 0 and self.settings.selection != "committee" and not self.settings.train_first:
            return None  # no committee 0: nothing screens, and none was trained on the seed dataset
        tag = f"committee {k}"
        return self.run_stage(k, "bench", self.settings_for("bench", k), tag=tag)

    def settings_for(self, stage: str, it: int) -> Any:
        """The settings of ``stage`` in iteration ``it``: its config section plus what the loop fills in."""
        settings = self._stage_settings(stage, it, **getattr(self, f"_inputs_{stage}")(it))
        budget = self.settings.budget(it) if stage == "select" else None
        if budget is not None:
            direct = settings.direct.model_copy(update={"max_selected": budget})
            settings = settings.model_copy(update={"direct": direct})
        return settings

    def _stop_after(self, stage: str, it: int, record: dict[str, Any], iterations: list) -> str | None:
        """Why the loop stops after ``stage`` of iteration ``it`` (``None``: it goes on)."""
        counts = record[stage]["counts"]
        if stage == "screen" and int(counts.get("outcomes", {}).get("selected", 0)) == 0:
            return f"iteration {it}: the committee selected no structure"
        if stage == "select" and int(counts.get("selected", 0)) == 0:
            return f"iteration {it}: select picked no structure"
        if stage == "label":
            labelled = sum(
                int((r.get("label") or {}).get("counts", {}).get("records", 0)) for r in [*iterations, record]
            )
            if labelled == 0 and not self.settings.seed_dataset:
                return (
                    f"iteration {it}: no structure could be labelled "
                    f"(see {self.stage_dir(it, 'label')}/failures)"
                )
        return None

    def _train_seed_committee(self) -> None:
        s = self.settings
        if not s.seed_dataset:
            raise AloeError(
                "run.train_first needs run.seed_dataset (labelled data to train the first committee)"
            )
        seed_train = self.stage_dir("seed", "train")
        if layout.trained_models(seed_train):
            return
        from aloe.logs import echo
        from aloe.progress import progress_prefix

        data = dict(self.config.train)
        data.update(
            {
                "inputs": [str(p) for p in s.seed_dataset],
                "seed": s.training_seed(None),
                "output": str(seed_train),
            }
        )
        spec = stage_spec("train")
        echo(f"{self._tag('seed')} train: the first committee, on run.seed_dataset ({seed_train})")
        with progress_prefix(f"{self._tag('seed')} "):
            spec.run()(
                spec.settings_model().model_validate(data),
                command="aloe run (seed committee)",
                executor=self.executor,
            )

    def _run(self) -> LoopResult:
        s = self.settings
        t_start = time.perf_counter()
        stopped = f"finished {s.iterations} iterations"
        if s.train_first:
            self._train_seed_committee()
        iterations: list[dict[str, Any]] = []
        benches: dict[int, dict[str, Any]] = {}
        for it in range(s.iterations):
            record: dict[str, Any] = {"iteration": it}
            bench = self.bench_committee(it)
            if bench is not None:
                record["bench"] = benches[it] = bench
            halt = None
            for stage in s.stages():
                record[stage] = self.run_stage(it, stage, self.settings_for(stage, it))
                halt = self._stop_after(stage, it, record, iterations)
                if halt:
                    break
            if "train" in record:
                record["dataset_runs"] = self.dataset(it)
            iterations.append(record)
            self._report(it, record)
            if halt:
                stopped = halt
                break
            rate = selection_rate(record)
            if rate is not None and rate < s.min_selection_rate:
                stopped = f"iteration {it}: selection rate {rate:.2%} < {s.min_selection_rate:.2%}"
                break
        if iterations and "train" in iterations[-1]:
            last = iterations[-1]["iteration"] + 1
            bench = self.bench_committee(last)
            if bench is not None:
                benches[last] = bench
        bench_report = self._bench_report(benches)
        summary = {
            "verb": "run",
            "run_folder": str(self.path),
            "stopped": stopped,
            "seconds": round(time.perf_counter() - t_start, 2),
            "executor": self.executor.describe() if self.executor is not None else "in this process",
            "iterations": [_iteration_summary(r) for r in iterations],
            "selection": s.selection,
            "final_committee": self._final_committee(iterations),
            "versions": package_versions(),
        }
        if benches:
            summary["bench"] = {
                f"committee {k}": {"folder": info["folder"], "summary": info["summary"]}
                for k, info in benches.items()
            }
            summary["bench_report"] = {k: str(v) for k, v in bench_report.items()}
        summary_path = self.path / "summary.yaml"
        write_yaml_atomic(summary_path, plain_data(summary))
        report = None
        if s.report != "none":
            from aloe.loop.report import write_run_report

            report = write_run_report(self, iterations, summary, html=s.report == "markdown+html")
        return LoopResult(self.path, iterations, stopped, summary_path, report)

    def _bench_report(self, benches: dict[int, dict[str, Any]]) -> dict[str, Path]:
        """The metrics of every benchmarked committee, committee by committee.

        ``bench_metrics.parquet`` (the committees' long tables in one, ``group`` = ``committee k``) and
        ``bench_iterations.md/.csv/.png``; each committee's metrics are read from its bench run's long table.
        """
        if not benches:
            return {}
        from aloe.bench.report.tables import nested_metrics, write_metrics_table
        from aloe.loop.bench_report import write_bench_iterations

        per_committee: dict[int, dict[str, Any]] = {}
        every: list[dict[str, Any]] = []
        for k, info in sorted(benches.items()):
            rows = layout.bench_metrics(self.path / info["folder"]).to_pylist()
            per_committee[k] = nested_metrics(rows)
            every += [{**r, "group": f"committee {k}"} for r in rows]
        paths = write_bench_iterations(per_committee, self.path)
        paths["metrics"] = write_metrics_table(every, self.path / layout.LOOP_BENCH_METRICS)
        return paths

    def _final_committee(self, iterations: list[dict[str, Any]]) -> list[str]:
        for record in reversed(iterations):
            if "train" in record:
                return [str(p) for p in layout.trained_models(self.path / record["train"]["folder"])]
        return []

    def _report(self, it: int, record: dict[str, Any]) -> None:
        if self.settings.report == "none":
            return
        from aloe.loop.report import write_iteration_report

        write_iteration_report(self, it, record, html=self.settings.report == "markdown+html")


def run_loop(config: RunConfig, executor: Executor | None = None) -> LoopResult:
    """Run the loop of ``config`` in ``config.run.output`` (or a new ``runs/run-<time>``).

    ``executor``: run every stage there (the caller keeps it open); default: the config's ``executor`` section,
    opened for the run and closed at its end.
    """
    output = config.run.output or default_run_dir("run")
    return LoopRun(config, Path(output), executor).run()


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a loop config (YAML with sections run, generate, screen, select, label, train) and validate it.

    Raises
    ------
    AloeError
        One line naming the file, the section and the key of the first unknown or ill-typed setting (every stage
        section is checked here, before any folder or file is written).
    """
    from aloe.settings import build_settings

    config = build_settings(RunConfig, path, overrides)
    validate_stage_sections(config, str(path))
    return config


def validate_stage_sections(config: RunConfig, source: str | None = None) -> None:
    """Validate every stage section of ``config`` with its stage's settings model (nothing is written).

    Parameters
    ----------
    config
        The loop config.
    source
        The config file, named in the message.

    Raises
    ------
    AloeError
        ``<file>: section '<stage>': key '<key>': <problem>`` for the first section that does not validate.
    """
    where = f"{source}: section" if source else "config section"
    for stage in (*STAGES, "bench"):
        section = getattr(config, stage)
        if section is None:  # an optional stage that is not configured
            continue
        if stage == "select" and config.run.selection != "committee" and "mode" in section:
            wanted = "uniform" if config.run.selection == "random" else "direct"
            if section["mode"] != wanted:
                raise AloeError(
                    f"{where} 'select': key 'mode': run.selection {config.run.selection!r} selects in mode "
                    f"{wanted!r}; leave 'mode' out"
                )
        for key in ("executor", "scheduler"):
            if key in section:
                raise AloeError(
                    f"{where} '{stage}': key '{key}': in a loop every stage runs on the run's executor; set it "
                    "in section 'executor' (kind, workers, scheduler, cluster)"
                )
        spec = stage_spec(stage)
        data = {**section, **spec.loop_inputs, "output": None}
        try:
            spec.settings_model().model_validate(data)
        except ValidationError as exc:
            raise AloeError(format_validation_error(exc, f"{where} '{stage}'")) from None


# ---- helpers ------------------------------------------------------------------------------------------------
def selection_rate(record: dict[str, Any]) -> float | None:
    """The screen's selection rate of an iteration; ``None`` when it did not screen (selection random/diverse)."""
    screen = record.get("screen")
    if screen is None:
        return None
    return float(screen["counts"].get("selection_rate", 0.0))


def _iteration_summary(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"iteration": record["iteration"]}
    for stage in STAGES:
        if stage in record:
            out[stage] = {"seconds": record[stage]["seconds"], "counts": record[stage]["counts"]}
    return out


__all__ = ["LoopResult", "LoopRun", "load_run_config", "run_loop"]
