"""A toy architecture for the registry tests: a ridge fit of a label on composition fractions.

It is what a plugin package would ship: task functions with the program's signature and an
``Architecture`` that an entry point in the group ``aiida_hpcai.architectures`` names. It imports no
aiida (``hpcai-model`` imports it on the "compute node"); torch only to write the checkpoint.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from aiida_hpcai.models.contract import (
    METADATA_FILE,
    METRICS_FILE,
    MISSING_LABEL,
    MODEL_FILE,
    MODELS_KEY,
    PREDICTIONS_FILE,
    STATUS_OK,
    STRUCTURES_FILE,
    SUMMARY_FILE,
    TaskError,
)
from aiida_hpcai.models.registry import Architecture

NAME = 'toy_linear'
SIZE = 101  # atomic numbers 0..100


def fractions(arrays) -> np.ndarray:
    out = np.zeros((len(arrays), SIZE))
    for index in range(len(arrays)):
        numbers = arrays.atoms_of(index)[0].astype(np.int64)
        out[index] = np.bincount(numbers, minlength=SIZE)[:SIZE] / max(len(numbers), 1)
    return out


def train(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    import torch

    from aiida_hpcai.models.checkpoint import new_checkpoint, save_checkpoint
    from aiida_hpcai.models.structure_io import read_npz

    arrays = read_npz(input_dir / STRUCTURES_FILE)
    target = config['target']
    if target not in arrays.labels:
        raise TaskError(MISSING_LABEL, f'no label {target!r}')
    x, y = fractions(arrays), arrays.labels[target]
    ridge = float(config.get('ridge', 1e-6))
    weight = np.linalg.solve(x.T @ x + ridge * np.eye(SIZE), x.T @ y)
    hyperparameters = {'model': {'ridge': ridge}, 'training': {}}
    metrics = {'train': {'mae': float(np.mean(np.abs(x @ weight - y)))}}
    units = config.get('units')
    checkpoint = new_checkpoint(
        NAME, hyperparameters, [{'weight': torch.as_tensor(weight)}], target=target, units=units, metrics=metrics
    )
    sha256 = save_checkpoint(checkpoint, output_dir / MODEL_FILE)
    metadata = {
        'architecture': NAME,
        'hyperparameters': hyperparameters,
        'target': target,
        'units': units,
        'metrics': metrics,
        'sha256': sha256,
    }
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata))
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics))
    (output_dir / 'weights.png').write_bytes(b'\x89PNG\r\n\x1a\n')  # a figure of its own (its content is no matter)


def predict(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    from aiida_hpcai.models.checkpoint import load_verified
    from aiida_hpcai.models.structure_io import read_npz

    start = time.perf_counter()
    checkpoints = [load_verified(entry, input_dir, NAME) for entry in config[MODELS_KEY]]
    arrays = read_npz(input_dir / STRUCTURES_FILE)
    x = fractions(arrays)
    rows = [x @ member['weight'].numpy() for checkpoint in checkpoints for member in checkpoint['members']]
    n = len(arrays)
    np.savez(
        output_dir / PREDICTIONS_FILE,
        mean=np.mean(rows, axis=0),
        sigma=np.std(rows, axis=0),
        status=np.full(n, STATUS_OK),
        reason=np.full(n, ''),
    )
    summary = {
        'target': checkpoints[0]['target'],
        'units': checkpoints[0]['units'],
        'n_structures': n,
        'n_ok': n,
        'n_failed': 0,
        'seconds': time.perf_counter() - start,
        'device': config.get('device', 'cpu'),
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary))


ARCHITECTURE = Architecture(
    name=NAME,
    tasks={'train': 'tests.toy_architecture:train', 'predict': 'tests.toy_architecture:predict'},
    train_parameters=frozenset({'target', 'units', 'ridge'}),
    checkpoint_keys=('target', 'units'),
    description='ridge fit on composition fractions (a test of the registry)',
)


def install(folder: pathlib.Path) -> pathlib.Path:
    """Make ``folder`` look like site-packages holding a package that registers this architecture (what pip
    writes for an entry point), and return it: put it on ``sys.path`` here and on ``PYTHONPATH`` for the job."""
    dist_info = folder / 'hpcai_toy_architecture-0.1.dist-info'
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / 'METADATA').write_text('Metadata-Version: 2.1\nName: hpcai-toy-architecture\nVersion: 0.1\n')
    (dist_info / 'entry_points.txt').write_text(f'[aiida_hpcai.architectures]\n{NAME} = {__name__}:ARCHITECTURE\n')
    return folder
