"""``hpcai.coordinate`` on a real profile: a tiny EquiCSP and a tiny Crysformer (both trained by ``hpcai.train``),
an imported labelled StructureSet for the look-up, and one small pw.x run (``fast``) for the DFT branch, whose
result fine-tunes the model (buffer of 1) while the loop goes on."""

import dataclasses
import io

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import calcfunction, run_get_node
from aiida.manage.caching import enable_caching
from aiida.plugins import CalculationFactory, WorkflowFactory
from PIL import Image
from pymatgen.core import Lattice, Structure

from aiida_hpcai.agent import operations
from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models.acceptance import calibrate_acceptance
from aiida_hpcai.workchains.coordinate import TABLE_COLUMNS, _json_clean
from tests.generate_helpers import OPTIONS, model_program_code, train_tiny_equicsp

CoordinateWorkChain = WorkflowFactory('hpcai.coordinate')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TARGET = 'formation_energy_per_atom'
# A 3-epoch generator's 2-atom cells rarely have a charge-neutral composition, and their symmetry shows only at a
# tolerance of 0.5 Å (the loop drops space group 1 at the screening's tolerance).
LOOSE = {'charge_neutrality': False, 'symprec': 0.5}
DFT_OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 2}, 'max_wallclock_seconds': 1800}


@pytest.fixture(scope='module')
def code(aiida_profile, tmp_path_factory):
    return model_program_code(str(tmp_path_factory.mktemp('coordinate_work')))


@pytest.fixture(scope='module')
def generator(code):
    return train_tiny_equicsp(code).outputs.model


@calcfunction
def relabel(structures: StructureSet) -> StructureSet:
    """The generator's training cells with their synthetic label under the name of a Goal property. Made by a
    process, the set is no reference data for the look-up (only sets a user imported are)."""
    arrays = structures.arrays
    relabelled = dataclasses.replace(arrays, labels={TARGET: arrays.labels['energy']})
    return StructureSet(relabelled, label='synthetic CsCl-type cells (28), formation_energy_per_atom')


@pytest.fixture(scope='module')
def property_model(code, generator):
    """A tiny Crysformer ensemble (2 members, 1 epoch) of the synthetic label, named formation_energy_per_atom."""
    label = 'synthetic CsCl-type cells (28), formation_energy_per_atom'
    structures = orm.QueryBuilder().append(StructureSet, filters={'label': label}).first(flat=True)
    if structures is None:
        structures = relabel(train_tiny_equicsp(code).inputs.structures)
    parameters = {'target': TARGET, 'units': 'eV/atom', 'model_config': 'tiny', 'ensemble_size': 2, 'epochs': 1}
    with enable_caching(identifier='aiida.calculations:hpcai.train'):
        _, node = run_get_node(
            CalculationFactory('hpcai.train'),
            code=code,
            structures=structures,
            parameters=orm.Dict({**parameters, 'batch_size': 16, 'seed': 0}),
            metadata={'options': OPTIONS},
        )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return node.outputs.model


