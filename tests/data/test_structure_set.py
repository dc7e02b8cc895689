"""StructureSet on a real profile: exact round trip, order, labels, conversions, skipped rows."""

import numpy as np
import pytest
from aiida import orm

from aiida_hpcai.data.structure_set import StructureSet
from tests.samples import make_structures


@pytest.fixture
def stored_set(aiida_profile):
    labels = {'formation_energy_per_atom': [-2.1, np.nan, 0.0]}
    return StructureSet.from_pymatgen(make_structures(), ids=['nacl', 'bto', 'si'], labels=labels).store()


def test_round_trip_exact_and_ordered(stored_set):
    original = StructureSet.from_pymatgen(make_structures()).arrays
    loaded = orm.load_node(stored_set.pk)
    assert isinstance(loaded, StructureSet)
    assert loaded.ids == ['nacl', 'bto', 'si']
    for name in ('numbers', 'positions', 'cells', 'offsets'):
        assert np.array_equal(getattr(loaded.arrays, name), getattr(original, name)), name
    np.testing.assert_array_equal(loaded.get_label('formation_energy_per_atom'), [-2.1, np.nan, 0.0])
    assert [s.composition.reduced_formula for s in loaded] == ['NaCl', 'BaTiO3', 'Si']


def test_attributes_are_queryable(stored_set):
    query = orm.QueryBuilder().append(
        StructureSet, filters={'attributes.count': 3, 'attributes.elements': {'contains': ['Ba']}}
    )
    assert stored_set.uuid in [node.uuid for node in query.all(flat=True)]
    assert (
        not orm.QueryBuilder()
        .append(
            StructureSet,
            filters={'attributes.count': 3, 'id': stored_set.pk, 'attributes.elements': {'contains': ['Fe']}},
        )
        .count()
    )
    assert stored_set.base.attributes.get('natoms_total') == 9
    assert stored_set.label_names == ['formation_energy_per_atom']
    assert len(stored_set.base.attributes.get('formulae_digest')) == 64


def test_structuredata_both_ways(stored_set):
    node = stored_set.get_structuredata(1)
    assert node.get_formula() == 'BaO3Ti'
    np.testing.assert_allclose(node.cell, stored_set.arrays.cells[1])
    again = StructureSet.from_structuredata([node.store(), stored_set.get_structuredata(0)])
    assert again.ids[0] == node.uuid
    np.testing.assert_allclose(again.arrays.positions[:5], stored_set.arrays.positions[2:7])


def test_subset_keeps_labels(stored_set):
    picked = stored_set.subset([2, 0]).store()
    assert picked.ids == ['si', 'nacl']
    np.testing.assert_array_equal(picked.get_label('formation_energy_per_atom'), [0.0, -2.1])
    with pytest.raises(KeyError, match='no label'):
        picked.get_label('band_gap')


def test_from_file_records_skipped(aiida_profile, tmp_path):
    from tests.samples import NACL, cif_of

    (tmp_path / 'good.cif').write_text(cif_of(NACL))
    (tmp_path / 'broken.cif').write_text('garbage')
    node = StructureSet.from_file(tmp_path).store()
    assert node.count == 1
    assert node.base.attributes.get('skipped_reasons') == {'unparsable structure': 1}
    assert node.get_skipped()[0]['id'] == 'broken'


def test_write_extxyz_and_npz(stored_set, tmp_path):
    from aiida_hpcai.models.datasets import load_dataset

    stored_set.write(tmp_path / 'out.npz')
    stored_set.write(tmp_path / 'out.extxyz')
    npz = load_dataset(tmp_path / 'out.npz').arrays
    xyz = load_dataset(tmp_path / 'out.extxyz', targets=[]).arrays
    assert npz.ids.tolist() == xyz.ids.tolist() == stored_set.ids
    np.testing.assert_allclose(xyz.positions, npz.positions, atol=1e-7)


def test_every_constructor_validates_and_records_the_refused(aiida_profile):
    """pymatgen, ASE and StructureData: a bad structure is left out with its id and reason, the others are kept."""
    from ase import Atoms
    from ase.build import bulk
    from pymatgen.core import Lattice, Structure

    overlapping = Structure(Lattice.cubic(5.0), ['Na', 'Cl'], [[0, 0, 0], [0.01, 0, 0]])
    node = StructureSet.from_pymatgen(make_structures() + [overlapping], ids=['nacl', 'bto', 'si', 'bad']).store()
    assert node.ids == ['nacl', 'bto', 'si']
    assert node.get_skipped() == [
        {'id': 'bad', 'reason': 'overlapping atoms', 'detail': node.get_skipped()[0]['detail']}
    ]
    assert node.base.attributes.get('skipped_reasons') == {'overlapping atoms': 1}
    assert node.label == '3 structures: NaCl, BaTiO3, Si'

    collapsed = Atoms('Cu2', positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 1.0, pbc=True)
    from_ase = StructureSet.from_ase([bulk('Cu'), collapsed], ids=['cu', 'collapsed'])
    assert from_ase.ids == ['cu'] and from_ase.get_skipped()[0]['reason'] == 'collapsed cell'

    nodes = [orm.StructureData(ase=bulk('Si')), orm.StructureData(ase=collapsed)]
    from_nodes = StructureSet.from_structuredata(nodes, ids=['si', 'collapsed'])
    assert from_nodes.ids == ['si'] and from_nodes.label == '1 structure: Si'
    assert from_nodes.get_skipped()[0]['id'] == 'collapsed'

    repeated = StructureSet.from_pymatgen(make_structures()[:2], ids=['x', 'x'])
    assert repeated.ids == ['x'] and repeated.get_skipped()[0]['reason'] == 'duplicate id'


def test_from_files_names_each_file_and_frame(aiida_profile, tmp_path):
    from tests.samples import NACL, cif_of

    (tmp_path / 'good.cif').write_text(cif_of(NACL))
    (tmp_path / 'xx.cif').write_text(cif_of(NACL).replace('Cl', 'Xx'))
    node = StructureSet.from_files([tmp_path / 'good.cif', tmp_path / 'xx.cif']).store()
    assert node.ids == ['good.cif']
    assert node.get_skipped() == [
        {'id': 'xx.cif', 'reason': 'unknown element', 'detail': 'Xx not in the periodic table'}
    ]
