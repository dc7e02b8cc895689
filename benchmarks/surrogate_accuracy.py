"""Surrogate accuracy on mp_cgcnn: Crysformer ensembles next to baselines, same split, same script.

Data: ``../shared/data/mp_cgcnn/mp_cgcnn.csv.gz`` (or ``$HPCAI_DATA_DIR``), rows with formation
energy below -5 eV/atom dropped (broken old MP entries), a seeded 80/10/10 split by material id
whose id lists are committed in ``benchmarks/splits/mp_cgcnn/``.

Sub-commands (each writes into ``benchmarks/results/`` unless told otherwise)::

    baselines            mean predictor and ridge regression on element fractions, both targets
    export-npz OUT       the filtered dataset as one structure-set npz (to carry to a GPU machine)
    train                train one ensemble (or one member with --member K) for one target
                         (--init PATH#K: start from one finished member and train it on, a warm restart)
    merge                pool member checkpoints of one target into one ensemble and evaluate it
    pools                val and test MAE of every pool of the given members (plain prediction), ranked by val,
                         and the pool to merge (best on val of --min-members or more, one state of each member)
                         -> --result JSON
    ship                 copy a finished run into the package as its target's pretrained model, record beside it
    recalibrate          refit a checkpoint's sigma scales on the validation split (after a change of the
                         fitting rule) and rewrite its uncertainty metrics, without retraining
    report               collect baselines + trained models into surrogate_accuracy.json
    equal-budget         Crysformer (one ``cpu`` member) and ALIGNN-pure (peers venv) trained side by side,
                         at the same time with the same threads and wall-clock budget -> surrogate_equal_budget.json
    size-curve           test MAE against training-set size (seeded subsets of the training ids), one ``cpu``
                         member per size, all at once with equal threads and budget -> surrogate_size_curve.json/.png
    thresholds           what a sigma threshold of ``hpcai.surrogate`` keeps: for several thresholds, the
                         fraction of val/test structures called confident and the MAE of both parts, per
                         shipped model -> surrogate_thresholds.json
    all                  baselines, train both targets on this machine, report (slow on a CPU)

Example (what produced the shipped pretrained models, see docs/source/surrogate_model.md)::

    python benchmarks/surrogate_accuracy.py baselines
    python benchmarks/surrogate_accuracy.py train --target band_gap --member 0 --out runs/bg_m0 --device cuda
    python benchmarks/surrogate_accuracy.py merge --target band_gap --members runs/bg_m0 runs/bg_m1 --out runs/bg
    python benchmarks/surrogate_accuracy.py report --model formation_energy_per_atom=runs/fe --model band_gap=runs/bg
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiida_hpcai.models.datasets import load_dataset, read_split, split_by_id, split_indices, write_split  # noqa: E402
from aiida_hpcai.models.structure_io import StructureArrays, read_npz, write_npz  # noqa: E402
from aiida_hpcai.models.uncertainty import UNCERTAINTY_METHODS  # noqa: E402

TARGETS = {'formation_energy_per_atom': 'eV/atom', 'band_gap': 'eV'}
TARGET_MAE = {'formation_energy_per_atom': 0.045, 'band_gap': 0.35}
MIN_FORMATION_ENERGY = -5.0
SPLIT_DIR = REPO / 'benchmarks' / 'splits' / 'mp_cgcnn'
RESULTS_DIR = REPO / 'benchmarks' / 'results'
BASELINES_FILE = RESULTS_DIR / 'surrogate_baselines.json'
RESULTS_FILE = RESULTS_DIR / 'surrogate_accuracy.json'
EQUAL_BUDGET_FILE = RESULTS_DIR / 'surrogate_equal_budget.json'
SIZE_CURVE_FILE = RESULTS_DIR / 'surrogate_size_curve.json'
THRESHOLDS_FILE = RESULTS_DIR / 'surrogate_thresholds.json'
MEMBERS_HELP = 'train/merge folders or shipped .pt files, each optionally #K,... to take only members K'


def thread_environment(threads: int) -> dict[str, str]:
    """The variables that hold a child process's OpenMP/MKL pools to ``threads``."""
    return {'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}


def default_source() -> pathlib.Path:
    root = pathlib.Path(os.environ.get('HPCAI_DATA_DIR', REPO.parent / 'shared' / 'data'))
    return root / 'mp_cgcnn' / 'mp_cgcnn.csv.gz'


def load_filtered(source: pathlib.Path) -> tuple[StructureArrays, dict]:
    """mp_cgcnn with both labels, rows with formation energy < -5 eV/atom dropped."""
    if source.suffix == '.npz':
        arrays = read_npz(source)
        info = {'source': source.name, 'n_loaded': len(arrays), 'n_skipped_by_loader': None}
    else:
        dataset = load_dataset(source, targets=list(TARGETS), cache=True, progress=True)
        arrays = dataset.arrays
        info = {'source': str(source.name), 'n_loaded': len(arrays), 'n_skipped_by_loader': len(dataset.skipped)}
    keep = np.nonzero(arrays.labels['formation_energy_per_atom'] >= MIN_FORMATION_ENERGY)[0]
    info.update(
        {
            'name': 'mp_cgcnn',
            'n_dropped_formation_energy_below_-5': int(len(arrays) - len(keep)),
            'n_structures': int(len(keep)),
        }
    )
    return arrays.subset(keep), info


def get_split(arrays: StructureArrays) -> dict[str, np.ndarray]:
    """The committed split (created on first use: 80/10/10 by material id, seed 0)."""
    if not (SPLIT_DIR / 'train.txt').exists():
        write_split(SPLIT_DIR, split_by_id(arrays.ids, (0.8, 0.1, 0.1), seed=0))
    return split_indices([str(i) for i in arrays.ids], read_split(SPLIT_DIR))


# -- baselines -----------------------------------------------------------------------------------
def _fractions(arrays: StructureArrays, indices) -> np.ndarray:
    from aiida_hpcai.models.training import composition_fractions

    return composition_fractions([arrays.atoms_of(int(i))[0] for i in indices])


def baselines(arrays: StructureArrays, split: dict[str, np.ndarray]) -> dict:
    """Test MAE of the train-mean predictor and of ridge regression on element fractions
    (with an intercept; the ridge strength picked on val from a log grid)."""
    x = {name: _fractions(arrays, idx) for name, idx in split.items()}
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
            'units': TARGETS[target],
            'mean_predictor_test_mae': float(np.mean(np.abs(mean - y['test']))),
            'ridge_element_fractions_test_mae': float(
                np.mean(np.abs((x['test'] - x_mean) @ coef + y_mean - y['test']))
            ),
            'ridge_alpha_per_sample': float(alpha),
        }
    return results


