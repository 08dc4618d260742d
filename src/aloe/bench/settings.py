"""Settings of ``aloe bench``: which potentials, which benchmarks, on which structures, with which definitions.

Every number of the paper's protocols is a default of the benchmark's own settings section (``equilibrium``,
``forces``, ``ev``, ``md``; random mixtures under ``mixtures``), so a CPU user shortens the MD with
``--set md.duration_ps=0.2`` and a GPU user runs the full 10 ps.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from aloe.bench.equilibrium import EquilibriumSettings
from aloe.bench.ev import EVSettings
from aloe.bench.forces import ForcesSettings
from aloe.bench.md import MDSettings
from aloe.bench.registry import BENCHMARK_NAMES, BENCHMARKS
from aloe.bench.structures import MixtureSettings
from aloe.stagekit import StageSettings

#: A benchmark's name (the names of :data:`aloe.bench.registry.BENCHMARKS`).
BenchmarkName = Literal[BENCHMARK_NAMES]  # type: ignore[valid-type]


class BenchSettings(StageSettings):
    """``aloe bench``: potentials side by side on the four benchmarks.

    ``potentials`` and ``suite`` are not part of the run's fingerprint: checkpoints are kept per potential,
    benchmark and structure, so adding a potential (or a benchmark) to an existing run folder computes only what is
    new, and the report covers what the command asked for.
    """

    potentials: list[str] = Field(
        ...,
        min_length=1,
        description="Potentials to benchmark: built-in names (chgnet-0.3.0, chgnet-r2scan, emt, lj-nowall ...), "
        "MACE .model files, package.module:factory.",
    )
    suite: list[BenchmarkName] = Field(
        default_factory=lambda: list(BENCHMARK_NAMES),
        description="Benchmarks to run: equilibrium, forces, ev, md (the CLI's --suite all = every one).",
    )
    structures: str | None = Field(
        None,
        description="Reference set: an 'aloe bench reference' folder, MatPES/MP-ALOE documents (.json/.jsonl), "
        "extxyz with energies and forces, an ASE database, a matcalc benchmark JSON, or builtin:NAME. "
        "Equilibrium uses its structures with reference energies, forces those with reference forces.",
    )
    ev_structures: str | None = Field(
        None,
        description="Structures of the EV scan; default: the reference set's crystals, or builtin:elements "
        "without a reference set.",
    )
    md_structures: str = Field(
        "builtin:mixtures",
        description="Structures of the MD benchmark: builtin:mixtures (random mixtures relaxed with ZBL, as in "
        "the paper; sized by 'mixtures'), 'reference' (the reference set's crystals) or a path.",
    )
    max_structures: int | None = Field(
        None, ge=1, description="Use at most this many structures per benchmark (the first ones of each set)."
    )
    invalid_structures: Literal["refuse", "record"] = Field(
        "refuse",
        description="A structure no benchmark can treat (no atoms, NaN or infinite positions or cell, a cell of "
        "zero volume, atoms closer than min_distance): 'refuse' stops before anything is written, with one line "
        "naming the file and frame; 'record' makes it a failed row with the reason (never a score) and goes on.",
    )
    min_distance: float = Field(
        0.5,
        ge=0,
        description="Two atoms closer than this (A, periodic images included) make a structure invalid "
        "(coincident or overlapping atoms); 0 turns the check off.",
    )
    atom_energies: str = Field(
        "reference",
        description="Isolated-atom energies for cohesive energies: 'reference' (the reference set's own, "
        "computed by its labeler; MatPES r2SCAN when it has none), 'matpes-r2scan', 'matpes-pbe', or a JSON "
        "file {symbol: eV}.",
    )
    potential_atom_energies: str | dict[str, str] = Field(
        "same",
        description="Isolated-atom energies on each potential's own energy scale, for its cohesive energies: "
        "'same' (the reference's: a potential trained on the reference's data), 'matpes-r2scan', 'matpes-pbe', a "
        "JSON file, or a mapping potential -> one of those (a VASP-trained model against a GPAW reference needs "
        "its own: GPAW's energies have another zero).",
    )
    equilibrium: EquilibriumSettings = Field(
        default_factory=EquilibriumSettings, description="Equilibrium benchmark (paper Fig. 3)."
    )
    forces: ForcesSettings = Field(
        default_factory=ForcesSettings, description="Off-equilibrium forces benchmark (paper Fig. 4)."
    )
    ev: EVSettings = Field(default_factory=EVSettings, description="Energy-volume scan (paper Fig. 5).")
    md: MDSettings = Field(default_factory=MDSettings, description="MD stability (paper Fig. 6).")
    mixtures: MixtureSettings = Field(
        default_factory=MixtureSettings,
        description="Random mixtures for the MD benchmark (builtin:mixtures).",
    )
    device: str | None = Field(None, description="cpu, cuda or auto (models that run on torch).")
    batch_size: int | None = Field(None, ge=1, description="Structures per forward pass (model default).")
    threads: int | None = Field(
        1,
        ge=1,
        description="Torch threads per process (1, as every stage: parallelism comes from workers, and a torch "
        "model's multi-threaded sums differ from run to run in their last bits; None: torch's default).",
    )
    report: Literal["html", "markdown", "none"] = Field(
        "html",
        description="Report: comparison tables and figures plus report.html (html), without it, or none.",
    )

    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUN_OPTIONS | {
        "potentials",
        "suite",
        "device",
        "batch_size",
        "threads",
        "report",
    }

    @field_validator("suite", mode="before")
    @classmethod
    def _expand_all(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and "all" in value:
            return list(BENCHMARK_NAMES)
        return value

    @field_validator("suite")
    @classmethod
    def _ordered(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"no benchmark given: name some of {', '.join(BENCHMARK_NAMES)}, or all")
        return [name for name in BENCHMARK_NAMES if name in value]

    @model_validator(mode="after")
    def _references_given(self) -> BenchSettings:
        needing = [name for name in self.suite if BENCHMARKS[name].needs_reference]
        if needing and not self.structures:
            raise ValueError(
                f"the {' and '.join(needing)} benchmark{'s need' if len(needing) > 1 else ' needs'} reference "
                "structures: give 'structures' (--structures: an 'aloe bench reference' folder, MatPES "
                "documents, extxyz with energies and forces ...) or leave them out of the suite (--suite ev,md)"
            )
        if self.md_structures == "reference" and "md" in self.suite and not self.structures:
            raise ValueError("md_structures 'reference' needs 'structures' (the reference set)")
        return self


__all__ = ["BENCHMARK_NAMES", "BenchSettings", "BenchmarkName"]
