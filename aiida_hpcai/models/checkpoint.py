"""The checkpoint: ONE ``torch.save`` file that can hold a whole ensemble, of any registered architecture.

Layout (a plain dict; only tensors, numbers, strings, lists and dicts, so that
``torch.load(..., weights_only=True)`` reads it without unpickling arbitrary objects). Every
architecture's checkpoint holds the first four keys (:func:`new_checkpoint`) plus its registry
entry's ``checkpoint_keys``; a Crysformer checkpoint (:func:`make_checkpoint`) holds them all::

    format_version     int (FORMAT_VERSION)
    architecture       a name in :mod:`aiida_hpcai.models.registry`; a file without one is a
                       Crysformer checkpoint (written before other architectures existed)
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

This module imports torch only where a file is read or written, so that ``data/`` can look up the
shipped models' records (:func:`shipped_record`) without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import TYPE_CHECKING

from . import registry
from .contract import CHECKPOINT_MISMATCH, DEFAULT_ARCHITECTURE, TaskError

if TYPE_CHECKING:
    import torch

    from .crysformer import Crysformer, CrysformerConfig

FORMAT_VERSION = 1
# a checkpoint that names no architecture was written when Crysformer was the only one
LEGACY_ARCHITECTURE = DEFAULT_ARCHITECTURE
PRETRAINED_DIR = pathlib.Path(__file__).with_name('pretrained')
PRETRAINED_FILES = {
    'formation_energy_per_atom': 'crysformer_mp_formation_energy.pt',
    'band_gap': 'crysformer_mp_band_gap.pt',
    # EquiCSP generators, by training set (see pretrained/README.md)
    'equicsp_mp20': 'equicsp_mp20.pt',
    'equicsp_perov_5': 'equicsp_perov_5.pt',
    'equicsp_carbon_24': 'equicsp_carbon_24.pt',
    # match discriminators, by the generator and training set of their samples
    'discriminator_mp20': 'discriminator_mp20.pt',
}
DEFAULT_GENERATOR = 'equicsp_mp20'  # sampled when no generator is named: any composition of MP's elements
DEFAULT_DISCRIMINATOR = 'discriminator_mp20'  # trained on samples of DEFAULT_GENERATOR
# Physical lower bounds of targets: a band gap is never negative (about 40% of mp_cgcnn's are exactly 0)
LOWER_BOUNDS = {'band_gap': 0.0}
REQUIRED_KEYS = ('format_version', 'architecture', 'hyperparameters', 'members')


class CheckpointError(ValueError):
    """The file is not a checkpoint this version can read."""


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


def weights_digest(state: dict) -> str:
    """sha256 of a member's tensors (names, dtypes, shapes and values), whatever file or dict they came from."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f'{key}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def new_checkpoint(architecture: str, hyperparameters: dict, members: list[dict], **fields) -> dict:
    """A checkpoint of any architecture: the generic keys, the members' tensors copied to the CPU, then ``fields``."""
    return {
        'format_version': FORMAT_VERSION,
        'architecture': architecture,
        'hyperparameters': hyperparameters,
        'members': [{key: value.detach().cpu().clone() for key, value in state.items()} for state in members],
        **fields,
    }


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
    return new_checkpoint(
        'crysformer',
        {'model': model_config.to_dict(), 'training': dict(training or {})},
        members,
        target=target,
        units=units,
        lower_bound=LOWER_BOUNDS.get(target),
        normalization={'mean': float(normalization['mean']), 'std': float(normalization['std'])},
        element_reference=element_reference,
        sigma_scale=dict(sigma_scale or {'ensemble': 1.0, 'mc_dropout': 1.0, 'mc_dropout_readout': 1.0}),
        metrics=metrics or {},
        split=split or {},
        dataset=dataset or {},
    )


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> str:
    """Write the checkpoint atomically; returns its sha256."""
    import torch

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + '.partial')
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return sha256_file(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    import torch

    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign/corrupt files
        raise CheckpointError(f'{path}: not a readable checkpoint ({exc})') from exc
    validate_checkpoint(checkpoint, str(path))
    return checkpoint


def validate_checkpoint(checkpoint, name: str = 'checkpoint') -> None:
    """Check a loaded checkpoint; one that names no architecture is given :data:`LEGACY_ARCHITECTURE`."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{name}: expected a dict')
    checkpoint.setdefault('architecture', LEGACY_ARCHITECTURE)
    try:
        architecture = registry.get(checkpoint['architecture'])
    except registry.UnknownArchitecture as exc:
        raise CheckpointError(f'{name}: {exc}') from exc
    missing = [key for key in REQUIRED_KEYS + architecture.checkpoint_keys if key not in checkpoint]
    if missing:
        raise CheckpointError(f'{name}: missing keys {missing}')
    if checkpoint['format_version'] > FORMAT_VERSION:
        raise CheckpointError(f'{name}: format version {checkpoint["format_version"]} is newer than this code')
    if not checkpoint['members']:
        raise CheckpointError(f'{name}: holds no ensemble members')


# checkpoints the program loaded to read their architecture (:func:`peek_architecture`), each handed over to
# the task's own load_verified of the same entry: a task loads each file once
_PEEKED: dict[tuple[str, str | None], dict] = {}


def load_verified(entry: dict, input_dir: pathlib.Path, architecture: str | None = None) -> dict:
    """Load a checkpoint named in a task config (``{"file": ..., "sha256": ...}``), checking its digest and,
    if given, that it is of ``architecture``; any failure is a ``checkpoint_mismatch`` TaskError."""
    path = pathlib.Path(input_dir) / entry['file']
    checkpoint = _PEEKED.pop(_peek_key(path, entry), None)
    if checkpoint is None:
        checkpoint = _load_entry(path, entry)
    if architecture is not None and checkpoint['architecture'] != architecture:
        raise TaskError(
            CHECKPOINT_MISMATCH, f'{entry["file"]} is a {checkpoint["architecture"]!r} checkpoint, not {architecture!r}'
        )
    return checkpoint


def peek_architecture(entry: dict, input_dir: pathlib.Path) -> str:
    """The architecture of a checkpoint named in a task config (verified as :func:`load_verified` does); the
    loaded checkpoint is kept for the task's :func:`load_verified` of the same entry."""
    path = pathlib.Path(input_dir) / entry['file']
    checkpoint = _load_entry(path, entry)
    _PEEKED[_peek_key(path, entry)] = checkpoint
    return checkpoint['architecture']


def _peek_key(path: pathlib.Path, entry: dict) -> tuple[str, str | None]:
    return str(path.resolve()), entry.get('sha256')


def _load_entry(path: pathlib.Path, entry: dict) -> dict:
    if not path.is_file():
        raise TaskError(CHECKPOINT_MISMATCH, f'checkpoint file {entry["file"]} not found in the input folder')
    expected = entry.get('sha256')
    if expected:
        actual = sha256_file(path)
        if actual != expected:
            raise TaskError(CHECKPOINT_MISMATCH, f'{entry["file"]}: sha256 {actual} differs from {expected}')
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise TaskError(CHECKPOINT_MISMATCH, str(exc)) from exc


def model_config_of(checkpoint: dict) -> CrysformerConfig:
    from .crysformer import CrysformerConfig

    return CrysformerConfig.from_dict(checkpoint['hyperparameters']['model'])


def build_members(checkpoint: dict, device: str | torch.device = 'cpu') -> list[Crysformer]:
    """Instantiate every ensemble member of a Crysformer checkpoint (in evaluation mode)."""
    from .crysformer import Crysformer

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


def pretrained_record(target: str = 'formation_energy_per_atom') -> dict:
    """The JSON record shipped beside the pretrained model of ``target`` (sha256, architecture, target, units,
    hyperparameters, metrics, data, split, command, history; see ``pretrained/README.md``)."""
    return json.loads(pretrained_path(target).with_suffix('.json').read_text())


def shipped_record(sha256: str) -> dict | None:
    """The record of the shipped pretrained model whose file has this sha256, or None."""
    for filename in PRETRAINED_FILES.values():
        path = (PRETRAINED_DIR / filename).with_suffix('.json')
        record = json.loads(path.read_text()) if path.is_file() else {}
        if record.get('sha256') == sha256:
            return record
    return None
