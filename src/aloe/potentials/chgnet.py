"""CHGNet (the three models that ship inside the chgnet wheel, so they work offline) with a fast batched path.

CHGNet's own ``predict_graph`` is written for training: it takes forces and stress with two separate
``torch.autograd.grad(..., create_graph=True, retain_graph=True)`` calls, which keeps a double-backward graph alive
and walks the network backwards twice. For inference one backward pass is enough: :class:`CHGNetPotential` runs
``CHGNet._compute`` without forces or stress, then takes ONE ``autograd.grad`` of the batch's total energy with
respect to every atom position and every strain, without ``create_graph``. The numbers equal
``CHGNet.predict_structure(structure, task="efs")`` of each structure alone to float32 round-off (tested) and come
~3x faster on CPU.

One deliberate difference: chgnet 0.4.2 divides by the signed volume ``a . (b x c)``, so for a left-handed cell
(negative triple product) its stress, also through ``CHGNetCalculator``, comes out with the wrong sign. aloe divides
by ``|V|`` (as MACE does); for right-handed cells, all that aloe's generator makes, the results are identical.

Graphs. By default (``graph_builder="batch"``) the graphs of a whole sub-batch come from one neighbour-list pass
(:mod:`aloe.potentials.neighbours`, matscipy) and vectorised numpy (:mod:`aloe.potentials.chgnet_graph`): the same
edges, bonds and angles as CHGNet's own converter, as sets (tested on 217 structures), and the ``BatchedGraph`` is
assembled in one pass with the model's own encoders. ``graph_builder="converter"`` keeps CHGNet's converter,
structure by structure, as the reference. Graphs depend only on the converter settings (cutoffs), not on the
weights, so committee members with identical settings (0.3.0 and r2scan: atom cutoff 6 A, bond cutoff 3 A; 0.2.0
uses 5 A) build them once per sub-batch through the ``shared`` scratch dict of
:meth:`aloe.potentials.base.Potential.predict`, and the 5 A list is the 6 A list filtered. In MD the lists are
Verlet lists (:class:`aloe.potentials.neighbours.VerletNeighbours`).

Batch invariance (why a sub-batch may be split in two). ``CHGNet._compute`` runs its bond-graph layers
(``BondConv``, ``AngleUpdate``) only ``if len(g.angle_bases) != 0`` -- a test on the WHOLE ``BatchedGraph``. A
structure without angles (no atom with two bonds shorter than the bond cutoff, 3 A: e.g. KBr, RbCl, CsI or PbTe
near their experimental lattice constants) skips them when predicted alone, but not in a batch with any structure that
has angles. Then ``BondConv`` also updates that structure's bonds: they receive no angle messages, so their update is
``mlp_out(0)``, which is 0 for 0.3.0 and r2scan but the bias of ``mlp_out`` for 0.2.0 (``CHGNet.load`` builds
0.2.0 with ``mlp_out_bias=True``, cf. CHGNet issue #79): 0.1-0.2 eV/atom for those four. The offsets of
``BatchedGraph.from_graphs`` are correct; only this batch-global branch leaks. chgnet's own
``predict_structure(list)`` has the same fault. aloe predicts structures with and without angles in separate
``BatchedGraph`` s (:meth:`CHGNetPotential.invariant_groups`), each exactly what the structure gets alone, and only
for models whose bond layers change angle-free bonds (probed once after loading: 0.2.0), so ordinary batches
stay one forward pass. The DIRECT encoder uses the same groups.

CPU speed: subnormal floats are flushed to zero (``flush_denormal=True``, process-wide; ~20% faster on the
CHGNet trio, no visible change in results).

Threads: torch uses every core by default; aloe runs one torch thread per process (``threads=1`` is the default of
the stage settings, parallelism comes from processes). Pass ``threads`` to set ``torch.set_num_threads`` when the
model is loaded (in the process that predicts).
"""

from __future__ import annotations

import contextlib
import io
import warnings
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

#: The models inside chgnet's wheel -> what they were trained on (for reports and mixed-committee handling).
CHGNET_MODELS: dict[str, str] = {
    "0.3.0": "PBE/PBE+U (MPtrj, MP2020-corrected)",
    "0.2.0": "PBE/PBE+U (MPtrj, MP2020-corrected)",
    "r2scan": "r2SCAN",
}

#: Weight files inside ``chgnet/pretrained`` (as named by ``CHGNet.load`` in chgnet 0.4.2).
_WEIGHT_FILES: dict[str, str] = {
    "0.3.0": "0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
    "0.2.0": "0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
    "r2scan": "r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
}

