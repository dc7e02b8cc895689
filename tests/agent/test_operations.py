"""The operations of aiida_hpcai.agent.operations on a real test profile (no DFT runs: submission is stopped
before the broker, at the point where the process node exists)."""

import pytest
from aiida import orm
from pymatgen.core import Composition, Lattice, Structure

from aiida_hpcai.agent import operations
from aiida_hpcai.agent.goal import PlanError
from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.workchains.dft import formation_energy_on_mp_scale
from aiida_hpcai.workchains.structures import select_structures

# A small table as a user would import it: ids, structures and two labels. The values are test values
# chosen for the assertions (not DFT results), in the units of the Goal (eV/atom, eV).
TABLE = [
    # id, structure, formation_energy_per_atom, band_gap
    ('mgo-rocksalt', ('Fm-3m', 4.21, ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]]), -3.0, 4.5),
    ('nacl-rocksalt', ('Fm-3m', 5.64, ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]]), -2.1, 5.0),
    ('feo-rocksalt', ('Fm-3m', 4.33, ['Fe', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]]), -1.4, 0.0),
    ('mgo-cscl', ('Pm-3m', 2.6, ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]]), -2.5, 3.0),
    ('si-diamond', ('Fd-3m', 5.43, ['Si'], [[0, 0, 0]]), 0.0, 0.6),
]


def table_structures():
    return [
        Structure.from_spacegroup(group, Lattice.cubic(a), species, coords)
        for _, (group, a, species, coords), *_ in TABLE
    ]


@pytest.fixture(scope='module')
def imported_set(aiida_profile):
    """The table stored as ``aiida-hpcai data import`` stores a file: one StructureSet, made by no process, alone
    in a profile emptied once for this module (the look-ups below count what they searched)."""
    aiida_profile.reset_storage()
    return StructureSet.from_pymatgen(
        table_structures(),
        ids=[row[0] for row in TABLE],
        labels={'formation_energy_per_atom': [row[2] for row in TABLE], 'band_gap': [row[3] for row in TABLE]},
        label='look_up test table',
    ).store()


def hit_ids(answer):
    return [hit['id'] for hit in answer['hits']]


def test_plan_returns_the_goal_as_json():
    goal = operations.plan('cubic MgO with a formation energy below -2 eV/atom, at most 1 DFT run')
    assert goal['composition'] == 'MgO'
    assert goal['bounds'] == {'formation_energy_per_atom': [None, -2.0]}
    assert goal['crystal_system'] == 'cubic'
    assert goal['dft_budget'] == 1
    with pytest.raises(PlanError, match='unknown element'):
        operations.plan('Xq2O3 structures')


def test_look_up_finds_entries_of_an_imported_set(imported_set):
    answer = operations.look_up(operations.plan('MgO structures with the lowest formation energy'))
    assert hit_ids(answer) == ['mgo-rocksalt', 'mgo-cscl']  # ranked: -3.0 before -2.5
    first = answer['hits'][0]
    assert first['source'] == 'database'
    assert (first['node_pk'], first['node_uuid'], first['index']) == (imported_set.pk, imported_set.uuid, 0)
    assert first['values'] == {'formation_energy_per_atom': -3.0, 'band_gap': 4.5}
    assert answer['searched']['entries'] == len(TABLE)

    bounded = operations.look_up(operations.plan('MgO with a formation energy below -2.8 eV/atom'))
    assert hit_ids(bounded) == ['mgo-rocksalt']
    cubic_oxides = operations.look_up(operations.plan('oxides in space group Fm-3m'))
    assert hit_ids(cubic_oxides) == ['mgo-rocksalt', 'feo-rocksalt']
    assert {hit['spacegroup'] for hit in cubic_oxides['hits']} == {225}
    metals = operations.look_up(operations.plan('metallic oxides'))
    assert hit_ids(metals) == ['feo-rocksalt']
    none = operations.look_up(operations.plan('stable Si structures without oxygen with a band gap above 1 eV'))
    assert none['n_hits'] == 0


def test_look_up_limit_and_missing_labels(imported_set):
    everything = operations.look_up({'exclude': ['U']}, limit=2)
    assert everything['n_hits'] == len(TABLE) and len(everything['hits']) == 2
    # No entry has an energy above the hull: the set cannot satisfy such a bound, and says so.
    hull = operations.look_up(operations.plan('MgO within 0.1 eV/atom of the convex hull'))
    assert hull['n_hits'] == 0
    assert hull['searched']['sets_without_labels'] == [imported_set.pk]
    with pytest.raises(operations.OperationError, match='limit'):
        operations.look_up({'composition': 'MgO'}, limit=-1)


