"""``hpcai.dft_batch`` with the real pw.x (``fast``, 2 MPI ranks): two Si cells and one that fails.

One module-scoped batch run (three small pw.x WorkChains: the Si reference and two Si cells) feeds the
slow tests; the input checks need no calculation.
"""

import math

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from pymatgen.core import Lattice, Structure

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.engines import references as refs
from aiida_hpcai.screening.calcfunctions import FINGERPRINT_EXTRA
from aiida_hpcai.workchains.dft import DftWorkChain
from aiida_hpcai.workchains.dft_batch import DftBatchWorkChain, plan_references

OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 2}, 'max_wallclock_seconds': 1800}


def silicon(a):
    return Structure.from_spacegroup('Fd-3m', Lattice.cubic(a), ['Si'], [[0, 0, 0]]).get_primitive_structure()


def batch():
    # Au has no pseudopotential in the SSSP subset: that child exits before any calculation.
    gold_silicide = Structure(Lattice.cubic(3.0), ['Au', 'Si'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return StructureSet.from_pymatgen([silicon(5.46), gold_silicide, silicon(5.49)], ids=['Si#0', 'AuSi#0', 'Si#1'])


def _inputs(code, structures, **dft):
    return {
        'structures': structures,
        'max_concurrent': orm.Int(1),
        'dft': {
            'engine': orm.Str('quantumespresso'),
            'code': code,
            'protocol': orm.Str('fast'),
            'options': orm.Dict(OPTIONS),
            **dft,
        },
    }


@pytest.fixture(scope='module')
def batch_run(pw_code, sssp_family):
    return run_get_node(DftBatchWorkChain, **_inputs(pw_code, batch()))


def _dft_children(node):
    return [child for child in node.called if child.process_type == DftWorkChain.build_process_type()]


def test_entry_point():
    assert WorkflowFactory('hpcai.dft_batch') is DftBatchWorkChain


@pytest.mark.slow
def test_batch_results_and_failures(batch_run):
    results, node = batch_run
    assert node.is_finished_ok, node.exit_message
    content = results['results'].get_dict()
    assert content['succeeded'] == ['Si#0', 'Si#1']
    assert content['failed'] == ['AuSi#0']
    rows = {row['id']: row for row in content['structures']}
    failed = rows['AuSi#0']
    assert failed['exit_status'] == DftWorkChain.exit_codes.ERROR_MISSING_PSEUDOPOTENTIAL.status
    assert 'Au' in failed['exit_message']
    assert orm.load_node(failed['process']).exit_status == failed['exit_status']
    # plain GGA Si carries MP's (empty) corrections: its formation energy stands beside MP's; a failure has none
    assert rows['Si#0']['on_mp_scale'] is rows['Si#1']['on_mp_scale'] is True and failed['on_mp_scale'] is None

    relaxed = results['relaxed_structures']
    assert relaxed.ids == ['Si#0', 'Si#1']
    assert set(relaxed.label_names) == {
        'energy_per_atom',
        'formation_energy_per_atom',
        'formation_energy_per_atom_uncorrected',
        'band_gap',
    }
    for index, identifier in enumerate(relaxed.ids):
        child = orm.load_node(rows[identifier]['process'])
        assert relaxed.get_label('energy_per_atom')[index] == child.outputs.energy_per_atom.value
        assert rows[identifier]['band_gap'] == child.outputs.band_gap.value
        # Both cells relax to the reference's diamond structure: formation energy ~0.
        assert abs(relaxed.get_label('formation_energy_per_atom')[index]) < 0.02
        assert 0.4 < relaxed.get_label('band_gap')[index] < 0.8
        assert not math.isnan(relaxed.get_label('energy_per_atom')[index])
        # The relaxed structure carries the fingerprint later screenings look up.
        fingerprint = child.outputs.relaxed_structure.base.extras.get(FINGERPRINT_EXTRA)
        assert fingerprint['reduced_formula'] == 'Si' and fingerprint['space_group'] == 227
    # Both relaxations end at the same PBE cell (near the start: few BFGS steps keep the test short).
    volumes = [structure.volume for structure in relaxed]
    assert volumes[0] == pytest.approx(volumes[1], rel=0.01)


@pytest.mark.slow
def test_si_reference_computed_once(batch_run):
    results, node = batch_run
    children = _dft_children(node)
    references = [child for child in children if child.base.extras.get(refs.REFERENCE_EXTRA, None)]
    structures = [child for child in children if child not in references]
    # One child per structure (AuSi#0 exits before any calculation), launched one at a time (cap 1).
    assert sorted(child.label for child in structures) == ['AuSi#0', 'Si#0', 'Si#1']
    assert all(a.mtime <= b.ctime for a, b in zip(structures, structures[1:]))
    # No child computed a reference of its own...
    for child in children:
        assert not _dft_children(child)

    # ... and both formation energies are linked to the very same Si reference energy.
    def si_reference_energy(child):
        calcfunction = child.base.links.get_outgoing(link_label_filter='compute_formation_energy').one().node
        return calcfunction.base.links.get_incoming(link_type=LinkType.INPUT_CALC, link_label_filter='Si').one().node

    silicon_children = [child for child in children if child.label in ('Si#0', 'Si#1')]
    energies = {si_reference_energy(child).pk for child in silicon_children}
    assert len(energies) == 1
    # The batch computed it (once), unless an earlier WorkChain of this profile had.
    assert len(references) <= 1
    if references:
        assert references[0].base.extras.get(refs.REFERENCE_EXTRA)['element'] == 'Si'
        assert results['results']['references'] == [
            {'element': 'Si', 'status': 'finished_ok', 'process': references[0].uuid}
        ]


def test_reference_plan_computes_each_reference_once(pw_code, sssp_family):
    """No DFT: the plan lists each (element, identity) once, whatever the number of structures needing it."""
    # A protocol no other test uses, so the references of other tests' runs are not found here.
    overrides = {'degauss': 0.0123}
    magnesia = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.2), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    fluorite = Structure.from_spacegroup('Fm-3m', Lattice.cubic(5.0), ['Si', 'O'], [[0, 0, 0], [0.25, 0.25, 0.25]])
    gold_silicide = Structure(Lattice.cubic(3.0), ['Au', 'Si'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structures = StructureSet.from_pymatgen(
        [silicon(5.46), magnesia, silicon(5.49), fluorite, gold_silicide], ids=['Si#0', 'MgO', 'Si#1', 'SiO2', 'AuSi']
    )
    references, needs = plan_references(structures, 'quantumespresso', pw_code, 'fast', overrides, False)
    elements = sorted(plan['element'] for plan in references.values())
    # Si twice: at Si's cutoffs (the Si cells) and at O's (SiO2, whose O reference is MgO's too).
    assert elements == ['Mg', 'O', 'Si', 'Si']
    assert needs['0'] == needs['2']
    assert set(needs['1']) & set(needs['3']) == {next(key for key in needs['1'] if key.startswith('O:'))}
    assert '4' not in needs  # no pseudopotential for Au: that child stops before any calculation
    # A reference computed earlier under the same identity is found, not planned again.
    (silicon_key,) = needs['0']
    earlier = orm.WorkflowNode()
    earlier.set_exit_status(0)
    earlier.store()
    refs.tag_reference(earlier, 'Si', references[silicon_key]['identity'])
    again, _ = plan_references(structures, 'quantumespresso', pw_code, 'fast', overrides, False)
    assert set(again) == set(references) - {silicon_key}


def test_all_failed_exit_code(pw_code, sssp_family):
    gold = StructureSet.from_pymatgen([Structure(Lattice.cubic(4.08), ['Au'], [[0, 0, 0]])], ids=['Au#0'])
    results, node = run_get_node(DftBatchWorkChain, **_inputs(pw_code, gold))
    assert node.exit_status == DftBatchWorkChain.exit_codes.ERROR_ALL_FAILED.status
    assert results['results']['failed'] == ['Au#0']
    assert 'relaxed_structures' not in results


def test_input_checks(pw_code, sssp_family):
    with pytest.raises(ValueError, match='max_concurrent'):
        run_get_node(DftBatchWorkChain, **{**_inputs(pw_code, batch()), 'max_concurrent': orm.Int(0)})
    with pytest.raises(ValueError, match='kpoint_distance'):
        run_get_node(DftBatchWorkChain, **_inputs(pw_code, batch(), overrides=orm.Dict({'kpoint_distance': 0.5})))
