"""Benchmark the benchmarks: aloe's batched EV scan and batched MD against one ASE call per point / per system.

Usage::

    python benchmarks/bench_bench.py [--potential chgnet-0.3.0] [--ev-structures 16] [--md-systems 8]
                                     [--md-atoms 64] [--md-steps 20] [--device cpu] [--threads 1]

(a) EV scan, as MLIP Arena runs it: for each structure, each of the 21 points is its own ASE call with the model's
    own calculator (``CHGNetCalculator``). aloe: :class:`aloe.bench.ev.EVScan` puts the points of 16 structures in
    one prediction call. Target >= 10x on CPU. The two must agree (max |dE| per atom printed).
(b) MD: ``--md-systems`` random mixtures of ``--md-atoms`` atoms (ZBL-relaxed, :mod:`aloe.bench.structures`), NVT
    Nose-Hoover (ASE ``NPT`` without barostat, the temperature ramp of the protocol) for ``--md-steps`` steps:
    one ASE integrator per system, one after the other, with ``CHGNetCalculator`` vs aloe's batched integrator
    (:class:`aloe.bench.md.MDStability`, every system in one forward pass per step). Target >= 3x on CPU.

Both sides use the same potential, structures, torch threads and device, in the same process. Model loading is not
timed. Results go to ``benchmarks/results/bench_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from _common import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def chgnet_calculator(potential_name: str, device: str):
    """The model's own ASE calculator (the per-point baseline)."""
    from chgnet.model import CHGNet, CHGNetCalculator

    version = {"chgnet-0.3.0": "0.3.0", "chgnet-0.2.0": "0.2.0", "chgnet-r2scan": "r2scan"}[potential_name]
    model = CHGNet.load(model_name=version, use_device=device, verbose=False)
    return CHGNetCalculator(model=model, use_device=device)


def ev_structures(n: int):
    """``n`` small crystals from the built-in sets (elemental crystals and pymatgen's structures)."""
    from aloe.bench.structures import read_reference_set

    pool = (
        read_reference_set("builtin:elements").structures + read_reference_set("builtin:pymatgen").structures
    )
    pool = [s for s in pool if s.n_atoms <= 16]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(picks)]


def bench_ev(potential, calculator, structures) -> dict:
    from aloe.bench.ev import EVScan

    scan = EVScan(potential)
    # Baseline: one ASE call per point (MLIP Arena's loop).
    t0 = time.perf_counter()
    baseline = []
    for s in structures:
        energies = []
        for atoms in scan.points(s):
            atoms.calc = calculator
            energies.append(atoms.get_potential_energy() / len(atoms))
        baseline.append(energies)
    t_ase = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = scan.calc_many(structures)
    t_aloe = time.perf_counter() - t0
    ok = [k for k, r in enumerate(rows) if not r.get("error")]
    diff = max(
        (float(np.max(np.abs(np.asarray(rows[k]["energies"]) - np.asarray(baseline[k])))) for k in ok),
        default=0.0,
    )
    points = len(structures) * scan.settings.n_points
    return {
        "structures": len(structures),
        "points": points,
        "ase_seconds": round(t_ase, 3),
        "aloe_seconds": round(t_aloe, 3),
        "ratio": round(t_ase / t_aloe, 2),
        "max_abs_diff_ev_per_atom": diff,
        "failed_rows": len(rows) - len(ok),
    }


def md_structures(n: int, atoms: int):
    from aloe.bench.structures import MixtureSettings, random_mixtures

    return random_mixtures(MixtureSettings(n_structures=n, n_atoms=atoms))


def bench_md(potential, calculator, structures, steps: int) -> dict:
    from ase.md.npt import NPT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.units import fs

    from aloe.bench.md import MDSettings, MDStability

    settings = MDSettings(
        ensembles=["nvt"], duration_ps=steps * 2.0e-3, timestep_fs=2.0, batch_systems=len(structures)
    )
    t_start, t_end = settings.temperature_start, settings.temperature_end
    # Baseline: one ASE NPT (no barostat) per system, the same ramp, the model's own calculator.
    t0 = time.perf_counter()
    ase_steps = 0
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
            ase_steps += 1
    t_ase = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = MDStability(potential, settings).calc_many(structures)
    t_aloe = time.perf_counter() - t0
    completed = [r.get("nvt_steps_completed") for r in rows]
    return {
        "systems": len(structures),
        "atoms": [s.n_atoms for s in structures],
        "steps": steps,
        "ase_seconds": round(t_ase, 3),
        "aloe_seconds": round(t_aloe, 3),
        "ratio": round(t_ase / t_aloe, 2),
        "aloe_steps_completed": completed,
        "ase_steps": ase_steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--potential", default="chgnet-0.3.0")
    parser.add_argument("--ev-structures", type=int, default=16)
    parser.add_argument("--md-systems", type=int, default=8)
    parser.add_argument("--md-atoms", type=int, default=64)
    parser.add_argument("--md-steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", choices=["ev", "md"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_bench.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from aloe.potentials.registry import load_potential

    torch.set_num_threads(args.threads)
    potential = load_potential(args.potential, device=args.device, threads=args.threads)
    calculator = chgnet_calculator(args.potential, args.device)
    result: dict = {"potential": args.potential, "device": args.device, "threads": args.threads}
    if "ev" not in args.skip:
        ev = bench_ev(potential, calculator, ev_structures(args.ev_structures))
        result["ev"] = ev
        print(
            f"EV scan, {ev['structures']} structures x 21 points: one ASE call per point {ev['ase_seconds']:.1f} s, "
            f"aloe batched {ev['aloe_seconds']:.1f} s -> {ev['ratio']:.1f}x (target >= 10x); "
            f"max |dE| {ev['max_abs_diff_ev_per_atom']:.2e} eV/atom"
        )
    if "md" not in args.skip:
        md = bench_md(potential, calculator, md_structures(args.md_systems, args.md_atoms), args.md_steps)
        result["md"] = md
        print(
            f"MD, {md['systems']} systems of {min(md['atoms'])}-{max(md['atoms'])} atoms x {md['steps']} NVT steps: "
            f"sequential ASE {md['ase_seconds']:.1f} s, aloe batched {md['aloe_seconds']:.1f} s -> "
            f"{md['ratio']:.1f}x (target >= 3x)"
        )
    result["machine"] = machine(("torch", "chgnet", "ase", "numpy"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
