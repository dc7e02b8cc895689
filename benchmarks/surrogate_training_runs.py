"""Finished one-member training runs side by side: epochs, seconds per epoch, validation curves, MAE.

Collects ``train --member K`` runs of the release tool (each ``--run NAME=FOLDER``) into one JSON with
a validation-curve figure beside it: parameters, device and budget, epochs and seconds per epoch, the
kept epoch's validation MAE and the plain test MAE (dropout off; a one-member run's own metrics hold
the mean of its MC-dropout samples). Used for runs made elsewhere (``benchmarks/gpu_check.sh`` on a
lent GPU: ``surrogate_gpu_training.json``) and for recipe comparisons (``surrogate_learning_rate.json``)::

    python benchmarks/surrogate_training_runs.py --run lr1e-3=runs/a --run lr2e-3=runs/b \
        --note "two cpu members side by side, 60 min on 1 thread each" --result benchmarks/results/surrogate_learning_rate.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from aiida_hpcai.models.contract import METADATA_FILE, METRICS_FILE, MODEL_FILE
from aiida_hpcai.models.evaluation import (
    TARGET_MAE,
    TARGETS,
    default_source,
    load_filtered,
    plain_mae,
    run_record,
    split_graphs,
    validation_curves_figure,
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', action='append', required=True, help='NAME=FOLDER of a finished train run')
    parser.add_argument('--data', default=str(default_source()))
    parser.add_argument('--device', default='cpu', help='where the test predictions run')
    parser.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    parser.add_argument('--note', required=True, help='where and how the runs were made (recorded as "conditions")')
    parser.add_argument('--result', required=True, help='the JSON to write (the .png goes beside it)')
    args = parser.parse_args(argv)

    subsets, graphs = split_graphs(load_filtered(args.data)[0], ('test',))
    labels = subsets['test'].labels[args.target]
    runs = {}
    for item in args.run:
        name, folder = item.split('=', 1)
        folder = pathlib.Path(folder)
        metrics = json.loads((folder / METRICS_FILE).read_text())
        training = json.loads((folder / METADATA_FILE).read_text())['hyperparameters']['training']
        if len(metrics['history']) != 1:
            raise SystemExit(f'{folder}: not a one-member run (train --member K)')
        history = metrics['history'][0]
        minutes = np.cumsum([epoch['seconds'] for epoch in history]) / 60.0
        runs[name] = {
            'folder': folder.name,
            'n_parameters': metrics['n_parameters'],
            'device': training['device'],
            'max_minutes': training['max_minutes'],
            'seed': training['seed'],
            'batch_size': training['batch_size'],
            'learning_rate': training['learning_rate'],
            'training_seconds': metrics['training_seconds'],
            'epochs': len(history),
            'median_epoch_seconds': float(np.median([epoch['seconds'] for epoch in history[:-1] or history])),
            'best_val_mae': min(epoch['val_mae'] for epoch in history),
            'test_mae': plain_mae(folder / MODEL_FILE, graphs['test'], labels, args.device),
            'test_mae_mc_dropout_mean': metrics['test']['mae'],
            'mc_samples': training['mc_samples'],
            'val_curve': {'minutes': minutes.round(3).tolist(), 'val_mae': [epoch['val_mae'] for epoch in history]},
        }
    result = {
        'target': args.target,
        'units': TARGETS[args.target],
        'conditions': args.note,
        'runs': runs,
        'run': run_record(),
    }
    output = pathlib.Path(args.result)
    output.write_text(json.dumps(result, indent=2))
    validation_curves_figure(
        {f'{name}: test {run["test_mae"]:.3f}': run['val_curve'] for name, run in runs.items()},
        result['units'],
        output.with_suffix('.png'),
        target=TARGET_MAE.get(args.target),
    )
    keys = ('epochs', 'median_epoch_seconds', 'best_val_mae', 'test_mae')
    print(json.dumps({name: {k: run[k] for k in keys} for name, run in runs.items()}, indent=1))
    return result


if __name__ == '__main__':
    main()
