"""How long ``aiida_hpcai.results.predictions_for(id)`` takes on a profile holding many predictions.

Writes ``benchmarks/results/results_query.json``. The profile is a throw-away one (``verdi presto`` in a
temporary ``AIIDA_PATH``: SQLite storage, what ``aiida-hpcai setup`` makes), filled step by step up to
each ``--sizes`` total of predictions, in ``classified_predictions`` nodes of ``--per-node`` structures each
(one ``hpcai.surrogate`` run each). Each node has the graph a real run leaves behind: a ModelData input of
an ``hpcai.predict`` CalcJob node, its raw ``predictions`` ArrayData, and the real ``classify_predictions``
calcfunction on a StructureSet of one-atom cells. The CalcJob nodes are made by hand (no program runs):
the query only follows links and reads attributes, so what ran inside the job does not matter.

At each size the look-up is timed for ids in the first, middle and last node (``--repeats`` times each,
after one warm-up call), for ``predictions_for`` (query + reading the arrays) and for its QueryBuilder alone.

    python benchmarks/results_query.py --sizes 1000 10000 100000 --per-node 1000
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

RESULT = pathlib.Path(__file__).parent / 'results' / 'results_query.json'


def throw_away_profile(workdir: pathlib.Path):
    """A ``verdi presto`` profile in ``workdir`` (set as ``AIIDA_PATH`` before aiida is imported)."""
    os.environ['AIIDA_PATH'] = str(workdir)
    verdi = shutil.which('verdi') or str(pathlib.Path(sys.executable).parent / 'verdi')
    subprocess.run([verdi, 'presto', '--profile-name', 'results-query'], check=True, capture_output=True)
    from aiida import load_profile

    return load_profile('results-query')


def add_surrogate_run(run: int, per_node: int, model) -> list[str]:
    """One classified_predictions node of ``per_node`` structures, with the graph of a real run; its ids."""
    from aiida import orm
    from aiida.common.links import LinkType

    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.models.structure_io import StructureArrays
    from aiida_hpcai.workchains.surrogate import classify_predictions

    ids = [f'run{run}-{index}' for index in range(per_node)]
    structures = StructureSet(
        StructureArrays(
            numbers=np.full(per_node, 14),
            positions=np.zeros((per_node, 3)),
            cells=np.tile(np.eye(3) * 2.7, (per_node, 1, 1)),
            pbc=np.ones((per_node, 3), bool),
            offsets=np.arange(per_node + 1),
            ids=ids,
        )
    ).store()
    predict = orm.CalcJobNode(process_type='aiida.calculations:hpcai.predict')
    predict.base.links.add_incoming(structures, LinkType.INPUT_CALC, 'structures')
    predict.base.links.add_incoming(model, LinkType.INPUT_CALC, 'models__m0')
    predict.store()
    rng = np.random.default_rng(run)
    raw = orm.ArrayData()
    raw.set_array('mean', rng.normal(-1.0, 0.5, per_node))
    raw.set_array('sigma', rng.uniform(0.0, 0.3, per_node))
    raw.set_array('status', np.full(per_node, 'ok'))
    raw.set_array('reason', np.full(per_node, ''))
    raw.base.attributes.set_many({'target': 'formation_energy_per_atom', 'units': 'eV/atom'})
    raw.base.links.add_incoming(predict, LinkType.CREATE, 'predictions')
    raw.store()
    predict.seal()
    classify_predictions(structures, raw, orm.Float(0.12))
    return ids


def time_lookups(structure_ids: list[str], repeats: int) -> dict:
    from aiida_hpcai.results import prediction_query, predictions_for

    timings = {}
    for name, function in (('predictions_for', predictions_for), ('query_only', lambda i: prediction_query(i).all())):
        seconds = []
        for structure_id in structure_ids:
            function(structure_id)  # warm-up: the first call pays for loading classes and compiling SQL
            for _ in range(repeats):
                start = time.perf_counter()
                result = function(structure_id)
                seconds.append(time.perf_counter() - start)
            assert len(result) == 1, (structure_id, result)
        timings[name] = {'median_seconds': statistics.median(seconds), 'max_seconds': max(seconds)}
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[1000, 10000, 100000])
    parser.add_argument('--per-node', type=int, default=1000, help='structures per surrogate run')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--output', type=pathlib.Path, default=RESULT)
    args = parser.parse_args()
    load_before = os.getloadavg()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix='results_query_'))
    try:
        profile = throw_away_profile(workdir)
        from aiida_hpcai.data.model import ModelData
        from aiida_hpcai.models.evaluation import run_record

        model = ModelData(b'not a checkpoint', filename='model.pt', target='formation_energy_per_atom').store()
        runs, rows = [], []
        for size in sorted(args.sizes):
            fill_start = time.perf_counter()
            while len(runs) * args.per_node < size:
                runs.append(add_surrogate_run(len(runs), args.per_node, model))
            fill_seconds = time.perf_counter() - fill_start
            probes = [runs[0][0], runs[len(runs) // 2][args.per_node // 2], runs[-1][-1]]
            row = {
                'predictions': len(runs) * args.per_node,
                'surrogate_runs': len(runs),
                'fill_seconds': fill_seconds,
                **time_lookups(probes, args.repeats),
            }
            rows.append(row)
            print(json.dumps(row))
        record = {
            **run_record(load_before=load_before, storage=profile.storage_backend),
            'per_node': args.per_node,
            'repeats': args.repeats,
            'rows': rows,
        }
        args.output.write_text(json.dumps(record, indent=2) + '\n')
        print(f'written to {args.output}')
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()