# -- training --------------------------------------------------------------------------------------
def train(args) -> None:
    import torch

    from aiida_hpcai.models.training import train_ensemble

    if args.threads:
        torch.set_num_threads(args.threads)
    arrays, info = load_filtered(pathlib.Path(args.data))
    split = get_split(arrays)
    if args.train_fraction < 1.0:  # learning curve: a seeded subset of the training ids
        rng = np.random.default_rng(args.seed)
        split['train'] = np.sort(
            rng.permutation(split['train'])[: int(round(args.train_fraction * len(split['train'])))]
        )
    model_config = json.loads(args.config) if args.config.startswith('{') else args.config
    training = {
        'epochs': args.epochs,
        'batch_size': args.batch_size,
        'learning_rate': args.learning_rate,
        'seed': args.seed + (args.member or 0),
        'device': args.device,
        'max_minutes': args.max_minutes,
        'patience': args.patience,
        'ensemble_size': 1 if args.member is not None else args.ensemble_size,
        'element_reference': not args.no_element_reference,
        'mc_samples': args.mc_samples,
        'progress': not args.no_progress,
        'graph_workers': args.graph_workers,
    }
    dataset = {**info, 'split_dir': str(SPLIT_DIR.relative_to(REPO)), 'train_fraction': args.train_fraction}
    parent = None
    if args.init:
        parent, dataset['initialized_from'] = warm_start(args.init)
    started = time.time()
    _, metrics = train_ensemble(
        arrays,
        args.target,
        split,
        args.out,
        model_config=model_config,
        training=training,
        units=TARGETS[args.target],
        dataset=dataset,
        parent=parent,
    )
    print(
        json.dumps(
            {
                'target': args.target,
                'test_mae': metrics['test']['mae'],
                'val_mae': metrics['val']['mae'],
                'seconds': time.time() - started,
            }
        )
    )


def warm_start(spec: str) -> tuple[dict, dict]:
    """One finished member (``PATH#K``) to train on (``train --init``): the parent checkpoint (its
    weights, normalisation and element reference) and the record of where the new run starts: the
    member, its epochs and recipe, and its line (``_lineage``: the root it goes back to, its seconds)."""
    source = load_members(spec)
    if len(source['states']) != 1:
        raise SystemExit(f'--init names {len(source["states"])} members; name one, as PATH#K')
    parent = {**source['checkpoint'], 'members': source['states']}
    record = {
        'member': spec,
        'epochs': len(source['histories'][0]),
        'training': {key: value for key, value in source['training'][0].items() if key != 'initialized_from'},
        **source['lineages'][0],
    }
    return parent, record


def _same_normalization(one: dict, other: dict) -> bool:
    """Each run recomputes the target normalisation: equal up to the order of a float sum."""
    return one.keys() == other.keys() and all(np.isclose(one[key], other[key], rtol=1e-12, atol=0.0) for key in one)


def load_members(spec: str) -> dict:
    """Members of a trained model, named ``PATH`` or ``PATH#K,...`` (only members K): PATH is a train or
    merge folder (``model.pt`` and ``metrics.json``) or a checkpoint file with its record beside it
    (``X.pt`` and ``X.json``, as ``ship`` writes them), so a shipped member can join a new pool. Returns
    the checkpoint, the chosen member indices and states, their epoch histories and training
    hyperparameters, and each one's line (``_lineage``)."""
    from aiida_hpcai.models.checkpoint import load_checkpoint

    path, _, picked = spec.partition('#')
    path = pathlib.Path(path)
    if path.is_dir():
        checkpoint = load_checkpoint(path / 'model.pt')
        record = json.loads((path / 'metrics.json').read_text())
    else:
        checkpoint = load_checkpoint(path)
        record = json.loads(path.with_suffix('.json').read_text())
    indices = [int(k) for k in picked.split(',')] if picked else list(range(len(checkpoint['members'])))
    training = checkpoint['hyperparameters']['training']
    # a pooled source records each member's own recipe; a trained one has one recipe for all, and the
    # member it went on from (train --init) belongs to that recipe, so a pool keeps each member's start
    start = checkpoint['dataset'].get('initialized_from')
    recipes = training.get('members') or [{**training, 'initialized_from': start} if start else training] * len(
        checkpoint['members']
    )
    recipes = [
        {**recipe, 'initialized_from': _started_from(recipe)} if recipe.get('initialized_from') else recipe
        for recipe in recipes
    ]
    return {
        'checkpoint': checkpoint,
        'indices': indices,
        'states': [checkpoint['members'][k] for k in indices],
        'histories': [record['history'][k] for k in indices],
        'training': [{key: value for key, value in recipes[k].items() if key != 'members'} for k in indices],
        'lineages': [_lineage(record['history'][k], recipes[k]) for k in indices],
    }


