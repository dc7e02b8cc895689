"""Lines of warm-restarted members (benchmarks/surrogate_accuracy.py): which states are one member, and
the training seconds of a member's whole line, as ``pools``, ``merge``, ``ship`` and ``report`` use them."""

import importlib.util
import json

import pytest

from aiida_hpcai.models.training import train_ensemble
from tests.conftest import REPO_ROOT
from tests.samples import TINY, _split, synthetic_set


@pytest.fixture(scope='module')
def accuracy():
    spec = importlib.util.spec_from_file_location(
        'surrogate_accuracy', REPO_ROOT / 'benchmarks' / 'surrogate_accuracy.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _epoch_seconds(folder, member):
    return sum(row['seconds'] for row in json.loads((folder / 'metrics.json').read_text())['history'][member])


def test_a_warm_restart_keeps_the_line_of_the_member_it_went_on_from(accuracy, tmp_path):
    arrays, split = synthetic_set(24), _split(24)
    first = tmp_path / 'first'
    train_ensemble(arrays, 'energy', split, first, model_config='tiny', training={**TINY, 'epochs': 2}, units='eV/atom')
    scratch = accuracy.load_members(str(first))['lineages']
    assert scratch[0]['root'] != scratch[1]['root']  # two members trained from scratch: two lines
    assert scratch[1]['seconds'] == pytest.approx(_epoch_seconds(first, 1))

    parent, record = accuracy.warm_start(f'{first}#1')
    assert record['root'] == scratch[1]['root'] and record['epochs'] == 2
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
    line = accuracy.load_members(str(second))['lineages'][0]
    assert line['root'] == scratch[1]['root']
    assert line['seconds'] == pytest.approx(_epoch_seconds(first, 1) + _epoch_seconds(second, 0))

    # a record from before lines were stored names only the member: completed through its files
    old = accuracy._started_from({'initialized_from': {'member': f'{first}#1'}})
    assert (old['root'], old['seconds']) == (scratch[1]['root'], pytest.approx(scratch[1]['seconds']))
    gone = accuracy._started_from({'initialized_from': {'member': str(tmp_path / 'gone#0')}})
    assert gone['seconds'] is None and 'no longer there' in gone['root']
    assert accuracy._lineage([{'seconds': 1.0}], {'initialized_from': gone})['seconds'] is None
