"""The release tool: how the shipped pretrained models are made (``python -m aiida_hpcai.models.release``).

On the mp_cgcnn set of ``aiida_hpcai.models.evaluation`` (``--data``: ``mp_cgcnn.csv.gz`` or an npz
written by ``export-npz``; ``--split-dir``: the committed id lists)::

    export-npz OUT   the filtered dataset as one structure-set npz (to carry to a GPU machine)
    train            train one ensemble, or one member with --member K (seed + K), for one target;
                     --init PATH#K starts from one finished member and trains it on (a warm restart)
    merge            pool members of finished runs (same target, split and data) into one ensemble,
                     sigma scales fitted on the validation split
    pools            val and test MAE of every pool of the given members (plain prediction), ranked by
                     val, and the pool to merge (best on val of --min-members or more, one state of each
                     member) -> --result JSON
    ship             save a finished run into the package (``--destination``) as its target's pretrained
                     model, with the record beside it (``<file>.json``)
    recalibrate      refit a checkpoint's sigma scales on the validation split and rewrite its
                     uncertainty metrics, without retraining
    train-equicsp    train one EquiCSP generator on a CSP set (--dataset perov_5, carbon_24 or mp20:
                     the <= 20-atom part of the mp_cgcnn split above), resumable in --out
    discriminator-data  sample an EquiCSP generator (--generator) for the compositions of one split of a CSP
                     set and label each sample by StructureMatcher against its reference (label `match`):
                     the structure set the match discriminator (architecture `discriminator`) trains on

What produced the shipped models (their ``.json`` records give each member's options and line)::

    python -m aiida_hpcai.models.release train --target band_gap --config cpu --member 0 --max-minutes 100 \\
        --threads 1 --mc-samples 2 --out runs/bg_m0                            # and --member 1, 2
    python -m aiida_hpcai.models.release merge --target band_gap --members runs/bg_m0 runs/bg_m1 runs/bg_m2 \\
        --mc-samples 10 --out runs/bg
    python -m aiida_hpcai.models.release ship --run runs/bg --training-device "..." --trained-with "..."

The records name only what a user can reproduce: the dataset, the split's files and digests, the
commands, the commit of the tree that shipped; a member a run went on from is named by its run
folder (``--out``) or, for a file of this checkout, by ``path@commit``, never by a path of the
training machine. Pure: no aiida import.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np

from .contract import METRICS_FILE, MODEL_FILE
from .discriminator import ARCHITECTURE as DISCRIMINATOR_ARCHITECTURE
from .discriminator import RELIABILITY_FIGURE
from .equicsp.training import ARCHITECTURE as GENERATOR_ARCHITECTURE
from .equicsp.training import require_generator
from .evaluation import (
    CSP_DATASETS,
    MIN_FORMATION_ENERGY,
    REPO,
    SPLIT_DIR,
    TARGETS,
    csp_dataset,
    default_source,
    get_split,
    git_commit,
    load_filtered,
    run_record,
    split_graphs,
)
from .uncertainty import UNCERTAINTY_METHODS

MEMBERS_HELP = 'train/merge folders or shipped .pt files, each optionally #K,... to take only members K'
DATASET_SOURCE = 'shared/data/mp_cgcnn/mp_cgcnn.csv.gz (Materials Project snapshot of the CGCNN work, CC-BY 4.0)'


# -- names a user can reproduce --------------------------------------------------------------------
def portable_path(path: str | os.PathLike) -> str:
    """A path as a record names it: relative to the checkout when inside it, else its last component."""
    path = pathlib.Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _tracked_unchanged(relative: str) -> bool:
    """Whether git tracks this file of the checkout and it equals HEAD's."""
    try:
        subprocess.run(['git', 'ls-files', '--error-unmatch', relative], cwd=REPO, capture_output=True, check=True)
        return subprocess.run(['git', 'diff', '--quiet', 'HEAD', '--', relative], cwd=REPO).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return False


