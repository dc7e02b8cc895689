"""The release tool (``python -m aiida_hpcai.models.release``): members' lines across warm restarts,
portable records, one tiny release end to end, and the shipped records themselves."""

import json

import numpy as np
import pytest

from aiida_hpcai.models import release
from aiida_hpcai.models.checkpoint import PRETRAINED_FILES, load_checkpoint, pretrained_path, sha256_file
from aiida_hpcai.models.contract import METRICS_FILE
from aiida_hpcai.models.evaluation import REPO
from aiida_hpcai.models.structure_io import StructureArrays, write_npz
from aiida_hpcai.models.training import train_ensemble
from tests.samples import TINY, _split, synthetic_set


def _epoch_seconds(folder, member):
    return sum(row['seconds'] for row in json.loads((folder / METRICS_FILE).read_text())['history'][member])


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_a_warm_restart_keeps_the_line_of_the_member_it_went_on_from(tmp_path):
    arrays, split = synthetic_set(24), _split(24)
    first = tmp_path / 'first'
    train_ensemble(arrays, 'energy', split, first, model_config='tiny', training={**TINY, 'epochs': 2}, units='eV/atom')
    scratch = release.load_members(str(first))['lineages']
    assert scratch[0]['root'] != scratch[1]['root']  # two members trained from scratch: two lines
    assert scratch[1]['seconds'] == pytest.approx(_epoch_seconds(first, 1))

    parent, record = release.warm_start(f'{first}#1')
    assert record['root'] == scratch[1]['root'] and record['epochs'] == 2
    assert record['member'] == 'first#1'  # a folder outside the checkout: by its name, not the machine's path
    second = tmp_path / 'second'
    train_ensemble(
        arrays,
        'energy',
        split,
        second,
        model_config='tiny',
        training={**TINY, 'epochs': 2, 'ensemble_size': 1},
        units='eV/atom',
        dataset={'initialized_from': record},
        parent=parent,
    )
    line = release.load_members(str(second))['lineages'][0]
    assert line['root'] == scratch[1]['root']
    assert line['seconds'] == pytest.approx(_epoch_seconds(first, 1) + _epoch_seconds(second, 0))

    # a record from before lines were stored names only the member: completed through its files
    old = release.started_from({'initialized_from': {'member': f'{first}#1'}})
    assert (old['root'], old['seconds']) == (scratch[1]['root'], pytest.approx(scratch[1]['seconds']))
    gone = release.started_from({'initialized_from': {'member': str(tmp_path / 'gone#0')}})
    assert gone['seconds'] is None and 'no longer there' in gone['root']
    assert release.lineage([{'seconds': 1.0}], {'initialized_from': gone})['seconds'] is None


def test_portable_member_names_what_a_user_can_reproduce(tmp_path):
    assert release.portable_member('/somewhere/on/a/training/machine/fe_ft2_m4#0') == 'fe_ft2_m4#0'
    assert release.portable_member('runs/fe_m0#1') == 'runs/fe_m0#1'  # the --out of the recorded command
    shipped = f'{pretrained_path("band_gap")}#2'
    assert release.portable_member(shipped).startswith('aiida_hpcai/models/pretrained/crysformer_mp_band_gap.pt')
    named = 'aiida_hpcai/models/pretrained/crysformer_mp_band_gap.pt@0123abc#2'
    assert release.portable_member(named) == named
    nested = {'members': [{'initialized_from': {'member': '/x/y/run#0', 'training': {}}}]}
    assert release.portable_record(nested)['members'][0]['initialized_from']['member'] == 'run#0'


def _tiny_mp_set(tmp_path, n=30):
    """A stand-in for mp_cgcnn: synthetic cells with both labels, one below the -5 eV/atom filter."""
    arrays = synthetic_set(n)
    energy = arrays.labels['energy'].copy()
    energy[0] = -6.0
    labelled = StructureArrays(
        arrays.numbers,
        arrays.positions,
        arrays.cells,
        arrays.pbc,
        arrays.offsets,
        np.array([f'mp-{i}' for i in range(n)]),
        {'formation_energy_per_atom': energy, 'band_gap': np.abs(energy)},
    )
    path = tmp_path / 'tiny_mp.npz'
    write_npz(labelled, path)
    return path


