"""An ASE calculator that evaluates any aloe :class:`~aloe.potentials.base.Potential`.

ASE's optimizers, filters and molecular dynamics drive a ``Calculator``; :class:`PotentialCalculator` lets them
drive every aloe potential, including batched models that offer no ASE calculator of their own. Each call
evaluates one structure through :meth:`Potential.predict`, so the potential's failure isolation applies and a
failed prediction surfaces as ASE's :class:`~ase.calculators.calculator.CalculationFailed` with the model's reason.

Units and signs are aloe's, which are ASE's: energy in eV, forces in eV/A, stress in eV/A^3 as six Voigt
components (xx, yy, zz, yz, xz, xy), positive = tensile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes

from aloe.structures import StructureBatch

if TYPE_CHECKING:
    from ase import Atoms

    from aloe.potentials.base import Potential


class PotentialCalculator(Calculator):
    """ASE calculator backed by an aloe potential.

    Every structure is treated as periodic in all three directions (aloe potentials work on periodic cells), so
    the ``Atoms`` must have a full 3D cell; its ``pbc`` flags are ignored. A molecule needs a box large enough
    that its periodic images do not interact.

    Parameters
    ----------
    potential
        The model to evaluate.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Raises
    ------
    ase.calculators.calculator.CalculationFailed
        From any ``get_*`` call when the structure has no 3D cell or the potential reports the prediction as failed
        (it raised, or returned NaN/inf); the message names the model and the reason.

    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, potential: Potential, **kwargs) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        #: Number of model evaluations made so far (diagnostics and tests).
        self.n_evaluations = 0

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Evaluate energy, forces and stress together (one model call gives all three)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        name = getattr(self.potential, "name", type(self.potential).__name__)
        if atoms.cell.rank < 3:
            raise CalculationFailed(
                f"{name}: aloe potentials need a periodic structure with a full 3D cell "
                f"(got cell rank {atoms.cell.rank}); put the atoms in a box"
            )
        batch = StructureBatch.from_atoms([atoms])
        self.n_evaluations += 1
        pred = self.potential.predict(batch)
        reason = pred.errors[0] if pred.errors else None
        if reason is not None:
            raise CalculationFailed(f"{name}: prediction failed for {atoms.get_chemical_formula()}: {reason}")
        energy = float(pred.energy[0])
        self.results = {
            "energy": energy,
            # aloe potentials give no electronic entropy term, so the free energy is the energy.
            "free_energy": energy,
            "forces": np.array(pred.forces, dtype=float).reshape(len(atoms), 3),
            "stress": np.array(pred.stress[0], dtype=float).reshape(6),
        }


class GuardedCalculator(Calculator):
    """Runs ``check(atoms)`` before every calculation of ``inner``; ``check`` raises to stop before the model call.

    ASE's optimizer observers run only after the forces of a new step have been computed: too late for a structure
    whose neighbour graph no longer fits in memory. This wrapper sees each structure the model is about to get
    (the elemental-reference relaxations use it to stop collapsing cells).

    Parameters
    ----------
    inner
        The calculator that does the work; its results are taken over unchanged.
    check
        Called with the structure before each calculation; whatever it raises propagates to the caller (the
        optimizer's ``run``).

    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, inner: Calculator, check: Callable[[Atoms], None], **kwargs) -> None:
        super().__init__(**kwargs)
        self.inner = inner
        self.check = check

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Check the structure, then let ``inner`` compute ``properties`` and take over its results."""
        super().calculate(atoms, properties, system_changes)
        self.check(self.atoms)
        for name in properties:
            self.inner.get_property(name, self.atoms)
        self.results = dict(self.inner.results)


def calculator_for(potential: Potential) -> Calculator:
    """An ASE calculator that evaluates ``potential`` through aloe's own prediction path.

    The adapter is used even where the model ships a calculator of its own: aloe's path is the faster one for
    CHGNet (one backward pass instead of two; measured 2x on the reference relaxations) and gives the same numbers
    as the committee's screening, and for plain ASE models it only forwards the call.
    """
    return PotentialCalculator(potential)
