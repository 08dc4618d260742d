"""Equilibrium: relax a slightly perturbed reference crystal with the potential; compare its energy and structure.

Definitions (MP-ALOE paper, Fig. 3; matcalc): every site of the reference structure is displaced by 0.1 A in a
random direction (seeded per structure), then cell and positions are relaxed with ASE's FIRE on a
``FrechetCellFilter`` to ``fmax`` 0.05 eV/A (at most 500 steps). The cohesive energy per atom
``(E - sum_i n_i E_atom,i) / N`` uses the reference's isolated-atom energies for both the reference energy and the
relaxed one, so the error is the potential's energy error on the cohesive scale. The structural error is the
Euclidean distance between matminer's site-statistics fingerprints (CrystalNN "ops" preset, no distance cutoffs,
``x_diff_weight=0``; mean, std_dev, minimum, maximum) of the reference and the relaxed structure.

The relaxations go through :func:`aloe.potentials.calculator.calculator_for`, so any aloe potential works.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from aloe.bench.base import (
    COUNT_FORMAT,
    COUNT_HEADLINES,
    Benchmark,
    BenchStructure,
    Headline,
    ReferenceSet,
    potential_label,
    structure_columns,
    structure_seed,
)
from aloe.errors import AloeError, InputFileError, exception_message
from aloe.settings import AloeSettings

if TYPE_CHECKING:
    from ase import Atoms

#: Names of the shipped isolated-atom energies -> functional key in ``aloe/data/matpes_elemental_refs.json``.
SHIPPED_ATOM_ENERGIES: dict[str, str] = {"matpes-r2scan": "r2SCAN", "matpes-pbe": "PBE"}


class EquilibriumSettings(AloeSettings):
    """Settings of the equilibrium benchmark."""

    displacement: float = Field(0.1, ge=0.0, description="distance every site is moved before relaxing (A)")
    seed: int = Field(
        0, description="seed of the displacement directions (combined with each structure's id)"
    )
    fmax: float = Field(
        0.05, gt=0.0, description="relaxation converged below this force (eV/A; FrechetCellFilter)"
    )
    max_steps: int = Field(500, ge=1, description="most FIRE steps of one relaxation")
    max_volume_change: float = Field(
        4.0,
        gt=1.0,
        description="a relaxation whose cell volume leaves [1/x, x] of the start is stopped and recorded as failed "
        "(a potential that collapses a cell would otherwise build ever larger neighbour lists until memory runs "
        "out)",
    )
    atom_energies: Literal["matpes-r2scan", "matpes-pbe"] = Field(
        "matpes-r2scan",
        description="isolated-atom energies used when the reference set brings none (MatPES energy_atomic values)",
    )
    compute_fingerprint: bool = Field(
        True, description="compute the structure fingerprint distance (matminer CrystalNN site statistics)"
    )


# ---- pure helpers -------------------------------------------------------------------------------------------
def displace_sites(atoms: Atoms, distance: float, rng: np.random.Generator) -> Atoms:
    """A copy with every site moved by ``distance`` (A) in a uniformly random direction (normalised Gaussian)."""
    directions = rng.standard_normal((len(atoms), 3))
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0  # a zero vector stays put (probability zero)
    out = atoms.copy()
    out.calc = None
    out.positions = out.positions + distance * directions / norms
    return out


def cohesive_energy_per_atom(
    energy: float, symbols: Sequence[str], atom_energies: Mapping[str, float]
) -> float:
    """``(E - sum_i E_atom(symbol_i)) / N`` in eV/atom.

    Parameters
    ----------
    energy
        Total energy (eV).
    symbols
        ``N`` chemical symbols.
    atom_energies
        Isolated-atom energy (eV) per symbol.

    Raises
    ------
    KeyError
        Naming the elements without an isolated-atom energy.
    """
    counts = Counter(symbols)
    missing = sorted(set(counts) - set(atom_energies))
    if missing:
        raise KeyError(f"no isolated-atom energy for {', '.join(missing)}")
    atoms_total = sum(n * float(atom_energies[el]) for el, n in counts.items())
    return float((energy - atoms_total) / len(symbols))


def shipped_atom_energies(name: str = "matpes-r2scan") -> dict[str, float]:
    """The published MatPES isolated-atom energies (eV per element) shipped with aloe (``matpes-r2scan``, ``-pbe``)."""
    from aloe.data.stats import isolated_atom_energies

    return dict(isolated_atom_energies()[SHIPPED_ATOM_ENERGIES[name]])


def atom_energies_for(choice: str, reference: ReferenceSet | None) -> tuple[dict[str, float], str]:
    """Isolated-atom energies for cohesive energies, and where they come from.

    ``reference``: the reference set's own (its labeler's), else MatPES r2SCAN; ``matpes-r2scan`` /
    ``matpes-pbe``: the published MatPES values; anything else: a JSON file ``{symbol: eV}`` (or an
    ``atom_energies.json`` of ``aloe bench reference`` with an ``energies`` key).
    """
    if choice == "reference":
        if reference is not None and reference.atom_energies:
            return dict(reference.atom_energies), f"reference set ({reference.functional or 'its labeler'})"
        choice = "matpes-r2scan"
    if choice in SHIPPED_ATOM_ENERGIES:
        return shipped_atom_energies(choice), f"MatPES {SHIPPED_ATOM_ENERGIES[choice]} (published)"
    path = Path(choice)
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise InputFileError(path, "atom energies: no such file") from None
    except ValueError as exc:
        raise InputFileError(path, f"atom energies: not JSON ({exception_message(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("energies"), dict):
        data = data["energies"]
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise InputFileError(path, "atom energies: expected an object {symbol: energy in eV}")
    return {str(k): float(v) for k, v in data.items()}, str(path)


def potential_atom_energies_for(spec: str, choice: str | Mapping[str, str]) -> dict[str, float] | None:
    """The isolated-atom energies on ``spec``'s own energy scale, or ``None`` for the reference's (``same``).

    ``choice`` is the bench setting ``potential_atom_energies``: one choice for every potential, or a mapping
    from a potential (its spec or its label) to one.
    """
    if isinstance(choice, Mapping):
        choice = choice.get(spec, choice.get(potential_label(spec), "same"))
    if choice == "same":
        return None
    if choice == "reference":
        raise AloeError("potential_atom_energies: use 'same' for the reference's isolated-atom energies")
    return atom_energies_for(choice, None)[0]


@cache
def _featurizer() -> Any:
    """The paper's matminer SiteStatsFingerprint (built once per process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from matminer.featurizers.site import CrystalNNFingerprint
        from matminer.featurizers.structure import SiteStatsFingerprint

        return SiteStatsFingerprint(
            CrystalNNFingerprint.from_preset("ops", distance_cutoffs=None, x_diff_weight=0),
            stats=("mean", "std_dev", "minimum", "maximum"),
        )