_GRAPH_KEY = "chgnet-graphs"


class CHGNetPotential(Potential):
    """A pretrained CHGNet model, batched.

    Parameters
    ----------
    model_name
        ``"0.3.0"``, ``"0.2.0"`` or ``"r2scan"`` (the checkpoints shipped inside the chgnet wheel).
    device
        ``"cpu"``, ``"cuda"`` (``"cuda:1"`` ...) or ``"auto"`` (cuda if available).
    batch_size
        Structures per forward pass.
    threads
        If given, ``torch.set_num_threads(threads)`` when the model is loaded. aloe's stages default to 1 thread per
        process.
    flush_denormal
        Flush subnormal floats to zero in this process when the model is loaded (faster on CPU).
    graph_builder
        ``"batch"`` (default): the graphs of a whole sub-batch from one neighbour-list pass
        (:mod:`aloe.potentials.chgnet_graph`); ``"converter"``: CHGNet's own converter, structure by structure
        (the reference path, and the baseline of ``benchmarks/``). Both give the same graphs as sets.

    Notes
    -----
    The model is loaded on first use (and again after unpickling, e.g. in a worker process), so constructing the
    object is cheap and it travels to worker processes without its weights. Structures with isolated atoms (no
    neighbour within the atom cutoff) are predicted like CHGNet's ASE calculator does (it only warns), without the
    warning. Energy is CHGNet's energy per atom (network + composition model, exactly as ``CHGNet.forward``) times
    the number of atoms; stress is ``dE/d(strain) / |V|`` in eV/A^3, the sign of ASE and of ``CHGNetCalculator``
    (whose sign is wrong for left-handed cells; ours is not).
    """

    def __init__(
        self,
        model_name: str = "0.3.0",
        *,
        device: str = "cpu",
        batch_size: int = 32,
        threads: int | None = None,
        flush_denormal: bool = True,
        graph_builder: str = "batch",
    ) -> None:
        if model_name not in CHGNET_MODELS:
            known = ", ".join(f"chgnet-{k}" for k in CHGNET_MODELS)
            raise AloeError(f"unknown CHGNet model {model_name!r}: the chgnet wheel ships {known}")
        self.model_name = model_name
        self.name = f"chgnet-{model_name}"
        self.functional = CHGNET_MODELS[model_name]
        self.device = device
        self.batch_size = int(batch_size)
        self.threads = threads
        self.flush_denormal = flush_denormal
        if graph_builder not in ("batch", "converter"):
            raise AloeError(
                f"{self.name}: graph_builder must be 'batch' or 'converter', not {graph_builder!r}"
            )
        self.graph_builder = graph_builder
        self._model: Any = None
        self._device: str | None = None
        self._split_angle_free: bool = True

    # ---- model ------------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The ``chgnet.model.CHGNet`` module (loaded on first access, in eval mode, weights frozen)."""
        if self._model is None:
            self._load()
        return self._model

    def _load(self) -> None:
        try:
            import torch
            from chgnet.model import CHGNet
        except ImportError as exc:
            raise AloeError(f"{self.name} needs the package chgnet: pip install chgnet ({exc})") from None

        from aloe.devices import resolve_device

        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        if self.flush_denormal:
            # CHGNet's smooth cutoffs produce subnormal floats; flushing them to zero makes CPU inference ~20%
            # faster (measured on the 3-model committee) and changes results only below 1e-38.
            torch.set_flush_denormal(True)
        device = resolve_device(self.device)
        try:
            # CHGNet's constructor prints its parameter count even with verbose=False.
            with contextlib.redirect_stdout(io.StringIO()):
                model = CHGNet.load(model_name=self.model_name, use_device=device, verbose=False)
        except Exception as exc:  # e.g. a broken install: one clear line, not a failure per structure
            raise AloeError(
                f"{self.name}: cannot load the model on {device} ({type(exc).__name__}: {exc})"
            ) from None
        model.eval()  # CHGNet.load returns the module in training mode
        for param in model.parameters():
            param.requires_grad_(False)  # only position/strain gradients are needed
        # Like CHGNetCalculator (which only warns), predict structures with isolated atoms; 'ignore' keeps stderr clean.
        model.graph_converter.set_isolated_atom_response("ignore")
        self._split_angle_free = not _bond_layers_keep_angle_free_bonds(model)
        self._model, self._device = model, device

    def predict(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> Predictions:
        """As :meth:`Potential.predict`; a model that cannot be loaded raises instead of failing every structure."""
        _ = self.model
        return super().predict(batch, shared)

    def predict_energies(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> Predictions:
        """As :meth:`Potential.predict_energies`; a model that cannot be loaded raises."""
        _ = self.model
        return super().predict_energies(batch, shared)

    def weight_file(self) -> Path:
        """The checkpoint file inside the chgnet package."""
        import importlib.util

        spec = importlib.util.find_spec("chgnet")
        if spec is None or spec.origin is None:
            raise AloeError(f"{self.name} needs the package chgnet: pip install chgnet")
        return Path(spec.origin).parent / "pretrained" / _WEIGHT_FILES[self.model_name]

    def identity(self) -> str:
        """``chgnet-<version>:<sha256 prefix of the weight file>``."""
        return f"{self.name}:{file_digest(str(self.weight_file()))}"

    def calculator(self) -> Calculator:
        """The package's own ``CHGNetCalculator`` around the same model (for relaxations)."""
        from chgnet.model.dynamics import CHGNetCalculator

        model = self.model
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the device
            return CHGNetCalculator(model=model, use_device=self._device, on_isolated_atoms="ignore")

    def graph_settings(self) -> tuple[Any, ...]:
        """The converter settings that determine a graph; models with equal settings share graphs."""
        conv = self.model.graph_converter
        return (
            _GRAPH_KEY,
            float(conv.atom_graph_cutoff),
            float(conv.bond_graph_cutoff),
            str(conv.algorithm),
            str(conv.on_isolated_atoms),
        )

    # ---- prediction ---------------------------------------------------------------------------------------
    #: Error of a structure whose graph could not be built.
    GRAPH_ERROR_PREFIX = "{name} could not build the graph: "

    def on_device(self, graphs: list[Any]) -> list[Any]:
        """The graphs on the model's device (``CrystalGraph.to()`` copies every tensor: only moved off the CPU)."""
        if str(self._device).startswith("cpu"):
            return graphs
        return [g.to(self._device) for g in graphs]

    def batched_graph(self, graphs: list[Any], compute_stress: bool) -> Any:
        """CHGNet's ``BatchedGraph`` of ``graphs`` (built in the caller's grad mode: strains need grad for stress)."""
        from chgnet.model.model import BatchedGraph

        model = self.model
        with warnings.catch_warnings():
            # from_graphs turns grad-carrying volumes into a tensor and torch warns about it; harmless here.
            warnings.simplefilter("ignore", UserWarning)
            return BatchedGraph.from_graphs(
                graphs,
                bond_basis_expansion=model.bond_basis_expansion,
                angle_basis_expansion=model.angle_basis_expansion,
                compute_stress=compute_stress,
            )

    def invariant_groups(self, graphs: list[Any]) -> list[list[int]]:
        """Positions in ``graphs`` grouped so that one ``BatchedGraph`` per group gives every structure its alone result.

        Structures with and without bond-graph angles go to separate groups when the model's bond layers would change
        the bonds of an angle-free structure (see the module docstring: ``CHGNet._compute`` decides per batch whether
        to run them); otherwise, and when only one kind is present, everything stays one group.
        """
        has_angles = np.array([len(g.bond_graph) != 0 for g in graphs], dtype=bool)
        return [group.tolist() for group in self._angle_groups(has_angles)]

    def _angle_groups(self, has_angles: np.ndarray) -> list[np.ndarray]:
        """:meth:`invariant_groups` from each structure's "has bond-graph angles" (shape ``(m,)`` bool)."""
        _ = self.model  # the probe runs when the model is loaded
        everything = np.arange(len(has_angles))
        if not self._split_angle_free:
            return [everything]
        return [group for group in (everything[has_angles], everything[~has_angles]) if len(group)]

    def compute(
        self, graphs: list[Any], *, strains: bool = False, **kwargs: Any
    ) -> list[tuple[list[int], Any, dict]]:
        """``CHGNet._compute`` of ``graphs`` (on the model's device), one batched pass per :meth:`invariant_groups` group.

        Parameters
        ----------
        graphs
            ``CrystalGraph`` s on the model's device.
        strains
            Give the ``BatchedGraph`` strains (``compute_stress`` of ``BatchedGraph.from_graphs``; they carry grad in
            the caller's grad mode).
        **kwargs
            Passed to ``CHGNet._compute`` (``return_crystal_feas=True`` ...).

        Returns
        -------
        list
            ``(positions in graphs, BatchedGraph, prediction)`` per group.
        """
        out = []
        for group in self.invariant_groups(graphs):
            bg = self.batched_graph([graphs[i] for i in group], compute_stress=strains)
            out.append((group, bg, self.model._compute(bg, **kwargs)))
        return out

    def graphs(self, batch: StructureBatch, shared: dict[str, Any] | None = None) -> list[Any]:
        """CHGNet graphs of ``batch`` (built once per converter setting when ``shared`` is given).

        Returns
        -------
        list
            One entry per structure: a ``CrystalGraph`` (on the CPU), or a string saying why it could not be built.
        """
        converter = self.model.graph_converter
        return shared_inputs(
            batch,
            shared,
            self.graph_settings(),
            lambda row: converter(batch.to_structure(row), graph_id=batch.ids[row]),
        )

    def _usable_graphs(
        self, batch: StructureBatch, shared: dict[str, Any], out: Predictions
    ) -> tuple[list[int], list[Any]]:
        """Rows whose graph was built and those graphs on the model's device; the others' reasons go to ``out``."""
        graphs = self.graphs(batch, shared)
        rows = usable_rows(graphs, out.errors, self.GRAPH_ERROR_PREFIX.format(name=self.name))
        return rows, self.on_device([graphs[r] for r in rows]) if rows else []

    # ---- the batched graph path (default) -------------------------------------------------------------------
    def graph_index(
        self, batch: StructureBatch, shared: dict[str, Any] | None = None
    ) -> tuple[list[int], Any, dict[int, str]]:
        """The rows whose graph could be built, their :class:`~aloe.potentials.chgnet_graph.GraphIndex`, the others.

        One neighbour-list pass for the batch (shared with the committee through ``shared``: models with equal
        converter settings share the index, smaller cutoffs filter the largest list). Rows whose list failed are
        left out; the index numbers the usable rows as ``batch.take(rows)`` does.

        Returns
        -------
        tuple
            ``(rows, index, failed)``: usable rows, their graph, and row -> reason for the others.
        """
        from aloe.potentials.chgnet_graph import graph_index
        from aloe.potentials.neighbours import neighbour_list

        key = (*self.graph_settings(), "batch")
        if shared is not None and key in shared:
            return shared[key]
        conv = self.model.graph_converter
        pairs = neighbour_list(batch, float(conv.atom_graph_cutoff), shared, inclusive=True)
        index = graph_index(pairs, float(conv.bond_graph_cutoff))
        rows = [r for r in range(len(batch)) if r not in pairs.failed]
        if len(rows) < len(batch):
            index = index.take(np.asarray(rows), batch.offsets)
        result = (rows, index, dict(pairs.failed))
        if shared is not None:
            shared[key] = result
        return result

    def usable_graph(
        self, batch: StructureBatch, errors: list[str | None], shared: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, StructureBatch, Any]:
        """:meth:`graph_index` as the callers use it: the usable rows, their batch and graph; reasons go to ``errors``.

        Parameters
        ----------
        batch
            The structures.
        errors
            One entry per structure of ``batch``: rows whose graph could not be built get
            ``GRAPH_ERROR_PREFIX + reason``.
        shared
            As in :meth:`graph_index`.

        Returns
        -------
        tuple
            ``(rows, usable batch, index)``; rows shape ``(k,)`` int.
        """
        rows, index, failed = self.graph_index(batch, shared)
        prefix = self.GRAPH_ERROR_PREFIX.format(name=self.name)
        for r, reason in failed.items():
            errors[r] = prefix + reason
        usable = batch if len(rows) == len(batch) else batch.take(rows)
        return np.asarray(rows, dtype=np.int64), usable, index

    def compute_batch(
        self, batch: StructureBatch, index: Any, *, strains: bool = False, **kwargs: Any
    ) -> list[tuple[np.ndarray, StructureBatch, Any, dict]]:
        """``CHGNet._compute`` of a batch from its graph index, one pass per :meth:`invariant_groups` group.

        Parameters
        ----------
        batch
            The structures (all usable).
        index
            Their :class:`~aloe.potentials.chgnet_graph.GraphIndex`.
        strains
            Give the ``BatchedGraph`` a strain to differentiate (stress); call in grad mode.
        **kwargs
            Passed to ``CHGNet._compute``.

        Returns
        -------
        list
            ``(rows of batch in the group, the group's batch, BatchedGraph, prediction)`` per group.
        """
        from aloe.potentials.chgnet_graph import batched_graph

        m = len(batch)
        out = []
        for group in self._angle_groups(index.angles_per_structure(m) > 0):
            sub, sub_index = (
                (batch, index) if len(group) == m else (batch.take(group), index.take(group, batch.offsets))
            )
            bg = batched_graph(self.model, sub, sub_index, compute_stress=strains)
            out.append((group, sub, bg, self.model._compute(bg, **kwargs)))
        return out

    def _group_energies(self, sub: StructureBatch, pred: dict) -> Any:
        """Total energies (eV) of one group, float64 ``(len(sub),)``: ``CHGNet.forward``'s network + composition."""
        from aloe.potentials.chgnet_graph import composition_energy

        model = self.model
        per_graph = pred["e"].detach()
        if model.composition_model is not None:
            per_graph = per_graph + composition_energy(model, sub)
        n_atoms = pred["atoms_per_graph"]
        return per_graph.double() * n_atoms.double() if model.is_intensive else per_graph.double()

    def _batch_predict(self, batch: StructureBatch, shared: dict[str, Any], energy_only: bool) -> Predictions:
        import torch

        model = self.model
        out = Predictions.empty(batch)
        rows, usable, index = self.usable_graph(batch, out.errors, shared)
        if not len(rows):
            return out
        if energy_only:
            with torch.no_grad():
                parts = self.compute_batch(usable, index)
        else:
            with torch.enable_grad():
                parts = self.compute_batch(usable, index, strains=True)
                # One backward pass for the forces and stresses of every group; nothing differentiates again.
                network_total = sum(
                    (pred["e"] * pred["atoms_per_graph"] if model.is_intensive else pred["e"]).sum()
                    for *_, pred in parts
                )
                inputs = [x for _, _, bg, _ in parts for x in (bg.atom_positions[0], bg.strains[0])]
                grads = torch.autograd.grad(network_total, inputs, allow_unused=True)
            grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)]
        for k, (group, sub, bg, pred) in enumerate(parts):
            with torch.no_grad():
                energy = self._group_energies(sub, pred).cpu().numpy()
            targets = rows[group]
            out.energy[targets] = energy
            for t in targets.tolist():
                out.errors[t] = None
            if energy_only:
                continue
            forces = -grads[2 * k].detach().double().cpu().numpy()
            # |V|, not CHGNet's signed triple product: chgnet flips the stress of left-handed cells (module doc).
            volumes = bg.volumes.detach().double().abs().view(-1, 1, 1)
            stress = (grads[2 * k + 1].detach().double() / volumes).cpu().numpy()
            out.stress[targets] = voigt_from_tensor(_symmetrize(stress))
            for j, t in enumerate(targets.tolist()):
                out.forces[batch.atom_slice(t)] = forces[sub.atom_slice(j)]
        return out

    # ---- the converter path (graph_builder="converter") -------------------------------------------------------
    def _predict_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        if self.graph_builder == "batch":
            return self._batch_predict(batch, shared, energy_only=False)
        import torch

        model = self.model
        out = Predictions.empty(batch)
        rows, gs = self._usable_graphs(batch, shared, out)
        if not rows:
            return out
        with torch.enable_grad():
            # Strains in the graph, but CHGNet's own force/stress autograd off: one grad below does both.
            parts = self.compute(gs, strains=True, compute_force=False, compute_stress=False)
            # One backward pass for forces and stress of every group together; no create_graph (nothing
            # differentiates again). Groups share no atoms, so each structure's gradient is its own.
            network_total = sum(
                (pred["e"] * pred["atoms_per_graph"] if model.is_intensive else pred["e"]).sum()
                for _, _, pred in parts
            )
            inputs = [x for _, bg, _ in parts for x in (*bg.atom_positions, *bg.strains)]
            grads = torch.autograd.grad(network_total, inputs, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)]

        with torch.no_grad():
            back = _group_order_back(parts)
            total = self._total_energy(parts, gs, back)
            # |V|, not CHGNet's signed triple product: chgnet flips the stress of left-handed cells (see module doc).
            volumes = torch.cat([bg.volumes.detach() for _, bg, _ in parts])[back].double().abs()
            position_grads: list[Any] = [None] * len(gs)
            strain_grads: list[Any] = [None] * len(gs)
            at = 0
            for group, _, _ in parts:
                for j, i in enumerate(group):
                    position_grads[i] = grads[at + j]
                    strain_grads[i] = grads[at + len(group) + j]
                at += 2 * len(group)
            forces = [-g.detach().double().cpu().numpy() for g in position_grads]
            stress = torch.stack([g.detach() for g in strain_grads]).double() / volumes.view(-1, 1, 1)
        stress_voigt = voigt_from_tensor(_symmetrize(stress.cpu().numpy()))
        total_np = total.cpu().numpy()
        for j, r in enumerate(rows):
            out.energy[r] = total_np[j]
            out.forces[batch.atom_slice(r)] = forces[j]
            out.stress[r] = stress_voigt[j]
            out.errors[r] = None
        return out

    def _predict_energy_batch(self, batch: StructureBatch, shared: dict[str, Any]) -> Predictions:
        # No strains, no autograd: the forward pass only (the backward pass is ~35% of predict's time on CPU).
        # Same graphs, groups and energy assembly as _predict_batch, so the energies agree to float32 round-off.
        if self.graph_builder == "batch":
            return self._batch_predict(batch, shared, energy_only=True)
        import torch

        out = Predictions.empty(batch)
        rows, gs = self._usable_graphs(batch, shared, out)
        if not rows:
            return out
        with torch.no_grad():
            parts = self.compute(gs, strains=False, compute_force=False, compute_stress=False)
            total_np = self._total_energy(parts, gs, _group_order_back(parts)).cpu().numpy()
        for j, r in enumerate(rows):
            out.energy[r] = total_np[j]
            out.errors[r] = None
        return out

    def _total_energy(self, parts: list[tuple[list[int], Any, dict]], graphs: list[Any], back: Any) -> Any:
        """Total energies (eV), float64 tensor of shape ``(len(graphs),)`` in the order of ``graphs``.

        Exactly ``CHGNet.forward``: the network's ``e`` plus the composition model (both per atom if the model is
        intensive), times the atoms. Call under ``torch.no_grad()``.

        Parameters
        ----------
        parts
            :meth:`compute` of ``graphs``.
        graphs
            The ``CrystalGraph`` s given to :meth:`compute`.
        back
            :func:`_group_order_back` of ``parts``.
        """
        import torch

        model = self.model
        per_graph = torch.cat([pred["e"].detach() for _, _, pred in parts])[back]
        n_atoms = torch.cat([pred["atoms_per_graph"] for _, _, pred in parts])[back]
        if model.composition_model is not None:
            per_graph = per_graph + model.composition_model(graphs)
        return per_graph.double() * n_atoms.double() if model.is_intensive else per_graph.double()

    # ---- pickling: ship the settings, not the weights ------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        state["_device"] = None
        return state


