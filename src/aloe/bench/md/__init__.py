"""MD stability benchmark (MP-ALOE paper Fig. 6): how long a potential's molecular dynamics stays physical.

Protocol (MLIP Arena's, with the paper's validity rules; every number is a field of :class:`MDSettings`):

- start: the structure's cell rotated to upper-triangular form (ASE's ``NPT`` needs a triangular box; a rotation
  changes nothing physical), Maxwell-Boltzmann velocities at ``temperature_start`` from a generator seeded by
  ``settings.seed`` and the structure id (:func:`structure_seed`; a structure's run never depends on its batch),
  centre-of-mass momentum removed (ASE ``Stationary``);
- NVT: Nose-Hoover (ASE ``NPT`` without barostat, Melchionna's equations) or Langevin; NPT: Nose-Hoover with
  the Parrinello-Rahman-like barostat of ASE ``NPT``, ``pfactor = ptime^2 * B``;
- ramps: the target temperature goes linearly from ``temperature_start`` to ``temperature_end`` over the run and
  (NPT) the target pressure from ``pressure_start_gpa`` to ``pressure_end_gpa``, set before every step as
  MLIP Arena does (the target of the step from frame ``k`` to ``k + 1`` is the ramp at ``k / n_steps``);
- time step ``timestep_fs`` (``timestep_fs_hydrogen`` when the structure holds H), ``n_steps =
  round(duration_ps / timestep)``;
- a frame is valid while ``|E - E_0| / N <= max_energy_change_per_atom`` (E: the model's potential energy),
  the largest per-atom kinetic energy is below ``max_kinetic_per_atom`` and (NPT) ``V / V_0`` stays within
  ``[volume_ratio_min, volume_ratio_max]``; a run ends at its first invalid frame or on a non-finite number
  (an energy, a force or a state: instabilities, as the paper defines them). A model that raises is not an
  instability: the structure's row fails with the model's message and counts as failed, outside the statistics.

Two integrators give the same trajectories: :class:`BatchedMD`, aloe's own vectorised integrator (many systems
of different sizes and cells in flat arrays, one ``potential.predict`` per step for all live systems, systems
leaving the batch as they stop), and ASE's ``NPT`` / ``Langevin`` driving :func:`calculator_for` (the reference,
``backend: ase``). The tests check that they agree to ~1e-10 A over hundreds of steps.

The package, by job: :mod:`~aloe.bench.md.settings` (the protocol's numbers), :mod:`~aloe.bench.md.protocol` (start,
schedule, validity rules, a run's outcome), :mod:`~aloe.bench.md.integrator` (the batched integrator),
:mod:`~aloe.bench.md.drivers` (one ensemble of many starts, batched or with ASE) and :mod:`~aloe.bench.md.benchmark`
(the benchmark and its survival curve). Everything is importable from ``aloe.bench.md`` as before.
"""

from __future__ import annotations

from aloe.bench.md.benchmark import MDStability, survival_auc, survival_curve, survival_from_shares
from aloe.bench.md.drivers import run_ase, run_batched
from aloe.bench.md.integrator import BatchedMD
from aloe.bench.md.protocol import (
    MDRun,
    frame_problems,
    md_start,
    ramp,
    steps_for,
    stop_reason_of_error,
    structure_seed,
    timestep_fs_for,
    upper_triangular_cell,
)
from aloe.bench.md.settings import ENSEMBLES, Ensemble, MDSettings

__all__ = [
    "ENSEMBLES",
    "BatchedMD",
    "Ensemble",
    "MDRun",
    "MDSettings",
    "MDStability",
    "frame_problems",
    "md_start",
    "ramp",
    "run_ase",
    "run_batched",
    "steps_for",
    "stop_reason_of_error",
    "structure_seed",
    "survival_auc",
    "survival_curve",
    "survival_from_shares",
    "timestep_fs_for",
    "upper_triangular_cell",
]
