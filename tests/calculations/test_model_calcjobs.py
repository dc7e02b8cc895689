"""``hpcai.train`` / ``hpcai.predict``: input validation and what lands in the job's working directory."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory
from pymatgen.core import Lattice, Structure

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet

PredictCalculation = CalculationFactory('hpcai.predict')
TrainCalculation = CalculationFactory('hpcai.train')


@pytest.fixture
def structure_set():
    structures = [
        Structure(Lattice.cubic(5.43), ['Si', 'Si'], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        Structure(Lattice.cubic(4.21), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(5.64), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]
    labels = {'formation_energy_per_atom': [0.0, -3.0, -2.1]}
    return StructureSet.from_pymatgen(structures, ids=['Si', 'MgO', 'NaCl'], labels=labels).store()


def _model(content: bytes, target='formation_energy_per_atom', units='eV/atom') -> ModelData:
    """A ModelData with arbitrary bytes: these tests never load it, only copy it."""
    return ModelData(content, filename='model.pt', architecture='crysformer', target=target, units=units).store()


@pytest.fixture
def code(aiida_code_installed):
    return aiida_code_installed(label='hpcai-model', filepath_executable=shutil.which('hpcai-model') or '/bin/true')


def _prepare(process_class, inputs):
    process = instantiate_process(get_manager().get_runner(), process_class, **inputs)
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        config = json.loads(pathlib.Path(folder.get_abs_path('config.json')).read_text())
        listing = sorted(folder.get_content_list())
    return calcinfo, config, listing


def test_predict_copies_checkpoints_and_structures_without_storing_them_again(code, structure_set):
    models = {'m0': _model(b'first member'), 'm1': _model(b'second member')}
    inputs = {
        'code': code,
        'structures': structure_set,
        'models': models,
        'parameters': orm.Dict({'batch_size': 8}),
        'device': orm.Str('cuda'),
    }
    calcinfo, config, listing = _prepare(PredictCalculation, inputs)

    # Only config.json is written into the sandbox (and so stored in the CalcJob's repository).
    assert 'config.json' in listing and 'structures.npz' not in listing
    assert sorted(calcinfo.local_copy_list) == sorted(
        [
            (structure_set.uuid, 'structures.npz', 'structures.npz'),
            (models['m0'].uuid, 'model.pt', 'models/m0.pt'),
            (models['m1'].uuid, 'model.pt', 'models/m1.pt'),
        ]
    )
    assert config == {
        'models': [
            {'file': 'models/m0.pt', 'sha256': models['m0'].sha256},
            {'file': 'models/m1.pt', 'sha256': models['m1'].sha256},
        ],
        'device': 'cuda',
        'batch_size': 8,
        'uncertainty': 'ensemble',
        'mc_samples': 10,
        'seed': 0,
    }
    assert calcinfo.codes_info[0].cmdline_params == ['predict', '--input', '.', '--output', 'outputs']
    assert ('outputs/predictions.npz', '.', 0) in calcinfo.retrieve_temporary_list
    assert ('outputs/error.json', '.', 0) in calcinfo.retrieve_list


def test_predict_defaults(code, structure_set):
    inputs = {'code': code, 'structures': structure_set, 'models': {'only': _model(b'single')}}
    _, config, _ = _prepare(PredictCalculation, inputs)
    assert config == {
        'models': [{'file': 'models/only.pt', 'sha256': inputs['models']['only'].sha256}],
        'device': 'cpu',
        'uncertainty': 'ensemble',
        'mc_samples': 10,
        'seed': 0,
    }


def test_predict_dry_run_puts_files_in_place(code, structure_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a dry run writes submit_test/ into the working directory
    model = _model(b'dry-run checkpoint')
    inputs = {
        'code': code,
        'structures': structure_set,
        'models': {'m0': model},
        'metadata': {'dry_run': True, 'store_provenance': False},
    }
    _, node = run_get_node(PredictCalculation, **inputs)
    folder = pathlib.Path(node.dry_run_info['folder'])
    assert (folder / 'models' / 'm0.pt').read_bytes() == b'dry-run checkpoint'
    copied = np.load(folder / 'structures.npz')
    assert copied['ids'].tolist() == ['Si', 'MgO', 'NaCl']
    script = (folder / '_aiidasubmit.sh').read_text()
    assert "'predict' '--input' '.' '--output' 'outputs'" in script
    assert 'mpirun' not in script


@pytest.mark.parametrize(
    'bad, message',
    [
        ({'parameters': {'batch': 8}}, 'unknown parameter'),
        ({'parameters': {'uncertainty': 'bayes'}}, 'uncertainty'),
        ({'parameters': {'batch_size': 0}}, 'batch_size'),
        ({'device': 'gpu'}, 'device'),
    ],
)
def test_predict_refuses_bad_inputs(code, structure_set, bad, message):
    bad = {key: orm.Dict(value) if isinstance(value, dict) else orm.Str(value) for key, value in bad.items()}
    inputs = {'code': code, 'structures': structure_set, 'models': {'m0': _model(b'x')}, **bad}
    with pytest.raises(ValueError, match=message):
        instantiate_process(get_manager().get_runner(), PredictCalculation, **inputs)


def test_predict_refuses_models_of_different_targets(code, structure_set):
    models = {'a': _model(b'a'), 'b': _model(b'b', target='band_gap', units='eV')}
    with pytest.raises(ValueError, match='different targets'):
        instantiate_process(
            get_manager().get_runner(), PredictCalculation, code=code, structures=structure_set, models=models
        )


def test_predict_refuses_empty_models(code, structure_set):
    with pytest.raises(ValueError, match='at least one model'):
        instantiate_process(
            get_manager().get_runner(), PredictCalculation, code=code, structures=structure_set, models={}
        )


def test_train_config_and_parent_checkpoint(code, structure_set):
    parent = _model(b'parent weights')
    parameters = {
        'target': 'formation_energy_per_atom',
        'units': 'eV/atom',
        'model_config': 'tiny',
        'epochs': 3,
        'split': {'fractions': [0.8, 0.1, 0.1], 'seed': 0},
        'freeze_blocks': 1,
    }
    inputs = {'code': code, 'structures': structure_set, 'parameters': orm.Dict(parameters), 'parent_model': parent}
    calcinfo, config, _ = _prepare(TrainCalculation, inputs)
    assert config == {**parameters, 'device': 'cpu', 'parent': {'file': 'models/parent.pt', 'sha256': parent.sha256}}
    assert (parent.uuid, 'model.pt', 'models/parent.pt') in calcinfo.local_copy_list
    assert calcinfo.codes_info[0].cmdline_params[0] == 'train'
    assert ('outputs/model.pt', '.', 0) in calcinfo.retrieve_temporary_list


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'target': 'band_gap'}, "no label 'band_gap'"),
        ({'units': 'eV'}, 'target'),
        ({'target': 'formation_energy_per_atom', 'epoch': 3}, 'unknown parameter'),
        ({'target': 'formation_energy_per_atom', 'model_config': 'huge'}, 'model_config'),
        ({'target': 'formation_energy_per_atom', 'split': {'train': ['Si']}}, 'split'),
    ],
)
def test_train_refuses_bad_parameters(code, structure_set, parameters, message):
    inputs = {'code': code, 'structures': structure_set, 'parameters': orm.Dict(parameters)}
    with pytest.raises(ValueError, match=message):
        instantiate_process(get_manager().get_runner(), TrainCalculation, **inputs)


def test_train_refuses_parent_of_another_target(code, structure_set):
    inputs = {
        'code': code,
        'structures': structure_set,
        'parent_model': _model(b'gap', target='band_gap'),
        'parameters': orm.Dict({'target': 'formation_energy_per_atom'}),
    }
    with pytest.raises(ValueError, match='fine-tuning keeps the target'):
        instantiate_process(get_manager().get_runner(), TrainCalculation, **inputs)


def test_gpu_scheduler_options_reach_the_submit_script(code, structure_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a dry run writes submit_test/ into the working directory
    inputs = {
        'code': code,
        'structures': structure_set,
        'models': {'m0': _model(b'gpu')},
        'device': orm.Str('cuda'),
        'metadata': {
            'dry_run': True,
            'store_provenance': False,
            'options': {'custom_scheduler_commands': '#SBATCH --gres=gpu:1'},
        },
    }
    _, node = run_get_node(PredictCalculation, **inputs)
    folder = pathlib.Path(node.dry_run_info['folder'])
    assert '#SBATCH --gres=gpu:1' in (folder / '_aiidasubmit.sh').read_text()
    assert json.loads((folder / 'config.json').read_text())['device'] == 'cuda'
