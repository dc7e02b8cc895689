"""Training, fine-tuning and evaluation of Crysformer ensembles, and the ``hpcai-model train`` task.

Recipe: L1 loss on the standardised target (optionally the residual after a per-element ridge
fit on composition fractions, which takes the large, easy, composition-only part out of
formation energies), AdamW, linear warm-up then cosine decay, early stopping on validation MAE
(the best epoch is kept), seeded, with an optional wall-clock budget (``max_minutes``) so that
models can be compared at equal cost. Each ensemble member uses ``seed + member``.

Fine-tuning starts from a parent checkpoint: its architecture, normalisation and element
reference are kept (the network's output space must not move), the learning rate is lower, and
the embedding plus the first ``freeze_blocks`` blocks can be frozen.

The epoch loop and its bookkeeping (schedule, budget, best epoch, history, progress bar, resume state) are
:mod:`aiida_hpcai.models.loop`'s, shared with EquiCSP; this module brings the loss, the validation MAE and
the ensemble around it.

Resuming: after every epoch the state (current member, epoch, step, optimiser, finished
members, histories, the member's budget) is written to ``training_state.pt`` in the output folder;
running again with the same folder continues from there, and a wall-clock budget continues too:
the time the epochs already took counts against it (a cluster job stopped at its wall time and
submitted again ends its schedule where an uninterrupted run would have).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import numpy as np
import torch

from . import plots
from .checkpoint import id_digest, load_verified, make_checkpoint, save_checkpoint
from .contract import (
    INCOMPATIBLE_MODELS,
    INVALID_CONFIG,
    INVALID_SPLIT,
    MISSING_LABEL,
    MODEL_FILE,
    PARENT_KEY,
    PARITY_FIGURE,
    STRUCTURES_FILE,
    TaskError,
)
from .crysformer import Crysformer, CrysformerConfig, count_parameters, resolve_config
from .graph import collate, graphs_from_arrays
from .inference import EnsemblePredictor, element_reference_offsets
from .loop import (
    STATE_FILE,
    Budget,
    load_state,
    run_signature,
    seconds_of,
    seed_everything,
    train_epochs,
    write_run_files,
)
from .structure_io import StructureArrays
from .uncertainty import fit_sigma_scale, uncertainty_metrics

# loss -> (the loss of a batch, the key of its validation metric in the history): 'l1' fits a standardised
# property, 'bce' a 0/1 label with the network's output as the logit (binary cross-entropy)
LOSSES = {
    'l1': (torch.nn.functional.l1_loss, 'val_mae'),
    'bce': (torch.nn.functional.binary_cross_entropy_with_logits, 'val_bce'),
}
DEFAULT_UNITS = {'formation_energy_per_atom': 'eV/atom', 'band_gap': 'eV', 'energy_per_atom': 'eV/atom'}


@dataclasses.dataclass
class TrainingConfig:
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float | None = None  # None: 1e-3, or 1e-4 when fine-tuning
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    patience: int = 20
    seed: int = 0
    device: str = 'cpu'
    max_minutes: float | None = None  # wall-clock budget for the whole ensemble
    ensemble_size: int = 1
    element_reference: bool = True
    ridge_alpha: float = 1e-4
    freeze_blocks: int = 0
    gradient_clip: float = 10.0
    mc_samples: int = 10
    progress: bool = True
    graph_workers: int = 0  # processes that build the neighbour graphs (0: this one)
    # 'l1' (a property: standardised target) or 'bce' (a 0/1 label: the output is a logit; the discriminator)
    loss: str = 'l1'

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f'unknown loss {self.loss!r}; known: {sorted(LOSSES)}')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f'unknown training options: {sorted(unknown)}')
        return cls(**values)


def composition_fractions(numbers_list, size: int = 101) -> np.ndarray:
    out = np.zeros((len(numbers_list), size))
    for row, numbers in enumerate(numbers_list):
        out[row] = np.bincount(np.asarray(numbers, dtype=np.int64), minlength=size)[:size] / max(len(numbers), 1)
    return out


def fit_element_reference(numbers_list, values: np.ndarray, alpha: float = 1e-4) -> dict:
    """Ridge regression of ``values`` on element fractions (no intercept: fractions sum to 1)."""
    fractions = composition_fractions(numbers_list)
    gram = fractions.T @ fractions + alpha * len(values) * np.eye(fractions.shape[1])
    coefficients = np.linalg.solve(gram, fractions.T @ np.asarray(values, dtype=np.float64))
    return {'coefficients': [float(c) for c in coefficients], 'ridge_alpha': alpha}


@dataclasses.dataclass
class PreparedData:
    graphs: list  # CrystalGraph per kept structure
    targets: np.ndarray  # standardised residual targets
    raw: np.ndarray  # targets in physical units
    ids: list[str]


def _prepare(
    arrays: StructureArrays, indices, target: str, reference: dict | None, num_neighbours: int, workers: int = 0
):
    graphs, failures = graphs_from_arrays(
        arrays, indices, num_neighbours=num_neighbours, errors='collect', workers=workers
    )
    keep = [n for n, g in enumerate(graphs) if g is not None]
    graphs = [graphs[n] for n in keep]
    index_kept = np.asarray(indices, dtype=np.int64)[keep]
    raw = arrays.labels[target][index_kept]
    residual = raw - element_reference_offsets([g.numbers for g in graphs], reference)
    return graphs, raw, residual, [str(arrays.ids[i]) for i in index_kept], failures


def _evaluate(model, data: PreparedData, normalization: dict, batch_size: int, device, loss: str = 'l1') -> float:
    """The validation metric of ``loss``: the MAE in physical units (l1), the mean binary cross-entropy (bce)."""
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(data.graphs), batch_size):
            predictions.append(
                model(collate(data.graphs[start : start + batch_size]).to(device)).double().cpu().numpy()
            )
    if loss == 'bce':
        logits, labels = torch.as_tensor(np.concatenate(predictions)), torch.as_tensor(data.targets)
        return float(LOSSES['bce'][0](logits, labels.to(logits.dtype)))
    predicted = np.concatenate(predictions) * normalization['std']
    return float(np.mean(np.abs(predicted - data.targets * normalization['std'])))


def train_member(
    model: Crysformer,
    train: PreparedData,
    val: PreparedData,
    normalization: dict,
    config: TrainingConfig,
    seed: int,
    budget: Budget,
    state_path: pathlib.Path | None = None,
    resume_state: dict | None = None,
    save_extra: dict | None = None,
    label: str = '',
) -> tuple[dict, list]:
    """Train one member; returns (best state_dict, per-epoch history)."""
    device = torch.device(config.device)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    learning_rate = config.learning_rate or 1e-3
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=config.weight_decay)
    targets = torch.as_tensor(train.targets, dtype=torch.float32)
    loss_function, val_key = LOSSES[config.loss]

    def batch_loss(chosen):
        batch = collate([train.graphs[i] for i in chosen]).to(device)
        return loss_function(model(batch), targets[chosen].to(device))

    def validate(model) -> dict:
        return {val_key: _evaluate(model, val, normalization, config.batch_size, device, config.loss)}

    result = train_epochs(
        model,
        optimizer,
        len(train.graphs),
        batch_loss,
        validate,
        val_key,
        config,
        learning_rate,
        seed,
        budget,
        state_path=state_path,
        resume_state=resume_state,
        save_extra=save_extra,
        label=label,
    )
    return result.best_state, result.history


def _seconds_spent(saved: dict | None) -> float:
    """Training time recorded in a saved state: finished members and the current member's epochs."""
    if saved is None:
        return 0.0
    rows = [row for history in saved.get('finished_histories', []) for row in history]
    rows += saved.get('history', []) if 'model' in saved else []
    return seconds_of(rows)


