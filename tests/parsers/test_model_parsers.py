"""``hpcai.train`` / ``hpcai.predict`` parsers on hand-made output folders, as the program would leave them."""

import io
import json

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.plugins import CalculationFactory, ParserFactory
from pymatgen.core import Lattice, Structure

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet

PredictParser = ParserFactory('hpcai.predict')
TrainParser = ParserFactory('hpcai.train')
PredictCalculation = CalculationFactory('hpcai.predict')
TrainCalculation = CalculationFactory('hpcai.train')


@pytest.fixture
def structure_set():
    structures = [Structure(Lattice.cubic(a), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]]) for a in (5.5, 5.6, 5.7)]
    return StructureSet.from_pymatgen(
        structures, ids=['a', 'b', 'c'], labels={'formation_energy_per_atom': [-2.0, -2.1, -2.05]}
    ).store()


def _calcjob_node(entry_point, computer, inputs, retrieved_files):
    """A finished CalcJobNode with ``inputs`` linked and ``retrieved_files`` (name -> bytes) as its retrieved folder."""
    node = orm.CalcJobNode(computer=computer, process_type=f'aiida.calculations:{entry_point}')
    node.set_option('resources', {'num_machines': 1})
    for label, value in inputs.items():
        node.base.links.add_incoming(value, link_type=LinkType.INPUT_CALC, link_label=label)
    node.store()
    retrieved = orm.FolderData()
    for name, content in retrieved_files.items():
        retrieved.base.repository.put_object_from_filelike(io.BytesIO(content), name)
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
    retrieved.store()
    return node


def _predictions_npz(mean, sigma, status, reason) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=np.asarray(mean, float),
        sigma=np.asarray(sigma, float),
        status=np.asarray(status, dtype=str),
        reason=np.asarray(reason, dtype=str),
    )
    return buffer.getvalue()


def _summary(n, n_ok) -> bytes:
    return json.dumps(
        {
            'target': 'formation_energy_per_atom',
            'units': 'eV/atom',
            'n_structures': n,
            'n_ok': n_ok,
            'n_failed': n - n_ok,
            'seconds': 0.5,
            'structures_per_second': n / 0.5,
            'device': 'cpu',
        }
    ).encode()


@pytest.fixture
def predict_node(aiida_localhost, structure_set, tmp_path):
    def factory(retrieved, temporary=None):
        node = _calcjob_node('hpcai.predict', aiida_localhost, {'structures': structure_set}, retrieved)
        folder = tmp_path / 'temporary'
        folder.mkdir(exist_ok=True)
        for name, content in (temporary or {}).items():
            (folder / name).write_bytes(content)
        return node, str(folder)

    return factory


def test_predict_parser_keeps_per_structure_failures(predict_node):
    npz = _predictions_npz(
        [-2.0, np.nan, -2.1], [0.01, np.nan, 0.3], ['ok', 'failed', 'ok'], ['', 'non-finite coordinates', '']
    )
    node, temporary = predict_node({'summary.json': _summary(3, 2)}, {'predictions.npz': npz})
    results, calcfunction = PredictParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == 0
    predictions = results['predictions']
    assert predictions.get_array('status').tolist() == ['ok', 'failed', 'ok']
    assert predictions.get_array('reason')[1] == 'non-finite coordinates'
    np.testing.assert_allclose(predictions.get_array('mean')[[0, 2]], [-2.0, -2.1])
    assert predictions.base.attributes.get('n_failed') == 1
    assert results['summary']['n_ok'] == 2


def test_predict_parser_all_failed_is_an_exit_code_with_outputs(predict_node):
    npz = _predictions_npz([np.nan] * 3, [np.nan] * 3, ['failed'] * 3, ['unknown element Og'] * 3)
    node, temporary = predict_node({'summary.json': _summary(3, 0)}, {'predictions.npz': npz})
    results, calcfunction = PredictParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == PredictCalculation.exit_codes.ERROR_NO_STRUCTURE_PREDICTED.status
    assert 'unknown element Og' in calcfunction.exit_message
    assert 'predictions' in results


def test_predict_parser_refuses_misaligned_predictions(predict_node):
    npz = _predictions_npz([-2.0, -2.1], [0.1, 0.1], ['ok', 'ok'], ['', ''])
    node, temporary = predict_node({'summary.json': _summary(2, 2)}, {'predictions.npz': npz})
    _, calcfunction = PredictParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)
    assert calcfunction.exit_status == PredictCalculation.exit_codes.ERROR_OUTPUT_INCONSISTENT.status


def test_predict_parser_missing_predictions(predict_node):
    node, temporary = predict_node({'summary.json': _summary(3, 3)})
    _, calcfunction = PredictParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)
    assert calcfunction.exit_status == PredictCalculation.exit_codes.ERROR_OUTPUT_FILES_MISSING.status
    assert 'predictions.npz' in calcfunction.exit_message


@pytest.mark.parametrize(
    'code, label',
    [
        ('checkpoint_mismatch', 'ERROR_CHECKPOINT_MISMATCH'),
        ('incompatible_models', 'ERROR_INCOMPATIBLE_MODELS'),
        ('nan_output', 'ERROR_NAN_OUTPUT'),
        ('out_of_memory', 'ERROR_OUT_OF_MEMORY'),
        ('missing_label', 'ERROR_MISSING_LABEL'),
        ('unexpected_error', 'ERROR_PROGRAM_UNEXPECTED'),
        ('invalid_config', 'ERROR_INVALID_CONFIG'),
        ('invalid_split', 'ERROR_INVALID_SPLIT'),
        ('something_new', 'ERROR_PROGRAM_UNKNOWN_ERROR'),
    ],
)
def test_error_file_is_read_first(predict_node, code, label):
    error = json.dumps({'error': code, 'message': 'details from the program'}).encode()
    node, temporary = predict_node({'error.json': error})
    results, calcfunction = PredictParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == PredictCalculation.exit_codes[label].status
    assert 'details from the program' in calcfunction.exit_message
    assert not results


