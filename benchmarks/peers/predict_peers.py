"""End-to-end prediction throughput of a peer model (CHGNet or ALIGNN) on a file of structures.

Runs in the peers venv (``/work/venvs/peers/bin/python``, see README.md), never in the project's
python: it imports neither aiida nor aiida_hpcai. What is timed, in this process, after imports:

- ``model_load``: CHGNet's pretrained weights from its wheel, or an ALIGNN checkpoint folder
  (or a freshly initialised ALIGNN of the ANCHORS size when no checkpoint is given: the cost
  of a forward pass does not depend on the weights);
- ``parse``: reading the structure file into pymatgen structures;
- ``graphs``: each model's own graph construction (CHGNet's ``graph_converter``; alignn's
  DGL-free ``build_pure_torch_graph`` + batching);
- ``forward``: the network, in batches (16 for CHGNet, 64 for ALIGNN by default), no gradients.

``seconds`` = model_load + parse + graphs + forward (what ``hpcai-model predict`` reports as its
in-program time); ``structures_per_second`` = count / seconds. Outgoing network connections are
refused (``--allow-network`` lifts that), so a hidden download fails instead of being timed.

Examples::

    /work/venvs/peers/bin/python benchmarks/peers/predict_peers.py --model chgnet \\
        --structures structures.json --output chgnet.json
    /work/venvs/peers/bin/python benchmarks/peers/predict_peers.py --model alignn \\
        --checkpoint runs/alignn_fe --structures structures.json --output alignn.json --predictions p.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import resource
import sys
import time

import peer_common  # this folder is on sys.path: the scripts run as files, with the peers venv's python


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', choices=['chgnet', 'alignn'], required=True)
    parser.add_argument(
        '--structures',
        required=True,
        help='.json (list of pymatgen Structure dicts, or {"ids","structures","labels"}), '
        '.extxyz/.xyz (ASE) or .csv[.gz] with a cif column',
    )
    parser.add_argument(
        '--checkpoint',
        default=None,
        help='ALIGNN checkpoint folder (config.json + best_model.pt); none: freshly initialised '
        'model of the ANCHORS size',
    )
    parser.add_argument('--chgnet-model', default='0.3.0', help='CHGNet weights shipped in its wheel (default 0.3.0)')
    parser.add_argument('--batch-size', type=int, default=None, help='default 16 for CHGNet, 64 for ALIGNN')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--limit', type=int, default=None, help='only the first N structures of the file')
    parser.add_argument(
        '--repeats',
        type=int,
        default=1,
        help='repeat parse+graphs+forward in this process; the best repeat is reported',
    )
    parser.add_argument('--output', default=None, help='write the summary JSON here (always printed too)')
    parser.add_argument('--predictions', default=None, help='write {"ids", "predictions", "units", "failed"} JSON here')
    parser.add_argument('--seed', type=int, default=0, help='initialisation seed of an ALIGNN without checkpoint')
    parser.add_argument('--allow-network', action='store_true')
    return parser.parse_args(argv)


def _failed(ids, index, error):
    return {'id': ids[index], 'error': f'{type(error).__name__}: {error}'[:300]}


def run_chgnet(model, ids, structures, batch_size):
    """Per-structure energies (eV/atom, CHGNet's total energy per atom) and timings."""
    timings = {'graphs': 0.0, 'forward': 0.0}
    started = time.perf_counter()
    graphs, kept, failed = [], [], []
    for n, structure in enumerate(structures):
        try:
            graphs.append(model.graph_converter(structure))
            kept.append(n)
        except Exception as error:  # e.g. an isolated atom: CHGNet refuses it
            failed.append(_failed(ids, n, error))
    timings['graphs'] = time.perf_counter() - started
    started = time.perf_counter()
    predictions = [None] * len(structures)
    if graphs:
        output = model.predict_graph(graphs, task='e', batch_size=batch_size)
        output = [output] if isinstance(output, dict) else output
        for n, result in zip(kept, output):
            predictions[n] = float(result['e'])
    timings['forward'] = time.perf_counter() - started
    return predictions, failed, timings


def run_alignn(model, graph_settings, ids, structures, batch_size):
    """Per-structure model output (the target the checkpoint was trained on) and timings."""
    import torch

    timings = {'graphs': 0.0, 'forward': 0.0}
    predictions = [None] * len(structures)
    failed = []
    with torch.no_grad():
        for start in range(0, len(structures), batch_size):
            began = time.perf_counter()
            items, kept = [], []
            for n in range(start, min(start + batch_size, len(structures))):
                try:
                    items.append(peer_common.alignn_graph(structures[n], graph_settings))
                    kept.append(n)
                except Exception as error:
                    failed.append(_failed(ids, n, error))
            batch = peer_common.alignn_batch(items) if items else None
            timings['graphs'] += time.perf_counter() - began
            if batch is None:
                continue
            began = time.perf_counter()
            out = model(batch)['out'].reshape(-1)
            timings['forward'] += time.perf_counter() - began
            for n, value in zip(kept, out.tolist()):
                predictions[n] = float(value)
    return predictions, failed, timings


def main(argv=None) -> dict:
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # the libraries' messages: stdout carries only the summary
        summary = measure(args)
    print(json.dumps(summary, indent=2))
    return summary


def measure(args) -> dict:
    peer_common.limit_threads(args.threads)
    if not args.allow_network:
        peer_common.forbid_network()
    import torch  # after the thread limits

    peer_common.set_torch_threads(args.threads)
    batch_size = args.batch_size or (16 if args.model == 'chgnet' else 64)

    began = time.perf_counter()
    if args.model == 'chgnet':
        from chgnet.model import CHGNet

        model = CHGNet.load(model_name=args.chgnet_model, use_device='cpu', verbose=False)
        model.eval()
        model_info = {
            'name': 'CHGNet',
            'weights': f'pretrained {args.chgnet_model} (shipped in the chgnet wheel)',
            'output': 'energy per atom (eV/atom, MPtrj total energy)',
            'units': 'eV/atom',
            'n_parameters': sum(p.numel() for p in model.parameters()),
        }
    else:
        if args.checkpoint:
            model, model_config, graph_settings = peer_common.load_alignn_checkpoint(args.checkpoint)
            weights = str(args.checkpoint)
            saved = json.loads((pathlib.Path(args.checkpoint) / 'config.json').read_text())
            target, units = saved.get('target'), saved.get('units')
        else:
            torch.manual_seed(args.seed)
            model_config, graph_settings = dict(peer_common.ALIGNN_MODEL_CONFIG), dict(peer_common.ALIGNN_GRAPH)
            model = peer_common.new_alignn_model(model_config).eval()
            weights, target, units = f'freshly initialised (seed {args.seed}): predictions are meaningless', None, None
        model_info = {
            'name': 'ALIGNNAtomWisePure (alignn, DGL-free)',
            'weights': weights,
            'target': target,
            'config': model_config,
            'graph': graph_settings,
            'units': units,
            'n_parameters': sum(p.numel() for p in model.parameters()),
        }
    model_load = time.perf_counter() - began

    runs = []
    for _ in range(max(1, args.repeats)):
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        ids, structures, _ = peer_common.read_structures(args.structures, limit=args.limit)
        parse = time.perf_counter() - began
        if args.model == 'chgnet':
            predictions, failed, timings = run_chgnet(model, ids, structures, batch_size)
        else:
            predictions, failed, timings = run_alignn(model, graph_settings, ids, structures, batch_size)
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        runs.append({'parse': parse, **timings, 'cpu_seconds': cpu})
    best = min(runs, key=lambda r: r['parse'] + r['graphs'] + r['forward'])
    work = best['parse'] + best['graphs'] + best['forward']
    seconds = model_load + work
    count = len(structures)
    n_atoms = [len(s) for s in structures]
    summary = {
        'model': args.model,
        'model_info': model_info,
        'structures_file': str(args.structures),
        'count': count,
        'n_ok': count - len(failed),
        'mean_atoms': sum(n_atoms) / max(1, count),
        'batch_size': batch_size,
        'threads': args.threads,
        'seconds': seconds,
        'structures_per_second': count / seconds if seconds else None,
        'seconds_without_model_load': work,
        'structures_per_second_without_model_load': count / work if work else None,
        'breakdown_seconds': {
            'model_load': model_load,
            'parse': best['parse'],
            'graphs': best['graphs'],
            'forward': best['forward'],
        },
        'cpu_seconds': best['cpu_seconds'],
        'repeats': runs,
        'failed': failed,
        'network_blocked': not args.allow_network,
        'versions': peer_common.versions(),
        'machine': {'processor': platform.machine(), 'load_average': list(os.getloadavg())},
    }
    if args.predictions:
        pathlib.Path(args.predictions).write_text(
            json.dumps(
                {
                    'model': args.model,
                    'units': model_info['units'],
                    'target': model_info.get('target'),
                    'ids': ids,
                    'predictions': predictions,
                    'failed': failed,
                }
            )
        )
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == '__main__':
    main()