def portable_member(spec: str) -> str:
    """How a record names a member ``PATH#K``: a file git tracks unchanged in this checkout as
    ``path@commit#K``; another path inside the checkout (a run folder such as ``runs/fe_m0``) relative
    to it; a relative path as given (the ``--out`` of the command that made it); an absolute path
    elsewhere (a folder of the training machine) by its last component. Names already holding a
    commit are kept."""
    path, mark, picked = spec.partition('#')
    if '@' in path:
        return spec
    resolved = pathlib.Path(path).resolve()
    if resolved.is_relative_to(REPO):
        relative = str(resolved.relative_to(REPO))
        if _tracked_unchanged(relative):
            relative = f'{relative}@{git_commit()}'
        return f'{relative}{mark}{picked}'
    return f'{path if not pathlib.Path(path).is_absolute() else resolved.name}{mark}{picked}'


def portable_record(value):
    """``value`` (a training record, any nesting) with every ``initialized_from.member`` portable."""
    if isinstance(value, list):
        return [portable_record(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: portable_record(item) for key, item in value.items()}
    start = result.get('initialized_from')
    if isinstance(start, dict) and 'member' in start:
        result['initialized_from'] = {**start, 'member': portable_member(start['member'])}
    return result


# -- members and their lines -----------------------------------------------------------------------
def load_members(spec: str) -> dict:
    """Members of a trained model, named ``PATH`` or ``PATH#K,...`` (only members K): PATH is a train or
    merge folder (``model.pt`` and ``metrics.json``) or a checkpoint file with its record beside it
    (``X.pt`` and ``X.json``, as ``ship`` writes them), so a shipped member can join a new pool. Returns
    the checkpoint, the chosen member indices and states, their epoch histories and training
    options, and each one's line (``lineage``)."""
    from .checkpoint import load_checkpoint

    path, _, picked = spec.partition('#')
    path = pathlib.Path(path)
    if path.is_dir():
        checkpoint = load_checkpoint(path / MODEL_FILE)
        record = json.loads((path / METRICS_FILE).read_text())
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
        {**recipe, 'initialized_from': started_from(recipe)} if recipe.get('initialized_from') else recipe
        for recipe in recipes
    ]
    return {
        'checkpoint': checkpoint,
        'indices': indices,
        'states': [checkpoint['members'][k] for k in indices],
        'histories': [record['history'][k] for k in indices],
        'training': [{key: value for key, value in recipes[k].items() if key != 'members'} for k in indices],
        'lineages': [lineage(record['history'][k], recipes[k]) for k in indices],
    }


def started_from(recipe: dict) -> dict | None:
    """The record of the member a run went on from (``train --init``), with that member's line
    (``root``, ``seconds``), or None for a run from scratch. Records written before lines were stored
    are completed by following the files they name (``seconds`` None where those are gone), so a
    pool merged from them carries its lines wherever it is copied."""
    from .checkpoint import CheckpointError

    start = recipe.get('initialized_from')
    if not start or 'root' in start:
        return start
    try:
        line = load_members(start['member'])['lineages'][0]
    except (CheckpointError, FileNotFoundError):  # the checkpoint or the record beside it is gone
        line = {'root': f'unknown (started from {start["member"]}, no longer there)', 'seconds': None}
    return {**start, **line}


def lineage(history: list[dict], recipe: dict) -> dict:
    """One member's line: ``root``, a name of the member trained from scratch that it goes back to
    through its warm restarts (``train --init``), the same wherever its files were copied (a digest of
    that member's first epoch), and ``seconds``, the training seconds of the whole line (its epochs and
    those of every run it went on from). ``recipe``'s start record is a completed one (``started_from``)."""
    own = float(sum(row['seconds'] for row in history))
    start = recipe.get('initialized_from')
    if not start:
        return {
            'root': hashlib.sha256(json.dumps(history[0], sort_keys=True).encode()).hexdigest()[:12],
            'seconds': own,
        }
    return {'root': start['root'], 'seconds': None if start['seconds'] is None else own + start['seconds']}