def structure_fingerprint(atoms: Atoms) -> np.ndarray:
    """Shape ``(244,)``: matminer's CrystalNN site-statistics fingerprint of a periodic structure."""
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(atoms)
    featurizer = _featurizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(featurizer.featurize(structure), dtype=float)


def fingerprint_distance(a: Atoms, b: Atoms) -> float:
    """Euclidean distance between the :func:`structure_fingerprint` of two structures (0 = same environments)."""
    return float(np.linalg.norm(structure_fingerprint(a) - structure_fingerprint(b)))


def relax(atoms: Atoms, calculator: Any, fmax: float, max_steps: int) -> tuple[Atoms, float, bool, int]:
    """Relax cell and positions with FIRE on a ``FrechetCellFilter``.

    Parameters
    ----------
    atoms
        The start (not modified).
    calculator
        An ASE calculator.
    fmax
        Convergence threshold on the filter's forces (eV/A; the cell's are stress times volume).
    max_steps
        Most optimizer steps.

    Returns
    -------
    tuple
        The relaxed structure (no calculator), its total energy (eV), whether it converged, and the steps taken.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from aloe.devices import one_blas_thread

    work = atoms.copy()
    work.calc = calculator
    optimizer = FIRE(FrechetCellFilter(work), logfile=None)
    with one_blas_thread():  # the filter's 3x3 matrix functions crawl with busy BLAS threads
        converged = bool(optimizer.run(fmax=fmax, steps=max_steps))
    energy = float(work.get_potential_energy())
    steps = int(optimizer.nsteps)
    work.calc = None
    return work, energy, converged, steps


# ---- the benchmark ---------------------------------------------------------------------------------------------
class Equilibrium(Benchmark):
    """Relax each perturbed reference structure; cohesive-energy error and fingerprint distance.

    Isolated-atom energies: the reference set's (``atom_energies``), else the shipped MatPES ones named by
    ``settings.atom_energies``. The potential's cohesive energy uses the same ones, unless
    ``potential_atom_energies`` gives a table on the potential's own energy scale (a VASP-trained model against a
    GPAW reference: GPAW's energies have another zero than VASP's, so each side needs its own isolated atoms). An
    element without one gives a failure row naming it. A relaxation that does not
    converge within ``max_steps`` still gives a row (``converged`` False). When a fingerprint cannot be computed
    (matminer raised) the row keeps its energies and ``fingerprint_distance`` is ``None``.
    """

    name: ClassVar[str] = "equilibrium"
    settings_model: ClassVar[type[AloeSettings]] = EquilibriumSettings
    needs: ClassVar[str] = "energy"
    needs_reference: ClassVar[bool] = True
    needs_atom_energies: ClassVar[bool] = True
    CHEAP_SETTINGS: ClassVar[dict[str, Any]] = {"compute_fingerprint": False, "max_steps": 8}
    run_priority: ClassVar[int] = 2
    HEADLINES: ClassVar[tuple[Headline, ...]] = (
        *COUNT_HEADLINES,
        Headline(("e_coh_mae",), "E_coh MAE (meV/atom)", 1000.0, "{:.1f}", "lower"),
        Headline(("e_coh_std",), "E_coh std (meV/atom)", 1000.0, "{:.1f}"),
        Headline(("e_coh_mean_error",), "E_coh mean error (meV/atom)", 1000.0, "{:.1f}"),
        Headline(("fingerprint_distance_mean",), "FP distance mean", 1.0, "{:.3f}", "lower"),
        Headline(("fingerprint_distance_median",), "FP distance median", 1.0, "{:.3f}"),
        Headline(("n_unconverged",), "unconverged", 1.0, COUNT_FORMAT),
    )
    FIGURES: ClassVar[str | None] = "equilibrium_figures"
    VERDICT: ClassVar[tuple[str, ...]] = ("e_coh_mae", "fingerprint_distance_mean")
    COLUMNS: ClassVar[dict[str, str]] = {
        "e_coh_ref": "reference cohesive energy (E_ref - sum of isolated-atom energies) / N (eV/atom)",
        "e_coh_pred": "cohesive energy of the relaxed structure: the same isolated-atom energies, or the "
        "potential's own (potential_atom_energies) (eV/atom)",
        "e_coh_error": "e_coh_pred - e_coh_ref (eV/atom)",
        "energy_ref": "reference total energy per atom (eV/atom)",
        "energy_pred": "predicted total energy per atom of the relaxed structure (eV/atom)",
        "fingerprint_distance": "Euclidean distance of the CrystalNN site-statistics fingerprints of reference "
        "and relaxed structure (dimensionless; None when not computed)",
        "converged": "the relaxation reached fmax within max_steps",
        "relax_steps": "FIRE steps taken (count)",
        "volume_ref": "volume per atom of the reference structure (A^3/atom)",
        "volume_pred": "volume per atom of the relaxed structure (A^3/atom)",
    }

    settings: EquilibriumSettings

    def __init__(
        self,
        potential: Any,
        settings: AloeSettings | None = None,
        *,
        atom_energies: Mapping[str, float] | None = None,
        potential_atom_energies: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(potential, settings, atom_energies=atom_energies)
        #: Isolated-atom energies on the potential's energy scale (``None``: the reference's).
        self.potential_atom_energies = (
            dict(potential_atom_energies) if potential_atom_energies is not None else None
        )

    @classmethod
    def for_stage(
        cls, potential: Any, settings: Any, *, spec: str, atom_energies: Mapping[str, float] | None
    ) -> Equilibrium:
        """As the base class, plus the potential's own isolated atoms (``potential_atom_energies``)."""
        return cls(
            potential,
            settings.equilibrium,
            atom_energies=atom_energies,
            potential_atom_energies=potential_atom_energies_for(spec, settings.potential_atom_energies),
        )

    @classmethod
    def select_structures(
        cls, settings: Any, reference: ReferenceSet | None, read: Callable[[str], ReferenceSet]
    ) -> list[BenchStructure]:
        """The reference set's relaxed crystals (every structure with a reference energy, without roles)."""
        from aloe.bench.structures import reference_role

        return reference_role(cls.name, reference, "crystals")

    def energies_of_atoms(self) -> dict[str, float]:
        """The isolated-atom energies in use (eV per element symbol)."""
        if self.atom_energies is not None:
            return self.atom_energies
        return shipped_atom_energies(self.settings.atom_energies)

    def usable(self, structure: BenchStructure) -> str | None:
        """Also checks that every element has an isolated-atom energy (before any relaxation)."""
        problem = super().usable(structure)
        if problem is not None:
            return problem
        symbols = set(structure.atoms.get_chemical_symbols())
        missing = sorted(symbols - set(self.energies_of_atoms()))
        if missing:
            which = "the reference's" if self.atom_energies is not None else self.settings.atom_energies
            return f"no isolated-atom energy for {', '.join(missing)} ({which} atom energies)"
        if self.potential_atom_energies is not None:
            missing = sorted(symbols - set(self.potential_atom_energies))
            if missing:
                return f"no isolated-atom energy for {', '.join(missing)} (the potential's atom energies)"
        return None

    def start(self, structure: BenchStructure) -> Atoms:
        """The perturbed start of the relaxation (seeded by ``settings.seed`` and the structure's id)."""
        rng = np.random.default_rng(structure_seed(self.settings.seed, structure.id))
        return displace_sites(structure.atoms, self.settings.displacement, rng)

    def calc(self, structure: BenchStructure) -> dict[str, Any]:
        """Relax one structure and compare it with its reference."""
        from aloe.potentials.calculator import calculator_for

        problem = self.usable(structure)
        if problem is not None:
            raise ValueError(problem)
        assert structure.energy is not None
        atom_energies = self.energies_of_atoms()
        symbols = structure.atoms.get_chemical_symbols()
        n = structure.n_atoms
        from aloe.potentials.calculator import GuardedCalculator

        start = self.start(structure)
        v_start = abs(float(start.cell.volume))
        limit = self.settings.max_volume_change

        def check(atoms: Atoms) -> None:
            ratio = abs(float(atoms.cell.volume)) / v_start
            if not 1.0 / limit <= ratio <= limit:
                raise RuntimeError(
                    f"relaxation stopped: the cell volume went to {ratio:.3g}x of the start (limit {limit:g}x)"
                )

        guarded = GuardedCalculator(calculator_for(self.potential), check)
        relaxed, energy, converged, steps = relax(start, guarded, self.settings.fmax, self.settings.max_steps)
        e_coh_ref = cohesive_energy_per_atom(float(structure.energy), symbols, atom_energies)
        e_coh_pred = cohesive_energy_per_atom(energy, symbols, self.potential_atom_energies or atom_energies)
        distance: float | None = None
        if self.settings.compute_fingerprint:
            try:
                distance = fingerprint_distance(structure.atoms, relaxed)
            except Exception:  # a fingerprint matminer cannot make costs the column, not the energies
                distance = None
        return {
            **structure_columns(structure),
            "error": None,
            "e_coh_ref": e_coh_ref,
            "e_coh_pred": e_coh_pred,
            "e_coh_error": e_coh_pred - e_coh_ref,
            "energy_ref": float(structure.energy) / n,
            "energy_pred": energy / n,
            "fingerprint_distance": distance,
            "converged": converged,
            "relax_steps": steps,
            "volume_ref": abs(float(structure.atoms.cell.volume)) / n,
            "volume_pred": abs(float(relaxed.cell.volume)) / n,
        }

    @classmethod
    def metrics(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cohesive-energy errors and fingerprint distances over the successful rows (unconverged ones included).

        Returns
        -------
        dict
            ``n_unconverged``, ``e_coh_mae``, ``e_coh_std`` (population standard deviation of the errors),
            ``e_coh_mean_error`` (eV/atom), ``fingerprint_distance_mean`` and ``_median`` (rows with a distance);
            ``None`` where there is nothing to average.
        """
        errors = np.array([float(r["e_coh_error"]) for r in rows], dtype=float)
        distances = np.array(
            [float(r["fingerprint_distance"]) for r in rows if r.get("fingerprint_distance") is not None],
            dtype=float,
        )
        distances = distances[np.isfinite(distances)]
        has = errors.size > 0
        return {
            "n_unconverged": sum(1 for r in rows if not r.get("converged")),
            "e_coh_mae": float(np.mean(np.abs(errors))) if has else None,
            "e_coh_std": float(np.std(errors)) if has else None,
            "e_coh_mean_error": float(np.mean(errors)) if has else None,
            "fingerprint_distance_mean": float(np.mean(distances)) if distances.size else None,
            "fingerprint_distance_median": float(np.median(distances)) if distances.size else None,
        }


__all__ = [
    "SHIPPED_ATOM_ENERGIES",
    "Equilibrium",
    "EquilibriumSettings",
    "atom_energies_for",
    "cohesive_energy_per_atom",
    "displace_sites",
    "fingerprint_distance",
    "potential_atom_energies_for",
    "relax",
    "shipped_atom_energies",
    "structure_fingerprint",
    "structure_seed",
]
