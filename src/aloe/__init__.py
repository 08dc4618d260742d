"""aloe: MP-ALOE-style active-learning data for universal machine-learning interatomic potentials.

Importing :mod:`aloe` is cheap: heavy modules (pymatgen, pyarrow, torch) load only when a stage needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from aloe.errors import AloeError

__all__ = ["AloeError", "__version__"]