def seconds_per_member(path) -> list[float | None]:
    """The training seconds of each member's whole line (``lineage``) of a run folder or shipped file."""
    return [line['seconds'] for line in load_members(str(path))['lineages']]


def warm_start(spec: str) -> tuple[dict, dict]:
    """One finished member (``PATH#K``) to train on (``train --init``): the parent checkpoint (its
    weights, normalisation and element reference) and the record of where the new run starts: the
    member (``portable_member``), its epochs and recipe, and its line (``lineage``)."""
    source = load_members(spec)
    if len(source['states']) != 1:
        raise SystemExit(f'--init names {len(source["states"])} members; name one, as PATH#K')
    parent = {**source['checkpoint'], 'members': source['states']}
    record = {
        'member': portable_member(spec),
        'epochs': len(source['histories'][0]),
        'training': {key: value for key, value in source['training'][0].items() if key != 'initialized_from'},
        **source['lineages'][0],
    }
    return parent, record


def generator_warm_start(path: str) -> tuple[dict, dict]:
    """An EquiCSP checkpoint to train on (``train-equicsp --init``) and the record of where the new run starts:
    the file (``portable_member``), its digest and, from the record shipped beside it (``<file>.json``), the
    epochs, seconds and command that made it."""
    from .checkpoint import CheckpointError, load_checkpoint, sha256_file

    try:
        parent = load_checkpoint(path)
    except (CheckpointError, OSError) as exc:
        raise SystemExit(f'--init: {exc}') from exc
    try:
        require_generator(parent)
    except ValueError as exc:
        raise SystemExit(f'--init: {path}: {exc}') from exc
    record = {'member': portable_member(f'{path}#0'), 'sha256': sha256_file(path)}
    shipped = pathlib.Path(path).with_suffix('.json')
    if shipped.exists():
        training = json.loads(shipped.read_text()).get('training', {})
        record.update({key: training.get(key) for key in ('epochs', 'seconds', 'command', 'device')})
    return parent, record


def _sum_or_none(values) -> float | None:
    values = list(values)
    return None if any(value is None for value in values) else float(sum(values))


def _same_normalization(one: dict, other: dict) -> bool:
    """Each run recomputes the target normalisation: equal up to the order of a float sum."""
    return one.keys() == other.keys() and all(np.isclose(one[key], other[key], rtol=1e-12, atol=0.0) for key in one)


# -- sub-commands ----------------------------------------------------------------------------------
def train(args) -> dict:
    import torch

    from .training import train_ensemble

    if args.threads:
        torch.set_num_threads(args.threads)
    arrays, info = load_filtered(args.data)
    split = get_split(arrays, args.split_dir)
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
    dataset = {**info, 'split_dir': portable_path(args.split_dir), 'train_fraction': args.train_fraction}
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
    summary = {
        'target': args.target,
        'test_mae': metrics['test'].get('mae'),
        'val_mae': metrics['val']['mae'],
        'seconds': time.time() - started,
    }
    print(json.dumps(summary))
    return summary


def train_equicsp(args) -> dict:
    """Train one EquiCSP generator on a CSP benchmark set (``--dataset``), resumable in ``--out``."""
    import torch

    from .equicsp.training import train_equicsp as train_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    parent, start = generator_warm_start(args.init) if args.init else (None, None)  # a bad file fails at once
    arrays, split, info = csp_dataset(args.dataset, args.data_dir)
    if start:
        info['initialized_from'] = start
    model_config = json.loads(args.config) if args.config.startswith('{') else args.config
    training = {
        'epochs': args.epochs,
        'batch_size': args.batch_size,
        'learning_rate': args.learning_rate,
        'seed': args.seed,
        'device': args.device,
        'max_minutes': args.max_minutes,
        'patience': args.patience,
        'modes': args.modes,
        'progress': not args.no_progress,
    }
    started = time.time()
    try:
        _, metrics = train_generator(
            arrays,
            {'train': split['train'], 'val': split['val']},
            args.out,
            model_config=model_config,
            training=training,
            dataset=info,
            parent=parent,
        )
    except ValueError as exc:  # a parent that cannot go on with this set
        raise SystemExit(f'train-equicsp: {exc}') from exc
    summary = {
        'dataset': args.dataset,
        'val_loss': metrics['val']['loss'],
        'best_epoch': metrics['best_epoch'],
        'epochs_run': len(metrics['history'][0]),
        'seconds': time.time() - started,
    }
    print(json.dumps(summary))
    return summary