def test_look_up_skips_sets_made_by_processes(imported_set):
    """A StructureSet a process made (predictions, DFT batches, selections) holds no imported reference data."""
    selected = select_structures(imported_set, orm.List(['mgo-rocksalt']))['subset']
    assert selected.creator is not None
    answer = operations.look_up({'composition': 'MgO'})
    assert answer['searched']['structure_sets'] == 1
    assert [hit['node_pk'] for hit in answer['hits']] == [imported_set.pk, imported_set.pk]


def test_run_dft_refused_by_a_budget_of_zero(imported_set):
    goal = operations.plan('MgO structures, no DFT')
    assert goal['dft_budget'] == 0
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(operations.BudgetExceeded, match='dft_budget of 0'):
        operations.run_dft(goal, structure_set=imported_set.pk, ids=['mgo-rocksalt'])
    assert orm.QueryBuilder().append(orm.Node).count() == before  # no goal node, no selection, no process


@pytest.fixture
def pw_that_never_runs(aiida_code_installed):
    """A pw code for submissions that never execute. Not labelled ``pw``: ``pw@localhost`` in the shared test
    profile is what ``aiida-hpcai setup`` finds for the tutorials, and this one's executable is not pw.x."""
    return aiida_code_installed(label='pw-never-runs', default_calc_job_plugin='quantumespresso.pw').full_label


def test_run_dft_needs_a_broker(imported_set, pw_that_never_runs):
    goal = operations.plan('MgO structures, at most 2 DFT runs')
    with pytest.raises(operations.OperationError, match='no broker'):
        operations.run_dft(goal, structure_set=imported_set.pk, ids=['mgo-rocksalt'], code=pw_that_never_runs)


@pytest.fixture
def submit_without_broker(monkeypatch):
    """``submit`` up to the stored process node, without the broker message: nothing runs, nothing is left queued."""
    import aiida.engine
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    def create_only(process_class, **inputs):
        return instantiate_process(get_manager().get_runner(), process_class, **inputs).node

    monkeypatch.setattr(aiida.engine, 'submit', create_only)
    monkeypatch.setattr(operations, '_daemon_running', lambda: False)


def test_run_dft_counts_what_the_goal_started(imported_set, pw_that_never_runs, submit_without_broker):
    goal = operations.plan('MgO structures, at most 3 DFT runs')

    batch = operations.run_dft(
        goal, structure_set=imported_set.pk, ids=['mgo-rocksalt', 'mgo-cscl'], code=pw_that_never_runs
    )
    node = orm.load_node(batch['process_pk'])
    assert node.process_type == 'aiida.workflows:hpcai.dft_batch'
    assert node.inputs.structures.ids == ['mgo-rocksalt', 'mgo-cscl']
    assert node.base.extras.get(operations.GOAL_EXTRA) == batch['goal_id']
    assert node.base.extras.get(operations.DFT_RUNS_EXTRA) == 2
    assert batch['budget'] == {'dft_budget': 3, 'started': 2, 'left': 1}
    assert orm.load_node(batch['goal_id']).get_dict() == goal
    assert batch['hint'] and 'daemon' in batch['hint']

    # The same goal, sent again as JSON, shares the budget: one more fits, two do not.
    with pytest.raises(operations.BudgetExceeded, match='2 already started'):
        operations.run_dft(
            dict(goal), structure_set=imported_set.pk, ids=['nacl-rocksalt', 'feo-rocksalt'], code=pw_that_never_runs
        )
    single = operations.run_dft(goal, structure_set=imported_set.pk, ids=['si-diamond'], code=pw_that_never_runs)
    assert single['goal_id'] == batch['goal_id']
    single_node = orm.load_node(single['process_pk'])
    assert single_node.process_type == 'aiida.workflows:hpcai.dft'
    assert single_node.inputs.structure.label == 'si-diamond'
    assert operations.dft_runs_started(batch['goal_id']) == 3
    with pytest.raises(operations.BudgetExceeded, match='0 left'):
        operations.run_dft(goal, structure_set=imported_set.pk, ids=['nacl-rocksalt'], code=pw_that_never_runs)

    # Another goal has its own budget.
    other = operations.run_dft(
        {**goal, 'dft_budget': 1}, structure_pks=[single_node.inputs.structure.pk], code=pw_that_never_runs
    )
    assert other['goal_id'] != batch['goal_id'] and other['budget']['left'] == 0

    state = operations.status(batch['process_pk'])
    assert state['process_state'] == 'created' and state['goal_id'] == batch['goal_id'] and state['dft_runs'] == 2
    with pytest.raises(operations.OperationError, match='ask again when it has finished'):
        operations.results(batch['process_pk'])


