"""The ``hpcai-model train`` and ``predict`` tasks, through the program's own entry point."""

import json
import shutil

import numpy as np
import pytest

from aiida_hpcai.models import contract, program
from aiida_hpcai.models.checkpoint import LOWER_BOUNDS, load_checkpoint, pretrained_path, sha256_file
from aiida_hpcai.models.structure_io import StructureArrays, read_npz, write_npz


@pytest.fixture(scope='module')
def small_mp_set(shared_data_dir):
    """About 50 real Materials Project structures (<= 8 atoms) with both labels."""
    from aiida_hpcai.models.datasets import load_dataset

    dataset = load_dataset(
        shared_data_dir / 'mp_cgcnn' / 'mp_cgcnn.csv.gz', limit=120, targets=['formation_energy_per_atom', 'band_gap']
    )
    arrays = dataset.arrays
    small = np.nonzero(arrays.natoms <= 8)[0][:50]
    return arrays.subset(small)


def _run(task, input_dir, output_dir, config=None):
    if config is not None:
        (input_dir / 'config.json').write_text(json.dumps(config))
    return program.main([task, '--input', str(input_dir), '--output', str(output_dir)])


def _error(output_dir):
    return json.loads((output_dir / contract.ERROR_FILE).read_text())['error']


TRAIN_CONFIG = {
    'target': 'formation_energy_per_atom',
    'units': 'eV/atom',
    'model_config': 'tiny',
    'ensemble_size': 2,
    'epochs': 3,
    'batch_size': 8,
    'learning_rate': 3e-3,
    'seed': 0,
    'device': 'cpu',
    'patience': 5,
    'split': {'fractions': [0.8, 0.1, 0.1], 'seed': 0},
    'element_reference': True,
    'mc_samples': 3,
}


@pytest.fixture(scope='module')
def trained_task(small_mp_set, tmp_path_factory):
    root = tmp_path_factory.mktemp('train_task')
    (root / 'in').mkdir()
    write_npz(small_mp_set, root / 'in' / 'structures.npz')
    assert _run('train', root / 'in', root / 'out', TRAIN_CONFIG) == 0
    return root


def test_train_task_outputs(trained_task):
    out = trained_task / 'out'
    for name in ('model.pt', 'metadata.json', 'metrics.json', 'learning_curve.png', 'parity.png'):
        assert (out / name).is_file()
    metadata = json.loads((out / 'metadata.json').read_text())
    assert {'architecture', 'hyperparameters', 'target', 'units', 'metrics'} <= set(metadata)
    assert metadata['architecture'] == 'crysformer' and metadata['target'] == 'formation_energy_per_atom'
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['n_structures'] == {'train': 40, 'val': 5, 'test': 5}
    assert len(metrics['history']) == 2 and 'coverage_90' in metrics['test']['ensemble']


def test_train_task_with_explicit_split_and_missing_label(small_mp_set, tmp_path):
    (tmp_path / 'in').mkdir()
    write_npz(small_mp_set, tmp_path / 'in' / 'structures.npz')
    ids = [str(i) for i in small_mp_set.ids]
    config = {**TRAIN_CONFIG, 'target': 'volume_per_atom'}
    assert _run('train', tmp_path / 'in', tmp_path / 'bad', config) == 2
    assert _error(tmp_path / 'bad') == 'missing_label'
    config = {
        **TRAIN_CONFIG,
        'ensemble_size': 1,
        'epochs': 1,
        'target': 'band_gap',
        'units': 'eV',
        'split': {'train': ids[:10], 'val': ids[10:14], 'test': ids[14:16]},
    }
    assert _run('train', tmp_path / 'in', tmp_path / 'ok', config) == 0
    metrics = json.loads((tmp_path / 'ok' / 'metrics.json').read_text())
    assert metrics['n_structures'] == {'train': 10, 'val': 4, 'test': 2}


def _predict_input(folder, arrays, models, **options):
    folder.mkdir()
    (folder / 'models').mkdir()
    entries = []
    for n, (path, sha) in enumerate(models):
        shutil.copyfile(path, folder / 'models' / f'm{n}.pt')
        entries.append({'file': f'models/m{n}.pt', 'sha256': sha})
    write_npz(arrays, folder / 'structures.npz')
    config = {'models': entries, 'device': 'cpu', 'batch_size': 16, 'uncertainty': 'ensemble', 'mc_samples': 4}
    config.update(options)
    (folder / 'config.json').write_text(json.dumps(config))


