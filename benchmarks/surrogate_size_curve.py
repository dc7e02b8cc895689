"""Test MAE against training-set size: one ``cpu`` member per fraction of the training ids, all at once.

Each fraction is a seeded subset of the mp_cgcnn training ids (the release tool's ``train
--train-fraction F``); all members train at the same time with ``--threads`` threads and the same
budget each. ``--reuse FRACTION=FOLDER`` adds a finished ``train`` run made with the same settings (for
instance the Crysformer half of ``surrogate_equal_budget.py``) instead of training that fraction again.
Writes ``benchmarks/results/surrogate_size_curve.json`` and ``.png``::

    python benchmarks/surrogate_size_curve.py --fractions 0.1 0.3 --reuse 1.0=runs/eq/crysformer --out runs/size
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

from aiida_hpcai.models.contract import METRICS_FILE
from aiida_hpcai.models.evaluation import (
    RESULTS_DIR,
    TARGETS,
    cpu_member_command,
    default_source,
    run_record,
    run_side_by_side,
)

RESULTS_FILE = RESULTS_DIR / 'surrogate_size_curve.json'


def main(argv=None) -> dict:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=str(default_source()))
    parser.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    parser.add_argument('--fractions', type=float, nargs='+', default=[0.1, 0.3, 1.0])
    parser.add_argument('--reuse', action='append', default=[], help='FRACTION=FOLDER of a finished train run')
    parser.add_argument('--max-minutes', type=float, default=20.0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--mc-samples', type=int, default=2)
    parser.add_argument('--out', required=True)
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {float(fraction): pathlib.Path(folder) for fraction, folder in (item.split('=') for item in args.reuse)}
    jobs = {}
    for fraction in args.fractions:
        if fraction not in runs:
            runs[fraction] = out / f'fraction_{fraction:g}'
            jobs[f'fraction_{fraction:g}'] = cpu_member_command(
                args.data,
                args.target,
                args.max_minutes,
                args.threads,
                args.mc_samples,
                runs[fraction],
                '--train-fraction',
                str(fraction),
                '--no-progress',
            )
    load_before = os.getloadavg()
    run_side_by_side(jobs, out, args.threads)
    points = []
    for fraction in sorted(runs):
        metrics = json.loads((runs[fraction] / METRICS_FILE).read_text())
        points.append(
            {
                'train_fraction': fraction,
                'n_train': metrics['n_structures']['train'],
                'test_mae': metrics['test']['mae'],
                'val_mae': metrics['val']['mae'],
                'epochs_run': len(metrics['history'][0]),
                'training_seconds': metrics.get('training_seconds'),
            }
        )
    result = {
        'target': args.target,
        'units': TARGETS[args.target],
        'config': 'cpu',
        'members': 1,
        'budget_minutes': args.max_minutes,
        'threads_each': args.threads,
        'points': points,
        'run': run_record(load_before=load_before),
    }
    args.output.write_text(json.dumps(result, indent=2))
    figure, axes = plt.subplots(figsize=(4.5, 3.5))
    axes.loglog([p['n_train'] for p in points], [p['test_mae'] for p in points], 'o-', label='Crysformer cpu')
    axes.set_xlabel('training structures')
    axes.set_ylabel(f'test MAE ({TARGETS[args.target]})')
    axes.set_title(f'{args.max_minutes:g} min, {args.threads} thread(s) per run')
    figure.tight_layout()
    figure.savefig(args.output.with_suffix('.png'), dpi=120)
    print(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
