"""Training of EquiCSP and its ``hpcai-model train`` task.

Recipe: AdamW on the joint diffusion loss (:func:`aiida_hpcai.models.diffusion.diffusion_loss`),
linear warm-up then cosine decay (the Crysformer schedule, over epochs or the wall-clock budget
``max_minutes``, whichever ends first), gradient clipping, the best epoch on a fixed-noise
validation loss kept. ``modes`` picks what the model learns: ``csp`` (every crystal with its
composition given), ``abinitio`` (types diffused too) or ``both`` (half of the crystals each way,
so one checkpoint serves both).

Resuming: after every epoch the state (model, optimiser, noise generator, step, history, best
epoch) is written to ``training_state.pt`` in the output folder; running again with the same
folder and options continues from there, and the epochs already run count against ``max_minutes``.

The checkpoint (architecture ``equicsp``) records what sampling and the generate task's checks
need: the training set's ``elements``, ``max_atoms``, the distribution of atom counts
(``num_atoms_counts[N]``: training crystals with N atoms), the lattice standardisation and the
``modes`` the model was trained for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import numpy as np
import torch

from .. import plots
from ..checkpoint import id_digest, new_checkpoint, save_checkpoint
from ..contract import LEARNING_CURVE_FIGURE, METADATA_FILE, METRICS_FILE, MODEL_FILE
from ..diffusion import CrystalBatch, LatticeScaler, Schedules, diffusion_loss
from ..structure_io import StructureArrays
from ..training import STATE_FILE, _Budget, learning_rate_factor, seed_everything
from .network import EquiCSPConfig, EquiCSPDenoiser, JsonOptions, count_parameters, resolve_config

ARCHITECTURE = 'equicsp'
MODES = {'csp': ('csp',), 'abinitio': ('abinitio',), 'both': ('csp', 'abinitio')}
CSP_FRACTION = {'csp': 1.0, 'abinitio': 0.0, 'both': 0.5}
_VALIDATION_SEED = 12345  # the same noise for every validation pass, so epochs compare


class EmptySplit(ValueError):
    """The train or val split holds nothing to train or validate on."""


@dataclasses.dataclass
class EquiCSPTrainingConfig(JsonOptions):
    epochs: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.01
    min_lr_ratio: float = 0.1
    patience: int = 200
    seed: int = 0
    device: str = 'cpu'
    max_minutes: float | None = None
    modes: str = 'both'  # 'csp', 'abinitio' or 'both'
    gradient_clip: float = 1.0
    progress: bool = True

    def __post_init__(self):
        if self.modes not in MODES:
            raise ValueError(f'modes must be one of {sorted(MODES)}, not {self.modes!r}')


@dataclasses.dataclass
class PreparedCrystals:
    """Crystals as the diffusion sees them: element indices, fractional coordinates, lattice state."""

    types: list[np.ndarray]
    frac: list[np.ndarray]
    lattice: np.ndarray  # (B, 6) standardised
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, chosen, dtype=torch.float32) -> CrystalBatch:
        return CrystalBatch(
            types=torch.as_tensor(np.concatenate([self.types[i] for i in chosen]), dtype=torch.long),
            frac=torch.as_tensor(np.concatenate([self.frac[i] for i in chosen]), dtype=dtype),
            lattice=torch.as_tensor(self.lattice[chosen], dtype=dtype),
            num_atoms=torch.as_tensor([len(self.types[i]) for i in chosen], dtype=torch.long),
        )


def prepare(arrays: StructureArrays, indices, elements: list[int], scaler: LatticeScaler) -> PreparedCrystals:
    """The crystals at ``indices``; ``elements`` are the model's atomic numbers (index = type)."""
    lookup = {z: n for n, z in enumerate(elements)}
    types, frac = [], []
    for index in indices:
        numbers, positions, cell, _ = arrays.atoms_of(int(index))
        types.append(np.array([lookup[int(z)] for z in numbers], dtype=np.int64))
        frac.append(np.linalg.solve(cell.T, positions.T).T % 1.0)
    indices = np.asarray(indices, dtype=np.int64)
    lattice = scaler.encode(arrays.cells[indices], arrays.natoms[indices]) if len(indices) else np.zeros((0, 6))
    return PreparedCrystals(types, frac, lattice, [str(arrays.ids[i]) for i in indices])


