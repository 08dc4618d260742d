"""MACE models from ``.model`` files (a whole pickled ``torch.nn.Module``, as mace-torch writes them), batched.

The model is called as ``MACECalculator`` calls it, ``model(batch, compute_stress=True, training=False)``, once per
sub-batch; the results equal ``MACECalculator`` per structure (tested). MACE's stress output is ``dE/d(strain) / V``
in eV/A^3, ASE's sign; like the calculator we symmetrise it into Voigt order. Energies alone
(:meth:`MACEPotential.predict_energies`) call the same model with ``compute_force=False, compute_stress=False``
under ``torch.no_grad()``: the forward pass only.

Two ways to build the model's input dict (``graph_builder``):

- ``"batch"`` (default): the whole sub-batch at once (:meth:`MACEPotential.graph`, :meth:`MACEPotential.graph_input`)
  from one neighbour list of the batch (:func:`aloe.potentials.neighbours.neighbour_list`, matscipy's rule
  ``d < r_max`` as mace-torch's ``get_neighborhood``), with numpy over the batch for the rest. Every key equals what
  the per-structure path gives (value, dtype, shape; tested), except that the edges come in another order.
- ``"per-structure"``: mace-torch's own data utilities, structure by structure, as ``MACECalculator`` builds its
  input (``data.config_from_atoms`` -> ``data.AtomicData.from_config`` -> ``torch_geometric.Batch``); the
  reference path.

Both inputs depend only on the cutoff and the element table (plus the heads and the dtype for the per-structure
``AtomicData``), so the members of a committee of MACE models trained with the same settings build them once per
sub-batch through the ``shared`` scratch dict (and the neighbour list once for every model that uses it).

Quirks of mace-torch 0.3.16 with torch >= 2.6 (here 2.13):

- ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in ``os.environ``: from then on every ``torch.load`` in
  the process that does not pass ``weights_only`` unpickles freely. That is how ``MACECalculator(model_paths=...)``
  reads whole-module files. aloe does not rely on it: it loads ``.model`` files itself with an explicit
  ``weights_only=False`` (only load model files you trust, like any pickle).
- e3nn 0.4.4 (pinned by mace-torch) calls ``torch.load`` at import time on a file holding ``slice`` objects, which
  torch's ``weights_only=True`` default refuses: ``import e3nn.o3`` fails unless ``mace`` was imported first.
  :func:`ensure_e3nn_importable` allow-lists ``slice`` (harmless); call it before importing ``e3nn.o3`` yourself.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.errors import AloeError
from aloe.potentials.base import (
    Potential,
    Predictions,
    file_digest,
    shared_inputs,
    voigt_from_tensor,
)
from aloe.structures import StructureBatch

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

_DATA_KEY = "mace-data"
_GRAPH_KEY = "mace-graph"
GRAPH_BUILDERS = ("batch", "per-structure")
# MACECalculator's defaults (info keys read from Atoms.info; "Qs" per-atom charges), so inputs are built identically.
_INFO_KEYS = {"total_spin": "spin", "total_charge": "charge", "external_field": "external_field"}
_ARRAYS_KEYS = {"Qs": "charges"}

# What ``AtomicData.from_config`` (mace-torch 0.3.16) puts in the remaining keys for an ``Atoms`` without labels,
# weights or info keys (aloe's structures carry none): key -> (value, shape per structure or per atom). Batched,
# a per-structure key has shape ``(m, *shape)`` and a per-atom key ``(N, *shape)``. The model reads few of them
# (total_charge, total_spin, external_field, fermi_level ... in field and charge models); all are given.
_PER_STRUCTURE_CONSTANTS: dict[str, tuple[float, tuple[int, ...]]] = {
    "weight": (1.0, ()),
    "energy_weight": (1.0, ()),
    "forces_weight": (1.0, ()),
    "stress_weight": (1.0, ()),
    "virials_weight": (1.0, ()),
    "dipole_weight": (1.0, (3,)),
    "charges_weight": (1.0, ()),
    "polarizability_weight": (1.0, (3, 3)),
    "energy": (0.0, ()),
    "stress": (0.0, (3, 3)),
    "virials": (0.0, (3, 3)),
    "dipole": (0.0, (3,)),
    "polarizability": (0.0, (3, 3)),
    "elec_temp": (0.0, ()),
    "total_charge": (0.0, ()),
    "total_spin": (1.0, ()),
    "fermi_level": (0.0, ()),
    "external_field": (0.0, (3,)),
}
_PER_ATOM_CONSTANTS: dict[str, tuple[float, tuple[int, ...]]] = {
    "forces": (0.0, (3,)),
    "charges": (0.0, ()),
    "density_coefficients": (0.0, (1,)),
}


@dataclass(frozen=True)
class MACEGraph:
    """MACE's input graph of a batch's usable structures, in numpy: what neither the weights nor the dtype change.

    Atoms and edges are numbered within the usable structures, in batch order (as ``batch.take(rows)`` numbers them).

    Attributes
    ----------
    rows
        Shape ``(m,)`` int64: the usable structures (ascending rows of the batch).
    n_atoms
        Shape ``(m,)`` int64: atoms per usable structure.
    species
        Shape ``(N,)`` int64: index of each atom's element in the model's element table.
    positions
        Shape ``(N, 3)`` float64: Cartesian positions (A), ``frac @ cell`` per structure as ASE computes them.
    cells
        Shape ``(m, 3, 3)`` float64: cell vectors as rows (A).
    edge_index
        Shape ``(2, E)`` int64: ``(sender, receiver)`` = mace's ``(i, j)``: atom ``j`` sits at
        ``r_j + unit_shifts @ cell - r_i`` from atom ``i``; every pair with ``d < r_max`` appears both ways.
    unit_shifts
        Shape ``(E, 3)`` int64: cell image of the receiver.
    shifts
        Shape ``(E, 3)`` float64: ``unit_shifts @ cell`` of the edge's structure (A).
    """

    rows: np.ndarray
    n_atoms: np.ndarray
    species: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
    edge_index: np.ndarray
    unit_shifts: np.ndarray
    shifts: np.ndarray


def ensure_e3nn_importable() -> None:
    """Make ``import e3nn.o3`` work under torch >= 2.6 (e3nn 0.4.4 loads a constants file holding ``slice``)."""
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add([slice])


def load_mace_module(path: str | Path, device: str = "cpu") -> Any:
    """``torch.load`` a whole-module MACE ``.model`` file (trusted files only: this unpickles code references).

    Raises
    ------
    AloeError
        If the file is missing or does not hold a MACE module (e.g. a training checkpoint or a state dict).
    """
    path = Path(path)
    if not path.is_file():
        raise AloeError(f"{path}: no such MACE model file")
    ensure_e3nn_importable()
    import mace.modules  # noqa: F401  (the pickled module refers to these classes)
    import torch

    try:
        module = torch.load(path, map_location=device, weights_only=False)  # a whole module: must unpickle
    except Exception as exc:
        raise AloeError(f"{path}: cannot load as a MACE model ({type(exc).__name__}: {exc})") from None
    if not isinstance(module, torch.nn.Module) or not hasattr(module, "r_max"):
        raise AloeError(
            f"{path}: holds a {type(module).__name__}, not a MACE model module (export a .model file with mace-torch)"
        )
    return module


class MACEPotential(Potential):
    """A MACE ``.model`` file, batched.

    Parameters
    ----------
    path
        The ``.model`` file.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    dtype
        ``"float32"`` (fast, enough for screening) or ``"float64"`` (mace-torch trains in float64).
    batch_size
        Structures per forward pass.
    threads
        If given, ``torch.set_num_threads(threads)`` when the model is loaded (aloe uses 1 per process).
    head
        Model head for multi-head models; default as ``MACECalculator`` picks it (the only head, else "default").
    graph_builder
        ``"batch"`` (default): the input dict of a whole sub-batch from one neighbour list (:meth:`graph`);
        ``"per-structure"``: mace-torch's ``AtomicData.from_config`` per structure (the reference path). Both give
        the same input, up to the order of the edges.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
        threads: int | None = None,
        head: str | None = None,
        graph_builder: str = "batch",
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise AloeError(f"{self.path}: no such MACE model file")
        if dtype not in ("float32", "float64"):
            raise AloeError(f"MACE dtype must be 'float32' or 'float64', not {dtype!r}")
        self.name = f"mace:{self.path.stem}"
        self.device = device
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.threads = threads
        self.head_request = head
        if graph_builder not in GRAPH_BUILDERS:
            raise AloeError(
                f"{self.name}: graph_builder must be 'batch' or 'per-structure', not {graph_builder!r}"
            )
        self.graph_builder = graph_builder
        self._model: Any = None
        self._device: str | None = None

    # ---- model ------------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The MACE module (loaded on first access, in ``dtype``, eval mode, weights frozen)."""
        if self._model is None:
            self._load()
        return self._model

    def _load(self) -> None:
        import torch

        from aloe.devices import resolve_device

        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        device = resolve_device(self.device)
        model = load_mace_module(self.path, device)
        model = model.double() if self.dtype == "float64" else model.float()
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)  # forces/stress need position/strain gradients only
        self.r_max = float(model.r_max)
        self.atomic_numbers = [int(z) for z in model.atomic_numbers]
        heads = list(getattr(model, "heads", None) or ["Default"])
        self.heads = heads
        self.head = _pick_head(heads, self.head_request, self.name)
        self._model, self._device = model, device

    def predict(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> Predictions:
        """As :meth:`Potential.predict`; a model file that cannot be loaded raises instead of failing every structure."""
        _ = self.model
        return super().predict(batch, shared)

    def predict_energies(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> Predictions:
        """As :meth:`Potential.predict_energies`; a model file that cannot be loaded raises."""
        _ = self.model
        return super().predict_energies(batch, shared)

    def identity(self) -> str:
        """``mace:<stem>:<sha256 prefix of the file>``."""
        return f"{self.name}:{file_digest(str(self.path))}"

    def calculator(self) -> Calculator:
        """mace-torch's ``MACECalculator`` around a fresh copy of the model (for relaxations)."""
        from mace.calculators import MACECalculator

        from aloe.devices import resolve_device

        device = resolve_device(self.device)
        module = load_mace_module(
            self.path, device
        )  # MACECalculator converts dtype in place: give it its own copy
        with _quiet_logging():
            return MACECalculator(
                models=[module], device=device, default_dtype=self.dtype, **_head_kwargs(self.head_request)
            )

    # ---- the batched input (graph_builder="batch") ------------------------------------------------------------
    def graph(
        self, batch: StructureBatch, shared: dict[str, Any] | None = None
    ) -> tuple[MACEGraph, dict[int, str]]:
        """The :class:`MACEGraph` of the usable structures of ``batch``, and why the others are not usable.

        One neighbour list for the batch (:func:`~aloe.potentials.neighbours.neighbour_list`, ``d < r_max``,
        shared with the committee through ``shared``). The graph depends only on ``r_max`` and the element table,
        so members with equal ones (whatever their dtype or head) share it through ``shared``.

        Returns
        -------
        tuple
            ``(graph, failed)``: the graph of the usable rows, and row -> reason (without the model's name) for
            the others: elements the model has no parameters for, or a neighbour list that failed.
        """
        from aloe.potentials.neighbours import neighbour_list

        _ = self.model  # loads, which sets r_max and the element table
        key = (_GRAPH_KEY, self.r_max, tuple(self.atomic_numbers))
        if shared is not None and key in shared:
            return shared[key]
        m = len(batch)
        numbers = np.asarray(batch.numbers, dtype=np.int64)
        table = np.asarray(self.atomic_numbers, dtype=np.int64)
        index_of = np.full(
            max(int(numbers.max(initial=0)), int(table.max(initial=0))) + 1, -1, dtype=np.int64
        )
        index_of[table] = np.arange(len(table))
        species_all = index_of[numbers]
        owner = batch.owner
        failed: dict[int, str] = {}
        for r in np.unique(owner[species_all < 0]).tolist():
            failed[r] = _missing_elements(numbers[batch.atom_slice(r)], table)
        pairs = neighbour_list(batch, self.r_max, shared, inclusive=False)
        for r, reason in pairs.failed.items():
            failed.setdefault(r, reason)

        usable = np.ones(m, dtype=bool)
        usable[list(failed)] = False
        rows = np.flatnonzero(usable)
        atom_kept = usable[owner]
        renumber = np.cumsum(atom_kept) - 1  # old global atom index -> index among the usable atoms
        edge_kept = usable[pairs.owner]
        edge_index = np.stack((renumber[pairs.first[edge_kept]], renumber[pairs.second[edge_kept]]))
        unit_shifts = pairs.shifts[edge_kept]
        edge_owner = pairs.owner[edge_kept]

        # Positions and shifts structure by structure with np.dot, as ASE (Atoms(scaled_positions=...)) and
        # mace's get_neighborhood compute them: the same float64 bits, hence the same input in either dtype.
        positions = np.empty((int(atom_kept.sum()), 3))
        shifts = np.empty((len(unit_shifts), 3))
        # The pairs come ordered by structure: those of rows[k] lie between edge_bounds[k] and edge_bounds[k + 1].
        edge_bounds = np.searchsorted(edge_owner, np.concatenate([rows, [m]]))
        start = 0
        for k, r in enumerate(rows.tolist()):
            sl = batch.atom_slice(r)
            stop = start + (sl.stop - sl.start)
            positions[start:stop] = np.dot(batch.frac_coords[sl], batch.cell[r])
            first, last = edge_bounds[k], edge_bounds[k + 1]
            shifts[first:last] = np.dot(unit_shifts[first:last], batch.cell[r])
            start = stop

        graph = MACEGraph(
            rows=rows,
            n_atoms=np.asarray(batch.n_atoms, dtype=np.int64)[rows],
            species=species_all[atom_kept],
            positions=positions,
            cells=np.asarray(batch.cell, dtype=np.float64)[rows],
            edge_index=edge_index.reshape(2, -1),
            unit_shifts=unit_shifts,
            shifts=shifts,
        )
        result = (graph, failed)
        if shared is not None:
            shared[key] = result
        return result

    def graph_input(self, graph: MACEGraph) -> dict[str, Any]:
        """The model's input dict of ``graph``: the keys and values of the per-structure path, on the model's device.

        Floating-point tensors are in the model's dtype; each is a new tensor (the model writes into the dict and
        sets ``requires_grad`` on its tensors, so no two calls may share one).
        """
        import torch

        model = self.model
        dtype = next(model.parameters()).dtype
        m, n = len(graph.rows), len(graph.species)
        n_atoms = torch.from_numpy(graph.n_atoms)

        node_attrs = torch.zeros(n, len(self.atomic_numbers), dtype=dtype)
        node_attrs[torch.arange(n), torch.from_numpy(graph.species)] = 1.0
        cells = torch.tensor(graph.cells, dtype=dtype)
        # from_config: volume = det(cell) and rcell = 2 pi inv(cell^T) (zero for a flat cell), in the model's dtype.
        volume = torch.linalg.det(cells)
        rcell = torch.zeros_like(cells)
        solid = volume.abs() > 0
        rcell[solid] = 2 * torch.pi * torch.linalg.inv(cells[solid].mT)
        data: dict[str, Any] = {
            "batch": torch.repeat_interleave(torch.arange(m), n_atoms),
            "ptr": torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(n_atoms, 0)]),
            "node_attrs": node_attrs,
            "positions": torch.tensor(graph.positions, dtype=dtype),
            "cell": cells.reshape(3 * m, 3),
            "rcell": rcell.reshape(3 * m, 3),
            "volume": volume,
            "pbc": torch.ones((m, 3), dtype=torch.bool),
            "edge_index": torch.tensor(graph.edge_index, dtype=torch.int64),
            "unit_shifts": torch.tensor(graph.unit_shifts, dtype=dtype),
            "shifts": torch.tensor(graph.shifts, dtype=dtype),
            "head": torch.full((m,), self.heads.index(self.head), dtype=torch.int64),
        }
        for name, (value, shape) in _PER_STRUCTURE_CONSTANTS.items():
            data[name] = torch.full((m, *shape), value, dtype=dtype)
        for name, (value, shape) in _PER_ATOM_CONSTANTS.items():
            data[name] = torch.full((n, *shape), value, dtype=dtype)
        return {key: value.to(self._device) for key, value in data.items()}

    # ---- the per-structure input (graph_builder="per-structure") ----------------------------------------------
    def data_settings(self) -> tuple[Any, ...]:
        """What determines the per-structure input graphs; members with equal settings share them."""
        model = self.model  # loads, which sets r_max/heads/head
        del model
        return (_DATA_KEY, self.r_max, tuple(self.atomic_numbers), tuple(self.heads), self.head, self.dtype)

    def atomic_data(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> list[Any]:
        """The mace-torch ``AtomicData`` of each structure (CPU), or a string saying why it could not be built."""
        from mace import data as mace_data
        from mace.tools import torch_tools, utils

        _ = self.model  # loads, which sets r_max and the element table
        z_table = utils.AtomicNumberTable(self.atomic_numbers)
        known = set(self.atomic_numbers)
        keyspec = mace_data.KeySpecification(info_keys=dict(_INFO_KEYS), arrays_keys=dict(_ARRAYS_KEYS))

        def build(row: int) -> Any:
            numbers = batch.numbers[batch.atom_slice(row)]
            if set(numbers.tolist()) - known:
                return _missing_elements(numbers, np.asarray(self.atomic_numbers))
            config = mace_data.config_from_atoms(
                batch.to_atoms(row), key_specification=keyspec, head_name=self.head
            )
            return mace_data.AtomicData.from_config(
                config, z_table=z_table, cutoff=self.r_max, heads=self.heads
            )

        with torch_tools.default_dtype(self.dtype):
            return shared_inputs(batch, shared, self.data_settings(), build)

    def data_input(self, items: list[Any], rows: list[int]) -> dict[str, Any]:
        """The model's input dict of ``items[rows]`` (one ``torch_geometric`` batch on the device, model dtype)."""
        import torch
        from mace.tools import torch_geometric

        # from_data_list concatenates into new tensors, so members sharing the AtomicData never share a batch.
        data = torch_geometric.Batch.from_data_list([items[r] for r in rows]).to(self._device)
        model_dtype = next(self.model.parameters()).dtype
        for key in data.keys:
            value = data[key]
            if torch.is_tensor(value) and torch.is_floating_point(value):
                data[key] = value.to(dtype=model_dtype)
        return data.to_dict()

    # ---- prediction ---------------------------------------------------------------------------------------
    def model_input(
        self, batch: StructureBatch, shared: dict[str, Any] | None = None
    ) -> tuple[list[int], dict[int, str], dict[str, Any] | None]:
        """The model's input dict of the usable structures of ``batch``, from the ``graph_builder`` chosen.

        Returns
        -------
        tuple
            ``(rows, failed, data)``: the usable rows (ascending), row -> reason (without the model's name) for the
            others, and the input dict of the usable rows in that order (``None`` if there are none).
        """
        if self.graph_builder == "batch":
            graph, failed = self.graph(batch, shared)
            rows = graph.rows.tolist()
            return rows, failed, self.graph_input(graph) if rows else None
        items = self.atomic_data(batch, shared)
        failed = {r: item for r, item in enumerate(items) if isinstance(item, str)}
        rows = [r for r in range(len(items)) if r not in failed]
        return rows, failed, self.data_input(items, rows) if rows else None

    def _usable_input(
        self, batch: StructureBatch, shared: dict[str, Any], out: Predictions
    ) -> tuple[list[int], dict[str, Any] | None]:
        """:meth:`model_input`, with the reasons of the unusable rows written into ``out.errors``."""
        rows, failed, data = self.model_input(batch, shared)
        for r, reason in failed.items():
            out.errors[r] = f"{self.name}: {reason}"
        return rows, data

    def _predict_energy_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        # Forward pass only: no force/stress gradients, so no autograd graph either.
        import torch

        out = Predictions.empty(batch)
        rows, data = self._usable_input(batch, shared, out)
        if not rows:
            return out
        with torch.no_grad():
            result = self.model(data, compute_force=False, compute_stress=False, training=False)
        energy = result["energy"].detach().double().cpu().numpy()
        for j, r in enumerate(rows):
            out.energy[r] = energy[j]
            out.errors[r] = None
        return out

    def _predict_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        import torch

        model = self.model
        out = Predictions.empty(batch)
        rows, data = self._usable_input(batch, shared, out)
        if not rows:
            return out
        with torch.enable_grad():  # forces and stress are gradients, also when the caller runs under no_grad
            result = model(data, compute_stress=True, training=False)
        energy = result["energy"].detach().double().cpu().numpy()
        forces = result["forces"].detach().double().cpu().numpy()
        stress = voigt_from_tensor(_symmetrize(result["stress"].detach().double().cpu().numpy()))
        start = 0
        for j, r in enumerate(rows):
            n = int(batch.n_atoms[r])
            out.energy[r] = energy[j]
            out.forces[batch.atom_slice(r)] = forces[start : start + n]
            out.stress[r] = stress[j]
            out.errors[r] = None
            start += n
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        state["_device"] = None
        return state


def _pick_head(heads: list[str], requested: str | None, name: str) -> str:
    # MACECalculator's rule: the requested head, else the only head, else the one called "default".
    if requested is not None:
        if requested not in heads:
            raise AloeError(f"{name}: no head {requested!r}; the model has {', '.join(heads)}")
        return requested
    if len(heads) == 1:
        return heads[0]
    for head in heads:
        if head.lower() == "default":
            return head
    raise AloeError(f"{name}: a multi-head model needs head=...; the model has {', '.join(heads)}")


def _missing_elements(numbers: np.ndarray, table: np.ndarray) -> str:
    """Why a structure with ``numbers`` cannot be predicted by a model of the elements ``table``."""
    from ase.data import chemical_symbols

    missing = sorted(set(np.asarray(numbers).tolist()) - set(np.asarray(table).tolist()))
    return "no parameters for element(s) " + ", ".join(chemical_symbols[z] for z in missing)


def _head_kwargs(head: str | None) -> dict[str, str]:
    return {} if head is None else {"head": head}


@contextlib.contextmanager
def _quiet_logging():
    # MACECalculator logs dtype conversions at WARNING level through the root logger; they are expected here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _symmetrize(tensors: np.ndarray) -> np.ndarray:
    # ASE's full_3x3_to_voigt_6_stress averages the off-diagonal pairs, as MACECalculator does.
    return 0.5 * (tensors + np.swapaxes(tensors, -1, -2))
