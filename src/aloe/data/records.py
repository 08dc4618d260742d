"""Labelled records in the MatPES / MP-ALOE document schema, and the unit conventions between them and ASE.

A record is a plain JSON-able dict with the keys of the published MatPES v2025.1 and MP-ALOE documents:

``structure``
    pymatgen ``Structure.as_dict()`` (site property ``magmom`` where the code gives moments).
``energy``
    Total energy, eV.
``forces``
    ``n x 3``, eV/A.
``stress``
    Six values ``xx, yy, zz, yz, xz, xy`` in kbar with VASP's sign: positive = compressive. ASE's stress (eV/A^3,
    positive = tensile) converts as ``stress_kbar = -stress_ase * 1602.1766208`` (:func:`stress_to_kbar`).
``abs_forces``, ``nsites``, ``elements``, ``composition``, ``formula_pretty``, ``chemsys``, ``volume``
    Derived metadata, as the published files carry them.
``functional``
    ``"r2SCAN"``, ``"PBE"`` ... or, for stand-ins that are not DFT, their name (``"EMT (stand-in, not DFT)"``).
``cohesive_energy_per_atom``
    ``(energy - sum of isolated-atom energies) / nsites`` when those energies are known, else ``None``.
``provenance``
    ``original_mp_id`` (``None`` for aloe's own structures) and, for aloe's records, ``aloe_id`` (the input
    structure's id), ``labeler``, ``ionic_step``.
``calc``
    aloe's addition: ``code``, ``code_version``, ``settings`` (what fixes the numbers), ``settings_id``.
``aloe_record_id``
    ``sha256(structure + settings_id + step)[:20]``: labelling the same structure with the same settings twice gives
    the same id, so a resumed or repeated run never duplicates a record.

Readers of the published files (:mod:`aloe.data.formats`) accept documents without the aloe keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.errors import AloeError
from aloe.units import EV_PER_A3_IN_KBAR, KBAR_IN_GPA

if TYPE_CHECKING:
    from ase import Atoms


#: The keys every record must have (readers check them).
REQUIRED_KEYS = ("structure", "energy", "forces", "stress")


def stress_to_kbar(stress_ase_voigt: np.ndarray) -> np.ndarray:
    """ASE stress (eV/A^3, tensile positive, Voigt) -> VASP/MatPES stress (kbar, compressive positive, Voigt)."""
    return -np.asarray(stress_ase_voigt, dtype=float) * EV_PER_A3_IN_KBAR


def stress_from_kbar(stress_kbar_voigt: np.ndarray) -> np.ndarray:
    """VASP/MatPES stress (kbar, compressive positive) -> ASE stress (eV/A^3, tensile positive)."""
    return -np.asarray(stress_kbar_voigt, dtype=float) / EV_PER_A3_IN_KBAR


def pressure_gpa(stress_kbar_voigt: np.ndarray) -> float:
    """Pressure (GPa, compression positive) = one third of the trace of the VASP-sign stress."""
    s = np.asarray(stress_kbar_voigt, dtype=float)
    return float(s[:3].sum() / 3.0 * KBAR_IN_GPA)


def structure_key(atoms: Atoms, decimals: int = 8) -> str:
    """A canonical text of a structure (cell, species, fractional positions rounded) for hashing."""
    cell = np.round(np.asarray(atoms.cell[:], dtype=float), decimals) + 0.0
    frac = np.round(np.asarray(atoms.get_scaled_positions(wrap=False), dtype=float), decimals) + 0.0
    return json.dumps(
        {"cell": cell.tolist(), "numbers": [int(z) for z in atoms.numbers], "frac": frac.tolist()},
        separators=(",", ":"),
    )


def settings_id(code: str, settings: dict[str, Any]) -> str:
    """Short hash of a labeler's code name and settings (what fixes the numbers)."""
    text = json.dumps(
        {"code": code, "settings": settings}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_id(atoms: Atoms, settings_hash: str, step: int | None = None) -> str:
    """The stable id of one labelled structure (and ionic step)."""
    text = f"{structure_key(atoms)}|{settings_hash}|{'' if step is None else step}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def make_record(
    atoms: Atoms,
    energy: float,
    forces: np.ndarray,
    stress_ase_voigt: np.ndarray,
    *,
    functional: str,
    code: str,
    code_version: str,
    settings: dict[str, Any],
    aloe_id: str | None = None,
    step: int | None = None,
    magmoms: np.ndarray | None = None,
    isolated_atom_energies: dict[str, float] | None = None,
    original_mp_id: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One record in the MatPES schema (see the module docstring).

    Parameters
    ----------
    atoms
        The structure the numbers belong to (for a relaxation step, that step's structure).
    energy, forces, stress_ase_voigt
        eV; ``(n, 3)`` eV/A; ``(6,)`` eV/A^3 with ASE's sign (converted to kbar, VASP sign, here).
    functional, code, code_version, settings
        What computed it.
    aloe_id
        The input structure's id in aloe (kept in ``provenance``).
    step
        Ionic step (relaxations give one record per step), or ``None`` for a static calculation.
    magmoms
        Per-site magnetic moments, stored as the site property ``magmom``.
    isolated_atom_energies
        Element -> eV, for ``cohesive_energy_per_atom``.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    forces = np.asarray(forces, dtype=float)
    n = len(atoms)
    if forces.shape != (n, 3):
        raise AloeError(f"forces of shape {forces.shape} for a structure of {n} atoms")
    stress = np.asarray(stress_ase_voigt, dtype=float).reshape(-1)
    if stress.shape != (6,):
        raise AloeError(f"stress must have 6 Voigt components, got {stress.shape}")
    plain = atoms.copy()
    plain.calc = None
    for key in list(plain.arrays):
        if key not in ("numbers", "positions"):
            del plain.arrays[key]
    structure = AseAtomsAdaptor.get_structure(plain)
    if magmoms is not None:
        structure.add_site_property("magmom", [float(m) for m in np.asarray(magmoms).reshape(-1)])
    symbols = [str(s) for s in atoms.get_chemical_symbols()]
    cohesive = None
    if isolated_atom_energies and all(s in isolated_atom_energies for s in symbols):
        cohesive = (float(energy) - sum(isolated_atom_energies[s] for s in symbols)) / n
    sid = settings_id(code, settings)
    composition = structure.composition
    provenance: dict[str, Any] = {
        "original_mp_id": original_mp_id,
        "aloe_id": aloe_id,
        "labeler": code,
        "ionic_step": step,
    }
    provenance.update(extra_provenance or {})
    return {
        "aloe_record_id": record_id(atoms, sid, step),
        "structure": structure.as_dict(),
        "energy": float(energy),
        "forces": forces.tolist(),
        "stress": stress_to_kbar(stress).tolist(),
        "abs_forces": np.linalg.norm(forces, axis=1).tolist(),
        "nsites": n,
        "elements": sorted({str(e) for e in composition.elements}),
        "nelements": len(composition.elements),
        "composition": {str(k): float(v) for k, v in composition.items()},
        "formula_pretty": composition.reduced_formula,
        "chemsys": "-".join(sorted({str(e) for e in composition.elements})),
        "volume": float(structure.volume),
        "functional": functional,
        "cohesive_energy_per_atom": cohesive,
        "provenance": provenance,
        "calc": {"code": code, "code_version": code_version, "settings": settings, "settings_id": sid},
    }
