"""ASE's EMT as a labeling stand-in: instant, deterministic, for tests and demos. NOT DFT.

EMT knows Al, Cu, Ag, Au, Ni, Pd, Pt (and H, C, N, O roughly); other elements are 'unsupported'. Every record it
produces carries the functional ``"EMT (stand-in, not DFT)"``, so its data can never pass for DFT labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aloe.label.base import Calculation, Labeler, LabelerError
from aloe.label.settings import EMTSettings

if TYPE_CHECKING:
    from ase import Atoms

#: Elements ASE's EMT has parameters for.
EMT_ELEMENTS = frozenset({"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"})
STAND_IN_NAME = "EMT (stand-in, not DFT)"


class EMTLabeler(Labeler):
    """EMT energies, forces and stress; optionally a few BFGS steps, one record per step."""

    code = "emt"
    stand_in = True

    def __init__(self, settings: EMTSettings | None = None) -> None:
        super().__init__(settings or EMTSettings())

    @property
    def functional(self) -> str:
        """``EMT (stand-in, not DFT)``."""
        return STAND_IN_NAME

    def code_version(self) -> str:
        """ASE's version (EMT ships with ASE)."""
        import ase

        return f"ase-{ase.__version__}"

    def supports(self, atoms: Atoms) -> str | None:
        """EMT's elements only."""
        missing = sorted(set(atoms.get_chemical_symbols()) - EMT_ELEMENTS)
        if missing:
            return f"not supported by this labeler: EMT has no parameters for {', '.join(missing)}"
        return None

    def calculate(self, atoms: Atoms, workdir: Path) -> list[Calculation]:
        """A static point, then ``relax_steps`` BFGS steps (positions only), each a :class:`Calculation`."""
        from ase.calculators.emt import EMT

        work = atoms.copy()
        work.calc = EMT()
        calcs = [self._snapshot(work, None if self.settings.relax_steps == 0 else 0)]
        if self.settings.relax_steps:
            from ase.optimize import BFGS

            opt = BFGS(work, logfile=str(Path(workdir) / "bfgs.log"))
            for step in range(1, self.settings.relax_steps + 1):
                opt.run(fmax=0.0, steps=1)
                calcs.append(self._snapshot(work, step))
        return calcs

    @staticmethod
    def _snapshot(atoms: Atoms, step: int | None) -> Calculation:
        try:
            energy = float(atoms.get_potential_energy())
            forces = np.asarray(atoms.get_forces(), dtype=float)
            stress = np.asarray(atoms.get_stress(voigt=True), dtype=float)
        except Exception as exc:  # EMT raises for odd inputs (e.g. atoms on top of each other)
            raise LabelerError("crashed", f"EMT raised {type(exc).__name__}: {exc}") from None
        frozen = atoms.copy()
        frozen.calc = None
        return Calculation(frozen, energy, forces, stress, step=step)

    def isolated_atom_energy(self, symbol: str, workdir: Path) -> float:
        """EMT's energy of one atom in a 20 A box."""
        from ase import Atoms
        from ase.calculators.emt import EMT

        atom = Atoms(symbol, cell=[20.0, 20.5, 21.0], pbc=True)
        atom.calc = EMT()
        return float(atom.get_potential_energy())
