"""The calibrated acceptance rule: when a surrogate prediction may stand in for a DFT result.

A prediction is *accepted* when its (calibrated) ``sigma <= threshold``; it is *within tolerance*
when ``|mean - reference| <= tolerance``. The promise of the rule: at least ``level`` of the
accepted predictions lie within ``tolerance`` of the reference, on data the model has not seen.
A fixed threshold cannot keep it (issue 23 reports that the shipped formation-energy ensemble's
``sigma <= 0.12`` kept 96% within 0.12 eV/atom on one unseen set and 86% on a newer MP snapshot),
so the threshold is chosen on a held-out calibration set and refreshed with the loop's own DFT
results. Measured figures: ``benchmarks/results/surrogate_acceptance.json`` and the docs page of
the surrogate model.

How the threshold is chosen (``calibrate_acceptance``)
    Candidate thresholds: up to ``max_candidates`` quantiles of the calibration sigmas (every distinct
    sigma when there are fewer); they depend on the sigmas only, never on the errors. Each candidate
    is tested with a one-sided Clopper-Pearson lower bound (exact for a binomial count, never
    anti-conservative, unlike a normal approximation at 90%+ rates and a few hundred points), and
    the threshold is the largest candidate that passes. Two guarantees:

    ``conditional`` (the default): at each candidate ``t`` the test is on the *band* of the
    ``ceil(band * n)`` calibration predictions just above ``t``; ``t`` passes when the band's bound
    reaches ``level``. Candidates are tested from the smallest up and the first failure stops the
    sequence (fixed-sequence testing: each test at the full ``1 - confidence``, the family still
    controlled, because the order is fixed before the errors are seen). If the chance of being within
    tolerance does not rise with sigma (what a useful sigma means; the benchmark shows it for the
    shipped model), the band's rate is a lower bound on that chance at ``t`` and so at every accepted
    sigma: the promise then holds for *any* mix of sigmas among the new predictions, which is what a
    design loop needs, since its candidates are not distributed like the calibration set (a loop
    that generates mostly uncertain structures would make a marginal rate meaningless).

    ``marginal``: at each candidate ``t`` the test is on all accepted calibration predictions
    (``sigma <= t``), with the Bonferroni factor ``1 / K`` over the ``K`` candidates, so that the
    bound holds for all candidates at once and hence for the chosen one. This is the literal
    promise (at least ``level`` of the accepted predictions within tolerance) for new data
    exchangeable with the calibration set, and no more: on the shipped model's validation split it
    accepts every prediction, because 93.6% of all of them are within 0.12 eV/atom
    (``benchmarks/results/surrogate_acceptance.json``).

    Why not the plain conformal argument: split conformal gives ``rate >= level`` only in expectation
    over calibration sets and for one threshold fixed in advance; picking the largest of many on the
    same data needs a correction for looking many times, and a bound that holds with probability
    ``confidence`` is the promise a user can rely on. Either bound is a statement about the
    calibration distribution of errors given sigma: under a shift of that (other chemistry, another
    DFT setup) it holds only once data of the new distribution are in the count, which is what
    ``refresh`` is for. When no candidate passes (too few points, or a sigma that does not sort the
    errors) the threshold is 0.0: nothing is accepted, and ``reason`` says why.

How it is refreshed (``refresh``)
    The record keeps, for each candidate, the counts ``n_accepted`` and ``n_within`` (not the data).
    New reference results (the loop's DFT results, predicted by the *current* model) are counted on
    the same candidates and added, and the test above is repeated on the pooled counts, with one more
    condition: the results added by refreshes (this one's and every earlier one's, whose counts the
    record keeps apart as ``added_grid``) must not be evidence against the promise at a candidate:
    their Clopper-Pearson *upper* bound at ``confidence`` must not be below ``level``, on all of them
    the candidate accepts and (``conditional``) on the same band, without a Bonferroni factor, since a
    wrong refusal only costs DFT runs. Pooling certifies the pooled distribution; the check is what
    reacts to a loop whose chemistry the calibration set does not represent. It counts every refresh's
    results together because a loop refreshes after each DFT batch: two audited acceptances both off,
    one per batch, are evidence (an upper bound of 0.78 on 0 of 2) that neither is alone (0.95 on 0 of
    1); and on all accepted ones because a loop's few results rarely share a band (on the MgO loop's two
    failed audits, sigmas 0.025 and 0.034, no band of the shipped record held both). When the record
    belongs to another model (``model`` given and different from the record's) or has no counts, the
    stored counts are dropped and the new results are calibrated alone. Pass only results the
    current model was not trained on (after a fine-tune, the DFT results it was trained on are no
    test of it). Results that were sent to DFT *because* they were not accepted test only larger
    thresholds; a few accepted candidates sent to DFT at random test the threshold in use.

The stable interface (the ``hpcai.coordinate`` WorkChain relies on it)::

    calibrate_acceptance(mean, sigma, truth, tolerance=0.12, level=0.9, confidence=0.95,
                         *, guarantee='conditional', band=0.1, max_candidates=50, model=None)
        -> record (dict, JSON-serialisable)
    acceptance_report(mean, sigma, truth, threshold, tolerance=0.12) -> dict
    refresh(calibration_record, new_mean, new_sigma, new_truth, *, model=None) -> record
    accepted(sigma, threshold) -> boolean mask (finite sigma, sigma <= threshold, threshold > 0)
    shipped_acceptance(target) -> record of the shipped model (``threshold`` is the rule)
    record_path(target) -> its file, ``pretrained/acceptance_<target>.json``

A record holds ``threshold``, ``accepted_fraction``, ``rate``, ``lower_bound``, ``n``,
``n_accepted``, ``reason`` (None unless nothing is accepted), the options (``tolerance``, ``level``,
``confidence``, ``guarantee``, ``band``, ``band_size``, ``bound``, ``max_candidates``), ``model``
(the checkpoint's sha256, as ``ModelData.sha256``) and the ``grid`` of counts that ``refresh``
needs; a refreshed record also ``pooled``, ``refused_by_new_results`` and ``refreshes`` (one entry
per refresh); a conditional one ``band_rate`` (the rate of the band above its threshold).

Pure: numpy and scipy (a dependency of pymatgen) only; no aiida, no torch.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / 'pretrained'
GUARANTEES = ('conditional', 'marginal')
BOUNDS = {
    'conditional': 'clopper-pearson on the band above each threshold, fixed-sequence test from the smallest',
    'marginal': 'clopper-pearson on all accepted, bonferroni over the candidate thresholds',
}

__all__ = (
    'acceptance_report',
    'accepted',
    'calibrate_acceptance',
    'clopper_pearson',
    'record_path',
    'refresh',
    'shipped_acceptance',
)


def clopper_pearson(within, n, alpha: float, upper: bool = False) -> np.ndarray:
    """One-sided Clopper-Pearson bound(s) on a binomial rate: ``within`` successes of ``n``, error
    ``alpha``. Lower bound by default (0 where nothing succeeded or ``n`` is 0); ``upper=True``: the
    upper bound (1 where everything succeeded or ``n`` is 0)."""
    from scipy.stats import beta

    within, n = np.asarray(within, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        if upper:
            bound = beta.ppf(1 - alpha, within + 1, np.maximum(n - within, 1e-300))
            return np.where((n == 0) | (within >= n), 1.0, bound)
        bound = beta.ppf(alpha, np.maximum(within, 1e-300), n - within + 1)
        return np.where((n == 0) | (within <= 0), 0.0, bound)


def _clean(mean, sigma, truth) -> tuple[np.ndarray, np.ndarray]:
    """sigma and |error| of the points where all three are finite (a failed prediction counts nowhere)."""
    mean, sigma, truth = (np.asarray(a, dtype=np.float64).ravel() for a in (mean, sigma, truth))
    if not len(mean) == len(sigma) == len(truth):
        raise ValueError(f'mean, sigma and truth differ in length: {len(mean)}, {len(sigma)}, {len(truth)}')
    keep = np.isfinite(mean) & np.isfinite(sigma) & np.isfinite(truth)
    return sigma[keep], np.abs(mean[keep] - truth[keep])


def _candidates(sigma: np.ndarray, max_candidates: int) -> np.ndarray:
    """Up to ``max_candidates`` thresholds, each one of the positive sigmas (quantiles; all when fewer;
    a threshold of 0 is the rule that accepts nothing)."""
    distinct = np.unique(sigma[sigma > 0])
    if len(distinct) <= max_candidates:
        return distinct
    levels = np.linspace(1, max_candidates, max_candidates) / max_candidates
    return np.unique(np.quantile(sigma[sigma > 0], levels, method='inverted_cdf'))


def _counts(thresholds: np.ndarray, sigma: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accepted and accepted-within-tolerance counts at each threshold."""
    order = np.argsort(sigma, kind='stable')
    position = np.searchsorted(sigma[order], thresholds, side='right')
    cumulative = np.concatenate([[0], np.cumsum(correct[order])])
    return position.astype(int), cumulative[position].astype(int)


