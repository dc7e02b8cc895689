"""The match discriminator (a built-in registry architecture) through the real ``hpcai.train`` and ``hpcai.predict``
CalcJobs: a calibrated classifier trained on a labelled StructureSet, then match probabilities as predictions."""

import shutil

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models.discriminator import MATCH_LABEL, RELIABILITY_FIGURE
from tests.models.test_discriminator import labelled_samples

TrainCalculation = CalculationFactory('hpcai.train')
PredictCalculation = CalculationFactory('hpcai.predict')
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}}
PARAMETERS = {
    'architecture': 'discriminator',
    'target': MATCH_LABEL,
    'model_config': 'tiny',
    'epochs': 3,
    'batch_size': 8,
    'learning_rate': 5e-3,
    'split': {'fractions': [0.5, 0.5, 0.0], 'seed': 0},
    'calibration_bins': 5,
}


@pytest.fixture
def code(aiida_code_installed):
    executable = shutil.which('hpcai-model')
    if executable is None:
        pytest.skip('the hpcai-model program is not installed')
    return aiida_code_installed(label='hpcai-model-discriminator', filepath_executable=executable)


@pytest.fixture
def samples():
    arrays = labelled_samples(per_reference=4)
    return StructureSet(arrays).store()


def test_discriminator_trains_and_predicts_match_probabilities_through_the_calcjobs(samples, code):
    _, train = run_get_node(
        TrainCalculation,
        code=code,
        structures=samples,
        parameters=orm.Dict(PARAMETERS),
        metadata={'options': OPTIONS},
    )
    assert train.is_finished_ok, (train.exit_status, train.exit_message)
    model = train.outputs.model
    assert (model.architecture, model.target) == ('discriminator', MATCH_LABEL)
    metrics = train.outputs.metrics.get_dict()
    assert metrics['temperature'] > 0 and metrics['calibration_bins'] == 5
    assert len(metrics['val']['uncalibrated']) == 2 and 0.0 <= metrics['val']['ece'] <= 1.0
    assert RELIABILITY_FIGURE in train.outputs.plots.base.repository.list_object_names()

    _, predict = run_get_node(
        PredictCalculation,
        code=code,
        structures=samples,
        models={'discriminator': model},
        metadata={'options': OPTIONS},
    )
    assert predict.is_finished_ok, (predict.exit_status, predict.exit_message)
    probability = predict.outputs.predictions.get_array('mean')
    assert probability.shape == (samples.count,) and np.all((probability > 0) & (probability < 1))
    assert predict.outputs.predictions.base.attributes.get('target') == MATCH_LABEL


def test_discriminator_parameters_are_checked_before_a_job_runs(samples, code):
    runner = get_manager().get_runner()
    wrong = [
        ({**PARAMETERS, 'mc_samples': 4}, r"unknown parameter.*'discriminator'"),
        ({**PARAMETERS, 'target': 'energy'}, "no label 'energy'"),
        ({**PARAMETERS, 'model_config': 'huge'}, r"preset of discriminator \['cpu', 'paper', 'tiny'\]"),
    ]
    for parameters, message in wrong:
        with pytest.raises(ValueError, match=message):
            instantiate_process(
                runner, TrainCalculation, code=code, structures=samples, parameters=orm.Dict(parameters)
            )
