"""``hpcai.screen`` on a real profile: outputs, provenance of the known structures, fingerprint look-ups."""

import pytest
from aiida import orm
from aiida.plugins import CalculationFactory
from pymatgen.core import Lattice, Structure

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.screening import filters
from aiida_hpcai.screening.calcfunctions import (
    FINGERPRINT_EXTRA,
    find_known_structures,
    screen_structure_set,
    set_fingerprint,
)


def rock_salt(a, species):
    return Structure.from_spacegroup('Fm-3m', Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def batch():
    lif = rock_salt(4.03, ('Li', 'F'))
    misplaced = rock_salt(4.03, ('Li', 'F'))
    misplaced.replace(0, 'F')
    # Two extra atoms 0.8 Å from their twins: a StructureSet refuses atoms closer than 0.5 Å on import,
    # so the screening's own min_distance is set above that below.
    stacked = lif.get_primitive_structure()
    for site in list(stacked):
        stacked.append(site.specie, site.coords + [0.8, 0, 0], coords_are_cartesian=True)
    rbbr = rock_salt(6.89, ('Rb', 'Br'))
    structures = [lif, misplaced, stacked, lif.get_primitive_structure() * (1, 1, 2), rbbr]
    ids = ['LiF#0', 'Li3F5#0', 'LiF#1', 'LiF#2', 'RbBr#0']
    return StructureSet.from_pymatgen(structures, ids=ids, labels={'score': [0.0, 1.0, 2.0, 3.0, 4.0]})


def test_entry_point_is_the_calcfunction(aiida_profile):
    from aiida_hpcai.screening.calcfunctions import screen_structures

    assert CalculationFactory('hpcai.screen') is screen_structures


def test_screen_a_batch_against_the_profile(aiida_profile):
    # A relaxed RbBr already in the profile (a 2% smaller cell, primitive): the batch's RbBr duplicates it.
    known = orm.StructureData(pymatgen=rock_salt(6.75, ('Rb', 'Br')).get_primitive_structure()).store()
    fingerprint = set_fingerprint(known)
    assert fingerprint == {'reduced_formula': 'RbBr', 'space_group': 225, 'volume_per_atom': pytest.approx(6.75**3 / 8)}
    assert known.base.extras.get(FINGERPRINT_EXTRA)['space_group'] == 225
    structures = batch()
    assert [node.pk for node in find_known_structures(structures, 0.2)] == [known.pk]
    assert find_known_structures(structures, 0.01) == []

    outputs, node = screen_structure_set(structures, {'max_elements': 4, 'min_distance': 1.0})
    assert node.is_finished_ok
    assert node.process_type == 'aiida.calculations:hpcai.screen'
    valid = outputs['valid_structures']
    assert valid.ids == ['LiF#0']
    assert valid.get_label('score').tolist() == [0.0]
    rejected = {row['id']: row['reason'] for row in outputs['rejected']['rejected']}
    assert rejected == {
        'Li3F5#0': 'not_charge_neutral',
        'LiF#1': 'atoms_too_close',
        'LiF#2': 'duplicate_in_batch',
        'RbBr#0': 'duplicate_of_known',
    }
    counts = outputs['counts'].get_dict()
    assert counts == {
        'total': 5,
        'valid': 1,
        **dict.fromkeys(filters.REASONS, 0),
        'not_charge_neutral': 1,
        'atoms_too_close': 1,
        'duplicate_in_batch': 1,
        'duplicate_of_known': 1,
    }
    # The known structure the verdict rests on is an input of the calcfunction.
    inputs = {link.link_label: link.node for link in node.base.links.get_incoming().all()}
    assert inputs['known_0'].pk == known.pk
    assert known.uuid in next(r['detail'] for r in outputs['rejected']['rejected'] if r['id'] == 'RbBr#0')


def test_known_sets_and_no_profile_search(aiida_profile):
    structures = batch()
    earlier = StructureSet.from_pymatgen([rock_salt(4.03, ('Li', 'F'))], ids=['earlier LiF']).store()
    outputs, _ = screen_structure_set(structures, {'min_distance': 1.0}, known_sets=[earlier], search_profile=False)
    rejected = {row['id']: row for row in outputs['rejected']['rejected']}
    assert rejected['LiF#0']['reason'] == 'duplicate_of_known'
    assert rejected['LiF#0']['detail'] == f'same structure as earlier LiF of StructureSet<{earlier.uuid}>'
    assert outputs['valid_structures'].ids == ['RbBr#0']


def test_invalid_parameters_exit_code(aiida_profile):
    from aiida_hpcai.screening.calcfunctions import ERROR_INVALID_PARAMETERS, screen_structures

    _, node = screen_structures.run_get_node(structures=batch(), parameters=orm.Dict({'min_distanse': 1.0}))
    assert node.exit_status == ERROR_INVALID_PARAMETERS
    assert 'min_distanse' in node.exit_message