def discriminator_data(args) -> dict:
    """EquiCSP samples for the compositions of one split of a CSP set, labelled by StructureMatcher against their
    references (:func:`aiida_hpcai.models.discriminator.sample_and_label`): ``--out`` (a structure-set npz with the
    label ``match``) and its record ``<out>.json``."""
    import torch

    from .checkpoint import load_checkpoint, sha256_file
    from .discriminator import sample_and_label
    from .equicsp.generation import EquiCSPSampler
    from .structure_io import write_npz

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    arrays, split, info = csp_dataset(args.dataset, args.data_dir)
    chosen = np.asarray(split[args.split], dtype=np.int64)
    if args.exclude:  # references sampled before (another --seed): their groups never appear twice
        from .discriminator import GROUP_SEPARATOR
        from .structure_io import read_npz

        done = {str(i).split(GROUP_SEPARATOR)[0] for path in args.exclude for i in read_npz(path).ids}
        chosen = np.array([i for i in chosen if str(arrays.ids[i]) not in done], dtype=np.int64)
    if args.limit and args.limit < len(chosen):
        chosen = np.sort(np.random.default_rng(args.seed).choice(chosen, args.limit, replace=False))
    sampler = EquiCSPSampler(load_checkpoint(args.generator), args.device)
    started = time.time()
    samples, stats = sample_and_label(
        sampler,
        arrays.subset(chosen),
        args.samples_per_composition,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(samples, out)
    record = {
        'dataset': {
            **info,
            'split': args.split,
            'n_chosen': int(len(chosen)),
            'limit': args.limit,
            'excluded': [portable_path(path) for path in args.exclude or []],
        },
        'generator': {'file': pathlib.Path(args.generator).name, 'sha256': sha256_file(args.generator)},
        'steps': args.steps or sampler.config.timesteps,
        'seed': args.seed,
        **stats,
        'seconds': time.time() - started,
        'run': run_record(args.invocation, load_before, device=args.device, threads=args.threads),
    }
    out.with_name(out.name + '.json').write_text(json.dumps(record, indent=2))
    print(json.dumps({key: record[key] for key in ('n_references', 'n_samples', 'n_written', 'match_rate', 'seconds')}))
    return record


def merge(args) -> dict:
    """Pool members of finished runs (same target, split and data) into one ensemble checkpoint."""
    from .checkpoint import model_config_of
    from .training import TrainingConfig, finalize_ensemble, prepare_splits

    arrays, info = load_filtered(args.data)
    split = get_split(arrays, args.split_dir)
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
        # each member's start is in its recipe
        {**{key: value for key, value in first['dataset'].items() if key != 'initialized_from'}, **info},
        training_seconds=_sum_or_none(line['seconds'] for source in sources for line in source['lineages']),
        member_training=portable_record(recipes) if mixed else None,
    )
    summary = {
        'target': args.target,
        'test_mae': metrics['test']['mae'],
        'member_mae': metrics['test'].get('member_mae'),
    }
    print(json.dumps(summary))
    return summary


