"""MD stability benchmark: the batched integrator against ASE's NPT and Langevin, the protocol, the validity rules.

Tolerances of the ASE comparisons (float64, same start, same random numbers for Langevin): positions and cells
within 1e-8 A, velocities within 1e-8 A/(ASE time unit) over every frame. Measured over 200 steps of 2 fs: worst
1.4e-11 A (Nose-Hoover NVT and NPT, EMT and Lennard-Jones) and 6e-14 A (Langevin); the differences are rounding
(summation order) amplified by the dynamics, not a different discretisation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk

from aloe.bench.base import BenchStructure
from aloe.bench.md import (
    BatchedMD,
    MDRun,
    MDSettings,
    MDStability,
    frame_problems,
    md_start,
    ramp,
    run_ase,
    run_batched,
    steps_for,
    stop_reason_of_error,
    structure_seed,
    survival_curve,
    upper_triangular_cell,
)
from aloe.potentials.ase_calculator import EMTPotential
from aloe.potentials.base import Potential, Predictions
from aloe.potentials.registry import load_potential

TOL = 1e-8  # A (positions, cells) and A per ASE time unit (velocities)


# ---- helpers ---------------------------------------------------------------------------------------------
def _emt_structures() -> list[tuple[str, Atoms]]:
    """Three EMT metals of different sizes and cell shapes (4, 2 and 3 atoms)."""
    return [
        ("cu", bulk("Cu", "fcc", a=3.6, cubic=True)),
        ("al", bulk("Al", "fcc", a=4.05) * (2, 1, 1)),
        ("ni", bulk("Ni", "fcc", a=3.52) * (3, 1, 1)),
    ]


def _lj_structures() -> list[tuple[str, Atoms]]:
    """Argon-like fcc crystals near the Lennard-Jones minimum (sigma 2.5 A)."""
    return [
        ("ar-cubic", bulk("Ar", "fcc", a=3.97, cubic=True)),
        ("ar-prim", bulk("Ar", "fcc", a=4.0) * (2, 1, 1)),
        ("ar-hcp", bulk("Ar", "hcp", a=2.8)),
    ]


def _settings(n_steps: int, **kw) -> MDSettings:
    return MDSettings(duration_ps=n_steps * 2e-3, **kw)


def _batched_trajectories(potential, starts, ensemble, settings, seeds, ids=None):
    """Run one batch; per system the frames (positions, velocities, cell) as the observer sees them."""
    frames: dict[int, list] = {i: [] for i in range(len(starts))}

    def observe(step: int, md: BatchedMD) -> None:
        for system in md.index.tolist():
            d = md.system(system)
            masses = starts[system].get_masses()[:, None]
            frames[system].append((step, d["positions"].copy(), d["momenta"] / masses, d["cell"].copy()))

    runs = run_batched(potential, starts, ensemble, settings, seeds=seeds, ids=ids, observer=observe)
    return runs, frames


def _ase_trajectory(potential, start, ensemble, settings, seed):
    frames: list = []

    def observe(step: int, atoms: Atoms) -> None:
        frames.append((step, atoms.positions.copy(), atoms.get_velocities().copy(), atoms.cell[:].copy()))

    run = run_ase(potential, start, ensemble, settings, seed=seed, observer=observe)
    return run, frames


def _max_differences(a: list, b: list) -> tuple[float, float, float]:
    assert [f[0] for f in a] == [f[0] for f in b]
    return tuple(max(float(np.abs(x[k] - y[k]).max()) for x, y in zip(a, b, strict=True)) for k in (1, 2, 3))


def _compare_with_ase(potential, structures, ensemble, settings):
    starts = [md_start(a, settings, sid) for sid, a in structures]
    seeds = [structure_seed(settings.seed, sid) for sid, _ in structures]
    runs, frames = _batched_trajectories(potential, starts, ensemble, settings, seeds)
    n_steps = steps_for(settings.timestep_fs, settings)
    for k, start in enumerate(starts):
        ref_run, ref_frames = _ase_trajectory(potential, start, ensemble, settings, seeds[k])
        assert len(frames[k]) == len(ref_frames) == n_steps + 1
        dpos, dvel, dcell = _max_differences(frames[k], ref_frames)
        assert dpos < TOL and dvel < TOL and dcell < TOL, (k, dpos, dvel, dcell)
        assert runs[k].steps_completed == ref_run.steps_completed == n_steps
        assert runs[k].stop_reason is ref_run.stop_reason is None
        assert runs[k].final_temperature == pytest.approx(ref_run.final_temperature, rel=1e-9)
        if ensemble == "npt":
            assert runs[k].volume_ratio == pytest.approx(ref_run.volume_ratio, rel=1e-9)
    return runs, frames


class _Free(Potential):
    """Zero energy, forces and stress (free particles): a model that costs nothing, for the protocol's mechanics."""

    name = "free"

    def _predict_batch(self, batch, shared):
        out = Predictions.empty(batch)
        out.energy[:] = 0.0
        out.forces[:] = 0.0
        out.stress[:] = 0.0
        out.errors = [None] * len(batch)
        return out