def _freeze(model: Crysformer, count: int) -> None:
    for module in model.blocks_to_freeze(count):
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def train_ensemble(
    arrays: StructureArrays,
    target: str,
    split: dict[str, np.ndarray],
    output_dir,
    model_config: str | dict | CrysformerConfig = 'cpu',
    training: TrainingConfig | dict | None = None,
    units: str | None = None,
    parent: dict | None = None,
    dataset: dict | None = None,
    resume: bool = True,
    finalize=None,
) -> tuple[dict, dict]:
    """Train (or fine-tune from ``parent``) an ensemble; write model.pt, metadata.json,
    metrics.json and the figures into ``output_dir``; return (checkpoint, metrics).

    With the loss ``bce`` the label is 0/1 and the output a logit: no element reference, no standardisation.
    ``finalize`` (default :func:`finalize_ensemble`, same arguments) evaluates the members and writes the files:
    the match discriminator (:mod:`aiida_hpcai.models.discriminator`) passes its own."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = training if isinstance(training, TrainingConfig) else TrainingConfig.from_dict(dict(training or {}))
    if config.loss != 'l1' and finalize is None:
        raise ValueError(f'a Crysformer regressor trains with the loss l1, not {config.loss!r}')
    if parent is not None:
        model_config = CrysformerConfig.from_dict(parent['hyperparameters']['model'])
        if config.learning_rate is None:
            config.learning_rate = 1e-4
        units = units or parent['units']
        if parent['target'] != target:
            raise ValueError(f'parent predicts {parent["target"]!r}, not {target!r}')
    model_config = resolve_config(model_config)
    units = units or DEFAULT_UNITS.get(target, '')
    started = time.monotonic()

    if parent is not None:
        reference = parent.get('element_reference')
        normalization = dict(parent['normalization'])
    elif config.loss == 'bce':
        reference, normalization = None, {'mean': 0.0, 'std': 1.0}
    else:
        train_numbers = [arrays.atoms_of(int(i))[0] for i in split['train']]
        reference = (
            fit_element_reference(train_numbers, arrays.labels[target][split['train']], config.ridge_alpha)
            if config.element_reference
            else None
        )
        normalization = None

    data, normalization, failures = prepare_splits(
        arrays, target, split, reference, normalization, model_config.num_neighbours, config.graph_workers
    )
    if config.progress:
        print(
            f'graphs of {sum(len(d.graphs) for d in data.values())} structures built in '
            f'{time.monotonic() - started:.1f} s',
            flush=True,
        )

    state_path = output_dir / STATE_FILE
    signature = _signature(config, model_config, target, data)
    saved = load_state(state_path, signature, resume)
    members: list[dict] = list(saved['finished_members']) if saved else []
    histories: list[list] = list(saved['finished_histories']) if saved else []
    budget = Budget(config.max_minutes, _seconds_spent(saved))
    for member in range(len(members), config.ensemble_size):
        seed = config.seed + member
        seed_everything(seed)
        model = Crysformer(model_config)
        if parent is not None:
            model.load_state_dict(parent['members'][member % len(parent['members'])])
            _freeze(model, config.freeze_blocks)
        resume_state = saved if saved is not None and saved.get('member') == member and 'model' in saved else None
        if resume_state is not None and config.max_minutes is not None and resume_state.get('member_budget_minutes'):
            member_budget = Budget(resume_state['member_budget_minutes'], seconds_of(resume_state['history']))
        else:
            member_budget = Budget(
                None
                if config.max_minutes is None
                else max(0.0, (budget.deadline - time.monotonic()) / 60.0) / (config.ensemble_size - member)
            )
        extra = {
            'signature': signature,
            'member': member,
            'finished_members': members,
            'finished_histories': histories,
            'member_budget_minutes': member_budget.minutes,
        }
        best_state, history = train_member(
            model,
            data['train'],
            data['val'],
            normalization,
            config,
            seed,
            member_budget,
            state_path,
            resume_state,
            extra,
            label=f'member {member + 1}/{config.ensemble_size}',
        )
        members.append(best_state)
        histories.append(history)
        # a finished member is safe: a crash in the next one does not train it again
        torch.save(
            {
                'signature': extra['signature'],
                'member': member + 1,
                'finished_members': members,
                'finished_histories': histories,
            },
            state_path,
        )
    training_seconds = time.monotonic() - started
    if config.progress:
        print(f'trained {len(members)} member(s) in {training_seconds:.1f} s; evaluating', flush=True)
    if finalize is None:
        finalize = functools.partial(finalize_ensemble, sigma_scale=inherited_sigma_scale(parent, data))
    return finalize(
        members,
        histories,
        model_config,
        config,
        target,
        units,
        normalization,
        reference,
        data,
        failures,
        output_dir,
        dataset,
        training_seconds,
    )


def finalize_ensemble(
    members: list[dict],
    histories: list[list],
    model_config: CrysformerConfig,
    config: TrainingConfig,
    target: str,
    units: str,
    normalization: dict,
    reference: dict | None,
    data: dict,
    failures: dict,
    output_dir,
    dataset: dict | None = None,
    training_seconds: float | None = None,
    member_training: list[dict] | None = None,
    sigma_scale: dict | None = None,
) -> tuple[dict, dict]:
    """Evaluate the members as one ensemble (sigma scales fitted on val, or ``sigma_scale`` when given: see
    :func:`inherited_sigma_scale`), then write model.pt, metadata.json, metrics.json, learning_curve.png and
    parity.png into ``output_dir``.
    ``member_training``: each member's own training options, recorded when they differ (a pool of runs)."""
    output_dir = pathlib.Path(output_dir)
    state_path = output_dir / STATE_FILE
    training = config.to_dict()
    if member_training:
        training['members'] = member_training
    checkpoint = make_checkpoint(
        members, model_config, target, units, normalization, training=training, element_reference=reference
    )
    predictor = EnsemblePredictor([checkpoint], config.device)
    metrics, test_predictions = evaluate(predictor, data, config, sigma_scale)
    checkpoint['sigma_scale'] = metrics.pop('sigma_scale')
    metrics.update(
        {
            'sigma_scale_from': 'val' if sigma_scale is None else 'parent (val overlaps train)',
            'history': histories,
            'training_seconds': training_seconds,
            'n_parameters': count_parameters(Crysformer(model_config)),
            'n_structures': {name: len(d.graphs) for name, d in data.items()},
            'graph_failures': failures,
            'sigma_scale': checkpoint['sigma_scale'],
            'normalization': normalization,
        }
    )
    checkpoint['metrics'] = {split_name: metrics[split_name] for split_name in ('val', 'test')}
    checkpoint['split'] = {name: id_digest(d.ids) for name, d in data.items()}
    checkpoint['dataset'] = dict(dataset or {})
    sha = save_checkpoint(checkpoint, output_dir / MODEL_FILE)
    metadata = {
        'architecture': checkpoint['architecture'],
        'hyperparameters': checkpoint['hyperparameters'],
        'target': target,
        'units': units,
        'metrics': checkpoint['metrics'],
        'sha256': sha,
        'n_members': len(members),
        'dataset': checkpoint['dataset'],
        'split': checkpoint['split'],
    }
    write_run_files(output_dir, metadata, metrics, histories, units=units)
    test = data['test'] if data['test'].graphs else data['val']
    mean, sigma = test_predictions
    plots.parity(
        test.raw,
        mean,
        sigma,
        output_dir / PARITY_FIGURE,
        target,
        units,
        title='test split' if data['test'].graphs else 'validation split',
    )
    if state_path.exists():
        state_path.unlink()  # finished: nothing left to resume
    return checkpoint, metrics


