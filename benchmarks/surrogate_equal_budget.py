"""Crysformer (one ``cpu`` member) and ALIGNN-pure trained side by side: same threads, same wall-clock budget.

Both train at the same time on the mp_cgcnn split of ``aiida_hpcai.models.evaluation`` (so both see the
same machine conditions, a fair share of a shared machine), each on ``--threads`` threads for
``--max-minutes`` of training (counted after its graphs are built): Crysformer through the release
tool's ``train --config cpu --member 0``, ALIGNN through ``benchmarks/peers/train_alignn.py`` in the
peers venv (``benchmarks/peers/README.md``). Both are scored by their plain test prediction (dropout
off). Writes ``benchmarks/results/surrogate_equal_budget.json`` and ``.png`` (validation MAE against
training wall time)::

    python benchmarks/surrogate_equal_budget.py --peer-python /work/venvs/peers/bin/python --max-minutes 100 --out runs/eq
    python benchmarks/surrogate_equal_budget.py --collect-only --out runs/eq --note "..."   # runs already made
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import numpy as np

from aiida_hpcai.models.contract import METRICS_FILE, MODEL_FILE
from aiida_hpcai.models.evaluation import (
    REPO,
    RESULTS_DIR,
    TARGETS,
    cpu_member_command,
    default_source,
    load_filtered,
    plain_mae,
    run_record,
    run_side_by_side,
    split_graphs,
    validation_curves_figure,
)

RESULTS_FILE = RESULTS_DIR / 'surrogate_equal_budget.json'
ALIGNN_KEYS = (
    'test_mae',
    'val_mae',
    'n_parameters',
    'training_seconds',
    'epochs_run',
    'complete_epochs',
    'seconds_per_complete_epoch',
    'stopped_by',
    'versions',
    'model_config',
)


def train_side_by_side(args) -> tuple:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ['--target', args.target, '--max-minutes', str(args.max_minutes), '--threads', str(args.threads)]
    peer = [
        args.peer_python,
        str(REPO / 'benchmarks' / 'peers' / 'train_alignn.py'),
        '--out',
        str(out / 'alignn'),
        '--output',
        str(out / 'alignn.json'),
        *common,
    ]
    crysformer = cpu_member_command(
        args.data, args.target, args.max_minutes, args.threads, args.mc_samples, out / 'crysformer'
    )
    load_before = os.getloadavg()
    run_side_by_side({'crysformer': crysformer, 'alignn': peer}, out, args.threads)
    return load_before


def collect(args, load_before=None) -> dict:
    out = pathlib.Path(args.out)
    metrics = json.loads((out / 'crysformer' / METRICS_FILE).read_text())
    history = metrics['history'][0]
    alignn = json.loads((out / 'alignn.json').read_text())
    subsets, graphs = split_graphs(load_filtered(args.data)[0], ('test',))
    result = {
        'description': 'Crysformer cpu (one member) and ALIGNN-pure trained side by side with equal threads '
        'and wall-clock budget on the mp_cgcnn split',
        'target': args.target,
        'units': TARGETS[args.target],
        'budget_minutes': args.max_minutes,
        'threads_each': args.threads,
        'crysformer': {
            'test_mae': plain_mae(out / 'crysformer' / MODEL_FILE, graphs['test'], subsets['test'].labels[args.target]),
            'test_mae_mc_dropout_mean': metrics['test']['mae'],
            'val_mae_mc_dropout_mean': metrics['val']['mae'],
            'n_parameters': metrics['n_parameters'],
            'training_seconds': metrics.get('training_seconds'),
            'epochs_run': len(history),
            'train_loss_last_epoch': history[-1]['train_loss'],
            'note': 'test_mae: the plain prediction (dropout off), as ALIGNN predicts; the training run itself '
            f'reports the mean of {args.mc_samples} MC-dropout samples (a single member has no ensemble)',
        },
        'alignn': {key: alignn.get(key) for key in ALIGNN_KEYS},
    }
    if args.note:
        result['conditions'] = args.note
    result['ratio_test_mae_crysformer_over_alignn'] = result['crysformer']['test_mae'] / alignn['test_mae']
    # validation MAE after each epoch against the training wall time so far (validation passes included)
    for name, rows in (('crysformer', history), ('alignn', alignn['history'])):
        result[name]['val_curve'] = {
            'minutes': list(np.cumsum([row['seconds'] for row in rows]) / 60.0),
            'val_mae': [row['val_mae'] for row in rows],
        }
    result['run'] = run_record(load_before=load_before)
    output = pathlib.Path(args.result)
    output.write_text(json.dumps(result, indent=2))
    validation_curves_figure(
        {
            f'{label}: test {result[name]["test_mae"]:.3f}': result[name]['val_curve']
            for name, label in (('crysformer', 'Crysformer cpu (1 member)'), ('alignn', 'ALIGNN-pure'))
        },
        result['units'],
        output.with_suffix('.png'),
        title=f'{args.max_minutes:g} min, {args.threads} thread(s) each',
    )
    print(json.dumps({k: v for k, v in result.items() if k not in ('crysformer', 'alignn')}, indent=2))
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=str(default_source()))
    parser.add_argument('--peer-python', help='python of the peers venv (benchmarks/peers/README.md)')
    parser.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    parser.add_argument('--max-minutes', type=float, default=20.0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--mc-samples', type=int, default=2)
    parser.add_argument('--out', required=True)
    parser.add_argument('--collect-only', action='store_true', help='only summarise the runs already in --out')
    parser.add_argument('--result', default=str(RESULTS_FILE), help='where the JSON (and the .png beside it) go')
    parser.add_argument(
        '--note',
        default=None,
        help='how the runs were made, recorded as "conditions" (for --collect-only on runs not made side by side)',
    )
    args = parser.parse_args(argv)
    if args.collect_only:
        return collect(args)
    if not args.peer_python:
        parser.error('--peer-python is required to train ALIGNN')
    return collect(args, train_side_by_side(args))


if __name__ == '__main__':
    main()