@pytest.fixture(scope='module')
def imported_set(aiida_profile):
    """A labelled set as `aiida-hpcai data import` stores one (made by no process): rocksalt MgO with a test value.
    Stored once per profile (the CLI tests use it too)."""
    existing = orm.QueryBuilder().append(StructureSet, filters={'label': 'coordinate look-up table'}).first(flat=True)
    if existing is not None:
        return existing
    # the look-up searches the whole profile: labelled MgO tables that earlier test modules stored (tests/agent)
    # would be hits too, and this one's entries their duplicates
    from aiida.tools import delete_nodes

    others = orm.QueryBuilder().append(StructureSet, filters={'attributes.elements': {'contains': ['Mg', 'O']}})
    tables = [node.pk for node in others.all(flat=True) if node.creator is None and TARGET in node.label_names]
    delete_nodes(tables, dry_run=False)
    rocksalt = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.21), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    fluorite = Structure.from_spacegroup('Fm-3m', Lattice.cubic(5.0), ['Si', 'O'], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return StructureSet.from_pymatgen(
        [rocksalt, fluorite],
        ids=['mgo-rocksalt', 'sio2-fluorite'],
        labels={TARGET: [-3.0, -2.0]},
        label='coordinate look-up table',
    ).store()


def _inputs(code, generator, model, goal, **extra):
    inputs = {
        'goal': orm.Dict(goal),
        'generate': {'code': code, 'model': generator, 'metadata': {'options': OPTIONS}},
        'generation': orm.Dict({'steps': 10}),
        'screening': orm.Dict(LOOSE),
        'surrogate': {'models': {'m0': model}, 'predict': {'code': code, 'metadata': {'options': OPTIONS}}},
    }
    inputs.update(extra)
    return inputs


def _qe_batch(pw_code):
    """`dft_batch` inputs: Quantum ESPRESSO, `fast`, 2 MPI ranks."""
    return {
        'dft': {
            'engine': orm.Str('quantumespresso'),
            'code': pw_code,
            'protocol': orm.Str('fast'),
            'options': orm.Dict(DFT_OPTIONS),
        }
    }


def _png_ok(node):
    content = node.get_content(mode='rb')
    assert content.startswith(PNG_MAGIC)
    width, height = Image.open(io.BytesIO(content)).size
    assert width > 300 and height > 200


def _called(node, process_type):
    return sorted((child for child in node.called if child.process_type == process_type), key=lambda n: n.pk)


# -- look-up hit and AI acceptances, no DFT ----------------------------------------------------------------------
def test_look_up_hit_and_ai_acceptances(code, generator, property_model, imported_set):
    # The generator's training set (label `energy`) holds MgO too: without the bound it would be a hit
    goal = {'composition': 'MgO', 'count': 4, 'bounds': {TARGET: [None, 0.0]}, 'objective': ['minimize', TARGET],
            'dft_budget': 0}  # fmt: skip
    inputs = _inputs(
        code,
        generator,
        property_model,
        goal,
        samples_per_iteration=orm.Int(4),
        max_iterations=orm.Int(2),
        sigma_threshold=orm.Float(10.0),
    )
    results, node = run_get_node(CoordinateWorkChain, **inputs)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    rows = results['table']['rows']
    assert results['table']['columns'] == list(TABLE_COLUMNS)
    assert results['structures'].ids == [row['id'] for row in rows]
    assert 1 <= len(rows) <= 4
    values = [row['value'] for row in rows]
    assert values == sorted(values)  # the objective: lowest formation energy first
    hits = [row for row in rows if row['source'] == 'database']
    assert [(row['node_pk'], row['value']) for row in hits] == [(imported_set.pk, -3.0)]
    assert values[0] == -3.0 and all(value < 0 for value in values)
    assert all(row['formula'] == 'MgO' and row['spacegroup'] != 1 for row in rows)
    assert np.allclose(results['structures'].get_label(TARGET), values)

    # AI acceptances: within the threshold, the initial model (version 0), the surrogate run that predicted them
    surrogates = _called(node, 'aiida.workflows:hpcai.surrogate')
    assert len(surrogates) >= 1 and not _called(node, 'aiida.workflows:hpcai.dft_batch')
    for row in rows:
        if row['source'] == 'ai':
            assert row['sigma'] <= 10.0 and row['model_version'] == 0 and row['model_pk'] == property_model.pk
            assert row['node_pk'] in {s.pk for s in surrogates}
            surrogate = orm.load_node(row['node_pk'])
            predictions = surrogate.outputs.classified_predictions
            index = list(predictions.get_array('ids')).index(row['id'])
            assert predictions.get_array('mean')[index] == pytest.approx(row['value'])

    log = results['decision_log'].get_dict()
    # other tests may leave hpcai.dft results of MgO in the profile: those are hits too (source dft)
    assert [hit['node_pk'] for hit in log['look_up']['hits'] if hit['source'] == 'database'] == [imported_set.pk]
    assert [entry['iteration'] for entry in log['iterations']] == list(range(1, len(log['iterations']) + 1))
    jobs = _called(node, 'aiida.calculations:hpcai.generate')
    assert len(jobs) == len(log['iterations']) <= 2
    for entry, job in zip(log['iterations'], jobs):
        assert entry['generate_pk'] == job.pk and entry['mode'] == 'csp'
        assert job.inputs.parameters['compositions'] == {'MgO': 4}
        assert entry['candidates'] == len(job.outputs.structures)
        assert entry['sent_to_dft'] == [] and entry['not_sent_to_dft'] == []
    accepted = [a['id'] for entry in log['iterations'] for a in entry['accepted']]
    kept_ai = [row['id'] for row in rows if row['source'] == 'ai']
    assert kept_ai and set(kept_ai) <= set(accepted)
    # whatever was accepted but is not a result was dropped for a reason the log gives
    dropped = {row['id']: row['reason'] for row in log['dropped'] if row['source'] == 'ai'}
    assert set(accepted) - set(kept_ai) == set(dropped)
    assert set(dropped.values()) <= {'no_symmetry', 'duplicate_in_batch', 'beyond the count'}
    _png_ok(results['plot'])
    assert 'model' not in results


# -- the DFT branch and an asynchronous fine-tune (buffer of 1) ----------------------------------------------------
# A calibration on which every error is 1 eV/atom: no threshold keeps 90% within 0.12 eV/atom, so nothing is accepted
ACCEPTS_NOTHING = calibrate_acceptance(np.zeros(60), np.linspace(0.01, 0.5, 60), np.ones(60))


@pytest.fixture(scope='module')
def dft_run(code, generator, property_model, pw_code, sssp_family):
    """Simple-cubic Si as the only candidate of iteration 1; an acceptance record whose rule accepts nothing
    (threshold 0) sends it to the one DFT run the goal allows, and that result refreshes the record; it also
    fine-tunes the model while iteration 2 generates and predicts (nothing else fits the budget). The lower bound keeps out what other tests leave in the profile (diamond Si at 0, MgO, SiO2 below 0),
    so the look-up finds nothing."""
    goal = operations.plan('structures with a formation energy between 0.05 and 1 eV/atom, at most 1 DFT run')
    candidates = StructureSet.from_pymatgen([Structure(Lattice.cubic(2.53), ['Si'], [[0, 0, 0]])], ids=['Si-sc'])
    inputs = _inputs(
        code,
        generator,
        property_model,
        goal,
        candidates=candidates,
        samples_per_iteration=orm.Int(2),
        max_iterations=orm.Int(2),
        acceptance=orm.Dict(_json_clean(ACCEPTS_NOTHING)),
        continue_without_dft=orm.Bool(True),
        buffer_size=orm.Int(1),
        fine_tune=orm.Dict({'epochs': 1, 'batch_size': 4}),
        dft_batch=_qe_batch(pw_code),
        generation=orm.Dict({'steps': 10, 'n_strategy': 'dataset'}),
    )
    return run_get_node(CoordinateWorkChain, **inputs)


def test_uncertain_candidate_goes_to_dft_within_the_budget(dft_run):
    results, node = dft_run
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    log = results['decision_log'].get_dict()
    first = log['iterations'][0]
    assert first['source'] == 'candidates' and first['candidates'] == 1
    assert [entry['id'] for entry in first['sent_to_dft']] == ['i1-Si-sc']
    assert first['sent_to_dft'][0]['reason'].startswith('sigma ') and first['accepted'] == []

    (batch,) = _called(node, 'aiida.workflows:hpcai.dft_batch')
    assert batch.pk == first['dft_pk'] and batch.inputs.structures.ids == ['i1-Si-sc']
    assert batch.base.extras.get(operations.DFT_RUNS_EXTRA) == 1
    assert batch.base.extras.get(operations.GOAL_EXTRA) == node.inputs.goal.uuid
    # the budget is spent: later uncertain candidates stay without DFT, and say why
    for entry in log['iterations'][1:]:
        assert entry['sent_to_dft'] == []
        assert all(item['not_sent'] == 'DFT budget spent' for item in entry['not_sent_to_dft'])

    # DFT results of earlier modules' runs in the shared profile may be look-up hits (iteration 0): the loop's own
    # DFT result is the one of iteration 1
    dft_rows = [row for row in results['table']['rows'] if row['source'] == 'dft']
    rows = [row for row in dft_rows if row['iteration'] >= 1]
    assert len(rows) == 1
    row = rows[0]
    child = orm.load_node(row['node_pk'])
    assert child.process_type == 'aiida.workflows:hpcai.dft' and child.is_finished_ok
    assert row['value'] == pytest.approx(child.outputs.formation_energy_per_atom.value)
    # simple-cubic Si lies above diamond Si (the reference) and within the goal's bounds
    assert 0.05 <= row['value'] <= 1 and row['spacegroup'] == 221
    assert results['table']['counts']['dft'] == len(dft_rows) and results['table']['counts']['ai'] == 0
    _png_ok(results['plot'])

    # the DFT result refreshed the acceptance rule, against the prediction that sent it to DFT
    assert ACCEPTS_NOTHING['threshold'] == 0.0 and log['threshold_source'].startswith('acceptance record Dict<')
    refresh = first['acceptance_refresh']
    assert refresh['results'] == 1 and refresh['threshold_before'] == 0.0 and refresh['pooled'] is True
    acceptance = log['acceptance']
    (check,) = acceptance['loop_results']
    sent = first['sent_to_dft'][0]
    assert (check['id'], check['mean'], check['sigma']) == ('i1-Si-sc', sent['mean'], sent['sigma'])
    assert check['dft'] == pytest.approx(row['value']) and check['model_version'] == 0
    assert acceptance['loop_within_tolerance'] == int(abs(check['mean'] - check['dft']) <= 0.12)
    assert acceptance['record']['n'] == 61 and len(acceptance['record']['refreshes']) == 1
    assert acceptance['record']['threshold'] == refresh['threshold_after'] == log['threshold']


def test_fine_tune_is_submitted_and_the_loop_switches(dft_run, property_model):
    results, node = dft_run
    log = results['decision_log'].get_dict()
    submitted = log['iterations'][0]['fine_tune_submitted']
    train = orm.load_node(submitted['pk'])
    assert train.process_type == 'aiida.calculations:hpcai.train'
    assert train.inputs.parent_model.pk == property_model.pk == submitted['parent_model_pk']
    assert train.inputs.structures.ids == ['i1-Si-sc'] and TARGET in train.inputs.structures.label_names
    assert train.is_finished_ok, train.exit_message

    (event,) = log['fine_tunes']
    assert event['status'] == 'switched' and event['fine_tune_pk'] == train.pk
    new_model = train.outputs.model
    assert results['model'].pk == new_model.pk == event['model_pk']
    # the loop did not wait: iteration 2 started before the fine-tune ended; every iteration from the switch on
    # predicted with the new model, every one before with the initial one
    assert orm.load_node(log['iterations'][1]['generate_pk']).ctime < train.mtime
    for entry in log['iterations']:
        switched = entry['iteration'] >= event['from_iteration']
        assert entry['model_version'] == (1 if switched else 0)
        assert entry['model_pk'] == (new_model.pk if switched else property_model.pk)
        if 'surrogate_pk' in entry:
            (model,) = orm.load_node(entry['surrogate_pk']).inputs.models.values()
            assert model.pk == entry['model_pk']


# A calibration on which every error is 0: the rule accepts any sigma up to about 900
ACCEPTS_ALL = calibrate_acceptance(np.zeros(300), np.linspace(0.01, 1e3, 300), np.zeros(300))


@pytest.fixture(scope='module', params=[False, True], ids=['single_point', 'relaxed'])
def audit_run(request, code, generator, property_model, pw_code, sssp_family):
    """fcc Si (a cell no other test computes: the coordinate tutorial computes bcc Si, whose DFT result the look-up
    would find) as the only candidate; a rule that accepts it, and one audit: the acceptance is taken back and
    checked by the one DFT run the goal allows, a single point of the cell (``audit_relax`` False) or a relaxation.
    The goal names the composition, so fluorite SiO2 is no hit. The single point runs first: neither a look-up hit
    nor a known structure, it leaves the relaxed run a candidate (a relaxed result would be both)."""
    goal = operations.plan('Si with space group Fm-3m and a formation energy below 100 eV/atom, at most 1 DFT run')
    goal.update(composition='Si', must_include=[])
    fcc = Structure.from_spacegroup('Fm-3m', Lattice.cubic(3.85), ['Si'], [[0, 0, 0]]).get_primitive_structure()
    inputs = _inputs(
        code,
        generator,
        property_model,
        goal,
        candidates=StructureSet.from_pymatgen([fcc], ids=['Si-fcc']),
        max_iterations=orm.Int(1),
        acceptance=orm.Dict(_json_clean(ACCEPTS_ALL)),
        audit=orm.Int(1),
        audit_relax=orm.Bool(request.param),
        buffer_size=orm.Int(0),
        dft_batch=_qe_batch(pw_code),
    )
    return run_get_node(CoordinateWorkChain, **inputs)


def test_an_audit_checks_an_ai_acceptance_with_dft(audit_run):
    results, node = audit_run
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    log = results['decision_log'].get_dict()
    (first,) = log['iterations']
    assert first['accepted'] == [] and first['not_sent_to_dft'] == []
    (sent,) = first['sent_to_dft']
    assert sent['id'] == 'i1-Si-fcc' and sent['audit'] is True and sent['reason'].startswith('audit: accepted')
    assert sent['sigma'] <= ACCEPTS_ALL['threshold']  # it was accepted, not uncertain
    # its DFT value is the result: the AI's row was taken back
    rows = [row for row in results['table']['rows'] if row['iteration'] == 1]
    assert [(row['id'], row['source']) for row in rows] == [('i1-Si-fcc', 'dft')]
    assert results['table']['counts']['ai'] == 0
    # the audit refreshed the rule and is counted apart, judged against its DFT value
    assert first['acceptance_refresh']['results'] == 1
    acceptance = log['acceptance']
    (check,) = acceptance['loop_results']
    assert check['audit'] is True and check['mean'] == sent['mean'] and check['dft'] == pytest.approx(rows[0]['value'])
    assert acceptance['audits'] == 1
    assert acceptance['audits_within_tolerance'] == int(abs(check['mean'] - check['dft']) <= 0.12)

    # relaxed, or a single point of the cell as generated in a batch of its own: only an SCF, the cell kept
    single_point = not node.inputs.audit_relax.value
    (batch,) = _called(node, 'aiida.workflows:hpcai.dft_batch')
    assert batch.pk == first['audit_dft_pk' if single_point else 'dft_pk']
    assert ('dft_pk' in first, 'audit_dft_pk' in first) == (not single_point, single_point)
    (row,) = batch.outputs.results['structures']  # the batch's other children are elemental references
    child = orm.load_node(row['process'])
    assert child.inputs.relax.value is not single_point
    steps = {link.link_label for link in child.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()}
    assert ('relax' not in steps) is single_point and 'scf' in steps
    generated = node.inputs.candidates.get_pymatgen(0)
    computed = child.outputs.relaxed_structure.get_pymatgen_structure()
    same_volume = computed.volume / len(computed) == pytest.approx(generated.volume / len(generated), rel=1e-6)
    assert same_volume is single_point
    assert check['single_point'] is single_point
    assert [entry.get('single_point', False) for entry in first['dft_accepted']] == [single_point]


def test_no_dft_for_a_formation_energy_that_would_be_off_mp_scale(code, generator, pw_code):
    """MP runs NiO with GGA+U, and QE's +U formation energies are off MP's scale: DFT could not settle a
    formation-energy Goal, so the uncertain candidate is not sent, with the reason, and the budget stays unspent."""
    from aiida_hpcai.data.model import ModelData

    goal = operations.plan('NiO with a formation energy below 0 eV/atom, at most 1 DFT run')
    rocksalt = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.17), ['Ni', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    inputs = _inputs(
        code,
        generator,
        ModelData.pretrained(TARGET),  # knows Ni
        goal,
        candidates=StructureSet.from_pymatgen([rocksalt], ids=['NiO']),
        max_iterations=orm.Int(1),
        acceptance=orm.Dict(_json_clean(ACCEPTS_NOTHING)),
        dft_batch={'dft': {'engine': orm.Str('quantumespresso'), 'code': pw_code, 'protocol': orm.Str('fast')}},
    )
    results, node = run_get_node(CoordinateWorkChain, **inputs)
    assert node.exit_status == CoordinateWorkChain.exit_codes.ERROR_NOTHING_FOUND.status, node.exit_message
    (entry,) = results['decision_log']['iterations']
    assert entry['sent_to_dft'] == [] and 'dft_pk' not in entry
    (left,) = entry['not_sent_to_dft']
    assert left['id'] == 'i1-NiO' and "off MP's scale" in left['not_sent']
    assert not _called(node, 'aiida.workflows:hpcai.dft_batch')


def test_fine_tune_set_leaves_out_excluded_and_unlabelled_results(aiida_profile):
    """The fine-tuning set: every relaxed set's results with a finite target, less those ``excluded`` names for
    that set (an id of one iteration may name another structure in the next)."""
    from aiida_hpcai.workchains.coordinate import fine_tune_set

    cells = [Structure(Lattice.cubic(length), ['Si'], [[0, 0, 0]]) for length in (2.5, 2.6, 2.7, 2.8)]
    first = StructureSet.from_pymatgen(cells[:2], ids=['a', 'b'], labels={TARGET: [0.1, 0.2]})
    second = StructureSet.from_pymatgen(cells[2:], ids=['a', 'c'], labels={TARGET: [0.3, float('nan')]})
    training = fine_tune_set(orm.Str(TARGET), orm.Dict({'relaxed_1': ['a']}), relaxed_1=first, relaxed_2=second)
    assert training.ids == ['b', 'a']
    assert training.get_label(TARGET).tolist() == [0.2, 0.3]
    assert training.get_pymatgen(1).lattice.a == pytest.approx(2.7)


def test_default_threshold_is_the_calibrated_rule_of_the_shipped_model(property_model):
    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.models.acceptance import shipped_acceptance
    from aiida_hpcai.workchains.coordinate import acceptance_threshold
    from aiida_hpcai.workchains.surrogate import default_sigma_threshold

    shipped = ModelData.pretrained(TARGET)
    threshold, source, record = acceptance_threshold([shipped])
    assert threshold == shipped_acceptance(TARGET)['threshold'] == record['threshold'] and 'calibrated' in source
    # another checkpoint (here the tiny model) is not what the record was calibrated for
    threshold, source, record = acceptance_threshold([property_model])
    assert threshold == default_sigma_threshold(TARGET) and 'surrogate.yaml' in source and record is None


# -- the match discriminator as a second condition of acceptance --------------------------------------------------
@pytest.fixture(scope='module')
def discriminator(code):
    """A tiny match discriminator (3 epochs) trained through hpcai.train on labelled CsCl-type samples."""
    from tests.calculations.test_discriminator_calcjobs import PARAMETERS
    from tests.models.test_discriminator import labelled_samples

    with enable_caching(identifier='aiida.calculations:hpcai.train'):
        _, node = run_get_node(
            CalculationFactory('hpcai.train'),
            code=code,
            structures=StructureSet(labelled_samples(per_reference=4)),
            parameters=orm.Dict(PARAMETERS),
            metadata={'options': OPTIONS},
        )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return node.outputs.model


@pytest.mark.parametrize('limit', [0.0, 1.0])
def test_discriminator_gates_ai_acceptance(code, property_model, discriminator, limit):
    """The same confident prediction is accepted at a match-probability threshold of 0 and sent towards DFT (none
    left in the budget) at 1: the discriminator's probability is below 1 for every structure."""
    candidates = StructureSet.from_pymatgen(
        [Structure(Lattice.cubic(3.1), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])], ids=['MgO-CsCl']
    )
    inputs = {
        'goal': orm.Dict({'composition': 'MgO', 'bounds': {TARGET: [None, 0.0]}, 'dft_budget': 0}),
        'candidates': candidates,
        'screening': orm.Dict(LOOSE),
        'surrogate': {'models': {'m0': property_model}, 'predict': {'code': code, 'metadata': {'options': OPTIONS}}},
        'sigma_threshold': orm.Float(10.0),
        'discriminator': discriminator,
        'discriminator_threshold': orm.Float(limit),
        'continue_without_dft': orm.Bool(True),
    }
    results, node = run_get_node(CoordinateWorkChain, **inputs)
    (entry,) = results['decision_log']['iterations']
    job = orm.load_node(entry['discriminator_pk'])
    assert job.is_finished_ok and job.inputs.models['discriminator'].pk == discriminator.pk
    probability = job.outputs.predictions.get_array('mean')[0]
    assert 0 < probability < 1
    if limit == 0.0:
        assert [item['id'] for item in entry['accepted']] == ['i1-MgO-CsCl']
        assert entry['accepted'][0]['match_probability'] == pytest.approx(probability)
        assert 'i1-MgO-CsCl' in [row['id'] for row in results['table']['rows']]
    else:
        assert entry['accepted'] == [] and [item['id'] for item in entry['not_sent_to_dft']] == ['i1-MgO-CsCl']
        assert entry['not_sent_to_dft'][0]['reason'].startswith('match probability')
        assert entry['not_sent_to_dft'][0]['not_sent'] == 'DFT budget spent'
        assert 'i1-MgO-CsCl' not in [row['id'] for row in results['table']['rows']]