def _started_from(recipe: dict) -> dict | None:
    """The record of the member a run went on from (``train --init``), with that member's line
    (``root``, ``seconds``), or None for a run from scratch. Records written before lines were stored
    are completed by following the files they name (``seconds`` None where those are gone), so a
    pool merged from them carries its lines wherever it is copied."""
    from aiida_hpcai.models.checkpoint import CheckpointError

    start = recipe.get('initialized_from')
    if not start or 'root' in start:
        return start
    try:
        line = load_members(start['member'])['lineages'][0]
    except (CheckpointError, FileNotFoundError):  # the checkpoint or the record beside it is gone
        line = {'root': f'unknown (started from {start["member"]}, no longer there)', 'seconds': None}
    return {**start, **line}


def _lineage(history: list[dict], recipe: dict) -> dict:
    """One member's line: ``root``, a name of the member trained from scratch that it goes back to
    through its warm restarts (``train --init``), the same wherever its files were copied (a digest of
    that member's first epoch), and ``seconds``, the training seconds of the whole line (its epochs and
    those of every run it went on from). ``recipe``'s start record is a completed one (``_started_from``)."""
    import hashlib

    own = float(sum(row['seconds'] for row in history))
    start = recipe.get('initialized_from')
    if not start:
        return {
            'root': hashlib.sha256(json.dumps(history[0], sort_keys=True).encode()).hexdigest()[:12],
            'seconds': own,
        }
    return {'root': start['root'], 'seconds': None if start['seconds'] is None else own + start['seconds']}


def _seconds_per_member(path) -> list[float | None]:
    """The training seconds of each member's whole line (``_lineage``) of a run folder or shipped file."""
    return [line['seconds'] for line in load_members(str(path))['lineages']]


def _sum_or_none(values) -> float | None:
    values = list(values)
    return None if any(value is None for value in values) else float(sum(values))


def merge(args) -> None:
    """Pool members of finished runs (same target, split and data) into one ensemble checkpoint."""
    from aiida_hpcai.models.checkpoint import model_config_of
    from aiida_hpcai.models.training import TrainingConfig, finalize_ensemble, prepare_splits

    arrays, info = load_filtered(pathlib.Path(args.data))
    split = get_split(arrays)
    sources = [load_members(spec) for spec in args.members]
    checkpoints = [source['checkpoint'] for source in sources]
    first = checkpoints[0]
    if any(
        c['target'] != args.target
        or not _same_normalization(c['normalization'], first['normalization'])
        or model_config_of(c) != model_config_of(first)
        for c in checkpoints
    ):
        raise SystemExit('member checkpoints differ in target, normalisation or model: not one ensemble')
    members = [state for source in sources for state in source['states']]
    histories = [history for source in sources for history in source['histories']]
    recipes = [recipe for source in sources for recipe in source['training']]
    model_config = model_config_of(first)
    training = {key: value for key, value in recipes[0].items() if key != 'initialized_from'}  # a record, no option
    training.update({'device': args.device, 'ensemble_size': len(members), 'mc_samples': args.mc_samples})
    config = TrainingConfig.from_dict(training)

    def recipe(options):  # what shapes a member besides its seed (not how it was pooled or shown)
        return {
            key: value
            for key, value in options.items()
            if key not in ('seed', 'ensemble_size', 'mc_samples', 'progress', 'graph_workers')
        }

    mixed = any(recipe(options) != recipe(recipes[0]) for options in recipes)
    data, normalization, failures = prepare_splits(
        arrays, args.target, split, first['element_reference'], first['normalization'], model_config.num_neighbours
    )
    _, metrics = finalize_ensemble(
        members,
        histories,
        model_config,
        config,
        args.target,
        TARGETS[args.target],
        normalization,
        first['element_reference'],
        data,
        failures,
        args.out,
        {
            **{key: value for key, value in first['dataset'].items() if key != 'initialized_from'},
            **info,
        },  # each member's start is in its recipe
        training_seconds=_sum_or_none(lineage['seconds'] for source in sources for lineage in source['lineages']),
        member_training=recipes if mixed else None,
    )
    print(
        json.dumps(
            {'target': args.target, 'test_mae': metrics['test']['mae'], 'member_mae': metrics['test'].get('member_mae')}
        )
    )


def pools(args) -> dict:
    """Plain (dropout off) val and test predictions of every given member, and the MAE of the mean of
    every pool of one or more of them, ranked by validation MAE, with the test MAE beside it for the
    record -> ``args.result``. The pool to ``merge`` (``chosen``) is the best on val of those with at
    least ``--min-members`` members, at most one state of each member: a member and a state it was
    trained on from (``train --init``) are one network at two times, not two members of a deep
    ensemble, and two members give no usable spread."""
    import itertools

    import torch

    from aiida_hpcai.models.inference import EnsemblePredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    subsets, graphs = _split_graphs(load_filtered(pathlib.Path(args.data))[0])
    names, roots, predictions = [], [], {'val': [], 'test': []}
    for spec in args.members:
        source = load_members(spec)
        if source['checkpoint']['target'] != args.target:
            raise SystemExit(f'{spec} predicts {source["checkpoint"]["target"]}, not {args.target}')
        predictor = EnsemblePredictor([{**source['checkpoint'], 'members': source['states']}])
        for name in ('val', 'test'):
            predictions[name].extend(predictor.sample(graphs[name], 64, 'ensemble'))  # one row per member
        names.extend(f'{spec.partition("#")[0]}#{k}' for k in source['indices'])
        roots.extend(lineage['root'] for lineage in source['lineages'])
    labels = {name: subsets[name].labels[args.target] for name in ('val', 'test')}

    bounded = predictor.bounded  # every member predicts args.target: one bound

    def mae(name, members):  # as the pooled model predicts: the mean, raised to the target's bound
        mean = bounded(np.mean([predictions[name][k] for k in members], axis=0))
        return float(np.mean(np.abs(mean - labels[name])))

    rows = [
        {
            'members': [names[k] for k in chosen],
            'val_mae': mae('val', chosen),
            'test_mae': mae('test', chosen),
            'one_state_per_member': len({roots[k] for k in chosen}) == len(chosen),
        }
        for size in range(1, len(names) + 1)
        for chosen in itertools.combinations(range(len(names)), size)
    ]
    rows.sort(key=lambda row: row['val_mae'])
    eligible = [row for row in rows if row['one_state_per_member'] and len(row['members']) >= args.min_members]
    result = {
        'target': args.target,
        'units': TARGETS[args.target],
        'rule': f'chosen: the pool of lowest val MAE among those of {args.min_members} or more members holding '
        'at most one state of each member (states of one member share the root of their warm restarts)',
        'prediction': 'plain (dropout off), mean over the pool',
        'roots': dict(zip(names, roots)),
        'chosen': eligible[0] if eligible else None,
        'pools': rows,
    }
    pathlib.Path(args.result).write_text(json.dumps(result, indent=2))
    for row in rows[:10]:
        print(json.dumps(row))
    print('chosen:', json.dumps(result['chosen']))
    return result


