"""Committee disagreement, discard filters and the selection rule, vectorised over structures.

Shapes: ``M`` models, ``m`` structures, ``N`` atoms in total (atoms grouped by structure, ``offsets`` of length
``m + 1`` marking each structure's rows).

Definitions (MP-ALOE; ``shared/DESIGN.md``):

- energy disagreement: population standard deviation over models of energy per atom (by default the formation
  energy per atom, each model against its own elemental references);
- force disagreement: mean over model pairs of the RMS over atoms of ``|F_a - F_b|``;
- stress disagreement: mean over model pairs of the Euclidean norm of the 6-component Voigt stress difference;
- discard: median formation energy per atom > 0.25 eV/atom, median largest ``|F|`` > 50 eV/A, median
  ``|mean(s_xx, s_yy, s_zz)|`` > 0.5 eV/A^3;
- thresholds 0.1 (eV/atom, eV/A, eV/A^3) times one factor per structure: x5 with any noble gas (He a further x3,
  Ne a further x2), x4 with Tc, x4 with any actinoid, x3 with any lanthanoid, and always x sqrt(N/2);
  selected if any disagreement exceeds its threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from aloe.screen.settings import DiscardSettings, MultiplierSettings, ThresholdSettings

#: Outcomes, in the order they are decided.
OVERLAP, FAILED, DISCARDED, SELECTED, REJECTED = "overlap", "failed", "discarded", "selected", "rejected"
OUTCOMES = (SELECTED, REJECTED, DISCARDED, FAILED, OVERLAP)

_NOBLE = {2, 10, 18, 36, 54, 86, 118}


def per_structure_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum rows of ``values`` (shape ``(..., N)``) per structure -> ``(..., m)``."""
    return np.add.reduceat(values, offsets[:-1], axis=-1) if len(offsets) > 1 else values[..., :0]


def energy_disagreement(energy_per_atom: np.ndarray) -> np.ndarray:
    """Population std over models, ``(M, m) -> (m,)``."""
    return np.std(energy_per_atom, axis=0)


