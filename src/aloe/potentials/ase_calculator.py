"""Any ASE calculator as a :class:`~aloe.potentials.base.Potential` (one structure at a time), plus cheap stand-ins.

:class:`EMTPotential` (ASE's effective-medium theory) and :class:`LennardJonesPotential` are stand-ins for tests and
demos, named as such: they need no model weights and run in microseconds, but they are not materials models.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.errors import AloeError
from aloe.potentials.base import Potential, Predictions, voigt_from_tensor
from aloe.structures import row_matmul

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator

    from aloe.structures import StructureBatch


class ASECalculatorPotential(Potential):
    """Wraps an ASE calculator (an instance, or a callable that returns one).

    Parameters
    ----------
    calculator_or_factory
        An ASE ``Calculator`` instance (used for every structure), or a callable returning one (called once, on
        first use, with ``kwargs``; :meth:`calculator` calls it again for a fresh instance).
    name
        Name shown in outputs; default: the calculator's class name in lower case.
    kwargs
        Keyword arguments for the factory.
    """

    def __init__(
        self,
        calculator_or_factory: Calculator | Callable[..., Calculator],
        *,
        name: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        from ase.calculators.calculator import BaseCalculator

        self.kwargs = dict(kwargs or {})
        if isinstance(calculator_or_factory, BaseCalculator):
            if self.kwargs:
                raise AloeError(
                    "kwargs are only used with a calculator factory, not with a calculator instance"
                )
            self._factory: Callable[..., Calculator] | None = None
            self._calc: Calculator | None = calculator_or_factory
            default_name = type(calculator_or_factory).__name__.lower()
        elif callable(calculator_or_factory):
            self._factory = calculator_or_factory
            self._calc = None
            default_name = getattr(
                calculator_or_factory, "__name__", type(calculator_or_factory).__name__
            ).lower()
        else:
            raise AloeError(
                f"expected an ASE calculator or a callable returning one, got {type(calculator_or_factory).__name__}"
            )
        self.name = name or default_name
        self.batch_size = 1  # one structure per call: a failure costs nothing but itself

    @classmethod
    def from_import_path(cls, path: str, *, name: str | None = None, **kwargs: Any) -> ASECalculatorPotential:
        """``"package.module:factory"`` (a calculator class or a function returning a calculator) -> potential.

        Parameters
        ----------
        path
            Import path, module and attribute separated by a colon.
        name
            Name shown in outputs; default ``path``.
        **kwargs
            Passed to the factory.
        """
        factory = import_object(path)
        if not callable(factory):
            raise AloeError(f"{path}: is a {type(factory).__name__}, not a calculator class or factory")
        return cls(factory, name=name or path, kwargs=kwargs)

    # ---- the calculator ----------------------------------------------------------------------------------
    def _new_calculator(self) -> Calculator:
        from ase.calculators.calculator import BaseCalculator

        assert self._factory is not None
        calc = self._factory(**self.kwargs)
        if not isinstance(calc, BaseCalculator):
            raise AloeError(
                f"{self.name}: the factory returned a {type(calc).__name__}, not an ASE calculator"
            )
        return calc

    def _calculator(self) -> Calculator:
        if self._calc is None:
            self._calc = self._new_calculator()
        return self._calc

    def _fresh_state(self) -> Calculator:
        """The shared calculator, reset so that it answers as if it had never seen another structure.

        ``reset()`` forgets the last atoms, so the next call sees every property as changed: EMT and Lennard-Jones
        then build a new neighbour list instead of updating the previous structure's (whose skin gives forces that
        differ in the last bits). A structure's result thus never depends on which one came before it.
        """
        calc = self._calculator()
        calc.reset()
        return calc

    def calculator(self) -> Calculator:
        """A fresh calculator from the factory (the wrapped instance itself when built from an instance)."""
        if self._factory is None:
            assert self._calc is not None
            return self._calc
        return self._new_calculator()

    def _predict_one(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        from ase.calculators.calculator import PropertyNotImplementedError

        calc = self._fresh_state()
        atoms.calc = calc
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=float)
        try:
            # Atoms.get_stress returns Voigt (xx, yy, zz, yz, xz, xy) in eV/A^3 with ASE's sign, also for 3x3 results.
            stress = np.asarray(atoms.get_stress(voigt=True), dtype=float)
        except PropertyNotImplementedError:
            raise PropertyNotImplementedError(
                f"the ASE calculator {type(calc).__name__} does not implement stress (aloe needs energy, forces "
                "and stress of periodic structures)"
            ) from None
        finally:
            atoms.calc = None  # do not keep the calculator's results alive through the Atoms
        return energy, forces, stress

    def _energy_one(self, atoms: Atoms) -> float:
        """Energy (eV) of one structure, asking the calculator for the energy only (no forces, no stress)."""
        if type(self)._predict_one is not ASECalculatorPotential._predict_one:
            # A subclass that changes _predict_one (a wrapper, a fault injector) keeps its behaviour for energies.
            return float(self._predict_one(atoms)[0])
        atoms.calc = self._fresh_state()
        try:
            return float(atoms.get_potential_energy())
        finally:
            atoms.calc = None

    def _predict_energy_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        # One structure at a time like _predict_batch's default, energy only; forces and stress stay NaN.
        out = Predictions.empty(batch)
        for row in range(len(batch)):
            out.energy[row] = self._energy_one(batch.to_atoms(row))
            out.errors[row] = None
        return out

    def __getstate__(self) -> dict[str, Any]:
        # A factory rebuilds the calculator in the worker; an instance has to travel as it is.
        state = self.__dict__.copy()
        if state["_factory"] is not None:
            state["_calc"] = None
        return state


class EMTPotential(ASECalculatorPotential):
    """ASE's EMT: a cheap STAND-IN for tests and demos (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O), not a UMLIP."""

    def __init__(self) -> None:
        from ase.calculators.emt import EMT

        super().__init__(EMT, name="emt")
        self.functional = "EMT (stand-in)"


