"""Training, fine-tuning, resuming, checkpoints and the uncertainty metrics (tiny models)."""

import json
import time

import numpy as np
import pytest
import torch

from aiida_hpcai.models import training as training_module
from aiida_hpcai.models.checkpoint import load_checkpoint, make_checkpoint, model_config_of, sha256_file
from aiida_hpcai.models.inference import EnsemblePredictor
from aiida_hpcai.models.training import composition_fractions, fit_element_reference, train_ensemble
from aiida_hpcai.models.uncertainty import (
    _normal_ppf,
    fit_sigma_scale,
    spearman,
    uncertainty_metrics,
)
from tests.samples import ELEMENT_VALUES, TINY, _split, synthetic_set


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    arrays = synthetic_set()
    folder = tmp_path_factory.mktemp('trained')
    # no element reference here: the network itself must learn the composition term
    checkpoint, metrics = train_ensemble(
        arrays,
        'energy',
        _split(len(arrays)),
        folder,
        model_config='tiny',
        training={**TINY, 'element_reference': False},
        units='eV/atom',
    )
    return arrays, folder, checkpoint, metrics


def test_element_reference_recovers_a_linear_composition_model():
    rng = np.random.default_rng(1)
    numbers_list = [rng.choice(list(ELEMENT_VALUES), rng.integers(1, 6)) for _ in range(300)]
    values = np.array([np.mean([ELEMENT_VALUES[z] for z in numbers]) for numbers in numbers_list])
    reference = fit_element_reference(numbers_list, values, alpha=1e-8)
    coefficients = np.asarray(reference['coefficients'])
    for z, value in ELEMENT_VALUES.items():
        assert coefficients[z] == pytest.approx(value, abs=1e-4)
    np.testing.assert_allclose(composition_fractions(numbers_list) @ coefficients, values, atol=1e-4)


def test_uncertainty_metrics_on_a_calibrated_gaussian():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 1.0, 20000)
    errors = rng.normal(size=sigma.size) * sigma
    metrics = uncertainty_metrics(errors, sigma, np.zeros_like(errors))
    assert metrics['coverage_90'] == pytest.approx(0.9, abs=0.01)
    assert metrics['miscalibration_area'] < 0.01
    assert metrics['spearman_abs_error_sigma'] > 0.3
    assert fit_sigma_scale(errors, sigma / 2) == pytest.approx(2.0, rel=0.03)
    # over-confident sigmas are penalised by every calibration metric
    bad = uncertainty_metrics(errors, sigma / 3, np.zeros_like(errors))
    assert (
        bad['miscalibration_area'] > 0.2 and bad['coverage_90'] < 0.5 and bad['gaussian_nll'] > metrics['gaussian_nll']
    )


def test_sigma_scale_is_not_inflated_by_near_zero_spreads():
    """A 3-member ensemble's spread is sometimes near zero; the NLL choice s^2 = mean(err^2/sigma^2)
    is then dominated by those structures and blows every sigma up; ours stays near calibrated."""
    rng = np.random.default_rng(1)
    true_sigma = rng.uniform(0.05, 0.3, 5000)
    errors = rng.normal(size=true_sigma.size) * true_sigma
    spread_of_three = (rng.normal(size=(3, true_sigma.size)) * true_sigma).std(axis=0)
    nll_scale = np.sqrt(np.mean((errors / spread_of_three) ** 2))
    scale = fit_sigma_scale(errors, spread_of_three)
    ours = uncertainty_metrics(errors, spread_of_three * scale, np.zeros_like(errors))
    nll_choice = uncertainty_metrics(errors, spread_of_three * nll_scale, np.zeros_like(errors))
    assert scale < 0.6 * nll_scale
    assert ours['miscalibration_area'] < 0.05 < 0.15 < nll_choice['miscalibration_area']
    assert ours['mean_sigma'] < 1.5 * true_sigma.mean() < nll_choice['mean_sigma']


