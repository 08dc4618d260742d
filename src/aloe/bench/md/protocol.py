"""The MD protocol: the start of a run, its schedule (time step, steps, ramps), the validity rules, and a run's outcome."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.bench.base import structure_seed
from aloe.bench.md.settings import MDSettings

if TYPE_CHECKING:
    from ase import Atoms


# ---- start, schedule, validity ----------------------------------------------------------------------------
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


__all__ = [
    "MDRun",
    "frame_problems",
    "md_start",
    "ramp",
    "steps_for",
    "stop_reason_of_error",
    "structure_seed",
    "timestep_fs_for",
    "upper_triangular_cell",
]