# -- inputs refused before anything runs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    'change, message',
    [
        ({'goal': {'bounds': {'energy_above_hull': [0, 0]}}}, 'cannot evaluate energy_above_hull'),
        ({'goal': {'composition': 'MgO', 'dft_budget': 2}}, 'give `dft_batch.dft`'),
        ({'goal': {'count': 0}}, 'count'),
        ({'no_generator': True}, 'give a generator'),
        ({'fine_tune': {'temperature': 3}}, 'unknown fine-tune setting'),
        ({'generation': {'mode': 'csp'}}, 'unknown generation setting'),
        ({'generation': {'precision': 'half'}}, '`precision` must be one of'),
        ({'generation': {'steps': 0}}, '`steps` must be an integer >= 1'),
        ({'generation': {'formula_units': [0, 1]}}, '`formula_units` must be a list of distinct whole numbers'),
        ({'generation': {'formula_units': 2}}, '`formula_units` must be a list'),
        ({'goal': {'chemsys': 'Li-O', 'dft_budget': 0}, 'generation': {'formula_units': [1, 2]}}, 'has none'),
        ({'discriminator_threshold': 1.5}, 'must be a probability'),
        ({'acceptance': {'threshold': 0.1}}, 'not an acceptance record'),
        ({'acceptance': _json_clean(ACCEPTS_NOTHING), 'sigma_threshold': 0.1}, 'not both'),
    ],
)
def test_inputs_are_refused(code, generator, property_model, change, message):
    goal = change.pop('goal', {'composition': 'MgO', 'dft_budget': 0})
    inputs = _inputs(code, generator, property_model, goal)
    if change.pop('no_generator', False):
        del inputs['generate']
    inputs.update({port: orm.Dict(v) if isinstance(v, dict) else orm.Float(v) for port, v in change.items()})
    with pytest.raises(ValueError, match=message):
        run_get_node(CoordinateWorkChain, **inputs)


