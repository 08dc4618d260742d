"""The candidate space: every (prototype, element combination, occupation), numbered, and built on demand.

Numbering
---------
Prototypes in library order; within a prototype, element combinations in ``itertools.combinations`` order over the
chosen elements (sorted by Z), and within a combination the distinct occupations (as the MP-ALOE reference code
loops). Candidate ``i`` decodes to ``(prototype, combination, occupation)`` arithmetically, so any candidate can be
built without building those before it.

Randomness
----------
Each candidate's random numbers are a pure function of ``(seed, prototype name, universe index)``, where the universe
index numbers the combination among all 89 MP-ALOE elements. A candidate is therefore the same structure whatever
element subset, prototype library, shard or chunking produced it. Uniforms come from counter-based Philox streams
(numpy): each (prototype, stream) has a Philox key derived by ``SeedSequence(seed, spawn_key=(version, prototype key,
stream))``, and a block of universe indices starts at Philox counter ``[0, block, 0, 0]``. The sub-sampling stream
holds one uniform per candidate, the perturbation stream ``3 * n_sites + 6`` (displacements, then the six strains).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import combinations
from math import comb

import numpy as np

from aloe.elements import radius_table, resolve_elements, symbol_to_z, universe
from aloe.errors import AloeError
from aloe.generate.lattice import guess_scale
from aloe.generate.perturb import apply_strains, displace, truncated_normal
from aloe.generate.settings import GenerateSettings
from aloe.progress import progress_bar
from aloe.prototypes.library import PrototypeLibrary
from aloe.prototypes.occupations import distinct_occupations

#: Version of the random-number layout; bump when it changes so old runs are not resumed with new numbers.
STREAM_VERSION = 2
_KEEP_STREAM = 1
_PERTURB_STREAM = 2
KEEP_BLOCK = 4096
PERTURB_BLOCK = 16


def prototype_key(name: str) -> int:
    """Stable 63-bit key of a prototype name (seeds its random streams)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


def lex_rank(combos: np.ndarray, n: int) -> np.ndarray:
    """Rank of each sorted combination in ``itertools.combinations(range(n), k)`` order.

    Parameters
    ----------
    combos
        Shape ``(m, k)``, strictly increasing rows of integers in ``[0, n)``.
    n
        Size of the set.

    Returns
    -------
    numpy.ndarray
        Shape ``(m,)``, int64.

    """
    combos = np.asarray(combos, dtype=np.int64)
    k = combos.shape[1]
    pascal = _pascal(n, k)
    total = comb(n, k)
    acc = np.zeros(len(combos), dtype=np.int64)
    for i in range(k):
        acc += pascal[n - 1 - combos[:, i], k - i]
    return total - 1 - acc


@lru_cache(maxsize=16)
def _pascal(n: int, k: int) -> np.ndarray:
    # Only columns 0..k are needed; wider ones overflow int64 for n = 89.
    return np.array([[comb(a, b) for b in range(k + 1)] for a in range(n + 1)], dtype=np.int64)


@dataclass
class CandidateBatch:
    """Candidates in columnar form (one row per candidate; ragged per-site arrays flattened).

    Attributes
    ----------
    index
        Shape ``(m,)`` candidate numbers in the space.
    prototype
        Shape ``(m,)`` index of the prototype in the library.
    occupation
        Shape ``(m,)`` index of the distinct occupation.
    combination
        Shape ``(m,)`` rank of the element combination among the chosen elements.
    universe_index
        Shape ``(m,)`` number of the candidate among all 89-element combinations of its prototype (keys its seed).
    n_sites
        Shape ``(m,)``.
    cell
        Shape ``(m, 3, 3)``: final lattice vectors (rows, A).
    frac_coords
        Shape ``(sum(n_sites), 3)``: final fractional coordinates, rows grouped by candidate.
    numbers
        Shape ``(sum(n_sites),)``: atomic numbers.
    scale
        Shape ``(m,)``: the guessed lattice scale ``s`` (before strains).
    strain
        Shape ``(m, 6)``: the Voigt strain components applied.

    """

    index: np.ndarray
    prototype: np.ndarray
    occupation: np.ndarray
    combination: np.ndarray
    universe_index: np.ndarray
    n_sites: np.ndarray
    cell: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    scale: np.ndarray
    strain: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def offsets(self) -> np.ndarray:
        """Shape ``(m + 1,)``: row ``r`` owns sites ``offsets[r]:offsets[r + 1]``."""
        return np.concatenate([[0], np.cumsum(self.n_sites)]).astype(np.int64)

    @classmethod
    def concatenate(cls, batches: list[CandidateBatch]) -> CandidateBatch:
        """Join batches row-wise."""
        if not batches:
            return empty_batch()
        fields = cls.__dataclass_fields__
        return cls(**{name: np.concatenate([getattr(b, name) for b in batches]) for name in fields})


