"""The labeler seam: structures -> labelled calculations, or a failure with its class.

A backend subclasses :class:`Labeler` and implements :meth:`Labeler.calculate` (one structure, in its own work folder)
and, where it can, :meth:`Labeler.isolated_atom_energy`. File-based codes split "write inputs" / "parse outputs" from
"how to launch" (see :mod:`aloe.label.vasp`). The stage (:mod:`aloe.label.stage`) owns everything around a backend:
ids, retries, records, failures, resumption, parallelism.

Failure classes (:data:`FAILURE_KINDS`) are what a backend raises through :class:`LabelerError`; the stage retries a
class by applying the settings overrides listed for it (``retry`` in the label settings), in order, then records the
failure. A failure never stops the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms

#: Failure classes and what they mean.
FAILURE_KINDS: dict[str, str] = {
    "scf_unconverged": "the electronic self-consistency did not converge within its step limit",
    "crashed": "the code stopped with an error or was killed",
    "timeout": "the calculation ran past its time limit and was stopped",
    "unphysical": "the result is not usable (NaN/inf, or forces/energy beyond the plausibility limits)",
    "unsupported": "this labeler cannot treat the structure (an element without setups/POTCAR, ...)",
    "input": "the inputs could not be prepared (missing POTCARs, a bad structure, ...)",
}


class LabelerError(Exception):
    """A labelling failure of a known class (see :data:`FAILURE_KINDS`)."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Calculation:
    """One labelled configuration (a static calculation, or one ionic step of a relaxation).

    Attributes
    ----------
    atoms
        The structure the numbers belong to.
    energy
        Total energy, eV.
    forces
        Shape ``(n, 3)``, eV/A.
    stress
        Shape ``(6,)``: Voigt stress in eV/A^3, ASE's sign (positive = tensile).
    magmoms
        Shape ``(n,)`` or ``None``.
    step
        Ionic step index, or ``None`` for a static calculation.
    info
        Anything else worth keeping (SCF iterations, wall time ...), stored in the record's provenance.
    """

    atoms: Atoms
    energy: float
    forces: np.ndarray
    stress: np.ndarray
    magmoms: np.ndarray | None = None
    step: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Labeler:
    """Base class of the labelling backends.

    Attributes
    ----------
    code
        Short code name (``gpaw``, ``vasp``, ``emt``) recorded in every record.
    stand_in
        True for models that are not DFT (EMT): every output says so.
    handles_timeout
        True when the backend stops its own external processes at the time limit (the stage then only waits a
        little longer before it kills the calculation process).
    settings
        The backend's settings model (pydantic; what fixes the numbers, plus how to run).
    RUNTIME_KEYS
        Settings that do not change the numbers (commands, time limits, threads) and stay out of the record id.
    """

    code: str = "labeler"
    stand_in: bool = False
    #: True when the backend enforces the time limit itself (external codes that must stop their own processes).
    handles_timeout: bool = False
    RUNTIME_KEYS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: AloeSettings) -> None:
        self.settings = settings

    # ---- to implement ---------------------------------------------------------------------------------------
    @property
    def functional(self) -> str:
        """The functional of the labels (``r2SCAN``, ``PBE`` ...) or the stand-in's name."""
        raise NotImplementedError

    def code_version(self) -> str:
        """Version of the code that computes the labels."""
        return "unknown"

    def supports(self, atoms: Atoms) -> str | None:
        """``None`` when the structure can be labelled, else why not (a failure of class ``unsupported``)."""
        return None

    def calculate(self, atoms: Atoms, workdir: Path) -> list[Calculation]:
        """Label one structure in ``workdir`` (created, empty on a first attempt); raise :class:`LabelerError`."""
        raise NotImplementedError

    def isolated_atom_energy(self, symbol: str, workdir: Path) -> float:
        """Energy (eV) of one isolated, spin-polarised atom of ``symbol`` in a box, with these settings."""
        raise NotImplementedError(f"{self.code} does not compute isolated-atom energies")

    # ---- provided -----------------------------------------------------------------------------------------
    def label_settings(self) -> dict[str, Any]:
        """The settings that fix the numbers (runtime keys left out): part of every record and of its id."""
        return self.settings.model_dump(mode="json", exclude=set(self.RUNTIME_KEYS))

    def with_overrides(self, overrides: dict[str, Any]) -> Labeler:
        """A copy of this labeler with settings overrides (dotted keys allowed), for a retry."""
        data = self.settings.model_dump()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return type(self)(type(self.settings).model_validate(data))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.code} {self.functional}>"


def check_physical(calc: Calculation, max_force: float, max_energy_per_atom: float) -> None:
    """Raise ``LabelerError('unphysical')`` for NaN/inf or absurd numbers."""
    n = len(calc.atoms)
    values = [calc.energy, *np.asarray(calc.forces).ravel(), *np.asarray(calc.stress).ravel()]
    if not np.all(np.isfinite(values)):
        raise LabelerError("unphysical", "non-finite energy, forces or stress")
    fmax = float(np.linalg.norm(np.asarray(calc.forces), axis=1).max()) if n else 0.0
    if fmax > max_force:
        raise LabelerError("unphysical", f"largest force {fmax:.3g} eV/A exceeds {max_force:g} eV/A")
    if abs(calc.energy) / max(n, 1) > max_energy_per_atom:
        raise LabelerError(
            "unphysical",
            f"|energy| {abs(calc.energy) / n:.3g} eV/atom exceeds {max_energy_per_atom:g} eV/atom",
        )