def test_raw_dft_formation_energies_are_refused(code, generator, property_model):
    # The surrogate learned MP's corrected formation energies; raw GGA would judge and fine-tune it off scale.
    inputs = _inputs(code, generator, property_model, {'composition': 'MgO', 'dft_budget': 1})
    inputs['dft_batch'] = {
        'dft': {'engine': orm.Str('quantumespresso'), 'code': code, 'energy_correction': orm.Str('none')}
    }
    with pytest.raises(ValueError, match="energy_correction 'none' puts DFT on another scale"):
        run_get_node(CoordinateWorkChain, **inputs)


# -- which uncertain candidates the DFT budget goes to ------------------------------------------------------------
def test_dft_priority_bounds_then_objective_then_match_probability_then_cell_size():
    from aiida_hpcai.agent.goal import Goal
    from aiida_hpcai.workchains.coordinate import dft_priority

    prop = 'formation_energy_per_atom'
    goal = Goal(composition='SiC', bounds={prop: [None, 1.0]}, dft_budget=3)
    candidates = {  # id: (mean, match probability or None without a discriminator, atoms)
        'outside-small': (1.5, 0.9, 2),
        'large-likely': (0.2, 0.8, 8),
        'small-likely': (0.3, 0.8, 2),
        'small-unlikely': (0.1, 0.1, 2),
        'unscored': (0.1, None, 2),
        'not-predicted': (None, 0.95, 4),
    }

    def order(goal, drop_probability=False):
        entries = [
            {'id': key, 'mean': mean, **({} if drop_probability else {'match_probability': probability})}
            for key, (mean, probability, _) in candidates.items()
        ]
        return [
            entry['id'] for entry in sorted(entries, key=lambda e: dft_priority(goal, prop, e, candidates[e['id']][2]))
        ]

    # predicted within the bounds first; among those the likelier match, a missing probability after every scored
    # one; the same order among those without a prediction or predicted outside the bounds
    assert order(goal) == [
        'small-likely',
        'large-likely',
        'small-unlikely',
        'unscored',
        'not-predicted',
        'outside-small',
    ]
    # without a discriminator the smaller cell first, otherwise the order found
    assert order(goal, drop_probability=True) == [
        'small-likely',
        'small-unlikely',
        'unscored',
        'large-likely',
        'outside-small',
        'not-predicted',
    ]
    # the objective comes before the probability
    minimise = goal.model_copy(update={'objective': ['minimize', prop]})
    assert order(minimise)[:3] == ['small-unlikely', 'unscored', 'large-likely']


