"""The MD stability benchmark (paper Fig. 6): NVT and NPT heating runs and the share of their steps that stays valid.

One survival curve (:func:`survival_from_shares`) gives both the area in the table and the figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aloe.bench.base import (
    COUNT_HEADLINES,
    Benchmark,
    BenchStructure,
    Headline,
    ReferenceSet,
    StructureFailed,
    failure_row,
    require_reference,
    structure_columns,
    structure_seed,
)
from aloe.bench.md.drivers import run_ase, run_batched
from aloe.bench.md.protocol import MDRun, md_start, steps_for, timestep_fs_for
from aloe.bench.md.settings import ENSEMBLES, MDSettings
from aloe.errors import one_line
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms


# ---- the benchmark ---------------------------------------------------------------------------------------------
def _ensemble_columns() -> dict[str, str]:
    out: dict[str, str] = {}
    for ens in ENSEMBLES:
        name = ens.upper()
        out[f"{ens}_steps_scheduled"] = f"{name}: steps of the full run (duration / time step)"
        out[f"{ens}_steps_completed"] = (
            f"{name}: index of the last frame found valid (the run's last step when it survived)"
        )
        out[f"{ens}_completed_share"] = f"{name}: steps_completed / steps_scheduled (0..1)"
        out[f"{ens}_time_ps"] = f"{name}: simulated time reached, steps_completed x time step (ps)"
        out[f"{ens}_stop_reason"] = (
            f"{name}: the instability that stopped the run early: energy (|E - E_0|/N above the limit), kinetic "
            "(an atom's kinetic energy above the limit), volume (NPT: V/V_0 out of range), non-finite (energy, "
            "forces or state); empty when it ran every step (a model that raised fails the row instead: error)"
        )
        out[f"{ens}_steps_per_second"] = (
            f"{name}: completed steps per wall second of the integrator the run was in (batched runs share a clock)"
        )
        out[f"{ens}_final_temperature"] = f"{name}: kinetic temperature of the last valid frame (K)"
    out["npt_volume_ratio"] = "NPT: volume of the last valid frame over the first"
    return out


class MDStability(Benchmark):
    """MD stability (paper Fig. 6): NVT and NPT heating runs, the share of scheduled steps that stays valid.

    Parameters
    ----------
    potential, settings, atom_energies
        As :class:`~aloe.bench.base.Benchmark` (``atom_energies`` is not used).
    progress
        Called with the number of system-steps just done (a progress bar's ``update``; the caller owns the bar,
        whose total is :meth:`progress_total`), or ``None``.

    A structure's row is final, and handed to ``calc_many``'s ``done``, the moment its last run leaves the
    integrator, not when its batch ends. A model that raises for a structure (an element it lacks, any error)
    fails that structure's row with the message; its other ensembles are not run.
    """

    name: ClassVar[str] = "md"
    settings_model: ClassVar[type[AloeSettings]] = MDSettings
    needs: ClassVar[str] = "nothing"
    COLUMNS: ClassVar[dict[str, str]] = {
        **_ensemble_columns(),
        "timestep_fs": "time step of the structure's runs (fs; smaller with hydrogen)",
        "seed": "seed of the structure's start velocities (from settings.seed and the id)",
        "backend": "integrator: batched (aloe's) or ase (ASE's NPT/Langevin)",
    }
    PROGRESS_UNIT: ClassVar[str | None] = "step"
    run_priority: ClassVar[int] = 3
    # aloe's batched integrator: several systems share it, so a batch dependence can show
    CHEAP_SETTINGS: ClassVar[dict[str, Any]] = {"duration_ps": 0.01, "backend": "batched"}
    HEADLINES: ClassVar[tuple[Headline, ...]] = (
        *COUNT_HEADLINES,
        *(
            headline
            for ens in ENSEMBLES
            for headline in (
                Headline(
                    (f"{ens}_completed_share_mean",),
                    f"{ens.upper()} completed (%)",
                    100.0,
                    "{:.1f}",
                    "higher",
                ),
                Headline(
                    (f"{ens}_survived_share",), f"{ens.upper()} survived (%)", 100.0, "{:.1f}", "higher"
                ),
                Headline((f"{ens}_survival_auc",), f"{ens.upper()} survival AUC", 1.0, "{:.3f}"),
                Headline((f"{ens}_steps_per_second_mean",), f"{ens.upper()} steps/s", 1.0, "{:.3g}"),
            )
        ),
    )
    FIGURES: ClassVar[str | None] = "md_figures"
    VERDICT: ClassVar[tuple[str, ...]] = ("npt_completed_share_mean", "nvt_completed_share_mean")

    def __init__(
        self,
        potential: Any,
        settings: AloeSettings | None = None,
        *,
        atom_energies: Mapping[str, float] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(potential, settings, atom_energies=atom_energies)
        self.progress = progress
        self.settings: MDSettings

    @classmethod
    def select_structures(
        cls, settings: Any, reference: ReferenceSet | None, read: Callable[[str], ReferenceSet]
    ) -> list[BenchStructure]:
        """``md_structures``: builtin:mixtures (default), a path, or ``reference`` (the reference set's crystals)."""
        from aloe.bench.structures import split_roles

        if settings.md_structures == "reference":
            chosen = require_reference(cls.name, reference)
            return split_roles(chosen)[0] or chosen.structures
        return read(settings.md_structures).structures

    @property
    def backend(self) -> str:
        """``batched`` or ``ase``: the integrator (``auto`` is aloe's batched integrator)."""
        return "ase" if self.settings.backend == "ase" else "batched"

    @property
    def systems_per_integrator(self) -> int:
        """``batch_systems``; 1 under ``auto`` for a model that predicts one structure per call, and for ``ase``."""
        from aloe.bench.base import has_batched_path

        if self.backend == "ase" or (
            self.settings.backend == "auto" and not has_batched_path(self.potential)
        ):
            return 1
        return self.settings.batch_systems

    def task_size(self) -> int:
        """:attr:`systems_per_integrator`: a task is one integrator's batch."""
        return self.systems_per_integrator

    def coupled(self) -> bool:
        """True when several systems share an integrator (and the model's forward passes)."""
        return self.systems_per_integrator > 1

    def progress_total(self, structures: Sequence[BenchStructure]) -> int:
        """Steps of every run of ``structures`` (all ensembles): the total that :attr:`progress` counts to."""
        return sum(self._scheduled(s.atoms) for s in structures)

    def _scheduled(self, atoms: Atoms) -> int:
        return steps_for(timestep_fs_for(atoms, self.settings), self.settings) * len(self.settings.ensembles)

    def _steps_done(self, n: int) -> None:
        if self.progress is not None and n > 0:
            self.progress(int(n))

    def calc(self, structure: BenchStructure) -> dict[str, Any]:
        """The row of one structure (every ensemble); raises for a structure it cannot start or a model error."""
        t0 = time.perf_counter()
        seed = structure_seed(self.settings.seed, structure.id)
        start = md_start(structure.atoms, self.settings, structure.id)
        row: dict[str, Any] = {**structure_columns(structure), "error": None}
        for k, ens in enumerate(self.settings.ensembles):
            if self.backend == "ase":
                run = run_ase(self.potential, start, ens, self.settings, seed=seed)
                self._steps_done(run.steps_scheduled)
            else:
                run = run_batched(
                    self.potential,
                    [start],
                    ens,
                    self.settings,
                    seeds=[seed],
                    ids=[structure.id],
                    on_steps=self._steps_done,
                )[0]
            if run.error is not None:
                self._steps_done(run.steps_scheduled * (len(self.settings.ensembles) - k - 1))
                raise StructureFailed(f"{ens}: {run.error}")
            row.update(run.columns(ens))
        row.update(self._extra(start, seed))
        row["wall_s"] = float(time.perf_counter() - t0)
        return row

    def _extra(self, start: Atoms, seed: int) -> dict[str, Any]:
        return {
            "timestep_fs": float(timestep_fs_for(start, self.settings)),
            "seed": int(seed),
            "backend": self.backend,
        }

    def calc_many(
        self,
        structures: Sequence[BenchStructure],
        done: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of many structures: :attr:`systems_per_integrator` structures per integrator, every ensemble.

        ``done(index, row)`` is called the moment a structure's row is final (its last run left the integrator,
        or it failed). A structure that cannot start, or whose model raises, fails alone; a batch whose
        integrator raises as a whole runs its unfinished structures one by one.
        """
        if self.backend == "ase":
            return super().calc_many(structures, done)
        rows: list[dict[str, Any] | None] = [None] * len(structures)

        def finish(i: int, row: dict[str, Any]) -> None:
            rows[i] = row
            if done is not None:
                done(i, row)

        starts: dict[int, Atoms] = {}
        for i, structure in enumerate(structures):
            try:
                starts[i] = md_start(structure.atoms, self.settings, structure.id)
            except Exception as exc:  # an unusable structure fails alone
                self._steps_done(self._scheduled(structure.atoms))
                finish(i, failure_row(structure, one_line(exc)))
        order = list(starts)
        size = self.systems_per_integrator
        for k in range(0, len(order), size):
            chunk = order[k : k + size]
            try:
                self._run_chunk(structures, chunk, starts, finish)
            except Exception:
                # A batch-wide failure (not one system's model error): run each unfinished structure alone.
                for i in [i for i in chunk if rows[i] is None]:
                    t1 = time.perf_counter()
                    try:
                        self._run_chunk(structures, [i], starts, finish)
                    except Exception as exc:
                        finish(i, failure_row(structures[i], one_line(exc), time.perf_counter() - t1))
        return [r for r in rows if r is not None]

    def _run_chunk(
        self,
        structures: Sequence[BenchStructure],
        chunk: Sequence[int],
        starts: Mapping[int, Atoms],
        finish: Callable[[int, dict[str, Any]], None],
    ) -> None:
        """Every ensemble of the structures ``chunk`` (indices into ``structures``) in one integrator each."""
        t0 = time.perf_counter()
        seeds = {i: structure_seed(self.settings.seed, structures[i].id) for i in chunk}
        rows = {i: {**structure_columns(structures[i]), "error": None} for i in chunk}
        live = list(chunk)
        ensembles = self.settings.ensembles
        for e, ens in enumerate(ensembles):
            members = list(live)
            last = e == len(ensembles) - 1

            def left(j: int, run: MDRun, members: list[int] = members, e: int = e, last: bool = last) -> None:
                i = members[j]
                ens = ensembles[e]
                if run.error is not None:
                    live.remove(i)
                    self._steps_done(run.steps_scheduled * (len(ensembles) - e - 1))
                    finish(i, failure_row(structures[i], f"{ens}: {run.error}", time.perf_counter() - t0))
                    return
                rows[i].update(run.columns(ens))
                if last:
                    rows[i].update(self._extra(starts[i], seeds[i]))
                    rows[i]["wall_s"] = float((time.perf_counter() - t0) / len(chunk))
                    finish(i, rows[i])

            if members:
                run_batched(
                    self.potential,
                    [starts[i] for i in members],
                    ens,
                    self.settings,
                    seeds=[seeds[i] for i in members],
                    ids=[structures[i].id for i in members],
                    on_steps=self._steps_done,
                    on_leave=left,
                )

    @classmethod
    def metrics(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Metrics of one potential's successful rows, per ensemble that ran.

        ``{ens}_n`` (runs), ``{ens}_completed_share_mean``, ``{ens}_survived_share`` (runs that completed every
        step), ``{ens}_survival_auc`` (area under :func:`survival_curve`, 0..1: the mean completed share),
        ``{ens}_steps_per_second_mean``.
        """
        out: dict[str, Any] = {}
        for ens in ENSEMBLES:
            done = _runs_of(rows, ens)
            if not done:
                continue
            shares = np.array([float(r[f"{ens}_completed_share"]) for r in done])
            speeds = np.array([float(r.get(f"{ens}_steps_per_second") or 0.0) for r in done])
            out[f"{ens}_n"] = len(done)
            out[f"{ens}_completed_share_mean"] = float(shares.mean())
            out[f"{ens}_survived_share"] = float(
                np.mean([r[f"{ens}_steps_completed"] >= r[f"{ens}_steps_scheduled"] for r in done])
            )
            out[f"{ens}_survival_auc"] = survival_auc(*survival_from_shares(shares))
            out[f"{ens}_steps_per_second_mean"] = float(speeds.mean())
        return out


def _runs_of(rows: Sequence[Mapping[str, Any]], ensemble: str) -> list[Mapping[str, Any]]:
    """Rows without an error that hold a run of ``ensemble``."""
    key = f"{ensemble}_completed_share"
    return [r for r in rows if not r.get("error") and r.get(key) is not None]


def survival_from_shares(shares: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of runs still valid against the fraction of the run: the exact step curve, for the AUC and the figure.

    Parameters
    ----------
    shares
        Each run's completed share of its scheduled steps (clipped to 0..1).

    Returns
    -------
    t, alive
        The corners of the step curve from ``t = 0`` to ``1``: ``alive[k]`` is the share of runs that went past
        ``t[k]``, held until ``t[k + 1]`` (draw it with ``where="post"``); the last point is the share that completed
        the whole run. Its area (:func:`survival_auc`) is the mean completed share. Without runs: ``t = [0, 1]``,
        ``alive = [0, 0]``.
    """
    s = np.clip(np.asarray(shares, dtype=float), 0.0, 1.0)
    if len(s) == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 0.0])
    t = np.unique(np.concatenate([[0.0], s[(s > 0) & (s < 1)], [1.0]]))
    alive = np.array([np.mean(s > x) for x in t[:-1]] + [np.mean(s >= 1.0)], dtype=float)
    return t, alive


def survival_auc(t: np.ndarray, alive: np.ndarray) -> float:
    """The area under a :func:`survival_from_shares` step curve (0..1)."""
    return float(np.sum(np.diff(t) * alive[:-1]))


def survival_curve(
    rows: Sequence[Mapping[str, Any]], ensemble: str, n_points: int = 101
) -> tuple[np.ndarray, np.ndarray]:
    """The survival curve of one potential's runs of ``ensemble``, read at ``n_points`` evenly spaced fractions.

    The values are those of the one step curve, :func:`survival_from_shares` (the one the AUC and the figure use),
    at ``linspace(0, 1, n_points)``.

    Parameters
    ----------
    rows
        Rows of one potential (rows with an error or without the ensemble are left out).
    ensemble
        ``"nvt"`` or ``"npt"``.
    n_points
        Points of the curve.

    Returns
    -------
    fraction_of_run
        Shape ``(n_points,)``: 0..1.
    surviving_share
        Shape ``(n_points,)``: share of runs that went past that fraction (the last point: the share that ran every
        step); NaN everywhere when there are no runs.
    """
    x = np.linspace(0.0, 1.0, n_points)
    done = _runs_of(rows, ensemble)
    if not done:
        return x, np.full(n_points, np.nan)
    t, alive = survival_from_shares([float(r[f"{ensemble}_completed_share"]) for r in done])
    return x, alive[np.searchsorted(t, x, side="right") - 1]


__all__ = ["MDStability", "survival_auc", "survival_curve", "survival_from_shares"]
