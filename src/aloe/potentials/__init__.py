"""Energy models behind one seam (:class:`~aloe.potentials.base.Potential`), resolved by name through a lazy registry.

``load_potential("chgnet-0.3.0")``, ``load_potential("path/to/model.model")``, ``load_potential("pkg.mod:factory")``
or an instance; importing this package does not import torch or any model code.
"""

from __future__ import annotations

from aloe.potentials.base import Potential, Predictions

__all__ = ["Potential", "Predictions", "load_committee", "load_potential"]


def __getattr__(name: str):
    # Lazy: the registry imports nothing heavy itself, but keep `import aloe.potentials` trivially cheap.
    if name in {"load_potential", "load_committee"}:
        from aloe.potentials import registry

        return getattr(registry, name)
    raise AttributeError(name)
