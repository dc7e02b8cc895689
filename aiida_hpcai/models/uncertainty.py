"""Predictive uncertainty: deep ensembles and MC dropout, recalibration, and its metrics.

Each estimator gives, per structure, a mean and a spread ``sigma`` (the standard deviation over
ensemble members, or over dropout samples of every member). Raw spreads are usually too small
or too large, so one scale factor ``s`` is fitted on the validation split and stored in the
checkpoint; reported sigmas are ``s * sigma``. ``s`` minimises the miscalibration area on the
validation split rather than the Gaussian NLL (``s^2 = mean(err^2 / sigma^2)``): a spread over three
members or a few dropout samples is sometimes near zero, and those few ``err^2 / sigma^2`` terms
dominate the NLL choice and inflate every sigma (a 3-member ensemble fitted that way put 98% of the
test errors inside its 90% intervals).

Metrics (all numpy, no scipy needed on a compute node):

- ``mae``: mean absolute error of the mean prediction;
- ``miscalibration_area``: mean over confidence levels p in (0.01..0.99) of
  ``|observed coverage of the central p-interval - p|`` (0 is perfect; 0.5 the worst);
- ``spearman_abs_error_sigma``: rank correlation between ``|err|`` and ``sigma`` (does a larger
  sigma flag a larger error?);
- ``gaussian_nll``: mean negative log-likelihood of the targets under N(mean, sigma^2);
- ``coverage_90``: fraction of errors inside the central 90% interval (1.645 sigma).
"""

from __future__ import annotations

import math

import numpy as np

# ensemble: spread over the members; mc_dropout: every member sampled with all its dropout on;
# mc_dropout_readout: dropout in the readout MLP only, the samples sharing one pass of the blocks
# (about the cost of one plain prediction)
UNCERTAINTY_METHODS = ('ensemble', 'mc_dropout', 'mc_dropout_readout')
MC_DROPOUT_METHODS = ('mc_dropout', 'mc_dropout_readout')

Z_90 = 1.6448536269514722
_LEVELS = np.linspace(0.01, 0.99, 99)


def _normal_ppf(p: np.ndarray) -> np.ndarray:
    """Quantile function of the standard normal (Acklam's rational approximation, |err| < 1e-9
    after one Newton step), so that the compute-node program needs no scipy."""
    p = np.asarray(p, dtype=np.float64)
    a = [
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    ]
    b = [
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    ]
    c = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    ]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00]
    low = 0.02425
    q = np.where(
        p < low,
        np.sqrt(-2 * np.log(np.maximum(p, 1e-300))),
        np.where(p > 1 - low, np.sqrt(-2 * np.log(np.maximum(1 - p, 1e-300))), 0.0),
    )
    tail = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
        (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
    )
    r = (p - 0.5) ** 2
    centre = (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * (p - 0.5)
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )
    x = np.where(p < low, tail, np.where(p > 1 - low, -tail, centre))
    # one Newton step on erf
    erf = np.vectorize(math.erf)
    error = 0.5 * (1 + erf(x / math.sqrt(2))) - p
    return x - error * math.sqrt(2 * math.pi) * np.exp(x * x / 2)


def spread(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over axis 0 of (n_samples, n_structures) predictions."""
    samples = np.asarray(samples, dtype=np.float64)
    return samples.mean(axis=0), samples.std(axis=0)


def fit_sigma_scale(errors: np.ndarray, sigma: np.ndarray) -> float:
    """Scale ``s`` whose intervals ``+- z_p s sigma`` cover the fraction ``p`` of ``errors`` best over all
    levels: the minimiser of :func:`miscalibration_area` (a grid in log s, steps of 0.2%)."""
    errors, sigma = np.asarray(errors, float), np.asarray(sigma, float)
    mask = np.isfinite(errors) & np.isfinite(sigma) & (sigma > 0)
    if not mask.any():
        return 1.0
    ratios = np.sort(np.abs(errors[mask]) / sigma[mask])
    half_widths = _normal_ppf(0.5 + _LEVELS / 2)
    positive = ratios[ratios > 0]
    if not positive.size:
        return 1.0
    # every scale that moves a coverage lies between these two
    low, high = positive[0] / half_widths[-1], positive[-1] / half_widths[0]
    scales = np.geomspace(low, high, max(2, int(np.log(high / low) / np.log(1.002)) + 1))
    # observed coverage of each level at each scale: fraction of ratios <= z_p * s
    observed = np.searchsorted(ratios, np.outer(scales, half_widths), side='right') / ratios.size
    area = np.abs(observed - _LEVELS).mean(axis=1)
    return float(scales[np.argmin(area)])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind='stable')
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.concatenate([[0], np.nonzero(np.diff(sorted_values))[0] + 1, [len(values)]])
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[start:stop]] = 0.5 * (start + stop - 1)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return float('nan')
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else float('nan')


def miscalibration_area(errors: np.ndarray, sigma: np.ndarray) -> float:
    errors, sigma = np.abs(np.asarray(errors, float)), np.asarray(sigma, float)
    half_widths = _normal_ppf(0.5 + _LEVELS / 2)
    observed = np.array([(errors <= z * sigma).mean() for z in half_widths])
    return float(np.mean(np.abs(observed - _LEVELS)))


def gaussian_nll(errors: np.ndarray, sigma: np.ndarray) -> float:
    errors, sigma = np.asarray(errors, float), np.maximum(np.asarray(sigma, float), 1e-12)
    return float(np.mean(0.5 * np.log(2 * np.pi * sigma**2) + errors**2 / (2 * sigma**2)))


def uncertainty_metrics(predicted: np.ndarray, sigma: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """All metrics of the module docstring for one split (sigma already recalibrated)."""
    predicted, sigma, true = (np.asarray(a, dtype=np.float64) for a in (predicted, sigma, true))
    mask = np.isfinite(predicted) & np.isfinite(true)
    errors = predicted[mask] - true[mask]
    sigma = sigma[mask]
    metrics = {
        'n': int(mask.sum()),
        'mae': float(np.mean(np.abs(errors))) if mask.any() else float('nan'),
        'rmse': float(np.sqrt(np.mean(errors**2))) if mask.any() else float('nan'),
    }
    if mask.any() and np.all(np.isfinite(sigma)) and np.any(sigma > 0):
        metrics.update(
            {
                'miscalibration_area': miscalibration_area(errors, sigma),
                'spearman_abs_error_sigma': spearman(np.abs(errors), sigma),
                'gaussian_nll': gaussian_nll(errors, sigma),
                'coverage_90': float(np.mean(np.abs(errors) <= Z_90 * sigma)),
                'mean_sigma': float(np.mean(sigma)),
            }
        )
    return metrics