def prepare_splits(
    arrays: StructureArrays,
    target: str,
    split: dict[str, np.ndarray],
    reference: dict | None,
    normalization: dict | None,
    num_neighbours: int,
    workers: int = 0,
) -> tuple[dict, dict, dict]:
    """Graphs and standardised targets of each split; returns (data, normalization, graph failures)."""
    prepared, failures = {}, {}
    for name in ('train', 'val', 'test'):
        graphs, raw, residual, ids, failed = _prepare(arrays, split[name], target, reference, num_neighbours, workers)
        prepared[name] = (graphs, raw, residual, ids)
        failures[name] = len(failed)
    if not prepared['train'][0] or not prepared['val'][0]:
        raise ValueError('the train and val splits must each hold at least one structure')
    if normalization is None:
        residual = prepared['train'][2]
        normalization = {'mean': float(residual.mean()), 'std': float(max(residual.std(), 1e-6))}
    data = {
        name: PreparedData(graphs, (residual - normalization['mean']) / normalization['std'], raw, ids)
        for name, (graphs, raw, residual, ids) in prepared.items()
    }
    return data, normalization, failures


def _signature(config: TrainingConfig, model_config: CrysformerConfig, target: str, data: dict) -> str:
    ids = {name: id_digest(d.ids)['sha256'] for name, d in data.items()}
    return run_signature(config.to_dict(), model_config.to_dict(), target, ids)