def _with_bad_structures(arrays: StructureArrays) -> StructureArrays:
    """Append a structure with an element beyond the table (Z=105) and one with NaN positions."""
    good = arrays.subset([0, 1])
    numbers = np.concatenate([good.numbers, [105, 8], [3, 8]])
    positions = np.concatenate([good.positions, [[0, 0, 0], [1, 1, 1]], [[np.nan, 0, 0], [1, 1, 1]]])
    cells = np.concatenate([good.cells, [np.eye(3) * 4, np.eye(3) * 4]])
    offsets = np.concatenate([good.offsets, [good.offsets[-1] + 2, good.offsets[-1] + 4]])
    return StructureArrays(numbers, positions, cells, np.ones((4, 3), bool), offsets, list(good.ids) + ['heavy', 'nan'])


def test_predict_task_marks_failures_and_predicts_the_rest(trained_task, small_mp_set, tmp_path):
    model = trained_task / 'out' / 'model.pt'
    _predict_input(tmp_path / 'in', _with_bad_structures(small_mp_set), [(model, sha256_file(model))])
    assert _run('predict', tmp_path / 'in', tmp_path / 'out') == 0
    with np.load(tmp_path / 'out' / 'predictions.npz', allow_pickle=False) as result:
        mean, sigma, status, reason = result['mean'], result['sigma'], result['status'], result['reason']
    assert mean.dtype == np.float64 and sigma.dtype == np.float64 and mean.shape == (4,)
    assert status.tolist() == ['ok', 'ok', 'failed', 'failed']
    assert reason[0] == '' and 'unknown element' in reason[2] and 'non-finite' in reason[3]
    assert np.all(np.isfinite(mean[:2])) and np.all(sigma[:2] > 0) and np.all(np.isnan(mean[2:]))
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert {'target', 'units', 'n_structures', 'n_ok', 'n_failed', 'seconds', 'structures_per_second', 'device'} <= set(
        summary
    )
    assert (summary['n_ok'], summary['n_failed'], summary['device']) == (2, 2, 'cpu')
    # the same checkpoint twice pools into a four-member ensemble with the same mean; asking for
    # CUDA where there is none runs on the CPU and says so
    import torch

    device = 'cuda' if not torch.cuda.is_available() else 'cpu'
    _predict_input(tmp_path / 'pooled', small_mp_set.subset([0, 1]), [(model, None), (model, None)], device=device)
    assert _run('predict', tmp_path / 'pooled', tmp_path / 'pooled_out') == 0
    pooled_summary = json.loads((tmp_path / 'pooled_out' / 'summary.json').read_text())
    assert pooled_summary['n_members'] == 4 and pooled_summary['device'] == 'cpu'
    with np.load(tmp_path / 'pooled_out' / 'predictions.npz') as pooled:
        np.testing.assert_allclose(pooled['mean'], mean[:2], rtol=1e-6)


