"""The epoch loop every trainer shares (Crysformer members, EquiCSP): one place for the bookkeeping.

Per epoch: a seeded shuffle, one optimiser step per batch with gradient clipping and the learning rate of
:func:`learning_rate_factor` (linear warm-up then cosine decay, over the steps or the wall-clock :class:`Budget`,
whichever runs out first), a validation pass, a history row (``epoch``, ``train_loss``, the validation fields,
``lr``, ``seconds``), the best epoch kept (its weights on the CPU), early stopping after ``patience`` epochs
without gain, a progress bar, and the resume state written to :data:`STATE_FILE`.

What a trainer brings: the loss of a batch (``batch_loss(chosen)``, ``chosen`` the positions in the train set)
and the validation fields of an epoch (``validate(model)``, a dict holding the ``metric`` compared to pick the
best epoch). What differs stays with the trainer: the model, the optimiser, the data and the checkpoint.

Resuming: the state holds ``model``, ``optimizer``, ``step``, ``best_state``, ``best_val``, ``best_epoch``,
``history``, ``epoch`` (the last one done; the last epoch of the schedule once stopped), ``generator`` (the state
of a trainer's noise generator, where it has one), ``torch_rng`` (torch's own generators: dropout draws from them)
and whatever the trainer adds (``save_extra``: at least a ``signature`` of the run, see :func:`run_signature`).
A resumed run shuffles, schedules, drops out and draws noise as the uninterrupted run would, and its wall-clock
budget counts the epochs already done. A state without ``torch_rng`` (written before it was saved) still
resumes; its dropout then differs from the uninterrupted run's.

A finished run writes its files with :func:`write_run_files` (metadata.json, metrics.json, learning_curve.png).
"""

from __future__ import annotations

import json
import math
import pathlib
import random
import time
import typing

import numpy as np
import torch

from . import plots
from .contract import LEARNING_CURVE_FIGURE, METADATA_FILE, METRICS_FILE

STATE_FILE = 'training_state.pt'  # a trainer's own resume file, not part of the CalcJob contract
# options that do not change what a run computes (a run resumed with other values goes on)
_NOT_IN_SIGNATURE = ('progress', 'device', 'max_minutes')


class LoopOptions(typing.Protocol):
    """The training options the loop reads (both trainers' configs have them)."""

    epochs: int
    batch_size: int
    warmup_fraction: float
    min_lr_ratio: float
    patience: int
    gradient_clip: float
    progress: bool


