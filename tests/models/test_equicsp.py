"""EquiCSP: the diffusion's pieces, the denoiser's symmetries, training, sampling and the generate task."""

import dataclasses
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from aiida_hpcai.models import contract, program
from aiida_hpcai.models.checkpoint import load_checkpoint, sha256_file
from aiida_hpcai.models.diffusion import (
    LatticeScaler,
    Schedules,
    cell_to_parameters,
    parameters_to_cell,
    sample,
    score_mean_square,
    wrapped_normal_log_density,
    wrapped_normal_score,
)
from aiida_hpcai.models.equicsp import generation
from aiida_hpcai.models.equicsp.generation import INVALID_REASONS, EquiCSPSampler, atom_counts, check_crystal
from aiida_hpcai.models.equicsp.network import PRESETS, EquiCSPDenoiser, _mlp, edge_messages, full_edges
from aiida_hpcai.models.equicsp.training import prepare, train_equicsp, validation_loss
from aiida_hpcai.models.structure_io import read_npz, write_npz
from tests.samples import synthetic_set

TOLERANCE = 1e-5
TINY_TRAINING = {'epochs': 3, 'batch_size': 8, 'learning_rate': 5e-3, 'seed': 0, 'progress': False}


def _split(n):
    return {'train': np.arange(0, n - 4), 'val': np.arange(n - 4, n)}


# -- the diffusion's pieces ----------------------------------------------------------------------------
@pytest.mark.parametrize('sigma', [0.01, 0.1, 0.5, 1.0])
def test_wrapped_normal_score_is_the_gradient_of_its_log_density(sigma):
    x = torch.linspace(-0.7, 1.3, 41, dtype=torch.float64)
    step = 1e-6
    numerical = (wrapped_normal_log_density(x + step, sigma) - wrapped_normal_log_density(x - step, sigma)) / (2 * step)
    analytic = wrapped_normal_score(x, sigma)
    assert torch.allclose(analytic, numerical, rtol=1e-5, atol=1e-4 * max(1.0, float(analytic.abs().max())))
    assert torch.allclose(wrapped_normal_score(x + 1.0, sigma), analytic, atol=1e-8)  # periodic


def test_score_mean_square_limits():
    sigmas = torch.tensor([0.005, 0.02, 3.0], dtype=torch.float64)
    values = score_mean_square(sigmas)
    assert torch.allclose(values[:2], 1 / sigmas[:2] ** 2, rtol=1e-6)  # narrow: the plain normal's 1/sigma^2
    assert values[2] < 1e-6  # wide: uniform on the torus, no score


def test_lattice_parameters_round_trip_and_scaler():
    rng = np.random.default_rng(0)
    cells = np.stack([np.diag([3.0, 4.0, 5.0]) + rng.normal(scale=0.4, size=(3, 3)) for _ in range(5)])
    lengths, angles = cell_to_parameters(cells)
    rebuilt = parameters_to_cell(lengths, angles)
    assert np.allclose(cell_to_parameters(rebuilt)[0], lengths) and np.allclose(cell_to_parameters(rebuilt)[1], angles)
    assert np.allclose(abs(np.linalg.det(rebuilt)), abs(np.linalg.det(cells)))
    natoms = np.array([2, 3, 4, 5, 6])
    scaler = LatticeScaler.fit(cells, natoms)
    state = torch.as_tensor(scaler.encode(cells, natoms))
    back_lengths, back_angles = scaler.lengths_angles(state, torch.as_tensor(natoms))
    assert np.allclose(back_lengths.numpy(), lengths) and np.allclose(back_angles.numpy(), angles)
    # angles no cell can have: NaN, reported as a non-positive volume
    assert np.isnan(parameters_to_cell(np.ones((1, 3)) * 3, np.full((1, 3), np.radians(170)))).any()


