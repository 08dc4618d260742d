"""Near-equilibrium sampling (``aloe generate --mode near-eq``): the MatPES recipe for one's own chemistry.

MatPES sampled its structures from MD snapshots of relaxed structures run with a pretrained universal potential
(then down-sampled with DIRECT: ``aloe select``). Here every starting candidate (an unperturbed candidate of the
space: prototype, elements, occupation, lattice guess) goes through:

1. relaxation of cell and positions: ASE's FIRE on a ``FrechetCellFilter`` to ``fmax`` (at most ``max_steps``; an
   unconverged relaxation goes on and is counted), stopped when the cell volume leaves ``[1/x, x]`` of the start;
2. a supercell: the relaxed cell repeated (shortest repeated axis first) to at least ``supercell_min_atoms``;
3. one NVT run per temperature: Maxwell-Boltzmann velocities (centre of mass at rest, kept there by ``FixCom``),
   ASE's ``Langevin``, ``steps`` steps, keeping ``frames`` snapshots at steps ``k * steps // frames``
   (k = 1..frames), positions wrapped into the cell.

A start fails (no frames, its reason counted) when the relaxation fails or the potential cannot evaluate the MD
start (an element the potential lacks). A run that turns invalid keeps the frames before it and records why:
non-finite energy, forces or state, potential energy per atom more than ``max_energy_change`` from the run's first
frame, an atom with more than ``max_kinetic_energy`` of kinetic energy, or the potential raising.

Random numbers: each run's generator is :func:`md_rng` of (run seed, prototype name, universe index, temperature
index), so a start's frames never depend on the chunk, the order, the shard or the element subset it was produced in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.errors import one_line
from aloe.generate.io import FrameRow, batch_to_table, frames_to_table
from aloe.generate.perturb import wrap_fractional
from aloe.generate.space import prototype_key

if TYPE_CHECKING:
    import pyarrow as pa
    from ase import Atoms
    from ase.calculators.calculator import Calculator

    from aloe.generate.settings import GenerateSettings, NearEqSettings
    from aloe.generate.space import CandidateSpace

#: Key of the MD random streams (the space's sub-sampling and perturbation streams are 1 and 2, the sample draw 3).
MD_STREAM = 4

#: Why a start failed or a run stopped early (the keys counted in the summary; the record keeps the full message).
POTENTIAL_FAILED = "potential failed"
NON_FINITE = "non-finite"
VOLUME_LIMIT = "cell volume limit"
ENERGY_DRIFT = "energy drift"
KINETIC_ENERGY = "kinetic energy"
ERROR = "error"


def md_rng(seed: int, prototype: str, universe_index: int, temperature_index: int) -> np.random.Generator:
    """The random generator of one MD run (start velocities and Langevin noise).

    A pure function of the run seed, the starting candidate (prototype name and universe index, as the
    perturbations of the perturb mode) and the temperature's position in ``temperatures``.
    """
    return np.random.default_rng(
        [int(seed), MD_STREAM, prototype_key(prototype), int(universe_index), int(temperature_index)]
    )


def supercell_repeats(cell: np.ndarray, n_atoms: int, min_atoms: int) -> tuple[int, int, int]:
    """Repeats ``(a, b, c)`` giving at least ``min_atoms`` atoms, adding one repeat to the shortest axis each time."""
    lengths = np.linalg.norm(np.asarray(cell, dtype=float), axis=1)
    reps = np.ones(3, dtype=np.int64)
    while n_atoms * int(np.prod(reps)) < min_atoms:
        reps[int(np.argmin(lengths * reps))] += 1
    return (int(reps[0]), int(reps[1]), int(reps[2]))


def frame_steps(steps: int, frames: int) -> list[int]:
    """The MD steps whose snapshots are kept: ``k * steps // frames`` for k = 1..frames (distinct when frames <= steps)."""
    return [(k * steps) // frames for k in range(1, frames + 1)]


# ---- records ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelaxInfo:
    """How a start's relaxation went."""

    steps: int
    converged: bool
    fmax: float  # largest force on an atom at the end (eV/A)
    energy_per_atom: float
    volume_ratio: float  # relaxed / start volume


@dataclass(frozen=True)
class RunInfo:
    """One temperature's MD run: steps done, frames kept, and why it stopped early (``stopped`` None: it did not)."""

    temperature: float
    timestep_fs: float
    steps: int
    frames: int
    stopped: str | None = None
    detail: str | None = None
    frame_temperatures: list[float] = field(
        default_factory=list
    )  # kinetic temperature of each kept frame (K)


@dataclass(frozen=True)
class StartRecord:
    """What happened to one starting candidate (one entry of a chunk's ``near-eq/chunk-*.json`` log)."""

    index: int
    id: str
    failed: str | None = None  # the reason key when the start gave no frames
    detail: str | None = None
    relax: RelaxInfo | None = None
    supercell: tuple[int, int, int] | None = None
    n_atoms: int | None = None
    runs: list[RunInfo] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain data (for the JSON log)."""
        return asdict(self)


@dataclass(frozen=True)
class Frame:
    """One kept MD snapshot: ``cell`` (3, 3), ``frac_coords`` (n, 3) wrapped into ``[0, 1)``, ``numbers`` (n,)."""

    temperature_index: int
    slot: int  # its number among the run's frames (0 .. frames - 1)
    step: int
    temperature: float  # kinetic temperature (K)
    energy_per_atom: float
    cell: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray

    def to_atoms(self) -> Atoms:
        """The frame as periodic ASE ``Atoms``."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, cell=self.cell, scaled_positions=self.frac_coords, pbc=True)


@dataclass(frozen=True)
class StartOutcome:
    """The frames of one starting candidate and its record."""

    frames: list[Frame]
    record: StartRecord


class _Stop(Exception):
    """A validity rule stopped a relaxation or a run (``reason`` is one of the keys above)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reason(exc: BaseException) -> tuple[str, str]:
    """``(reason key, one-line message)`` of an exception raised while relaxing or running MD."""
    from ase.calculators.calculator import CalculationFailed

    if isinstance(exc, _Stop):
        return exc.reason, exc.detail
    if isinstance(exc, CalculationFailed):
        return (NON_FINITE if "non-finite" in str(exc) else POTENTIAL_FAILED), one_line(exc)
    return ERROR, one_line(exc)


def _check_finite(atoms: Atoms) -> None:
    if not (np.isfinite(atoms.positions).all() and np.isfinite(np.asarray(atoms.cell[:])).all()):
        raise _Stop(NON_FINITE, "positions or cell turned non-finite")


# ---- the three steps -------------------------------------------------------------------------------------------
def relax_start(atoms: Atoms, calculator: Calculator, settings: NearEqSettings) -> tuple[Atoms, RelaxInfo]:
    """Relax cell and positions (FIRE on ``FrechetCellFilter``), guarded against a cell volume leaving its limits.

    Returns the relaxed structure (no calculator) and how it went; raises (:class:`_Stop` or the potential's
    error) when the relaxation cannot go on.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from aloe.potentials.calculator import GuardedCalculator

    v_start = abs(float(atoms.cell.volume))
    limit = settings.max_volume_change

    def check(current: Atoms) -> None:
        _check_finite(current)
        ratio = abs(float(current.cell.volume)) / v_start
        if not 1.0 / limit <= ratio <= limit:
            raise _Stop(
                VOLUME_LIMIT,
                f"relaxation stopped: the cell volume went to {ratio:.3g}x of the start (limit {limit:g}x)",
            )

    work = atoms.copy()
    work.calc = GuardedCalculator(calculator, check)
    optimizer = FIRE(FrechetCellFilter(work), logfile=None)
    converged = bool(optimizer.run(fmax=settings.fmax, steps=settings.max_steps))
    energy = float(work.get_potential_energy())
    forces = np.asarray(work.get_forces(), dtype=float)
    work.calc = None
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise _Stop(NON_FINITE, "the relaxed structure's energy or forces are non-finite")
    info = RelaxInfo(
        steps=int(optimizer.nsteps),
        converged=converged,
        fmax=float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0,
        energy_per_atom=energy / len(work),
        volume_ratio=abs(float(work.cell.volume)) / v_start,
    )
    return work, info


def run_md(
    start: Atoms,
    calculator: Calculator,
    temperature: float,
    temperature_index: int,
    rng: np.random.Generator,
    settings: NearEqSettings,
) -> tuple[list[Frame], RunInfo]:
    """One Langevin NVT run from ``start`` at ``temperature`` (K); the kept frames and the run's record.

    Never raises for what happens during the run: a validity rule or an error of the potential ends the run, and
    the frames kept before it are returned with the reason.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md import velocitydistribution as vd
    from ase.md.langevin import Langevin

    from aloe.potentials.calculator import GuardedCalculator

    timestep = settings.hydrogen_timestep_fs if 1 in start.numbers else settings.timestep_fs
    md = start.copy()
    md.calc = GuardedCalculator(calculator, _check_finite)
    thermalize = getattr(vd, "thermalize_momenta", None)  # ASE 3.29's name of MaxwellBoltzmannDistribution
    if thermalize is not None:
        thermalize(md, temperature, rng=rng)
    else:  # pragma: no cover - ASE < 3.29
        vd.MaxwellBoltzmannDistribution(md, temperature_K=temperature, rng=rng)
    vd.Stationary(md)
    md.set_constraint(FixCom())  # the centre of mass stays at rest (ASE's replacement for Langevin's fixcm)
    dynamics = Langevin(
        md,
        timestep * units.fs,
        temperature_K=temperature,
        friction=settings.friction_per_ps / (1000.0 * units.fs),
        fixcm=False,
        rng=rng,
    )
    keep = {step: slot for slot, step in enumerate(frame_steps(settings.steps, settings.frames))}
    n = len(md)
    frames: list[Frame] = []
    stopped: tuple[str, str] | None = None
    done = 0
    e_first: float | None = None
    try:
        for _ in dynamics.irun(settings.steps):
            step = int(dynamics.nsteps)
            energy = float(md.get_potential_energy())
            e_first = energy if e_first is None else e_first
            stopped = _invalid(md, energy, e_first, settings)
            if stopped is not None:
                break
            done = step
            if step in keep:
                frames.append(
                    Frame(
                        temperature_index=temperature_index,
                        slot=keep[step],
                        step=step,
                        temperature=float(md.get_temperature()),
                        energy_per_atom=energy / n,
                        cell=np.array(md.cell[:], dtype=float),
                        frac_coords=wrap_fractional(md.get_scaled_positions(wrap=False)),
                        numbers=np.array(md.numbers, dtype=np.int16),
                    )
                )
    except Exception as exc:  # the potential raised mid-run: the run ends, its frames stay
        stopped = _reason(exc)
    md.calc = None
    info = RunInfo(
        temperature=float(temperature),
        timestep_fs=float(timestep),
        steps=done,
        frames=len(frames),
        stopped=None if stopped is None else stopped[0],
        detail=None if stopped is None else stopped[1],
        frame_temperatures=[f.temperature for f in frames],
    )
    return frames, info


def _invalid(atoms: Atoms, energy: float, e_first: float, settings: NearEqSettings) -> tuple[str, str] | None:
    """The validity rules of an MD frame: ``(reason, message)`` of the first broken one, else None."""
    momenta = atoms.get_momenta()
    if not (np.isfinite(energy) and np.isfinite(atoms.positions).all() and np.isfinite(momenta).all()):
        return NON_FINITE, "energy, positions or velocities turned non-finite"
    n = len(atoms)
    drift = abs(energy - e_first) / n
    if drift > settings.max_energy_change:
        return ENERGY_DRIFT, (
            f"potential energy moved {drift:.3g} eV/atom from the run's start "
            f"(limit {settings.max_energy_change:g})"
        )
    kinetic = 0.5 * (momenta**2).sum(axis=1) / atoms.get_masses()
    if n and kinetic.max() > settings.max_kinetic_energy:
        return KINETIC_ENERGY, (
            f"an atom's kinetic energy reached {kinetic.max():.3g} eV (limit {settings.max_kinetic_energy:g})"
        )
    return None


def sample_start(
    atoms: Atoms,
    calculator: Calculator,
    settings: NearEqSettings,
    rng_for: Callable[[int], np.random.Generator],
    index: int = 0,
    start_id: str = "",
) -> StartOutcome:
    """Relax one starting candidate, repeat it, run MD at every temperature; never raises for the start's failures.

    Parameters
    ----------
    atoms
        The starting structure (not modified).
    calculator
        ASE calculator of the potential (:func:`aloe.potentials.calculator.calculator_for`).
    settings
        The near-eq settings.
    rng_for
        Temperature index -> the run's random generator (:func:`md_rng`).
    index, start_id
        The start's number and readable id, for its record.
    """
    from aloe.devices import one_blas_thread

    relax_info: RelaxInfo | None = None
    with one_blas_thread():  # the filter's 3x3 matrix functions crawl with busy BLAS threads
        try:
            relaxed = atoms.copy()
            if settings.relax:
                relaxed, relax_info = relax_start(atoms, calculator, settings)
            reps = supercell_repeats(np.asarray(relaxed.cell[:]), len(relaxed), settings.supercell_min_atoms)
            start = relaxed.repeat(reps)
            start.calc = calculator  # an element the potential lacks fails here at the latest
            energy = float(start.get_potential_energy())
            start.calc = None
            if not np.isfinite(energy):
                raise _Stop(NON_FINITE, "the MD start's energy is non-finite")
        except Exception as exc:
            reason, detail = _reason(exc)
            return StartOutcome([], StartRecord(index, start_id, reason, detail, relax=relax_info))
        frames: list[Frame] = []
        runs: list[RunInfo] = []
        for t, temperature in enumerate(settings.temperatures):
            kept, info = run_md(start, calculator, temperature, t, rng_for(t), settings)
            frames.extend(kept)
            runs.append(info)
    record = StartRecord(index, start_id, relax=relax_info, supercell=reps, n_atoms=len(start), runs=runs)
    return StartOutcome(frames, record)


# ---- a chunk of starts -----------------------------------------------------------------------------------------
_CALCULATORS: dict[str, Calculator] = {}


def load_calculator(settings: NearEqSettings) -> Calculator:
    """The ASE calculator of ``settings.potential`` (loaded once per process and settings)."""
    key = json.dumps([settings.potential, settings.device, settings.dtype, settings.threads])
    calculator = _CALCULATORS.get(key)
    if calculator is None:
        from aloe.potentials.calculator import calculator_for
        from aloe.potentials.registry import load_potential

        potential = load_potential(
            settings.potential, device=settings.device, dtype=settings.dtype, threads=settings.threads
        )
        calculator = calculator_for(potential)
        _CALCULATORS.clear()  # one model per process
        _CALCULATORS[key] = calculator
    return calculator


def frames_per_start(settings: NearEqSettings) -> int:
    """Frames a start gives when nothing fails: ``len(temperatures) * frames`` (the stride of frame indices)."""
    return len(settings.temperatures) * settings.frames


def sample_chunk(
    space: CandidateSpace,
    indices: np.ndarray,
    settings: GenerateSettings,
    calculator: Calculator | None = None,
    on_start: Callable[[StartRecord], None] | None = None,
) -> tuple[pa.Table, list[StartRecord]]:
    """Frames of the starting candidates ``indices`` (candidate-schema table, in start, temperature, frame order).

    ``space`` must build unperturbed candidates (``settings.space_settings()``). Frame ``k`` of start ``i`` (k =
    temperature index * frames + slot) has index ``i * frames_per_start + k`` and source id
    ``<prototype>:<occupation>:<elements>@<T>K#<slot>``. ``on_start`` is called with each start's record.
    """
    ne = settings.near_eq
    calculator = calculator if calculator is not None else load_calculator(ne)
    stride = frames_per_start(ne)
    starts = batch_to_table(space.build(np.asarray(indices, dtype=np.int64)), space)
    from aloe.data.candidates import CandidateRows

    rows = CandidateRows(starts)
    universe = starts.column("universe_index").to_numpy()
    scale = starts.column("scale").to_numpy()
    frames: list[FrameRow] = []
    records: list[StartRecord] = []
    for r in range(len(rows)):
        index, proto, occ = int(rows.index[r]), str(rows.prototype[r]), int(rows.occupation[r])
        elements = str(rows.elements[r])
        start_id = f"{proto}:{occ}:{elements}"
        atoms = rows.to_atoms(r)
        atoms.info.clear()
        outcome = sample_start(
            atoms,
            calculator,
            ne,
            lambda t, p=proto, u=int(universe[r]): md_rng(settings.seed, p, u, t),
            index=index,
            start_id=start_id,
        )
        for frame in outcome.frames:
            temperature = ne.temperatures[frame.temperature_index]
            frames.append(
                FrameRow(
                    index=index * stride + frame.temperature_index * ne.frames + frame.slot,
                    prototype=proto,
                    occupation=occ,
                    elements=elements,
                    universe_index=int(universe[r]),
                    scale=float(scale[r]),
                    source_id=f"{start_id}@{temperature:g}K#{frame.slot}",
                    cell=frame.cell,
                    frac_coords=frame.frac_coords,
                    numbers=frame.numbers,
                )
            )
        records.append(outcome.record)
        if on_start is not None:
            on_start(outcome.record)
    return frames_to_table(frames, settings.seed), records


def tally(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over start records (as stored in the JSON logs): starts, relaxed, failed by reason, frames, runs."""
    failures: dict[str, int] = {}
    truncations: dict[str, int] = {}
    counts = {"starts": 0, "relaxed": 0, "relax_unconverged": 0, "failed": 0, "frames": 0, "runs": 0}
    for record in records:
        counts["starts"] += 1
        relax = record.get("relax")
        if relax is not None:
            counts["relaxed"] += 1
            counts["relax_unconverged"] += not relax["converged"]
        if record.get("failed"):
            counts["failed"] += 1
            failures[record["failed"]] = failures.get(record["failed"], 0) + 1
        for run in record.get("runs", []):
            counts["runs"] += 1
            counts["frames"] += run["frames"]
            if run.get("stopped"):
                truncations[run["stopped"]] = truncations.get(run["stopped"], 0) + 1
    counts["runs_truncated"] = sum(truncations.values())
    return {
        **counts,
        "failures": dict(sorted(failures.items())),
        "truncations": dict(sorted(truncations.items())),
    }


def failure_examples(records: list[dict[str, Any]]) -> dict[str, str]:
    """The first message of each failure and truncation reason (``start id: message``)."""
    examples: dict[str, str] = {}
    for record in records:
        if record.get("failed") and record["failed"] not in examples:
            examples[record["failed"]] = f"{record['id']}: {record['detail']}"
        for run in record.get("runs", []):
            key = run.get("stopped")
            if key and f"run: {key}" not in examples:
                examples[f"run: {key}"] = f"{record['id']} at {run['temperature']:g} K: {run['detail']}"
    return examples


__all__ = [
    "Frame",
    "RelaxInfo",
    "RunInfo",
    "StartOutcome",
    "StartRecord",
    "frame_steps",
    "frames_per_start",
    "load_calculator",
    "md_rng",
    "relax_start",
    "run_md",
    "sample_chunk",
    "sample_start",
    "supercell_repeats",
    "tally",
]