def test_predict_task_errors(trained_task, small_mp_set, tmp_path):
    model = trained_task / 'out' / 'model.pt'
    _predict_input(tmp_path / 'sha', small_mp_set.subset([0]), [(model, '0' * 64)])
    assert _run('predict', tmp_path / 'sha', tmp_path / 'sha_out') == 2
    assert _error(tmp_path / 'sha_out') == 'checkpoint_mismatch'

    other = load_checkpoint(model)
    other['target'], other['units'] = 'band_gap', 'eV'
    import torch

    torch.save(other, tmp_path / 'gap.pt')
    _predict_input(tmp_path / 'mixed', small_mp_set.subset([0]), [(model, None), (tmp_path / 'gap.pt', None)])
    assert _run('predict', tmp_path / 'mixed', tmp_path / 'mixed_out') == 2
    assert _error(tmp_path / 'mixed_out') == 'incompatible_models'

    # Structures the model cannot evaluate are no fault of the model: every one failed with its reason, no error.
    only_bad = _with_bad_structures(small_mp_set).subset([2, 3])
    _predict_input(tmp_path / 'bad', only_bad, [(model, None)])
    assert _run('predict', tmp_path / 'bad', tmp_path / 'bad_out') == 0
    assert not (tmp_path / 'bad_out' / contract.ERROR_FILE).exists()
    with np.load(tmp_path / 'bad_out' / 'predictions.npz', allow_pickle=False) as result:
        assert result['status'].tolist() == ['failed', 'failed']

    # A model whose weights went NaN: no finite value for any structure it evaluates, an error and no predictions.
    broken = load_checkpoint(model)
    for member in broken['members']:
        for tensor in member.values():
            if tensor.is_floating_point():
                tensor.fill_(float('nan'))
    torch.save(broken, tmp_path / 'nan.pt')
    _predict_input(tmp_path / 'nan', small_mp_set.subset([0, 1]), [(tmp_path / 'nan.pt', None)])
    assert _run('predict', tmp_path / 'nan', tmp_path / 'nan_out') == contract.EXIT_TASK_ERROR
    assert _error(tmp_path / 'nan_out') == 'nan_output'
    assert not (tmp_path / 'nan_out' / contract.PREDICTIONS_FILE).exists()


def test_what_counts_as_out_of_memory():
    """The allocation failures of torch on a CPU and on CUDA, and Python's own; a real one (a job under `ulimit -v`)
    is in tests/workchains/test_predict_base.py."""
    import torch

    out_of_memory = [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            'allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)'
        ),
        torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB'),
        RuntimeError('CUDA error: out of memory'),
    ]
    assert all(program._is_out_of_memory(exc) for exc in out_of_memory)
    assert not any(program._is_out_of_memory(exc) for exc in (RuntimeError('shape mismatch'), ValueError('memory')))


def test_train_task_fine_tunes_a_parent(trained_task, small_mp_set, tmp_path):
    model = trained_task / 'out' / 'model.pt'
    (tmp_path / 'in').mkdir()
    shutil.copyfile(model, tmp_path / 'in' / 'parent.pt')
    write_npz(small_mp_set.subset(range(30)), tmp_path / 'in' / 'structures.npz')
    config = {
        **TRAIN_CONFIG,
        'ensemble_size': 1,
        'epochs': 1,
        'freeze_blocks': 1,
        'learning_rate': None,
        'parent': {'file': 'parent.pt', 'sha256': sha256_file(model)},
    }
    config.pop('model_config')
    assert _run('train', tmp_path / 'in', tmp_path / 'out', config) == 0
    child, parent = load_checkpoint(tmp_path / 'out' / 'model.pt'), load_checkpoint(model)
    assert child['normalization'] == parent['normalization']
    config['parent']['sha256'] = 'f' * 64
    assert _run('train', tmp_path / 'in', tmp_path / 'bad', config) == 2
    assert _error(tmp_path / 'bad') == 'checkpoint_mismatch'


@pytest.mark.parametrize('target, low, high', [('formation_energy_per_atom', -4.5, -2.5), ('band_gap', 4.0, 10.0)])
def test_pretrained_models_load_and_predict_on_cpu(target, low, high):
    """Rock-salt LiF: DFT-PBE formation energy about -3.1 eV/atom, band gap about 8.7 eV."""
    from pymatgen.core import Lattice, Structure

    from aiida_hpcai.models.inference import EnsemblePredictor
    from aiida_hpcai.models.structure_io import from_pymatgen

    checkpoint = load_checkpoint(pretrained_path(target))
    assert checkpoint['target'] == target and len(checkpoint['members']) >= 1
    assert checkpoint.get('lower_bound') == LOWER_BOUNDS.get(target)  # a shipped band gap is never negative
    lif = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.03), ['Li', 'F'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    result = EnsemblePredictor([checkpoint]).predict(from_pymatgen([lif]))
    assert result['status'][0] == 'ok'
    assert low < result['mean'][0] < high
    assert result['sigma'][0] > 0
    test_mae = checkpoint['metrics']['test']['mae']
    assert np.isfinite(test_mae)
    assert read_npz  # the program reads structure sets with this same reader
