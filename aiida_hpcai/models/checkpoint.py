"""The Crysformer checkpoint: ONE ``torch.save`` file that can hold a whole ensemble.

Layout (a plain dict; only tensors, numbers, strings, lists and dicts, so that
``torch.load(..., weights_only=True)`` reads it without unpickling arbitrary objects)::

    format_version     int (FORMAT_VERSION)
    architecture       'crysformer'
    hyperparameters    {'model': <CrysformerConfig dict>, 'training': {...}}; a pool of members trained
                       with different options also lists each one's in training['members']
    target, units      e.g. 'formation_energy_per_atom', 'eV/atom'
    lower_bound        None or the target's physical lower bound (LOWER_BOUNDS, e.g. 0 eV for a
                       band gap): predicted means are never below it (absent in older files: None)
    members            [state_dict, ...]   one per ensemble member (same architecture)
    normalization      {'mean': float, 'std': float}   of the (residual) target on the train split
    element_reference  None or {'coefficients': [float] * 101, 'ridge_alpha': float}
                       (target = sum_Z fraction_Z * coefficient_Z + model output, de-standardised)
    sigma_scale        {'ensemble': float, 'mc_dropout': float, 'mc_dropout_readout': float}
                       recalibration factors from val (a method without one is uncalibrated: 1.0)
    metrics            {'val': {...}, 'test': {...}}
    split              {'train': {'count', 'sha256'}, 'val': ..., 'test': ...}  digests of id lists
    dataset            {'name', 'source', 'n_structures'}
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import torch

from .crysformer import Crysformer, CrysformerConfig

FORMAT_VERSION = 1
ARCHITECTURE = 'crysformer'
PRETRAINED_DIR = pathlib.Path(__file__).with_name('pretrained')
PRETRAINED_FILES = {
    'formation_energy_per_atom': 'crysformer_mp_formation_energy.pt',
    'band_gap': 'crysformer_mp_band_gap.pt',
}
# Physical lower bounds of targets: a band gap is never negative (about 40% of mp_cgcnn's are exactly 0)
LOWER_BOUNDS = {'band_gap': 0.0}
REQUIRED_KEYS = ('format_version', 'architecture', 'hyperparameters', 'target', 'units', 'members', 'normalization')


class CheckpointError(ValueError):
    """The file is not a Crysformer checkpoint this version can read."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def id_digest(ids) -> dict:
    """Count and sha256 of an id list (what a checkpoint records of its split)."""
    ids = [str(i) for i in ids]
    return {'count': len(ids), 'sha256': hashlib.sha256('\n'.join(ids).encode()).hexdigest()}


def make_checkpoint(
    members: list[dict],
    model_config: CrysformerConfig,
    target: str,
    units: str,
    normalization: dict,
    training: dict | None = None,
    element_reference: dict | None = None,
    sigma_scale: dict | None = None,
    metrics: dict | None = None,
    split: dict | None = None,
    dataset: dict | None = None,
) -> dict:
    return {
        'format_version': FORMAT_VERSION,
        'architecture': ARCHITECTURE,
        'hyperparameters': {'model': model_config.to_dict(), 'training': dict(training or {})},
        'target': target,
        'units': units,
        'lower_bound': LOWER_BOUNDS.get(target),
        'members': [{key: value.detach().cpu().clone() for key, value in state.items()} for state in members],
        'normalization': {'mean': float(normalization['mean']), 'std': float(normalization['std'])},
        'element_reference': element_reference,
        'sigma_scale': dict(sigma_scale or {'ensemble': 1.0, 'mc_dropout': 1.0, 'mc_dropout_readout': 1.0}),
        'metrics': metrics or {},
        'split': split or {},
        'dataset': dataset or {},
    }


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> str:
    """Write the checkpoint atomically; returns its sha256."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + '.partial')
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return sha256_file(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign/corrupt files
        raise CheckpointError(f'{path}: not a readable checkpoint ({exc})') from exc
    validate_checkpoint(checkpoint, str(path))
    return checkpoint


def validate_checkpoint(checkpoint, name: str = 'checkpoint') -> None:
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{name}: expected a dict')
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f'{name}: missing keys {missing}')
    if checkpoint['architecture'] != ARCHITECTURE:
        raise CheckpointError(f'{name}: architecture {checkpoint["architecture"]!r} is not {ARCHITECTURE!r}')
    if checkpoint['format_version'] > FORMAT_VERSION:
        raise CheckpointError(f'{name}: format version {checkpoint["format_version"]} is newer than this code')
    if not checkpoint['members']:
        raise CheckpointError(f'{name}: holds no ensemble members')


def model_config_of(checkpoint: dict) -> CrysformerConfig:
    return CrysformerConfig.from_dict(checkpoint['hyperparameters']['model'])


def build_members(checkpoint: dict, device: str | torch.device = 'cpu') -> list[Crysformer]:
    """Instantiate every ensemble member of a checkpoint (in evaluation mode)."""
    config = model_config_of(checkpoint)
    models = []
    for state in checkpoint['members']:
        model = Crysformer(config)
        model.load_state_dict(state)
        models.append(model.to(device).eval())
    return models


def pretrained_path(target: str = 'formation_energy_per_atom') -> pathlib.Path:
    """Path of the shipped pretrained model for ``target`` (see ``pretrained/README.md``)."""
    if target not in PRETRAINED_FILES:
        raise KeyError(f'no pretrained model for {target!r}; available: {sorted(PRETRAINED_FILES)}')
    path = PRETRAINED_DIR / PRETRAINED_FILES[target]
    if not path.exists():
        raise FileNotFoundError(f'{path} is missing from this installation')
    return path