def test_release_end_to_end_on_a_tiny_config(tmp_path, monkeypatch):
    """train two one-member runs, merge them, ship into a folder: the record names the data, split
    digests, options, commands and commit, and no path of this machine."""
    monkeypatch.chdir(tmp_path)
    data, splits = str(_tiny_mp_set(tmp_path)), str(tmp_path / 'split')
    common = ['--data', data, '--split-dir', splits, '--target', 'formation_energy_per_atom', '--mc-samples', '2']
    for member in (0, 1):
        release.main(
            ['train', *common, '--config', 'tiny', '--member', str(member), '--epochs', '2', '--batch-size', '7']
            + ['--learning-rate', '5e-3', '--no-progress', '--out', f'runs/m{member}']
        )
    release.main(['train', *common, '--config', 'tiny', '--member', '1', '--epochs', '1', '--batch-size', '7']
                 + ['--no-progress', '--init', f'{tmp_path}/runs/m1#0', '--out', 'runs/m1_more'])  # fmt: skip
    release.main(['merge', *common, '--members', 'runs/m0', 'runs/m1_more', '--out', 'runs/merged'])
    pools = release.main(['pools', *common[:-2], '--members', 'runs/m0', 'runs/m1', 'runs/m1_more']
                         + ['--min-members', '2', '--result', 'pools.json'])  # fmt: skip
    assert pools['chosen']['one_state_per_member'] and len(pools['chosen']['members']) == 2
    shipped = tmp_path / 'pretrained'
    record = release.main(
        ['ship', '--run', 'runs/merged', '--training-device', 'tiny test', '--trained-with', 'train; merge']
        + ['--destination', 'pretrained']
    )

    path = shipped / PRETRAINED_FILES['formation_energy_per_atom']
    assert json.loads(path.with_suffix('.json').read_text()) == record
    assert record['sha256'] == sha256_file(path) and record['n_members'] == 2
    assert record['dataset']['n_structures'] == 29  # the cell below -5 eV/atom dropped
    assert set(record['split']['digests']) == {'train', 'val', 'test'}
    assert record['training']['command'] == 'train; merge' and record['shipped']['command'].startswith('python -m')
    assert record['shipped']['commit']
    checkpoint = load_checkpoint(path)
    started = checkpoint['hyperparameters']['training']['members'][1]['initialized_from']
    assert started['member'] == 'm1#0' and started['epochs'] == 2
    assert started['root'] == release.load_members('runs/m1')['lineages'][0]['root']
    # the pooled member's whole line: its own epoch and the two it went on from
    assert record['training']['seconds_per_member'][1] == pytest.approx(
        _epoch_seconds(tmp_path / 'runs/m1', 0) + _epoch_seconds(tmp_path / 'runs/m1_more', 0)
    )
    for text in _strings({**record, 'hyperparameters': checkpoint['hyperparameters']}):
        assert str(tmp_path) not in text


@pytest.mark.parametrize('target', sorted(PRETRAINED_FILES))
def test_shipped_records_match_their_files_and_name_no_local_path(target):
    path = pretrained_path(target)
    record = json.loads(path.with_suffix('.json').read_text())
    assert record['sha256'] == sha256_file(path)
    checkpoint = load_checkpoint(path)
    assert record['hyperparameters'] == checkpoint['hyperparameters']
    for text in _strings({**record, 'checkpoint': {k: v for k, v in checkpoint.items() if k != 'members'}}):
        assert not text.startswith('/') and str(REPO) not in text and '/work/' not in text, text
    assert record['shipped']['commit'] and 'release' in record['training']['command']
