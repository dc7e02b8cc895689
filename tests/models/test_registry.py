"""The architecture registry and the contract, through ``hpcai-model`` itself (no AiiDA)."""

import json
import pathlib
import re

import numpy as np
import pytest
import torch

from aiida_hpcai.models import contract, program, registry
from aiida_hpcai.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    make_checkpoint,
    new_checkpoint,
    save_checkpoint,
    sha256_file,
)
from aiida_hpcai.models.structure_io import from_pymatgen, write_npz
from tests import toy_architecture
from tests.samples import make_structures

PACKAGE = pathlib.Path(contract.__file__).resolve().parent.parent


def test_contract_file_names_are_spelled_in_the_contract_only():
    names = [
        value
        for key, value in vars(contract).items()
        if re.fullmatch(r'[A-Z_]+_(FILE|FIGURE)', key) and isinstance(value, str)
    ]
    assert {'config.json', 'structures.npz', 'predictions.npz', 'model.pt', 'error.json'} <= set(names)
    pattern = re.compile('|'.join(rf'[\'"]{re.escape(name)}[\'"]' for name in names))
    spelled = [
        f'{path.relative_to(PACKAGE)}:{number}'
        for path in PACKAGE.rglob('*.py')
        if path.name != 'contract.py'
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert spelled == []


def test_every_program_error_has_its_own_exit_code():
    codes = [error.code for error in contract.PROGRAM_ERRORS]
    statuses = [error.exit_status for error in contract.PROGRAM_ERRORS]
    assert len(set(codes)) == len(codes) and len(set(statuses)) == len(statuses)
    assert all(status >= 330 and status != 331 for status in statuses)  # 331: a code the plugin does not know


def test_builtin_architectures_resolve():
    from aiida_hpcai.models.crysformer import PRESETS, Crysformer

    crysformer = registry.get('crysformer')
    assert crysformer.model_class() is Crysformer
    assert sorted(crysformer.presets) == sorted(PRESETS)
    for architecture in registry.BUILTIN.values():
        assert all(callable(architecture.task(task)) for task in architecture.tasks)
    with pytest.raises(registry.UnknownArchitecture, match=r"unknown architecture 'nope'; known: \[.*'crysformer'"):
        registry.get('nope')
    with pytest.raises(registry.UnknownArchitecture, match="has no 'generate' task"):
        crysformer.task('generate')


def _tiny_crysformer_checkpoint() -> dict:
    from aiida_hpcai.models.crysformer import Crysformer, resolve_config

    config = resolve_config('tiny')
    return make_checkpoint([Crysformer(config).state_dict()], config, 'band_gap', 'eV', {'mean': 0.0, 'std': 1.0})


def test_checkpoint_without_architecture_is_a_crysformer(tmp_path):
    checkpoint = _tiny_crysformer_checkpoint()
    del checkpoint['architecture']  # as files written before the registry may be
    torch.save(checkpoint, tmp_path / 'old.pt')
    assert load_checkpoint(tmp_path / 'old.pt')['architecture'] == 'crysformer'


def test_checkpoints_of_unknown_architectures_or_missing_keys_are_refused(tmp_path):
    save_checkpoint(new_checkpoint('nope', {}, [{'w': torch.zeros(1)}]), tmp_path / 'nope.pt')
    with pytest.raises(CheckpointError, match="unknown architecture 'nope'"):
        load_checkpoint(tmp_path / 'nope.pt')
    without_units = _tiny_crysformer_checkpoint()
    del without_units['units']
    save_checkpoint(without_units, tmp_path / 'no_units.pt')
    with pytest.raises(CheckpointError, match=r"missing keys \['units'\]"):
        load_checkpoint(tmp_path / 'no_units.pt')


def _run(task, folder, config):
    (folder / 'in').mkdir(parents=True, exist_ok=True)
    (folder / 'in' / contract.CONFIG_FILE).write_text(json.dumps(config))
    return program.main([task, '--input', str(folder / 'in'), '--output', str(folder / 'out')])


def _error(folder):
    return json.loads((folder / 'out' / contract.ERROR_FILE).read_text())


def test_program_refuses_unknown_or_mixed_architectures(tmp_path):
    assert _run('train', tmp_path / 'unknown', {'architecture': 'nope', 'target': 'band_gap'}) == 2
    error = _error(tmp_path / 'unknown')
    assert error['error'] == contract.INVALID_CONFIG and "'crysformer'" in error['message']

    folder = tmp_path / 'foreign'
    (folder / 'in').mkdir(parents=True)
    save_checkpoint(new_checkpoint('nope', {}, [{'w': torch.zeros(1)}]), folder / 'in' / 'm.pt')
    assert _run('predict', folder, {'models': [contract.checkpoint_entry('m.pt', None)]}) == 2
    assert _error(folder)['error'] == contract.CHECKPOINT_MISMATCH

    folder = tmp_path / 'mixed'
    (folder / 'in').mkdir(parents=True)
    save_checkpoint(_tiny_crysformer_checkpoint(), folder / 'in' / 'm.pt')
    config = {'architecture': 'toy_linear', 'models': [contract.checkpoint_entry('m.pt', None)]}
    assert _run('predict', folder, config) == 2
    assert _error(folder)['error'] == contract.INCOMPATIBLE_MODELS


@pytest.fixture
def toy_registered(tmp_path, monkeypatch):
    """The toy architecture installed as a plugin package would be: an entry point on sys.path."""
    monkeypatch.syspath_prepend(str(toy_architecture.install(tmp_path / 'site')))
    assert toy_architecture.NAME in registry.architectures()
    return registry.get(toy_architecture.NAME)


def test_an_entry_point_registers_an_architecture_the_program_trains_and_predicts(toy_registered, tmp_path):
    structures = make_structures()
    values = [-1.0, -2.5, 0.25]  # as many compositions as structures: a linear fit reproduces them
    arrays = from_pymatgen(structures, ids=['NaCl', 'BaTiO3', 'Si'], labels={'energy': values})
    (tmp_path / 'train' / 'in').mkdir(parents=True)
    write_npz(arrays, tmp_path / 'train' / 'in' / contract.STRUCTURES_FILE)
    assert _run('train', tmp_path / 'train', {'architecture': 'toy_linear', 'target': 'energy', 'units': 'eV'}) == 0
    model = tmp_path / 'train' / 'out' / contract.MODEL_FILE
    assert load_checkpoint(model)['architecture'] == 'toy_linear'
    assert json.loads((tmp_path / 'train' / 'out' / contract.METADATA_FILE).read_text())['architecture'] == 'toy_linear'

    # predict names no architecture: the program takes the checkpoint's
    folder = tmp_path / 'predict'
    (folder / 'in').mkdir(parents=True)
    (folder / 'in' / 'toy.pt').write_bytes(model.read_bytes())
    write_npz(arrays, folder / 'in' / contract.STRUCTURES_FILE)
    assert _run('predict', folder, {'models': [contract.checkpoint_entry('toy.pt', sha256_file(model))]}) == 0
    with np.load(folder / 'out' / contract.PREDICTIONS_FILE) as predictions:
        np.testing.assert_allclose(predictions['mean'], values, atol=1e-4)

    assert _run('info', tmp_path / 'info', {}) == 0
    info = json.loads((tmp_path / 'info' / 'out' / contract.INFO_FILE).read_text())
    assert info['architectures']['toy_linear'] == ['predict', 'train']


def test_the_program_loads_each_checkpoint_once(tmp_path, monkeypatch):
    """Reading the checkpoints' architecture to dispatch must not load them a second time for the task."""
    from aiida_hpcai.models import checkpoint

    folder = tmp_path / 'predict'
    (folder / 'in').mkdir(parents=True)
    save_checkpoint(_tiny_crysformer_checkpoint(), folder / 'in' / 'm.pt')
    write_npz(from_pymatgen(make_structures()), folder / 'in' / contract.STRUCTURES_FILE)
    loaded = []
    load = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, 'load_checkpoint', lambda path: loaded.append(path) or load(path))
    entry = contract.checkpoint_entry('m.pt', sha256_file(folder / 'in' / 'm.pt'))
    assert _run('predict', folder, {'models': [entry], 'mc_samples': 2}) == 0
    assert len(loaded) == 1
