"""The calibrated acceptance rule: when a surrogate prediction may stand in for a DFT result.

A prediction is *accepted* when its (calibrated) ``sigma <= threshold``; it is *within tolerance*
when ``|mean - reference| <= tolerance``. The promise of the rule: at least ``level`` of the
accepted predictions lie within ``tolerance`` of the reference, on data the model has not seen.
A fixed threshold cannot keep it (the shipped formation-energy ensemble's ``sigma <= 0.12`` kept
96% within 0.12 eV/atom on one unseen set and 86% on a newer MP snapshot), so the threshold is
chosen on a held-out calibration set and refreshed with the loop's own DFT results.

How the threshold is chosen (``calibrate_acceptance``)
    Candidate thresholds: up to ``max_candidates`` quantiles of the calibration sigmas (every distinct
    sigma when there are fewer). At each candidate ``t`` the accepted calibration predictions
    (``sigma <= t``, ``n_t`` of them, ``k_t`` within tolerance) give a one-sided Clopper-Pearson lower
    bound on the within-tolerance rate of accepted predictions at confidence ``1 - alpha / K``
    (``alpha = 1 - confidence``, ``K`` candidates: Bonferroni). The threshold is the largest candidate
    whose bound is at least ``level``. Why this and not the plain conformal argument: split conformal
    gives ``rate >= level`` only in expectation over calibration sets, and picking the largest of
    many thresholds on the same data needs a correction for looking many times; Clopper-Pearson is
    exact for a binomial count (never anti-conservative), and with the Bonferroni factor the bound
    holds for all candidates at once, hence for the chosen one: with probability at least
    ``confidence`` over the calibration draw, the accepted predictions of new data exchangeable with
    the calibration set are within tolerance at a rate of at least ``level``. The candidates depend
    on the sigmas only (never on the errors), which the argument needs. The bound is a statement
    about the calibration distribution: under a shift (other chemistry, another DFT setup) it holds
    only once data of the new distribution are in the count, which is what ``refresh`` is for.
    When no candidate reaches ``level`` (too few points, or a model whose sigma does not sort its
    errors) the threshold is 0.0: nothing is accepted, and ``reason`` says why.

How it is refreshed (``refresh``)
    The record keeps, for each candidate, the counts ``n_accepted`` and ``n_within`` (not the data).
    New reference results (the loop's DFT results, predicted by the *current* model) are counted on
    the same candidates and added; the threshold is the largest candidate whose pooled bound reaches
    ``level`` and where the new results alone are not evidence against the promise (their
    Clopper-Pearson *upper* bound at ``confidence``, without the Bonferroni factor, since a wrong
    refusal only costs DFT runs, is not below ``level``). Pooling certifies the pooled distribution;
    the check is what reacts to a loop whose chemistry the calibration set does not represent. When the record
    belongs to another model (``model`` given and different from the record's) or has no counts,
    the stored counts are dropped and the new results are calibrated alone. Pass only results the
    current model was not trained on (after a fine-tune, the DFT results it was trained on are no
    test of it). Results that were sent to DFT *because* they were not accepted test only larger
    thresholds; a few accepted candidates sent to DFT at random test the threshold in use.

The stable interface (the ``hpcai.coordinate`` WorkChain relies on it)::

    calibrate_acceptance(mean, sigma, truth, tolerance=0.12, level=0.9, confidence=0.95,
                         *, max_candidates=50, model=None) -> record (dict, JSON-serialisable)
    acceptance_report(mean, sigma, truth, threshold, tolerance=0.12) -> dict
    refresh(calibration_record, new_mean, new_sigma, new_truth, *, model=None) -> record
    accepted(sigma, threshold) -> boolean mask (finite sigma, sigma <= threshold, threshold > 0)
    shipped_acceptance(target) -> record of the shipped model (``threshold`` is the rule)
    record_path(target) -> its file, ``pretrained/acceptance_<target>.json``

A record holds ``threshold``, ``accepted_fraction``, ``rate``, ``lower_bound``, ``n``,
``n_accepted``, ``reason`` (None unless nothing is accepted), the options (``tolerance``, ``level``,
``confidence``, ``bound``, ``max_candidates``), ``model`` (the checkpoint's sha256, as
``ModelData.sha256``) and the ``grid`` of counts that ``refresh`` needs; a refreshed record also
``pooled`` and ``refreshes`` (one entry per refresh).

Pure: numpy and scipy (a dependency of pymatgen) only; no aiida, no torch.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / 'pretrained'
BOUND = 'clopper-pearson, bonferroni over the candidate thresholds'

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


def _check_options(tolerance: float, level: float, confidence: float) -> None:
    if not tolerance > 0:
        raise ValueError(f'tolerance must be positive, not {tolerance}')
    if not 0 < level < 1:
        raise ValueError(f'level must lie in (0, 1), not {level}')
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must lie in (0, 1), not {confidence}')


def _candidates(sigma: np.ndarray, max_candidates: int) -> np.ndarray:
    """Up to ``max_candidates`` thresholds, each one of the sigmas (quantiles; all when fewer)."""
    distinct = np.unique(sigma)
    if len(distinct) <= max_candidates:
        return distinct
    return np.unique(
        np.quantile(sigma, np.linspace(1, max_candidates, max_candidates) / max_candidates, method='inverted_cdf')
    )


def _counts(thresholds: np.ndarray, sigma: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accepted and accepted-within-tolerance counts at each threshold."""
    order = np.argsort(sigma, kind='stable')
    position = np.searchsorted(sigma[order], thresholds, side='right')
    cumulative = np.concatenate([[0], np.cumsum(correct[order])])
    return position.astype(int), cumulative[position].astype(int)