# -- CSP cells of several formula units ---------------------------------------------------------------------------
def test_csp_compositions_spread_the_samples_over_the_formula_units():
    from aiida_hpcai.workchains.coordinate import csp_compositions

    assert csp_compositions('MgO', 5, [1, 2]) == {'MgO': 3, 'Mg2O2': 2}
    assert csp_compositions('Fe2O3', 2, [2, 1, 4]) == {'Fe4O6': 1, 'Fe2O3': 1}
    assert csp_compositions('SiC', 3, [1]) == {'SiC': 3}


def test_formula_units_reach_the_generator_and_a_cell_too_large_for_it_ends_the_loop(code, generator, property_model):
    # the tiny generator learned 2-atom cells: Mg2O2 is more than it can sample, which the generate job says
    inputs = _inputs(code, generator, property_model, {'composition': 'MgO', 'dft_budget': 0})
    inputs.update(
        generation=orm.Dict({'steps': 10, 'formula_units': [1, 2]}),
        samples_per_iteration=orm.Int(3),
        max_iterations=orm.Int(1),
    )
    _, node = run_get_node(CoordinateWorkChain, **inputs)
    (job,) = _called(node, 'aiida.calculations:hpcai.generate')
    assert job.inputs.parameters['compositions'] == {'MgO': 2, 'Mg2O2': 1}
    assert node.exit_status == CoordinateWorkChain.exit_codes.ERROR_GENERATE_FAILED.status
    assert 'Mg2O2 has 4 atoms; the model was trained on at most 2' in node.exit_message