class _Flaky(EMTPotential):
    """EMT through a batched path, failing for structure ``bad`` and giving NaN for ``nan`` after some calls."""

    def __init__(self, after: int = 5) -> None:
        super().__init__()
        self.name = "flaky-emt"
        self.after = after
        self.calls: dict[str, int] = {}

    def _predict_batch(self, batch, shared):
        out = Potential._predict_batch(self, batch, shared)
        for row, sid in enumerate(batch.ids):
            self.calls[sid] = self.calls.get(sid, 0) + 1
            if self.calls[sid] > self.after and sid == "bad":
                out.errors[row] = "boom"
            if self.calls[sid] > self.after and sid == "nan":
                out.energy[row] = np.nan
        return out


# ---- settings and start -------------------------------------------------------------------------------------
def test_settings_defaults_follow_the_paper() -> None:
    s = MDSettings()
    assert s.ensembles == ["nvt", "npt"] and s.thermostat == "nose-hoover"
    assert (s.temperature_start, s.temperature_end, s.duration_ps) == (300.0, 3000.0, 10.0)
    assert (s.timestep_fs, s.timestep_fs_hydrogen, s.ttime_fs, s.ptime_fs) == (2.0, 0.5, 25.0, 75.0)
    assert (s.pressure_start_gpa, s.pressure_end_gpa, s.bulk_modulus_gpa) == (0.0, 100.0, 100.0)
    assert (s.max_energy_change_per_atom, s.max_kinetic_per_atom) == (100.0, 100.0)
    assert (s.volume_ratio_min, s.volume_ratio_max, s.check_every, s.batch_systems) == (0.1, 10.0, 1, 8)
    assert "500" in MDSettings.model_fields["pressure_end_gpa"].description
    assert all(f.description for f in MDSettings.model_fields.values())
    assert steps_for(2.0, s) == 5000 and steps_for(0.5, s) == 20000
    with pytest.raises(ValueError):
        MDSettings(volume_ratio_min=2.0, volume_ratio_max=1.0)
    with pytest.raises(ValueError):
        MDSettings(ensembles=["nve"])