def inherited_sigma_scale(parent: dict | None, data: dict) -> dict | None:
    """The parent's sigma scales when a fine-tune's val split shares structures with its train split, else None
    (fit on val). A scale fitted on structures the members were just fitted to measures how well they memorised
    them: a loop's fine-tune on three DFT results (val = train) shrank the ensemble's scale from 2.24 to 0.45, and
    with it every sigma the model gives, on any composition."""
    if parent is None or not set(data['val'].ids) & set(data['train'].ids):
        return None
    return dict(parent['sigma_scale'])


def calibrate_method(
    predictor: EnsemblePredictor,
    splits: dict,
    method: str,
    batch_size: int,
    mc_samples: int,
    scale: float | None = None,
):
    """One uncertainty estimator on ``splits`` (``{'val': (graphs, true values), 'test': ...}``, val
    required): its sigma scale (fitted on val unless ``scale`` is given), each split's uncalibrated
    ``(mean, sigma)``, and each split's metrics with the scale applied. Returns ``(scale, stats, metrics)``."""
    stats = {
        name: predictor.summarize(predictor.sample(graphs, batch_size, method, mc_samples))
        for name, (graphs, _) in splits.items()
    }
    mean_val, sigma_val = stats['val']
    if scale is None:
        scale = fit_sigma_scale(mean_val - splits['val'][1], sigma_val)
    metrics = {name: uncertainty_metrics(mean, sigma * scale, splits[name][1]) for name, (mean, sigma) in stats.items()}
    return scale, stats, metrics


