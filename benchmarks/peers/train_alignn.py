"""Train ALIGNN (alignn's DGL-free ``ALIGNNAtomWisePure``) on our mp_cgcnn split under a wall-clock budget.

Runs in the peers venv (``/work/venvs/peers/bin/python``, see README.md); imports neither aiida
nor aiida_hpcai. Same data and split as ``aiida_hpcai.models.evaluation`` (the release tool and the benchmarks):
``mp_cgcnn.csv.gz`` with rows whose formation energy is below -5 eV/atom dropped, and the
committed id lists ``benchmarks/splits/mp_cgcnn/{train,val,test}.txt``.

The model is the ANCHORS size (1 ALIGNN + 2 GCN layers, hidden 64, CGCNN atom features,
107,009 parameters) on alignn's published graph (12 nearest neighbours within 8 A, angles
between all of them), built with alignn's own ``build_pure_torch_graph``. Training follows
alignn's trainer for its ``alignn_*`` models: AdamW (no weight decay on biases and norms,
``alignn.utils.group_decay``), L1 loss on the raw target (alignn does not normalise it), batch 64,
a one-cycle learning-rate shape (30% rise from lr/25, cosine fall to lr/25e4). alignn's own
``train_dgl`` has no wall-clock budget and runs a fixed number of epochs, so this loop is ours:
the one-cycle position is the larger of the step fraction of ``--epochs`` and the elapsed
fraction of ``--max-minutes`` (so a budget-limited run still ends at a low learning rate, as
our own trainer does), the budget is checked after every batch (a cut epoch is still
evaluated), and the budget starts after the graphs are built (as in ``aiida_hpcai``'s
``train_ensemble``). The checkpoint with the best validation MAE is evaluated on test.

Writes ``--out`` (alignn's layout: ``config.json`` + ``best_model.pt``, loadable by
``predict_peers.py --checkpoint``) and the result JSON ``--output`` (default ``OUT/result.json``).

Example (the cpu-config comparison; 2 threads)::

    /work/venvs/peers/bin/python benchmarks/peers/train_alignn.py --max-minutes 35 --out runs/alignn_fe
    # smoke run
    /work/venvs/peers/bin/python benchmarks/peers/train_alignn.py --limit 500 --max-minutes 2 --out /tmp/alignn_smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import pickle
import platform
import time

import peer_common  # this folder is on sys.path: the scripts run as files, with the peers venv's python

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent

MIN_FORMATION_ENERGY = -5.0
UNITS = {'formation_energy_per_atom': 'eV/atom', 'band_gap': 'eV'}


def default_data() -> pathlib.Path:
    root = pathlib.Path(os.environ.get('HPCAI_DATA_DIR', REPO.parent / 'shared' / 'data'))
    return root / 'mp_cgcnn' / 'mp_cgcnn.csv.gz'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--data',
        default=str(default_data()),
        help='mp_cgcnn.csv.gz (default: $HPCAI_DATA_DIR or ../shared/data beside the checkout)',
    )
    parser.add_argument('--split-dir', default=str(REPO / 'benchmarks' / 'splits' / 'mp_cgcnn'))
    parser.add_argument('--target', default='formation_energy_per_atom', choices=sorted(UNITS))
    parser.add_argument(
        '--max-minutes',
        type=float,
        default=None,
        help='wall-clock budget of the training loop (graph building not included)',
    )
    parser.add_argument('--epochs', type=int, default=300, help="upper bound on epochs (alignn's default 300)")
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--learning-rate', type=float, default=1e-3, help='peak of the one-cycle schedule')
    parser.add_argument('--weight-decay', type=float, default=1e-5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--train-fraction',
        type=float,
        default=1.0,
        help='a seeded subset of the training ids (the same draw as python -m aiida_hpcai.models.release train '
        '--train-fraction with the same --seed)',
    )
    parser.add_argument(
        '--limit',
        type=int,
        default=None,
        help='smoke runs: at most N training structures and N//8 (>= 1) each for val and test',
    )
    parser.add_argument('--out', required=True, help='checkpoint folder (config.json + best_model.pt)')
    parser.add_argument('--output', default=None, help='result JSON (default OUT/result.json)')
    parser.add_argument(
        '--graph-workers',
        type=int,
        default=0,
        help='build the graphs in N single-thread processes (before the budget starts)',
    )
    parser.add_argument('--progress-seconds', type=float, default=60.0, help='print a progress line this often')
    return parser.parse_args(argv)


def choose_ids(args) -> dict[str, list[str]]:
    import numpy as np

    split_dir = pathlib.Path(args.split_dir)
    split = {name: (split_dir / f'{name}.txt').read_text().split() for name in ('train', 'val', 'test')}
    if args.train_fraction < 1.0:
        # as the release tool's train: a seeded permutation of the positions of the training ids, sorted
        chosen = np.random.default_rng(args.seed).permutation(len(split['train']))
        chosen = np.sort(chosen[: int(round(args.train_fraction * len(split['train'])))])
        split['train'] = [split['train'][i] for i in chosen]
    if args.limit:
        small = max(1, args.limit // 8)
        split = {'train': split['train'][: args.limit], 'val': split['val'][:small], 'test': split['test'][:small]}
    return split


def load_split(args, split):
    """Structures and labels of each split, in the order of the id lists; ids missing from the
    data or below the formation-energy cut are reported, not guessed."""
    wanted = {i for ids in split.values() for i in ids}
    ids, structures, labels = peer_common.read_structures(args.data, ids=list(wanted))
    position = {i: n for n, i in enumerate(ids)}
    formation = labels['formation_energy_per_atom']
    target = labels[args.target]
    data, missing, dropped = {}, {}, {}
    for name, members in split.items():
        keep = [position[i] for i in members if i in position]
        missing[name] = len(members) - len(keep)
        good = [n for n in keep if formation[n] >= MIN_FORMATION_ENERGY and math.isfinite(target[n])]
        dropped[name] = len(keep) - len(good)
        data[name] = ([ids[n] for n in good], [structures[n] for n in good], [target[n] for n in good])
    return data, missing, dropped


def _graph_or_error(job):
    structure, graph = job
    try:
        return peer_common.alignn_graph(structure, graph)
    except Exception as error:
        return f'{type(error).__name__}: {error}'[:300]


def _pickled_graph_or_error(job) -> bytes:
    # plain pickle copies the tensors: torch's own pickler would pass one file descriptor
    # per tensor between the processes, tens of thousands of them
    return pickle.dumps(_graph_or_error(job))


def _single_thread_worker():
    import torch

    torch.set_num_threads(1)


def build_graphs(structures, ids, graph, workers: int = 0):
    """alignn graphs of every structure; ``workers`` > 0 builds them in that many processes
    of one thread each (graph building is many tiny torch ops: threads do not help it)."""
    jobs = [(structure, graph) for structure in structures]
    if workers > 0:
        import multiprocessing

        with multiprocessing.get_context('fork').Pool(workers, initializer=_single_thread_worker) as pool:
            results = [pickle.loads(b) for b in pool.map(_pickled_graph_or_error, jobs, chunksize=64)]
    else:
        results = [_graph_or_error(job) for job in jobs]
    graphs, kept, failed = [], [], []
    for n, result in enumerate(results):
        if isinstance(result, str):
            failed.append({'id': ids[n], 'error': result})
        else:
            graphs.append(result)
            kept.append(n)
    return graphs, kept, failed


def one_cycle(progress: float, peak: float, rise: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    """torch's OneCycleLR (cosine annealing) as a function of the fraction of the run done."""
    start, end = peak / div, peak / div / final_div
    progress = min(max(progress, 0.0), 1.0)
    if progress < rise:
        return start + (peak - start) * (1 - math.cos(math.pi * progress / rise)) / 2
    return peak + (end - peak) * (1 - math.cos(math.pi * (progress - rise) / (1 - rise))) / 2