def empty_batch() -> CandidateBatch:
    """A batch with no rows."""
    i8 = np.zeros(0, dtype=np.int64)
    return CandidateBatch(
        index=i8,
        prototype=i8.astype(np.int32),
        occupation=i8.astype(np.int16),
        combination=i8,
        universe_index=i8,
        n_sites=i8.astype(np.int16),
        cell=np.zeros((0, 3, 3)),
        frac_coords=np.zeros((0, 3)),
        numbers=i8.astype(np.int16),
        scale=np.zeros(0),
        strain=np.zeros((0, 6)),
    )


class CandidateSpace:
    """The numbered candidate space of a prototype library over an element subset.

    Parameters
    ----------
    library
        Prototypes (their order defines the numbering).
    settings
        Generation settings (elements, seed, occupation tolerances, lattice guess, perturbation, sub-sampling).
    occupations
        Precomputed distinct occupations per prototype name (skips StructureMatcher), e.g. from a run folder.

    """

    def __init__(
        self,
        library: PrototypeLibrary,
        settings: GenerateSettings | None = None,
        occupations: dict[str, list[tuple[int, ...]]] | None = None,
        progress: bool | None = False,
    ) -> None:
        self.settings = settings or GenerateSettings()
        self.library = library
        if len(library) == 0:
            raise AloeError("the prototype library is empty")
        self.elements = resolve_elements(self.settings.elements)
        self.z = np.array([symbol_to_z(s) for s in self.elements], dtype=np.int16)
        univ = universe()
        self._universe_position = np.full(119, -1, dtype=np.int64)
        for pos, symbol in enumerate(univ):
            self._universe_position[symbol_to_z(symbol)] = pos
        self._n_universe = len(univ)
        lat = self.settings.lattice
        self._radius = radius_table(lat.radius_overrides, lat.radius_multipliers)
        self.occupations: list[np.ndarray] = []
        occ = self.settings.occupations
        for proto in progress_bar(
            library, enabled=progress and not occupations, desc="occupations", unit="proto"
        ):
            perms = (occupations or {}).get(proto.name)
            if perms is None:
                perms = distinct_occupations(
                    proto,
                    ltol=occ.ltol,
                    stol=occ.stol,
                    angle_tol=occ.angle_tol,
                    primitive_cell=occ.primitive_cell,
                )
            self.occupations.append(np.asarray(perms, dtype=np.int16).reshape(len(perms), proto.arity))
        n = len(self.elements)
        self.n_occupations = np.array([len(o) for o in self.occupations], dtype=np.int64)
        self.arity = np.array([p.arity for p in library], dtype=np.int64)
        self.n_combinations = np.array([comb(n, int(k)) for k in self.arity], dtype=np.int64)
        self.counts = self.n_occupations * self.n_combinations
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.keep_probability = np.array([self._keep_probability(p.weight) for p in library])
        self.keys = np.array([prototype_key(p.name) for p in library], dtype=np.int64)
        # With every universe element chosen, a candidate's universe index equals its index in the prototype.
        self._universe_is_identity = self.elements == univ

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of candidates before sub-sampling."""
        return int(self.offsets[-1])

    @property
    def expected_kept(self) -> float:
        """Expected number of candidates after sub-sampling."""
        return float(np.sum(self.counts * self.keep_probability))

    def occupation_map(self) -> dict[str, list[list[int]]]:
        """Distinct occupations per prototype name (JSON-friendly)."""
        return {p.name: occ.tolist() for p, occ in zip(self.library, self.occupations, strict=True)}

    def _keep_probability(self, weight: float | None) -> float:
        sub = self.settings.subsampling
        if weight is None or not sub.enabled:
            return 1.0
        return float(min(1.0, sub.scale * weight**sub.exponent))

    # ---- decoding ----------------------------------------------------------------------------------------
    @cached_property
    def _combination_tables(self) -> dict[int, np.ndarray]:
        return {}

    def combination_table(self, k: int) -> np.ndarray:
        """All ``k``-combinations of positions in the chosen element list, shape ``(C(n, k), k)``."""
        tables = self._combination_tables
        if k not in tables:
            n = len(self.elements)
            flat = np.fromiter(combinations(range(n), k), dtype=np.dtype((np.int16, k)), count=comb(n, k))
            tables[k] = flat.reshape(-1, k)
        return tables[k]

    def decode(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate numbers -> ``(prototype, combination rank, occupation)``, each shape ``(m,)``."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.size):
            bad = indices[(indices < 0) | (indices >= self.size)][0]
            raise AloeError(f"candidate index {int(bad)} is outside the space [0, {self.size})")
        proto = np.searchsorted(self.offsets, indices, side="right") - 1
        local = indices - self.offsets[proto]
        n_occ = self.n_occupations[proto]
        return proto, local // n_occ, local % n_occ

    def element_numbers(self, proto: int, combination: np.ndarray) -> np.ndarray:
        """Atomic numbers of each combination (Z order), shape ``(m, arity)``."""
        table = self.combination_table(int(self.arity[proto]))
        return self.z[table[combination]]

    def universe_index(self, proto: int, combination: np.ndarray, occupation: np.ndarray) -> np.ndarray:
        """Number of each candidate among its prototype's candidates over all 89 elements, shape ``(m,)``."""
        zs = self.element_numbers(proto, combination)
        ranks = lex_rank(self._universe_position[zs], self._n_universe)
        return ranks * self.n_occupations[proto] + occupation

    # ---- random streams ----------------------------------------------------------------------------------
    def _block_reader(self, proto: int, stream: int):
        """A function ``block, shape -> uniforms`` reading blocks of one (prototype, stream) Philox stream."""
        seq = np.random.SeedSequence(
            self.settings.seed, spawn_key=(STREAM_VERSION, int(self.keys[proto]), stream)
        )
        key = seq.generate_state(2, np.uint64)
        generator = np.random.Generator(np.random.Philox(key=key))
        buffer = np.zeros(4, dtype=np.uint64)

        def read(block: int, shape: tuple[int, ...]) -> np.ndarray:
            # Jump to the block's counter by setting the documented state (cheaper than a new generator).
            generator.bit_generator.state = {
                "bit_generator": "Philox",
                "state": {"counter": np.array([0, block, 0, 0], dtype=np.uint64), "key": key},
                "buffer": buffer,
                "buffer_pos": 4,
                "has_uint32": 0,
                "uinteger": 0,
            }
            return generator.random(shape)

        return read

    def _gather(self, proto: int, stream: int, uidx: np.ndarray, block_size: int, width: int) -> np.ndarray:
        """Uniforms of the candidates ``uidx`` of prototype ``proto`` from ``stream``, shape ``(m, width)``."""
        read = self._block_reader(proto, stream)
        blocks = uidx // block_size
        order = np.argsort(blocks, kind="stable")
        unique, starts = np.unique(blocks[order], return_index=True)
        bounds = np.append(starts, len(order))
        out = np.empty((len(uidx), width))
        for u, block in enumerate(unique.tolist()):
            table = read(block, (block_size, width))
            rows = order[bounds[u] : bounds[u + 1]]
            out[rows] = table[uidx[rows] - block * block_size]
        return out

    def keep_mask(self, indices: np.ndarray) -> np.ndarray:
        """Whether each candidate survives sub-sampling, shape ``(m,)`` bool (indices sorted or not)."""
        indices = np.asarray(indices, dtype=np.int64)
        keep = np.ones(len(indices), dtype=bool)
        if not len(indices):
            return keep
        proto, combo, occ = self.decode(indices)
        for p in np.unique(proto).tolist():
            prob = self.keep_probability[p]
            if prob >= 1.0:
                continue
            rows = proto == p
            uidx = self.universe_index(p, combo[rows], occ[rows])
            keep[rows] = self._gather(p, _KEEP_STREAM, uidx, KEEP_BLOCK, 1)[:, 0] < prob
        return keep

    def kept_in_range(self, start: int, stop: int) -> np.ndarray:
        """Candidate numbers in ``[start, stop)`` that survive sub-sampling (sorted).

        Works prototype by prototype on contiguous ranges, so it avoids the general :meth:`decode`; with all 89
        elements chosen the universe index is the local index and the uniforms are read block by block.
        """
        if self.all_kept(start, stop):
            return np.arange(start, stop, dtype=np.int64)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop - 1, side="right")) - 1
        parts = []
        for p in range(first, last + 1):
            a, b = max(start, int(self.offsets[p])), min(stop, int(self.offsets[p + 1]))
            if a >= b:
                continue
            prob = self.keep_probability[p]
            if prob >= 1.0:
                parts.append(np.arange(a, b, dtype=np.int64))
                continue
            local_a, local_b = a - int(self.offsets[p]), b - int(self.offsets[p])
            if self._universe_is_identity:
                uniforms = self._contiguous_uniforms(p, _KEEP_STREAM, local_a, local_b, KEEP_BLOCK)
            else:
                local = np.arange(local_a, local_b, dtype=np.int64)
                n_occ = self.n_occupations[p]
                uidx = self.universe_index(p, local // n_occ, local % n_occ)
                uniforms = self._gather(p, _KEEP_STREAM, uidx, KEEP_BLOCK, 1)[:, 0]
            parts.append(a + np.flatnonzero(uniforms < prob))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _contiguous_uniforms(
        self, proto: int, stream: int, start: int, stop: int, block_size: int
    ) -> np.ndarray:
        """One uniform per universe index in ``[start, stop)`` of ``stream``, shape ``(stop - start,)``."""
        read = self._block_reader(proto, stream)
        b0, b1 = start // block_size, (stop - 1) // block_size
        tables = [read(block, (block_size,)) for block in range(b0, b1 + 1)]
        return np.concatenate(tables)[start - b0 * block_size : stop - b0 * block_size]

    def all_kept(self, start: int, stop: int) -> bool:
        """Whether every candidate in ``[start, stop)`` is kept for sure (no sub-sampled prototype there)."""
        if stop <= start:
            return True
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop - 1, side="right")) - 1
        return bool(np.all(self.keep_probability[first : last + 1] >= 1.0))

    # ---- building ----------------------------------------------------------------------------------------
    def build(self, indices: np.ndarray) -> CandidateBatch:
        """Build the candidates with these numbers (any order; output in the given order).

        Returns
        -------
        CandidateBatch
            The substituted, scaled and perturbed structures.

        """
        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            return empty_batch()
        order = np.argsort(indices, kind="stable")
        proto, combo, occ = self.decode(indices[order])
        parts = []
        for p in np.unique(proto).tolist():
            rows = proto == p
            parts.append(self._build_group(p, indices[order][rows], combo[rows], occ[rows]))
        batch = CandidateBatch.concatenate(parts)
        if np.any(np.diff(order) < 0):  # restore the caller's order
            batch = _take(batch, np.argsort(order, kind="stable"))
        return batch

    def _build_group(
        self, p: int, indices: np.ndarray, combination: np.ndarray, occupation: np.ndarray
    ) -> CandidateBatch:
        proto = self.library[p]
        settings = self.settings
        m, n = len(indices), proto.n_sites
        zs = self.element_numbers(p, combination)  # (m, arity), Z order
        perms = self.occupations[p][occupation]  # (m, arity)
        site_slot = perms[:, proto.placeholder_index]  # (m, n): which combination member sits on each site
        numbers = np.take_along_axis(zs, site_slot.astype(np.int64), axis=1)  # (m, n)

        lat = settings.lattice
        if lat.enabled:
            radii = self._radius[numbers]
            if np.isnan(radii).any():
                bad = int(numbers[np.isnan(radii)][0])
                raise AloeError(f"no radius for element Z={bad}; give one in lattice.radius_overrides")
            scale = guess_scale(proto.pair_distances(lat.neighbor_cutoff), radii, lat.factor)
        else:
            scale = np.ones(m)
        cells = scale[:, None, None] * proto.lattice[None, :, :]
        frac = np.broadcast_to(proto.frac_coords, (m, n, 3)).copy()

        uidx = self.universe_index(p, combination, occupation)
        pert = settings.perturbation
        strain = np.zeros((m, 6))
        if pert.enabled:
            uniforms = self._gather(p, _PERTURB_STREAM, uidx, PERTURB_BLOCK, 3 * n + 6)
            sigma = pert.displacement_sigma / (n if pert.displacement_per_atom else 1)
            disp = truncated_normal(uniforms[:, : 3 * n], sigma, pert.displacement_truncation).reshape(
                m, n, 3
            )
            frac = displace(frac, disp, wrap=pert.wrap)
            strain = truncated_normal(uniforms[:, 3 * n :], pert.strain_sigma, pert.strain_truncation)
            cells = apply_strains(cells, strain)
        return CandidateBatch(
            index=indices,
            prototype=np.full(m, p, dtype=np.int32),
            occupation=occupation.astype(np.int16),
            combination=combination.astype(np.int64),
            universe_index=uidx,
            n_sites=np.full(m, n, dtype=np.int16),
            cell=cells,
            frac_coords=frac.reshape(m * n, 3),
            numbers=numbers.reshape(-1).astype(np.int16),
            scale=scale,
            strain=strain,
        )


def _take(batch: CandidateBatch, rows: np.ndarray) -> CandidateBatch:
    offsets = batch.offsets
    site_rows = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows]) if len(rows) else rows
    return CandidateBatch(
        index=batch.index[rows],
        prototype=batch.prototype[rows],
        occupation=batch.occupation[rows],
        combination=batch.combination[rows],
        universe_index=batch.universe_index[rows],
        n_sites=batch.n_sites[rows],
        cell=batch.cell[rows],
        frac_coords=batch.frac_coords[site_rows],
        numbers=batch.numbers[site_rows],
        scale=batch.scale[rows],
        strain=batch.strain[rows],
    )