def validation_loss(model, data: PreparedCrystals, schedules, scaler, num_elements, config) -> dict[str, float]:
    """Mean loss terms over ``data`` with fixed noise (the same draw every epoch)."""
    model.eval()
    generator = torch.Generator().manual_seed(_VALIDATION_SEED)
    totals, count = {}, 0
    with torch.no_grad():
        for start in range(0, len(data), config.batch_size):
            chosen = np.arange(start, min(start + config.batch_size, len(data)))
            losses = diffusion_loss(
                model,
                data.batch(chosen).to(config.device),
                schedules,
                scaler,
                num_elements,
                CSP_FRACTION[config.modes],
                generator,
            )
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(chosen)
            count += len(chosen)
    return {key: value / max(count, 1) for key, value in totals.items()}


def train_equicsp(
    arrays: StructureArrays,
    split: dict[str, np.ndarray],
    output_dir,
    model_config: str | dict | EquiCSPConfig = 'cpu',
    training: EquiCSPTrainingConfig | dict | None = None,
    dataset: dict | None = None,
    resume: bool = True,
) -> tuple[dict, dict]:
    """Train on ``split['train']`` (best epoch on ``split['val']``); write model.pt, metadata.json,
    metrics.json and learning_curve.png into ``output_dir``; return (checkpoint, metrics)."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = (
        training
        if isinstance(training, EquiCSPTrainingConfig)
        else EquiCSPTrainingConfig.from_dict(dict(training or {}))
    )
    model_config = resolve_config(model_config)
    train_index = np.asarray(split['train'], dtype=np.int64)
    if len(train_index) == 0 or len(split['val']) == 0:
        raise EmptySplit('the train and val splits must each hold at least one structure')
    elements = sorted({int(z) for i in train_index for z in arrays.atoms_of(int(i))[0]})
    natoms = arrays.natoms[train_index]
    scaler = LatticeScaler.fit(arrays.cells[train_index], natoms)
    known = set(elements)
    val_index = [int(i) for i in split['val'] if set(arrays.atoms_of(int(i))[0].tolist()) <= known]
    train, val = prepare(arrays, train_index, elements, scaler), prepare(arrays, val_index, elements, scaler)
    if len(val) == 0:
        raise EmptySplit('no validation structure is made of the training elements only')
    schedules = Schedules(model_config.timesteps, model_config.sigma_begin, model_config.sigma_end)

    seed_everything(config.seed)
    model = EquiCSPDenoiser(model_config, len(elements)).to(config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    signature = json.dumps(
        [
            {k: v for k, v in config.to_dict().items() if k not in ('progress', 'device', 'max_minutes')},
            model_config.to_dict(),
            id_digest(train.ids)['sha256'],
            id_digest(val.ids)['sha256'],
        ],
        sort_keys=True,
    )
    state_path = output_dir / STATE_FILE
    saved = torch.load(state_path, map_location='cpu', weights_only=True) if resume and state_path.exists() else None
    if saved is not None and saved.get('signature') != signature:
        saved = None  # a different run used this folder: start afresh
    history: list[dict] = []
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best_val, best_epoch, first_epoch, step = math.inf, -1, 0, 0
    if saved is not None:
        model.load_state_dict(saved['model'])
        optimizer.load_state_dict(saved['optimizer'])
        generator.set_state(saved['generator'])
        best_state, best_val, best_epoch = saved['best_state'], saved['best_val'], saved['best_epoch']
        history, first_epoch, step = saved['history'], saved['epoch'] + 1, saved['step']
    budget = _Budget(config.max_minutes, sum(row['seconds'] for row in history))
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total_steps))
    shuffle = np.random.default_rng(config.seed)
    for _ in range(first_epoch):  # the same shuffles as an uninterrupted run
        shuffle.permutation(len(train))
    started_all = time.monotonic()
    epochs = range(first_epoch, config.epochs)
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(epochs, desc='training equicsp', unit='epoch', mininterval=2.0)
        epochs = bar
    for epoch in epochs:
        model.train()
        started = time.monotonic()
        losses = []
        order = shuffle.permutation(len(train))
        for start in range(0, len(train), config.batch_size):
            chosen = order[start : start + config.batch_size]
            used = 0.0 if budget.deadline is None else 1.0 - (budget.deadline - time.monotonic()) / budget.seconds
            factor = learning_rate_factor(step, warmup, total_steps, used, config.warmup_fraction, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group['lr'] = config.learning_rate * factor
            loss = diffusion_loss(
                model,
                train.batch(chosen).to(config.device),
                schedules,
                scaler,
                len(elements),
                CSP_FRACTION[config.modes],
                generator,
            )['loss']
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.gradient_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if budget.exhausted():
                break
        terms = validation_loss(model, val, schedules, scaler, len(elements), config)
        history.append(
            {
                'epoch': epoch,
                'train_loss': float(np.mean(losses)),
                'val_loss': terms['loss'],
                'val_terms': {key: value for key, value in terms.items() if key != 'loss'},
                'lr': optimizer.param_groups[0]['lr'],
                'seconds': time.monotonic() - started,
            }
        )
        if terms['loss'] < best_val:
            best_val, best_epoch = terms['loss'], epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if bar is not None:
            bar.set_postfix(loss=f'{history[-1]["train_loss"]:.4f}', val=f'{terms["loss"]:.4f}', best=f'{best_val:.4f}')
        stop = budget.exhausted() or epoch - best_epoch >= config.patience
        torch.save(
            {
                'signature': signature,
                'model': model.state_dict(),
                'optimizer': optimizer.state_dict(),
                'generator': generator.get_state(),
                'step': step,
                'best_state': best_state,
                'best_val': best_val,
                'best_epoch': best_epoch,
                'history': history,
                'epoch': config.epochs - 1 if stop else epoch,
            },
            state_path,
        )
        if stop:
            break
    if bar is not None:
        bar.close()

    counts = np.bincount(natoms, minlength=int(natoms.max()) + 1)
    checkpoint = new_checkpoint(
        ARCHITECTURE,
        {'model': model_config.to_dict(), 'training': config.to_dict()},
        [best_state],
        elements=[_symbol(z) for z in elements],
        max_atoms=int(natoms.max()),
        num_atoms_counts=[int(c) for c in counts],
        lattice_scaler=scaler.to_dict(),
        modes=list(MODES[config.modes]),
        target=None,
        units=None,
        metrics={'val': {'loss': best_val, 'best_epoch': best_epoch}},
        split={'train': id_digest(train.ids), 'val': id_digest(val.ids)},
        dataset=dict(dataset or {}),
    )
    sha = save_checkpoint(checkpoint, output_dir / MODEL_FILE)
    training_seconds = sum(row['seconds'] for row in history)
    metrics = {
        'history': [history],
        'best_epoch': best_epoch,
        'val': {'loss': best_val},
        'training_seconds': training_seconds,
        'seconds_this_run': time.monotonic() - started_all,
        'n_parameters': count_parameters(model),
        'n_structures': {'train': len(train), 'val': len(val)},
        'val_skipped_unknown_elements': len(split['val']) - len(val),
    }
    metadata = {
        'architecture': ARCHITECTURE,
        'hyperparameters': checkpoint['hyperparameters'],
        'target': None,
        'units': None,
        'metrics': checkpoint['metrics'],
        'sha256': sha,
        'n_members': 1,
        'elements': checkpoint['elements'],
        'max_atoms': checkpoint['max_atoms'],
        'modes': checkpoint['modes'],
        'dataset': checkpoint['dataset'],
        'split': checkpoint['split'],
    }
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    plots.learning_curve(
        [history],
        output_dir / LEARNING_CURVE_FIGURE,
        metric='val_loss',
        metric_label='validation loss (fixed noise)',
        train_label='train diffusion loss',
    )
    state_path.unlink()  # finished: nothing left to resume
    return checkpoint, metrics


def _symbol(z: int) -> str:
    from pymatgen.core.periodic_table import Element

    return Element.from_Z(z).symbol


# -- the hpcai-model task ------------------------------------------------------------------------
_TRAINING_KEYS = {f.name for f in dataclasses.fields(EquiCSPTrainingConfig)}


def run_train(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    """``hpcai-model train`` of EquiCSP on structures.npz (no label needed)."""
    from ..contract import INVALID_CONFIG, INVALID_SPLIT, STRUCTURES_FILE, TaskError
    from ..structure_io import read_npz
    from ..training import split_from_config

    input_dir, output_dir = pathlib.Path(input_dir), pathlib.Path(output_dir)
    try:
        training = EquiCSPTrainingConfig.from_dict(
            {'progress': False, **{key: config[key] for key in _TRAINING_KEYS if key in config}}
        )
        model_config = resolve_config(config.get('model_config', 'cpu'))
    except (ValueError, TypeError, KeyError) as exc:
        raise TaskError(INVALID_CONFIG, str(exc)) from exc
    arrays = read_npz(input_dir / STRUCTURES_FILE)
    indices = split_from_config(arrays, config.get('split'))
    try:
        train_equicsp(
            arrays,
            indices,
            output_dir,
            model_config=model_config,
            training=training,
            dataset={
                'name': config.get('dataset_name', STRUCTURES_FILE),
                'n_structures': len(arrays),
                'formulae_sha256': arrays.formulae_digest(),
            },
        )
    except EmptySplit as exc:
        raise TaskError(INVALID_SPLIT, str(exc)) from exc
