"""``aloe study``: does a data strategy pay off? Active-learning data against random and near-equilibrium data.

The MP-ALOE paper's central comparison (its Figs. 3-6) in miniature, for one chemistry and one label budget:
:mod:`~aloe.study.settings` (what to compare), :mod:`~aloe.study.stage` (the arms, built from the existing
stages and the loop), :mod:`~aloe.study.leakage` (the held-out test set) and :mod:`~aloe.study.report` (metric by
arm, learning curves, the verdict).
"""
