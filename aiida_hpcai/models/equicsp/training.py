"""Training of EquiCSP and its ``hpcai-model train`` task.

Recipe: AdamW on the joint diffusion loss (:func:`aiida_hpcai.models.diffusion.diffusion_loss`),
linear warm-up then cosine decay (the Crysformer schedule, over epochs or the wall-clock budget
``max_minutes``, whichever ends first), gradient clipping, the best epoch on a fixed-noise
validation loss kept. ``modes`` picks what the model learns: ``csp`` (every crystal with its
composition given), ``abinitio`` (types diffused too) or ``both`` (half of the crystals each way,
so one checkpoint serves both).

Training on from a finished generator (``parent``, a warm start): its network options, elements and lattice
standardisation are kept (the learned state means the same), its weights are the start, and the optimiser and
schedule begin afresh (warm-up included); the training crystals may only hold the parent's elements.

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
import pathlib
import time

import numpy as np
import torch

from ..checkpoint import id_digest, new_checkpoint, save_checkpoint, weights_digest
from ..contract import MODEL_FILE
from ..diffusion import CrystalBatch, LatticeScaler, Schedules, diffusion_loss
from ..loop import (
    STATE_FILE,
    Budget,
    load_state,
    run_signature,
    seconds_of,
    seed_everything,
    train_epochs,
    write_run_files,
)
from ..structure_io import StructureArrays
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
    parent: dict | None = None,
) -> tuple[dict, dict]:
    """Train on ``split['train']`` (best epoch on ``split['val']``), or on from the EquiCSP checkpoint ``parent``;
    write model.pt, metadata.json, metrics.json and learning_curve.png into ``output_dir``; return (checkpoint,
    metrics). ``dataset['initialized_from']``, where given, names the parent in the record."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = (
        training
        if isinstance(training, EquiCSPTrainingConfig)
        else EquiCSPTrainingConfig.from_dict(dict(training or {}))
    )
    train_index = np.asarray(split['train'], dtype=np.int64)
    if len(train_index) == 0 or len(split['val']) == 0:
        raise EmptySplit('the train and val splits must each hold at least one structure')
    present = sorted({int(z) for i in train_index for z in arrays.atoms_of(int(i))[0]})
    natoms = arrays.natoms[train_index]
    if parent is None:
        model_config = resolve_config(model_config)
        elements = present
        scaler = LatticeScaler.fit(arrays.cells[train_index], natoms)
    else:
        model_config, elements, scaler = _from_parent(parent, present)
    known = set(elements)
    val_index = [int(i) for i in split['val'] if set(arrays.atoms_of(int(i))[0].tolist()) <= known]
    train, val = prepare(arrays, train_index, elements, scaler), prepare(arrays, val_index, elements, scaler)
    if len(val) == 0:
        raise EmptySplit('no validation structure is made of the training elements only')
    schedules = Schedules(model_config.timesteps, model_config.sigma_begin, model_config.sigma_end)

    seed_everything(config.seed)
    model = EquiCSPDenoiser(model_config, len(elements))
    if parent is not None:
        model.load_state_dict(parent['members'][0])
    model = model.to(config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    signature = run_signature(
        config.to_dict(),
        model_config.to_dict(),
        id_digest(train.ids)['sha256'],
        id_digest(val.ids)['sha256'],
        # the parent's own weights, not the caller's description of it: another parent is another run
        weights_digest(parent['members'][0]) if parent is not None else None,
    )
    state_path = output_dir / STATE_FILE
    saved = load_state(state_path, signature, resume)
    budget = Budget(config.max_minutes, seconds_of(saved['history']) if saved else 0.0)
    started_all = time.monotonic()

    def batch_loss(chosen):
        batch = train.batch(chosen).to(config.device)
        losses = diffusion_loss(model, batch, schedules, scaler, len(elements), CSP_FRACTION[config.modes], generator)
        return losses['loss']

    def validate(model) -> dict:
        terms = validation_loss(model, val, schedules, scaler, len(elements), config)
        return {'val_loss': terms['loss'], 'val_terms': {key: value for key, value in terms.items() if key != 'loss'}}

    best_state, best_val, best_epoch, history = train_epochs(
        model,
        optimizer,
        len(train),
        batch_loss,
        validate,
        'val_loss',
        config,
        config.learning_rate,
        config.seed,
        budget,
        state_path=state_path,
        resume_state=saved,
        save_extra={'signature': signature},
        generator=generator,
        label=ARCHITECTURE,
    )

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
    training_seconds = seconds_of(history)
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
    write_run_files(
        output_dir,
        metadata,
        metrics,
        [history],
        metric='val_loss',
        metric_label='validation loss (fixed noise)',
        train_label='train diffusion loss',
    )
    state_path.unlink()  # finished: nothing left to resume
    return checkpoint, metrics


def require_generator(parent: dict) -> None:
    """A parent to train on must be an EquiCSP checkpoint (ValueError otherwise)."""
    if parent.get('architecture') != ARCHITECTURE:
        raise ValueError(f'the parent is a {parent.get("architecture")!r} checkpoint, not {ARCHITECTURE!r}')


def _from_parent(parent: dict, present: list[int]) -> tuple[EquiCSPConfig, list[int], LatticeScaler]:
    """The network options, elements (atomic numbers, the parent's order) and lattice standardisation of a
    parent generator; a training crystal with an element the parent never saw has no type to learn."""
    from pymatgen.core.periodic_table import Element

    require_generator(parent)
    elements = [Element(symbol).Z for symbol in parent['elements']]
    unknown = sorted(set(present) - set(elements))
    if unknown:
        names = ', '.join(_symbol(z) for z in unknown)
        raise ValueError(f'the training crystals hold elements the parent was not trained on: {names}')
    config = EquiCSPConfig.from_dict(parent['hyperparameters']['model'])
    return config, elements, LatticeScaler(**parent['lattice_scaler'])


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