def pools(args) -> dict:
    """Plain (dropout off) val and test predictions of every given member, and the MAE of the mean of
    every pool of one or more of them, ranked by validation MAE, with the test MAE beside it for the
    record -> ``args.result``. The pool to ``merge`` (``chosen``) is the best on val of those with at
    least ``--min-members`` members, at most one state of each member: a member and a state it was
    trained on from (``train --init``) are one network at two times, not two members of a deep
    ensemble, and two members give no usable spread."""
    import torch

    from .inference import EnsemblePredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    subsets, graphs = split_graphs(load_filtered(args.data)[0], split_dir=args.split_dir)
    names, roots, predictions = [], [], {'val': [], 'test': []}
    for spec in args.members:
        source = load_members(spec)
        if source['checkpoint']['target'] != args.target:
            raise SystemExit(f'{spec} predicts {source["checkpoint"]["target"]}, not {args.target}')
        predictor = EnsemblePredictor([{**source['checkpoint'], 'members': source['states']}])
        for name in ('val', 'test'):
            predictions[name].extend(predictor.sample(graphs[name], 64, 'ensemble'))  # one row per member
        names.extend(f'{portable_member(spec.partition("#")[0])}#{k}' for k in source['indices'])
        roots.extend(line['root'] for line in source['lineages'])
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
        'run': run_record(args.invocation),
    }
    pathlib.Path(args.result).write_text(json.dumps(result, indent=2))
    for row in rows[:10]:
        print(json.dumps(row))
    print('chosen:', json.dumps(result['chosen']))
    return result


def recalibrate(args) -> dict:
    """Refit the sigma scales of a trained checkpoint on its validation split with the current rule of
    ``aiida_hpcai.models.uncertainty.fit_sigma_scale``, recompute the val/test uncertainty metrics of the
    refitted methods, and save the checkpoint again (and the ``.json`` beside it, if there is one)."""
    import torch

    from .checkpoint import id_digest, load_checkpoint, save_checkpoint
    from .graph import graphs_from_arrays
    from .inference import EnsemblePredictor
    from .training import calibrate_method
    from .uncertainty import fit_sigma_scale

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # MC dropout samples at random
    path = pathlib.Path(args.checkpoint)
    checkpoint = load_checkpoint(path)
    arrays, _ = load_filtered(args.data)
    split = get_split(arrays, args.split_dir)
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
                'recalibrated': {**record, 'commit': git_commit(), 'command': args.invocation},
            }
        )
        output.with_suffix('.json').write_text(json.dumps(payload, indent=2))
    return record


def _require_shipped_name(key: str) -> None:
    from .checkpoint import PRETRAINED_FILES

    if key not in PRETRAINED_FILES:
        raise SystemExit(f'no shipped file is named for {key!r}; known: {", ".join(sorted(PRETRAINED_FILES))}')


def _record_head(destination: pathlib.Path, sha: str, checkpoint: dict, metrics: dict) -> dict:
    """What every shipped record begins with: the file, its digest and what the model is."""
    return {
        'file': destination.name,
        'sha256': sha,
        'architecture': checkpoint['architecture'],
        'target': checkpoint.get('target'),
        'units': checkpoint.get('units'),
        'n_members': len(checkpoint['members']),
        'n_parameters_per_member': metrics['n_parameters'],
        'hyperparameters': checkpoint['hyperparameters'],
    }


def _write_record(record: dict, folder: pathlib.Path, destination: pathlib.Path) -> dict:
    destination.with_suffix('.json').write_text(json.dumps(record, indent=2))
    print(f'shipped {folder / MODEL_FILE} as {destination} (sha256 {record["sha256"]})')
    return record


