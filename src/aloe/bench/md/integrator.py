"""aloe's batched MD integrator: ASE ``NPT`` (Melchionna) and ``Langevin`` equations for many systems at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from aloe.bench.md.protocol import stop_reason_of_error
from aloe.potentials.neighbours import VERLET_KEY, VerletNeighbours
from aloe.structures import row_matmul

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.potentials.base import Potential, Predictions

_EYE = np.eye(3)


# ---- the batched integrator -------------------------------------------------------------------------------
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
    neighbour_skin
        Verlet skin (A): each system's neighbour list holds the pairs within the model's cutoff plus the skin and
        is rebuilt only when an atom moved more than half the skin (or the cell more than
        ``neighbour_max_strain``); the pairs within the cutoff are filtered every step, so the forces are those of
        a fresh list. 0: a fresh list every step. Used by models that take aloe's neighbour lists
        (:func:`aloe.potentials.neighbours.neighbour_list`); others ignore it.
    neighbour_max_strain
        Largest change of a cell (any component of ``h0^-1 h - 1``) before its system's list is rebuilt.

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
        neighbour_skin: float = 1.0,
        neighbour_max_strain: float = 0.02,
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
        if len(set(self.ids)) != len(self.ids):  # the Verlet lists tell systems apart by their ids
            self.ids = [f"{label}#{k}" for k, label in enumerate(self.ids)]
        self.verlet = (
            VerletNeighbours(skin=float(neighbour_skin), max_strain=float(neighbour_max_strain))
            if neighbour_skin > 0
            else None
        )
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
            self.q = row_matmul(positions, self.inv_h[self.owner]) - 0.5
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
        if self.verlet is not None:
            self.verlet.forget([self.ids[s] for s in gone])
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
            return row_matmul(self.q + 0.5, self.h[self.owner])
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
            frac = row_matmul(self.positions, self.inv_h[self.owner])
        batch = StructureBatch(
            cell=self.h.copy(),
            frac_coords=frac,
            numbers=self.numbers,
            offsets=self.offsets.copy(),
            ids=[self.ids[i] for i in self.index],
        )
        shared = {} if self.verlet is None else {VERLET_KEY: self.verlet}
        pred: Predictions = self.potential.predict(batch, shared)
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
        alpha = (dt * dt)[own, None] * row_matmul(self.forces / self.masses[:, None], self.inv_h[own])
        rate = self.eta + (0.5 * self.zeta)[:, None, None] * _EYE
        beta = dt[:, None, None] * _matmul(self.h, _matmul(rate, self.inv_h))
        inv_b = _inv(beta + _EYE)
        return row_matmul(2 * self.q + row_matmul(self.q_past, (beta - _EYE)[own]) + alpha, inv_b[own])

    def _momenta_from_q(self, q_future: np.ndarray, q_past: np.ndarray) -> np.ndarray:
        """Centred-difference momenta ``(q_future - q_past) h / (2 dt) m``, shape ``(n_total, 3)``."""
        return (
            row_matmul(q_future - q_past, (self.h / (2 * self.dt)[:, None, None])[self.owner])
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
            q_past = self.q - self.dt[self.owner, None] * row_matmul(
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


__all__ = ["BatchedMD"]