class EpochResult(typing.NamedTuple):
    best_state: dict  # the weights of the best epoch (CPU tensors)
    best_val: float
    best_epoch: int
    history: list[dict]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Budget:
    """A wall-clock budget of ``minutes``, of which ``spent_seconds`` were used before this process
    (a resumed run keeps its clock, so its schedule goes on where it stopped)."""

    def __init__(self, minutes: float | None, spent_seconds: float = 0.0):
        self.seconds = None if minutes is None else max(60.0 * minutes, 1e-3)
        self.deadline = None if minutes is None else time.monotonic() + self.seconds - spent_seconds

    @property
    def minutes(self) -> float | None:
        return None if self.seconds is None else self.seconds / 60.0

    def used(self) -> float:
        """The fraction of the budget used so far (0 without a budget)."""
        return 0.0 if self.deadline is None else 1.0 - (self.deadline - time.monotonic()) / self.seconds

    def exhausted(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def learning_rate_factor(
    step: int, warmup_steps: int, total_steps: int, budget_used: float, warmup_fraction: float, min_ratio: float
) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio``, each over the steps or over the wall-clock
    budget (``budget_used`` in 0..1; 0 without a budget), whichever runs out first: a budget shorter
    than the warm-up epochs still reaches the peak learning rate, and still ends at a low one."""
    if step < warmup_steps and budget_used < warmup_fraction:
        return max((step + 1) / warmup_steps, budget_used / warmup_fraction)
    progress = max(
        (step - warmup_steps) / max(1, total_steps - warmup_steps),
        (budget_used - warmup_fraction) / (1.0 - warmup_fraction),
    )
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def run_signature(options: dict, *parts) -> str:
    """What a run computes: its options (less those that do not change the result) and ``parts`` (the model's
    options, the digests of its data...). A saved state with another signature belongs to another run."""
    relevant = {key: value for key, value in options.items() if key not in _NOT_IN_SIGNATURE}
    return json.dumps([relevant, *parts], sort_keys=True)


def load_state(state_path: pathlib.Path, signature: str, resume: bool = True) -> dict | None:
    """The resume state saved in ``state_path`` by the run of ``signature``; None to start afresh."""
    if not resume or not state_path.exists():
        return None
    saved = torch.load(state_path, map_location='cpu', weights_only=True)
    return saved if saved.get('signature') == signature else None  # another run used this folder


def seconds_of(history: list[dict]) -> float:
    """The training time of the epochs in ``history``."""
    return float(sum(row['seconds'] for row in history))


def _torch_rng() -> dict:
    """The state of torch's generators (the CPU's, and each GPU's once CUDA is in use)."""
    state = {'cpu': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_torch_rng(state: dict) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _cpu_copy(model: torch.nn.Module) -> dict:
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    n_train: int,
    batch_loss: typing.Callable[[np.ndarray], torch.Tensor],
    validate: typing.Callable[[torch.nn.Module], dict],
    metric: str,
    config: LoopOptions,
    learning_rate: float,
    seed: int,
    budget: Budget,
    state_path: pathlib.Path | None = None,
    resume_state: dict | None = None,
    save_extra: dict | None = None,
    generator: torch.Generator | None = None,
    label: str = '',
) -> EpochResult:
    """Train ``model`` for ``config.epochs`` epochs over ``n_train`` items (fewer when the budget runs out or
    ``config.patience`` epochs bring no gain in ``validate(model)[metric]``, lower is better).

    ``seed`` drives the shuffles; ``generator`` (optional) is a noise generator of the trainer's whose state is
    saved and restored with the rest. With ``state_path`` the state is written after every epoch; with
    ``resume_state`` (such a state) training goes on after its last epoch."""
    parameters = [group_parameter for group in optimizer.param_groups for group_parameter in group['params']]
    total_steps = max(1, math.ceil(n_train / config.batch_size)) * config.epochs
    warmup = max(1, int(config.warmup_fraction * total_steps))
    history: list[dict] = []
    best_state, best_val, best_epoch, first_epoch, step = _cpu_copy(model), math.inf, -1, 0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state['model'])
        optimizer.load_state_dict(resume_state['optimizer'])
        if generator is not None:
            generator.set_state(resume_state['generator'])
        if 'torch_rng' in resume_state:
            _set_torch_rng(resume_state['torch_rng'])
        best_state, best_val, best_epoch = (
            resume_state['best_state'],
            resume_state['best_val'],
            resume_state['best_epoch'],
        )
        history, first_epoch, step = resume_state['history'], resume_state['epoch'] + 1, resume_state['step']

    shuffle = np.random.default_rng(seed)
    for _ in range(first_epoch):  # the same shuffles as an uninterrupted run
        shuffle.permutation(n_train)
    epochs = range(first_epoch, config.epochs)
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(epochs, desc=f'training {label}'.strip(), unit='epoch', mininterval=2.0)
        epochs = bar
    for epoch in epochs:
        model.train()
        started = time.monotonic()
        order = shuffle.permutation(n_train)
        losses = []
        for start in range(0, n_train, config.batch_size):
            loss = batch_loss(order[start : start + config.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.gradient_clip:
                torch.nn.utils.clip_grad_norm_(parameters, config.gradient_clip)
            factor = learning_rate_factor(
                step, warmup, total_steps, budget.used(), config.warmup_fraction, config.min_lr_ratio
            )
            for group in optimizer.param_groups:
                group['lr'] = learning_rate * factor
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if budget.exhausted():
                break
        fields = validate(model)
        history.append(
            {
                'epoch': epoch,
                'train_loss': float(np.mean(losses)),
                **fields,
                'lr': optimizer.param_groups[0]['lr'],
                'seconds': time.monotonic() - started,
            }
        )
        if fields[metric] < best_val:
            best_val, best_epoch = fields[metric], epoch
            best_state = _cpu_copy(model)
        if bar is not None:
            bar.set_postfix(
                loss=f'{history[-1]["train_loss"]:.4f}', **{metric: f'{fields[metric]:.4g}'}, best=f'{best_val:.4g}'
            )
        stop = budget.exhausted() or epoch - best_epoch >= config.patience
        if state_path is not None:
            state = {
                **(save_extra or {}),
                'model': model.state_dict(),
                'optimizer': optimizer.state_dict(),
                'step': step,
                'best_state': best_state,
                'best_val': best_val,
                'best_epoch': best_epoch,
                'history': history,
                'epoch': config.epochs - 1 if stop else epoch,
                'torch_rng': _torch_rng(),
            }
            if generator is not None:
                state['generator'] = generator.get_state()
            torch.save(state, state_path)
        if stop:
            break
    if bar is not None:
        bar.close()
    return EpochResult(best_state, best_val, best_epoch, history)


def write_run_files(output_dir, metadata: dict, metrics: dict, histories: list[list[dict]], **curve) -> None:
    """metadata.json, metrics.json and learning_curve.png of a finished run (one history per trained model;
    ``curve``: the metric and labels of :func:`plots.learning_curve`)."""
    output_dir = pathlib.Path(output_dir)
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    plots.learning_curve(histories, output_dir / LEARNING_CURVE_FIGURE, **curve)