@pytest.mark.parametrize('steps', [25, 100])
@pytest.mark.parametrize('mode', ['csp', 'abinitio'])
def test_sampler_recovers_a_crystal_from_its_exact_noise_and_score(steps, mode):
    """With an oracle in place of the network (the exact noise and score for a data set of one crystal),
    the predictor-corrector chain, full or respaced, must end on that crystal: schedules, signs and steps."""
    cell = np.array([[[4.0, 0, 0], [0.5, 5.0, 0], [0.3, 0.2, 6.0]]])
    frac0 = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.7, 0.8], [0.3, 0.9, 0.5]], dtype=torch.float64)
    types0 = torch.tensor([0, 1, 1])
    scaler = LatticeScaler.fit(np.concatenate([cell, 1.1 * cell]), np.array([3, 3]))
    clean = torch.as_tensor(scaler.encode(cell, np.array([3])))
    schedules = Schedules()
    abar_all, sigmas, norms = schedules.tables('cpu', torch.float64)

    def oracle(t, types, known, frac, gram, num_atoms, batch):
        abar = abar_all[t][:, None]
        lengths = torch.sqrt(torch.diagonal(gram, dim1=-2, dim2=-1))
        cosines = gram / (lengths[:, :, None] * lengths[:, None, :])
        angles = torch.acos(torch.stack([cosines[:, 1, 2], cosines[:, 0, 2], cosines[:, 0, 1]], -1))
        # the noisy lattice state, recovered from the Gram matrix the network sees
        log_lengths = torch.log(lengths) - torch.log(num_atoms.double())[:, None] / 3
        state = torch.cat(
            [
                (log_lengths - scaler.log_length_mean) / scaler.log_length_std,
                torch.tan(angles - math.pi / 2) / scaler.angle_std,
            ],
            -1,
        )
        onehot = torch.nn.functional.one_hot(types0, 2).double()
        return (
            (state - abar.sqrt() * clean) / (1 - abar).sqrt(),
            wrapped_normal_score(frac - frac0, sigmas[t][batch][:, None]) / norms[t][batch][:, None],
            (types - abar[batch].sqrt() * onehot) / (1 - abar[batch]).sqrt(),
        )

    given = types0 if mode == 'csp' else None
    generator = torch.Generator().manual_seed(0)
    out = sample(
        oracle, torch.tensor([3]), schedules, scaler, 2, given, steps, generator=generator, dtype=torch.float64
    )
    lengths, angles = cell_to_parameters(cell)
    assert np.allclose(out['lengths'].numpy(), lengths, atol=1e-6)
    assert np.allclose(out['angles'].numpy(), angles, atol=1e-6)
    shift = (out['frac'] - frac0) - (out['frac'] - frac0)[0]  # equal up to one rigid translation
    assert (shift - torch.round(shift)).abs().max() < 1e-6
    assert out['types'].tolist() == types0.tolist()


# -- the denoiser's symmetries ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def denoiser_inputs():
    torch.manual_seed(0)
    model = EquiCSPDenoiser(PRESETS['tiny'], num_elements=4).double().eval()
    num_atoms = torch.tensor([3, 4])
    batch = torch.repeat_interleave(torch.arange(2), num_atoms)
    cells = torch.tensor(np.diag([3.1, 4.2, 5.3])[None] + np.random.default_rng(1).normal(scale=0.5, size=(2, 3, 3)))
    types = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1, 1]), 4).double()
    types[3:] += 0.3 * torch.randn(4, 4, dtype=torch.float64)  # the second crystal ab initio: noisy types
    inputs = {
        't': torch.tensor([7, 640]),
        'types': types,
        'known': torch.tensor([True, False]),
        'frac': torch.rand(7, 3, dtype=torch.float64),
        'cells': cells,
        'num_atoms': num_atoms,
        'batch': batch,
    }
    return model, inputs


def _run_denoiser(model, inputs):
    gram = inputs['cells'] @ inputs['cells'].transpose(1, 2)  # the lattice enters only as L L^T
    with torch.no_grad():
        return model(
            inputs['t'], inputs['types'], inputs['known'], inputs['frac'], gram, inputs['num_atoms'], inputs['batch']
        )


def _assert_close(outputs, expected):
    for got, want in zip(outputs, expected):
        assert (got - want).abs().max().item() < TOLERANCE


def test_denoiser_invariant_to_rotations_and_reflections(denoiser_inputs):
    model, inputs = denoiser_inputs
    reference = _run_denoiser(model, inputs)
    rotation = torch.tensor(Rotation.random(random_state=3).as_matrix())
    for orthogonal in (rotation, -rotation):  # -R: a rotation times the inversion
        rotated = dict(inputs, cells=inputs['cells'] @ orthogonal.T)
        _assert_close(_run_denoiser(model, rotated), reference)


def test_denoiser_invariant_to_periodic_translations(denoiser_inputs):
    model, inputs = denoiser_inputs
    reference = _run_denoiser(model, inputs)
    shift = torch.tensor([[0.31, -0.77, 0.5]], dtype=torch.float64)
    images = torch.tensor([[1, 0, -2], [0, 3, 0], [-1, -1, 1], [2, 0, 0], [0, 0, 1], [0, -4, 0], [1, 1, 1]])
    for frac in ((inputs['frac'] + shift) % 1.0, inputs['frac'] + images):
        _assert_close(_run_denoiser(model, dict(inputs, frac=frac)), reference)


