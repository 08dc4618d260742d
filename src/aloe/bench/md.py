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
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from aloe.bench.base import Benchmark, BenchStructure, StructureFailed, failure_row, structure_columns
from aloe.errors import one_line
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.potentials.base import Potential, Predictions

ENSEMBLES: tuple[str, ...] = ("nvt", "npt")
Ensemble = Literal["nvt", "npt"]
#: Stream number of each ensemble's Langevin noise (so NVT and NPT draw different random numbers).
_NOISE_STREAM = {"nvt": 1, "npt": 2}
_EYE = np.eye(3)


class MDSettings(AloeSettings):
    """MD stability (paper Fig. 6; MLIP Arena protocol with the paper's validity rules)."""

    ensembles: list[Ensemble] = Field(
        ["nvt", "npt"], min_length=1, description="Ensembles to run for every structure: nvt and/or npt."
    )
    thermostat: Literal["nose-hoover", "langevin"] = Field(
        "nose-hoover",
        description="NVT thermostat: nose-hoover (ASE NPT without barostat, Melchionna's equations) or langevin "
        "(ASE Langevin, no centre-of-mass fixing). NPT always runs ASE NPT's Nose-Hoover + barostat equations "
        "(ASE has no Langevin barostat to check against).",
    )
    friction_per_ps: float = Field(
        10.0, gt=0, description="Langevin friction (1/ps); 10/ps is MLIP Arena's (and VASP's) default."
    )
    temperature_start: float = Field(
        300.0, gt=0, description="Temperature at the start (K): velocities, target."
    )
    temperature_end: float = Field(
        3000.0, gt=0, description="Target temperature at the end of the run (K); linear ramp in between."
    )
    duration_ps: float = Field(10.0, gt=0, description="Simulated time of each run (ps).")
    timestep_fs: float = Field(2.0, gt=0, description="Time step (fs).")
    timestep_fs_hydrogen: float = Field(
        0.5, gt=0, description="Time step (fs) of structures that contain hydrogen."
    )
    ttime_fs: float = Field(25.0, gt=0, description="Nose-Hoover thermostat time (fs).")
    ptime_fs: float = Field(
        75.0, gt=0, description="Barostat time (fs); pfactor = ptime^2 * bulk_modulus (ASE NPT)."
    )
    bulk_modulus_gpa: float = Field(
        100.0, gt=0, description="Bulk modulus (GPa) in the barostat's pfactor = ptime^2 * B."
    )
    pressure_start_gpa: float = Field(0.0, description="NPT target pressure at the start (GPa).")
    pressure_end_gpa: float = Field(
        100.0,
        description="NPT target pressure at the end (GPa), linear ramp; the paper's 100 GPa (MLIP Arena's "
        "original protocol ramps to 500 GPa).",
    )
    seed: int = Field(0, description="Seed of the start velocities (and Langevin noise), mixed with the id.")
    max_energy_change_per_atom: float = Field(
        100.0,
        gt=0,
        description="A frame is valid while |E - E_first| / N of the model's potential energy stays at or below "
        "this (eV/atom).",
    )
    max_kinetic_per_atom: float = Field(
        100.0,
        gt=0,
        description="A frame is valid while the largest per-atom kinetic energy is below this (eV).",
    )
    volume_ratio_min: float = Field(0.1, gt=0, description="NPT: smallest valid V / V_first.")
    volume_ratio_max: float = Field(10.0, gt=0, description="NPT: largest valid V / V_first.")
    check_every: int = Field(
        1, ge=1, description="Steps between validity checks (the last step is always checked)."
    )
    batch_systems: int = Field(8, ge=1, description="Systems in one batched integrator.")
    backend: Literal["auto", "batched", "ase"] = Field(
        "auto",
        description="Integrator. batched: aloe's batched integrator, batch_systems structures per integrator "
        "(one predict call per step for all of them); auto: the same, but one structure per integrator for "
        "models without a batched path (interleaving structures only defeats their calculators' neighbour-list "
        "caches: 3x slower for EMT); ase: ASE's NPT/Langevin per structure (the reference).",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> MDSettings:
        if self.volume_ratio_min >= self.volume_ratio_max:
            raise ValueError("volume_ratio_min must be below volume_ratio_max")
        return self


# ---- start, schedule, validity ----------------------------------------------------------------------------
def structure_seed(seed: int, structure_id: str) -> int:
    """The seed of one structure's run: a hash of ``seed`` and the id (the same in any batch, any order)."""
    digest = hashlib.sha256(f"{int(seed)}:{structure_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: fits a signed 64-bit table column


def upper_triangular_cell(cell: np.ndarray) -> np.ndarray:
    """The same lattice rotated so that ``a`` is general, ``b`` lies in the yz plane and ``c`` along z.

    Parameters
    ----------
    cell
        Shape ``(3, 3)``: lattice vectors as rows.

    Returns
    -------
    numpy.ndarray
        Shape ``(3, 3)``: ``U = cell @ M`` with ``M`` orthogonal and ``U[1, 0] = U[2, 0] = U[2, 1] = 0``, positive
        diagonal. ``M`` is a proper rotation for a right-handed cell (a mirror for a left-handed one).
    """
    cell = np.asarray(cell, dtype=float)
    # QR of the reversed lattice: reversing rows and axes turns the lower-triangular R^T into an upper one.
    flip = np.eye(3)[::-1]
    _, r = np.linalg.qr((flip @ cell).T)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    r = signs[:, None] * r
    upper = flip @ r.T @ flip
    upper[1, 0] = upper[2, 0] = upper[2, 1] = 0.0
    return upper


def md_start(atoms: Atoms, settings: MDSettings, structure_id: str) -> Atoms:
    """The start of a structure's runs (both ensembles, both backends).

    Cell rotated to upper-triangular form (atoms carried along), Maxwell-Boltzmann momenta at
    ``settings.temperature_start`` from ``numpy.random.default_rng(structure_seed(settings.seed, structure_id))``,
    centre-of-mass momentum removed. No calculator attached.

    Raises
    ------
    ValueError
        For a structure without a usable 3D cell.
    """
    from ase.md import velocitydistribution as vd

    from aloe.structures import cell_problem

    start = atoms.copy()
    start.calc = None
    start.constraints = []
    problem = cell_problem(np.asarray(start.cell[:]))
    if problem is not None:
        raise ValueError(problem)
    if len(start) == 0:
        raise ValueError("structure has no atoms")
    start.pbc = True
    start.set_cell(upper_triangular_cell(start.cell[:]), scale_atoms=True)
    rng = np.random.default_rng(structure_seed(settings.seed, structure_id))
    # thermalize_momenta is ASE 3.29's name of MaxwellBoltzmannDistribution (same draws).
    thermalize = getattr(vd, "thermalize_momenta", None)
    if thermalize is not None:
        thermalize(start, settings.temperature_start, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(start, temperature_K=settings.temperature_start, rng=rng)
    if len(start) > 1:  # one atom: nothing to remove (and ASE would divide by a zero temperature)
        vd.Stationary(start)
    return start


def timestep_fs_for(atoms: Atoms, settings: MDSettings) -> float:
    """``timestep_fs_hydrogen`` when the structure holds hydrogen, else ``timestep_fs``."""
    return settings.timestep_fs_hydrogen if bool(np.any(atoms.numbers == 1)) else settings.timestep_fs


def steps_for(timestep_fs: float, settings: MDSettings) -> int:
    """Steps of one run: ``round(duration / timestep)`` (at least 1)."""
    return max(1, round(settings.duration_ps * 1000.0 / timestep_fs))


def ramp(start: float, end: float, step: np.ndarray | int, n_steps: np.ndarray | int) -> np.ndarray:
    """The target at ``step`` of a linear ramp over ``n_steps`` steps: ``start + (end - start) * step / n_steps``."""
    return start + (end - start) * (np.asarray(step, dtype=float) / np.asarray(n_steps, dtype=float))


def frame_problems(
    energy: np.ndarray,
    first_energy: np.ndarray,
    n_atoms: np.ndarray,
    max_atom_kinetic: np.ndarray,
    settings: MDSettings,
    volume_ratio: np.ndarray | None = None,
) -> list[str | None]:
    """Why each frame is invalid (``"non-finite"``, ``"energy"``, ``"kinetic"``, ``"volume"``), or ``None``.

    Parameters
    ----------
    energy, first_energy
        Shape ``(m,)``: potential energy of the frame and of the run's first frame (eV).
    n_atoms
        Shape ``(m,)``: atoms per system.
    max_atom_kinetic
        Shape ``(m,)``: the largest per-atom kinetic energy of the frame (eV).
    settings
        The thresholds.
    volume_ratio
        Shape ``(m,)``: ``V / V_first`` (NPT), or ``None`` (NVT: no volume rule).
    """
    energy = np.asarray(energy, dtype=float)
    change = np.abs(energy - np.asarray(first_energy, dtype=float)) / np.asarray(n_atoms, dtype=float)
    kinetic = np.asarray(max_atom_kinetic, dtype=float)
    ratio = np.ones_like(energy) if volume_ratio is None else np.asarray(volume_ratio, dtype=float)
    out: list[str | None] = []
    for e, k, v in zip(change.tolist(), kinetic.tolist(), ratio.tolist(), strict=True):
        if not (math.isfinite(e) and math.isfinite(k) and math.isfinite(v)):
            out.append("non-finite")
        elif e > settings.max_energy_change_per_atom:
            out.append("energy")
        elif k >= settings.max_kinetic_per_atom:
            out.append("kinetic")
        elif not settings.volume_ratio_min <= v <= settings.volume_ratio_max:
            out.append("volume")
        else:
            out.append(None)
    return out


def stop_reason_of_error(message: str) -> str:
    """A model's failure as a stop reason: ``"non-finite"`` for NaN/inf output, else ``"error: <message>"``.

    Only the first is an instability; ``"error: ..."`` (the model raised) makes the structure's row a failure.
    """
    return "non-finite" if "non-finite" in message else f"error: {message}"


@dataclass
class MDRun:
    """Outcome of one run (one structure, one ensemble).

    Attributes
    ----------
    steps_scheduled
        Steps of the full run.
    timestep_fs
        Its time step (fs).
    steps_completed
        Index of the last frame found valid (frame ``k`` follows step ``k``; frame 0 is the start).
    stop_reason
        ``None`` (ran every step, or the model failed), ``"energy"``, ``"kinetic"``, ``"volume"``, ``"non-finite"``.
    error
        The model's failure (it raised: no instability, the run has no result), else ``None``.
    wall_s
        Wall seconds from the integrator's start until this run left it.
    final_temperature
        Kinetic temperature of the last valid frame (K; ``2 E_kin / (3 N k_B)`` as ASE).
    volume_ratio
        Volume of the last valid frame over the first.
    """

    steps_scheduled: int
    timestep_fs: float
    steps_completed: int = 0
    stop_reason: str | None = None
    error: str | None = None
    wall_s: float = 0.0
    final_temperature: float = math.nan
    volume_ratio: float = math.nan

    def end(self, reason: str | None) -> None:
        """Record why the run ended: an instability, ``"error: <message>"`` (the model failed) or ``None``."""
        if reason is not None and reason.startswith("error: "):
            self.error = reason.removeprefix("error: ")
        else:
            self.stop_reason = reason

    def columns(self, ensemble: str) -> dict[str, Any]:
        """The row columns of this run (``{ensemble}_...``)."""
        out: dict[str, Any] = {
            f"{ensemble}_steps_scheduled": int(self.steps_scheduled),
            f"{ensemble}_steps_completed": int(self.steps_completed),
            f"{ensemble}_completed_share": float(self.steps_completed / self.steps_scheduled),
            f"{ensemble}_time_ps": float(self.steps_completed * self.timestep_fs / 1000.0),
            f"{ensemble}_stop_reason": self.stop_reason,
            f"{ensemble}_steps_per_second": float(self.steps_completed / self.wall_s)
            if self.wall_s > 0
            else 0.0,
            f"{ensemble}_final_temperature": _plain(self.final_temperature),
        }
        if ensemble == "npt":
            out["npt_volume_ratio"] = _plain(self.volume_ratio)
        return out


def _plain(x: float) -> float | None:
    """A float for a row; ``None`` for NaN (no valid frame)."""
    return float(x) if math.isfinite(x) else None


# ---- the batched integrator -------------------------------------------------------------------------------
def _rowmat(x: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Row vectors times per-row matrices: ``x[a] @ mats[a]``, summed in a fixed order.

    Shapes ``(n, 3), (n, 3, 3) -> (n, 3)``. Written out (not ``einsum``/BLAS) so a row's result never depends on
    how many other rows the call holds: a system's trajectory is bit-identical alone and in any batch.
    """
    return x[:, 0, None] * mats[:, 0] + x[:, 1, None] * mats[:, 1] + x[:, 2, None] * mats[:, 2]


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stacked 3x3 products ``a[s] @ b[s]`` in a fixed summation order; shapes ``(m, 3, 3) -> (m, 3, 3)``."""
    return (
        a[:, :, 0, None] * b[:, 0, None, :]
        + a[:, :, 1, None] * b[:, 1, None, :]
        + a[:, :, 2, None] * b[:, 2, None, :]
    )


def _inv(a: np.ndarray) -> np.ndarray:
    """Stacked 3x3 inverses, shape ``(m, 3, 3)``; a singular matrix gives NaN (its system leaves as non-finite)."""
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        out = np.full_like(a, np.nan)
        for s in range(len(a)):
            try:
                out[s] = np.linalg.inv(a[s])
            except np.linalg.LinAlgError:
                pass
        return out


class BatchedMD:
    """Many MD systems advanced together: ASE ``NPT`` (Melchionna) or ``Langevin`` equations, vectorised.

    Systems of different sizes, cells and time steps live in flat arrays (atoms grouped by system as in a
    :class:`~aloe.structures.StructureBatch`). Every step makes one ``potential.predict`` call for all live
    systems. A system whose model fails or whose state turns non-finite leaves the batch (it is listed in
    :attr:`dropped`); :meth:`remove` takes out systems the caller stops (invalid frames, finished runs).

    The discretisation is that of ASE's ``NPT`` (centred-difference Stoermer steps of scaled coordinates
    ``q = r h^-1 - 1/2``, thermostat variable ``zeta``, upper- or lower-triangular strain rate ``eta`` following the
    cell's form, initial backward step with one momentum correction, targets reset before every step as
    ``set_temperature``/``set_stress`` do, including ``pfact = 1 / (pfactor det h)`` of the current cell) and of
    ASE's ``Langevin`` (Vanden-Eijnden/Ciccotti, ``fixcm=False``, noise drawn per system as ``xi`` then ``eta``
    from the system's own generator), so trajectories match ASE's from the same start.

    Parameters
    ----------
    potential
        The model.
    starts
        ``m`` start structures with momenta (see :func:`md_start`); Nose-Hoover needs triangular cells.
    timestep_fs
        Shape ``(m,)`` or a number: time steps (fs).
    temperature_K
        Shape ``(m,)`` or a number: initial target temperatures (K).
    thermostat
        ``"nose-hoover"`` or ``"langevin"``.
    ttime_fs
        Nose-Hoover thermostat time (fs).
    pfactor
        Barostat constant ``ptime^2 * B`` in ASE units (ASE time squared times eV/A^3, as ASE ``NPT``'s
        ``pfactor``), or ``None``: no barostat (NVT). Nose-Hoover only.
    pressure_gpa
        Shape ``(m,)`` or a number: initial target pressure (GPa) when there is a barostat.
    friction_per_ps
        Langevin friction (1/ps).
    rngs
        ``m`` numpy generators of the Langevin noise.
    ids
        ``m`` labels for the model's messages.

    Attributes
    ----------
    index
        Shape ``(m_live,)``: positions in ``starts`` of the live systems, in their array order.
    dropped
        ``(system, reason)`` of systems that left in the last step (model error, non-finite state); the caller
        clears it.
    energy
        Shape ``(m_live,)``: potential energy of the current frame (eV).
    """

    def __init__(
        self,
        potential: Potential,
        starts: Sequence[Atoms],
        *,
        timestep_fs: float | np.ndarray,
        temperature_K: float | np.ndarray,
        thermostat: Literal["nose-hoover", "langevin"] = "nose-hoover",
        ttime_fs: float = 25.0,
        pfactor: float | None = None,
        pressure_gpa: float | np.ndarray = 0.0,
        friction_per_ps: float = 10.0,
        rngs: Sequence[np.random.Generator] | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        from ase import units

        if thermostat not in ("nose-hoover", "langevin"):
            raise ValueError(f"unknown thermostat {thermostat!r}")
        if thermostat == "langevin" and pfactor is not None:
            raise ValueError("the Langevin integrator has no barostat")
        m = len(starts)
        self.potential = potential
        self.thermostat = thermostat
        self.barostat = pfactor is not None
        self.pfactor = None if pfactor is None else float(pfactor)
        self.ttime = float(ttime_fs) * units.fs
        self.friction = float(friction_per_ps) / (1000.0 * units.fs)
        self.kB = units.kB
        self.ids = list(ids) if ids is not None else [str(i) for i in range(m)]
        self.dropped: list[tuple[int, str]] = []
        # ---- per-system state (m,) ...
        self.index = np.arange(m)
        self.n = np.array([len(a) for a in starts], dtype=np.int64)
        self.dt = np.broadcast_to(np.asarray(timestep_fs, dtype=float), (m,)) * units.fs
        self.h = np.array([np.asarray(a.cell[:], dtype=float) for a in starts]).reshape(m, 3, 3)
        self.energy = np.full(m, np.nan)
        self.stress = np.full((m, 6), np.nan)
        self.ext_stress = np.zeros((m, 6))
        self.kT = np.zeros(m)
        self.rngs = list(rngs) if rngs is not None else None
        # ---- ... and per-atom state (n_total,)
        self.numbers = np.concatenate([a.numbers for a in starts]).astype(np.int64)
        self.masses = np.concatenate([a.get_masses() for a in starts]).astype(float)
        self.p = np.concatenate([a.get_momenta() for a in starts]).astype(float).reshape(-1, 3)
        self.forces = np.full_like(self.p, np.nan)
        self._system_fields = ["index", "n", "dt", "h", "energy", "stress", "ext_stress", "kT"]
        self._atom_fields = ["numbers", "masses", "p", "forces"]
        self._update_layout()
        self.inv_h = _inv(self.h)
        positions = np.concatenate([a.positions for a in starts]).astype(float).reshape(-1, 3)
        if thermostat == "nose-hoover":
            # ASE NPT sets the centre-of-mass momentum to zero when made: subtract P / N from every atom.
            total = np.add.reduceat(self.p, self.offsets[:-1], axis=0)
            self.p = self.p - (total / self.n[:, None])[self.owner]
            self.upper = np.array([h[1, 0] == h[2, 0] == h[2, 1] == 0.0 for h in self.h])
            lower = np.array([h[0, 1] == h[0, 2] == h[1, 2] == 0.0 for h in self.h])
            if not np.all(self.upper | lower):
                raise ValueError("Nose-Hoover (ASE NPT) needs triangular cells: start from md_start()")
            self.q = _rowmat(positions, self.inv_h[self.owner]) - 0.5
            self._system_fields += ["upper", "h_past", "eta", "eta_past", "zeta", "zeta_past"]
            self._system_fields += ["tfact", "pfact", "desired_ekin", "inv_h"]
            self._atom_fields += ["q", "q_past", "q_future"]
        else:
            if self.rngs is None or len(self.rngs) != m:
                raise ValueError("Langevin needs one random generator per system")
            self.positions = positions
            # half-step velocity and noise of the current step (atom arrays, so they leave with their system)
            self.lg_v = np.zeros_like(positions)
            self.lg_rnd_vel = np.zeros_like(positions)
            self._system_fields += ["inv_h", "lg_c1", "lg_c2"]
            self._atom_fields += ["positions", "lg_v", "lg_rnd_vel", "lg_c3", "lg_c4", "lg_c5"]
        self.set_targets(temperature_K, pressure_gpa)
        self._evaluate()
        if thermostat == "nose-hoover" and len(self):
            self._initialize()

    # ---- layout -------------------------------------------------------------------------------------------
    def _update_layout(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.n)]).astype(np.int64)
        self.owner = np.repeat(np.arange(len(self.n)), self.n)

    def _sum(self, x: np.ndarray) -> np.ndarray:
        """Per-system sums of per-atom values, shape ``(n_total, ...) -> (m, ...)`` (fixed order per system)."""
        return np.add.reduceat(x, self.offsets[:-1], axis=0)

    def __len__(self) -> int:
        return len(self.index)

    def remove(self, systems: Sequence[int]) -> None:
        """Take the systems ``systems`` (positions in ``starts``) out of the batch."""
        gone = set(int(s) for s in systems)
        if not gone:
            return
        keep = np.array([int(s) not in gone for s in self.index], dtype=bool)
        atom_keep = keep[self.owner]
        for name in self._system_fields:
            value = getattr(self, name, None)
            if value is not None:  # fields made later (the Nose-Hoover start) may not exist yet
                setattr(self, name, value[keep])
        for name in self._atom_fields:
            value = getattr(self, name, None)
            if value is not None:
                setattr(self, name, value[atom_keep])
        if self.rngs is not None:
            self.rngs = [g for g, k in zip(self.rngs, keep.tolist(), strict=True) if k]
        self._update_layout()

    def _drop(self, rows: np.ndarray, reasons: Sequence[str]) -> None:
        """Rows (array positions) leave the batch with their reasons (recorded in :attr:`dropped`)."""
        systems = [int(self.index[r]) for r in rows]
        self.dropped.extend(zip(systems, reasons, strict=True))
        self.remove(systems)

    def _drop_non_finite(self, *atom_arrays: np.ndarray, system_arrays: Sequence[np.ndarray] = ()) -> None:
        ok = np.logical_and.reduceat(
            np.all([np.isfinite(a).all(axis=1) for a in atom_arrays], axis=0), self.offsets[:-1]
        )
        for arr in system_arrays:
            ok &= np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        bad = np.flatnonzero(~ok)
        if len(bad):
            self._drop(bad, ["non-finite"] * len(bad))

    # ---- targets and observables ----------------------------------------------------------------------
    def set_targets(self, temperature_K: float | np.ndarray, pressure_gpa: float | np.ndarray = 0.0) -> None:
        """Target temperature (K) and pressure (GPa) of the next step, per live system (``(m_live,)`` or scalar).

        As ASE's ``set_temperature``/``set_stress``: the thermostat constants are recomputed, the barostat's
        ``pfact`` from the current cell volume, and the external stress is ``(-p, -p, -p, 0, 0, 0)``.
        """
        from ase import units

        m = len(self)
        self.kT = self.kB * np.broadcast_to(np.asarray(temperature_K, dtype=float), (m,)).copy()
        pressure = np.broadcast_to(np.asarray(pressure_gpa, dtype=float), (m,)) * units.GPa
        self.ext_stress = np.zeros((m, 6))
        self.ext_stress[:, :3] = -pressure[:, None]
        if self.thermostat == "nose-hoover":
            n = self.n.astype(float)
            self.tfact = 2.0 / (3 * n * self.kT * self.ttime * self.ttime)
            self.pfact = 1.0 / (self.pfactor * np.linalg.det(self.h)) if self.barostat else np.zeros(m)
            self.desired_ekin = 1.5 * (n - 1) * self.kT
        else:
            dt = self.dt
            fr = self.friction
            self.lg_c1 = dt / 2.0 - dt * dt * fr / 8.0
            self.lg_c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
            sigma = np.sqrt(2 * self.kT[self.owner] * fr / self.masses)[:, None]
            dta = dt[self.owner][:, None]
            self.lg_c3 = np.sqrt(dta) * sigma / 2.0 - dta**1.5 * fr * sigma / 8.0
            self.lg_c5 = dta**1.5 * sigma / (2 * np.sqrt(3))
            self.lg_c4 = fr / 2.0 * self.lg_c5

    def kinetic_energy(self) -> np.ndarray:
        """Shape ``(m_live,)``: kinetic energy per system (eV)."""
        return 0.5 * self._sum(np.sum(self.p * (self.p / self.masses[:, None]), axis=1))

    def max_atom_kinetic(self) -> np.ndarray:
        """Shape ``(m_live,)``: the largest per-atom kinetic energy of each system (eV)."""
        per_atom = 0.5 * np.sum(self.p * self.p, axis=1) / self.masses
        return np.maximum.reduceat(per_atom, self.offsets[:-1])

    def temperatures(self) -> np.ndarray:
        """Shape ``(m_live,)``: kinetic temperature ``2 E_kin / (3 N k_B)`` (K), as ASE's ``get_temperature``."""
        return 2.0 * self.kinetic_energy() / (3.0 * self.n * self.kB)

    def volumes(self) -> np.ndarray:
        """Shape ``(m_live,)``: cell volumes (A^3)."""
        return np.abs(np.linalg.det(self.h))

    def cartesian_positions(self) -> np.ndarray:
        """Shape ``(n_total, 3)``: Cartesian positions of the live atoms (A), not wrapped into the cell."""
        if self.thermostat == "nose-hoover":
            return _rowmat(self.q + 0.5, self.h[self.owner])
        return self.positions

    def system(self, system: int) -> dict[str, np.ndarray]:
        """Current ``positions`` (n, 3), ``momenta`` (n, 3), ``cell`` (3, 3) and ``energy`` of one live system."""
        row = int(np.flatnonzero(self.index == system)[0])
        sl = slice(int(self.offsets[row]), int(self.offsets[row + 1]))
        return {
            "positions": self.cartesian_positions()[sl],
            "momenta": self.p[sl],
            "cell": self.h[row],
            "energy": self.energy[row],
        }

    # ---- model ------------------------------------------------------------------------------------------
    def _evaluate(self) -> None:
        """Energy, forces and stress of every live system; systems whose model fails leave the batch."""
        from aloe.structures import StructureBatch

        if not len(self):
            return
        if self.thermostat == "nose-hoover":
            frac = self.q + 0.5
        else:
            frac = _rowmat(self.positions, self.inv_h[self.owner])
        batch = StructureBatch(
            cell=self.h.copy(),
            frac_coords=frac,
            numbers=self.numbers,
            offsets=self.offsets.copy(),
            ids=[self.ids[i] for i in self.index],
        )
        pred: Predictions = self.potential.predict(batch)
        self.energy = np.asarray(pred.energy, dtype=float).copy()
        self.forces = np.asarray(pred.forces, dtype=float).reshape(-1, 3).copy()
        self.stress = np.asarray(pred.stress, dtype=float).reshape(-1, 6).copy()
        failed = [r for r, e in enumerate(pred.errors) if e is not None]
        if failed:
            self._drop(np.array(failed), [stop_reason_of_error(str(pred.errors[r])) for r in failed])

    # ---- Nose-Hoover / NPT (ASE NPT's equations) -----------------------------------------------------------
    def _triangular(self, six: np.ndarray) -> np.ndarray:
        """Voigt 6-vectors -> triangular 3x3 (upper or lower like each cell); shapes ``(m, 6) -> (m, 3, 3)``."""
        m = len(six)
        out = np.zeros((m, 3, 3))
        out[:, 0, 0], out[:, 1, 1], out[:, 2, 2] = six[:, 0], six[:, 1], six[:, 2]
        up, lo = self.upper, ~self.upper
        out[up, 0, 1], out[up, 0, 2], out[up, 1, 2] = six[up, 5], six[up, 4], six[up, 3]
        out[lo, 1, 0], out[lo, 2, 0], out[lo, 2, 1] = six[lo, 5], six[lo, 4], six[lo, 3]
        return out

    def _stress_with_ideal_gas(self) -> np.ndarray:
        """Shape ``(m, 6)``: model stress minus the kinetic term ``sum p_a p_b / m / V`` (ASE include_ideal_gas)."""
        inv_m = 1.0 / self.masses
        pairs = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
        kinetic = np.stack([self.p[:, a] * self.p[:, b] * inv_m for a, b in pairs], axis=1)
        return self.stress - self._sum(kinetic) * (1.0 / self.volumes())[:, None]

    def _strain_rate_change(self, factor: float) -> np.ndarray:
        """``factor * dt * pfact * det(h) * (stress - external)`` as a triangular matrix, shape ``(m, 3, 3)``."""
        diff = self._stress_with_ideal_gas() - self.ext_stress
        scale = (self.pfact * np.linalg.det(self.h))[:, None]
        return self._triangular(factor * self.dt[:, None] * (scale * diff))

    def _q_future(self) -> np.ndarray:
        """Scaled positions of the next step from the current forces, shape ``(n_total, 3)``."""
        own = self.owner
        dt = self.dt
        alpha = (dt * dt)[own, None] * _rowmat(self.forces / self.masses[:, None], self.inv_h[own])
        rate = self.eta + (0.5 * self.zeta)[:, None, None] * _EYE
        beta = dt[:, None, None] * _matmul(self.h, _matmul(rate, self.inv_h))
        inv_b = _inv(beta + _EYE)
        return _rowmat(2 * self.q + _rowmat(self.q_past, (beta - _EYE)[own]) + alpha, inv_b[own])

    def _momenta_from_q(self, q_future: np.ndarray, q_past: np.ndarray) -> np.ndarray:
        """Centred-difference momenta ``(q_future - q_past) h / (2 dt) m``, shape ``(n_total, 3)``."""
        return (
            _rowmat(q_future - q_past, (self.h / (2 * self.dt)[:, None, None])[self.owner])
            * self.masses[:, None]
        )

    def _initialize(self) -> None:
        """ASE NPT's start: past cell, strain rate, zeta and scaled positions from one backward step."""
        m = len(self)
        self.eta = np.zeros((m, 3, 3))
        self.zeta = np.zeros(m)
        self.h_past = self.h - self.dt[:, None, None] * _matmul(self.h, self.eta)
        self.eta_past = self.eta - self._strain_rate_change(-1.0) if self.barostat else self.eta.copy()
        self.zeta_past = self.zeta - self.dt * self.tfact * (self.kinetic_energy() - self.desired_ekin)
        # q_past from the momenta, q_future from the forces; the momenta these imply are corrected once (ASE).
        p0 = self.p
        p = p0.copy()
        self.q_past = np.zeros_like(self.q)
        self.q_future = np.zeros_like(self.q)
        active = np.ones(m, dtype=bool)
        for _ in range(2):
            atoms_active = active[self.owner]
            q_past = self.q - self.dt[self.owner, None] * _rowmat(
                p / self.masses[:, None], self.inv_h[self.owner]
            )
            self.q_past = np.where(atoms_active[:, None], q_past, self.q_past)
            q_future = self._q_future()
            self.q_future = np.where(atoms_active[:, None], q_future, self.q_future)
            p_new = self._momenta_from_q(q_future, q_past)
            mean_ekin = 0.5 * self._sum(np.sum(p_new * p_new, axis=1) / self.masses) / self.n
            active &= ~(mean_ekin < 1e-5)  # momenta virtually zero: ASE stops correcting
            p = np.where(active[self.owner][:, None], (p0 - p_new) + p0, p)
        self._drop_non_finite(self.q_past, self.q_future)

    def _step_nose_hoover(self) -> None:
        dt = self.dt
        h_future = self.h_past + 2 * dt[:, None, None] * _matmul(self.h, self.eta)
        eta_future = self.eta_past + self._strain_rate_change(-2.0) if self.barostat else self.eta_past
        zeta_future = self.zeta_past + 2 * dt * self.tfact * (self.kinetic_energy() - self.desired_ekin)
        self.h_past, self.h = self.h, h_future
        self.inv_h = _inv(self.h)
        self.q_past, self.q = self.q, self.q_future
        self.eta_past, self.eta = self.eta, eta_future
        self.zeta_past, self.zeta = self.zeta, zeta_future
        self._drop_non_finite(self.q, system_arrays=(self.inv_h, self.zeta, self.eta))
        self._evaluate()
        if not len(self):
            return
        self.q_future = self._q_future()
        self.p = self._momenta_from_q(self.q_future, self.q_past)
        self._drop_non_finite(self.p, self.q_future)

    # ---- Langevin (ASE Langevin's equations) -----------------------------------------------------------------
    def _noise(self) -> tuple[np.ndarray, np.ndarray]:
        """Standard normal ``xi`` and ``eta``, shape ``(n_total, 3)`` each, from each system's own generator."""
        xi, eta = [], []
        for rng, n in zip(self.rngs or [], self.n.tolist(), strict=True):
            xi.append(rng.standard_normal(size=(n, 3)))
            eta.append(rng.standard_normal(size=(n, 3)))
        return np.concatenate(xi), np.concatenate(eta)

    def _step_langevin(self) -> None:
        own = self.owner
        masses = self.masses[:, None]
        dt = self.dt[own][:, None]
        c1, c2 = self.lg_c1[own][:, None], self.lg_c2[own][:, None]
        xi, eta = self._noise()
        rnd_pos = self.lg_c5 * eta
        self.lg_rnd_vel = self.lg_c3 * xi - self.lg_c4 * eta
        v = self.p / masses
        v = v + (c1 * self.forces / masses - c2 * v + self.lg_rnd_vel)
        x = self.positions
        self.positions = x + dt * v + rnd_pos
        # the velocity of the move, as ASE recomputes it (after constraints, of which there are none here)
        self.lg_v = (self.positions - x - rnd_pos) / dt
        self._drop_non_finite(self.positions)
        self._evaluate()
        if not len(self):
            return
        masses = self.masses[:, None]
        c1, c2 = self.lg_c1[self.owner][:, None], self.lg_c2[self.owner][:, None]
        v = self.lg_v + (c1 * self.forces / masses - c2 * self.lg_v + self.lg_rnd_vel)
        self.p = v * masses
        self._drop_non_finite(self.p)

    def step(self) -> None:
        """Advance every live system by one step (its own time step); failures go to :attr:`dropped`."""
        if not len(self):
            return
        if self.thermostat == "nose-hoover":
            self._step_nose_hoover()
        else:
            self._step_langevin()


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
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Metrics of one potential's rows.

        Per ensemble: ``{ens}_n`` (runs), ``{ens}_completed_share_mean``, ``{ens}_survived_share`` (runs that
        completed every step), ``{ens}_survival_auc`` (area under :func:`survival_curve`, 0..1),
        ``{ens}_steps_per_second_mean``; plus ``n`` (rows) and ``n_failed`` (rows with an error, not averaged).
        """
        out: dict[str, Any] = {"n": len(rows), "n_failed": sum(1 for r in rows if r.get("error"))}
        for ens in ENSEMBLES:
            done = _runs_of(rows, ens)
            if not done:
                continue
            shares = np.array([float(r[f"{ens}_completed_share"]) for r in done])
            speeds = np.array([float(r.get(f"{ens}_steps_per_second") or 0.0) for r in done])
            x, surv = survival_curve(rows, ens)
            out[f"{ens}_n"] = len(done)
            out[f"{ens}_completed_share_mean"] = float(shares.mean())
            out[f"{ens}_survived_share"] = float(
                np.mean([r[f"{ens}_steps_completed"] >= r[f"{ens}_steps_scheduled"] for r in done])
            )
            out[f"{ens}_survival_auc"] = float(np.sum((surv[1:] + surv[:-1]) * np.diff(x)) / 2.0)
            out[f"{ens}_steps_per_second_mean"] = float(speeds.mean())
        return out


def _runs_of(rows: Sequence[Mapping[str, Any]], ensemble: str) -> list[Mapping[str, Any]]:
    """Rows without an error that hold a run of ``ensemble``."""
    key = f"{ensemble}_completed_share"
    return [r for r in rows if not r.get("error") and r.get(key) is not None]


def survival_curve(
    rows: Sequence[Mapping[str, Any]], ensemble: str, n_points: int = 101
) -> tuple[np.ndarray, np.ndarray]:
    """Share of runs still valid at each fraction of the run (the report's survival figure).

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
        Shape ``(n_points,)``: share of runs whose completed share is at least that fraction (1 at 0, the share
        that ran every step at 1); NaN everywhere when there are no runs.
    """
    x = np.linspace(0.0, 1.0, n_points)
    done = _runs_of(rows, ensemble)
    if not done:
        return x, np.full(n_points, np.nan)
    shares = np.array([float(r[f"{ensemble}_completed_share"]) for r in done])
    return x, (shares[None, :] >= x[:, None] - 1e-12).mean(axis=1)


__all__ = [
    "ENSEMBLES",
    "BatchedMD",
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
    "survival_curve",
    "timestep_fs_for",
    "upper_triangular_cell",
]