# -- ab initio generation restricted to the Goal's elements ------------------------------------------------------
def test_chemsys_goal_generates_within_its_elements(code, generator, property_model):
    # a count the look-up cannot fill: Li-O entries that earlier test modules stored would otherwise end the loop
    # before it generates (0 iterations, in the fresh-clone CI)
    goal = {'chemsys': 'Li-O', 'count': 1000, 'dft_budget': 0}
    inputs = _inputs(
        code,
        generator,
        property_model,
        goal,
        samples_per_iteration=orm.Int(4),
        max_iterations=orm.Int(1),
        sigma_threshold=orm.Float(10.0),
    )
    results, node = run_get_node(CoordinateWorkChain, **inputs)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    (job,) = _called(node, 'aiida.calculations:hpcai.generate')
    parameters = job.inputs.parameters.get_dict()
    assert (parameters['mode'], parameters['elements']) == ('abinitio', ['Li', 'O'])
    assert 'required_elements' not in parameters  # the default: all of them, the Li-O system
    structures = job.outputs.structures
    ids = structures.ids + [row['id'] for row in structures.get_skipped()]
    assert len(ids) == 4 and {operations._reduced(i.split('#')[0])[1] for i in ids} == {frozenset({'Li', 'O'})}
    (entry,) = results['decision_log']['iterations']
    assert entry['elements'] == ['Li', 'O'] and entry['outside_goal'] == []


@pytest.mark.parametrize(
    'goal, expected',
    [
        ({'chemsys': 'Fe-O'}, {'elements': ['Fe', 'O']}),
        ({'chemsys': 'Fe-O', 'must_include': ['Fe']}, {'elements': ['Fe', 'O']}),
        ({'must_include': ['Si']}, {'required_elements': ['Si']}),
        ({'must_include': ['Li', 'O'], 'exclude': ['Co']}, {'required_elements': ['Li', 'O']}),
        ({'exclude': ['Co']}, {}),
    ],
)
def test_goal_elements_of_ab_initio_generation(goal, expected):
    from aiida_hpcai.agent.goal import goal_from_dict
    from aiida_hpcai.workchains.coordinate import goal_elements

    assert goal_elements(goal_from_dict(goal)) == expected