def recalibrate(args) -> None:
    """Refit the sigma scales of a trained checkpoint on its validation split with the current rule of
    ``aiida_hpcai.models.uncertainty.fit_sigma_scale``, recompute the val/test uncertainty metrics of the
    refitted methods, and save the checkpoint again (and the ``.json`` beside it, if there is one)."""
    import torch

    from aiida_hpcai.models.checkpoint import id_digest, load_checkpoint, save_checkpoint, sha256_file
    from aiida_hpcai.models.graph import graphs_from_arrays
    from aiida_hpcai.models.inference import EnsemblePredictor
    from aiida_hpcai.models.training import calibrate_method
    from aiida_hpcai.models.uncertainty import fit_sigma_scale

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # MC dropout samples at random
    path = pathlib.Path(args.checkpoint)
    old_sha = sha256_file(path)
    checkpoint = load_checkpoint(path)
    arrays, _ = load_filtered(pathlib.Path(args.data))
    split = get_split(arrays)
    predictor = EnsemblePredictor([checkpoint], args.device)
    # fit the scales for the sample count prediction will use (the program draws 10 by default)
    mc_samples = args.mc_samples or int(checkpoint['hyperparameters']['training'].get('mc_samples', 10))
    splits = {}
    for name in ('val', 'test'):
        graphs, _ = graphs_from_arrays(
            arrays, split[name], num_neighbours=max(predictor.num_neighbours), errors='collect'
        )
        kept = [i for i, graph in zip(split[name], graphs) if graph is not None]
        if id_digest([str(arrays.ids[i]) for i in kept]) != checkpoint['split'][name]:
            raise SystemExit(f'the {name} split differs from the one this checkpoint was evaluated on')
        splits[name] = ([g for g in graphs if g is not None], arrays.labels[checkpoint['target']][kept])
    record = {'rule': ' '.join(fit_sigma_scale.__doc__.split()), 'methods': {}}
    # one member has no ensemble spread (prediction falls back to MC dropout)
    for method in [m for m in args.methods if m != 'ensemble' or predictor.num_members > 1]:
        scale, _, metrics = calibrate_method(predictor, splits, method, args.batch_size, mc_samples)
        record['methods'][method] = {
            'old_scale': checkpoint['sigma_scale'].get(method),
            'new_scale': scale,
            'mc_samples_per_member': mc_samples if method != 'ensemble' else None,
        }
        checkpoint['sigma_scale'][method] = scale
        for name, values in metrics.items():
            checkpoint['metrics'][name][method] = values
        print(
            json.dumps(
                {method: {**record['methods'][method], 'test': checkpoint['metrics']['test'][method]}}, indent=1
            ),
            flush=True,
        )
    if predictor.num_members == 1 and 'mc_dropout' in record['methods']:
        # as in training: a single member's 'ensemble' scale is its MC-dropout scale (what pooling
        # several one-member files averages before the pooled ensemble is recalibrated)
        checkpoint['sigma_scale']['ensemble'] = checkpoint['sigma_scale']['mc_dropout']
    output = pathlib.Path(args.output or path)
    sha = save_checkpoint(checkpoint, output)
    beside = path.with_suffix('.json')
    if beside.exists():
        payload = json.loads(beside.read_text())
        payload.update(
            {
                'sha256': sha,
                'metrics': checkpoint['metrics'],
                'sigma_scale': checkpoint['sigma_scale'],
                'recalibrated': record,
            }
        )
        output.with_suffix('.json').write_text(json.dumps(payload, indent=2))
    # the accuracy report quotes this checkpoint's uncertainty: keep it in step when it was rewritten in place
    if output.resolve() == path.resolve() and RESULTS_FILE.exists():
        result = json.loads(RESULTS_FILE.read_text())
        entry = result['targets'].get(checkpoint['target'], {}).get('crysformer', {})
        if entry.get('sha256') == old_sha:
            test = checkpoint['metrics']['test']
            entry.update(
                {
                    'sha256': sha,
                    'sigma_scale': checkpoint['sigma_scale'],
                    'recalibrated': record,
                    'uncertainty_test': {k: test[k] for k in UNCERTAINTY_METHODS if k in test},
                }
            )
            RESULTS_FILE.write_text(json.dumps(result, indent=2))


