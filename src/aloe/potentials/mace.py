"""MACE models from ``.model`` files (a whole pickled ``torch.nn.Module``, as mace-torch writes them), batched.

The batched path builds its input with mace-torch's own data utilities, exactly as ``MACECalculator`` does for one
structure (``data.config_from_atoms`` -> ``data.AtomicData.from_config`` -> ``torch_geometric.Batch``), and calls
``model(batch, compute_stress=True, training=False)`` once per sub-batch; the results equal ``MACECalculator`` per
structure (tested). MACE's stress output is ``dE/d(strain) / V`` in eV/A^3, ASE's sign; like the calculator we
symmetrise it into Voigt order. Energies alone (:meth:`MACEPotential.predict_energies`) call the same model with
``compute_force=False, compute_stress=False`` under ``torch.no_grad()``: the forward pass only.

The per-structure graphs (``AtomicData``) depend only on the cutoff, the element table, the heads and the dtype, so
the members of a committee of MACE models trained with the same settings build them once per sub-batch.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aloe.errors import AloeError
from aloe.potentials.base import (
    Potential,
    Predictions,
    file_digest,
    shared_inputs,
    usable_rows,
    voigt_from_tensor,
)
from aloe.structures import StructureBatch

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

_DATA_KEY = "mace-data"
# MACECalculator's defaults (info keys read from Atoms.info; "Qs" per-atom charges), so inputs are built identically.
_INFO_KEYS = {"total_spin": "spin", "total_charge": "charge", "external_field": "external_field"}
_ARRAYS_KEYS = {"Qs": "charges"}


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

    # ---- prediction ---------------------------------------------------------------------------------------
    def data_settings(self) -> tuple[Any, ...]:
        """What determines the per-structure input graphs; members with equal settings share them."""
        model = self.model  # loads, which sets r_max/heads/head
        del model
        return (_DATA_KEY, self.r_max, tuple(self.atomic_numbers), tuple(self.heads), self.head, self.dtype)

    def atomic_data(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> list[Any]:
        """The mace-torch ``AtomicData`` of each structure (CPU), or a string saying why it could not be built."""
        from mace import data as mace_data
        from mace.tools import torch_tools, utils

        z_table = utils.AtomicNumberTable(self.atomic_numbers)
        known = set(self.atomic_numbers)
        keyspec = mace_data.KeySpecification(info_keys=dict(_INFO_KEYS), arrays_keys=dict(_ARRAYS_KEYS))

        def build(row: int) -> Any:
            missing = sorted(set(batch.numbers[batch.atom_slice(row)].tolist()) - known)
            if missing:
                from ase.data import chemical_symbols

                return "no parameters for element(s) " + ", ".join(chemical_symbols[z] for z in missing)
            config = mace_data.config_from_atoms(
                batch.to_atoms(row), key_specification=keyspec, head_name=self.head
            )
            return mace_data.AtomicData.from_config(
                config, z_table=z_table, cutoff=self.r_max, heads=self.heads
            )

        with torch_tools.default_dtype(self.dtype):
            return shared_inputs(batch, shared, self.data_settings(), build)

    def _model_input(self, items: list[Any], rows: list[int]) -> dict[str, Any]:
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

    def _predict_energy_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        # Forward pass only: no force/stress gradients, so no autograd graph either.
        import torch

        out = Predictions.empty(batch)
        items = self.atomic_data(batch, shared)
        rows = usable_rows(items, out.errors, f"{self.name}: ")
        if not rows:
            return out
        with torch.no_grad():
            result = self.model(
                self._model_input(items, rows), compute_force=False, compute_stress=False, training=False
            )
        energy = result["energy"].detach().double().cpu().numpy()
        for j, r in enumerate(rows):
            out.energy[r] = energy[j]
            out.errors[r] = None
        return out

    def _predict_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        import torch

        model = self.model
        out = Predictions.empty(batch)
        items = self.atomic_data(batch, shared)
        rows = usable_rows(items, out.errors, f"{self.name}: ")
        if not rows:
            return out
        data = self._model_input(items, rows)
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