def evaluate(model, graphs, targets, batch_size) -> tuple[float, list[float]]:
    import torch

    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(graphs), batch_size):
            out = model(peer_common.alignn_batch(graphs[start : start + batch_size]))['out'].reshape(-1)
            predictions.extend(out.tolist())
    mae = sum(abs(p - t) for p, t in zip(predictions, targets)) / max(1, len(targets))
    return mae, predictions


def main(argv=None) -> dict:
    args = parse_args(argv)
    peer_common.limit_threads(args.threads)
    peer_common.forbid_network()
    import numpy as np
    import torch
    from alignn.utils import group_decay

    peer_common.set_torch_threads(args.threads)
    started = time.monotonic()
    split = choose_ids(args)
    data, missing, dropped = load_split(args, split)
    parse_seconds = time.monotonic() - started
    print(
        f'parsed {sum(len(d[0]) for d in data.values())} structures in {parse_seconds:.1f} s '
        f'(train {len(data["train"][0])}, val {len(data["val"][0])}, test {len(data["test"][0])})',
        flush=True,
    )

    graph_settings = dict(peer_common.ALIGNN_GRAPH)
    began = time.monotonic()
    prepared, failures = {}, {}
    for name, (ids, structures, targets) in data.items():
        graphs, kept, failed = build_graphs(structures, ids, graph_settings, args.graph_workers)
        prepared[name] = (graphs, [targets[n] for n in kept], [ids[n] for n in kept])
        failures[name] = failed
    graph_seconds = time.monotonic() - began
    print(f'graphs built in {graph_seconds:.1f} s; failures: { {k: len(v) for k, v in failures.items()} }', flush=True)

    torch.manual_seed(args.seed)
    model_config = dict(peer_common.ALIGNN_MODEL_CONFIG)
    model = peer_common.new_alignn_model(model_config)
    n_parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(group_decay(model), lr=args.learning_rate, weight_decay=args.weight_decay)
    train_graphs, train_targets, _ = prepared['train']
    val_graphs, val_targets, _ = prepared['val']
    targets = torch.tensor(train_targets, dtype=torch.float32)
    steps_per_epoch = max(1, math.ceil(len(train_graphs) / args.batch_size))
    total_steps = steps_per_epoch * args.epochs
    budget = None if args.max_minutes is None else 60.0 * args.max_minutes
    generator = np.random.default_rng(args.seed)

    history, best = [], {'val_mae': math.inf, 'epoch': -1, 'state': None}
    step, train_started = 0, time.monotonic()
    last_print = train_started
    out_of_time = False
    for epoch in range(args.epochs):
        model.train()
        epoch_started = time.monotonic()
        order = generator.permutation(len(train_graphs))
        losses, seen = [], 0
        for start in range(0, len(order), args.batch_size):
            chosen = order[start : start + args.batch_size]
            progress = step / total_steps
            if budget is not None:
                progress = max(progress, (time.monotonic() - train_started) / budget)
            for group in optimizer.param_groups:
                group['lr'] = one_cycle(progress, args.learning_rate)
            batch = peer_common.alignn_batch([train_graphs[i] for i in chosen])
            loss = torch.nn.functional.l1_loss(model(batch)['out'].reshape(-1), targets[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(chosen)
            losses.append(float(loss.detach()))
            now = time.monotonic()
            if now - last_print > args.progress_seconds:
                print(
                    f'  epoch {epoch} {seen}/{len(order)} loss {np.mean(losses):.4f} '
                    f'lr {optimizer.param_groups[0]["lr"]:.2e} elapsed {now - train_started:.0f} s',
                    flush=True,
                )
                last_print = now
            if budget is not None and now - train_started > budget:
                out_of_time = True
                break
        train_seconds = time.monotonic() - epoch_started
        val_mae, _ = evaluate(model, val_graphs, val_targets, args.batch_size)
        history.append(
            {
                'epoch': epoch,
                'train_l1': float(np.mean(losses)),
                'val_mae': val_mae,
                'lr': optimizer.param_groups[0]['lr'],
                'structures_seen': seen,
                'complete': seen == len(order),
                'train_seconds': train_seconds,
                'seconds': time.monotonic() - epoch_started,
            }
        )
        if val_mae < best['val_mae']:
            best = {
                'val_mae': val_mae,
                'epoch': epoch,
                'state': {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
        print(
            f'epoch {epoch}: train L1 {history[-1]["train_l1"]:.4f}, val MAE {val_mae:.4f} '
            f'(best {best["val_mae"]:.4f} @ {best["epoch"]}), {history[-1]["seconds"]:.0f} s',
            flush=True,
        )
        if out_of_time:
            break
    training_seconds = time.monotonic() - train_started

    model.load_state_dict(best['state'])
    test_graphs, test_targets, test_ids = prepared['test']
    test_mae, test_predictions = evaluate(model, test_graphs, test_targets, args.batch_size)
    val_mae, _ = evaluate(model, val_graphs, val_targets, args.batch_size)
    units = UNITS[args.target]
    result = {
        'model': 'ALIGNNAtomWisePure (alignn, DGL-free)',
        'target': args.target,
        'units': units,
        'test_mae': test_mae,
        'val_mae': val_mae,
        'best_epoch': best['epoch'],
        'epochs_run': len(history),
        'complete_epochs': sum(1 for h in history if h['complete']),
        'seconds_per_complete_epoch': (
            float(np.mean([h['train_seconds'] for h in history if h['complete']]))
            if any(h['complete'] for h in history)
            else None
        ),
        'stopped_by': 'budget' if out_of_time else 'epochs',
        'training_seconds': training_seconds,
        'max_minutes': args.max_minutes,
        'parse_seconds': parse_seconds,
        'graph_seconds': graph_seconds,
        'n_parameters': n_parameters,
        'model_config': model_config,
        'graph': graph_settings,
        'training': {
            'optimizer': 'AdamW (alignn group_decay)',
            'loss': 'L1',
            'learning_rate': args.learning_rate,
            'weight_decay': args.weight_decay,
            'schedule': 'one-cycle over max(step, time) fraction',
            'batch_size': args.batch_size,
            'epochs': args.epochs,
            'seed': args.seed,
            'threads': args.threads,
            'graph_workers': args.graph_workers,
        },
        'dataset': {
            'source': str(args.data),
            'split_dir': str(args.split_dir),
            'min_formation_energy': MIN_FORMATION_ENERGY,
            'train_fraction': args.train_fraction,
            'limit': args.limit,
            'n': {name: len(prepared[name][0]) for name in prepared},
            'ids_missing_from_data': missing,
            'dropped_by_cut': dropped,
            'graph_failures': failures,
        },
        'history': history,
        'versions': peer_common.versions(),
        'machine': {'processor': platform.machine(), 'cpus': os.cpu_count(), 'load_average': list(os.getloadavg())},
        'checkpoint': str(args.out),
    }
    peer_common.save_alignn_checkpoint(
        args.out,
        model,
        model_config,
        graph_settings,
        extra={
            'target': args.target,
            'units': units,
            'test_mae': test_mae,
            'val_mae': val_mae,
            'best_epoch': best['epoch'],
        },
        state=best['state'],
    )
    output = pathlib.Path(args.output) if args.output else pathlib.Path(args.out) / 'result.json'
    output.write_text(json.dumps(result, indent=2))
    (pathlib.Path(args.out) / 'test_predictions.json').write_text(
        json.dumps({'ids': test_ids, 'targets': test_targets, 'predictions': test_predictions, 'units': units})
    )
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    'test_mae',
                    'val_mae',
                    'best_epoch',
                    'epochs_run',
                    'complete_epochs',
                    'seconds_per_complete_epoch',
                    'training_seconds',
                    'graph_seconds',
                    'n_parameters',
                )
            },
            indent=2,
        )
    )
    return result


if __name__ == '__main__':
    main()