def ship(args) -> dict:
    """Save a finished run's checkpoint into ``args.destination`` (the package's ``pretrained/`` by
    default) as the pretrained model of its target, with the record beside it (``<file>.json``:
    sha256, data, split files and digests, options, how, where and by which command it was trained,
    the commit that shipped it, every epoch, val/test metrics). The checkpoint's training record is
    made portable (``portable_record``) on the way, so neither file names a path of the training
    machine. Recalibrate the shipped file afterwards if needed."""
    from .checkpoint import PRETRAINED_DIR, PRETRAINED_FILES, load_checkpoint, save_checkpoint

    folder = pathlib.Path(args.run)
    checkpoint = load_checkpoint(folder / MODEL_FILE)
    checkpoint['hyperparameters'] = portable_record(checkpoint['hyperparameters'])
    metrics = json.loads((folder / METRICS_FILE).read_text())
    if checkpoint['architecture'] == GENERATOR_ARCHITECTURE:
        return _ship_generator(args, folder, checkpoint, metrics)
    if checkpoint['architecture'] == DISCRIMINATOR_ARCHITECTURE:
        return _ship_discriminator(args, folder, checkpoint, metrics)
    destination = pathlib.Path(args.destination or PRETRAINED_DIR) / PRETRAINED_FILES[checkpoint['target']]
    sha = save_checkpoint(checkpoint, destination)
    split_dir = checkpoint['dataset'].get('split_dir', portable_path(SPLIT_DIR))
    record = {
        **_record_head(destination, sha, checkpoint, metrics),
        'dataset': {
            'name': 'mp_cgcnn',
            'source': DATASET_SOURCE,
            'filter': f'formation_energy_per_atom >= {MIN_FORMATION_ENERGY:g} eV/atom',
            'n_structures': checkpoint['dataset'].get('n_structures'),
        },
        'split': {'files': f'{split_dir}/{{train,val,test}}.txt', 'digests': checkpoint['split']},
        'metrics': checkpoint['metrics'],
        'sigma_scale': checkpoint['sigma_scale'],
        'normalization': checkpoint['normalization'],
        'training': {
            'device': args.training_device,
            'seconds_all_members': metrics.get('training_seconds'),
            # each member's whole line: the runs it went on from (train --init) included
            'seconds_per_member': seconds_per_member(folder),
            'epochs_per_member': [len(h) for h in metrics['history']],
            'command': args.trained_with,
        },
        'shipped': {'commit': git_commit(), 'command': args.invocation},
        'history': metrics['history'],
    }
    return _write_record(record, folder, destination)


def _ship_generator(args, folder: pathlib.Path, checkpoint: dict, metrics: dict) -> dict:
    """``ship`` of an EquiCSP generator: shipped under the key ``equicsp_<dataset>`` (``PRETRAINED_FILES``),
    with a record of its data, split digests, options, training line and commands."""
    from .checkpoint import PRETRAINED_DIR, PRETRAINED_FILES, save_checkpoint

    key = f'{GENERATOR_ARCHITECTURE}_{checkpoint["dataset"].get("name")}'
    _require_shipped_name(key)
    destination = pathlib.Path(args.destination or PRETRAINED_DIR) / PRETRAINED_FILES[key]
    sha = save_checkpoint(checkpoint, destination)
    history = metrics['history'][0]
    record = {
        **_record_head(destination, sha, checkpoint, metrics),
        'target': None,
        'units': None,
        'elements': checkpoint['elements'],
        'max_atoms': checkpoint['max_atoms'],
        'modes': checkpoint['modes'],
        'dataset': portable_record(checkpoint['dataset']),
        'split': {'digests': checkpoint['split']},
        'metrics': checkpoint['metrics'],
        'training': {
            'device': args.training_device,
            'seconds': metrics.get('training_seconds'),
            'epochs': len(history),
            'best_epoch': metrics.get('best_epoch'),
            'command': args.trained_with,
            **_with_parent(
                checkpoint['dataset'].get('initialized_from'), metrics.get('training_seconds'), len(history)
            ),
        },
        'shipped': {'commit': git_commit(), 'command': args.invocation},
        'history': history,
    }
    return _write_record(record, folder, destination)


def _with_parent(start: dict | None, seconds: float | None, epochs: int) -> dict:
    """A warm-started generator's training time and epochs counted from scratch (its parent's added), where the
    parent's record gave them (``dataset.initialized_from``)."""
    if not start or start.get('seconds') is None or seconds is None:
        return {}
    return {
        'seconds_with_parent': seconds + start['seconds'],
        'epochs_with_parent': epochs + (start.get('epochs') or 0),
    }


