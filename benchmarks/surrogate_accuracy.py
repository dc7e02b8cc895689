"""Accuracy of the shipped pretrained models on the mp_cgcnn test split, next to two baselines.

Data and split: ``aiida_hpcai.models.evaluation`` (``mp_cgcnn.csv.gz`` or ``$HPCAI_DATA_DIR``, rows with
formation energy below -5 eV/atom dropped, the seeded 80/10/10 split by material id committed in
``benchmarks/splits/mp_cgcnn/``), the same the release tool (``python -m aiida_hpcai.models.release``)
trains them on. For each target:

- baselines: the train-mean predictor and ridge regression on element fractions (strength chosen on val);
- the shipped file (``aiida_hpcai/models/pretrained``, or ``--model TARGET=FILE``) predicts the test
  split: the plain ensemble mean (dropout off, what ``predict`` gives, raised to the target's lower
  bound), each member alone, and each uncertainty method with the file's own sigma scales (MC dropout
  with the file's sample count, seeded), scored as ``aiida_hpcai.models.uncertainty`` scores them;
  the metrics the file recorded when it was made stand beside the measured ones.

Writes ``benchmarks/results/surrogate_accuracy.json`` (with date, commit, command and machine) and, per
target, ``surrogate_parity_TARGET.png`` (measured) and ``surrogate_learning_curve_TARGET.png`` (from the
epochs in the record beside the file)::

    python benchmarks/surrogate_accuracy.py
    python benchmarks/surrogate_accuracy.py --methods ensemble     # plain and ensemble only (no MC dropout)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import numpy as np

from aiida_hpcai.models.evaluation import (
    REPO,
    RESULTS_DIR,
    TARGET_MAE,
    TARGETS,
    default_source,
    get_split,
    load_filtered,
    run_record,
    split_graphs,
)

RESULTS_FILE = RESULTS_DIR / 'surrogate_accuracy.json'


def baselines(arrays, split: dict[str, np.ndarray]) -> dict:
    """Test MAE of the train-mean predictor and of ridge regression on element fractions
    (with an intercept; the ridge strength picked on val from a log grid)."""
    from aiida_hpcai.models.training import composition_fractions

    x = {name: composition_fractions([arrays.atoms_of(int(i))[0] for i in idx]) for name, idx in split.items()}
    results = {}
    for target in TARGETS:
        y = {name: arrays.labels[target][idx] for name, idx in split.items()}
        mean = float(y['train'].mean())
        x_mean, y_mean = x['train'].mean(0), y['train'].mean()
        xc = x['train'] - x_mean
        best = None
        for alpha in 10.0 ** np.arange(-6, 2):
            coef = np.linalg.solve(xc.T @ xc + alpha * len(xc) * np.eye(xc.shape[1]), xc.T @ (y['train'] - y_mean))
            val_mae = float(np.mean(np.abs((x['val'] - x_mean) @ coef + y_mean - y['val'])))
            if best is None or val_mae < best[0]:
                best = (val_mae, alpha, coef)
        _, alpha, coef = best
        results[target] = {
            'mean_predictor_test_mae': float(np.mean(np.abs(mean - y['test']))),
            'ridge_element_fractions_test_mae': float(
                np.mean(np.abs((x['test'] - x_mean) @ coef + y_mean - y['test']))
            ),
            'ridge_alpha_per_sample': float(alpha),
        }
    return results


def measure(path: pathlib.Path, graphs: list, labels: np.ndarray, methods: list[str], seed: int) -> tuple:
    """The shipped file's test metrics, measured; returns the entry, (mean, calibrated ensemble sigma)
    and the epochs recorded beside the file."""
    import torch

    from aiida_hpcai.models.checkpoint import load_checkpoint, sha256_file
    from aiida_hpcai.models.inference import EnsemblePredictor
    from aiida_hpcai.models.uncertainty import uncertainty_metrics

    checkpoint = load_checkpoint(path)
    record = json.loads(path.with_suffix('.json').read_text()) if path.with_suffix('.json').exists() else {}
    predictor = EnsemblePredictor([checkpoint])
    members = predictor.sample(graphs, 64, 'ensemble')  # plain: one row per member, dropout off
    mean, sigma = predictor.summarize(members)

    def mae(values):
        return float(np.mean(np.abs(values - labels)))

    mc_samples = int(checkpoint['hyperparameters']['training'].get('mc_samples', 10))
    uncertainty = {}
    for method in methods:
        torch.manual_seed(seed)  # MC dropout samples at random
        samples = members if method == 'ensemble' else predictor.sample(graphs, 64, method, mc_samples)
        method_mean, method_sigma = predictor.summarize(samples)
        uncertainty[method] = uncertainty_metrics(method_mean, method_sigma * predictor.sigma_scale(method), labels)
    recorded = checkpoint.get('metrics', {}).get('test', {})
    history = record.get('history', [])
    entry = {
        'model': str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else path.name,
        'sha256': sha256_file(path),
        'config': checkpoint['hyperparameters']['model'],
        'n_parameters': record.get('n_parameters_per_member'),
        'ensemble_size': len(checkpoint['members']),
        'n_test': len(labels),
        'test_mae': mae(mean),
        'member_test_mae': [mae(predictor.bounded(row)) for row in members],
        'uncertainty_test': uncertainty,
        'mc_samples_per_member': mc_samples,
        'sigma_scale': checkpoint['sigma_scale'],
        'recorded_when_made': {
            'test_mae': recorded.get('mae'),
            'member_test_mae': recorded.get('member_mae'),
            'val_mae': checkpoint.get('metrics', {}).get('val', {}).get('mae'),
            'uncertainty_test': {method: recorded[method] for method in methods if method in recorded},
        },
        'epochs_run': [len(h) for h in history],
        'best_epoch': [int(np.argmin([row['val_mae'] for row in h])) for h in history],
        'training_seconds_per_member': record.get('training', {}).get('seconds_per_member'),
        'training_device': record.get('training', {}).get('device'),
    }
    if predictor.lower_bound is not None:  # what the bound gains: the same predictions without it
        entry['without_lower_bound_test'] = {
            'mae': mae(members.mean(axis=0)),
            'member_mae': [mae(row) for row in members],
        }
    scale = predictor.sigma_scale('ensemble') if len(members) > 1 else None
    return entry, (mean, sigma * scale if scale else None), history


def main(argv=None) -> dict:
    import torch

    from aiida_hpcai.models import plots
    from aiida_hpcai.models.checkpoint import pretrained_path
    from aiida_hpcai.models.uncertainty import UNCERTAINTY_METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=str(default_source()), help='mp_cgcnn.csv.gz or an exported npz')
    parser.add_argument('--model', action='append', default=[], help='TARGET=FILE (default: the shipped files)')
    parser.add_argument('--targets', nargs='+', choices=sorted(TARGETS), default=list(TARGETS))
    parser.add_argument('--methods', nargs='+', choices=UNCERTAINTY_METHODS, default=list(UNCERTAINTY_METHODS))
    parser.add_argument('--seed', type=int, default=0, help='of the MC-dropout samples')
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    models = {target: pretrained_path(target) for target in args.targets}
    models.update({target: pathlib.Path(path) for target, path in (item.split('=', 1) for item in args.model)})

    arrays, info = load_filtered(args.data)
    split = get_split(arrays)
    base = baselines(arrays, split)
    subsets, graphs = split_graphs(arrays, ('test',))
    result = {'dataset': info, 'split': {name: int(len(idx)) for name, idx in split.items()}, 'targets': {}}
    for target, path in models.items():
        labels = subsets['test'].labels[target]
        entry, (mean, sigma), history = measure(path, graphs['test'], labels, args.methods, args.seed)
        result['targets'][target] = {
            'units': TARGETS[target],
            'target_mae': TARGET_MAE[target],
            **base[target],
            'crysformer': entry,
            'meets_target': bool(entry['test_mae'] <= TARGET_MAE[target]),
        }
        plots.parity(
            labels,
            mean,
            sigma,
            args.output.parent / f'surrogate_parity_{target}.png',
            target,
            TARGETS[target],
            'test split',
        )
        if history:
            plots.learning_curve(
                history, args.output.parent / f'surrogate_learning_curve_{target}.png', TARGETS[target]
            )
        print(target, json.dumps({k: entry[k] for k in ('test_mae', 'member_test_mae')}), flush=True)
    result['run'] = run_record(load_before=load_before, threads=torch.get_num_threads(), torch=torch.__version__)
    args.output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
