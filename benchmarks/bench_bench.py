"""Benchmark the benchmarks: aloe's batched EV scan and batched MD against one ASE call per point / per system.

Usage::

    python benchmarks/bench_bench.py [--potential chgnet-0.3.0 | mace:PATH] [--ev-structures 16] [--md-systems 8]
                                     [--md-atoms 64] [--md-steps 20] [--md-skin A] [--device cpu] [--threads 1]
                                     [--out PATH]

(a) EV scan, as MLIP Arena runs it: for each structure, each of the 21 points is its own ASE call with the model's
    own calculator (``CHGNetCalculator``; mace-torch's ``MACECalculator``). aloe: :class:`aloe.bench.ev.EVScan` puts
    the points of 16 structures in one prediction call. Target >= 10x on CPU. They must agree (max |dE| per atom).
(b) MD: ``--md-systems`` random mixtures of ``--md-atoms`` atoms (ZBL-relaxed, :mod:`aloe.bench.structures`), NVT
    Nose-Hoover (ASE ``NPT`` without barostat, the temperature ramp of the protocol) for ``--md-steps`` steps:
    one ASE integrator per system, one after the other, with the model's own calculator vs aloe's batched
    integrator (:class:`aloe.bench.md.MDStability`, every system in one forward pass per step, Verlet lists).
    Target >= 2.5x on CPU (issue 21). Agreement: the start frames' energies and forces of each aloe path against
    the calculator's (the trajectories themselves differ: other start velocities).

Timed paths: ``baseline`` (the calculator, one structure per call), then aloe's previous graph path
(``aloe-converter``: CHGNet's own converter per structure, then ``BatchedGraph.from_graphs``; for MACE
``aloe-per-structure``: mace-torch's ``AtomicData`` per structure) and its default (``aloe-batch``: the graphs
of a batch from one neighbour-list pass). For every path: wall seconds, speed-up over the baseline of the same run,
and the shares of wall time inside the model's forward passes (``CHGNet._compute``; the MACE module's ``forward``)
and inside ``torch.autograd.grad`` (aloe's one backward pass), measured by :class:`_common.ModelClock`. The
calculators differentiate inside the forward (``create_graph``): their backward is counted in the forward, and
shown apart as "grad in fwd".

All paths use the same potential, structures, torch threads and device, in the same process. Model loading and
one warm-up call per path are not timed. Results go to ``benchmarks/results/bench_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import ModelClock, machine, model_methods, model_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHGNET_VERSIONS = {"chgnet-0.3.0": "0.3.0", "chgnet-0.2.0": "0.2.0", "chgnet-r2scan": "r2scan"}


# ---- the potentials of every path ---------------------------------------------------------------------------
def aloe_paths(spec: str, device: str, threads: int) -> dict[str, Any]:
    """aloe's potentials by path name: the previous graph builder and the default one (``"batch"``)."""
    from aloe.potentials.registry import load_potential

    if spec in CHGNET_VERSIONS:
        previous = "converter"
    elif spec.startswith("mace:") or spec.endswith(".model"):
        previous = "per-structure"
    else:
        raise SystemExit(
            f"{spec}: give a CHGNet name ({', '.join(CHGNET_VERSIONS)}) or a MACE file (mace:PATH)"
        )
    kwargs = {"device": device, "threads": threads}
    return {
        f"aloe-{previous}": load_potential(spec, graph_builder=previous, **kwargs),
        "aloe-batch": load_potential(spec, graph_builder="batch", **kwargs),
    }


def baseline_calculator(spec: str, potential: Any, device: str):
    """The model's own ASE calculator (the per-point baseline), around its own copy of the model."""
    if spec in CHGNET_VERSIONS:
        from chgnet.model import CHGNet, CHGNetCalculator

        model = CHGNet.load(model_name=CHGNET_VERSIONS[spec], use_device=device, verbose=False)
        return CHGNetCalculator(model=model, use_device=device)
    return potential.calculator()  # MACEPotential: mace-torch's MACECalculator


def timed(fn: Callable[[], Any], clock: ModelClock) -> tuple[Any, dict[str, Any]]:
    """``fn()`` and its record: wall seconds plus the clock's seconds and shares inside the model."""
    with clock:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, {"seconds": round(seconds, 3), **clock.shares(seconds)}