def test_upper_triangular_cell_is_a_rotation() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        cell = rng.normal(size=(3, 3)) + 4 * np.eye(3)
        if np.linalg.det(cell) < 0:
            cell[0] *= -1
        u = upper_triangular_cell(cell)
        assert u[1, 0] == u[2, 0] == u[2, 1] == 0.0
        assert np.all(np.diag(u) > 0)
        np.testing.assert_allclose(u @ u.T, cell @ cell.T, atol=1e-12)  # same lengths and angles
        rotation = np.linalg.solve(cell, u)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_md_start_is_seeded_per_structure() -> None:
    s = MDSettings()
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    a, b, c = md_start(atoms, s, "x"), md_start(atoms, s, "x"), md_start(atoms, s, "y")
    np.testing.assert_array_equal(a.get_momenta(), b.get_momenta())
    assert not np.allclose(a.get_momenta(), c.get_momenta())
    assert np.abs(a.get_momenta().sum(axis=0)).max() < 1e-12  # Stationary
    assert a.cell[1, 0] == a.cell[2, 0] == a.cell[2, 1] == 0.0
    # the rotation keeps every interatomic distance
    np.testing.assert_allclose(
        np.sort(a.get_all_distances(mic=True).ravel()),
        np.sort(atoms.get_all_distances(mic=True).ravel()),
        atol=1e-10,
    )
    assert structure_seed(0, "x") == structure_seed(0, "x") != structure_seed(1, "x")
    assert md_start(atoms, MDSettings(seed=1), "x").get_momenta().tolist() != a.get_momenta().tolist()
    with pytest.raises(ValueError, match="degenerate"):
        md_start(Atoms("Cu", cell=np.zeros((3, 3))), s, "flat")


# ---- the integrator against ASE ----------------------------------------------------------------------------
@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_nose_hoover_matches_ase_emt(ensemble: str) -> None:
    """Three EMT metals in ONE batch follow ASE NPT (no barostat for NVT) frame by frame."""
    _compare_with_ase(
        load_potential("emt"), _emt_structures(), ensemble, _settings(60, pressure_end_gpa=20.0)
    )


@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_nose_hoover_matches_ase_lennard_jones(ensemble: str) -> None:
    _compare_with_ase(load_potential("lj"), _lj_structures(), ensemble, _settings(60, pressure_end_gpa=5.0))


def test_langevin_matches_ase_with_the_same_random_numbers() -> None:
    """Each system draws its noise from its own generator in ASE's order (xi, then eta), so the runs coincide."""
    _compare_with_ase(load_potential("emt"), _emt_structures(), "nvt", _settings(60, thermostat="langevin"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "ensemble", "thermostat"),
    [
        ("emt", "nvt", "nose-hoover"),
        ("emt", "npt", "nose-hoover"),
        ("lj", "nvt", "nose-hoover"),
        ("lj", "npt", "nose-hoover"),
        ("emt", "nvt", "langevin"),
        ("lj", "nvt", "langevin"),
    ],
)
def test_matches_ase_over_hundreds_of_steps(model: str, ensemble: str, thermostat: str) -> None:
    """300 steps (0.6 ps, heating 300 -> 3000 K); NPT always runs the Nose-Hoover barostat equations."""
    structures = _emt_structures() if model == "emt" else _lj_structures()
    settings = _settings(300, thermostat=thermostat, pressure_end_gpa=20.0 if model == "emt" else 5.0)
    _compare_with_ase(load_potential(model), structures, ensemble, settings)


@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_a_system_alone_and_in_a_batch_run_identically(ensemble: str) -> None:
    """Bit for bit: nothing a system computes depends on the other systems of its batch."""
    potential = EMTPotential()
    settings = _settings(20, pressure_end_gpa=20.0)
    structures = _emt_structures()
    starts = [md_start(a, settings, sid) for sid, a in structures]
    seeds = [structure_seed(settings.seed, sid) for sid, _ in structures]
    _, together = _batched_trajectories(potential, starts, ensemble, settings, seeds)
    for k in (0, 2):
        _, alone = _batched_trajectories(potential, [starts[k]], ensemble, settings, [seeds[k]])
        for x, y in zip(together[k], alone[0], strict=True):
            for a, b in zip(x[1:], y[1:], strict=True):
                np.testing.assert_array_equal(a, b)