def _bond_layers_keep_angle_free_bonds(model: Any) -> bool:
    """Whether every ``BondConv`` of ``model`` returns the features of bonds that are in no angle unchanged.

    Probed on the loaded layers (an empty bond graph), not read from their settings: then CHGNet's batch-global
    "run the bond layers if any structure has angles" cannot change any structure's result, and a batch need not be
    split by :meth:`CHGNetPotential.invariant_groups`.
    """
    import torch

    device = next(model.parameters()).device
    n_bonds = 3
    bond_dim = model.bond_fea_dim
    bond_feas = torch.linspace(-1.0, 1.0, n_bonds * bond_dim, device=device).view(n_bonds, bond_dim)
    with torch.no_grad():
        for layer in model.bond_conv_layers:
            if layer is None:
                continue
            out = layer(
                atom_feas=torch.zeros(1, model.atom_fea_dim, device=device),
                bond_feas=bond_feas.clone(),
                bond_weights=torch.ones(n_bonds, bond_dim, device=device),
                angle_feas=torch.zeros(0, model.angle_embedding.out_features, device=device),
                bond_graph=torch.zeros(0, 3, dtype=torch.long, device=device),
            )
            if not torch.equal(out, bond_feas):
                return False
    return True


def _group_order_back(parts: list[tuple[list[int], Any, dict]]) -> Any:
    """Index tensor taking values concatenated in group order back to the order of the graphs (shape ``(n,)``)."""
    import torch

    order = [i for group, _, _ in parts for i in group]
    return torch.as_tensor(np.argsort(order), device=parts[0][2]["e"].device)


def _symmetrize(tensors: np.ndarray) -> np.ndarray:
    # ASE's full_3x3_to_voigt_6_stress averages the off-diagonal pairs; do the same so Voigt values match it.
    return 0.5 * (tensors + np.swapaxes(tensors, -1, -2))