def test_numpy_statistics_match_scipy():
    stats = pytest.importorskip('scipy.stats')
    p = np.array([1e-4, 0.01, 0.3, 0.5, 0.8, 0.95, 0.9999])
    np.testing.assert_allclose(_normal_ppf(p), stats.norm.ppf(p), atol=1e-8)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_training_writes_a_loadable_ensemble_and_figures(trained):
    arrays, folder, checkpoint, metrics = trained
    for name in ('model.pt', 'metadata.json', 'metrics.json', 'learning_curve.png', 'parity.png'):
        assert (folder / name).stat().st_size > 0
    assert not (folder / training_module.STATE_FILE).exists()
    loaded = load_checkpoint(folder / 'model.pt')  # weights_only=True
    assert len(loaded['members']) == 2 and loaded['target'] == 'energy' and loaded['units'] == 'eV/atom'
    assert loaded['element_reference'] is None
    assert set(loaded['sigma_scale']) == {'ensemble', 'mc_dropout', 'mc_dropout_readout'}
    assert loaded['split']['train']['count'] == 28
    metadata = json.loads((folder / 'metadata.json').read_text())
    assert metadata['sha256'] == sha256_file(folder / 'model.pt')
    for split in ('val', 'test'):
        for method in ('ensemble', 'mc_dropout', 'mc_dropout_readout'):
            assert {'mae', 'miscalibration_area', 'spearman_abs_error_sigma', 'gaussian_nll', 'coverage_90'} <= set(
                metrics[split][method]
            )
    history = metrics['history'][0]
    assert len(history) == TINY['epochs']
    assert history[-1]['train_loss'] < history[0]['train_loss']
    # the reloaded ensemble reproduces the recorded test MAE
    test = _split(len(arrays))['test']
    predicted = EnsemblePredictor([loaded]).predict(arrays.subset(test))
    assert np.mean(np.abs(predicted['mean'] - arrays.labels['energy'][test])) == pytest.approx(
        metrics['test']['mae'], rel=1e-5
    )


def test_the_model_learns_more_than_the_composition(trained):
    arrays, _, _, metrics = trained
    train_labels = arrays.labels['energy'][_split(len(arrays))['train']]
    test_labels = arrays.labels['energy'][_split(len(arrays))['test']]
    assert metrics['test']['mae'] < np.mean(np.abs(test_labels - train_labels.mean()))


def test_a_bounded_target_is_never_predicted_below_its_bound(trained):
    arrays, _, checkpoint, _ = trained
    assert checkpoint['lower_bound'] is None  # 'energy' has no physical bound
    assert (
        make_checkpoint(
            checkpoint['members'], model_config_of(checkpoint), 'band_gap', 'eV', checkpoint['normalization']
        )['lower_bound']
        == 0.0
    )
    free = EnsemblePredictor([checkpoint]).predict(arrays)
    bounded = EnsemblePredictor([{**checkpoint, 'lower_bound': 0.0}]).predict(arrays)
    assert np.any(free['mean'] < 0) and np.any(free['mean'] > 0)
    np.testing.assert_array_equal(bounded['mean'], np.maximum(free['mean'], 0.0))
    np.testing.assert_array_equal(bounded['sigma'], free['sigma'])
    # evaluation records what the bound gains on labels that respect it
    data = {
        'val': training_module.PreparedData(
            training_module.graphs_from_arrays(arrays)[0],
            None,
            np.maximum(arrays.labels['energy'], 0.0),
            list(arrays.ids),
        ),
        'test': training_module.PreparedData([], None, np.zeros(0), []),
    }
    metrics, _ = training_module.evaluate(
        EnsemblePredictor([{**checkpoint, 'lower_bound': 0.0}]), data, training_module.TrainingConfig(mc_samples=2)
    )
    unbounded = metrics['val']['without_lower_bound']
    assert metrics['val']['mae'] < unbounded['mae'] and len(unbounded['member_mae']) == 2
    assert all(b <= u for b, u in zip(metrics['val']['member_mae'], unbounded['member_mae']))


def test_fine_tuning_keeps_frozen_blocks_and_output_space(trained, tmp_path):
    arrays, folder, _, _ = trained
    parent = load_checkpoint(folder / 'model.pt')
    new_data = synthetic_set(24, seed=5)
    child, _ = train_ensemble(
        new_data,
        'energy',
        _split(24),
        tmp_path,
        training={**TINY, 'epochs': 2, 'learning_rate': None, 'freeze_blocks': 1},
        parent=parent,
    )
    assert child['normalization'] == parent['normalization']
    assert child['element_reference'] == parent['element_reference']
    assert child['hyperparameters']['training']['learning_rate'] == pytest.approx(1e-4)
    before, after = parent['members'][0], child['members'][0]
    frozen = [k for k in before if k.startswith(('embedding.', 'blocks.0.'))]
    trainable = [k for k in before if k.startswith('blocks.1.')]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trainable)
    with pytest.raises(ValueError, match='parent predicts'):
        train_ensemble(new_data, 'other', _split(24), tmp_path / 'x', training=TINY, parent=parent)


