"""``hpcai.surrogate``: the split at sigma_threshold, input validation, and a real run end to end.

The end-to-end tests train a tiny model with the real ``hpcai.train`` CalcJob on 40 perov_5
structures and run the real ``hpcai-model`` program through the WorkChain on localhost.
"""

import json

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, WorkflowFactory
from pymatgen.core import Lattice, Structure

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models import structure_io
from aiida_hpcai.workchains.structures import link_label, select_structures, structures_from_nodes
from aiida_hpcai.workchains.surrogate import PREDICTED_MEAN, PREDICTED_SIGMA, classify_predictions
from tests.surrogate_helpers import model_program_code, needs_model_program, perov_structures, train_tiny_model

SurrogateWorkChain = WorkflowFactory('hpcai.surrogate')
PredictCalculation = CalculationFactory('hpcai.predict')


def _rock_salt(a, species=('Na', 'Cl')):
    return Structure(Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_classify_predictions_splits_at_the_threshold():
    structures = StructureSet.from_pymatgen([_rock_salt(a) for a in (5.5, 5.6, 5.7, 5.8)], ids=['a', 'b', 'c', 'd'])
    raw = orm.ArrayData()
    raw.set_array('mean', np.array([-2.0, -2.1, np.nan, -1.9]))
    raw.set_array('sigma', np.array([0.05, 0.2, np.nan, 0.1]))
    raw.set_array('status', np.array(['ok', 'ok', 'failed', 'ok']))
    raw.set_array('reason', np.array(['', '', 'unknown element', '']))
    raw.base.attributes.set_many({'target': 'formation_energy_per_atom', 'units': 'eV/atom'})

    results = classify_predictions(structures, raw, orm.Float(0.1))

    classified = results['classified_predictions']
    assert classified.get_array('confident').tolist() == [True, False, False, True]
    assert classified.get_array('reason').tolist() == ['', '', 'unknown element', '']
    # The ids travel with the predictions: as an aligned array, and as an attribute QueryBuilder can filter on.
    assert classified.get_array('ids').tolist() == ['a', 'b', 'c', 'd'] == classified.base.attributes.get('ids')
    assert orm.QueryBuilder().append(orm.ArrayData, filters={'attributes.ids': {'contains': ['c']}}).count() == 1
    # What needs DFT carries its ids and what was predicted for it, so a parent can rank by sigma.
    needs_dft = results['needs_dft']
    assert needs_dft.ids == ['b', 'c']
    assert needs_dft.get_label(PREDICTED_MEAN)[0] == -2.1 and np.isnan(needs_dft.get_label(PREDICTED_MEAN)[1])
    assert needs_dft.get_label(PREDICTED_SIGMA)[0] == 0.2 and np.isnan(needs_dft.get_label(PREDICTED_SIGMA)[1])
    summary = results['summary'].get_dict()
    assert (summary['n_confident'], summary['n_needs_dft'], summary['n_failed']) == (2, 2, 1)
    assert summary['needs_dft_ids'] == ['b', 'c'] and summary['units'] == 'eV/atom'
    # Provenance: the split is a calcfunction with the structures and raw predictions as inputs.
    creator = results['needs_dft'].creator
    assert {link.link_label for link in creator.base.links.get_incoming().all()} == {
        'structures',
        'raw_predictions',
        'sigma_threshold',
    }


def test_classify_predictions_all_confident_gives_empty_needs_dft():
    structures = StructureSet.from_pymatgen([_rock_salt(5.5)], ids=['a'])
    raw = orm.ArrayData()
    for name, value in {'mean': [-2.0], 'sigma': [0.0]}.items():
        raw.set_array(name, np.array(value))
    raw.set_array('status', np.array(['ok']))
    raw.set_array('reason', np.array(['']))
    results = classify_predictions(structures, raw, orm.Float(0.1))
    assert results['needs_dft'].count == 0 and results['needs_dft'].ids == []
    assert results['needs_dft'].label_names == [PREDICTED_MEAN, PREDICTED_SIGMA]


@pytest.fixture
def any_model():
    return ModelData(b'weights', filename='model.pt', target='heat_ref', units='eV/atom').store()


def test_inputs_need_exactly_one_kind_of_structures(aiida_code_installed, any_model):
    code = aiida_code_installed(label='hpcai-model-validation')
    structure_set = StructureSet.from_pymatgen([_rock_salt(5.6)])
    node = orm.StructureData(pymatgen=_rock_salt(5.6))
    common = {'models': {'m': any_model}, 'sigma_threshold': orm.Float(0.1), 'predict': {'code': code}}
    with pytest.raises(ValueError, match='exactly one of'):
        run_get_node(SurrogateWorkChain, structures=structure_set, structure_nodes={'x': node}, **common)
    with pytest.raises(ValueError, match='exactly one of'):
        run_get_node(SurrogateWorkChain, **common)


def test_threshold_required_for_targets_without_default(aiida_code_installed, any_model):
    code = aiida_code_installed(label='hpcai-model-validation')
    with pytest.raises(ValueError, match="no default `sigma_threshold` for target 'heat_ref'"):
        run_get_node(
            SurrogateWorkChain,
            structures=StructureSet.from_pymatgen([_rock_salt(5.6)]),
            models={'m': any_model},
            predict={'code': code},
        )


def test_structure_nodes_that_are_no_crystals_stop_before_predicting(aiida_code_installed, any_model):
    code = aiida_code_installed(label='hpcai-model-validation')
    overlapping = Structure(Lattice.cubic(5.6), ['Na', 'Cl'], [[0, 0, 0], [0.01, 0, 0]])
    _, node = run_get_node(
        SurrogateWorkChain,
        structure_nodes={'a': orm.StructureData(pymatgen=overlapping)},
        models={'m': any_model},
        sigma_threshold=orm.Float(0.1),
        predict={'code': code},
    )
    assert node.exit_status == SurrogateWorkChain.exit_codes.ERROR_NO_VALID_STRUCTURE.status
    assert 'overlapping atoms' in node.exit_message
    assert node.outputs.structures.count == 0
    assert not [called for called in node.called_descendants if 'hpcai.predict' in called.process_type]


# -- end to end with the real program ------------------------------------------------------------
def _with_broken_structure(structures: StructureSet, broken_index: int) -> StructureSet:
    """A copy of ``structures`` where one structure has NaN coordinates, as a corrupt import could leave it."""
    arrays = structures.arrays
    positions = arrays.positions.copy()
    start, stop = arrays.offsets[broken_index], arrays.offsets[broken_index + 1]
    positions[start:stop] = np.nan
    broken = structure_io.StructureArrays(
        numbers=arrays.numbers,
        positions=positions,
        cells=arrays.cells,
        pbc=arrays.pbc,
        offsets=arrays.offsets,
        ids=arrays.ids,
    )
    return StructureSet(broken)


@needs_model_program
def test_train_then_surrogate_end_to_end(aiida_code_installed, shared_data_dir):
    model_code = model_program_code(aiida_code_installed)
    perov_training_set = perov_structures(shared_data_dir)
    train = train_tiny_model(model_code, perov_training_set)
    model = train.outputs.model
    assert model.training_set_uuid == perov_training_set.uuid and model.target == 'heat_ref'
    assert model.get_verified_content()  # the checkpoint survived the temporary retrieval intact
    assert 'val' in json.dumps(train.outputs.metrics.get_dict())

    to_predict = _with_broken_structure(perov_training_set.subset(range(5)), broken_index=2).store()
    # A tiny model's sigma says little; with a threshold no sigma reaches, only the failure needs DFT (the
    # split at the threshold itself is tested above on hand-made predictions).
    _, node = run_get_node(
        SurrogateWorkChain,
        structures=to_predict,
        models={'tiny': model},
        sigma_threshold=orm.Float(1e6),
        predict={'code': model_code},
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    predictions = node.outputs.classified_predictions
    assert predictions.get_array('ids').tolist() == to_predict.ids
    status = predictions.get_array('status').tolist()
    assert status == ['ok', 'ok', 'failed', 'ok', 'ok']
    assert predictions.get_array('reason')[2] != ''
    assert np.isfinite(predictions.get_array('mean')[[0, 1, 3, 4]]).all()
    assert predictions.get_array('confident').tolist() == [True, True, False, True, True]
    assert node.outputs.needs_dft.ids == [to_predict.ids[2]]
    assert node.outputs.summary['n_failed'] == 1

    # Provenance: structures -> hpcai.predict CalcJob -> raw predictions -> split -> WorkChain outputs.
    query = orm.QueryBuilder()
    query.append(StructureSet, filters={'uuid': to_predict.uuid}, tag='structures')
    query.append(
        orm.CalcJobNode,
        with_incoming='structures',
        tag='calcjob',
        filters={'process_type': 'aiida.calculations:hpcai.predict'},
    )
    query.append(ModelData, with_outgoing='calcjob', filters={'uuid': model.uuid})
    query.append(orm.ArrayData, with_incoming='calcjob', edge_filters={'label': 'predictions'}, tag='raw')
    query.append(orm.CalcFunctionNode, with_incoming='raw', tag='split')
    query.append(orm.ArrayData, with_incoming='split', filters={'uuid': predictions.uuid})
    assert query.count() == 1
    assert node.outputs.needs_dft.creator.uuid == predictions.creator.uuid


@needs_model_program
def test_nothing_predicted_sends_everything_to_dft(aiida_code_installed, shared_data_dir):
    code = model_program_code(aiida_code_installed)
    model = train_tiny_model(code, perov_structures(shared_data_dir)).outputs.model
    broken = _with_broken_structure(perov_structures(shared_data_dir).subset([0]), broken_index=0).store()

    _, node = run_get_node(
        SurrogateWorkChain,
        structures=broken,
        models={'tiny': model},
        sigma_threshold=orm.Float(1e6),
        predict={'code': code},
    )

    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    predict = node.base.links.get_outgoing(link_label_filter='predict').one().node
    assert not predict.is_finished_ok  # the CalcJob says nothing was predicted ...
    assert node.outputs.needs_dft.ids == broken.ids  # ... and the WorkChain sends the structure to DFT
    assert node.outputs.classified_predictions.get_array('reason')[0] != ''


@needs_model_program
def test_failed_predict_job_is_an_exit_code(aiida_code_installed):
    code = model_program_code(aiida_code_installed)
    not_a_checkpoint = ModelData(
        b'these bytes are no torch checkpoint', filename='model.pt', target='heat_ref', units='eV/atom'
    ).store()
    salt = orm.StructureData(pymatgen=_rock_salt(5.6))

    # StructureData input this time: gathered into a StructureSet by a calcfunction before the CalcJob runs.
    _, node = run_get_node(
        SurrogateWorkChain,
        structure_nodes={'salt': salt},
        models={'bad': not_a_checkpoint},
        sigma_threshold=orm.Float(0.1),
        predict={'code': code},
    )

    assert node.exit_status == SurrogateWorkChain.exit_codes.ERROR_PREDICT_FAILED.status
    assert str(PredictCalculation.exit_codes.ERROR_CHECKPOINT_MISMATCH.status) in node.exit_message
    job = max(node.called_descendants, key=lambda child: child.pk)
    assert f'PredictCalculation<{job.pk}> ended with exit status {job.exit_status}: ' in node.exit_message
    assert 'predictions' not in node.outputs
    gathered = node.outputs.structures
    assert gathered.ids == ['salt']
    assert salt.uuid in {source.uuid for source in gathered.creator.base.links.get_incoming().all_nodes()}
    predict = node.base.links.get_outgoing(link_label_filter='predict').one().node
    assert predict.inputs.structures.uuid == gathered.uuid


def test_structure_nodes_are_gathered_with_provenance():
    nodes = {
        'salt': orm.StructureData(pymatgen=_rock_salt(5.6)),
        'periclase': orm.StructureData(pymatgen=_rock_salt(4.2, ('Mg', 'O'))),
    }
    structure_set = structures_from_nodes(**nodes)
    assert structure_set.ids == ['periclase', 'salt']
    assert [s.composition.reduced_formula for s in structure_set] == ['MgO', 'NaCl']
    incoming = structure_set.creator.base.links.get_incoming().all()
    assert {link.node.uuid for link in incoming} == {node.uuid for node in nodes.values()}


def test_missing_predict_code_is_a_validation_error_naming_the_port(any_model):
    with pytest.raises(ValueError, match='`predict.code` is required'):
        run_get_node(
            SurrogateWorkChain,
            structures=StructureSet.from_pymatgen([_rock_salt(5.6)]),
            models={'m': any_model},
            sigma_threshold=orm.Float(0.1),
        )


def test_ids_that_are_no_link_labels_are_refused_up_front(aiida_code_installed, any_model):
    code = aiida_code_installed(label='hpcai-model-validation')
    silicon = orm.StructureData(pymatgen=_rock_salt(5.4, ('Si', 'Si')))
    with pytest.raises(ValueError, match="'mp-149' -> 'mp_149'"):
        run_get_node(
            SurrogateWorkChain,
            structure_nodes={'mp-149': silicon},
            models={'m': any_model},
            sigma_threshold=orm.Float(0.1),
            predict={'code': code},
        )


@pytest.mark.parametrize(
    'structure_id, label',
    [('mp-149', 'mp_149'), ('agm002153', 'agm002153'), ('2153', 'id_2153'), ('a--b..c_', 'a_b_c'), ('_x', 'x')],
)
def test_link_label(structure_id, label):
    from aiida.common.links import validate_link_label

    assert link_label(structure_id) == label
    validate_link_label(label)


def test_select_keeps_ids_and_provenance():
    structures = StructureSet.from_pymatgen(
        [_rock_salt(5.6), _rock_salt(4.2, ('Mg', 'O')), _rock_salt(5.4, ('Si', 'Si'))],
        ids=['mp-22862', 'mp-1265', 'mp-149'],
        labels={'energy': [1.0, 2.0, 3.0]},
    ).store()

    results = select_structures(structures, orm.List(['mp-149', 'mp-22862']))

    nodes = results['structures']
    assert sorted(nodes) == ['mp_149', 'mp_22862']
    assert nodes['mp_149'].label == 'mp-149' and nodes['mp_149'].get_formula() == 'Si2'
    assert results['subset'].ids == ['mp-149', 'mp-22862']
    assert results['subset'].get_label('energy').tolist() == [3.0, 1.0]
    # Each StructureData was created from the set by the calcfunction: the graph stays connected.
    creator = nodes['mp_149'].creator
    assert creator.process_label == 'select_structures' and creator.inputs.structures.uuid == structures.uuid
    assert {link.link_label for link in creator.base.links.get_outgoing().all()} == {
        'structures__mp_149',
        'structures__mp_22862',
        'subset',
    }
    # ... and back into one set, ids kept: the key is the link label, the id the node's label.
    assert structures_from_nodes(**nodes).ids == ['mp-149', 'mp-22862']

    with pytest.raises(ValueError, match='not in the StructureSet'):
        select_structures(structures, orm.List(['mp-0']))


def test_select_is_the_registered_calcfunction():
    from aiida.plugins import CalculationFactory

    assert CalculationFactory('hpcai.structures.select') is select_structures