def ship(args) -> None:
    """Copy a finished run's checkpoint into the package as the pretrained model of its target, with
    the record beside it (``pretrained/<file>.json``: sha256, data, split, options, how and where it was
    trained, every epoch, val/test metrics). Recalibrate the shipped file afterwards if needed."""
    import shutil

    from aiida_hpcai.models.checkpoint import PRETRAINED_DIR, PRETRAINED_FILES, load_checkpoint, sha256_file

    folder = pathlib.Path(args.run)
    checkpoint = load_checkpoint(folder / 'model.pt')
    metrics = json.loads((folder / 'metrics.json').read_text())
    destination = PRETRAINED_DIR / PRETRAINED_FILES[checkpoint['target']]
    shutil.copyfile(folder / 'model.pt', destination)
    dataset = {
        'name': 'mp_cgcnn',
        'source': 'shared/data/mp_cgcnn/mp_cgcnn.csv.gz (Materials Project snapshot of the CGCNN work, CC-BY 4.0)',
        'filter': f'formation_energy_per_atom >= {MIN_FORMATION_ENERGY:g} eV/atom',
        'n_structures': checkpoint['dataset'].get('n_structures'),
    }
    record = {
        'file': destination.name,
        'sha256': sha256_file(destination),
        'architecture': checkpoint['architecture'],
        'target': checkpoint['target'],
        'units': checkpoint['units'],
        'n_members': len(checkpoint['members']),
        'n_parameters_per_member': metrics['n_parameters'],
        'hyperparameters': checkpoint['hyperparameters'],
        'dataset': dataset,
        'split': {'files': f'{SPLIT_DIR.relative_to(REPO)}/{{train,val,test}}.txt', 'digests': checkpoint['split']},
        'metrics': checkpoint['metrics'],
        'sigma_scale': checkpoint['sigma_scale'],
        'normalization': checkpoint['normalization'],
        'training': {
            'device': args.training_device,
            'seconds_all_members': metrics.get('training_seconds'),
            # each member's whole line: the runs it went on from (train --init) included
            'seconds_per_member': _seconds_per_member(folder),
            'epochs_per_member': [len(h) for h in metrics['history']],
            'command': args.trained_with,
        },
        'history': metrics['history'],
    }
    destination.with_suffix('.json').write_text(json.dumps(record, indent=2))
    print(f'shipped {folder / "model.pt"} as {destination} (sha256 {record["sha256"]})')


# -- report ----------------------------------------------------------------------------------------
def report(args) -> dict:
    """Baselines and the given runs into surrogate_accuracy.json; a target without a ``--model`` run
    keeps the Crysformer entry it already has there (so one target can be updated alone)."""
    from aiida_hpcai.models.checkpoint import PRETRAINED_DIR, PRETRAINED_FILES, sha256_file

    base = json.loads(BASELINES_FILE.read_text())
    previous = json.loads(RESULTS_FILE.read_text())['targets'] if RESULTS_FILE.exists() else {}
    result = {'dataset': base['dataset'], 'split': base['split'], 'machine': base.get('machine'), 'targets': {}}
    models = dict(item.split('=', 1) for item in (args.model or []))
    for target, units in TARGETS.items():
        entry = {'units': units, 'target_mae': TARGET_MAE[target], **base['targets'][target]}
        if target not in models and 'crysformer' in previous.get(target, {}):
            entry['crysformer'] = previous[target]['crysformer']
            shipped = PRETRAINED_DIR / PRETRAINED_FILES[target]
            if entry['crysformer'].get('sha256') == sha256_file(shipped):  # its members' lines, from the shipped file
                entry['crysformer']['training_seconds_per_member'] = _seconds_per_member(shipped)
        if target in models:
            folder = pathlib.Path(models[target])
            metrics = json.loads((folder / 'metrics.json').read_text())
            metadata = json.loads((folder / 'metadata.json').read_text())
            histories = metrics['history']
            test = metrics['test']
            entry['crysformer'] = {
                'sha256': metadata.get('sha256'),
                'config': metadata['hyperparameters']['model'],
                'n_parameters': metrics['n_parameters'],
                'ensemble_size': metadata['n_members'],
                'test_mae': test['mae'],
                'val_mae': metrics['val']['mae'],
                'member_test_mae': test.get('member_mae'),
                'without_lower_bound_test': test.get('without_lower_bound'),  # bounded targets only
                'uncertainty_test': {k: test[k] for k in UNCERTAINTY_METHODS if k in test},
                'sigma_scale': metrics['sigma_scale'],
                'epochs_run': [len(h) for h in histories],
                'best_epoch': [int(np.argmin([row['val_mae'] for row in h])) for h in histories],
                'training_seconds_per_member': _seconds_per_member(folder),
                'training_device': args.training_device,
                'n_structures': metrics['n_structures'],
            }
        if 'crysformer' in entry:
            entry['meets_target'] = bool(entry['crysformer']['test_mae'] <= TARGET_MAE[target])
        result['targets'][target] = entry
    RESULTS_FILE.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2)[:4000])
    _copy_figures(models)
    return result


def _cpu_member_command(args, folder: pathlib.Path, *extra: str) -> list[str]:
    """This script's ``train`` of one ``cpu`` member under ``args``' target, budget, threads and MC samples."""
    return [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        'train',
        '--data',
        args.data,
        '--target',
        args.target,
        '--config',
        'cpu',
        '--member',
        '0',
        '--max-minutes',
        str(args.max_minutes),
        '--threads',
        str(args.threads),
        '--mc-samples',
        str(args.mc_samples),
        '--out',
        str(folder),
        *extra,
    ]


def _run_side_by_side(jobs: dict[str, list[str]], out: pathlib.Path, threads: int) -> None:
    """Start every command at once (``threads`` each, log in ``out/NAME.log``) and wait for all of them."""
    import subprocess

    env = {**os.environ, **thread_environment(threads)}
    logs = {name: open(out / f'{name}.log', 'w') for name in jobs}
    try:
        processes = [
            subprocess.Popen(command, env=env, stdout=logs[name], stderr=subprocess.STDOUT, cwd=REPO)
            for name, command in jobs.items()
        ]
        failed = [process.wait() for process in processes]
    finally:
        for log in logs.values():
            log.close()
    if any(failed):
        raise SystemExit(f'a training failed: see the logs in {out}')


def equal_budget(args) -> dict:
    """Crysformer and ALIGNN trained at the same time, each on ``--threads`` threads for ``--max-minutes``.

    Running both at once gives both the same machine conditions (a fair share of a shared machine); the
    budget of each counts training only (after its graphs are built), as for ``train --max-minutes``.
    """
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
    load_before = os.getloadavg()
    _run_side_by_side({'crysformer': _cpu_member_command(args, out / 'crysformer'), 'alignn': peer}, out, args.threads)
    return collect_equal_budget(args, out, load_before)