def with_ratios(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each record gets ``ratio``: the baseline's seconds over its own (the same run's baseline)."""
    base = paths["baseline"]["seconds"]
    for record in paths.values():
        record["ratio"] = round(base / max(record["seconds"], 1e-9), 2)
    return paths


# ---- (a) EV scan ----------------------------------------------------------------------------------------------
def model_elements(potential: Any) -> list[str] | None:
    """The elements a model knows (MACE: its ``atomic_numbers``), or ``None`` for all (CHGNet)."""
    numbers = getattr(potential, "atomic_numbers", None)
    if numbers is None:
        return None
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in numbers]


def ev_structures(n: int, elements: list[str] | None = None):
    """``n`` small crystals of ``elements`` (default any) from the built-in sets (elements and pymatgen's)."""
    from aloe.bench.structures import read_reference_set

    pool = (
        read_reference_set("builtin:elements").structures + read_reference_set("builtin:pymatgen").structures
    )
    pool = [s for s in pool if s.n_atoms <= 16]
    if elements is not None:
        pool = [s for s in pool if set(s.atoms.get_chemical_symbols()) <= set(elements)]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(picks)]


def bench_ev(paths: dict[str, Any], calculator, structures, clock: Callable[[], ModelClock]) -> dict:
    from aloe.bench.ev import EVScan

    scans = {name: EVScan(potential) for name, potential in paths.items()}
    points = next(iter(scans.values())).points

    def one_call_per_point() -> list[list[float]]:  # MLIP Arena's loop
        out = []
        for s in structures:
            energies = []
            for atoms in points(s):
                atoms.calc = calculator
                energies.append(atoms.get_potential_energy() / len(atoms))
            out.append(energies)
        return out

    baseline, records = timed(one_call_per_point, clock())
    timings = {"baseline": records}
    for name, scan in scans.items():
        rows, record = timed(lambda scan=scan: scan.calc_many(structures), clock())
        ok = [k for k, r in enumerate(rows) if not r.get("error")]
        record["max_abs_diff_ev_per_atom"] = max(
            (float(np.max(np.abs(np.asarray(rows[k]["energies"]) - np.asarray(baseline[k])))) for k in ok),
            default=0.0,
        )
        record["failed_rows"] = len(rows) - len(ok)
        timings[name] = record
    n_points = next(iter(scans.values())).settings.n_points
    return {
        "structures": len(structures),
        "points": len(structures) * n_points,
        "paths": with_ratios(timings),
    }


# ---- (b) MD ---------------------------------------------------------------------------------------------------
def md_structures(n: int, atoms: int, elements: list[str] | None = None):
    """``n`` random mixtures of ``atoms`` atoms (of ``elements``, default the mixtures' own list)."""
    from aloe.bench.structures import MixtureSettings, random_mixtures

    only = {} if elements is None else {"elements": elements, "n_elements": min(5, len(elements))}
    return random_mixtures(MixtureSettings(n_structures=n, n_atoms=atoms, **only))


def start_agreement(potential: Any, calculator, structures) -> dict[str, float]:
    """Largest |dE| per atom and |dF| between ``potential`` and the calculator on the MD start structures."""
    from aloe.structures import StructureBatch

    atoms_list = [s.atoms.copy() for s in structures]
    batch = StructureBatch.from_atoms(atoms_list)
    pred = potential.predict(batch)
    de, df = 0.0, 0.0
    for k, atoms in enumerate(atoms_list):
        atoms.calc = calculator
        de = max(de, abs(pred.energy[k] - atoms.get_potential_energy()) / len(atoms))
        forces = pred.forces[batch.atom_slice(k)]
        df = max(df, float(np.max(np.abs(forces - atoms.get_forces()))))
    return {"start_max_abs_diff_ev_per_atom": float(de), "start_max_abs_diff_force_ev_per_a": df}


