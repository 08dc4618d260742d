"""Benchmarks of interatomic potentials: equilibrium, off-equilibrium forces, EV scan and MD stability.

One module per benchmark (:mod:`aloe.bench.equilibrium`, :mod:`aloe.bench.forces`, :mod:`aloe.bench.ev`,
:mod:`aloe.bench.md`), the structures they read or make (:mod:`aloe.bench.structures`, :mod:`aloe.bench.reference`),
the stage that runs them side by side with checkpoints (:mod:`aloe.bench.stage`) and its report
(:mod:`aloe.bench.report`).
"""
