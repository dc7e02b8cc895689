"""Periodic k-nearest-neighbour graphs: images, ties, invariances, batching."""

import numpy as np
import pytest
import torch

from aiida_hpcai.models.graph import GraphError, collate, neighbour_graph

TRICLINIC = np.array([[4.1, 0.2, 0.1], [0.3, 5.0, 0.2], [0.1, 0.4, 6.2]])


def _random_crystal(n_atoms=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 30, n_atoms), rng.random((n_atoms, 3)) @ TRICLINIC, TRICLINIC


def _brute_force_shells(positions, cell, k, tolerance=1e-4, n_images=4):
    """Sorted neighbour distances of every atom from a large explicit block of images."""
    steps = np.arange(-n_images, n_images + 1)
    translations = np.stack(np.meshgrid(steps, steps, steps, indexing='ij'), -1).reshape(-1, 3) @ cell
    shells = []
    for centre in positions:
        distances = np.linalg.norm(positions[None] + translations[:, None] - centre, axis=-1).ravel()
        distances = np.sort(distances[distances > 1e-9])
        shells.append(distances[distances <= distances[k - 1] + tolerance])
    return shells


def _per_atom_distances(graph):
    return [np.sort(graph.distances[graph.target == atom]) for atom in range(graph.num_atoms)]


def test_simple_cubic_polonium_images():
    a = 3.35
    graph = neighbour_graph([84], [[0.0, 0.0, 0.0]], np.eye(3) * a, num_neighbours=6)
    assert graph.num_edges == 6
    np.testing.assert_allclose(graph.distances, a)
    # the six edge vectors are +-a along each axis: all periodic images of the one atom
    np.testing.assert_allclose(np.sort(graph.vectors, axis=0).sum(axis=0), 0.0, atol=1e-12)
    assert sorted(map(tuple, np.round(graph.vectors / a).astype(int))) == sorted(
        [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    )


def test_tied_shell_is_included_whole():
    # k = 12 cuts the second shell of simple cubic (12 at a*sqrt(2)) after 6: all 12 are kept
    graph = neighbour_graph([84], [[0.0, 0.0, 0.0]], np.eye(3) * 3.35, num_neighbours=7)
    assert graph.num_edges == 18
    # bcc: 8 + 6 neighbours for k = 12
    bcc = neighbour_graph([26, 26], [[0, 0, 0], [1.435] * 3], np.eye(3) * 2.87)
    assert np.bincount(bcc.target).tolist() == [14, 14]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_brute_force_and_has_k_neighbours(seed):
    numbers, positions, cell = _random_crystal(5, seed)
    graph = neighbour_graph(numbers, positions, cell, num_neighbours=12)
    assert np.all(np.bincount(graph.target, minlength=5) >= 12)
    for mine, reference in zip(_per_atom_distances(graph), _brute_force_shells(positions, cell, 12)):
        np.testing.assert_allclose(mine, reference, atol=1e-9)


def test_edge_vectors_are_lattice_images():
    numbers, positions, cell = _random_crystal(3, 5)
    graph = neighbour_graph(numbers, positions, cell)
    np.testing.assert_allclose(np.linalg.norm(graph.vectors, axis=1), graph.distances)
    shift = graph.vectors - (positions[graph.source] - positions[graph.target])
    fractional = np.linalg.solve(cell.T, shift.T).T
    np.testing.assert_allclose(fractional, np.round(fractional), atol=1e-9)


def test_supercell_and_permutation_keep_the_distance_multiset():
    numbers, positions, cell = _random_crystal(4, 3)
    primitive = neighbour_graph(numbers, positions, cell)
    for repeats in ([2, 1, 1], [1, 2, 3]):
        shifts = np.stack(np.meshgrid(*[np.arange(r) for r in repeats], indexing='ij'), -1).reshape(-1, 3) @ cell
        super_positions = (positions[None] + shifts[:, None]).reshape(-1, 3)
        super_cell = cell * np.asarray(repeats)[:, None]
        supercell = neighbour_graph(np.tile(numbers, len(shifts)), super_positions, super_cell)
        assert supercell.num_edges == primitive.num_edges * len(shifts)
        np.testing.assert_allclose(
            np.sort(supercell.distances), np.sort(np.tile(primitive.distances, len(shifts))), atol=1e-9
        )
    order = np.array([2, 0, 3, 1])
    permuted = neighbour_graph(numbers[order], positions[order] + 7.3, cell)
    for atom, original in enumerate(order):
        np.testing.assert_allclose(_per_atom_distances(permuted)[atom], _per_atom_distances(primitive)[original])


def test_molecule_without_periodicity_uses_all_other_atoms():
    positions = np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    graph = neighbour_graph([8, 1, 1], positions, np.zeros((3, 3)), pbc=[False] * 3)
    assert graph.num_edges == 6


@pytest.mark.parametrize(
    'numbers, positions, cell, pbc',
    [
        ([1], [[np.nan, 0, 0]], np.eye(3) * 3, [True] * 3),
        ([1], [[0, 0, 0]], np.zeros((3, 3)), [False] * 3),
        ([1], [[0, 0, 0]], np.zeros((3, 3)), [True] * 3),
    ],
)
def test_impossible_graphs_raise(numbers, positions, cell, pbc):
    with pytest.raises(GraphError):
        neighbour_graph(numbers, positions, cell, pbc)


def test_collate_offsets_indices():
    first = neighbour_graph([84], [[0, 0, 0]], np.eye(3) * 3.35, num_neighbours=6)
    second = neighbour_graph([26, 26], [[0, 0, 0], [1.435] * 3], np.eye(3) * 2.87)
    batch = collate([first, second])
    assert batch.num_graphs == 2
    assert batch.batch.tolist() == [0, 1, 1]
    assert batch.source[:6].tolist() == [0] * 6
    assert set(batch.source[6:].tolist()) == {1, 2} and set(batch.target[6:].tolist()) == {1, 2}
    assert batch.vectors.dtype == torch.float32