def test_denoiser_equivariant_to_atom_permutations(denoiser_inputs):
    model, inputs = denoiser_inputs
    lattice, score, types = _run_denoiser(model, inputs)
    order = torch.tensor([2, 0, 1, 5, 3, 6, 4])  # atoms shuffled inside each crystal
    permuted = dict(inputs, types=inputs['types'][order], frac=inputs['frac'][order])
    _assert_close(_run_denoiser(model, permuted), (lattice, score[order], types[order]))


@pytest.mark.parametrize('axes', list(itertools.permutations(range(3)))[1:])
def test_denoiser_equivariant_to_lattice_axis_permutations(denoiser_inputs, axes):
    model, inputs = denoiser_inputs
    lattice, score, types = _run_denoiser(model, inputs)
    axes = list(axes)
    # the same crystal with its lattice vectors (and each atom's fractional coordinates) reordered
    permuted = dict(inputs, cells=inputs['cells'][:, axes], frac=inputs['frac'][:, axes])
    expected_lattice = torch.cat([lattice[:, :3][:, axes], lattice[:, 3:][:, axes]], 1)
    _assert_close(_run_denoiser(model, permuted), (expected_lattice, score[:, axes], types))


def test_edge_messages_are_the_mlp_of_the_concatenated_edge_features():
    """The per-atom projection is the same sum of products as the MLP on [h_receiver, h_sender, geometry]."""
    torch.manual_seed(0)
    mlp, h = _mlp(3 * 8, 8, 8), torch.randn(7, 8)
    receivers, senders = full_edges(torch.tensor([3, 4]))
    geometry = torch.randn(len(receivers), 8)
    direct = mlp(torch.cat([h[receivers], h[senders], geometry], -1))
    assert torch.allclose(edge_messages(mlp, h, geometry, receivers, senders), direct, atol=1e-6)


def test_lattice_state_invariant_to_rotations():
    cells = np.diag([3.0, 4.0, 5.0])[None] + np.random.default_rng(2).normal(scale=0.3, size=(1, 3, 3))
    scaler = LatticeScaler(0.4, 0.2, 0.3)
    rotation = Rotation.random(random_state=1).as_matrix()
    assert np.allclose(scaler.encode(cells @ rotation.T, np.array([4])), scaler.encode(cells, np.array([4])))


# -- training and sampling ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """A tiny EquiCSP trained for a few epochs on CsCl-type cells of Li, O, Mg, Fe, Cu, S (CSP and ab initio)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('equicsp')
    arrays = synthetic_set(28)
    checkpoint, metrics = train_equicsp(arrays, _split(28), root / 'train', 'tiny', TINY_TRAINING)
    return root, checkpoint, metrics


def test_training_writes_a_checkpoint_for_sampling(tiny_model):
    root, checkpoint, metrics = tiny_model
    saved = load_checkpoint(root / 'train' / contract.MODEL_FILE)
    assert saved['architecture'] == 'equicsp'
    assert saved['elements'] == ['Li', 'O', 'Mg', 'S', 'Fe', 'Cu']  # the training set's, by atomic number
    assert saved['max_atoms'] == 2 and saved['num_atoms_counts'] == [0, 0, 24]
    assert saved['modes'] == ['csp', 'abinitio']
    assert (root / 'train' / contract.LEARNING_CURVE_FIGURE).is_file()
    assert not (root / 'train' / 'training_state.pt').exists()
    assert len(metrics['history'][0]) == TINY_TRAINING['epochs']