def test_run_dft_refuses_bad_structures(imported_set):
    goal = operations.plan('MgO structures, at most 3 DFT runs')
    with pytest.raises(operations.OperationError, match='not in StructureSet'):
        operations.run_dft(goal, structure_set=imported_set.pk, ids=['mp-0'])
    with pytest.raises(operations.OperationError, match='not a StructureData'):
        operations.run_dft(goal, structure_pks=[imported_set.pk])
    with pytest.raises(operations.OperationError, match='either'):
        operations.run_dft(goal)


def test_status_and_results_of_a_finished_process(imported_set):
    _, node = select_structures.run_get_node(imported_set, orm.List(['feo-rocksalt']))
    assert operations.status(node.pk)['is_finished_ok']
    outputs = operations.results(node.uuid)['outputs']
    assert outputs['subset']['ids'] == ['feo-rocksalt']
    assert outputs['structures__feo_rocksalt']['formula'] == 'Fe4O4'  # the conventional cell
    with pytest.raises(operations.OperationError, match='not a ProcessNode'):
        operations.status(imported_set.pk)


def test_generate_samples_a_composition(aiida_profile, tmp_path_factory):
    """A tiny EquiCSP trained through hpcai.train (cached across the test modules that train it) samples MgS cells."""
    from tests.generate_helpers import CODE, model_program_code, train_tiny_equicsp

    model = train_tiny_equicsp(model_program_code(str(tmp_path_factory.mktemp('generate_work')))).outputs.model
    answer = operations.generate(model.uuid, composition='MgS', count=2, seed=1, steps=10, code=CODE)
    node = orm.load_node(answer['process_pk'])
    assert node.process_type == 'aiida.calculations:hpcai.generate'
    assert node.inputs.parameters.get_dict() == {'mode': 'csp', 'compositions': {'MgS': 2}, 'seed': 1, 'steps': 10}
    assert (answer['mode'], answer['seed'], answer['steps']) == ('csp', 1, 10)
    ids = [row['id'] for row in answer['valid']] + [row['id'] for row in answer['invalid']]
    assert sorted(ids) == ['MgS#0', 'MgS#1']
    assert all(row['formula'] == 'MgS' for row in answer['valid'])
    assert answer['structure_set']['uuid'] == node.outputs.structures.uuid

    with pytest.raises(operations.OperationError, match='refused its inputs'):
        operations.generate(model.pk, composition='Mg1.5S', code=CODE)  # no whole cell
    restricted = operations.generate(model.pk, count=2, steps=4, code=CODE, elements=['Mg', 'S'])
    formulae = [row['id'].split('#')[0] for row in restricted['valid'] + restricted['invalid']]
    assert len(formulae) == 2 and all(sorted(Composition(f).as_dict()) == ['Mg', 'S'] for f in formulae), formulae
    with pytest.raises(operations.OperationError, match='do not apply to mode'):
        operations.generate(model.pk, composition='MgS', code=CODE, elements=['Mg', 'S'])
    predictor = ModelData.pretrained('formation_energy_per_atom')
    with pytest.raises(operations.OperationError, match='cannot generate'):
        operations.generate(predictor.pk, composition='MgS', code=CODE)
    with pytest.raises(operations.OperationError, match='count'):
        operations.generate(model.pk, count=0, code=CODE)


def test_look_up_reads_formation_energies_on_mp_scale_only():
    """A Goal's formation energy is on MP's scale: hpcai.dft results without MP's anion corrections don't count."""
    assert formation_energy_on_mp_scale({'energy_corrections': {'scheme': 'mp2020'}})
    assert not formation_energy_on_mp_scale({'energy_corrections': {'scheme': 'none'}})
    assert not formation_energy_on_mp_scale({})  # made before hpcai.dft had the corrections
    # +U compounds: on the scale only when the run applied MP's U values
    fe2o3 = {'scheme': 'mp2020', 'gga_u_elements': ['Fe']}
    assert not formation_energy_on_mp_scale({'energy_corrections': fe2o3})  # a record from before GGA+U: plain GGA
    assert formation_energy_on_mp_scale({'energy_corrections': {**fe2o3, 'on_mp_scale': True}})
    assert not formation_energy_on_mp_scale({'energy_corrections': {**fe2o3, 'on_mp_scale': False}})