class LennardJonesPotential(ASECalculatorPotential):
    """ASE's Lennard-Jones (one pair for all elements): a STAND-IN for tests and demos.

    Without ``smooth``, a whole batch is computed at once from aloe's neighbour lists
    (:func:`aloe.potentials.neighbours.neighbour_list`: shared by a committee, Verlet lists in MD) with ASE's
    formulas (pairs with ``d <= rc``, energy shifted by its value at ``rc``, ASE's virial stress); the results equal
    ASE's ``LennardJones`` calculator per structure to float64 round-off (tested). With ``smooth``, every structure
    goes through ASE's calculator.

    Parameters
    ----------
    sigma, epsilon
        Length (A) and well depth (eV).
    rc
        Cutoff (A); ASE's default is ``3 * sigma``.
    smooth
        ASE's smooth cutoff. Off by default: the plain shifted form is the textbook potential, and its energy is
        continuous at ``rc`` (only the force jumps), which is all a stand-in needs.
    """

    def __init__(
        self, sigma: float = 2.5, epsilon: float = 0.01, rc: float | None = 6.0, smooth: bool = False
    ):
        from ase.calculators.lj import LennardJones

        rc = 3.0 * sigma if rc is None else float(rc)
        name = (
            f"lj(sigma={float(sigma)!r},epsilon={float(epsilon)!r},rc={rc!r}"
            + (",smooth" if smooth else "")
            + ")"
        )
        super().__init__(
            LennardJones,
            name=name,
            kwargs={"sigma": float(sigma), "epsilon": float(epsilon), "rc": rc, "smooth": bool(smooth)},
        )
        self.functional = "Lennard-Jones (stand-in)"
        self.sigma, self.epsilon, self.rc, self.smooth = float(sigma), float(epsilon), rc, bool(smooth)

    def _predict_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        if self.smooth:
            return super()._predict_batch(batch, shared)
        return self._pairs(batch, shared, energy_only=False)

    def _predict_energy_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        if self.smooth:
            return super()._predict_energy_batch(batch, shared)
        return self._pairs(batch, shared, energy_only=True)

    def _pairs(self, batch: StructureBatch, shared: dict[str, Any], energy_only: bool) -> Predictions:
        """ASE ``LennardJones`` (``smooth=False``) of the whole batch from one neighbour list."""
        from aloe.potentials.neighbours import neighbour_list

        out = Predictions.empty(batch)
        pairs = neighbour_list(batch, self.rc, shared, inclusive=True)
        m = len(batch)

        # row_matmul, not einsum/BLAS: a structure's numbers never depend on the rest of its batch.
        positions = row_matmul(batch.frac_coords, batch.cell[batch.owner])
        # pointing towards the neighbour, as ASE's
        vectors = positions[pairs.second] + row_matmul(pairs.shifts.astype(float), batch.cell[pairs.owner])
        vectors -= positions[pairs.first]
        r2 = np.einsum("pi,pi->p", vectors, vectors)
        c6 = (self.sigma**2 / r2) ** 3
        c12 = c6 * c6
        e0 = 4 * self.epsilon * ((self.sigma / self.rc) ** 12 - (self.sigma / self.rc) ** 6)
        pair_energy = 4 * self.epsilon * (c12 - c6) - e0
        out.energy[:] = 0.5 * np.bincount(pairs.owner, weights=pair_energy, minlength=m)
        if not energy_only:
            pair_forces = (-24 * self.epsilon * (2 * c12 - c6) / r2)[:, None] * vectors
            n = int(batch.offsets[-1])
            out.forces[:] = np.stack(
                [np.bincount(pairs.first, weights=pair_forces[:, k], minlength=n) for k in range(3)], axis=1
            )
            virial = np.zeros((m, 3, 3))
            np.add.at(virial, pairs.owner, 0.5 * pair_forces[:, :, None] * vectors[:, None, :])
            tensor = virial / batch.volumes[:, None, None]
            out.stress[:] = voigt_from_tensor(0.5 * (tensor + np.swapaxes(tensor, 1, 2)))
        out.errors = [None] * m
        for r, reason in pairs.failed.items():
            out.energy[r] = np.nan
            out.errors[r] = f"{self.name}: {reason}"
        return out


