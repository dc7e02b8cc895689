"""Periodic crystal graphs: k nearest neighbours over periodic images, and batching.

Neighbour rule (chosen so that the graph depends on the crystal, not on how it is written down):
every atom ``i`` is joined to its ``k`` nearest neighbours ``j`` among all periodic images, and
also to **every further neighbour tied with the k-th within** ``tie_tolerance`` (default 1e-4 A).
A plain "first k after a stable sort" would pick among tied neighbours by their order in the
file, so permuting the atoms or building a supercell could change the graph (and the
prediction); including the whole tied shell cannot. The tolerance is looser than float noise
on purpose: CIF files round fractional coordinates to ~1e-5 A, which splits symmetric shells.
As a result an atom can have more than ``k`` neighbours (bcc: 8 + 6 = 14 for k = 12).

The search radius starts from the volume per atom and grows by 1.5x until every atom has ``k``
neighbours strictly inside it (with room for the tied shell), so the result does not depend on a
cutoff. The pairs within the radius come from pymatgen's compiled cell-list search
(``find_points_in_spheres``, no torch-cluster); choosing the k nearest is vectorized numpy. For
the <= 20-atom cells of Materials Project a graph takes about 0.16 ms (``surrogate_step_time.py``).

Edges point from a neighbour (``source``, ``j``) to the centre atom (``target``, ``i``); the
edge vector is ``r_ij = r_j + T - r_i`` with ``T`` a lattice translation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from pymatgen.optimization.neighbors import find_points_in_spheres

DEFAULT_NUM_NEIGHBOURS = 12
DEFAULT_TIE_TOLERANCE = 1e-4


class GraphError(ValueError):
    """A structure for which no neighbour graph can be built (NaN coordinates, lone atom, ...)."""


@dataclasses.dataclass
class CrystalGraph:
    """The neighbour graph of one structure (numpy arrays)."""

    numbers: np.ndarray  # (n_atoms,) int64
    source: np.ndarray  # (n_edges,) int64, neighbour j
    target: np.ndarray  # (n_edges,) int64, centre i
    vectors: np.ndarray  # (n_edges, 3) float64, r_j + T - r_i
    distances: np.ndarray  # (n_edges,) float64

    @property
    def num_atoms(self) -> int:
        return len(self.numbers)

    @property
    def num_edges(self) -> int:
        return len(self.source)


def neighbour_graph(
    numbers,
    positions,
    cell,
    pbc=(True, True, True),
    num_neighbours: int = DEFAULT_NUM_NEIGHBOURS,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> CrystalGraph:
    """Build the k-nearest-neighbour graph of one structure (see the module docstring)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    n_atoms = len(numbers)
    if n_atoms == 0:
        raise GraphError('structure has no atoms')
    if not (np.isfinite(positions).all() and np.isfinite(cell).all()):
        raise GraphError('non-finite positions or cell')

    k = num_neighbours
    if pbc.any():
        volume = abs(np.linalg.det(cell))
        if volume < 1e-6:
            raise GraphError('degenerate (zero-volume) cell')
        # Wrap into the cell along periodic directions: the set of vectors r_j + T - r_i over all
        # T does not change, and the search below then needs the fewest images.
        fractional = np.linalg.solve(cell.T, positions.T).T
        fractional[:, pbc] -= np.floor(fractional[:, pbc])
        positions = fractional @ cell
        # the radius of a sphere holding about 1.5^3 k atoms at the average density
        radius = 1.5 * (3.0 * k * volume / n_atoms / (4.0 * np.pi)) ** (1.0 / 3.0)
    else:
        k = min(k, n_atoms - 1)
        if k < 1:
            raise GraphError('a single atom without periodic images has no neighbours')
        cell = np.eye(3)  # only used for fractional coordinates when nothing is periodic
        radius = float(np.linalg.norm(np.ptp(positions, axis=0))) + 1.0  # every other atom
    positions = np.ascontiguousarray(positions)

    while True:
        found = _neighbours_within(positions, cell, pbc, radius, k, tie_tolerance)
        if found is not None:
            break
        radius *= 1.5
        if radius > 1e3:
            raise GraphError('could not find enough neighbours within 1000 A')
    centre, neighbour, images, distances = found
    vectors = positions[neighbour] + images @ cell - positions[centre]
    return CrystalGraph(numbers=numbers, source=neighbour, target=centre, vectors=vectors, distances=distances)