# ---- protocol ----------------------------------------------------------------------------------------------
def test_targets_follow_linear_ramps() -> None:
    settings = _settings(20, temperature_start=300.0, temperature_end=900.0, pressure_end_gpa=10.0)
    seen: list[tuple[int, float, float]] = []

    def observe(step: int, md: BatchedMD) -> None:
        seen.append((step, float(md.kT[0] / units.kB), float(-md.ext_stress[0, 0] / units.GPa)))
        assert np.all(md.ext_stress[:, 3:] == 0.0) and np.all(md.ext_stress[:, 0] == md.ext_stress[:, 2])

    start = md_start(bulk("Cu", "fcc", a=3.6, cubic=True), settings, "cu")
    run_batched(_Free(), [start], "npt", settings, seeds=[1], observer=observe)
    steps = np.array([s for s, _, _ in seen])
    np.testing.assert_array_equal(steps, np.arange(21))
    np.testing.assert_allclose([t for _, t, _ in seen], 300.0 + 600.0 * steps / 20, rtol=1e-12)
    np.testing.assert_allclose([p for _, _, p in seen], 10.0 * steps / 20, rtol=1e-12, atol=1e-12)
    assert ramp(300.0, 3000.0, 5, 10) == pytest.approx(1650.0)


def test_short_emt_heating_is_stable_with_both_backends() -> None:
    structure = BenchStructure("cu", bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1))
    rows = {}
    for backend in ("batched", "ase"):
        rows[backend] = MDStability("emt", _settings(40, backend=backend, pressure_end_gpa=10.0)).calc(
            structure
        )
    for row in rows.values():
        for ens in ("nvt", "npt"):
            assert row[f"{ens}_completed_share"] == 1.0 and row[f"{ens}_stop_reason"] is None
            assert row[f"{ens}_steps_completed"] == row[f"{ens}_steps_scheduled"] == 40
            assert row[f"{ens}_time_ps"] == pytest.approx(0.08)
            assert row[f"{ens}_steps_per_second"] > 0
            assert math.isfinite(row[f"{ens}_final_temperature"])
        assert 0.5 < row["npt_volume_ratio"] < 1.5 and row["error"] is None and row["timestep_fs"] == 2.0
    for key in ("nvt_final_temperature", "npt_final_temperature", "npt_volume_ratio"):
        assert rows["batched"][key] == pytest.approx(rows["ase"][key], rel=1e-9)
    assert set(MDStability.COLUMNS) >= {k for k in rows["batched"] if k.startswith(("nvt_", "npt_"))}


def test_hydrogen_gets_the_short_time_step() -> None:
    s = MDSettings()
    from aloe.bench.md import timestep_fs_for

    assert timestep_fs_for(Atoms("CuH", cell=np.eye(3) * 3), s) == 0.5
    assert timestep_fs_for(Atoms("Cu2", cell=np.eye(3) * 3), s) == 2.0


def test_the_wall_less_lennard_jones_is_flagged() -> None:
    """Lennard-Jones without its r^-12 wall collapses: both ensembles stop early on the energy or kinetic rule."""
    settings = _settings(150)
    bench = MDStability("lj-nowall", settings)
    row = bench.calc(BenchStructure("ar", bulk("Ar", "fcc", a=3.97, cubic=True)))
    for ens in ("nvt", "npt"):
        assert row[f"{ens}_stop_reason"] in ("energy", "kinetic")
        assert row[f"{ens}_completed_share"] < 1.0
    metrics = MDStability.aggregate([row])
    assert metrics["nvt_survived_share"] == 0.0 and metrics["npt_survival_auc"] < 1.0


# ---- validity rules ----------------------------------------------------------------------------------------
def test_frame_problems_on_constructed_frames() -> None:
    s = MDSettings(
        max_energy_change_per_atom=1.0, max_kinetic_per_atom=2.0, volume_ratio_min=0.5, volume_ratio_max=2.0
    )
    energy = np.array([-10.0, -10.0 + 4.0, -10.0 + 4.01, -10.0, -10.0, -10.0, -10.0, np.nan, -10.0])
    first = np.full(9, -10.0)
    n_atoms = np.full(9, 4)
    kinetic = np.array([0.1, 0.1, 0.1, 1.99, 2.0, 0.1, 0.1, 0.1, np.inf])
    ratio = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.49, 2.01, 1.0, 1.0])
    assert frame_problems(energy, first, n_atoms, kinetic, s, ratio) == [
        None,  # nothing moved
        None,  # exactly 1 eV/atom: still valid
        "energy",
        None,  # just below the kinetic limit
        "kinetic",  # at the limit: not below it
        "volume",
        "volume",
        "non-finite",
        "non-finite",
    ]
    # NVT has no volume rule
    assert frame_problems(energy[5:7], first[5:7], n_atoms[5:7], kinetic[5:7], s) == [None, None]
    assert stop_reason_of_error("emt returned non-finite energy") == "non-finite"
    assert stop_reason_of_error("boom") == "error: boom"


