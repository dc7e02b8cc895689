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