def test_a_fine_tune_validated_on_its_training_structures_keeps_the_parents_sigma_scale(trained, tmp_path):
    """A loop's fine-tune on a few DFT results validates on them (val = train): a scale fitted there would
    measure memorisation and shrink every sigma; a disjoint val split is fitted as usual."""
    _, folder, _, _ = trained
    parent = load_checkpoint(folder / 'model.pt')
    new_data = synthetic_set(12, seed=7)
    settings = {**TINY, 'epochs': 2, 'learning_rate': None}
    seen = {'train': np.arange(4), 'val': np.arange(4), 'test': np.arange(4, 12)}
    child, metrics = train_ensemble(new_data, 'energy', seen, tmp_path / 'seen', training=settings, parent=parent)
    assert child['sigma_scale'] == parent['sigma_scale']
    assert metrics['sigma_scale_from'] == 'parent (val overlaps train)'
    apart = {'train': np.arange(4), 'val': np.arange(4, 8), 'test': np.arange(8, 12)}
    child, metrics = train_ensemble(new_data, 'energy', apart, tmp_path / 'apart', training=settings, parent=parent)
    assert child['sigma_scale']['ensemble'] != parent['sigma_scale']['ensemble']
    assert metrics['sigma_scale_from'] == 'val'


def _crashing_on_call(function, number: int):
    """``function``, except that its ``number``-th call raises KeyboardInterrupt (a killed job)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt('simulated crash')
        return function(*args, **kwargs)

    return wrapper


def test_interrupted_training_resumes(tmp_path, monkeypatch):
    arrays = synthetic_set(20, seed=3)
    options = {**TINY, 'epochs': 2}
    original = training_module.train_member
    monkeypatch.setattr(training_module, 'train_member', _crashing_on_call(original, 2))  # in the second member
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(arrays, 'energy', _split(20), tmp_path, model_config='tiny', training=options)
    saved = torch.load(tmp_path / training_module.STATE_FILE, weights_only=True)
    assert len(saved['finished_members']) == 1
    monkeypatch.setattr(training_module, 'train_member', original)
    resumed = []
    monkeypatch.setattr(training_module, 'train_member', lambda *a, **k: resumed.append(1) or original(*a, **k))
    checkpoint, _ = train_ensemble(arrays, 'energy', _split(20), tmp_path, model_config='tiny', training=options)
    assert len(resumed) == 1  # only the second member was trained again
    assert len(checkpoint['members']) == 2
    first = checkpoint['members'][0]
    assert all(torch.equal(first[k], saved['finished_members'][0][k]) for k in first)


def test_run_stopped_within_a_member_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Killed in its second epoch and started again: the member is the uninterrupted run's, to the bit (the same
    shuffles, learning rates and dropout draws). One member keeps the test short; the loop is the same for each."""
    arrays = synthetic_set(20, seed=3)
    options = {**TINY, 'epochs': 3, 'ensemble_size': 1}
    whole, _ = train_ensemble(arrays, 'energy', _split(20), tmp_path / 'whole', model_config='tiny', training=options)
    # an epoch collates 2 training batches (14 structures, 7 a batch) and 1 validation batch: call 4 is in the
    # first batch of the second epoch
    monkeypatch.setattr(training_module, 'collate', _crashing_on_call(training_module.collate, 4))
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(arrays, 'energy', _split(20), tmp_path / 'parts', model_config='tiny', training=options)
    saved = torch.load(tmp_path / 'parts' / training_module.STATE_FILE, weights_only=True)
    assert (saved['member'], saved['epoch']) == (0, 0)
    monkeypatch.undo()
    resumed, metrics = train_ensemble(
        arrays, 'energy', _split(20), tmp_path / 'parts', model_config='tiny', training=options
    )
    assert [[row['epoch'] for row in history] for history in metrics['history']] == [[0, 1, 2]]
    for member, member_resumed in zip(whole['members'], resumed['members'], strict=True):
        assert all(torch.equal(member[key], member_resumed[key]) for key in member)