def _split_graphs(arrays: StructureArrays, names=('val', 'test')) -> tuple[dict, dict]:
    """The structures and the graphs of each named split (errors raise: val and test have no failures)."""
    from aiida_hpcai.models.graph import graphs_from_arrays

    split = get_split(arrays)
    subsets = {name: arrays.subset(split[name]) for name in names}
    return subsets, {name: graphs_from_arrays(subset)[0] for name, subset in subsets.items()}


def _test_graphs(args) -> tuple[list, np.ndarray]:
    """The test split's graphs and ``args.target`` labels."""
    subsets, graphs = _split_graphs(load_filtered(pathlib.Path(args.data))[0], ('test',))
    return graphs['test'], subsets['test'].labels[args.target]


def _plain_test_mae(checkpoint: pathlib.Path, test: tuple[list, np.ndarray], device: str = 'cpu') -> float:
    """Test MAE of a trained checkpoint's plain prediction (evaluation mode, dropout off)."""
    from aiida_hpcai.models.inference import EnsemblePredictor

    graphs, labels = test
    predictor = EnsemblePredictor.from_files([checkpoint], device)
    mean, _ = predictor.summarize(predictor.sample(graphs, 64, 'ensemble'))
    return float(np.mean(np.abs(mean - labels)))


def collect_equal_budget(args, out: pathlib.Path, load_before=None) -> dict:
    metrics = json.loads((out / 'crysformer' / 'metrics.json').read_text())
    history = metrics['history'][0]
    alignn = json.loads((out / 'alignn.json').read_text())
    result = {
        'description': 'Crysformer cpu (one member) and ALIGNN-pure trained side by side with equal threads '
        'and wall-clock budget on the mp_cgcnn split',
        'target': args.target,
        'units': TARGETS[args.target],
        'budget_minutes': args.max_minutes,
        'threads_each': args.threads,
        'machine': {
            'processor': platform.processor() or platform.machine(),
            'cpus': os.cpu_count(),
            'load_average_before': load_before,
            'load_average_after': os.getloadavg(),
        },
        'crysformer': {
            'test_mae': _plain_test_mae(out / 'crysformer' / 'model.pt', _test_graphs(args)),
            'test_mae_mc_dropout_mean': metrics['test']['mae'],
            'val_mae_mc_dropout_mean': metrics['val']['mae'],
            'n_parameters': metrics['n_parameters'],
            'training_seconds': metrics.get('training_seconds'),
            'epochs_run': len(history),
            'train_loss_last_epoch': history[-1]['train_loss'],
            'note': 'test_mae: the plain prediction (dropout off), as ALIGNN predicts; the training run itself '
            f'reports the mean of {args.mc_samples} MC-dropout samples (a single member has no ensemble)',
        },
        'alignn': {
            key: alignn.get(key)
            for key in (
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
        },
    }
    if args.note:
        result['conditions'] = args.note
    result['ratio_test_mae_crysformer_over_alignn'] = result['crysformer']['test_mae'] / alignn['test_mae']
    # validation MAE after each epoch against the training wall time so far (validation passes included)
    curves = {'crysformer': history, 'alignn': alignn['history']}
    for name, rows in curves.items():
        result[name]['val_curve'] = {
            'minutes': list(np.cumsum([row['seconds'] for row in rows]) / 60.0),
            'val_mae': [row['val_mae'] for row in rows],
        }
    result_file = pathlib.Path(args.result)
    result_file.write_text(json.dumps(result, indent=2))
    _equal_budget_figure(result, result_file.with_suffix('.png'))
    print(json.dumps(result, indent=2))
    return result


def _equal_budget_figure(result: dict, path: pathlib.Path) -> None:
    curves = {
        f'{label}: test {result[name]["test_mae"]:.3f}': result[name]['val_curve']
        for name, label in (('crysformer', 'Crysformer cpu (1 member)'), ('alignn', 'ALIGNN-pure'))
    }
    _validation_curves_figure(
        curves,
        result['units'],
        path,
        title=f'{result["budget_minutes"]:g} min, {result["threads_each"]} thread(s) each',
    )


def _validation_curves_figure(
    curves: dict, units: str, path: pathlib.Path, title: str | None = None, target: float | None = None
) -> None:
    """Validation MAE against training wall time, one line per ``label: {'minutes', 'val_mae'}``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        axes.plot(curve['minutes'], curve['val_mae'], 'o-', markersize=3, label=label)
    if target is not None:
        axes.axhline(target, color='grey', linestyle=':', label='cpu-config target')
    axes.set_yscale('log')
    axes.set_xlabel('training wall time (min)')
    axes.set_ylabel(f'validation MAE ({units})')
    if title:
        axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def summarize_runs(args) -> dict:
    """Collect finished ``train --member K`` runs (each ``NAME=FOLDER``) into one JSON with a
    validation-curve figure beside it: parameters, device and budget, epochs and seconds per epoch,
    the kept epoch's validation MAE and the plain test MAE (dropout off; a one-member run's own
    metrics hold the mean of its MC-dropout samples). Used for runs made elsewhere (a lent GPU)."""
    test = _test_graphs(args)
    runs = {}
    for item in args.run:
        name, folder = item.split('=', 1)
        metrics = json.loads((pathlib.Path(folder) / 'metrics.json').read_text())
        training = json.loads((pathlib.Path(folder) / 'metadata.json').read_text())['hyperparameters']['training']
        if len(metrics['history']) != 1:
            raise SystemExit(f'{folder}: not a one-member run (train --member K)')
        history = metrics['history'][0]
        minutes = np.cumsum([epoch['seconds'] for epoch in history]) / 60.0
        runs[name] = {
            'folder': pathlib.Path(folder).name,
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
            'test_mae': _plain_test_mae(pathlib.Path(folder) / 'model.pt', test, args.device),
            'test_mae_mc_dropout_mean': metrics['test']['mae'],
            'mc_samples': training['mc_samples'],
            'val_curve': {'minutes': minutes.round(3).tolist(), 'val_mae': [epoch['val_mae'] for epoch in history]},
        }
    result = {'target': args.target, 'units': TARGETS[args.target], 'conditions': args.note, 'runs': runs}
    output = pathlib.Path(args.result)
    output.write_text(json.dumps(result, indent=2))
    _validation_curves_figure(
        {f'{name}: test {run["test_mae"]:.3f}': run['val_curve'] for name, run in runs.items()},
        result['units'],
        output.with_suffix('.png'),
        target=TARGET_MAE.get(args.target),
    )
    print(
        json.dumps(
            {
                name: {k: run[k] for k in ('epochs', 'median_epoch_seconds', 'best_val_mae', 'test_mae')}
                for name, run in runs.items()
            },
            indent=1,
        )
    )
    return result


def size_curve(args) -> dict:
    """One ``cpu`` member per training fraction, trained at the same time (``--threads`` each, same budget).

    ``--reuse FRACTION=FOLDER`` adds a finished ``train`` run made with the same settings (for instance
    the Crysformer half of ``equal-budget``) instead of training that fraction again.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {float(fraction): pathlib.Path(folder) for fraction, folder in (item.split('=') for item in args.reuse)}
    jobs = {}
    for fraction in args.fractions:
        if fraction not in runs:
            runs[fraction] = out / f'fraction_{fraction:g}'
            jobs[f'fraction_{fraction:g}'] = _cpu_member_command(
                args, runs[fraction], '--train-fraction', str(fraction), '--no-progress'
            )
    _run_side_by_side(jobs, out, args.threads)
    points = []
    for fraction in sorted(runs):
        metrics = json.loads((runs[fraction] / 'metrics.json').read_text())
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
        'machine': {'cpus': os.cpu_count(), 'load_average_after': os.getloadavg()},
        'points': points,
    }
    SIZE_CURVE_FILE.write_text(json.dumps(result, indent=2))
    figure, axes = plt.subplots(figsize=(4.5, 3.5))
    axes.loglog([p['n_train'] for p in points], [p['test_mae'] for p in points], 'o-', label='Crysformer cpu')
    axes.set_xlabel('training structures')
    axes.set_ylabel(f'test MAE ({TARGETS[args.target]})')
    axes.set_title(f'{args.max_minutes:g} min, {args.threads} thread(s) per run')
    figure.tight_layout()
    figure.savefig(SIZE_CURVE_FILE.with_suffix('.png'), dpi=120)
    print(json.dumps(result, indent=2))
    return result