def _ship_discriminator(args, folder: pathlib.Path, checkpoint: dict, metrics: dict) -> dict:
    """``ship`` of a match discriminator: shipped under the key ``discriminator_<dataset>`` (``PRETRAINED_FILES``;
    the dataset is the train config's ``dataset_name``), with a record of the samples it trained on (``--data-record``:
    the ``discriminator-data`` record, generator sha256, steps, counts, match rate), its temperature, the metrics
    per split before and after calibration, and every epoch. ``--figures DIR`` copies its reliability diagram and
    learning curve there as ``<key>_reliability.png`` and ``<key>_learning_curve.png`` (named in the record)."""
    import shutil

    from .checkpoint import PRETRAINED_DIR, PRETRAINED_FILES, save_checkpoint
    from .contract import LEARNING_CURVE_FIGURE

    key = f'{DISCRIMINATOR_ARCHITECTURE}_{checkpoint["dataset"].get("name")}'
    _require_shipped_name(key)
    if not args.data_record:
        raise SystemExit('a discriminator ships with the record of its samples: give --data-record (<data>.npz.json)')
    samples = json.loads(pathlib.Path(args.data_record).read_text())
    destination = pathlib.Path(args.destination or PRETRAINED_DIR) / PRETRAINED_FILES[key]
    sha = save_checkpoint(checkpoint, destination)
    figures = {}
    if args.figures:
        for name, figure in (('reliability', RELIABILITY_FIGURE), ('learning_curve', LEARNING_CURVE_FIGURE)):
            target = pathlib.Path(args.figures) / f'{key}_{name}.png'
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / figure, target)
            figures[name] = portable_path(target)
    record = {
        **_record_head(destination, sha, checkpoint, metrics),
        'temperature': checkpoint['temperature'],
        'samples': samples,
        'dataset': checkpoint['dataset'],
        'split': {
            'by': 'composition group (the id before #)',
            'n': metrics['n_structures'],
            'digests': checkpoint['split'],
        },
        'metrics': checkpoint['metrics'],
        'calibration_bins': metrics.get('calibration_bins'),
        'reliability': metrics.get('reliability'),
        'figures': figures,
        'training': {
            'device': args.training_device,
            'seconds': metrics.get('training_seconds'),
            'epochs_per_member': [len(h) for h in metrics['history']],
            'command': args.trained_with,
        },
        'shipped': {'commit': git_commit(), 'command': args.invocation},
        'history': metrics['history'],
    }
    return _write_record(record, folder, destination)


def export_npz(args) -> None:
    from .structure_io import write_npz

    write_npz(load_filtered(args.data)[0], args.output)


