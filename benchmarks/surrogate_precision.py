"""How far Crysformer's float32 predictions are from float64, per checkpoint, on the mp_cgcnn test split.

Predictions run in float32 (the default, and what ``hpcai-model predict`` uses); float64 is the
reference. Where a site's symmetry forbids l > 0 features those features are rounding noise, and a
layer norm without a floor scales that noise up (docs/source/surrogate_model.md, "The network"), so
the difference says whether a checkpoint's predictions depend on the floating-point precision.

    python benchmarks/surrogate_precision.py --model shipped=aiida_hpcai/models/pretrained/crysformer_mp_formation_energy.pt \
        --model new=runs/fe/model.pt

Writes ``benchmarks/results/surrogate_precision.json``: per checkpoint and member, the median, 99th
percentile and maximum of |float32 - float64| (physical units) and the five worst structures.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from aiida_hpcai.models.evaluation import RESULTS_DIR, default_source, get_split, load_filtered, run_record

RESULTS_FILE = RESULTS_DIR / 'surrogate_precision.json'


def member_differences(checkpoint_path: str, graphs, batch_size: int) -> list[np.ndarray]:
    import torch

    from aiida_hpcai.models.checkpoint import build_members, load_checkpoint
    from aiida_hpcai.models.graph import collate

    checkpoint = load_checkpoint(checkpoint_path)
    std = checkpoint['normalization']['std']
    differences = []
    for model in build_members(checkpoint, torch.device('cpu')):
        model.eval()
        single, double = [], []
        with torch.no_grad():
            for start in range(0, len(graphs), batch_size):
                chunk = graphs[start : start + batch_size]
                single.append(model.float()(collate(chunk)).double().numpy())
                double.append(model.double()(collate(chunk, dtype=torch.float64)).numpy())
        differences.append(np.abs(np.concatenate(single) - np.concatenate(double)) * std)
    return differences


def main(argv=None) -> None:
    import torch

    from aiida_hpcai.models.graph import graphs_from_arrays

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', action='append', required=True, help='LABEL=CHECKPOINT')
    parser.add_argument('--data', default=str(default_source()), help='mp_cgcnn.csv.gz or an exported npz')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--threads', type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    arrays, _ = load_filtered(args.data)
    test = arrays.subset(get_split(arrays)['test'])
    graphs, _ = graphs_from_arrays(test)
    result = {
        'description': '|float32 - float64| of plain (evaluation-mode) predictions on the mp_cgcnn test split',
        'n_structures': len(graphs),
        'models': {},
    }
    for label, path in (item.split('=', 1) for item in args.model):
        members = []
        for difference in member_differences(path, graphs, args.batch_size):
            worst = np.argsort(difference)[::-1][:5]
            members.append(
                {
                    'median': float(np.median(difference)),
                    'p99': float(np.percentile(difference, 99)),
                    'max': float(difference.max()),
                    'worst': [{'id': str(test.ids[i]), 'difference': float(difference[i])} for i in worst],
                }
            )
        result['models'][label] = {'checkpoint': str(path), 'members': members}
        print(label, [(round(m['median'], 8), round(m['max'], 5)) for m in members])
    result['run'] = run_record(load_before=load_before)
    RESULTS_FILE.write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
