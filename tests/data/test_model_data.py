"""ModelData: dedup by content, metadata, hash verification, the shipped pretrained models."""

import subprocess
import sys

import pytest

from aiida_hpcai.data.model import ChecksumMismatchError, ModelData


def test_same_bytes_give_same_node(aiida_profile, tmp_path):
    path = tmp_path / 'model.pt'
    path.write_bytes(b'checkpoint-bytes-1')
    first, created = ModelData.get_or_create(
        path,
        architecture='crysformer',
        target='band_gap',
        units='eV',
        hyperparameters={'blocks': 2},
        metrics={'test_mae': 0.3},
    )
    assert created and first.is_stored
    second, created_again = ModelData.get_or_create(path, architecture='crysformer')
    assert not created_again
    assert second.uuid == first.uuid
    assert first.filename == 'model.pt'
    assert (first.target, first.units, first.hyperparameters, first.metrics) == (
        'band_gap',
        'eV',
        {'blocks': 2},
        {'test_mae': 0.3},
    )
    other, created_other = ModelData.get_or_create(b'other-bytes')
    assert created_other and other.uuid != first.uuid


def test_hash_is_verified_on_load(aiida_profile, tmp_path):
    node = ModelData(b'weights', architecture='crysformer')
    assert node.get_verified_content() == b'weights'
    node.base.attributes.set('sha256', '0' * 64)  # as if the file had been altered after recording
    with pytest.raises(ChecksumMismatchError, match='does not match'):
        node.get_verified_content()


def test_export(aiida_profile, tmp_path):
    node, _ = ModelData.get_or_create(b'exported-weights', filename='ens.pt')
    path = node.export(tmp_path)
    assert path.name == 'ens.pt' and path.read_bytes() == b'exported-weights'


def test_shipped_models_are_labelled_from_their_record(aiida_profile):
    from aiida_hpcai.models.checkpoint import pretrained_path, pretrained_record

    record = pretrained_record('band_gap')
    node = ModelData.pretrained('band_gap')
    assert node.is_stored and node.sha256 == record['sha256']
    assert (node.architecture, node.target, node.units) == ('crysformer', 'band_gap', 'eV')
    assert node.hyperparameters == record['hyperparameters']
    assert node.metrics['test']['mae'] == pytest.approx(
        record['metrics']['test']['mae']
    )  # the database keeps 14 digits
    assert ModelData.pretrained('band_gap').uuid == node.uuid
    # the way data_formats.md shows, and the constructor: the same labels, the same node
    assert ModelData.get_or_create(pretrained_path('band_gap')) == (node, False)
    assert ModelData(pretrained_path('band_gap')).target == 'band_gap'
    with pytest.raises(ValueError, match='contradicts the shipped model'):
        ModelData.get_or_create(pretrained_path('band_gap'), target='formation_energy_per_atom')
    with pytest.raises(KeyError, match='no pretrained model'):
        ModelData.pretrained('melting_point')


def test_a_wrongly_labelled_node_of_a_shipped_model_is_not_reused(aiida_profile):
    from aiida_hpcai.models.checkpoint import pretrained_path

    stale = ModelData(pretrained_path('formation_energy_per_atom'))
    stale.base.attributes.set_many({'architecture': 'unknown', 'target': None, 'units': None})  # as stored before
    stale.store()
    node = ModelData.pretrained('formation_energy_per_atom')
    assert node.uuid != stale.uuid and node.sha256 == stale.sha256
    assert (node.architecture, node.target, node.units) == ('crysformer', 'formation_energy_per_atom', 'eV/atom')
    assert ModelData.get_or_create(pretrained_path('formation_energy_per_atom'))[0].uuid == node.uuid


def test_importing_model_data_does_not_import_torch():
    code = 'import sys, aiida_hpcai.data.model; print("torch" in sys.modules)'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == 'False'