def _minimum_count(level: float, alpha: float) -> int:
    """Fewest predictions, all within tolerance, whose lower bound reaches ``level``."""
    return int(math.ceil(math.log(alpha) / math.log(level)))


def _band_size(band: float, n: int) -> int:
    return max(int(math.ceil(band * n)), 1)


def _bands(n_accepted: np.ndarray, size: int) -> np.ndarray:
    """For each candidate ``j`` the first candidate ``j'`` with at least ``size`` points in
    ``(t_j, t_j']``; -1 where the points above ``t_j`` are fewer."""
    target = n_accepted + size
    upper = np.searchsorted(n_accepted, target, side='left')
    return np.where(upper < len(n_accepted), upper, -1)


def _decide(grid: dict, n: int, options: dict, model, new_grid: dict | None = None) -> dict:
    """The record for counts on a grid of candidate thresholds (see the module docstring);
    ``new_grid``: the counts of the results added by refreshes so far, which may refuse a candidate (``refresh``)."""
    thresholds = np.asarray(grid['thresholds'], dtype=np.float64)
    n_accepted = np.asarray(grid['n_accepted'], dtype=np.int64)
    n_within = np.asarray(grid['n_within'], dtype=np.int64)
    level, confidence, guarantee = options['level'], options['confidence'], options['guarantee']
    k = len(thresholds)
    record = {
        **options,
        'bound': BOUNDS[guarantee],
        'n': int(n),
        'n_candidates': k,
        'model': model,
        'threshold': 0.0,
        'n_accepted': 0,
        'accepted_fraction': 0.0,
        'rate': None,
        'lower_bound': None,
        'reason': None,
    }
    if guarantee == 'marginal':
        alpha = (1 - confidence) / max(k, 1)
        lower = clopper_pearson(n_within, n_accepted, alpha)
        ok = lower >= level
        if new_grid is not None:  # no Bonferroni factor: a wrong refusal only costs DFT runs
            new_upper = clopper_pearson(new_grid['n_within'], new_grid['n_accepted'], 1 - confidence, upper=True)
            refused = new_upper < level
            ok &= ~refused
        best = int(np.nonzero(ok)[0].max()) if ok.any() else -1
        tested = f'over {k} candidate thresholds needs at least {{needed}} accepted predictions'
        too_few = n < _minimum_count(level, alpha)
    else:
        alpha = 1 - confidence  # fixed-sequence testing: each test at the full level
        size = _band_size(options['band'], n)
        record['band_size'] = size
        upper = _bands(n_accepted, size)
        has_band = upper >= 0
        band_n = np.where(has_band, n_accepted[upper] - n_accepted, 0)
        band_within = np.where(has_band, n_within[upper] - n_within, 0)
        lower = np.where(has_band, clopper_pearson(band_within, band_n, alpha), 0.0)
        ok = has_band & (lower >= level)
        if new_grid is not None:
            new_n = np.asarray(new_grid['n_accepted'])
            new_within = np.asarray(new_grid['n_within'])
            new_band_n = np.where(has_band, new_n[upper] - new_n, 0)
            new_band_within = np.where(has_band, new_within[upper] - new_within, 0)
            refused = has_band & (clopper_pearson(new_band_within, new_band_n, alpha, upper=True) < level)
            refused |= clopper_pearson(new_within, new_n, alpha, upper=True) < level  # all it accepts
            ok &= ~refused
        best = int(np.argmin(ok)) - 1 if not ok.all() else k - 1  # the last of the unbroken run from the start
        tested = 'needs bands of at least {needed} predictions above a threshold'
        too_few = size < _minimum_count(level, alpha) or n <= size
        if best >= 0:
            record['band_rate'] = float(band_within[best] / band_n[best])
    if best >= 0:
        record.update(
            {
                'threshold': float(thresholds[best]),
                'n_accepted': int(n_accepted[best]),
                'accepted_fraction': float(n_accepted[best] / n),
                'rate': float(n_within[best] / n_accepted[best]),
                'lower_bound': float(lower[best]),
            }
        )
    elif too_few:
        needed = _minimum_count(level, alpha)
        record['reason'] = (
            f'too few calibration points ({n}): a lower bound of {level} at confidence {confidence} '
            + tested.format(needed=needed)
            + ', all within tolerance'
        )
    else:
        rates = n_within / np.maximum(n_accepted, 1)
        first = f'; rate {rates[0]:.3f} at sigma <= {thresholds[0]:.4g}' if k else ''
        record['reason'] = (
            f'no threshold keeps {level} of the accepted predictions within {options["tolerance"]} '
            f'at confidence {confidence} (n={n}{first})'
        )
    if new_grid is not None:
        record['refused_by_new_results'] = [float(t) for t in thresholds[refused]]
    record['grid'] = {
        'thresholds': [float(t) for t in thresholds],
        'n_accepted': [int(v) for v in n_accepted],
        'n_within': [int(v) for v in n_within],
    }
    return record