def bench_md(
    paths: dict[str, Any],
    calculator,
    structures,
    steps: int,
    skin: float | None,
    clock: Callable[[], ModelClock],
) -> dict:
    from ase.md.npt import NPT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.units import fs

    from aloe.bench.md import MDSettings, MDStability

    settings = MDSettings(
        ensembles=["nvt"],
        duration_ps=steps * 2.0e-3,
        timestep_fs=2.0,
        batch_systems=len(structures),
        **({} if skin is None else {"neighbour_skin": skin}),
    )
    skin_a = settings.neighbour_skin
    skin_note = f"neighbour_skin = {skin_a} A" + (" (default)" if skin is None else "")
    t_start, t_end = settings.temperature_start, settings.temperature_end

    def sequential_ase() -> (
        int
    ):  # one ASE NPT (no barostat) per system, the same ramp, the model's calculator
        done = 0
        for k, s in enumerate(structures):
            atoms = s.atoms.copy()
            atoms.calc = calculator
            MaxwellBoltzmannDistribution(atoms, temperature_K=t_start, rng=np.random.default_rng(k))
            Stationary(atoms)
            dyn = NPT(
                atoms,
                timestep=2.0 * fs,
                temperature_K=t_start,
                ttime=settings.ttime_fs * fs,
                pfactor=None,
                externalstress=0.0,
            )
            for step in range(steps):
                dyn.set_temperature(temperature_K=t_start + (t_end - t_start) * step / max(steps, 1))
                dyn.run(1)
                done += 1
        return done

    ase_steps, record = timed(sequential_ase, clock())
    record["steps"] = ase_steps
    timings = {"baseline": record}
    for name, potential in paths.items():
        rows, record = timed(lambda p=potential: MDStability(p, settings).calc_many(structures), clock())
        record["steps_completed"] = [r.get("nvt_steps_completed") for r in rows]
        record["final_temperature"] = [r.get("nvt_final_temperature") for r in rows]
        record.update(start_agreement(potential, calculator, structures))
        timings[name] = record
    return {
        "systems": len(structures),
        "atoms": [s.n_atoms for s in structures],
        "steps": steps,
        "skin_a": skin_a,
        "skin": skin_note,
        "paths": with_ratios(timings),
    }


def warm_up(paths: dict[str, Any], calculator, structure) -> None:
    """Load every model and make one call of each path (untimed: first calls allocate and compile)."""
    from aloe.structures import StructureBatch

    atoms = structure.atoms.copy()
    atoms.calc = calculator
    atoms.get_potential_energy()
    for potential in paths.values():
        _ = potential.model
        potential.predict(StructureBatch.from_atoms([structure.atoms]))
        potential.predict_energies(StructureBatch.from_atoms([structure.atoms]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--potential", default="chgnet-0.3.0", help="a CHGNet name or mace:PATH")
    parser.add_argument("--ev-structures", type=int, default=16)
    parser.add_argument("--md-systems", type=int, default=8)
    parser.add_argument("--md-atoms", type=int, default=64)
    parser.add_argument("--md-steps", type=int, default=20)
    parser.add_argument(
        "--md-skin", type=float, default=None, help="Verlet skin (A) of aloe's MD; default: the integrator's"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", choices=["ev", "md"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_bench.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from aloe.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # "auto" -> cuda or cpu
    paths = aloe_paths(args.potential, device, args.threads)
    first = next(iter(paths.values()))
    calculator = baseline_calculator(args.potential, first, device)
    methods = model_methods(first)
    cuda = device.startswith("cuda")

    def clock() -> ModelClock:
        return ModelClock(methods, cuda=cuda)

    result: dict = {"potential": args.potential, "device": device, "threads": args.threads}
    _ = first.model  # loaded (MACE: its elements)
    elements = model_elements(first)
    ev_set = ev_structures(args.ev_structures, elements)
    warm_up(paths, calculator, ev_set[0])
    if "ev" not in args.skip:
        ev = bench_ev(paths, calculator, ev_set, clock)
        result["ev"] = ev
        rows = list(ev["paths"].items())
        print(model_table(rows, f"EV scan, {ev['structures']} structures x 21 points (target >= 10x)"))
        for name, r in rows[1:]:
            print(
                f"  {name}: max |dE| {r['max_abs_diff_ev_per_atom']:.2e} eV/atom vs baseline, "
                f"{r['failed_rows']} failed rows"
            )
    if "md" not in args.skip:
        md_set = md_structures(args.md_systems, args.md_atoms, elements)
        md = bench_md(paths, calculator, md_set, args.md_steps, args.md_skin, clock)
        result["md"] = md
        rows = list(md["paths"].items())
        print(
            model_table(
                rows,
                f"MD, {md['systems']} systems of {min(md['atoms'])}-{max(md['atoms'])} atoms x {md['steps']} NVT "
                f"steps (target >= 2.5x); {md['skin']}",
            )
        )
        for name, r in rows[1:]:
            temps = ", ".join(f"{t:.0f}" for t in r["final_temperature"] if t is not None)
            print(
                f"  {name}: start frames max |dE| {r['start_max_abs_diff_ev_per_atom']:.2e} eV/atom, "
                f"max |dF| {r['start_max_abs_diff_force_ev_per_a']:.2e} eV/A; steps completed "
                f"{r['steps_completed']} (baseline: {md['paths']['baseline']['steps']} system-steps); final T {temps} K"
            )
    result["machine"] = machine(("torch", "chgnet", "mace-torch", "ase", "numpy", "matscipy"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
