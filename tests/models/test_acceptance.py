"""The calibrated acceptance rule (aiida_hpcai/models/acceptance.py) on synthetic data whose answer is
known: errors drawn from N(0, (f * sigma)^2) with sigma uniform on [A, B], so that the chance of a
prediction with sigma s being within the tolerance is p(s) = erf(tol / (f s sqrt 2)) (the
conditional guarantee needs p(threshold) >= level), and the rate of the accepted ones at threshold t
is the mean of p over [A, t] (the marginal guarantee needs that >= level)."""

import json
import math

import numpy as np
import pytest

from aiida_hpcai.models.acceptance import (
    acceptance_report,
    accepted,
    calibrate_acceptance,
    clopper_pearson,
    record_path,
    refresh,
    shipped_acceptance,
)

A, B, TOL, LEVEL = 0.01, 0.2, 0.12, 0.9
_S = np.linspace(A, B, 20001)
_POINTWISE = {}


def p_within(s, factor: float = 1.0):
    return math.erf(TOL / (factor * s * math.sqrt(2)))


def true_rate(threshold: float, factor: float = 1.0, low: float = A) -> float:
    """Rate within TOL of the predictions with sigma <= threshold (sigma uniform on [low, B])."""
    if factor not in _POINTWISE:
        _POINTWISE[factor] = np.array([p_within(s, factor) for s in _S])
    keep = (_S <= threshold) & (_S >= low)
    return float(_POINTWISE[factor][keep].mean())


def true_threshold(factor: float = 1.0, guarantee: str = 'marginal') -> float:
    """The largest threshold that keeps the promise: the rate of all accepted (marginal) or the chance
    at the threshold (conditional: TOL / (factor z_0.95))."""
    if guarantee == 'conditional':
        return TOL / (factor * 1.6448536269514722)
    rates = np.array([true_rate(t, factor) for t in _S[::100]])
    return float(_S[::100][rates >= LEVEL].max())


