"""Settings of the train stage (a committee of MACE models trained with mace-torch's own ``run_train``).

A preset is a set of mace-torch ``run_train`` options (the names of its command-line flags, without ``--``):

``mp0a-large``
    The model MP-ALOE trained: the MACE-MP-0a "large" settings of ``shared/DESIGN.md`` (the MP-ALOE paper),
    completed with the remaining flags of the published MACE-MP-0 training script for this model
    (ACEsuit/mace-mp, ``mace_mp_0/2024-01-07-mace-128-L2.sh``), for the 100 epochs MP-ALOE trained. Built for
    the 89 MP-ALOE elements it has the paper's 5,725,072 parameters. Where each value comes from
    (paper = DESIGN.md's training facts from the MP-ALOE paper; script = the MACE-MP-0 L2 script):

    =====================================================  ========================  ============================
    option                                                 value                     source
    =====================================================  ========================  ============================
    r_max, num_channels, max_L                             6.0, 128, 2               paper
    correlation, num_interactions, num_radial_basis        3, 2, 10                  paper
    energy/forces/stress weights                           1, 10, 100                paper (script: the same)
    lr, batch_size                                         0.005, 16                 paper (script: the same)
    ema, ema_decay, amsgrad                                on, 0.995, on             paper (script: the same)
    E0s, train/valid/test split                            isolated atoms, 90/5/5    paper (settings ``e0s``,
                                                                                     ``split``)
    max_num_epochs                                         100                       paper (MP-ALOE; the script
                                                                                     trains 200)
    patience                                               25                        script's 50 of 200 epochs,
                                                                                     kept at 1/4 of the run
    model, interaction_first, interaction                  ScaleShiftMACE, residual  script
                                                           interaction blocks
    max_ell, MLP_irreps, scaling                           3, 16x0e,                 script
                                                           rms_forces_scaling
    loss, compute_stress                                   universal, on             script
    weight_decay, scheduler_patience                       1e-8, 5                   script
    valid_batch_size, clip_grad                            32, 100                   script
    =====================================================  ========================  ============================

    Early stopping (``patience``) only ends a run early; it never changes which model is kept, since mace-torch
    saves a checkpoint only when the validation loss improves and ends on the best one. The script's 50 epochs
    without improvement were a quarter of its 200-epoch run; 50 of 100 would stop only a run that made no
    progress for half its length, so the preset keeps the quarter: 25 epochs without improvement, which span
    four learning-rate reductions (``scheduler_patience`` 5, mace's factor 0.8: the rate down to 0.41x).
``small``
    A scaled-down model for a few hundred structures on a few CPU cores (minutes): an invariant model like
    MACE-MP-0 "small" (max_L 0) with 64 channels, max_ell 2, correlation 3, r_max 5.0, 8 radial basis
    functions, 60 epochs. (64 channels with max_L 1 train more than twice as slowly on CPU.)
``tiny``
    A toy model for tests and demos (well under a minute on 2 CPU cores for ~50 small cells): 16 channels,
    max_L 0, max_ell 1, correlation 2, r_max 5.0, 6 radial basis functions, 15 epochs.

Training data: below ``hdf5_threshold`` structures (``data_format`` ``auto``) each member's train and valid parts are
extxyz files, which mace-torch reads whole into memory. From the threshold on they are mace-torch's preprocessed
HDF5 shards (``hdf5_shard_size`` structures each), written while the records stream past and read by mace one
structure at a time (:mod:`aloe.train.prepare`, :mod:`aloe.train.shards`). A member trained from shards is the
member trained from extxyz: the same structures in the same order, the same E0s, split, seed and statistics. The
format therefore only changes memory and speed, and may change when a run is resumed.

``mace_options`` override any preset value and add any other ``run_train`` option; the options aloe sets
itself (file names, keys, E0s, seed, device, epochs, foundation model) are rejected there with the setting to
use instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from aloe.executors import ExecutorKind
from aloe.stagekit import StageSettings

#: MP-ALOE's MACE training as mace-torch options: the MACE-MP-0 "large" (128x0e+128x1o+128x2e) model for 100
#: epochs. Sources (see the module docstring's table): paper = DESIGN.md's training facts (MP-ALOE paper), script =
#: the published MACE-MP-0 L2 script (ACEsuit/mace-mp ``mace_mp_0/2024-01-07-mace-128-L2.sh``).
MP0A_LARGE: dict[str, Any] = {
    "model": "ScaleShiftMACE",  # script
    "interaction_first": "RealAgnosticResidualInteractionBlock",  # script
    "interaction": "RealAgnosticResidualInteractionBlock",  # script
    "num_interactions": 2,  # paper
    "correlation": 3,  # paper
    "max_ell": 3,  # script
    "r_max": 6.0,  # paper
    "max_L": 2,  # paper
    "num_channels": 128,  # paper
    "num_radial_basis": 10,  # paper
    "MLP_irreps": "16x0e",  # script
    "scaling": "rms_forces_scaling",  # script
    "loss": "universal",  # script
    "energy_weight": 1.0,  # paper
    "forces_weight": 10.0,  # paper
    "stress_weight": 100.0,  # paper
    "compute_stress": True,  # script
    "lr": 0.005,  # paper
    "weight_decay": 1e-8,  # script
    "ema": True,  # paper
    "ema_decay": 0.995,  # paper
    "amsgrad": True,  # paper
    "scheduler_patience": 5,  # script
    "batch_size": 16,  # paper
    "valid_batch_size": 32,  # script
    "max_num_epochs": 100,  # MP-ALOE trained 100 epochs (the script: 200)
    "patience": 25,  # the script's 50 of 200 epochs, kept at a quarter of the run
    "clip_grad": 100.0,  # script
}

#: Minutes on a few CPU cores for a few hundred structures; same loss and weights as the large model.
SMALL: dict[str, Any] = {
    **MP0A_LARGE,
    "max_ell": 2,
    "r_max": 5.0,
    "max_L": 0,
    "num_channels": 64,
    "num_radial_basis": 8,
    "radial_MLP": "[64, 64]",
    "lr": 0.01,
    "ema_decay": 0.99,
    "batch_size": 8,
    "valid_batch_size": 16,
    "max_num_epochs": 60,
    "patience": 20,
}

#: Seconds on 2 CPU cores for ~50 small cells: for tests and demos only.
TINY: dict[str, Any] = {
    **MP0A_LARGE,
    "correlation": 2,
    "max_ell": 1,
    "r_max": 5.0,
    "max_L": 0,
    "num_channels": 16,
    "num_radial_basis": 6,
    "radial_MLP": "[32, 32]",
    "lr": 0.01,
    "ema_decay": 0.99,
    "batch_size": 8,
    "valid_batch_size": 16,
    "max_num_epochs": 15,
    "patience": 15,
}

PRESETS: dict[str, dict[str, Any]] = {"mp0a-large": MP0A_LARGE, "small": SMALL, "tiny": TINY}

#: Options aloe adds to every preset (not part of the science; overridable through ``mace_options``): float64
#: training as mace-torch's default, stress in the logged validation errors, no mace plots (aloe draws its own
#: parity plots), models saved for CPU.
BASE_OPTIONS: dict[str, Any] = {
    "default_dtype": "float64",
    "error_table": "PerAtomMAEstressvirials",
    "plot": False,
    "save_cpu": True,
}

E0Source = Literal["isolated_atoms", "average", "foundation"]


class TrainSettings(StageSettings):
    """Train a committee of MACE models (mace-torch ``run_train``), each on its own train/valid/test split."""

    inputs: list[Path] = Field(
        default_factory=list,
        description="Label run folders (records/chunk-*.jsonl + isolated_atoms.yaml) and/or record files: "
        "MP-ALOE .jsonl(.gz), MatPES .json(.gz), extxyz with energies (forces, stress).",
    )
    committee_size: int = Field(
        3, ge=1, description="Members of the committee (each its own split and seed)."
    )
    seed: int = Field(
        0, description="Seed of the splits (member k: numpy rng([seed, k])) and of mace (seed + k)."
    )
    split: tuple[float, float, float] = Field(
        (0.90, 0.05, 0.05),
        description="Train/valid/test fractions. Each part gets at least one structure (tiny datasets: the "
        "valid and test parts are rounded up to one).",
    )
    preset: Literal["mp0a-large", "small", "tiny"] = Field(
        "mp0a-large",
        description="mace-torch settings: mp0a-large (MACE-MP-0a large, DESIGN.md), small (minutes on CPU), "
        "tiny (tests and demos).",
    )
    epochs: int | None = Field(None, ge=1, description="Maximum epochs (default: the preset's).")
    resume: Literal["checkpoint", "restart"] = Field(
        "checkpoint",
        description="A member whose training was killed: 'checkpoint' continues from mace-torch's last checkpoint "
        "(the epochs after the best one are repeated; the model may differ in its last digits from an "
        "uninterrupted one), 'restart' trains it again from the start (the same model as an uninterrupted run).",
    )
    mace_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Any mace-torch run_train option (flag name without --) over the preset, e.g. "
        "{num_channels: 32, lr: 0.001}; None drops a preset option (hidden_irreps needs num_channels: null "
        "and max_L: null, which mace prefers when both are given).",
    )
    foundation_model: str | None = Field(
        None,
        description="Fine-tune: start every member from this MACE .model file (mace-torch "
        "--foundation_model; the architecture and r_max come from it; naive fine-tuning, "
        "multiheads_finetuning False unless set in mace_options).",
    )
    e0s: E0Source | dict[str, float] = Field(
        "isolated_atoms",
        description="Isolated-atom energies E0 (eV): 'isolated_atoms' (the label runs' isolated_atoms.yaml), "
        "'average' (mace's least-squares fit on each member's training set), 'foundation' (the foundation "
        "model's), or {element: eV}.",
    )
    device: Literal["cpu", "cuda", "mps", "xpu"] = Field(
        "cpu", description="Where mace trains and aloe tests."
    )
    threads: int = Field(1, ge=1, description="Torch/OpenMP threads per member process.")
    executor: ExecutorKind = Field(
        "process",
        description="Where members train when the stage runs on its own (process: a local pool of 'workers', "
        "one member each; each member runs mace in a process of its own anyway).",
    )
    eval_batch_size: int = Field(16, ge=1, description="Structures per forward pass when testing a member.")
    launcher: Literal["local", "torchrun", "slurm"] = Field(
        "local",
        description="How each member's mace-torch run_train starts: 'local' (one process where the member's "
        "task runs), 'torchrun' (gpus_per_member processes on that node, torch.distributed.run --standalone), "
        "'slurm' (srun: a Slurm job of its own per member, gpus_per_member tasks with one GPU each, plus "
        "srun_options).",
    )
    distributed: bool = Field(
        False,
        description="mace-torch's data-parallel training (--distributed, --launcher torchrun or slurm): one "
        "process per GPU, each with batch_size structures per step (the effective batch is gpus_per_member "
        "times batch_size). Needs device cuda and launcher torchrun or slurm.",
    )
    gpus_per_member: int = Field(
        1, ge=1, description="GPUs each member trains on (more than one: distributed training)."
    )
    srun_options: list[str] = Field(
        default_factory=list,
        description="Extra srun options of each member's Slurm job (launcher slurm), e.g. ['--partition=gpu', "
        "'--account=matsci', '--time=48:00:00', '--constraint=a100'].",
    )
    data_format: Literal["auto", "extxyz", "hdf5"] = Field(
        "auto",
        description="How the members' train and valid parts reach mace: 'extxyz' files (mace reads them whole "
        "into memory), 'hdf5' (mace-torch's preprocessed HDF5 shards, written from the streamed records and read "
        "one structure at a time), or 'auto': hdf5 from hdf5_threshold structures on. The models are the same "
        "either way; the test set is extxyz in both.",
    )
    hdf5_threshold: int = Field(
        50_000, ge=1, description="Structures from which data_format 'auto' writes HDF5 shards."
    )
    hdf5_shard_size: int = Field(
        50_000,
        ge=1,
        description="Structures per HDF5 shard (the shards are streamed: their size costs no memory while "
        "they are written). mace keeps every shard file open while it trains, each with HDF5's metadata "
        "cache (tens of MB), so large shards keep its memory flat; a killed preparation redoes one shard.",
    )

    #: May change when a run folder is reused: raising committee_size adds members to a finished committee.
    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUNTIME_KEYS | {
        "committee_size",
        "resume",
        "device",
        "threads",
        "eval_batch_size",
        "data_format",
        "hdf5_threshold",
        "hdf5_shard_size",
        "launcher",
        "srun_options",
    }

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v <= 0 for v in value):
            raise ValueError("train, valid and test fractions must all be positive")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"train/valid/test fractions must add up to 1 (they add up to {sum(value):g})")
        return value

    @field_validator("e0s", mode="before")
    @classmethod
    def _e0s_by_symbol(cls, value: Any) -> Any:
        """``{29: e, "Al": e}`` -> ``{"Cu": e, "Al": e}`` (atomic numbers or symbols as keys)."""
        if isinstance(value, dict):
            from ase.data import atomic_numbers, chemical_symbols

            out = {}
            for key, energy in value.items():
                text = str(key).strip()
                symbol = chemical_symbols[int(text)] if text.isdigit() and int(text) < 119 else text
                if symbol not in atomic_numbers or symbol == "X":
                    raise ValueError(f"{key!r} is not an element")
                out[symbol] = energy
            return out
        return value

    @model_validator(mode="after")
    def _foundation_e0s(self) -> TrainSettings:
        if self.e0s == "foundation" and not self.foundation_model:
            raise ValueError("e0s 'foundation' needs a foundation_model")
        return self

    @model_validator(mode="after")
    def _check_launch(self) -> TrainSettings:
        if self.distributed:
            if self.launcher == "local":
                raise ValueError(
                    "distributed training needs launcher 'torchrun' or 'slurm' (launcher is 'local')"
                )
            if self.device not in ("cuda", "xpu"):
                # mace-torch initialises its process group only for cuda (NCCL) and xpu (CCL)
                raise ValueError(
                    f"distributed training runs on GPUs: device must be cuda (it is {self.device!r})"
                )
        elif self.gpus_per_member > 1:
            raise ValueError(f"gpus_per_member {self.gpus_per_member} needs distributed: true")
        elif self.launcher == "torchrun":
            raise ValueError("launcher 'torchrun' starts mace's distributed training: set distributed: true")
        if self.srun_options and self.launcher != "slurm":
            raise ValueError(f"srun_options are for launcher 'slurm' (launcher is {self.launcher!r})")
        return self

    def preset_options(self) -> dict[str, Any]:
        """The preset's mace-torch options, with ``epochs`` and ``mace_options`` (None drops one) applied."""
        options = {**BASE_OPTIONS, **PRESETS[self.preset]}
        if self.epochs is not None:
            options["max_num_epochs"] = self.epochs
        options.update(self.mace_options)
        return {k: v for k, v in options.items() if v is not None}