def force_disagreement(forces: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Mean over model pairs of the per-structure RMS over atoms of ``|F_a - F_b|``; ``(M, N, 3) -> (m,)``."""
    n_models = forces.shape[0]
    n_atoms = np.diff(offsets)
    pairs = list(combinations(range(n_models), 2))
    if not pairs:
        return np.zeros(len(n_atoms))
    total = np.zeros(len(n_atoms))
    for a, b in pairs:
        sq = np.sum((forces[a] - forces[b]) ** 2, axis=-1)  # (N,)
        total += np.sqrt(per_structure_sum(sq, offsets) / n_atoms)
    return total / len(pairs)


def stress_disagreement(stress: np.ndarray) -> np.ndarray:
    """Mean over model pairs of ``||s_a - s_b||`` (6 Voigt components); ``(M, m, 6) -> (m,)``."""
    pairs = list(combinations(range(stress.shape[0]), 2))
    if not pairs:
        return np.zeros(stress.shape[1])
    return np.mean([np.linalg.norm(stress[a] - stress[b], axis=-1) for a, b in pairs], axis=0)


def max_force(forces: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Largest per-atom ``|F|`` of each structure for each model; ``(M, N, 3) -> (M, m)``."""
    norms = np.linalg.norm(forces, axis=-1)
    return np.maximum.reduceat(norms, offsets[:-1], axis=-1)


def normal_stress(stress: np.ndarray) -> np.ndarray:
    """``|mean(s_xx, s_yy, s_zz)|``; ``(M, m, 6) -> (M, m)``."""
    return np.abs(stress[..., :3].mean(axis=-1))


def formation_energy_per_atom(
    energy: np.ndarray, numbers: np.ndarray, offsets: np.ndarray, references: Sequence[np.ndarray]
) -> np.ndarray:
    """Formation energy per atom for each model.

    Parameters
    ----------
    energy
        ``(M, m)`` total energies (eV).
    numbers
        ``(N,)`` atomic numbers.
    offsets
        ``(m + 1,)``.
    references
        ``M`` arrays indexed by atomic number: each model's elemental reference energy (eV/atom).

    Returns
    -------
    numpy.ndarray
        ``(M, m)`` eV/atom.
    """
    n_atoms = np.diff(offsets)
    out = np.empty_like(energy, dtype=float)
    for k, table in enumerate(references):
        out[k] = (energy[k] - per_structure_sum(table[numbers], offsets)) / n_atoms
    return out


def threshold_factor(numbers: np.ndarray, offsets: np.ndarray, settings: MultiplierSettings) -> np.ndarray:
    """The factor on all three thresholds for each structure, ``(m,)``."""
    n_atoms = np.diff(offsets)
    owner = np.repeat(np.arange(len(n_atoms)), n_atoms)

    def has(mask: np.ndarray) -> np.ndarray:
        return np.bincount(owner[mask], minlength=len(n_atoms)) > 0

    z = numbers
    factor = np.ones(len(n_atoms))
    factor *= np.where(has(np.isin(z, list(_NOBLE))), settings.noble_gas, 1.0)
    factor *= np.where(has(z == 2), settings.helium, 1.0)
    factor *= np.where(has(z == 10), settings.neon, 1.0)
    factor *= np.where(has(z == 43), settings.technetium, 1.0)
    factor *= np.where(has((z >= 89) & (z <= 103)), settings.actinoid, 1.0)
    factor *= np.where(has((z >= 57) & (z <= 71)), settings.lanthanoid, 1.0)
    factor *= (n_atoms / settings.size_reference) ** settings.size_exponent
    return factor


@dataclass
class ScreenMetrics:
    """Per-structure results of a committee screen; every array has shape ``(m,)`` unless noted."""

    outcome: np.ndarray  # str
    reason: list[str]
    factor: np.ndarray
    energy_disagreement: np.ndarray
    force_disagreement: np.ndarray
    stress_disagreement: np.ndarray
    median_formation_energy: np.ndarray
    median_max_force: np.ndarray
    median_normal_stress: np.ndarray
    formation_energy: np.ndarray  # (M, m) eV/atom
    energy_per_atom: np.ndarray  # (M, m) eV/atom

    @property
    def selected(self) -> np.ndarray:
        """Bool mask of selected structures."""
        return self.outcome == SELECTED


def evaluate(
    energy: np.ndarray,
    forces: np.ndarray,
    stress: np.ndarray,
    numbers: np.ndarray,
    offsets: np.ndarray,
    references: Sequence[np.ndarray] | None,
    *,
    thresholds: ThresholdSettings,
    multipliers: MultiplierSettings,
    discard: DiscardSettings,
    energy_basis: str = "formation",
    failed: Mapping[int, str] | None = None,
    overlap: Mapping[int, str] | None = None,
) -> ScreenMetrics:
    """Apply the MP-ALOE rules to a committee's predictions.

    Parameters
    ----------
    energy, forces, stress
        ``(M, m)``, ``(M, N, 3)``, ``(M, m, 6)`` predictions (eV, eV/A, eV/A^3).
    numbers, offsets
        The structures' atomic numbers ``(N,)`` and offsets ``(m + 1,)``.
    references
        Per model, elemental references indexed by Z (eV/atom); ``None`` skips formation energies (then the
        formation-energy discard filter is off and ``energy_basis`` must be ``"total"``).
    thresholds, multipliers, discard
        The rules.
    energy_basis
        ``"formation"`` or ``"total"`` (energy per atom).
    failed, overlap
        Structure rows that failed (a model raised or returned NaN) or overlap, with their reasons; their
        metrics are NaN and they are neither discarded nor selected.
    """
    m = energy.shape[1]
    n_atoms = np.diff(offsets)
    energy_per_atom = energy / n_atoms
    if references is not None:
        formation = formation_energy_per_atom(energy, numbers, offsets, references)
    else:
        formation = np.full_like(energy_per_atom, np.nan)
    basis = formation if energy_basis == "formation" else energy_per_atom
    with np.errstate(invalid="ignore"):
        e_dis = energy_disagreement(basis)
        f_dis = force_disagreement(forces, offsets)
        s_dis = stress_disagreement(stress)
        med_form = np.median(formation, axis=0)
        med_force = np.median(max_force(forces, offsets), axis=0)
        med_stress = np.median(normal_stress(stress), axis=0)
    factor = threshold_factor(numbers, offsets, multipliers)

    outcome = np.empty(m, dtype=object)
    reason: list[str] = [""] * m
    for r in range(m):
        if overlap and r in overlap:
            outcome[r], reason[r] = OVERLAP, overlap[r]
            continue
        if failed and r in failed:
            outcome[r], reason[r] = FAILED, failed[r]
            continue
        extreme = []
        if references is not None and med_form[r] > discard.max_formation_energy:
            extreme.append(f"formation energy {med_form[r]:.3g} eV/atom > {discard.max_formation_energy}")
        if med_force[r] > discard.max_force:
            extreme.append(f"max force {med_force[r]:.3g} eV/A > {discard.max_force}")
        if med_stress[r] > discard.max_normal_stress:
            extreme.append(f"normal stress {med_stress[r]:.3g} eV/A^3 > {discard.max_normal_stress}")
        if extreme:
            outcome[r], reason[r] = DISCARDED, "; ".join(extreme)
            continue
        exceeded = [
            name
            for name, value, limit in (
                ("energy", e_dis[r], thresholds.energy),
                ("force", f_dis[r], thresholds.force),
                ("stress", s_dis[r], thresholds.stress),
            )
            if value > limit * factor[r]
        ]
        if exceeded:
            outcome[r], reason[r] = SELECTED, "disagreement: " + ", ".join(exceeded)
        else:
            outcome[r], reason[r] = REJECTED, "committee agrees"
    for rows in (failed or {}, overlap or {}):
        for r in rows:
            e_dis[r] = f_dis[r] = s_dis[r] = np.nan
    return ScreenMetrics(
        outcome=outcome.astype(str),
        reason=reason,
        factor=factor,
        energy_disagreement=e_dis,
        force_disagreement=f_dis,
        stress_disagreement=s_dis,
        median_formation_energy=med_form,
        median_max_force=med_force,
        median_normal_stress=med_stress,
        formation_energy=formation,
        energy_per_atom=energy_per_atom,
    )