def _mae(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(predicted - true)))


def evaluate(predictor: EnsemblePredictor, data: dict, config: TrainingConfig, sigma_scale: dict | None = None):
    """Val/test metrics for the ensemble and both MC-dropout estimators, with sigma scales fitted on val (or
    those of ``sigma_scale``, per method)."""
    metrics: dict = {'val': {}, 'test': {}, 'sigma_scale': {}}
    test_predictions = None
    methods = ['mc_dropout', 'mc_dropout_readout']
    if predictor.num_members > 1:
        methods.insert(0, 'ensemble')
    splits = {name: (data[name].graphs, data[name].raw) for name in ('val', 'test') if data[name].graphs}
    for method in methods:
        scale, stats, method_metrics = calibrate_method(
            predictor, splits, method, config.batch_size, config.mc_samples, (sigma_scale or {}).get(method)
        )
        metrics['sigma_scale'][method] = scale
        for name, values in method_metrics.items():
            metrics[name][method] = values
        if method == methods[0]:
            for name, (mean, _) in stats.items():
                metrics[name]['mae'] = _mae(mean, data[name].raw)
            key = 'test' if 'test' in stats else 'val'
            test_predictions = (stats[key][0], stats[key][1] * scale)
    if 'ensemble' not in metrics['sigma_scale']:
        metrics['sigma_scale']['ensemble'] = metrics['sigma_scale']['mc_dropout']
    # the per-member errors show how much the ensemble gains over one model
    for name in ('val', 'test'):
        if data[name].graphs and predictor.num_members > 1:
            members = predictor.sample(data[name].graphs, config.batch_size, 'ensemble')
            metrics[name]['member_mae'] = [_mae(predictor.bounded(row), data[name].raw) for row in members]
            if predictor.lower_bound is not None:  # what the bound gains: the same predictions without it
                metrics[name]['without_lower_bound'] = {
                    'mae': _mae(members.mean(axis=0), data[name].raw),
                    'member_mae': [_mae(row, data[name].raw) for row in members],
                }
    return metrics, test_predictions