def attractive_lennard_jones(sigma: float = 2.5, epsilon: float = 0.01, rc: float = 6.0) -> Calculator:
    """Lennard-Jones with its repulsive r^-12 wall removed: a DELIBERATELY BROKEN ASE calculator.

    ``E = sum over pairs within rc of -4 epsilon ((sigma / r)^6 - (sigma / rc)^6)``: the energy falls without bound
    as atoms approach, so an energy-volume scan has no minimum and molecular dynamics collapses. It stands for a
    potential trained without short-range data; the benchmarks must flag it (aloe's tests check they do). The class
    is built on first call, so importing this module stays light.
    """
    from ase.calculators.calculator import Calculator, all_changes
    from ase.neighborlist import neighbor_list

    class _AttractiveLJ(Calculator):
        implemented_properties = ("energy", "free_energy", "forces", "stress")

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
            super().calculate(atoms, properties, system_changes)
            # Full neighbour list: every pair appears twice (i -> j and j -> i), hence the halves below.
            i, d, vec = neighbor_list("idD", self.atoms, rc)
            s6 = (sigma / d) ** 6
            pair_energy = -4.0 * epsilon * (s6 - (sigma / rc) ** 6)
            de_dr = 24.0 * epsilon * s6 / d  # dE/dr > 0: the pair pulls its atoms together
            forces = np.zeros((len(self.atoms), 3))
            np.add.at(forces, i, (de_dr / d)[:, None] * vec)
            energy = 0.5 * float(pair_energy.sum())
            virial = 0.5 * np.einsum("p,pa,pb->ab", de_dr / d, vec, vec)
            stress = virial / self.atoms.get_volume()
            self.results = {
                "energy": energy,
                "free_energy": energy,
                "forces": forces,
                "stress": np.array(
                    [stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]]
                ),
            }

    _AttractiveLJ.__name__ = "AttractiveLennardJones"
    return _AttractiveLJ()


class AttractiveLennardJonesPotential(ASECalculatorPotential):
    """:func:`attractive_lennard_jones` as a potential (``lj-nowall``): the deliberately broken stand-in."""

    def __init__(self, sigma: float = 2.5, epsilon: float = 0.01, rc: float = 6.0) -> None:
        name = f"lj-nowall(sigma={float(sigma)!r},epsilon={float(epsilon)!r},rc={float(rc)!r})"
        super().__init__(
            attractive_lennard_jones,
            name=name,
            kwargs={"sigma": float(sigma), "epsilon": float(epsilon), "rc": float(rc)},
        )
        self.functional = "Lennard-Jones without repulsion (deliberately broken stand-in)"


def import_object(path: str) -> Any:
    """Import ``"package.module:attribute"`` (dots after the colon walk attributes).

    Raises
    ------
    AloeError
        If the module or the attribute cannot be found.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise AloeError(f"{path!r}: expected 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise AloeError(f"{path}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AloeError(f"{path}: module {module_name} has no attribute {attr}") from None
    return obj


def accepted_kwargs(factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``factory`` accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}
