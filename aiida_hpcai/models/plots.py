"""Learning-curve and parity figures written beside a trained checkpoint (matplotlib, Agg)."""

from __future__ import annotations

import pathlib

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def learning_curve(
    histories: list[list[dict]],
    path: str | pathlib.Path,
    units: str = '',
    metric: str = 'val_mae',
    metric_label: str | None = None,
    train_label: str = 'train L1 loss (standardised)',
) -> None:
    """Train loss and a validation ``metric`` (default the MAE) per epoch, one line per ensemble member."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for member, history in enumerate(histories):
        epochs = [row['epoch'] for row in history]
        left.plot(epochs, [row['train_loss'] for row in history], label=f'member {member}')
        right.plot(epochs, [row[metric] for row in history], label=f'member {member}')
    left.set(xlabel='epoch', ylabel=train_label, yscale='log')
    right.set(xlabel='epoch', ylabel=metric_label or f'validation MAE ({units})', yscale='log')
    for axis in (left, right):
        axis.grid(alpha=0.3)
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parity(
    true: np.ndarray,
    predicted: np.ndarray,
    sigma: np.ndarray | None,
    path: str | pathlib.Path,
    label: str = '',
    units: str = '',
    title: str = '',
) -> None:
    """Predicted vs true on the test split; points coloured by sigma when there is one."""
    plt = _pyplot()
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    colour = sigma if sigma is not None and np.all(np.isfinite(sigma)) else None
    points = axis.scatter(true, predicted, c=colour, s=4, cmap='viridis', alpha=0.7)
    if colour is not None:
        figure.colorbar(points, ax=axis, label=f'sigma ({units})')
    finite = np.isfinite(true) & np.isfinite(predicted)
    if finite.any():
        low = min(true[finite].min(), predicted[finite].min())
        high = max(true[finite].max(), predicted[finite].max())
        axis.plot([low, high], [low, high], 'k--', lw=0.8)
        mae = np.mean(np.abs(true[finite] - predicted[finite]))
        axis.text(0.04, 0.94, f'MAE {mae:.4g} {units}\nn = {finite.sum()}', transform=axis.transAxes, va='top')
    axis.set(xlabel=f'true {label} ({units})', ylabel=f'predicted {label} ({units})', title=title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def reliability_diagram(
    curves: dict[str, dict], path: str | pathlib.Path, title: str = '', label: str = 'match'
) -> None:
    """Observed frequency of the positive class against the predicted probability, per probability bin, one line
    per ``name: {'confidence', 'frequency', 'counts', 'ece'}`` (e.g. before and after temperature scaling),
    with the diagonal of perfect calibration; the bins' counts below."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={'height_ratios': [3, 1]})
    top.plot([0, 1], [0, 1], 'k--', lw=0.8, label='perfect calibration')
    width = 1.0 / max(len(next(iter(curves.values()))['counts']), 1) if curves else 0.1
    for offset, (name, curve) in enumerate(curves.items()):
        counts = np.asarray(curve['counts'])
        filled = counts > 0
        confidence = np.asarray(curve['confidence'], float)[filled]
        frequency = np.asarray(curve['frequency'], float)[filled]
        top.plot(confidence, frequency, 'o-', markersize=4, label=f'{name} (ECE {curve["ece"]:.3f})')
        centres = (np.arange(len(counts)) + 0.5) * width
        shift = (offset - (len(curves) - 1) / 2) * width / (len(curves) + 1)
        bottom.bar(centres + shift, counts, width=width / (len(curves) + 1), label=name)
    top.set(ylabel=f'observed fraction {label}', xlim=(0, 1), ylim=(0, 1), title=title)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc='upper left')
    bottom.set(xlabel=f'predicted probability of {label}', ylabel='structures', yscale='symlog')
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
