"""Drivers of one ensemble: many starts in aloe's batched integrator, or one start in ASE's own (the reference).

Both follow the same protocol (targets set before every step, validity checked on the same frames) and give an
:class:`~aloe.bench.md.protocol.MDRun` per start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from aloe.bench.md.integrator import BatchedMD
from aloe.bench.md.protocol import (
    MDRun,
    frame_problems,
    ramp,
    steps_for,
    stop_reason_of_error,
    timestep_fs_for,
)
from aloe.bench.md.settings import MDSettings
from aloe.errors import one_line

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.potentials.base import Potential

#: Stream number of each ensemble's Langevin noise (so NVT and NPT draw different random numbers).
_NOISE_STREAM = {"nvt": 1, "npt": 2}


# ---- drivers -----------------------------------------------------------------------------------------------
def _ase_units():
    from ase import units

    return units


def _thermostat_for(ensemble: str, settings: MDSettings) -> str:
    return "nose-hoover" if ensemble == "npt" else settings.thermostat


def _pfactor(settings: MDSettings) -> float:
    units = _ase_units()
    return (settings.ptime_fs * units.fs) ** 2 * settings.bulk_modulus_gpa * units.GPa


def _noise_rng(seed: int, ensemble: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _NOISE_STREAM[ensemble]])


def run_batched(
    potential: Potential,
    starts: Sequence[Atoms],
    ensemble: str,
    settings: MDSettings,
    *,
    seeds: Sequence[int],
    ids: Sequence[str] | None = None,
    on_steps: Callable[[int], None] | None = None,
    on_leave: Callable[[int, MDRun], None] | None = None,
    observer: Callable[[int, BatchedMD], None] | None = None,
) -> list[MDRun]:
    """Run one ensemble for many starts in one :class:`BatchedMD`; one :class:`MDRun` per start.

    Parameters
    ----------
    potential
        The model.
    starts
        Start structures (:func:`md_start`).
    ensemble
        ``"nvt"`` or ``"npt"``.
    settings
        Protocol and validity rules.
    seeds
        Per-start seeds (:func:`structure_seed`); the Langevin noise generator is derived from them.
    ids
        Labels for the model's messages.
    on_steps
        Called with the number of system-steps just done (for a progress bar; a system that stops early reports
        its remaining steps, so the counts add up to the scheduled total).
    on_leave
        Called as ``on_leave(k, run)`` the moment start ``k`` leaves the integrator (its run is final): a caller
        keeps each system's result as it ends, not when the whole batch does.
    observer
        Called as ``observer(step, md)`` after the start (step 0) and after every step (tests record trajectories).
    """
    t0 = time.perf_counter()
    dts = np.array([timestep_fs_for(a, settings) for a in starts])
    n_steps = np.array([steps_for(dt, settings) for dt in dts], dtype=np.int64)
    runs = [MDRun(steps_scheduled=int(n), timestep_fs=float(dt)) for n, dt in zip(n_steps, dts, strict=True)]
    npt = ensemble == "npt"
    thermostat = _thermostat_for(ensemble, settings)
    p_start, p_end = (settings.pressure_start_gpa, settings.pressure_end_gpa) if npt else (0.0, 0.0)
    md = BatchedMD(
        potential,
        starts,
        timestep_fs=dts,
        temperature_K=settings.temperature_start,
        thermostat=thermostat,  # type: ignore[arg-type]
        ttime_fs=settings.ttime_fs,
        pfactor=_pfactor(settings) if npt else None,
        pressure_gpa=p_start,
        friction_per_ps=settings.friction_per_ps,
        rngs=[_noise_rng(s, ensemble) for s in seeds] if thermostat == "langevin" else None,
        ids=ids,
        neighbour_skin=settings.neighbour_skin,
        neighbour_max_strain=settings.neighbour_max_strain,
    )
    first_energy = np.full(len(starts), np.nan)
    first_volume = np.full(len(starts), np.nan)

    def leave(system: int, reason: str | None, step: int) -> None:
        run = runs[system]
        run.end(reason)
        run.wall_s = time.perf_counter() - t0
        if on_steps is not None and run.steps_scheduled > step:
            on_steps(int(run.steps_scheduled - step))
        if on_leave is not None:
            on_leave(system, run)

    def settle(step: int) -> None:
        for system, reason in md.dropped:
            leave(system, reason, step)
        md.dropped.clear()

    settle(0)
    first_energy[md.index] = md.energy
    first_volume[md.index] = md.volumes()
    step = 0
    while True:
        if not len(md):
            break
        idx = md.index
        md.set_targets(
            ramp(settings.temperature_start, settings.temperature_end, step, n_steps[idx]),
            ramp(p_start, p_end, step, n_steps[idx]),
        )
        # validity of frame `step` (every check_every steps and at each run's last step)
        due = (step % settings.check_every == 0) | (n_steps[idx] == step)
        if due.any():
            ratio = md.volumes() / first_volume[idx] if npt else None
            problems = frame_problems(
                md.energy, first_energy[idx], md.n, md.max_atom_kinetic(), settings, ratio
            )
            temps = md.temperatures()
            stopped = []
            for r in np.flatnonzero(due).tolist():
                system = int(idx[r])
                if problems[r] is not None:
                    leave(system, problems[r], step)
                    stopped.append(system)
                    continue
                runs[system].steps_completed = step
                runs[system].final_temperature = float(temps[r])
                if ratio is not None:
                    runs[system].volume_ratio = float(ratio[r])
            md.remove(stopped)
        if observer is not None:
            observer(step, md)
        finished = [int(s) for s in md.index if n_steps[s] <= step]
        for system in finished:
            leave(system, None, step)
        md.remove(finished)
        if not len(md):
            break
        live = len(md)
        md.step()
        step += 1
        settle(step)
        if on_steps is not None:
            on_steps(live)
    return runs


def run_ase(
    potential: Potential,
    start: Atoms,
    ensemble: str,
    settings: MDSettings,
    *,
    seed: int,
    observer: Callable[[int, Atoms], None] | None = None,
) -> MDRun:
    """Run one ensemble for one start with ASE's own integrator (``NPT`` or ``Langevin``): the reference.

    Same protocol as :func:`run_batched` (targets set before every step, validity of every ``check_every``-th
    frame); the model runs through :func:`aloe.potentials.calculator.calculator_for`.
    """
    import warnings

    from ase.calculators.calculator import CalculationFailed

    from aloe.potentials.calculator import calculator_for

    units = _ase_units()
    t0 = time.perf_counter()
    dt_fs = timestep_fs_for(start, settings)
    n_steps = steps_for(dt_fs, settings)
    run = MDRun(steps_scheduled=n_steps, timestep_fs=dt_fs)
    npt = ensemble == "npt"
    p_start, p_end = (settings.pressure_start_gpa, settings.pressure_end_gpa) if npt else (0.0, 0.0)
    atoms = start.copy()
    atoms.calc = calculator_for(potential)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ASE's NPT alias is deprecated
        if _thermostat_for(ensemble, settings) == "langevin":
            from ase.md.langevin import Langevin

            dyn = Langevin(
                atoms,
                timestep=dt_fs * units.fs,
                temperature_K=settings.temperature_start,
                friction=settings.friction_per_ps / (1000.0 * units.fs),
                fixcm=False,
                rng=_noise_rng(seed, ensemble),
            )
        else:
            try:
                from ase.md.melchionna import MelchionnaNPT as NPT
            except ImportError:  # pragma: no cover - older ASE
                from ase.md.npt import NPT
            dyn = NPT(
                atoms,
                timestep=dt_fs * units.fs,
                temperature_K=settings.temperature_start,
                externalstress=p_start * units.GPa if npt else None,
                ttime=settings.ttime_fs * units.fs,
                pfactor=_pfactor(settings) if npt else None,
            )
    first_energy = first_volume = math.nan
    step = 0
    try:
        for _ in dyn.irun(n_steps):
            step = dyn.nsteps
            dyn.set_temperature(
                temperature_K=float(ramp(settings.temperature_start, settings.temperature_end, step, n_steps))
            )
            if npt:
                dyn.set_stress(float(ramp(p_start, p_end, step, n_steps)) * units.GPa)
            energy = atoms.get_potential_energy()
            if step == 0:
                first_energy, first_volume = energy, atoms.get_volume()
            if step % settings.check_every == 0 or step == n_steps:
                p, masses = atoms.get_momenta(), atoms.get_masses()
                kinetic = float(np.max(0.5 * np.sum(p * p, axis=1) / masses))
                ratio = atoms.get_volume() / first_volume if npt else None
                problem = frame_problems(
                    np.array([energy]),
                    np.array([first_energy]),
                    np.array([len(atoms)]),
                    np.array([kinetic]),
                    settings,
                    None if ratio is None else np.array([ratio]),
                )[0]
                if problem is not None:
                    run.stop_reason = problem
                    break
                run.steps_completed = step
                run.final_temperature = float(atoms.get_temperature())
                if ratio is not None:
                    run.volume_ratio = float(ratio)
            if observer is not None:
                observer(step, atoms)
            if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.get_momenta()).all()):
                run.stop_reason = "non-finite"
                break
    except CalculationFailed as exc:
        run.end(stop_reason_of_error(str(exc)))
    except (np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:
        run.end("non-finite" if "NaN" in str(exc) or "inf" in str(exc) else f"error: {one_line(exc)}")
    run.wall_s = time.perf_counter() - t0
    return run


__all__ = ["run_ase", "run_batched"]
