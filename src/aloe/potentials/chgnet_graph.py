"""CHGNet's atom graph and bond (angle) graph for a whole batch at once, from one neighbour-list pass.

CHGNet's own converter (``CrystalGraphConverter``) builds one ``CrystalGraph`` per structure from pymatgen's
neighbour list, pairing directed edges into undirected bonds and listing angles in Python/Cython, and
``BatchedGraph.from_graphs`` then featurises the graphs one by one. Here the same graph comes from vectorised
numpy over the batch's :class:`~aloe.potentials.neighbours.Neighbours`, and the ``BatchedGraph`` is assembled in one
pass with the model's own encoders (``bond_basis_expansion``, ``angle_basis_expansion``, ``composition_model.fc``).

CHGNet's graph, as its converter defines it (chgnet 0.4.2, ``chgnet/graph/graph.py``):

- directed edges: every pair ``(i, j, S)`` with ``d <= atom cutoff`` (pymatgen's ``numerical_tol`` 1e-8);
- undirected bonds: ``(i, j, S)`` and ``(j, i, -S)`` are one bond; its length is that of one of them;
- angles: for a bond ``u`` no longer than the bond cutoff, and each of its two directed edges ``a`` (centre ``c``),
  every other directed edge ``b`` from ``c`` shorter than the bond cutoff gives the angle
  ``[c, u, a, bond(b), b]`` (``<=`` for ``u``, ``<`` for ``b``, as the converter compares).

The numbering of bonds and the order of edges and angles differ from the converter's (they are sets); the tests
compare them as sets with the converter's, and the energies, forces and stresses with the per-structure path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aloe.potentials.neighbours import Neighbours
    from aloe.structures import StructureBatch


@dataclass(frozen=True)
class GraphIndex:
    """The weight-independent part of CHGNet's graph of a batch (numpy, global numbering).

    Attributes
    ----------
    atom_graph
        Shape ``(E, 2)`` int64: directed edge ``(centre, neighbour)``, global atom indices.
    images
        Shape ``(E, 3)`` int64: the neighbour's cell image ``S``.
    edge_owner
        Shape ``(E,)`` int64: structure of each directed edge.
    directed2undirected
        Shape ``(E,)`` int64: bond of each directed edge.
    undirected2directed
        Shape ``(U,)`` int64: one directed edge of each bond (its length is the bond's).
    bond_graph
        Shape ``(A, 5)`` int64: angle ``(centre atom, bond a, directed edge a, bond b, directed edge b)``.
    angle_owner
        Shape ``(A,)`` int64: structure of each angle.
    """

    atom_graph: np.ndarray
    images: np.ndarray
    edge_owner: np.ndarray
    directed2undirected: np.ndarray
    undirected2directed: np.ndarray
    bond_graph: np.ndarray
    angle_owner: np.ndarray

    def angles_per_structure(self, m: int) -> np.ndarray:
        """Shape ``(m,)``: number of angles of each of the batch's ``m`` structures."""
        return np.bincount(self.angle_owner, minlength=m)

    def take(self, rows: np.ndarray, offsets: np.ndarray) -> GraphIndex:
        """The graph of the structures ``rows`` (ascending) alone, renumbered as ``batch.take(rows)`` numbers them.

        Parameters
        ----------
        rows
            Ascending structure indices.
        offsets
            The full batch's atom offsets, shape ``(m + 1,)``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        m = len(offsets) - 1
        kept = np.zeros(m, dtype=bool)
        kept[rows] = True
        n_atoms = np.diff(offsets)
        atom_kept = np.repeat(kept, n_atoms)
        atom_map = np.cumsum(atom_kept) - 1
        row_map = np.cumsum(kept) - 1
        edges = kept[self.edge_owner]
        edge_map = np.cumsum(edges) - 1
        bonds = np.zeros(len(self.undirected2directed), dtype=bool)
        bonds[self.directed2undirected[edges]] = True
        bond_map = np.cumsum(bonds) - 1
        angles = kept[self.angle_owner]
        bg = self.bond_graph[angles]
        return GraphIndex(
            atom_graph=atom_map[self.atom_graph[edges]],
            images=self.images[edges],
            edge_owner=row_map[self.edge_owner[edges]],
            directed2undirected=bond_map[self.directed2undirected[edges]],
            undirected2directed=edge_map[self.undirected2directed[bonds]],
            bond_graph=np.stack(
                [
                    atom_map[bg[:, 0]],
                    bond_map[bg[:, 1]],
                    edge_map[bg[:, 2]],
                    bond_map[bg[:, 3]],
                    edge_map[bg[:, 4]],
                ],
                axis=1,
            ).reshape(-1, 5),
            angle_owner=row_map[self.angle_owner[angles]],
        )


def graph_index(neighbours: Neighbours, bond_cutoff: float) -> GraphIndex:
    """CHGNet's graph from the pairs within the atom cutoff (``neighbours.within(atom_cutoff)``).

    Parameters
    ----------
    neighbours
        Directed pairs, ordered by structure and centre (as :func:`~aloe.potentials.neighbours.neighbour_list`
        gives them).
    bond_cutoff
        CHGNet's bond-graph cutoff (A).
    """
    i, j, shifts, d = neighbours.first, neighbours.second, neighbours.shifts, neighbours.distances
    n_edges = len(i)
    # A bond's key is its edge read from the smaller atom (or, for an atom's own image, the positive shift).
    sign = np.sign(
        np.sign(shifts[:, 0]) * 9 + np.sign(shifts[:, 1]) * 3 + np.sign(shifts[:, 2])
    )  # lexicographic
    forward = (i < j) | ((i == j) & (sign > 0))
    key = np.where(
        forward[:, None],
        np.column_stack([i, j, shifts]),
        np.column_stack([j, i, -shifts]),
    )
    if n_edges:
        _, first_edge, directed2undirected = np.unique(_packed(key), return_index=True, return_inverse=True)
        directed2undirected = directed2undirected.reshape(-1)
        counts = np.bincount(directed2undirected, minlength=len(first_edge))
        if not np.all(counts == 2):
            raise ValueError("incomplete neighbour list: a pair is missing its reverse")
    else:
        first_edge = np.zeros(0, dtype=np.int64)
        directed2undirected = np.zeros(0, dtype=np.int64)
    undirected2directed = first_edge.astype(np.int64)

    # Angles: edge a (its bond no longer than the cutoff) with every other edge b of the same centre shorter than it.
    bond_length = d[undirected2directed][directed2undirected]
    a_edges = np.flatnonzero(bond_length <= bond_cutoff)
    b_edges = np.flatnonzero(d < bond_cutoff)  # ordered by centre, as the pairs are
    n_atoms_hint = int(max(i.max(initial=-1), j.max(initial=-1))) + 1
    per_centre = np.bincount(i[b_edges], minlength=n_atoms_hint)
    starts = np.concatenate([[0], np.cumsum(per_centre)[:-1]])
    n_pairs = per_centre[i[a_edges]]
    a = np.repeat(a_edges, n_pairs)
    within = np.arange(len(a)) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    b = b_edges[np.repeat(starts[i[a_edges]], n_pairs) + within]
    distinct = a != b
    a, b = a[distinct], b[distinct]
    bond_graph = np.stack([i[a], directed2undirected[a], a, directed2undirected[b], b], axis=1).reshape(-1, 5)
    return GraphIndex(
        atom_graph=np.stack([i, j], axis=1).reshape(-1, 2),
        images=shifts.reshape(-1, 3),
        edge_owner=neighbours.owner,
        directed2undirected=directed2undirected.astype(np.int64),
        undirected2directed=undirected2directed,
        bond_graph=bond_graph.astype(np.int64),
        angle_owner=neighbours.owner[a],
    )


def _packed(key: np.ndarray) -> np.ndarray:
    """Rows ``(a, b, Sx, Sy, Sz)`` as one int64 each (same equalities), or the rows themselves when they do not fit.

    ``np.unique`` of one int64 column is ~10x faster than of rows (``axis=0``).
    """
    atoms = int(key[:, :2].max()) + 1
    span = int(np.abs(key[:, 2:]).max()) * 2 + 1
    if atoms * atoms * span**3 >= 2**62:
        return np.ascontiguousarray(key).view([("", key.dtype)] * key.shape[1]).reshape(-1)
    shifted = key[:, 2:] + span // 2
    return (
        ((key[:, 0] * atoms + key[:, 1]) * span + shifted[:, 0]) * span * span
        + shifted[:, 1] * span
        + shifted[:, 2]
    )


def batched_graph(model: Any, batch: StructureBatch, index: GraphIndex, *, compute_stress: bool) -> Any:
    """CHGNet's ``BatchedGraph`` of ``batch``, built in one pass with the model's own encoders.

    The atom positions and strains are single tensors for the whole batch: ``atom_positions[0]`` has shape
    ``(n_atoms_total, 3)`` and ``strains[0]`` shape ``(m, 3, 3)`` (``requires_grad`` when ``compute_stress``; call
    in grad mode for forces and stress). ``volumes`` are signed, as CHGNet's.

    Parameters
    ----------
    model
        The ``chgnet.model.CHGNet`` module (its device is used).
    batch
        The structures.
    index
        :func:`graph_index` of ``batch``.
    compute_stress
        Give the lattice a strain to differentiate.
    """
    import torch
    from chgnet.model.model import BatchedGraph

    device = next(model.parameters()).device
    f32 = torch.float32
    m = len(batch)
    owner = torch.as_tensor(batch.owner, device=device)
    lattice = torch.as_tensor(batch.cell, dtype=f32, device=device).reshape(m, 3, 3)
    if compute_stress:
        strain = torch.zeros((m, 3, 3), dtype=f32, device=device, requires_grad=True)
        lattice = lattice @ (torch.eye(3, dtype=f32, device=device) + strain)
    else:
        strain = None
    volumes = (lattice[:, 0] * torch.linalg.cross(lattice[:, 1], lattice[:, 2])).sum(dim=1)
    frac = torch.as_tensor(batch.frac_coords, dtype=f32, device=device).reshape(-1, 3)
    positions = (frac.unsqueeze(1) @ lattice[owner]).squeeze(1)

    atom_graph = torch.as_tensor(index.atom_graph, device=device)
    edge_owner = torch.as_tensor(index.edge_owner, device=device)
    images = torch.as_tensor(index.images, dtype=f32, device=device)
    neighbour = positions[atom_graph[:, 1]] + (images.unsqueeze(1) @ lattice[edge_owner]).squeeze(1)
    # The encoder adds image @ lattice to the neighbour; the shift is already in (zero image: adds exactly 0).
    bond_bases_ag, bond_bases_bg, bond_vectors = model.bond_basis_expansion(
        center=positions[atom_graph[:, 0]],
        neighbor=neighbour,
        undirected2directed=torch.as_tensor(index.undirected2directed, device=device),
        image=torch.zeros_like(images),
        lattice=torch.eye(3, dtype=f32, device=device),
    )
    bond_graph = torch.as_tensor(index.bond_graph, device=device)
    if len(bond_graph):
        angle_bases = model.angle_basis_expansion(
            bond_vectors[bond_graph[:, 2]], bond_vectors[bond_graph[:, 4]]
        )
        batched_bond_graph = bond_graph[:, [0, 1, 3]]
    else:  # as BatchedGraph.from_graphs leaves them when no structure has an angle
        angle_bases = torch.tensor([], device=device)
        batched_bond_graph = torch.tensor([], device=device)
    return BatchedGraph(
        atomic_numbers=torch.as_tensor(batch.numbers, dtype=torch.int32, device=device),
        bond_bases_ag=bond_bases_ag,
        bond_bases_bg=bond_bases_bg,
        angle_bases=angle_bases,
        batched_atom_graph=atom_graph,
        batched_bond_graph=batched_bond_graph,
        atom_owners=owner.to(torch.int32),
        directed2undirected=torch.as_tensor(index.directed2undirected, device=device),
        atom_positions=[positions],
        strains=[strain],
        volumes=volumes,
    )


def composition_energy(model: Any, batch: StructureBatch) -> Any:
    """CHGNet's composition-model term of each structure, shape ``(m,)`` (per atom if the model is intensive).

    ``AtomRef.forward`` of the structures' graphs, from the atomic numbers in one pass: element counts (divided by
    the atom count when intensive) through the model's own ``fc`` layer.
    """
    import torch

    comp = model.composition_model
    device = next(model.parameters()).device
    m = len(batch)
    counts = np.zeros((m, comp.max_num_elements), dtype=np.int64)
    np.add.at(counts, (batch.owner, batch.numbers - 1), 1)
    feas = torch.as_tensor(counts, device=device)
    if comp.is_intensive:
        feas = feas / torch.as_tensor(batch.n_atoms, device=device).view(-1, 1)
    return comp._get_energy(feas.float())