def draw(n: int, factor: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(A, B, n)
    return rng.normal(0.0, factor * sigma), sigma, np.zeros(n)


def test_conditional_threshold_recovered_for_a_calibrated_model():
    record = calibrate_acceptance(*draw(20000))
    best = true_threshold(guarantee='conditional')
    assert record['guarantee'] == 'conditional' and record['reason'] is None
    assert p_within(record['threshold']) >= LEVEL  # every accepted prediction has at least a 90% chance
    assert best - 0.02 <= record['threshold'] <= best
    assert record['band_size'] == 2000 and record['band_rate'] >= record['lower_bound'] >= LEVEL
    assert record['rate'] > record['band_rate']  # the accepted as a whole do better than the band above
    json.dumps(record)  # a record is plain JSON


def test_marginal_threshold_recovered_for_a_calibrated_model():
    record = calibrate_acceptance(*draw(20000), guarantee='marginal')
    best = true_threshold()
    assert record['reason'] is None
    # valid (the true rate at the chosen threshold keeps the promise) and close to the best one
    assert true_rate(record['threshold']) >= LEVEL
    assert best - 0.015 <= record['threshold'] <= best
    assert record['lower_bound'] >= LEVEL
    assert record['rate'] >= record['lower_bound']
    assert record['n'] == 20000
    assert record['accepted_fraction'] == pytest.approx(record['n_accepted'] / 20000)


@pytest.mark.parametrize('guarantee', ['conditional', 'marginal'])
def test_a_miscalibrated_model_gets_a_smaller_threshold(guarantee):
    good = calibrate_acceptance(*draw(20000), guarantee=guarantee)
    # errors twice what sigma says
    overconfident = calibrate_acceptance(*draw(20000, factor=2.0, seed=1), guarantee=guarantee)
    assert 0 < overconfident['threshold'] < good['threshold']
    assert overconfident['threshold'] <= true_threshold(2.0, guarantee)
    assert (p_within if guarantee == 'conditional' else true_rate)(overconfident['threshold'], 2.0) >= LEVEL


@pytest.mark.parametrize('guarantee', ['conditional', 'marginal'])
def test_the_promise_holds_over_repeated_calibrations(guarantee):
    """With confidence 0.95 at most 5% of calibration draws may choose a threshold that breaks the
    promise (with a binomial margin for 200 draws)."""
    failures, accepted_any = 0, 0
    for seed in range(200):
        threshold = calibrate_acceptance(*draw(1000, seed=100 + seed), guarantee=guarantee)['threshold']
        accepted_any += threshold > 0
        kept = p_within(threshold) if guarantee == 'conditional' else true_rate(threshold)
        failures += threshold > 0 and kept < LEVEL
    assert accepted_any >= 190  # not a rule that keeps its promise by accepting nothing
    assert failures <= 18  # P(Binomial(200, 0.05) > 18) < 0.5%


def test_the_conditional_promise_survives_a_loop_of_uncertain_candidates():
    """A loop whose candidates are more uncertain than the calibration set (sigma uniform on
    [0.05, 0.2] instead of [0.01, 0.2]): the conditional threshold still keeps 90% of the accepted
    within the tolerance; the marginal one, fitted to the mix of the calibration set, does not."""
    data = draw(20000)
    conditional = calibrate_acceptance(*data)['threshold']
    marginal = calibrate_acceptance(*data, guarantee='marginal')['threshold']
    assert true_rate(conditional, low=0.05) >= LEVEL
    assert true_rate(marginal, low=0.05) < LEVEL


def test_too_few_points_accept_nothing_with_the_reason():
    mean, sigma, truth = np.zeros(20), np.linspace(0.01, 0.05, 20), np.zeros(20)  # all exact
    record = calibrate_acceptance(mean, sigma, truth)
    assert record['threshold'] == 0.0
    assert record['n_accepted'] == 0 and record['rate'] is None
    assert 'too few calibration points (20)' in record['reason']
    marginal = calibrate_acceptance(mean, sigma, truth, guarantee='marginal')
    assert marginal['threshold'] == 0.0 and 'too few calibration points (20)' in marginal['reason']
    assert not accepted(sigma, record['threshold']).any()
    report = acceptance_report(mean, sigma, truth, record['threshold'])
    assert report['n_accepted'] == 0 and report['rate'] is None and report['rate_all'] == 1.0


@pytest.mark.parametrize('guarantee', ['conditional', 'marginal'])
def test_a_sigma_that_does_not_sort_the_errors_accepts_nothing(guarantee):
    rng = np.random.default_rng(3)
    sigma = rng.uniform(A, B, 5000)
    mean = rng.normal(0.0, 0.2, 5000)  # 45% within 0.12 whatever sigma says
    record = calibrate_acceptance(mean, sigma, np.zeros(5000), guarantee=guarantee)
    assert record['threshold'] == 0.0
    assert record['reason'].startswith('no threshold keeps 0.9')


def test_non_finite_points_are_left_out_and_bad_input_refused():
    mean, sigma, truth = draw(2000)
    mean[:10] = np.nan
    sigma[10:20] = np.inf
    assert calibrate_acceptance(mean, sigma, truth)['n'] == 1980
    with pytest.raises(ValueError, match='differ in length'):
        calibrate_acceptance(mean, sigma[:5], truth)
    with pytest.raises(ValueError, match='level must lie in'):
        calibrate_acceptance(mean, sigma, truth, level=1.5)
    with pytest.raises(ValueError, match="unknown guarantee 'average'"):
        calibrate_acceptance(mean, sigma, truth, guarantee='average')


def test_clopper_pearson_matches_known_values():
    # 0 of n: lower 0; n of n: lower alpha**(1/n)
    assert clopper_pearson(0, 10, 0.05) == 0.0
    assert clopper_pearson(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10))
    assert clopper_pearson(0, 10, 0.05, upper=True) == pytest.approx(1 - 0.05 ** (1 / 10))
    low, high = clopper_pearson(90, 100, 0.05), clopper_pearson(90, 100, 0.05, upper=True)
    assert 0.83 < low < 0.9 < high < 0.95


def test_acceptance_report_counts():
    mean = np.array([0.0, 0.2, 0.05, 0.5])
    sigma = np.array([0.01, 0.02, 0.3, 0.4])
    report = acceptance_report(mean, sigma, np.zeros(4), threshold=0.1)
    assert report['n_accepted'] == 2 and report['accepted_fraction'] == 0.5
    assert report['rate'] == 0.5 and report['rate_not_accepted'] == 0.5 and report['rate_all'] == 0.5


@pytest.mark.parametrize('guarantee', ['conditional', 'marginal'])
def test_refresh_pools_results_of_the_same_distribution(guarantee):
    record = calibrate_acceptance(*draw(5000), model='abc', guarantee=guarantee)
    refreshed = refresh(record, *draw(5000, seed=7), model='abc')
    assert refreshed['pooled'] and refreshed['n'] == 10000 and refreshed['guarantee'] == guarantee
    assert refreshed['grid']['thresholds'] == record['grid']['thresholds']
    assert abs(refreshed['threshold'] - record['threshold']) <= 0.02
    assert (p_within if guarantee == 'conditional' else true_rate)(refreshed['threshold']) >= LEVEL
    assert refreshed['refreshes'][0]['n_new'] == 5000
    assert refreshed['refreshes'][0]['threshold_before'] == record['threshold']
    assert len(refresh(refreshed, *draw(100, seed=8))['refreshes']) == 2
    json.dumps(refreshed)