def calibrate_acceptance(
    mean,
    sigma,
    truth,
    tolerance: float = 0.12,
    level: float = 0.9,
    confidence: float = 0.95,
    *,
    guarantee: str = 'conditional',
    band: float = 0.1,
    max_candidates: int = 50,
    model: str | None = None,
) -> dict:
    """The largest sigma threshold that keeps at least ``level`` of the accepted predictions within
    ``tolerance`` at ``confidence`` (see the module docstring for ``guarantee`` and ``band``). Points
    where mean, sigma or truth is not finite are left out. ``model`` (the checkpoint's sha256, as
    ``ModelData.sha256``) is kept in the record so that ``refresh`` can tell whose counts it holds."""
    options = _options(tolerance, level, confidence, guarantee, band)
    sigma, error = _clean(mean, sigma, truth)
    return _calibrate_errors(sigma, error, options, max_candidates, model)


def _options(tolerance, level, confidence, guarantee, band) -> dict:
    if not tolerance > 0:
        raise ValueError(f'tolerance must be positive, not {tolerance}')
    if not 0 < level < 1:
        raise ValueError(f'level must lie in (0, 1), not {level}')
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must lie in (0, 1), not {confidence}')
    if guarantee not in GUARANTEES:
        raise ValueError(f'unknown guarantee {guarantee!r}; use one of {GUARANTEES}')
    if not 0 < band < 1:
        raise ValueError(f'band must lie in (0, 1), not {band}')
    options = {'tolerance': float(tolerance), 'level': float(level), 'confidence': float(confidence)}
    return {**options, 'guarantee': guarantee, 'band': float(band)}


