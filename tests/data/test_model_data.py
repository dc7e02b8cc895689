"""ModelData: dedup by content, metadata, hash verification."""

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
