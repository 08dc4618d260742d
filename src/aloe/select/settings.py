"""Settings of the select stage (DIRECT down-sampling); defaults are MP-ALOE's (see ``shared/DESIGN.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from aloe.settings import AloeSettings
from aloe.stagekit import StageSettings

#: The default encoder: pooled crystal features of a CHGNet model that ships inside the chgnet wheel (offline).
DEFAULT_ENCODER = "chgnet-0.3.0"


class DirectSettings(AloeSettings):
    """DIRECT: scale -> PCA -> weight -> BIRCH -> k per cluster at evenly spaced ranks of distance to the centre."""

    scale: bool = Field(
        True,
        description="Standardise every feature (zero mean, unit variance) before PCA (sklearn StandardScaler).",
    )
    components: Literal["kaiser", "variance", "fixed"] = Field(
        "kaiser",
        description="How many principal components to keep: 'kaiser' (eigenvalue > kaiser_threshold), 'variance' "
        "(the fewest whose cumulative explained-variance ratio reaches explained_variance), or 'fixed' "
        "(n_components).",
    )
    kaiser_threshold: float = Field(
        1.0, ge=0, description="Kaiser rule: keep components whose explained variance exceeds this."
    )
    explained_variance: float = Field(
        0.95, gt=0, le=1, description="Cumulative explained-variance ratio to reach (components='variance')."
    )
    n_components: int | None = Field(None, ge=1, description="Number of components (components='fixed').")
    weight_components: bool = Field(
        True, description="Multiply each component's scores by its explained-variance ratio."
    )
    birch_threshold: float = Field(
        0.1,
        gt=0,
        description="BIRCH threshold: the largest radius of a subcluster (in weighted PCA units).",
    )
    branching_factor: int = Field(50, ge=2, description="BIRCH branching factor (sklearn default).")
    n_clusters: int | None = Field(
        None,
        ge=1,
        description="A fixed number of clusters instead of the threshold alone: BIRCH's global step "
        "(agglomerative) groups the subclusters; the threshold is lowered until there are enough subclusters.",
    )
    k: int = Field(5, ge=1, description="Structures taken from each cluster.")
    criterion: Literal["center", "smallest", "random"] = Field(
        "center",
        description="Which k of a cluster: 'center' (ranks int(linspace(0, n-1, k)) of distance to the "
        "centre), 'smallest' (the k with the fewest atoms, ties by distance), 'random' (k without "
        "replacement, seeded).",
    )
    nonfinite: Literal["drop_columns", "drop_rows", "error"] = Field(
        "drop_columns",
        description="Features that are NaN/inf in some structures: drop those feature columns, drop those "
        "structures, or stop. Structures whose features are ALL non-finite (encoder failed) are always left out.",
    )
    seed: int = Field(0, description="Seed of criterion 'random'.")
    max_selected: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many (a labelling budget): the picks closest to each centre first, larger "
        "clusters first; None keeps every pick (MP-ALOE).",
    )

    @model_validator(mode="after")
    def _fixed_needs_count(self) -> DirectSettings:
        if self.components == "fixed" and self.n_components is None:
            raise ValueError("components='fixed' needs n_components")
        return self


class SelectSettings(StageSettings):
    """Selection of a subset of structures: DIRECT (diverse), or uniformly at random (a baseline)."""

    mode: Literal["direct", "uniform"] = Field(
        "direct",
        description="'direct': DIRECT on encoded features (MP-ALOE); 'uniform': direct.max_selected structures "
        "picked uniformly at random (seeded by 'seed'), no features, no PCA or clustering (all of them when "
        "direct.max_selected is unset).",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of mode 'uniform' (the same seed and input give the same picks whatever the chunking; "
        "DIRECT's criterion 'random' uses direct.seed).",
    )
    input: Path | None = Field(
        None,
        description="A screen (or generate/select) run folder, or structures: extxyz file, folder of POSCAR/CIF, "
        "MP-ALOE JSONL(.gz), MatPES JSON(.gz).",
    )
    encoder: str = Field(
        DEFAULT_ENCODER,
        description="Structure -> feature vector: chgnet-0.3.0 / chgnet-0.2.0 / chgnet-r2scan (pooled crystal "
        "features, offline), 'matminer' (Magpie composition + density + radial distribution), or "
        "'package.module:factory' returning an aloe Encoder.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where model encoders run.")
    threads: int = Field(1, ge=1, description="Torch threads per process (parallelism comes from processes).")
    batch_size: int = Field(64, ge=1, description="Structures per forward pass of a model encoder.")
    direct: DirectSettings = Field(default_factory=DirectSettings, description="DIRECT settings.")
    export: Literal["none", "extxyz"] = Field(
        "none", description="Also write the selected structures as one extended-XYZ file (selected.extxyz)."
    )
    chunk_size: int = Field(2000, ge=1, description="Structures per chunk for inputs that are not a run.")

    #: Keys that may change when a run folder is reused. The features (input + encoder) are the run's durable part;
    #: the selection is recomputed from them every time, so DIRECT settings may change too (re-select, no re-encode),
    #: and so may the mode and the uniform seed (a uniform selection reads only the inputs).
    RUNTIME_KEYS: ClassVar[frozenset[str]] = StageSettings.RUNTIME_KEYS | {
        "mode",
        "seed",
        "device",
        "threads",
        "batch_size",
        "direct",
        "export",
    }
