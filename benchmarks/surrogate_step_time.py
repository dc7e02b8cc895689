"""Crysformer's training step and forward pass, timed in this tree and, side by side, in another revision.

What is timed, on the first ``--count`` test-split structures with at most 20 atoms, batch 64,
``--threads`` threads:

- ``graph_seconds``: building the neighbour graphs of all the structures (the best of three passes);
- ``train_step_seconds``: one AdamW step of a freshly initialised model (seed 0) on a batch:
  forward, L1 loss, backward, optimiser step; the mean over ``--steps`` batches after one warm-up;
- ``forward_seconds``: one evaluation-mode pass over all the structures, no gradients.

``--baseline-rev REV`` checks that revision out in a temporary git worktree and runs the same
measurement there in a fresh process (``PYTHONPATH`` pointing at it), alternating with this tree
for ``--repeats`` rounds; the best time of each is kept. Both build the model from the same seed;
the JSON records whether the two models' parameters and their predictions on the first batch
(float64) agree, and whether the two built the same graphs (edge sets, vectors to 1e-4 A), so
a speed-up is only reported together with evidence that the numbers are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO / 'benchmarks' / 'results' / 'surrogate_step_time.json'


def measure(structures: pathlib.Path, preset: str, threads: int, steps: int, batch_size: int) -> dict:
    """Runs inside the tree that ``aiida_hpcai`` is imported from (PYTHONPATH)."""
    import hashlib

    import numpy as np
    import torch

    import aiida_hpcai
    from aiida_hpcai.models.crysformer import Crysformer
    from aiida_hpcai.models.graph import collate, graphs_from_arrays
    from aiida_hpcai.models.structure_io import read_npz

    torch.set_num_threads(threads)
    arrays = read_npz(structures)
    graph_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        graphs, _ = graphs_from_arrays(arrays)
        graph_seconds.append(time.perf_counter() - started)
    graph_digest = hashlib.sha256()
    for graph in graphs:
        # edges as a set (the order among equal distances is not part of the graph), vectors to
        # 1e-4 A so that float noise cannot flip a digit
        edges = np.column_stack([graph.target, graph.source, np.round(graph.vectors, 4) + 0.0])
        graph_digest.update(edges[np.lexsort(edges.T[::-1])].tobytes())
    batches = [collate(graphs[start : start + batch_size]) for start in range(0, len(graphs), batch_size)]
    torch.manual_seed(0)
    model = Crysformer(preset)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().double().numpy().tobytes())
    with torch.no_grad():
        reference = model.double().eval()(collate(graphs[:batch_size], dtype=torch.float64)).numpy().tolist()
    model.float()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    targets = torch.randn(len(graphs), generator=torch.Generator().manual_seed(0))
    model.train()

    def step(index: int) -> None:
        batch = batches[index % len(batches)]
        start = (index % len(batches)) * batch_size
        loss = torch.nn.functional.l1_loss(model(batch), targets[start : start + batch.num_graphs])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(0)
    started = time.perf_counter()
    for index in range(1, steps + 1):
        step(index)
    train_step = (time.perf_counter() - started) / steps

    model.eval()
    with torch.no_grad():
        model(batches[0])
        started = time.perf_counter()
        for batch in batches:
            model(batch)
        forward = time.perf_counter() - started
    return {
        'package': str(pathlib.Path(aiida_hpcai.__file__).parent),
        'train_step_seconds': train_step,
        'forward_seconds': forward,
        'graph_seconds': min(graph_seconds),
        'graphs_sha256': graph_digest.hexdigest(),
        'forward_structures_per_second': len(graphs) / forward,
        'train_structures_per_second': batch_size / train_step,
        'edges_per_structure': float(np.mean([len(g.source) for g in graphs])),
        'parameters_sha256': digest.hexdigest(),
        'float64_predictions_first_batch': reference,
    }


def _run_in(tree: pathlib.Path, args, structures: pathlib.Path) -> dict:
    from aiida_hpcai.models.evaluation import thread_environment

    env = {**os.environ, 'PYTHONPATH': str(tree), **thread_environment(args.threads)}
    command = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        '--measure',
        str(structures),
        '--preset',
        args.preset,
        '--threads',
        str(args.threads),
        '--steps',
        str(args.steps),
        '--batch-size',
        str(args.batch_size),
    ]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=tree).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--count', type=int, default=500)
    parser.add_argument('--preset', default='cpu')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--baseline-rev', default=None, help='git revision to time side by side')
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    parser.add_argument('--measure', type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.preset, args.threads, args.steps, args.batch_size)))
        return

    # imported here: ``--measure`` runs this file against another tree's package, which may lack them
    from aiida_hpcai.models.evaluation import default_source, run_record, small_test_structures
    from aiida_hpcai.models.structure_io import write_npz

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        structures = scratch / 'timing_set.npz'
        write_npz(small_test_structures(default_source(), args.count, 20), structures)
        trees = {'this tree': REPO}
        if args.baseline_rev:
            trees[args.baseline_rev] = scratch / 'baseline'
            subprocess.run(
                ['git', 'worktree', 'add', '--detach', str(trees[args.baseline_rev]), args.baseline_rev],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        try:
            for repeat in range(args.repeats):
                order = list(trees) if repeat % 2 == 0 else list(reversed(trees))
                for name in order:
                    runs[name].append(_run_in(trees[name], args, structures))
                    last = runs[name][-1]
                    print(
                        f'repeat {repeat} {name}: train step {last["train_step_seconds"]:.3f} s, '
                        f'forward {last["forward_seconds"]:.3f} s, graphs {last["graph_seconds"]:.3f} s',
                        flush=True,
                    )
        finally:
            if args.baseline_rev:
                subprocess.run(
                    ['git', 'worktree', 'remove', '--force', str(trees[args.baseline_rev])],
                    cwd=REPO,
                    check=False,
                    capture_output=True,
                )

    def best(name: str) -> dict:
        rows = runs[name]
        return {
            'package': rows[0]['package'],
            'train_step_seconds': min(r['train_step_seconds'] for r in rows),
            'forward_seconds': min(r['forward_seconds'] for r in rows),
            'graph_seconds': min(r['graph_seconds'] for r in rows),
            'train_step_seconds_all': [r['train_step_seconds'] for r in rows],
            'forward_seconds_all': [r['forward_seconds'] for r in rows],
            'parameters_sha256': rows[0]['parameters_sha256'],
            'graphs_sha256': rows[0]['graphs_sha256'],
            'edges_per_structure': rows[0]['edges_per_structure'],
        }

    result = {
        'benchmark': 'surrogate_step_time',
        'preset': args.preset,
        'structures': args.count,
        'max_atoms': 20,
        'batch_size': args.batch_size,
        'threads': args.threads,
        'steps': args.steps,
        'repeats': args.repeats,
        'run': run_record(load_before=load_before),
        'trees': {name: best(name) for name in trees},
    }
    if args.baseline_rev:
        import numpy as np

        this, other = runs['this tree'][0], runs[args.baseline_rev][0]
        result['same_parameters'] = this['parameters_sha256'] == other['parameters_sha256']
        result['same_graphs'] = this.get('graphs_sha256') == other.get('graphs_sha256')
        result['max_abs_float64_prediction_difference'] = float(
            np.max(
                np.abs(np.subtract(this['float64_predictions_first_batch'], other['float64_predictions_first_batch']))
            )
        )
        result['speedup_train_step'] = (
            result['trees'][args.baseline_rev]['train_step_seconds']
            / result['trees']['this tree']['train_step_seconds']
        )
        result['speedup_forward'] = (
            result['trees'][args.baseline_rev]['forward_seconds'] / result['trees']['this tree']['forward_seconds']
        )
        result['speedup_graphs'] = (
            result['trees'][args.baseline_rev]['graph_seconds'] / result['trees']['this tree']['graph_seconds']
        )
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != 'trees'}, indent=2))


if __name__ == '__main__':
    main()