def _calibrate_errors(sigma: np.ndarray, error: np.ndarray, options: dict, max_candidates: int, model) -> dict:
    thresholds = _candidates(sigma, max_candidates)
    n_accepted, n_within = _counts(thresholds, sigma, error <= options['tolerance'])
    grid = {'thresholds': thresholds, 'n_accepted': n_accepted, 'n_within': n_within}
    return {**_decide(grid, len(sigma), options, model), 'max_candidates': int(max_candidates)}


def accepted(sigma, threshold: float) -> np.ndarray:
    """Which predictions the rule accepts: finite ``sigma <= threshold``; none when the threshold is 0
    (the rule of a calibration that accepted nothing)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if not threshold > 0:
        return np.zeros(sigma.shape, dtype=bool)
    return np.isfinite(sigma) & (sigma <= threshold)


def acceptance_report(mean, sigma, truth, threshold: float, tolerance: float = 0.12) -> dict:
    """What the rule ``sigma <= threshold`` does on a set with reference values: how many it accepts
    and the within-``tolerance`` rate (and MAE) of the accepted and of the other predictions."""
    sigma, error = _clean(mean, sigma, truth)
    return _report(sigma, error, threshold, tolerance)


def _report(sigma: np.ndarray, error: np.ndarray, threshold: float, tolerance: float) -> dict:
    keep = accepted(sigma, threshold)
    within = error <= tolerance
    n_accepted = int(keep.sum())
    return {
        'threshold': float(threshold),
        'tolerance': float(tolerance),
        'n': len(sigma),
        'n_accepted': n_accepted,
        'accepted_fraction': float(n_accepted / len(sigma)) if len(sigma) else 0.0,
        'rate': float(within[keep].mean()) if n_accepted else None,
        'mae_accepted': float(error[keep].mean()) if n_accepted else None,
        'rate_not_accepted': float(within[~keep].mean()) if (~keep).any() else None,
        'rate_all': float(within.mean()) if len(sigma) else None,
    }


def refresh(calibration_record: dict, new_mean, new_sigma, new_truth, *, model: str | None = None) -> dict:
    """A new record from a stored one and new reference results (the loop's DFT results, predicted by
    the current model, which was not trained on them): the counts are pooled on the stored candidate
    thresholds, and a threshold where the results added by refreshes so far (these and the earlier ones,
    ``added_grid``) show a rate below ``level`` is refused. A record of another ``model``, or one without
    counts, is not pooled: the new results are calibrated alone (``pooled`` False in the result), and they
    are its added results from then on."""
    options = _options(
        calibration_record['tolerance'],
        calibration_record['level'],
        calibration_record['confidence'],
        calibration_record.get('guarantee', 'conditional'),
        calibration_record.get('band', 0.1),
    )
    sigma, error = _clean(new_mean, new_sigma, new_truth)
    grid = calibration_record.get('grid') or {}
    stored_model = calibration_record.get('model')
    history = [*calibration_record.get('refreshes', [])]
    same_model = model is None or stored_model is None or model == stored_model
    max_candidates = int(calibration_record.get('max_candidates', 50))
    if not grid.get('thresholds') or not same_model:
        record = _calibrate_errors(sigma, error, options, max_candidates, stored_model if model is None else model)
        why = 'the stored record has no counts' if same_model else f'the stored record is of model {stored_model!r}'
        added = {key: record['grid'][key] for key in ('n_accepted', 'n_within')}
        record.update({'pooled': False, 'not_pooled_because': why, 'added_grid': added})
    else:
        thresholds = np.asarray(grid['thresholds'], dtype=np.float64)
        new_accepted, new_within = _counts(thresholds, sigma, error <= options['tolerance'])
        pooled = {
            'thresholds': thresholds,
            'n_accepted': np.asarray(grid['n_accepted']) + new_accepted,
            'n_within': np.asarray(grid['n_within']) + new_within,
        }
        earlier = calibration_record.get('added_grid') or {}
        added = {
            'n_accepted': np.asarray(earlier.get('n_accepted', 0)) + new_accepted,
            'n_within': np.asarray(earlier.get('n_within', 0)) + new_within,
        }
        record = _decide(
            pooled,
            int(calibration_record['n']) + len(sigma),
            options,
            stored_model if model is None else model,
            added,
        )
        record.update(
            {
                'max_candidates': max_candidates,
                'pooled': True,
                'added_grid': {key: [int(v) for v in value] for key, value in added.items()},
            }
        )
    new = _report(sigma, error, record['threshold'], options['tolerance'])
    history.append(
        {
            'n_new': len(sigma),
            'threshold_before': float(calibration_record.get('threshold', 0.0)),
            'threshold_after': record['threshold'],
            'new_accepted': new['n_accepted'],
            'new_rate': new['rate'],
        }
    )
    record['refreshes'] = history
    return record


def record_path(target: str) -> pathlib.Path:
    """The shipped acceptance record of ``target`` (next to the shipped checkpoints)."""
    return PRETRAINED_DIR / f'acceptance_{target}.json'


def shipped_acceptance(target: str) -> dict:
    """The acceptance record calibrated for the shipped model of ``target``: ``threshold`` is the rule,
    ``dataset``/``calibration_split`` name the data it was calibrated on, ``measured`` the rates found
    on other sets; ``refresh`` takes it as its ``calibration_record``."""
    path = record_path(target)
    if not path.exists():
        known = sorted(p.stem.removeprefix('acceptance_') for p in PRETRAINED_DIR.glob('acceptance_*.json'))
        raise ValueError(f'no shipped acceptance record for target {target!r}; there are: {", ".join(known) or "none"}')
    return json.loads(path.read_text())