def test_error_file_wins_over_complete_looking_outputs(predict_node):
    error = json.dumps({'error': 'checkpoint_mismatch', 'message': 'sha256 differs'}).encode()
    npz = _predictions_npz([1.0] * 3, [0.0] * 3, ['ok'] * 3, [''] * 3)
    node, temporary = predict_node({'error.json': error, 'summary.json': _summary(3, 3)}, {'predictions.npz': npz})
    results, calcfunction = PredictParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == PredictCalculation.exit_codes.ERROR_CHECKPOINT_MISMATCH.status
    assert not results


def test_program_errors_leave_no_outputs(predict_node):
    """NaN from the model and out of memory: the exit code, and no predictions even where a file was left behind."""
    npz = _predictions_npz([np.nan] * 3, [np.nan] * 3, ['failed'] * 3, ['prediction is not finite'] * 3)
    for code, label in (('nan_output', 'ERROR_NAN_OUTPUT'), ('out_of_memory', 'ERROR_OUT_OF_MEMORY')):
        error = json.dumps({'error': code, 'message': 'the program says why'}).encode()
        node, temporary = predict_node({'error.json': error, 'summary.json': _summary(3, 0)}, {'predictions.npz': npz})
        results, calcfunction = PredictParser.parse_from_node(
            node, store_provenance=False, retrieved_temporary_folder=temporary
        )
        assert calcfunction.exit_status == PredictCalculation.exit_codes[label].status
        assert 'the program says why' in calcfunction.exit_message
        assert not results


def test_unreadable_error_file(predict_node):
    node, temporary = predict_node({'error.json': b'{"error": '})
    _, calcfunction = PredictParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)
    assert calcfunction.exit_status == PredictCalculation.exit_codes.ERROR_OUTPUT_FILES_UNREADABLE.status


# -- train -------------------------------------------------------------------------------------
METADATA = {
    'architecture': 'crysformer',
    'hyperparameters': {'hidden': 16, 'layers': 1},
    'target': 'formation_energy_per_atom',
    'units': 'eV/atom',
    'metrics': {'test_mae': 0.4},
}
METRICS = {'train_mae': 0.3, 'val_mae': 0.35, 'test_mae': 0.4, 'history': [[1, 0.9, 0.8]]}


@pytest.fixture
def train_node(aiida_localhost, structure_set, tmp_path):
    def factory(retrieved, temporary, target='formation_energy_per_atom'):
        inputs = {'structures': structure_set, 'parameters': orm.Dict({'target': target}).store()}
        node = _calcjob_node('hpcai.train', aiida_localhost, inputs, retrieved)
        for name, content in temporary.items():
            (tmp_path / name).write_bytes(content)
        return node, str(tmp_path)

    return factory


def test_train_parser_builds_model_node(train_node, structure_set):
    node, temporary = train_node(
        {'metadata.json': json.dumps(METADATA).encode(), 'metrics.json': json.dumps(METRICS).encode()},
        {'model.pt': b'trained weights', 'parity.png': b'\x89PNG fake'},
    )
    results, calcfunction = TrainParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == 0
    model = results['model']
    assert isinstance(model, ModelData)
    assert model.get_content(mode='rb') == b'trained weights'
    assert model.training_set_uuid == structure_set.uuid
    assert (model.architecture, model.target, model.units) == ('crysformer', 'formation_energy_per_atom', 'eV/atom')
    assert model.hyperparameters == METADATA['hyperparameters'] and model.metrics == METADATA['metrics']
    assert results['metrics']['val_mae'] == 0.35
    assert results['plots'].base.repository.list_object_names() == ['parity.png']


def test_train_parser_stores_non_finite_metrics_as_none(train_node):
    metrics = {**METRICS, 'val': {'spearman_abs_error_sigma': float('nan'), 'gaussian_nll': float('inf')}}
    metadata = {**METADATA, 'metrics': metrics}
    node, temporary = train_node(
        {'metadata.json': json.dumps(metadata).encode(), 'metrics.json': json.dumps(metrics).encode()},
        {'model.pt': b'w'},
    )
    results, calcfunction = TrainParser.parse_from_node(
        node, store_provenance=True, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == 0
    assert results['model'].is_stored
    assert results['metrics']['val'] == {'spearman_abs_error_sigma': None, 'gaussian_nll': None}


def test_train_parser_missing_checkpoint(train_node):
    node, temporary = train_node(
        {'metadata.json': json.dumps(METADATA).encode(), 'metrics.json': json.dumps(METRICS).encode()}, {}
    )
    results, calcfunction = TrainParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_OUTPUT_FILES_MISSING.status
    assert 'model.pt' in calcfunction.exit_message and not results


def test_train_parser_target_mismatch(train_node):
    node, temporary = train_node(
        {'metadata.json': json.dumps(METADATA).encode(), 'metrics.json': json.dumps(METRICS).encode()},
        {'model.pt': b'w'},
        target='band_gap',
    )
    _, calcfunction = TrainParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_OUTPUT_INCONSISTENT.status


def test_train_parser_missing_label_error(train_node):
    error = json.dumps({'error': 'missing_label', 'message': 'no label__formation_energy_per_atom'}).encode()
    node, temporary = train_node({'error.json': error}, {})
    _, calcfunction = TrainParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_MISSING_LABEL.status