def test_check_every_only_delays_detection() -> None:
    """A kinetic limit the heating run crosses: checked every 7 steps, the run stops at the next check."""
    start = md_start(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1), MDSettings(), "cu")
    outcomes = {}
    for every in (1, 7):
        settings = _settings(100, max_kinetic_per_atom=0.25, check_every=every, ensembles=["nvt"])
        outcomes[every] = run_batched(_Free(), [start], "nvt", settings, seeds=[0])[0]
    first_bad = outcomes[1].steps_completed + 1
    assert outcomes[1].stop_reason == outcomes[7].stop_reason == "kinetic"
    assert 0 < first_bad < 100
    assert outcomes[7].steps_completed == 7 * ((first_bad - 1) // 7)


def test_failing_systems_leave_the_batch_and_the_others_go_on() -> None:
    settings = _settings(12, ensembles=["nvt"], backend="batched")
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    structures = [
        BenchStructure("good", cu.copy()),
        BenchStructure("bad", cu.copy()),
        BenchStructure("flat", Atoms("Cu", cell=np.zeros((3, 3)))),
        BenchStructure("nan", bulk("Ni", "fcc", a=3.52, cubic=True)),
        BenchStructure("good2", bulk("Al", "fcc", a=4.05) * (2, 1, 1)),
    ]
    seen: list[int] = []
    steps: list[int] = []
    bench = MDStability(_Flaky(after=5), settings)
    rows = bench.calc_many(structures, done=lambda i, row: seen.append(i))
    assert sorted(seen) == list(range(5)) and seen[0] == 2  # the unusable structure is final first
    assert [r["structure_id"] for r in rows] == [s.id for s in structures]
    by_id = {r["structure_id"]: r for r in rows}
    assert (
        by_id["flat"]["error"].startswith("ValueError: degenerate cell")
        and "nvt_stop_reason" not in by_id["flat"]
    )
    # the model raised: a failed row with the message, never a score (no run columns)
    assert by_id["bad"]["error"] == "nvt: boom" and "nvt_steps_completed" not in by_id["bad"]
    # a NaN energy is an instability: a valid row whose run stopped
    assert by_id["nan"]["nvt_stop_reason"] == "non-finite" and by_id["nan"]["nvt_completed_share"] < 1
    assert by_id["nan"]["error"] is None
    # the calls before the failure are frame 0 (start) and steps 1..4; the failing call is step 5
    for sid in ("good", "good2"):
        assert by_id[sid]["nvt_completed_share"] == 1.0 and by_id[sid]["error"] is None
        alone = MDStability(EMTPotential(), settings).calc(next(s for s in structures if s.id == sid))
        assert (
            by_id[sid]["nvt_final_temperature"] == alone["nvt_final_temperature"]
        )  # exactly: batch-independent
    assert all(r["wall_s"] >= 0 for r in rows)
    metrics = MDStability.aggregate(rows)
    assert metrics["n"] == 5 and metrics["n_failed"] == 2 and metrics["nvt_n"] == 3
    assert metrics["nvt_survived_share"] == pytest.approx(2 / 3)
    # progress counts every scheduled step, also of runs that stopped early
    starts = [md_start(s.atoms, settings, s.id) for s in structures if s.id != "flat"]
    run_batched(
        _Flaky(after=5),
        starts,
        "nvt",
        settings,
        seeds=[0, 1, 2, 3],
        ids=["good", "bad", "nan", "good2"],
        on_steps=steps.append,
    )
    assert sum(steps) == 4 * 12


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin"])
def test_a_model_failing_at_the_start(thermostat: str) -> None:
    settings = _settings(10, ensembles=["nvt"], thermostat=thermostat)
    start = md_start(bulk("Cu", "fcc", a=3.6, cubic=True), settings, "bad")
    run = run_batched(_Flaky(after=0), [start], "nvt", settings, seeds=[0], ids=["bad"])[0]
    # the model raised: an error, not an instability (no stop reason)
    assert (run.error, run.stop_reason, run.steps_completed, run.steps_scheduled) == ("boom", None, 0, 10)
    assert MDRun(steps_scheduled=10, timestep_fs=2.0).columns("npt")["npt_volume_ratio"] is None


def test_auto_backend_batches_only_batched_models() -> None:
    assert MDStability("emt", MDSettings()).systems_per_integrator == 1
    assert MDStability("emt", MDSettings(backend="batched")).systems_per_integrator == 8
    assert MDStability(_Free(), MDSettings(batch_systems=3)).systems_per_integrator == 3
    assert MDStability("emt", MDSettings(backend="ase")).backend == "ase"


def test_progress_counts_every_scheduled_step() -> None:
    """The caller owns the bar: the benchmark reports steps, up to the total it announces."""
    settings = _settings(5)
    structures = [
        BenchStructure("cu", bulk("Cu", "fcc", a=3.6)),
        BenchStructure("bad", bulk("Cu", "fcc", a=3.6)),
    ]
    steps: list[int] = []
    bench = MDStability(_Flaky(after=2), settings, progress=steps.append)
    rows = bench.calc_many(structures)
    assert rows[0]["nvt_completed_share"] == 1.0 and rows[1]["error"]  # 'bad' failed in NVT: NPT never ran
    assert sum(steps) == bench.progress_total(structures) == 2 * 2 * 5


# ---- aggregation ---------------------------------------------------------------------------------------------
def _row(sid: str, share: float, speed: float = 10.0) -> dict:
    return {
        "structure_id": sid,
        "error": None,
        "nvt_steps_scheduled": 100,
        "nvt_steps_completed": round(100 * share),
        "nvt_completed_share": share,
        "nvt_steps_per_second": speed,
    }


def test_aggregate_and_survival_curve() -> None:
    rows = [
        _row("a", 1.0, 10.0),
        _row("b", 0.5, 20.0),
        _row("c", 0.0, 30.0),
        {"structure_id": "d", "error": "x"},
    ]
    metrics = MDStability.aggregate(rows)
    assert metrics["n"] == 4 and metrics["n_failed"] == 1 and metrics["nvt_n"] == 3
    assert metrics["nvt_completed_share_mean"] == pytest.approx(0.5)
    assert metrics["nvt_survived_share"] == pytest.approx(1 / 3)
    assert metrics["nvt_steps_per_second_mean"] == pytest.approx(20.0)
    # the AUC is the area of the one exact survival curve (the figure's): the mean completed share
    assert metrics["nvt_survival_auc"] == pytest.approx(0.5, abs=1e-12)
    assert "npt_completed_share_mean" not in metrics
    x, surv = survival_curve(rows, "nvt", n_points=11)
    assert x.shape == surv.shape == (11,) and x[0] == 0.0 and x[-1] == 1.0
    # run c completed no step: not alive past the start (the figure's convention, one curve for both)
    assert surv[0] == pytest.approx(2 / 3) and surv[-1] == pytest.approx(1 / 3) and np.all(np.diff(surv) <= 0)
    assert surv[5] == pytest.approx(1 / 3) and surv[4] == pytest.approx(2 / 3)  # b stops at 0.5
    assert np.isnan(survival_curve(rows, "npt")[1]).all()
    assert MDStability.aggregate([_row("a", 1.0)])["nvt_survival_auc"] == pytest.approx(1.0)