def _minimum_count(level: float, alpha: float) -> int:
    """Fewest accepted predictions, all within tolerance, whose lower bound reaches ``level``."""
    return int(math.ceil(math.log(alpha) / math.log(level)))


def _decide(grid: dict, n: int, options: dict, model, extra_ok=None) -> dict:
    """The record for counts on a grid: the largest threshold whose bound reaches ``level``."""
    thresholds = np.asarray(grid['thresholds'], dtype=np.float64)
    n_accepted = np.asarray(grid['n_accepted'], dtype=np.int64)
    n_within = np.asarray(grid['n_within'], dtype=np.int64)
    level, confidence = options['level'], options['confidence']
    alpha = (1 - confidence) / max(len(thresholds), 1)
    lower = clopper_pearson(n_within, n_accepted, alpha)
    ok = lower >= level
    if extra_ok is not None:
        ok &= extra_ok
    record = {
        **options,
        'bound': BOUND,
        'n': int(n),
        'n_candidates': len(thresholds),
        'model': model,
        'threshold': 0.0,
        'n_accepted': 0,
        'accepted_fraction': 0.0,
        'rate': None,
        'lower_bound': None,
        'reason': None,
    }
    if ok.any():
        best = int(np.nonzero(ok)[0].max())
        record.update(
            {
                'threshold': float(thresholds[best]),
                'n_accepted': int(n_accepted[best]),
                'accepted_fraction': float(n_accepted[best] / n),
                'rate': float(n_within[best] / n_accepted[best]),
                'lower_bound': float(lower[best]),
            }
        )
    else:
        needed = _minimum_count(level, alpha)
        if n < needed:
            record['reason'] = (
                f'too few calibration points ({n}): a lower bound of {level} at confidence {confidence} '
                f'over {len(thresholds)} candidate thresholds needs at least {needed} accepted predictions, '
                'all within tolerance'
            )
        else:
            best_rate = float(np.max(n_within / np.maximum(n_accepted, 1))) if len(thresholds) else 0.0
            record['reason'] = (
                f'no threshold keeps {level} of the accepted predictions within {options["tolerance"]} '
                f'at confidence {confidence} (n={n}; best observed rate {best_rate:.3f})'
            )
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
    max_candidates: int = 50,
    model: str | None = None,
) -> dict:
    """The largest sigma threshold whose accepted calibration predictions are within ``tolerance``
    at a rate whose lower confidence bound reaches ``level`` (see the module docstring). Points where
    mean, sigma or truth is not finite are left out. ``model`` (a name or checksum) is kept in the
    record so that ``refresh`` can tell whose counts it holds: the checkpoint's sha256 (``ModelData.sha256``)."""
    _check_options(tolerance, level, confidence)
    sigma, error = _clean(mean, sigma, truth)
    options = {'tolerance': float(tolerance), 'level': float(level), 'confidence': float(confidence)}
    return _calibrate_errors(sigma, error, options, max_candidates, model)


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
    thresholds, and a threshold where the new results alone show a rate below ``level`` is refused.
    A record of another ``model``, or one without counts, is not pooled: the new results are
    calibrated alone (``pooled`` False in the result)."""
    options = {key: float(calibration_record[key]) for key in ('tolerance', 'level', 'confidence')}
    _check_options(**options)
    sigma, error = _clean(new_mean, new_sigma, new_truth)
    grid = calibration_record.get('grid') or {}
    stored_model = calibration_record.get('model')
    history = [*calibration_record.get('refreshes', [])]
    same_model = model is None or stored_model is None or model == stored_model
    if not grid.get('thresholds') or not same_model:
        max_candidates = int(calibration_record.get('max_candidates', 50))
        record = _calibrate_errors(sigma, error, options, max_candidates, stored_model if model is None else model)
        why = 'the stored record has no counts' if same_model else f'the stored record is of model {stored_model!r}'
        record.update({'pooled': False, 'not_pooled_because': why})
    else:
        thresholds = np.asarray(grid['thresholds'], dtype=np.float64)
        new_accepted, new_within = _counts(thresholds, sigma, error <= options['tolerance'])
        pooled = {
            'thresholds': thresholds,
            'n_accepted': np.asarray(grid['n_accepted']) + new_accepted,
            'n_within': np.asarray(grid['n_within']) + new_within,
        }
        # no Bonferroni factor here: a wrong refusal costs DFT runs, a wrong pass breaks the promise
        not_refuted = (
            clopper_pearson(new_within, new_accepted, 1 - options['confidence'], upper=True) >= options['level']
        )
        record = _decide(
            pooled,
            int(calibration_record['n']) + len(sigma),
            options,
            stored_model if model is None else model,
            extra_ok=not_refuted,
        )
        record['max_candidates'] = int(calibration_record.get('max_candidates', len(thresholds)))
        record['pooled'] = True
        refused = np.nonzero(~not_refuted)[0]
        record['refused_by_new_results'] = [float(thresholds[i]) for i in refused]
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
