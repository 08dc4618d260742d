"""``aloe study``: does the loop's data make better potentials? The MP-ALOE paper's comparison, for one chemistry.

The study composes the existing stages (through the stage table and the loop) on the caller's executor:

1. ``test/``: the held-out test set, ``aloe bench reference`` with the study's labeler (relaxed elemental, binary
   and ternary crystals of the elements, their displaced supercells, the isolated atoms);
2. ``seed/``: ``seed_structures`` random candidates, labelled (``generate`` with seed ``seed + 1000``, ``label``);
3. the arms, each a training dataset at the same label budget and committees trained with the same preset,
   epochs and seeds:

   - ``arms/al``: the loop (``aloe run``): its first committee trained on the seed set, then ``iterations`` of
     generate -> screen (QBC) -> select (DIRECT) -> label -> train, ``per_iteration`` labels each;
   - ``arms/random``: the loop with ``selection: random``: the same candidates (same generate seeds), as many
     uniform picks per iteration as ``al`` labelled, no committee, no DIRECT; trained on the seed set plus them;
   - ``arms/near-eq``: one loop iteration with ``selection: diverse``: the near-equilibrium sampler (relax, short
     NVT MD at a few temperatures with a cheap potential; ``generate.mode: near-eq``), DIRECT down to ``al``'s whole
     budget, labelled, trained;
   - ``arms/combined``: a committee trained on ``al``'s data and ``near-eq``'s together;

4. ``heldout/``: the test set without the structures that match a training structure of any arm (pymatgen
   ``StructureMatcher``; ``leakage.json`` lists every match, which are dropped and counted);
5. ``bench/<arm>/committee-<k>``: every member of every final committee (and, with ``learning_curves``, of every
   committee of ``al`` and ``random``) on the four benchmarks, against ``heldout/``; MD on random mixtures of the
   study's elements;
6. ``datasets/<arm>.extxyz`` (energies, forces, stresses) and ``models/<arm>/``; the report (:mod:`aloe.study.report`).

Every step resumes in its own folder (a killed study run again continues where it stopped; the report is rebuilt
from the folders, so it is the same). ``state.yaml`` records the finished steps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aloe import layout
from aloe.errors import AloeError
from aloe.executors import Executor, stage_executor
from aloe.runs import open_stage_run, plain_data, write_yaml_atomic
from aloe.settings import format_validation_error
from aloe.stagekit import StageResult, Timings, stage_spec
from aloe.study.settings import StudySettings

#: Folders of a study run (their names live in :mod:`aloe.layout`).
TEST_DIR = layout.STUDY_TEST
HELDOUT_DIR = layout.STUDY_HELDOUT
SEED_DIR = layout.STUDY_SEED
ARMS_DIR = layout.STUDY_ARMS
BENCH_DIR = layout.STUDY_BENCH
DATASETS_DIR = layout.STUDY_DATASETS
MODELS_DIR = layout.STUDY_MODELS
STATE_FILE = layout.STUDY_STATE
#: Offset of the seed set's generate seed from the study's (the loops' iterations use seed, seed + 1, ...).
SEED_SET_OFFSET = 1000


@dataclass
class Committee:
    """One trained committee of an arm, with the data it learned from.

    Attributes
    ----------
    arm
        The arm's name.
    index
        0 for the first committee of ``al`` (the seed set's), ``k`` for the committee trained in iteration
        ``k - 1``; the final committee of ``near-eq`` and ``combined`` is 1.
    train_dir
        The train run folder (its ``models/`` hold the members).
    datasets
        The label run folders it learned from.
    """

    arm: str
    index: int
    train_dir: Path
    datasets: list[Path] = field(default_factory=list)

    @property
    def models(self) -> list[Path]:
        """The member model files, in member order."""
        return layout.trained_models(self.train_dir)


class Study:
    """One study run folder and the work in it (see the module docstring)."""

    def __init__(self, settings: StudySettings, path: Path, executor: Executor) -> None:
        self.settings = settings
        self.path = path
        self.executor = executor
        self.state: dict[str, Any] = _read_yaml(path / STATE_FILE) or {}
        self.timings = Timings()

    # ---- bookkeeping --------------------------------------------------------------------------------------------
    def _mark(self, step: str, info: Any) -> None:
        self.state[step] = plain_data(info)
        write_yaml_atomic(self.path / STATE_FILE, self.state)

    def _step(self, name: str) -> Any:
        from aloe.logs import echo

        echo(f"[study] {name} ...")
        return self.timings(name)

    def _run_stage(self, stage: str, data: dict[str, Any], output: Path, tag: str) -> Any:
        """Run (or resume) one registered stage in ``output``; ``tag`` prefixes its progress lines."""
        from aloe.progress import progress_prefix

        spec = stage_spec(stage)
        data = {**data, "output": str(output)}
        if self.settings.progress is not None:
            data["progress"] = self.settings.progress
        try:
            settings = spec.settings_model().model_validate(data)
        except ValidationError as exc:
            raise AloeError(format_validation_error(exc, f"study section '{stage}'")) from None
        with progress_prefix(f"{tag} "):
            return spec.run()(settings, command=f"aloe study ({tag} {stage})", executor=self.executor)

    def _run_loop(self, arm: str, run: dict[str, Any], sections: dict[str, Any]) -> Any:
        """Run (or resume) an arm's loop in ``arms/<arm>``."""
        from aloe.loop.loop import LoopRun
        from aloe.loop.settings import RunConfig

        path = self.path / ARMS_DIR / arm
        run = {**run, "output": str(path), "report": "markdown"}
        if self.settings.progress is not None:
            run["progress"] = self.settings.progress
        try:
            config = RunConfig.model_validate({"run": run, **sections})
        except ValidationError as exc:
            raise AloeError(format_validation_error(exc, f"study arm '{arm}'")) from None
        return LoopRun(config, path, self.executor, name=arm).run()

    # ---- sections the study fills in ---------------------------------------------------------------------------
    def generate_section(self, **extra: Any) -> dict[str, Any]:
        """The generate section with the study's elements (``extra``: the seed, the sample, the mode ...)."""
        return {**self.settings.generate, "elements": list(self.settings.elements), **extra}

    def label_section(self) -> dict[str, Any]:
        """The label section: the ground truth of every arm and of the test set."""
        return dict(self.settings.label)

    def train_section(self) -> dict[str, Any]:
        """The train section with the study's training seed (the same in every arm)."""
        return {**self.trained(), "seed": self.settings.seed}

    def trained(self) -> dict[str, Any]:
        """The train section as every arm uses it.

        A member killed mid-training starts again from the beginning: the same model as an uninterrupted run, so
        a killed study gives the same tables.
        """
        return {"resume": "restart", **self.settings.train}

    def screen_section(self) -> dict[str, Any]:
        """The screen section of ``al``: total energies by default (one functional, one energy scale)."""
        # A committee of one functional and one energy scale: the total energy needs no elemental references.
        return {"energy_basis": "total", "compute_references": False, **self.settings.screen}

    def loop_sections(self, **generate: Any) -> dict[str, Any]:
        """The stage sections of an arm's loop config (``generate``: what the arm changes in its generate section)."""
        return {
            "generate": self.generate_section(**generate),
            "screen": self.screen_section(),
            "select": dict(self.settings.select),
            "label": self.label_section(),
            "train": self.trained(),
        }

    # ---- 1. the test set ---------------------------------------------------------------------------------------------
    def test_set(self) -> Path:
        """Make (or resume) the test set with ``aloe bench reference`` and the study's labeler."""
        label = self.label_section()
        data = {
            **self.settings.reference,
            "elements": list(self.settings.elements),
            "labeler": label.get("labeler", "emt"),
        }
        for backend in ("gpaw", "vasp", "emt"):
            if backend in label:
                data[backend] = label[backend]
        with self._step("test set"):
            self._run_stage("bench-reference", data, self.path / TEST_DIR, "[test set]")
        return self.path / TEST_DIR

    # ---- 2. the seed set -------------------------------------------------------------------------------------
    def seed_set(self) -> Path:
        """Make (or resume) the seed set: ``seed_structures`` random candidates, labelled."""
        s = self.settings
        with self._step("seed set"):
            generate = self.generate_section(seed=s.seed + SEED_SET_OFFSET, sample=s.seed_structures)
            self._run_stage("generate", generate, self.path / SEED_DIR / "generate", "[seed]")
            label = {**self.label_section(), "input": str(self.path / SEED_DIR / "generate")}
            self._run_stage("label", label, self.path / SEED_DIR / "label", "[seed]")
        return self.path / SEED_DIR / "label"

    # ---- 3. the arms -------------------------------------------------------------------------------------------
    def arm_al(self) -> list[Committee]:
        """The ``al`` arm: the loop with QBC and DIRECT from a committee trained on the seed set."""
        s = self.settings
        run = {
            "iterations": s.iterations,
            "seed_dataset": [str(self.path / SEED_DIR / "label")],
            "train_first": True,
            "max_label": s.per_iteration,
            "seed": s.seed,
            "train_seed": s.seed,
            "selection": "committee",
        }
        self._run_loop("al", run, self.loop_sections())
        return self.loop_committees("al", first=True)

    def arm_random(self) -> list[Committee]:
        """The ``random`` arm: the same candidates, as many uniform picks per iteration as ``al`` labelled."""
        s = self.settings
        # as many picks per iteration as al labelled (al may have stopped early: as many iterations, too)
        budgets = [max(1, n) for n in self.labelled_per_iteration("al")] if "al" in s.arms else []
        budgets = budgets or [s.per_iteration] * s.iterations
        run = {
            "iterations": len(budgets),
            "seed_dataset": [str(self.path / SEED_DIR / "label")],
            "max_label": budgets,
            "seed": s.seed,
            "train_seed": s.seed,
            "selection": "random",
        }
        self._run_loop("random", run, self.loop_sections())
        return self.loop_committees("random", first=False)

    def arm_near_eq(self) -> list[Committee]:
        """The ``near-eq`` arm: MD frames of relaxed structures, DIRECT down to ``al``'s whole budget."""
        s = self.settings
        budget = max(1, self.labelled_total("al") if "al" in s.arms else s.budget())
        run = {
            "iterations": 1,
            "max_label": budget,
            "seed": s.seed,
            "train_seed": s.seed,
            "selection": "diverse",
        }
        sections = self.loop_sections(mode="near-eq", near_eq=dict(s.near_eq), sample=s.near_eq_starts)
        # DIRECT fills the budget: up to the whole budget per cluster, picked round-robin over the clusters (with
        # MP-ALOE's k = 5 a few clusters would leave the arm short of the others' budget)
        direct = dict(sections["select"].get("direct", {}))
        direct["k"] = max(int(direct.get("k", 5)), budget)
        sections["select"] = {**sections["select"], "direct": direct}
        self._run_loop("near-eq", run, sections)
        return self.loop_committees("near-eq", first=False)

    def arm_combined(self) -> list[Committee]:
        """The ``combined`` arm: a committee trained on the data of ``al`` and ``near-eq`` together."""
        data = self.arm_datasets("al") + self.arm_datasets("near-eq")
        train = {**self.train_section(), "inputs": [str(p) for p in data]}
        output = self.path / ARMS_DIR / "combined" / "train"
        self._run_stage("train", train, output, "[combined]")
        return [Committee("combined", 1, output, data)]

    # ---- what the arms hold --------------------------------------------------------------------------------------
    def loop_dir(self, arm: str) -> Path:
        """The loop run folder of an arm."""
        return self.path / ARMS_DIR / arm

    def loop_iterations(self, arm: str) -> list[int]:
        """Iterations of an arm's loop that finished training, in order."""
        state = _read_yaml(self.loop_dir(arm) / layout.LOOP_STATE) or {}
        done = state.get("iterations", {}) or {}
        return sorted(int(it) for it, stages in done.items() if "train" in (stages or {}))

    def arm_datasets(self, arm: str) -> list[Path]:
        """The label run folders an arm's final committee learned from."""
        if arm == "combined":
            return self.arm_datasets("al") + self.arm_datasets("near-eq")
        folders = [self.path / SEED_DIR / "label"] if arm in ("al", "random") else []
        for it in self.loop_iterations(arm):
            folder = layout.stage_dir(self.loop_dir(arm), it, "label")
            if layout.records_dir(folder).is_dir():
                folders.append(folder)
        return folders

    def labelled_per_iteration(self, arm: str) -> list[int]:
        """Structures labelled in each iteration of an arm's loop."""
        return [
            _count_records(layout.stage_dir(self.loop_dir(arm), it, "label"))
            for it in self.loop_iterations(arm)
        ]

    def labelled_total(self, arm: str) -> int:
        """Labelled structures in an arm's final training data (seed set included)."""
        return sum(_count_records(p) for p in self.arm_datasets(arm))

    def loop_committees(self, arm: str, first: bool) -> list[Committee]:
        """The committees of an arm's loop: the first one (``iter-seed``, when ``first``), then one per iteration."""
        out: list[Committee] = []
        seed = self.path / SEED_DIR / "label"
        if first:
            out.append(Committee(arm, 0, layout.stage_dir(self.loop_dir(arm), "seed", "train"), [seed]))
        datasets = [seed] if arm in ("al", "random") else []
        for k, it in enumerate(self.loop_iterations(arm), start=1):
            label = layout.stage_dir(self.loop_dir(arm), it, "label")
            if layout.records_dir(label).is_dir():
                datasets = [*datasets, label]
            out.append(Committee(arm, k, layout.stage_dir(self.loop_dir(arm), it, "train"), list(datasets)))
        return out

    # ---- 4. leakage ------------------------------------------------------------------------------------------------
    def heldout(self, committees: Iterable[Committee]) -> dict[str, Any]:
        """Match the test set against every committee's training data; write the held-out set."""
        from aloe.study.leakage import write_heldout_set

        training = sorted({p for c in committees for p in c.datasets})
        with self._step("leakage check"):
            report = write_heldout_set(
                self.path / TEST_DIR, training, self.path / HELDOUT_DIR, self.settings.leakage, self.path
            )
        self._mark("leakage", {k: v for k, v in report.items() if k != "matches"})
        return report

    # ---- 5. benchmarks ----------------------------------------------------------------------------------------------
    def bench_dir(self, committee: Committee) -> Path:
        """The bench run folder of a committee."""
        return self.path / BENCH_DIR / committee.arm / f"committee-{committee.index}"

    def bench(self, committee: Committee) -> Path:
        """Benchmark every member of a committee against the held-out set (MD on mixtures of the elements)."""
        models = committee.models
        if not models:
            raise AloeError(f"{committee.train_dir}: no trained models (arm {committee.arm})")
        bench = dict(self.settings.bench)
        mixtures = {**bench.get("mixtures", {}), "elements": list(self.settings.elements)}
        mixtures.setdefault("n_elements", min(len(self.settings.elements), 3))
        data = {
            **bench,
            "potentials": [str(m) for m in models],
            "structures": str(self.path / HELDOUT_DIR),
            "mixtures": mixtures,
        }
        out = self.bench_dir(committee)
        self._run_stage("bench", data, out, f"[{committee.arm} committee {committee.index}]")
        return out

    # ---- 6. products ---------------------------------------------------------------------------------------------------
    def export(self, finals: dict[str, Committee]) -> dict[str, Any]:
        """Each arm's dataset as extxyz (energies, forces, stresses) and its final models, copied."""
        from aloe.data.formats import read_records, write_records

        out: dict[str, Any] = {}
        for arm, committee in finals.items():
            path = self.path / DATASETS_DIR / f"{arm}.extxyz"
            if not path.exists():
                records = (doc for folder in committee.datasets for doc in read_records(folder))
                write_records(records, path)
            models = self.path / MODELS_DIR / arm
            models.mkdir(parents=True, exist_ok=True)
            for model in committee.models:
                target = models / model.name
                if not target.exists():
                    shutil.copy2(model, target)
            out[arm] = {
                "dataset": str(path.relative_to(self.path)),
                "models": str(models.relative_to(self.path)),
            }
        return out


def budget_of(datasets: Iterable[Path]) -> dict[str, int]:
    """Labelled structures and atoms of some label run folders."""
    from aloe.data.formats import read_records

    structures = atoms = 0
    for folder in datasets:
        for doc in read_records(folder):
            structures += 1
            atoms += len(doc["structure"]["sites"])
    return {"structures": structures, "atoms": atoms}


def _count_records(folder: Path) -> int:
    if not layout.records_dir(folder).is_dir():
        return 0
    from aloe.data.formats import read_records

    return sum(1 for _ in read_records(folder))


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise AloeError(f"{path}: unreadable YAML") from None


# ---- checks before anything is written ---------------------------------------------------------------------------------
def check_config(settings: StudySettings) -> None:
    """Refuse a study that cannot run, in one line, before any folder is made.

    Every stage section validates with the stage's settings model (with stand-ins for what the study fills in);
    the labeler knows every element; the test set would hold structures.
    """
    stand_in = {"output": None}
    s = settings
    checks = [
        ("generate", {**s.generate, "elements": s.elements, **stand_in}),
        (
            "generate",
            {**s.generate, "elements": s.elements, "mode": "near-eq", "near_eq": s.near_eq, **stand_in},
        ),
        ("screen", {"energy_basis": "total", **s.screen, "input": ".", "committee": ["emt"], **stand_in}),
        ("select", {**s.select, "input": ".", **stand_in}),
        ("label", {**s.label, "input": ".", **stand_in}),
        ("train", {**s.train, "inputs": ["."], **stand_in}),
        ("bench", {**s.bench, "potentials": ["emt"], "structures": ".", **stand_in}),
        (
            "bench-reference",
            {**s.reference, "elements": s.elements, "labeler": s.label.get("labeler", "emt"), **stand_in},
        ),
    ]
    for stage, data in checks:
        section = {"bench-reference": "reference"}.get(stage, stage)
        if stage == "generate" and "mode" in data and "near-eq" not in s.arms:
            continue
        try:
            stage_spec(stage).settings_model().model_validate(data)
        except ValidationError as exc:
            raise AloeError(format_validation_error(exc, f"study section '{section}'")) from None
    labeler = s.label.get("labeler", "emt")
    if labeler == "emt":
        from aloe.label.emt import EMT_ELEMENTS

        lacking = [e for e in s.elements if e not in EMT_ELEMENTS]
        if lacking:
            raise AloeError(
                f"study: the labeler emt has no parameters for {', '.join(lacking)} (EMT knows "
                f"{', '.join(sorted(EMT_ELEMENTS))}); choose other elements or another labeler"
            )
    from aloe.bench.reference import BenchReferenceSettings, starting_crystals

    reference = BenchReferenceSettings.model_validate(
        {**s.reference, "elements": s.elements, "labeler": labeler, "output": None}
    )
    if not [c for c in starting_crystals(reference) if c[1] is not None]:
        raise AloeError("study: the test set would hold no structures (section 'reference')")
    _check_candidate_space(s)


#: Candidate spaces up to this size are counted before a study starts (a count scans the space once).
SPACE_CHECK_LIMIT = 2_000_000


def _check_candidate_space(s: StudySettings) -> None:
    """Refuse samples the candidate space cannot give (found before any DFT, not in the middle of an arm)."""
    from aloe.generate.settings import GenerateSettings
    from aloe.generate.stage import load_space

    wanted = [("seed_structures", s.seed_structures, "default")]
    sample = s.generate.get("sample")
    if sample is not None and {"al", "random"} & set(s.arms):
        wanted.append(("generate.sample", int(sample), "default"))
    if "near-eq" in s.arms:
        wanted.append(("near_eq_starts", s.near_eq_starts, "near-eq"))
    for mode in dict.fromkeys(m for _, _, m in wanted):
        extra = {"mode": "near-eq", "near_eq": s.near_eq} if mode == "near-eq" else {}
        settings = GenerateSettings.model_validate(
            {**s.generate, "elements": list(s.elements), **extra, "output": None}
        )
        space = load_space(settings, progress=False)
        if space.size > SPACE_CHECK_LIMIT:
            continue
        kept = len(space.kept_in_range(0, space.size))
        for key, n, m in wanted:
            if m == mode and n > kept:
                raise AloeError(
                    f"study: {key} = {n} exceeds the {kept} candidate{'s' if kept != 1 else ''} of the space "
                    "(elements x prototypes of "
                    "section 'generate'); lower it or widen the prototypes"
                )


# ---- the stage ------------------------------------------------------------------------------------------------------
def study(
    settings: StudySettings, command: str | None = None, executor: Executor | None = None
) -> StageResult:
    """Run (or resume) a study; returns its folder, counts, timings and the report's paths.

    Returns
    -------
    StageResult
        ``counts``: budgets per arm, leakage, benchmarked committees; ``products``: ``report`` (paths),
        ``verdict`` (per benchmark: the best arm and whether its lead exceeds the spread between members).
    """
    from aloe.logs import echo
    from aloe.study.report import write_study_report

    check_config(settings)
    run, settings = open_stage_run(settings, "study", StudySettings.RUNTIME_KEYS)
    with stage_executor(executor, settings) as ex:
        work = Study(settings, run.path, ex)
        work.test_set()
        work.seed_set()
        committees: dict[str, list[Committee]] = {}
        for arm in settings.arms:
            with work._step(f"arm {arm}"):
                committees[arm] = getattr(work, f"arm_{arm.replace('-', '_')}")()
        every = [c for cs in committees.values() for c in cs]
        leakage = work.heldout(every)
        finals = {arm: cs[-1] for arm, cs in committees.items()}
        benched: list[Committee] = []
        for arm, cs in committees.items():
            todo = cs if settings.learning_curves and arm in ("al", "random") else cs[-1:]
            for committee in todo:
                with work._step(f"benchmarks {arm} committee {committee.index}"):
                    work.bench(committee)
                benched.append(committee)
        with work._step("products"):
            products = work.export(finals)
        with work._step("report"):
            budgets = {(c.arm, c.index): budget_of(c.datasets) for c in benched}
            report = write_study_report(work, benched, finals, budgets, leakage)
    counts = {
        "arms": list(settings.arms),
        "budget": {arm: budgets[(arm, c.index)] for arm, c in finals.items()},
        "leakage": {k: leakage[k] for k in ("test_structures", "matched", "dropped", "kept")},
        "committees_benchmarked": len(benched),
    }
    summary = run.write_summary(
        counts,
        work.timings.total(),
        extra={"verdict": report["verdict"], "products": products, "report": plain_data(report["paths"])},
        command=command,
    )
    echo(f"study: report {report['paths']['md']}")
    run.close()
    return StageResult("study", run.path, counts, work.timings.total(), summary, report)


__all__ = ["Committee", "Study", "budget_of", "check_config", "study"]
