"""Benchmarks of interatomic potentials: equilibrium, off-equilibrium forces, EV scan and MD stability.

- :mod:`aloe.bench.base`: what every benchmark shares: the structure type, the :class:`~aloe.bench.base.Benchmark`
  base class (it owns the batched loop, failure rows and counts; a subclass supplies hooks and its metrics),
  headline metrics, the per-structure seed;
- :mod:`aloe.bench.registry`: the one table of benchmarks (everything that differs per benchmark is an attribute
  or method of its class);
- one module per benchmark: :mod:`~aloe.bench.equilibrium`, :mod:`~aloe.bench.forces`, :mod:`~aloe.bench.ev`,
  and the package :mod:`~aloe.bench.md` (settings, protocol, integrator, drivers, benchmark);
- the structures they read or make (:mod:`~aloe.bench.structures`, :mod:`~aloe.bench.reference`, ZBL in
  :mod:`~aloe.bench.zbl`);
- the stage that runs them side by side with checkpoints (:mod:`~aloe.bench.stage`, settings in
  :mod:`~aloe.bench.settings`) and its report (the package :mod:`~aloe.bench.report`: tables, figures, html);
- the contract every benchmark passes (:func:`aloe.bench.testing.validate_benchmark`).

Folder and file names of bench runs, and their readers (``bench_table``, ``bench_metrics``), are in
:mod:`aloe.layout`.
"""