@pytest.mark.parametrize('guarantee', ['conditional', 'marginal'])
def test_refresh_lowers_the_threshold_when_the_new_results_are_worse(guarantee):
    record = calibrate_acceptance(*draw(5000), guarantee=guarantee)
    shifted = refresh(record, *draw(5000, factor=2.0, seed=9))  # the loop's chemistry is harder
    assert shifted['threshold'] < record['threshold']
    kept = p_within if guarantee == 'conditional' else true_rate
    assert kept(shifted['threshold'], 2.0) >= LEVEL - 0.01
    assert shifted['refused_by_new_results']
    assert max(shifted['refused_by_new_results']) > shifted['threshold']


@pytest.mark.parametrize('guarantee', ['conditional', 'marginal'])
def test_failed_audits_add_up_across_refreshes(guarantee):
    """A loop refreshes after each DFT batch, one audited acceptance at a time: two off by 0.25, at sigmas
    a band apart, refuse every threshold that accepts both once both are in, as they would together; one alone
    refuses nothing (an upper bound of 0.95 on 0 of 1)."""
    record = calibrate_acceptance(*draw(5000), guarantee=guarantee)
    threshold = record['threshold']
    low, high = 0.4 * threshold, 0.8 * threshold  # accepted predictions, in different bands
    once = refresh(record, [0.25], [high], [0.0])
    assert once['refused_by_new_results'] == [] and once['added_grid']['n_accepted'][-1] == 1
    twice = refresh(once, [0.25], [low], [0.0])
    together = refresh(record, [0.25, 0.25], [high, low], [0.0, 0.0])
    assert twice['threshold'] == together['threshold'] < high
    assert twice['added_grid'] == together['added_grid'] and twice['added_grid']['n_within'][-1] == 0
    candidates = np.asarray(record['grid']['thresholds'])
    assert set(candidates[candidates >= high]) <= set(twice['refused_by_new_results'])
    json.dumps(twice)


def test_refresh_of_another_model_or_an_empty_record_calibrates_the_new_results_alone():
    record = calibrate_acceptance(*draw(5000), model='old')
    other = refresh(record, *draw(50, seed=4), model='new')
    assert not other['pooled'] and "model 'old'" in other['not_pooled_because']
    assert other['threshold'] == 0.0 and 'too few' in other['reason']  # 50 points certify nothing
    empty = calibrate_acceptance([], [], [])
    assert empty['threshold'] == 0.0 and 'too few calibration points (0)' in empty['reason']
    enough = refresh(empty, *draw(5000, seed=5))
    assert not enough['pooled'] and enough['threshold'] > 0
    assert p_within(enough['threshold']) >= LEVEL


def test_shipped_record_names_its_data_and_model():
    record = shipped_acceptance('formation_energy_per_atom')
    assert record['threshold'] > 0 and record['reason'] is None and record['guarantee'] == 'conditional'
    assert record['lower_bound'] >= record['level'] == 0.9 and record['tolerance'] == 0.12
    assert 'mp_cgcnn' in record['dataset'] and record['calibration_split'].startswith('val')
    assert record['n'] > 3000
    assert set(record['measured']) >= {'test'}
    assert 0 < record['measured']['test']['accepted_fraction'] <= 1
    # the checkpoint it was calibrated for is the one shipped (its JSON records the sha256)
    checkpoint = json.loads(
        (record_path('formation_energy_per_atom').parent / 'crysformer_mp_formation_energy.json').read_text()
    )
    assert record['model'] == checkpoint['sha256']
    with pytest.raises(ValueError, match="no shipped acceptance record for target 'density'"):
        shipped_acceptance('density')


def test_a_zero_sigma_is_never_a_threshold():
    mean, sigma, truth = draw(3000, seed=11)
    sigma[:500] = 0.0  # a degenerate ensemble whose members agree exactly
    record = calibrate_acceptance(mean, sigma, truth)
    assert min(record['grid']['thresholds']) > 0
    assert record['threshold'] > 0 and accepted(sigma, record['threshold'])[:500].all()