def test_resumed_run_keeps_its_wall_clock_budget(tmp_path, monkeypatch):
    """A run stopped mid-member and started again counts the epochs already done against its budget
    (otherwise the schedule would warm up again and the run would exceed its budget)."""
    arrays = synthetic_set(20, seed=5)
    options = {**TINY, 'epochs': 3, 'ensemble_size': 1, 'max_minutes': 5.0}
    original_evaluate = training_module._evaluate
    monkeypatch.setattr(training_module, '_evaluate', _crashing_on_call(original_evaluate, 2))  # second epoch
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(arrays, 'energy', _split(20), tmp_path, model_config='tiny', training=options)
    state_path = tmp_path / training_module.STATE_FILE
    saved = torch.load(state_path, weights_only=True)
    # the member's budget is the run's 5 minutes less the graph building before it (seconds on a busy machine)
    assert 4.5 < saved['member_budget_minutes'] <= 5.0 and len(saved['history']) == 1
    saved['history'][0]['seconds'] = 120.0  # as if the first epoch had taken two minutes
    torch.save(saved, state_path)

    monkeypatch.setattr(training_module, '_evaluate', original_evaluate)
    budgets = []
    original_member = training_module.train_member
    monkeypatch.setattr(
        training_module,
        'train_member',
        lambda *a, **k: budgets.append(a[6].deadline - time.monotonic()) or original_member(*a, **k),
    )
    _, metrics = train_ensemble(arrays, 'energy', _split(20), tmp_path, model_config='tiny', training=options)
    left = saved['member_budget_minutes'] * 60.0 - 120.0  # the member's budget less the 2 minutes already spent
    assert left - 10.0 < budgets[0] <= left
    assert len(metrics['history'][0]) == 3 and metrics['history'][0][0]['seconds'] == 120.0


def test_wall_clock_budget_stops_training(tmp_path):
    arrays = synthetic_set(20, seed=4)
    checkpoint, metrics = train_ensemble(
        arrays,
        'energy',
        _split(20),
        tmp_path,
        model_config='tiny',
        training={**TINY, 'epochs': 50, 'ensemble_size': 1, 'max_minutes': 1e-4},
    )
    assert len(metrics['history'][0]) == 1
    # with an element reference the predictor adds the composition term back
    assert checkpoint['element_reference'] is not None
    test = _split(20)['test']
    predicted = EnsemblePredictor([checkpoint]).predict(arrays.subset(test), method='mc_dropout', mc_samples=3)
    assert np.all(predicted['status'] == 'ok') and np.all(predicted['sigma'] > 0)
    graphs = training_module.graphs_from_arrays(arrays, test)[0]
    readout = EnsemblePredictor([checkpoint]).sample(graphs, method='mc_dropout_readout', mc_samples=4)
    assert readout.shape == (4, len(test)) and np.all(readout.std(axis=0) > 0)
    single = EnsemblePredictor([checkpoint]).sample(
        [training_module.graphs_from_arrays(arrays, test)[0][0]], method='ensemble'
    )
    assert single.shape == (1, 1)


def test_learning_rate_schedule_follows_steps_or_budget_whichever_runs_out_first():
    from aiida_hpcai.models.loop import learning_rate_factor

    def factor(step, used=0.0):
        return learning_rate_factor(
            step, warmup_steps=500, total_steps=10000, budget_used=used, warmup_fraction=0.05, min_ratio=0.01
        )

    # without a budget: linear warm-up over the steps, cosine down to min_ratio at the last step
    assert factor(0) == pytest.approx(1 / 500) and factor(499) == pytest.approx(1.0)
    assert factor(5250) == pytest.approx(0.505) and factor(10000) == pytest.approx(0.01)
    # a budget that ends long before the warm-up steps: the clock drives both phases
    assert factor(10, used=0.05) == pytest.approx(1.0)
    assert factor(20, used=0.525) == pytest.approx(0.505)
    assert factor(30, used=1.0) == pytest.approx(0.01)
    # steps ahead of the clock win too
    assert factor(10000, used=0.3) == pytest.approx(0.01)