# -- command line ----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m aiida_hpcai.models.release',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', required=True)

    def data_options(command):
        command.add_argument('--data', default=str(default_source()), help='mp_cgcnn.csv.gz or an exported npz')
        command.add_argument('--split-dir', default=str(SPLIT_DIR), help='the id lists {train,val,test}.txt')

    command = sub.add_parser('export-npz')
    data_options(command)
    command.add_argument('output')

    for name in ('train', 'merge'):
        command = sub.add_parser(name)
        data_options(command)
        command.add_argument('--target', choices=sorted(TARGETS), required=True)
        command.add_argument('--out', required=True)
        command.add_argument('--device', default='cpu')
        command.add_argument('--mc-samples', type=int, default=10)
    sub.choices['merge'].add_argument('--members', nargs='+', required=True, help=MEMBERS_HELP)
    command = sub.choices['train']
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
    command.add_argument(
        '--init',
        default=None,
        metavar='PATH#K',
        help='start from one finished member (a train folder or shipped .pt, #K) and train it further',
    )

    command = sub.add_parser('train-equicsp')
    command.add_argument('--dataset', choices=CSP_DATASETS, required=True)
    command.add_argument('--data-dir', default=None, help='the shared data folder (default: $HPCAI_DATA_DIR)')
    command.add_argument('--out', required=True)
    command.add_argument('--config', default='cpu', help='preset name or JSON dict')
    command.add_argument('--modes', choices=('csp', 'abinitio', 'both'), default='both')
    command.add_argument('--epochs', type=int, default=1000)
    command.add_argument('--batch-size', type=int, default=64)
    command.add_argument('--learning-rate', type=float, default=1e-3)
    command.add_argument('--patience', type=int, default=200)
    command.add_argument('--max-minutes', type=float, default=None)
    command.add_argument('--seed', type=int, default=0)
    command.add_argument('--device', default='cpu')
    command.add_argument('--threads', type=int, default=0)
    command.add_argument('--no-progress', action='store_true')
    command.add_argument(
        '--init',
        default=None,
        metavar='PATH',
        help='train on from a finished generator (a model.pt or shipped .pt): its network, elements and lattice '
        'standardisation are kept, the schedule starts afresh',
    )

    command = sub.add_parser('discriminator-data')
    command.add_argument('--generator', required=True, help='an EquiCSP checkpoint (model.pt of train-equicsp)')
    command.add_argument('--dataset', choices=CSP_DATASETS, required=True)
    command.add_argument('--data-dir', default=None, help='the shared data folder (default: $HPCAI_DATA_DIR)')
    command.add_argument('--split', choices=('train', 'val', 'test'), default='train')
    command.add_argument('--limit', type=int, default=None, help='at most this many references (seeded choice)')
    command.add_argument('--samples-per-composition', type=int, default=1, help='samples of each reference')
    command.add_argument('--steps', type=int, default=None, help="sampling steps (default: the generator's)")
    command.add_argument('--batch-size', type=int, default=64)
    command.add_argument('--seed', type=int, default=0)
    command.add_argument('--device', default='cpu')
    command.add_argument('--threads', type=int, default=0)
    command.add_argument('--no-progress', action='store_true')
    command.add_argument('--out', required=True, help='the structure-set npz to write (record: <out>.json)')
    command.add_argument(
        '--exclude', nargs='+', default=None, help='structure-set npz files whose references are not sampled again'
    )

    command = sub.add_parser('pools')
    data_options(command)
    command.add_argument('--members', nargs='+', required=True, help=MEMBERS_HELP)
    command.add_argument('--target', choices=sorted(TARGETS), default='formation_energy_per_atom')
    command.add_argument('--threads', type=int, default=0)
    command.add_argument('--result', required=True, help='the JSON to write')
    command.add_argument('--min-members', type=int, default=3, help='the fewest members of the chosen pool')

    command = sub.add_parser('ship')
    command.add_argument('--run', required=True, help='a finished train/merge folder (model.pt, metrics.json)')
    command.add_argument('--training-device', required=True, help='where and how it was trained (recorded)')
    command.add_argument('--trained-with', required=True, help='the commands that trained it (recorded)')
    command.add_argument('--destination', default=None, help="folder to ship into (default: the package's)")
    command.add_argument('--data-record', default=None, help='a discriminator: the discriminator-data record')
    command.add_argument('--figures', default=None, help="a discriminator: the folder for its figures' copies")

    command = sub.add_parser('recalibrate')
    data_options(command)
    command.add_argument('--checkpoint', required=True)
    command.add_argument('--output', default=None, help='where to save (default: over --checkpoint)')
    command.add_argument('--methods', nargs='+', choices=UNCERTAINTY_METHODS, default=list(UNCERTAINTY_METHODS))
    command.add_argument('--device', default='cpu')
    command.add_argument('--batch-size', type=int, default=64)
    command.add_argument('--threads', type=int, default=0)
    command.add_argument('--seed', type=int, default=0)
    command.add_argument('--mc-samples', type=int, default=None, help="MC-dropout samples (default: the checkpoint's)")
    return parser


COMMANDS = {
    'export-npz': export_npz,
    'train': train,
    'train-equicsp': train_equicsp,
    'discriminator-data': discriminator_data,
    'merge': merge,
    'pools': pools,
    'ship': ship,
    'recalibrate': recalibrate,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.invocation = shlex.join(['python', '-m', 'aiida_hpcai.models.release', *argv])  # recorded
    return COMMANDS[args.command](args)


if __name__ == '__main__':
    main()
