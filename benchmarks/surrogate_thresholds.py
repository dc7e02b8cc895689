"""What a sigma threshold of ``hpcai.surrogate`` keeps, for the shipped model of each target.

For several thresholds, the fraction of the mp_cgcnn val and test structures called confident
(``sigma <= threshold``, the calibrated sigma of ``--method``, as ``hpcai.surrogate`` decides) and the
MAE of the confident and of the other structures. Writes ``benchmarks/results/surrogate_thresholds.json``::

    python benchmarks/surrogate_thresholds.py
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
    TARGETS,
    default_source,
    load_filtered,
    run_record,
    split_graphs,
)

RESULTS_FILE = RESULTS_DIR / 'surrogate_thresholds.json'


def main(argv=None) -> dict:
    import torch

    from aiida_hpcai.models.checkpoint import pretrained_path, sha256_file
    from aiida_hpcai.models.inference import EnsemblePredictor
    from aiida_hpcai.models.uncertainty import UNCERTAINTY_METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=str(default_source()))
    parser.add_argument('--method', choices=UNCERTAINTY_METHODS, default='ensemble')
    parser.add_argument('--fe-thresholds', type=float, nargs='+', default=[0.03, 0.06, 0.09, 0.12, 0.2, 0.3])
    parser.add_argument('--bg-thresholds', type=float, nargs='+', default=[0.1, 0.2, 0.3, 0.4, 0.6, 1.0])
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # MC dropout samples at random
    load_before = os.getloadavg()
    result = {'method': args.method, 'rule': 'confident when sigma <= threshold', 'targets': {}}
    subsets, graphs = split_graphs(load_filtered(args.data)[0])  # one set of graphs for both targets
    for target, values in (('formation_energy_per_atom', args.fe_thresholds), ('band_gap', args.bg_thresholds)):
        path = pretrained_path(target)
        predictor = EnsemblePredictor.from_files([path])
        entry = {
            'model': str(path.relative_to(REPO)),
            'sha256': sha256_file(path),
            'units': TARGETS[target],
            'splits': {},
        }
        for name, subset in subsets.items():
            mean, sigma = predictor.predict_graphs(graphs[name], method=args.method)
            error = np.abs(mean - subset.labels[target])
            rows = []
            for threshold in values:
                confident = sigma <= threshold
                rows.append(
                    {
                        'threshold': threshold,
                        'confident_fraction': float(confident.mean()),
                        'mae_confident': float(error[confident].mean()) if confident.any() else None,
                        'mae_not_confident': float(error[~confident].mean()) if (~confident).any() else None,
                    }
                )
            entry['splits'][name] = {'n': len(error), 'mae': float(error.mean()), 'rows': rows}
            print(target, name, json.dumps(rows), flush=True)
        result['targets'][target] = entry
    result['run'] = run_record(load_before=load_before)
    args.output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
