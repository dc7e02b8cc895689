"""The npz structure-set format: exact round trips, order, subsets."""

import io

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from aiida_hpcai.models import structure_io
from tests.samples import make_structures


def test_round_trip_is_exact_and_keeps_order():
    arrays = structure_io.from_pymatgen(
        make_structures(), ids=['nacl', 'bto', 'si'], labels={'energy': [1.5, np.nan, -3.25]}
    )
    buffer = io.BytesIO()
    structure_io.write_npz(arrays, buffer)
    buffer.seek(0)
    loaded = structure_io.read_npz(buffer)
    assert loaded.ids.tolist() == ['nacl', 'bto', 'si']
    for name in ('numbers', 'positions', 'cells', 'pbc', 'offsets'):
        assert np.array_equal(getattr(loaded, name), getattr(arrays, name)), name
    np.testing.assert_array_equal(loaded.labels['energy'], [1.5, np.nan, -3.25])
    for original, back in zip(make_structures(), loaded.iter_pymatgen()):
        assert original.species == back.species
        np.testing.assert_allclose(back.frac_coords, original.frac_coords, atol=1e-12)


def test_subset_and_formulae():
    arrays = structure_io.from_pymatgen(make_structures(), ids=['a', 'b', 'c'], labels={'y': [1.0, 2.0, 3.0]})
    picked = arrays.subset([2, 0])
    assert picked.ids.tolist() == ['c', 'a']
    assert picked.labels['y'].tolist() == [3.0, 1.0]
    assert picked.formulae() == ['Si2', 'ClNa']
    assert arrays.elements() == ['Ba', 'Cl', 'Na', 'O', 'Si', 'Ti']
    assert arrays.formulae_digest() != picked.formulae_digest()


def test_ase_atoms_accepted():
    from ase.build import bulk

    arrays = structure_io.from_pymatgen([bulk('Cu', 'fcc', a=3.6), bulk('Si')])
    assert arrays.natoms.tolist() == [1, 2]
    np.testing.assert_allclose(arrays.cells[0], bulk('Cu', 'fcc', a=3.6).get_cell())


def test_inconsistent_arrays_rejected():
    with pytest.raises(ValueError, match='offsets'):
        structure_io.StructureArrays(
            numbers=[1, 1],
            positions=np.zeros((2, 3)),
            cells=np.eye(3)[None],
            pbc=[[True] * 3],
            offsets=[0, 1],
            ids=['x'],
        )


def test_disordered_structure_refused():
    disordered = Structure(Lattice.cubic(4), [{'Fe': 0.5, 'Ni': 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match='disordered'):
        structure_io.from_pymatgen([disordered])


def test_an_unknown_element_is_named_not_read_as_a_random_atomic_number():
    """pymatgen reads a symbol it does not know ('Xx') as a dummy species whose Z is the hash of the symbol, which
    an int16 cast once wrapped into a different random 'element' on every run (Z=-19594)."""
    import warnings

    from pymatgen.io.cif import CifParser

    from tests.samples import NACL, cif_of

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        (structure,) = CifParser.from_str(cif_of(NACL).replace('Cl', 'Xx')).parse_structures(primitive=False)
    with pytest.raises(structure_io.InvalidStructure, match="structure 'x.cif': Xx not in the periodic table"):
        structure_io.from_pymatgen([structure], ids=['x.cif'])
    skipped = []
    arrays = structure_io.from_pymatgen([structure, NACL], ids=['x.cif', 'nacl'], skipped=skipped)
    assert arrays.ids.tolist() == ['nacl']
    assert skipped == [structure_io.SkippedRow('x.cif', 'unknown element', 'Xx not in the periodic table')]
    with pytest.raises(ValueError, match='not elements'):
        structure_io.StructureArrays(
            numbers=[hash('Xx') | 1 << 40],
            positions=np.zeros((1, 3)),
            cells=np.eye(3)[None] * 4,
            pbc=[[True] * 3],
            offsets=[0, 1],
            ids=['x'],
        )


def test_builder_keeps_the_good_and_names_the_rest():
    builder = structure_io.StructureBuilder(['energy'])
    cell = np.eye(3) * 4.0
    assert builder.add('a', [11, 17], [[0, 0, 0], [2, 2, 2]], cell, labels={'energy': 1.0})
    assert not builder.add('a', [11, 17], [[0, 0, 0], [2, 2, 2]], cell, labels={'energy': 2.0})
    assert not builder.add('b', [11, 17], [[0, 0, 0], [0.1, 0, 0]], cell, labels={'energy': 1.0})
    assert not builder.add('c', [11, 17], [[0, 0, 0], [np.nan, 0, 0]], cell, labels={'energy': 1.0})
    assert not builder.add('d', [11, 0], [[0, 0, 0], [2, 2, 2]], cell, labels={'energy': 1.0})
    assert not builder.add('e', [11, 17], [[0, 0, 0], [2, 2, 2]], np.eye(3) * 0.5, labels={'energy': 1.0})
    assert not builder.add('f', [11, 17], [[0, 0, 0], [2, 2, 2]], cell, labels={})
    assert builder.add('g', [12, 8], [[0, 0, 0], [2, 2, 2]], cell, labels={'energy': -1.0})
    arrays = builder.arrays()
    assert arrays.ids.tolist() == ['a', 'g'] and arrays.labels['energy'].tolist() == [1.0, -1.0]
    assert [(row.id, row.reason) for row in builder.skipped] == [
        ('a', 'duplicate id'),
        ('b', 'overlapping atoms'),
        ('c', 'non-finite values'),
        ('d', 'unknown element'),
        ('e', 'collapsed cell'),
        ('f', 'missing label'),
    ]
    assert "'a' is already taken" in builder.skipped[0].detail


def test_shortest_distance_matches_brute_force():
    """Pairs and periodic images against every image within two cells, on skewed cells."""
    rng = np.random.default_rng(3)
    shifts = np.array([[i, j, k] for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)], dtype=float)
    for _ in range(20):
        cell = np.eye(3) * rng.uniform(3, 6) + rng.normal(scale=0.8, size=(3, 3))
        positions = rng.random((6, 3)) @ cell
        vectors = positions[None, :, None, :] + (shifts @ cell)[None, None, :, :] - positions[:, None, None, :]
        distances = np.linalg.norm(vectors, axis=-1)
        distances[np.arange(6), np.arange(6), len(shifts) // 2] = np.inf  # an atom and itself
        got = structure_io._shortest_periodic_distance(positions, cell)
        assert got == pytest.approx(distances.min(), abs=1e-9)