# -- the hpcai-model task ------------------------------------------------------------------------
_TRAINING_KEYS = {f.name for f in dataclasses.fields(TrainingConfig)}


def split_from_config(arrays: StructureArrays, split_config: dict | None) -> dict[str, np.ndarray]:
    """Positions of the train/val/test structures a train config's ``split`` names: id lists
    (``{"train": [...], "val": [...], "test": [...]}``) or ``{"fractions": [...], "seed": ...}``."""
    from .datasets import split_by_id, split_indices

    ids = [str(i) for i in arrays.ids]
    split_config = split_config or {'fractions': [0.8, 0.1, 0.1], 'seed': 0}
    if 'train' in split_config:
        split = {name: list(split_config.get(name, [])) for name in ('train', 'val', 'test')}
    else:
        split = split_by_id(
            ids, tuple(split_config.get('fractions', (0.8, 0.1, 0.1))), int(split_config.get('seed', 0))
        )
    indices = split_indices(ids, split)
    if len(indices['train']) == 0 or len(indices['val']) == 0:
        raise TaskError(INVALID_SPLIT, 'the train and val splits must each hold at least one structure')
    return indices


def run_train(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    """``hpcai-model train`` of a Crysformer: train or fine-tune an ensemble on structures.npz."""
    from .structure_io import read_npz

    input_dir, output_dir = pathlib.Path(input_dir), pathlib.Path(output_dir)
    target = config.get('target')
    if not target:
        raise TaskError(INVALID_CONFIG, 'config.json must name a "target"')
    arrays = read_npz(input_dir / STRUCTURES_FILE)
    if target not in arrays.labels:
        raise TaskError(MISSING_LABEL, f'structures.npz has no label {target!r} (labels: {sorted(arrays.labels)})')
    labelled = np.nonzero(np.isfinite(arrays.labels[target]))[0]
    if len(labelled) == 0:
        raise TaskError(MISSING_LABEL, f'no structure has a finite {target!r} label')
    arrays = arrays.subset(labelled)
    indices = split_from_config(arrays, config.get('split'))

    parent = load_verified(config[PARENT_KEY], input_dir, 'crysformer') if config.get(PARENT_KEY) else None
    training = {key: config[key] for key in _TRAINING_KEYS if key in config}
    training.setdefault('progress', False)
    try:
        train_ensemble(
            arrays,
            target,
            indices,
            output_dir,
            model_config=config.get('model_config', 'cpu'),
            training=training,
            units=config.get('units'),
            parent=parent,
            dataset={
                'name': config.get('dataset_name', STRUCTURES_FILE),
                'n_structures': len(arrays),
                'formulae_sha256': arrays.formulae_digest(),
            },
        )
    except ValueError as exc:
        if 'parent predicts' in str(exc):
            raise TaskError(INCOMPATIBLE_MODELS, str(exc)) from exc
        raise