def _neighbours_within(positions, cell, pbc, radius, k, tie_tolerance):
    """Every atom's k nearest neighbours plus their tied shell, found among all pairs closer than
    ``radius``; None if the radius was too small for one of the atoms. Edges are ordered by
    centre, then distance (deterministic; the model does not depend on it)."""
    centre, neighbour, images, distances = find_points_in_spheres(
        positions, positions, float(radius), pbc.astype(np.int64), cell, tol=1e-8
    )
    centre, neighbour = centre.astype(np.int64), neighbour.astype(np.int64)
    not_self = (centre != neighbour) | np.any(images != 0, axis=1)
    order = np.lexsort((distances[not_self], centre[not_self]))
    centre, neighbour = centre[not_self][order], neighbour[not_self][order]
    images, distances = images[not_self][order], distances[not_self][order]
    counts = np.bincount(centre, minlength=len(positions))
    if counts.min() < k:
        return None
    kth = distances[np.cumsum(counts) - counts + k - 1]
    # the whole tied shell must lie strictly inside the search sphere
    if not np.all(kth + 2 * tie_tolerance < radius):
        return None
    keep = distances <= (kth + tie_tolerance)[centre]
    return centre[keep], neighbour[keep], images[keep], distances[keep]


def graphs_from_arrays(
    arrays,
    indices: Sequence[int] | None = None,
    num_neighbours: int = DEFAULT_NUM_NEIGHBOURS,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    errors: str = 'raise',
    workers: int = 0,
):
    """Graphs of the structures of a :class:`~aiida_hpcai.models.structure_io.StructureArrays`.

    With ``errors='collect'`` a structure that fails gives ``None`` in the list and its reason
    in the second return value (a dict index -> message); with ``'raise'`` the GraphError
    propagates. ``workers > 1`` builds them in that many processes (large datasets).
    """
    indices = list(range(len(arrays)) if indices is None else indices)
    if workers > 1 and len(indices) > 1000:
        import multiprocessing

        chunks = [indices[start : start + 500] for start in range(0, len(indices), 500)]
        context = multiprocessing.get_context('fork')
        with context.Pool(workers, initializer=_set_worker_arrays, initargs=(arrays,)) as pool:
            parts = pool.starmap(_worker_graphs, [(chunk, num_neighbours, tie_tolerance, errors) for chunk in chunks])
        graphs = [graph for part in parts for graph in part[0]]
        failures = {key: value for part in parts for key, value in part[1].items()}
        return graphs, failures
    graphs, failures = [], {}
    for index in indices:
        numbers, positions, cell, pbc = arrays.atoms_of(int(index))
        try:
            graphs.append(neighbour_graph(numbers, positions, cell, pbc, num_neighbours, tie_tolerance))
        except GraphError as exc:
            if errors == 'raise':
                raise
            graphs.append(None)
            failures[int(index)] = str(exc)
    return graphs, failures


_WORKER_ARRAYS = None


def _set_worker_arrays(arrays) -> None:
    global _WORKER_ARRAYS
    _WORKER_ARRAYS = arrays


def _worker_graphs(indices, num_neighbours, tie_tolerance, errors):
    return graphs_from_arrays(_WORKER_ARRAYS, indices, num_neighbours, tie_tolerance, errors)


@dataclasses.dataclass
class GraphBatch:
    """Several graphs concatenated into one (torch tensors); ``batch`` maps atoms to graphs."""

    numbers: torch.Tensor  # (n_atoms,) long
    source: torch.Tensor  # (n_edges,) long, global atom index
    target: torch.Tensor  # (n_edges,) long
    vectors: torch.Tensor  # (n_edges, 3)
    batch: torch.Tensor  # (n_atoms,) long
    num_graphs: int

    def to(self, device=None, dtype=None) -> GraphBatch:
        return GraphBatch(
            numbers=self.numbers.to(device),
            source=self.source.to(device),
            target=self.target.to(device),
            vectors=self.vectors.to(device=device, dtype=dtype),
            batch=self.batch.to(device),
            num_graphs=self.num_graphs,
        )


def collate(graphs: Sequence[CrystalGraph], dtype=torch.float32) -> GraphBatch:
    """Concatenate graphs, shifting atom indices; the order of graphs is kept."""
    sizes = np.array([g.num_atoms for g in graphs], dtype=np.int64)
    shifts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    edge_counts = np.array([g.num_edges for g in graphs], dtype=np.int64)
    edge_shift = np.repeat(shifts, edge_counts)
    return GraphBatch(
        numbers=torch.from_numpy(np.concatenate([g.numbers for g in graphs])),
        source=torch.from_numpy(np.concatenate([g.source for g in graphs]) + edge_shift),
        target=torch.from_numpy(np.concatenate([g.target for g in graphs]) + edge_shift),
        vectors=torch.from_numpy(np.concatenate([g.vectors for g in graphs])).to(dtype),
        batch=torch.from_numpy(np.repeat(np.arange(len(graphs), dtype=np.int64), sizes)),
        num_graphs=len(graphs),
    )