def thresholds(args) -> dict:
    """Confident fraction and MAE of the confident and the other structures of the val and test splits,
    for the shipped model of each target and several sigma thresholds (``sigma <= threshold``, calibrated
    sigma of ``args.method``, as ``hpcai.surrogate`` decides)."""
    import torch

    from aiida_hpcai.models.checkpoint import pretrained_path
    from aiida_hpcai.models.inference import EnsemblePredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # MC dropout samples at random
    result = {'method': args.method, 'rule': 'confident when sigma <= threshold', 'targets': {}}
    subsets, graphs = _split_graphs(load_filtered(pathlib.Path(args.data))[0])  # one set for both targets
    for target, values in (('formation_energy_per_atom', args.fe_thresholds), ('band_gap', args.bg_thresholds)):
        path = pretrained_path(target)
        predictor = EnsemblePredictor.from_files([path])
        entry = {'model': str(path.relative_to(REPO)), 'units': TARGETS[target], 'splits': {}}
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
    THRESHOLDS_FILE.write_text(json.dumps(result, indent=2))
    return result


def _copy_figures(models: dict) -> None:
    """Each reported run's test parity plot and learning curves, as surrogate_{parity,learning_curve}_TARGET.png."""
    import shutil

    for target, folder in models.items():
        for figure in ('parity', 'learning_curve'):
            source = pathlib.Path(folder) / f'{figure}.png'
            if source.exists():
                shutil.copyfile(source, RESULTS_DIR / f'surrogate_{figure}_{target}.png')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    for name in ('baselines', 'export-npz', 'train', 'merge', 'all'):
        command = sub.add_parser(name)
        command.add_argument('--data', default=str(default_source()), help='mp_cgcnn.csv.gz or an exported npz')
        if name == 'export-npz':
            command.add_argument('output')
        if name in ('train', 'merge', 'all'):
            command.add_argument('--device', default='cpu')
            command.add_argument('--mc-samples', type=int, default=10)
        if name in ('train', 'merge'):
            command.add_argument('--target', choices=sorted(TARGETS), required=True)
            command.add_argument('--out', required=True)
        if name == 'merge':
            command.add_argument('--members', nargs='+', required=True, help=MEMBERS_HELP)
        if name in ('train', 'all'):
            command.add_argument('--config', default='cpu', help='preset name or JSON dict')
            command.add_argument('--member', type=int, default=None, help='train only member K (seed + K)')
            command.add_argument('--ensemble-size', type=int, default=3)
            command.add_argument('--epochs', type=int, default=100)
            command.add_argument('--batch-size', type=int, default=64)
            command.add_argument('--learning-rate', type=float, default=1e-3)
            command.add_argument('--patience', type=int, default=20)
            command.add_argument('--max-minutes', type=float, default=None)
            command.add_argument('--seed', type=int, default=0)
            command.add_argument('--threads', type=int, default=0)
            command.add_argument('--train-fraction', type=float, default=1.0)
            command.add_argument('--no-element-reference', action='store_true')
            command.add_argument('--no-progress', action='store_true')
            command.add_argument('--graph-workers', type=int, default=0)
        if name == 'train':
            command.add_argument(
                '--init',
                default=None,
                metavar='PATH#K',
                help='start from one finished member (a train folder or shipped .pt, #K) and train it further',
            )
    command = sub.add_parser('equal-budget')
    command.add_argument('--data', default=str(default_source()))
    command.add_argument('--peer-python', required=True, help='python of the peers venv (benchmarks/peers/README.md)')
    command.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    command.add_argument('--max-minutes', type=float, default=20.0)
    command.add_argument('--threads', type=int, default=1)
    command.add_argument('--mc-samples', type=int, default=2)
    command.add_argument('--out', required=True)
    command.add_argument('--collect-only', action='store_true', help='only summarise the runs already in --out')
    command.add_argument('--result', default=str(EQUAL_BUDGET_FILE), help='where the JSON (and the .png beside it) go')
    command.add_argument(
        '--note',
        default=None,
        help='how the runs were made, recorded as "conditions" (for --collect-only on runs not made side by side)',
    )
    command = sub.add_parser('size-curve')
    command.add_argument('--data', default=str(default_source()))
    command.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    command.add_argument('--fractions', type=float, nargs='+', default=[0.1, 0.3, 1.0])
    command.add_argument('--reuse', action='append', default=[], help='FRACTION=FOLDER of a finished train run')
    command.add_argument('--max-minutes', type=float, default=20.0)
    command.add_argument('--threads', type=int, default=1)
    command.add_argument('--mc-samples', type=int, default=2)
    command.add_argument('--out', required=True)
    command = sub.add_parser('recalibrate')
    command.add_argument('--data', default=str(default_source()))
    command.add_argument('--checkpoint', required=True)
    command.add_argument('--output', default=None, help='where to save (default: over --checkpoint)')
    command.add_argument('--methods', nargs='+', choices=UNCERTAINTY_METHODS, default=list(UNCERTAINTY_METHODS))
    command.add_argument('--device', default='cpu')
    command.add_argument('--batch-size', type=int, default=64)
    command.add_argument('--threads', type=int, default=0)
    command.add_argument('--seed', type=int, default=0)
    command.add_argument('--mc-samples', type=int, default=None, help="MC-dropout samples (default: the checkpoint's)")
    command = sub.add_parser('ship')
    command.add_argument('--run', required=True, help='a finished train/merge folder (model.pt, metrics.json)')
    command.add_argument('--training-device', required=True, help='where and how it was trained (recorded)')
    command.add_argument('--trained-with', required=True, help='the command that trained it (recorded)')
    command = sub.add_parser('thresholds')
    command.add_argument('--data', default=str(default_source()))
    command.add_argument('--method', choices=UNCERTAINTY_METHODS, default='ensemble')
    command.add_argument('--fe-thresholds', type=float, nargs='+', default=[0.03, 0.06, 0.09, 0.12, 0.2, 0.3])
    command.add_argument('--bg-thresholds', type=float, nargs='+', default=[0.1, 0.2, 0.3, 0.4, 0.6, 1.0])
    command.add_argument('--threads', type=int, default=0)
    command = sub.add_parser('pools')
    command.add_argument('--members', nargs='+', required=True, help=MEMBERS_HELP)
    command.add_argument('--data', default=str(default_source()))
    command.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    command.add_argument('--threads', type=int, default=0)
    command.add_argument('--result', required=True, help='the JSON to write')
    command.add_argument('--min-members', type=int, default=3, help='the fewest members of the chosen pool')
    command = sub.add_parser('summarize')
    command.add_argument('--run', action='append', required=True, help='NAME=FOLDER of a finished train run')
    command.add_argument('--data', default=str(default_source()))
    command.add_argument('--device', default='cpu', help='where the test predictions run')
    command.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    command.add_argument('--note', required=True, help='where and how the runs were made (recorded as "conditions")')
    command.add_argument('--result', required=True, help='the JSON to write (the .png goes beside it)')
    command = sub.add_parser('report')
    command.add_argument('--model', action='append', help='TARGET=FOLDER with model.pt, metrics.json, metadata.json')
    command.add_argument('--training-device', default=None, help='where the models were trained (recorded)')
    args = parser.parse_args(argv)

    if args.command == 'thresholds':
        thresholds(args)
        return
    if args.command == 'report':
        args.model_file = {}
        report(args)
        return
    if args.command == 'equal-budget':
        if args.collect_only:
            collect_equal_budget(args, pathlib.Path(args.out))
        else:
            equal_budget(args)
        return
    if args.command == 'size-curve':
        size_curve(args)
        return
    if args.command == 'ship':
        ship(args)
        return
    if args.command == 'summarize':
        summarize_runs(args)
        return
    if args.command == 'pools':
        pools(args)
        return
    if args.command == 'recalibrate':
        recalibrate(args)
        return
    if args.command == 'export-npz':
        arrays, _ = load_filtered(pathlib.Path(args.data))
        write_npz(arrays, args.output)
        return
    if args.command == 'train':
        train(args)
        return
    if args.command == 'merge':
        merge(args)
        return
    arrays, info = load_filtered(pathlib.Path(args.data))
    split = get_split(arrays)
    payload = {
        'dataset': info,
        'split': {name: int(len(idx)) for name, idx in split.items()},
        'machine': {'processor': platform.processor() or platform.machine(), 'cpus': os.cpu_count()},
        'targets': baselines(arrays, split),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    BASELINES_FILE.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))
    if args.command == 'all':
        runs = REPO / 'benchmarks' / 'results' / 'tmp'
        models = []
        for target in TARGETS:
            args.target, args.out, args.member, args.init = target, str(runs / target), None, None
            train(args)
            models.append(f'{target}={runs / target}')
        report(argparse.Namespace(model=models, training_device=args.device, model_file={}))


if __name__ == '__main__':
    main()