def test_train_task_through_the_program(tmp_path):
    (tmp_path / 'in').mkdir()
    write_npz(synthetic_set(12), tmp_path / 'in' / contract.STRUCTURES_FILE)
    config = {'architecture': 'equicsp', 'model_config': 'tiny', 'epochs': 2, 'batch_size': 4, 'modes': 'csp'}
    (tmp_path / 'in' / contract.CONFIG_FILE).write_text(json.dumps(config))
    assert program.main(['train', '--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out')]) == 0
    metadata = json.loads((tmp_path / 'out' / contract.METADATA_FILE).read_text())
    assert set(contract.METADATA_KEYS) <= set(metadata) and metadata['architecture'] == 'equicsp'
    assert metadata['modes'] == ['csp'] and metadata['target'] is None
    assert load_checkpoint(tmp_path / 'out' / contract.MODEL_FILE)['architecture'] == 'equicsp'
    (tmp_path / 'in' / contract.CONFIG_FILE).write_text(json.dumps({**config, 'modes': 'sometimes'}))
    assert program.main(['train', '--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'bad')]) == 2
    assert json.loads((tmp_path / 'bad' / contract.ERROR_FILE).read_text())['error'] == contract.INVALID_CONFIG


def test_registry_entry_names_the_training_options():
    from aiida_hpcai.models import registry
    from aiida_hpcai.models.equicsp.training import EquiCSPTrainingConfig

    options = {f.name for f in dataclasses.fields(EquiCSPTrainingConfig)} - {'device', 'progress'}
    entry = registry.get('equicsp')
    assert entry.train_parameters == options | {'model_config', 'split', 'dataset_name'}
    assert set(entry.presets) == set(PRESETS) and not entry.requires_target
    assert entry.model_class() is EquiCSPDenoiser


def test_loss_falls_on_a_tiny_set():
    torch.manual_seed(0)
    arrays = synthetic_set(16)
    elements = sorted({int(z) for z in arrays.numbers})
    scaler = LatticeScaler.fit(arrays.cells, arrays.natoms)
    data = prepare(arrays, np.arange(16), elements, scaler)
    config = PRESETS['tiny']
    schedules = Schedules(config.timesteps, config.sigma_begin, config.sigma_end)
    model = EquiCSPDenoiser(config, len(elements))
    options = type('Options', (), {'batch_size': 16, 'device': 'cpu', 'modes': 'both'})
    before = validation_loss(model, data, schedules, scaler, len(elements), options)['loss']
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    from aiida_hpcai.models.diffusion import diffusion_loss

    for _ in range(60):
        loss = diffusion_loss(model, data.batch(np.arange(16)), schedules, scaler, len(elements), 0.5, generator)[
            'loss'
        ]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = validation_loss(model, data, schedules, scaler, len(elements), options)['loss']
    assert after < 0.6 * before, (before, after)


def test_training_resumes_where_it_stopped(tmp_path, monkeypatch):
    from aiida_hpcai.models.equicsp import training

    arrays = synthetic_set(16)
    options = dict(TINY_TRAINING, epochs=3)
    whole, _ = train_equicsp(arrays, _split(16), tmp_path / 'whole', 'tiny', options)
    calls = {'n': 0}
    real = training.validation_loss

    def stop_in_the_second_epoch(*args):
        calls['n'] += 1
        if calls['n'] == 2:
            raise KeyboardInterrupt  # the job killed at its wall time
        return real(*args)

    monkeypatch.setattr(training, 'validation_loss', stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_equicsp(arrays, _split(16), tmp_path / 'parts', 'tiny', options)
    assert (tmp_path / 'parts' / 'training_state.pt').is_file()
    monkeypatch.setattr(training, 'validation_loss', real)
    resumed, metrics = train_equicsp(arrays, _split(16), tmp_path / 'parts', 'tiny', options)
    assert [row['epoch'] for row in metrics['history'][0]] == [0, 1, 2]
    for key, value in whole['members'][0].items():
        assert torch.equal(value, resumed['members'][0][key]), key


def test_training_on_from_a_parent_starts_from_its_weights(tiny_model, tmp_path):
    """A warm start keeps the parent's network, elements and lattice standardisation and starts from its weights:
    with a learning rate of 0 nothing moves, and the fixed-noise validation loss is the parent's best."""
    _, parent, parent_metrics = tiny_model
    arrays = synthetic_set(28)
    options = dict(TINY_TRAINING, epochs=1, learning_rate=0.0)
    warm, metrics = train_equicsp(
        arrays, _split(28), tmp_path, 'cpu', options, dataset={'initialized_from': {'sha256': 'x'}}, parent=parent
    )
    assert warm['hyperparameters']['model'] == parent['hyperparameters']['model']  # not the 'cpu' preset asked
    assert warm['elements'] == parent['elements'] and warm['lattice_scaler'] == parent['lattice_scaler']
    for key, value in parent['members'][0].items():
        assert torch.equal(value, warm['members'][0][key]), key
    assert metrics['val']['loss'] == pytest.approx(parent_metrics['val']['loss'], rel=1e-6)
    assert warm['dataset']['initialized_from'] == {'sha256': 'x'}


def test_a_warm_run_resumes_only_from_its_own_parent(tiny_model, tmp_path, monkeypatch):
    """The resume state of a run started from one parent is not taken up by a run from another parent in the same
    folder, even when the caller describes both parents alike: the parent's weights are in the run's signature."""
    from aiida_hpcai.models.equicsp import training

    _, parent, _ = tiny_model
    other = {**parent, 'members': [{key: value + 0.01 for key, value in parent['members'][0].items()}]}
    arrays, options, same_words = synthetic_set(28), dict(TINY_TRAINING, epochs=2, learning_rate=0.0), {'x': 1}
    real = training.validation_loss
    calls = {'n': 0}

    def stop_in_the_second_epoch(*args):
        calls['n'] += 1
        if calls['n'] == 2:
            raise KeyboardInterrupt  # killed in the second epoch
        return real(*args)

    monkeypatch.setattr(training, 'validation_loss', stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_equicsp(arrays, _split(28), tmp_path, 'tiny', options, dataset=same_words, parent=parent)
    assert (tmp_path / 'training_state.pt').is_file()
    monkeypatch.setattr(training, 'validation_loss', real)
    warm, _ = train_equicsp(arrays, _split(28), tmp_path, 'tiny', options, dataset=same_words, parent=other)
    for key, value in other['members'][0].items():  # at learning rate 0: the other parent's weights, not the first's
        assert torch.equal(value, warm['members'][0][key]), key


def test_training_on_from_a_parent_refuses_elements_it_never_saw(tiny_model, tmp_path):
    from pymatgen.core import Lattice, Structure

    from aiida_hpcai.models.structure_io import from_pymatgen

    _, parent, _ = tiny_model
    cells = [Structure(Lattice.cubic(4.0 + 0.1 * n), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]]) for n in range(6)]
    arrays = from_pymatgen(cells, ids=[f'c{n}' for n in range(6)])
    with pytest.raises(ValueError, match='elements the parent was not trained on: Na, Cl'):
        train_equicsp(arrays, _split(6), tmp_path, 'tiny', TINY_TRAINING, parent=parent)
    with pytest.raises(ValueError, match="the parent is a 'crysformer' checkpoint"):
        train_equicsp(
            synthetic_set(8), _split(8), tmp_path, 'tiny', TINY_TRAINING, parent={'architecture': 'crysformer'}
        )


def test_max_minutes_stops_training(tmp_path):
    _, metrics = train_equicsp(
        synthetic_set(16), _split(16), tmp_path, 'tiny', dict(TINY_TRAINING, epochs=1000, max_minutes=1e-4)
    )
    assert len(metrics['history'][0]) == 1


def test_check_crystal_reasons():
    cell = np.eye(3) * 4.0
    assert check_crystal(np.array([11, 17]), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), cell) is None
    assert check_crystal(np.array([11, 17]), np.array([[0, 0, 0], [0.05, 0, 0]]), cell)[0] == 'too_close'
    assert check_crystal(np.array([11]), np.array([[0, 0, 0]]), np.eye(3) * 0.4)[0] == 'too_close'  # its own image
    assert check_crystal(np.array([11]), np.array([[np.nan, 0, 0]]), cell)[0] == 'nan'
    flat = parameters_to_cell(np.full((1, 3), 4.0), np.full((1, 3), np.radians(170)))[0]
    assert check_crystal(np.array([11]), np.array([[0, 0, 0]]), flat)[0] == 'non_positive_volume'
    assert set(INVALID_REASONS) == {'nan', 'non_positive_volume', 'too_close'}


def test_atom_count_strategies():
    counts = np.array([0, 0, 5, 0, 3])
    rng = np.random.default_rng(0)
    assert set(atom_counts(200, 'dataset', counts, 4, rng)) == {2, 4}
    uniform = atom_counts(400, 'uniform', counts, 4, rng)
    assert set(uniform) == {1, 2, 3, 4}
    hybrid = atom_counts(100, 'hybrid', counts, 4, rng, switch=60)
    assert set(hybrid[:60]) <= {2, 4} and set(hybrid[60:]) - {2, 4}
    with pytest.raises(ValueError, match='unknown N strategy'):
        atom_counts(1, 'poisson', counts, 4, rng)


def test_samples_are_crystals_or_reported(tiny_model):
    _, checkpoint, _ = tiny_model
    sampler = EquiCSPSampler(checkpoint)
    lookup = {symbol: n for n, symbol in enumerate(sampler.elements)}
    csp = sampler.sample([2, 2], [np.array([lookup['Li'], lookup['O']])] * 2, steps=15, seed=0)
    abinitio = sampler.sample([2, 1], None, steps=15, seed=0)
    assert [sorted(c['numbers'].tolist()) for c in csp] == [[3, 8], [3, 8]]
    for crystal in csp + abinitio:
        assert set(crystal['numbers'].tolist()) <= {3, 8, 12, 16, 26, 29}
        problem = check_crystal(crystal['numbers'], crystal['frac'], crystal['cell'])
        if problem is None:
            assert np.linalg.det(crystal['cell']) > 0
        else:
            assert problem[0] in INVALID_REASONS and problem[1]
    again = sampler.sample([2, 1], None, steps=15, seed=0)
    assert all(np.array_equal(a['frac'], b['frac'], equal_nan=True) for a, b in zip(abinitio, again))  # seeded


def test_bfloat16_sampling_runs_the_network_in_bfloat16_and_keeps_the_state_float32(tiny_model, monkeypatch):
    _, checkpoint, _ = tiny_model
    with pytest.raises(ValueError, match='unknown sampling precision'):
        EquiCSPSampler(checkpoint, precision='half')
    product_dtypes = set()

    def record(module, inputs, output):
        product_dtypes.add(output.dtype)

    float32, bfloat16 = EquiCSPSampler(checkpoint), EquiCSPSampler(checkpoint, precision='bfloat16')
    for sampler in (float32, bfloat16):
        sampler.model.layers[0].node[0].register_forward_hook(record)
    states, sample = [], generation.sample

    def keep_state(*args, **kwargs):
        states.append(sample(*args, **kwargs))
        return states[-1]

    monkeypatch.setattr(generation, 'sample', keep_state)
    float32.sample([2, 1], None, steps=5, seed=0)
    assert product_dtypes == {torch.float32}
    product_dtypes.clear()
    crystals = bfloat16.sample([2, 1], None, steps=5, seed=0)
    assert product_dtypes == {torch.bfloat16}
    assert {states[-1][key].dtype for key in ('lattice', 'frac', 'lengths', 'angles')} == {torch.float32}
    assert all(crystal['frac'].dtype == np.float64 and crystal['cell'].shape == (3, 3) for crystal in crystals)


# -- the hpcai-model generate task -------------------------------------------------------------------------
@pytest.fixture
def generate_dir(tiny_model, tmp_path):
    root, _, _ = tiny_model
    (tmp_path / 'in' / 'models').mkdir(parents=True)
    model = tmp_path / 'in' / 'models' / 'model.pt'
    model.write_bytes((root / 'train' / contract.MODEL_FILE).read_bytes())
    return tmp_path, contract.checkpoint_entry('models/model.pt', sha256_file(model))


def _generate(tmp_path, config, subprocess_run=False):
    (tmp_path / 'in' / contract.CONFIG_FILE).write_text(json.dumps(config))
    out = tmp_path / 'out'
    arguments = ['generate', '--input', str(tmp_path / 'in'), '--output', str(out)]
    if subprocess_run:
        code = subprocess.run(
            [sys.executable, '-m', 'aiida_hpcai.models.program', *arguments], capture_output=True
        ).returncode
    else:
        code = program.main(arguments)
    error = (
        json.loads((out / contract.ERROR_FILE).read_text())['error'] if (out / contract.ERROR_FILE).exists() else None
    )
    return code, error, out


def test_generate_task_csp_in_a_subprocess(generate_dir):
    tmp_path, entry = generate_dir
    config = {
        'models': [entry],
        'mode': 'csp',
        'compositions': {'LiO': 2, 'MgS': 1},
        'steps': 10,
        'seed': 3,
        'batch_size': 2,
    }
    code, error, out = _generate(tmp_path, config, subprocess_run=True)
    assert (code, error) == (0, None)
    summary = json.loads((out / contract.SUMMARY_FILE).read_text())
    invalid = json.loads((out / contract.INVALID_FILE).read_text())
    arrays = read_npz(out / contract.STRUCTURES_FILE)
    assert (summary['mode'], summary['seed'], summary['steps'], summary['n_requested']) == ('csp', 3, 10, 3)
    assert summary['n_valid'] == len(arrays) and summary['n_invalid'] == len(invalid)
    assert sorted(list(arrays.ids) + [row['id'] for row in invalid]) == ['LiO#0', 'LiO#1', 'MgS#0']
    assert sum(summary['invalid_reasons'].values()) == len(invalid)


@pytest.mark.parametrize(
    'config, expected',
    [
        ({'mode': 'csp', 'compositions': {'NaCl': 1}}, contract.UNKNOWN_ELEMENT),
        ({'mode': 'csp', 'compositions': {'Li2O2': 1}}, contract.TOO_MANY_ATOMS),
        ({'mode': 'csp', 'compositions': {'LiO': 0}}, contract.NO_SAMPLES),
        ({'mode': 'abinitio', 'n_samples': 0}, contract.NO_SAMPLES),
        ({'mode': 'abinitio', 'n_samples': 2, 'n_strategy': 'poisson'}, contract.INVALID_CONFIG),
        ({'mode': 'sideways', 'n_samples': 2}, contract.INVALID_CONFIG),
        ({'mode': 'abinitio', 'n_samples': 2, 'precision': 'half'}, contract.INVALID_CONFIG),
    ],
)
def test_generate_task_error_codes(generate_dir, config, expected):
    tmp_path, entry = generate_dir
    code, error, _ = _generate(tmp_path, {'models': [entry], **config})
    assert (code, error) == (2, expected)


def test_generate_task_ab_initio(generate_dir):
    tmp_path, entry = generate_dir
    config = {'models': [entry], 'mode': 'abinitio', 'n_samples': 3, 'n_strategy': 'hybrid', 'switch': 1, 'steps': 8}
    code, error, out = _generate(tmp_path, {**config, 'precision': 'bfloat16'})
    assert (code, error) == (0, None)
    summary = json.loads((out / contract.SUMMARY_FILE).read_text())
    assert (summary['mode'], summary['n_strategy'], summary['n_requested']) == ('abinitio', 'hybrid', 3)
    assert summary['precision'] == 'bfloat16'
    ids = list(read_npz(out / contract.STRUCTURES_FILE).ids) + [
        r['id'] for r in json.loads((out / contract.INVALID_FILE).read_text())
    ]
    assert len(ids) == 3 and all('#' in i for i in ids)


def test_generate_task_reports_nan_samples_and_keeps_the_rest(generate_dir, monkeypatch):
    tmp_path, entry = generate_dir
    magnesium = load_checkpoint(tmp_path / 'in' / entry['file'])['elements'].index('Mg')
    forward = EquiCSPDenoiser.forward

    def nan_for_magnesium(self, t, types, known, frac, gram, num_atoms, batch):
        lattice, score, type_eps = forward(self, t, types, known, frac, gram, num_atoms, batch)
        poisoned = torch.isin(batch, batch[types[:, magnesium] > 0.5])  # every atom of a crystal holding Mg
        return lattice, torch.where(poisoned[:, None], float('nan'), score), type_eps

    monkeypatch.setattr(EquiCSPDenoiser, 'forward', nan_for_magnesium)
    config = {'models': [entry], 'mode': 'csp', 'compositions': {'LiO': 2, 'MgS': 2}, 'steps': 8}
    code, error, out = _generate(tmp_path, config)
    assert (code, error) == (2, contract.NAN_OUTPUT)
    invalid = json.loads((out / contract.INVALID_FILE).read_text())
    assert sorted(row['id'] for row in invalid if row['reason'] == 'nan') == ['MgS#0', 'MgS#1']
    kept = list(read_npz(out / contract.STRUCTURES_FILE).ids) + [r['id'] for r in invalid if r['reason'] != 'nan']
    assert sorted(kept) == ['LiO#0', 'LiO#1']


# -- ab initio sampling restricted to elements ---------------------------------------------------------------
def test_elements_assignment_is_the_best_that_holds_every_required_element():
    """The constrained assignment against brute force over every assignment of 4 atoms to 3 allowed elements."""
    from aiida_hpcai.models.diffusion import TypeRestriction

    restriction = TypeRestriction(allowed=[0, 2, 3], required=[0, 2, 3])
    scores = torch.randn(9, 5, generator=torch.Generator().manual_seed(4))
    scores[:, 1] = 10.0  # best everywhere, and not allowed
    index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    types = restriction.assign(scores, index, 2)
    for crystal in (0, 1):
        atoms = (index == crystal).nonzero().flatten()
        best = max(
            sum(scores[a, e].item() for a, e in zip(atoms, choice))
            for choice in itertools.product([0, 2, 3], repeat=len(atoms))
            if set(choice) == {0, 2, 3}
        )
        assert set(types[atoms].tolist()) == {0, 2, 3}
        assert math.isclose(sum(scores[a, types[a]].item() for a in atoms), best, rel_tol=1e-6)
    # nothing required: the best allowed element of each atom
    assert TypeRestriction([0, 2]).assign(scores, index, 2).tolist() == scores[:, [0, 2]].argmax(-1).mul(2).tolist()
    with pytest.raises(ValueError, match='not all allowed'):
        TypeRestriction([0], [1])


@pytest.mark.parametrize('required', [[0, 3], []])
def test_elements_restrict_ab_initio_samples_of_a_tiny_model(required):
    """An untrained tiny denoiser samples any of its six elements; restricted, only the allowed ones, and
    every required one in every crystal."""
    from aiida_hpcai.models.diffusion import TypeRestriction

    torch.manual_seed(0)
    model = EquiCSPDenoiser(PRESETS['tiny'], num_elements=6).eval()
    num_atoms = torch.tensor([2, 3, 4, 2, 5, 3, 2, 4])
    index = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    scaler, schedules = LatticeScaler(), Schedules(50)

    def types(restriction):
        generator = torch.Generator().manual_seed(1)
        out = sample(model, num_atoms, schedules, scaler, 6, steps=10, generator=generator, restriction=restriction)
        return [set(out['types'][index == crystal].tolist()) for crystal in range(len(num_atoms))]

    assert set().union(*types(None)) - {0, 3}  # unrestricted: other elements too (so the test can fail)
    restricted = types(TypeRestriction([0, 3], required))
    assert all(crystal <= {0, 3} for crystal in restricted)
    if required:
        assert all(crystal == {0, 3} for crystal in restricted)
    with pytest.raises(ValueError, match='at least as many atoms'):
        sample(model, torch.tensor([1]), schedules, scaler, 6, steps=2, restriction=TypeRestriction([0, 3], [0, 3]))


def test_elements_atom_counts_hold_the_required_elements():
    counts = np.array([0, 0, 5, 0, 3])
    rng = np.random.default_rng(0)
    assert set(atom_counts(200, 'dataset', counts, 4, rng, min_atoms=3)) == {4}
    assert set(atom_counts(200, 'uniform', counts, 4, rng, min_atoms=3)) == {3, 4}
    assert set(atom_counts(50, 'dataset', np.array([0, 4, 0, 0, 0]), 4, rng, min_atoms=2)) <= {2, 3, 4}
    with pytest.raises(ValueError, match='at least 5 atoms'):
        atom_counts(1, 'dataset', counts, 4, rng, min_atoms=5)


@pytest.mark.parametrize(
    'restriction, check',
    [
        ({'elements': ['Li', 'O']}, lambda elements: elements == {'Li', 'O'}),
        ({'elements': ['Li', 'O'], 'required_elements': []}, lambda elements: elements <= {'Li', 'O'}),
        ({'required_elements': ['Fe']}, lambda elements: 'Fe' in elements),
    ],
)
def test_generate_task_elements(generate_dir, restriction, check):
    from pymatgen.core import Composition

    tmp_path, entry = generate_dir
    config = {'models': [entry], 'mode': 'abinitio', 'n_samples': 6, 'steps': 8, **restriction}
    code, error, out = _generate(tmp_path, config)
    assert (code, error) == (0, None)
    summary = json.loads((out / contract.SUMMARY_FILE).read_text())
    ids = list(read_npz(out / contract.STRUCTURES_FILE).ids) + [
        r['id'] for r in json.loads((out / contract.INVALID_FILE).read_text())
    ]
    assert len(ids) == 6
    assert all(check({str(e) for e in Composition(i.split('#')[0]).elements}) for i in ids), ids
    expected = restriction.get('required_elements', restriction.get('elements'))
    assert sorted(summary['required_elements']) == sorted(expected)


@pytest.mark.parametrize(
    'config, expected',
    [
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': ['Na', 'O']}, contract.UNKNOWN_ELEMENT),
        ({'mode': 'abinitio', 'n_samples': 2, 'required_elements': ['Na']}, contract.UNKNOWN_ELEMENT),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': []}, contract.INVALID_CONFIG),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': 'Fe,O'}, contract.INVALID_CONFIG),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': ['Li'], 'required_elements': ['O']}, contract.INVALID_CONFIG),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': ['Li', 'O', 'Fe']}, contract.TOO_MANY_ATOMS),
        ({'mode': 'csp', 'compositions': {'LiO': 1}, 'elements': ['Li', 'O']}, contract.INVALID_CONFIG),
    ],
)
def test_generate_task_elements_error_codes(generate_dir, config, expected):
    tmp_path, entry = generate_dir
    code, error, _ = _generate(tmp_path, {'models': [entry], **config})
    assert (code, error) == (2, expected)
