"""A new architecture through the real ``hpcai.train`` / ``hpcai.predict`` CalcJobs, with no change to them.

The toy architecture (``tests/toy_architecture.py``) is registered as a plugin package registers one: an
entry point in the group ``aiida_hpcai.architectures``. This process finds it on ``sys.path``; the job's
``hpcai-model`` on ``PYTHONPATH``, set through the job's ``environment_variables`` option.
"""

import os
import pathlib
import shutil

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models import registry
from tests import toy_architecture
from tests.samples import make_structures

TrainCalculation = CalculationFactory('hpcai.train')
PredictCalculation = CalculationFactory('hpcai.predict')
VALUES = [-1.0, -2.5, 0.25]  # as many compositions as structures: a linear fit reproduces them


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = toy_architecture.install(tmp_path / 'site')
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture
def structures():
    return StructureSet.from_pymatgen(
        make_structures(), ids=['NaCl', 'BaTiO3', 'Si'], labels={'energy': VALUES}
    ).store()


@pytest.fixture
def code(aiida_code_installed):
    executable = shutil.which('hpcai-model')
    if executable is None:
        pytest.skip('the hpcai-model program is not installed')
    return aiida_code_installed(label='hpcai-model-toy', filepath_executable=executable)


def _options(site) -> dict:
    repository = pathlib.Path(toy_architecture.__file__).resolve().parent.parent  # where `tests` is importable
    pythonpath = os.pathsep.join([str(site), str(repository)])
    return {'environment_variables': {'PYTHONPATH': pythonpath}}


def test_a_registered_architecture_trains_and_predicts_through_the_calcjobs(site, structures, code):
    parameters = {'architecture': 'toy_linear', 'target': 'energy', 'units': 'eV', 'ridge': 1e-8}
    _, train = run_get_node(
        TrainCalculation,
        code=code,
        structures=structures,
        parameters=orm.Dict(parameters),
        metadata={'options': _options(site)},
    )
    assert train.is_finished_ok, (train.exit_status, train.exit_message)
    model = train.outputs.model
    assert (model.architecture, model.target, model.units) == ('toy_linear', 'energy', 'eV')
    assert model.training_set_uuid == structures.uuid
    assert train.outputs.plots.base.repository.list_object_names() == ['weights.png']

    _, predict = run_get_node(
        PredictCalculation,
        code=code,
        structures=structures,
        models={'toy': model},
        metadata={'options': _options(site)},
    )
    assert predict.is_finished_ok, (predict.exit_status, predict.exit_message)
    np.testing.assert_allclose(predict.outputs.predictions.get_array('mean'), VALUES, atol=1e-4)
    assert predict.outputs.summary['target'] == 'energy'


def _instantiate(process_class, **inputs):
    return instantiate_process(get_manager().get_runner(), process_class, **inputs)


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'architecture': 'nope', 'target': 'energy'}, r"unknown architecture 'nope'; known: \[.*'crysformer'"),
        ({'architecture': 'toy_linear', 'target': 'energy', 'epochs': 3}, r"unknown parameter.*'toy_linear'"),
        ({'architecture': 'toy_linear', 'units': 'eV'}, 'must name the `target`'),
        ({'target': 'energy', 'model_config': 'huge'}, r"preset of crysformer \['cpu', 'paper', 'tiny'\]"),
    ],
)
def test_train_validates_the_architecture_and_its_parameters(site, structures, code, parameters, message):
    with pytest.raises(ValueError, match=message):
        _instantiate(TrainCalculation, code=code, structures=structures, parameters=orm.Dict(parameters))


def test_the_known_architectures_come_from_the_registry(site):
    assert {'crysformer', 'toy_linear'} <= set(registry.architectures())


def _labelled_model(content: bytes, architecture: str):
    from aiida_hpcai.data.model import ModelData

    return ModelData(content, architecture=architecture, target='energy', units='eV').store()


def test_predict_and_fine_tuning_check_the_models_architectures(site, structures, code):
    toy, crysformer = _labelled_model(b'toy', 'toy_linear'), _labelled_model(b'crysformer', 'crysformer')
    with pytest.raises(ValueError, match=r"different architectures.*\['crysformer', 'toy_linear'\]"):
        _instantiate(PredictCalculation, code=code, structures=structures, models={'a': toy, 'b': crysformer})
    generator = _labelled_model(b'generator', 'equicsp')
    with pytest.raises(ValueError, match="architecture 'equicsp' cannot predict"):
        _instantiate(PredictCalculation, code=code, structures=structures, models={'g': generator})
    parameters = orm.Dict({'architecture': 'toy_linear', 'target': 'energy'})
    with pytest.raises(ValueError, match="parent model is a 'crysformer', not a 'toy_linear'"):
        _instantiate(TrainCalculation, code=code, structures=structures, parameters=parameters, parent_model=crysformer)
