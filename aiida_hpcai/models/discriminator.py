"""The match discriminator: the probability that a generated crystal matches the ground truth of its composition.

A binary classifier on the CSP benchmark's question. The label of a generated structure is 1 when pymatgen's
``StructureMatcher`` at the CSP benchmark's tolerances (:data:`~aiida_hpcai.models.equicsp.metrics.MATCHER_SETTINGS`:
``stol=0.5, angle_tol=10, ltol=0.3``) matches it to the reference structure it was generated for (same id, same
composition), else 0 (:func:`label_samples`). The training data are EquiCSP samples for the compositions of a
dataset's training split (:func:`sample_and_label`; ``python -m aiida_hpcai.models.release discriminator-data``),
stored as a structure set with the 0/1 label ``match`` and ids ``<reference id>#<k>``.

The network is the Crysformer graph transformer (:mod:`.crysformer`, presets ``tiny``, ``cpu``, ``paper``) whose
one output per structure is the logit; it trains through the same training loop as the property models
(:func:`aiida_hpcai.models.training.train_ensemble` with the loss ``bce``: binary cross-entropy on the raw 0/1
label, no element reference, no standardisation; early stopping on the validation cross-entropy). The
probabilities are calibrated by temperature scaling on the validation split (:func:`fit_temperature`:
``p = sigmoid(logit / T)``, T minimising the validation log loss); the train task reports the expected
calibration error before and after (:func:`expected_calibration_error`) and draws the reliability diagram
(``reliability.png``).

By default (``split`` as fractions) the split is by composition group, the id before ``#``: the samples of
one reference never sit in two splits, so the validation and test figures are on compositions the classifier
has not seen.

Program tasks (architecture ``discriminator`` of :mod:`.registry`):

- ``train``: ``structures.npz`` with the 0/1 label the config's ``target`` names (``match``); writes
  ``model.pt``, ``metadata.json``, ``metrics.json`` (per split: accuracy, log loss, Brier score, ROC AUC, ECE
  before and after calibration), ``learning_curve.png`` and ``reliability.png``.
- ``predict``: the predictions file of the property models with the calibrated probability as ``mean``;
  ``sigma`` is the spread (standard deviation) of the members' calibrated probabilities, NaN for a single
  member (no MC dropout: the probability is already the model's statement of its uncertainty).

Pure torch / numpy / pymatgen: no aiida import.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from .contract import (
    INCOMPATIBLE_MODELS,
    LEARNING_CURVE_FIGURE,
    METADATA_FILE,
    METRICS_FILE,
    MISSING_LABEL,
    MODEL_FILE,
    PARENT_KEY,
    STRUCTURES_FILE,
    TaskError,
)
from .inference import EnsemblePredictor
from .structure_io import StructureArrays

ARCHITECTURE = 'discriminator'
MATCH_LABEL = 'match'
RELIABILITY_FIGURE = 'reliability.png'
DEFAULT_BINS = 10
TEMPERATURE_BOUNDS = (0.02, 50.0)
GROUP_SEPARATOR = '#'  # a sample's id: <reference id>#<k>


# -- labels --------------------------------------------------------------------------------------
def label_samples(generated: Sequence, references: Sequence, **tolerances) -> np.ndarray:
    """1.0 where ``generated[i]`` (a pymatgen Structure, or None for an invalid sample) matches ``references[i]``
    by StructureMatcher at the CSP benchmark's tolerances (``tolerances`` override them), else 0.0."""
    from .equicsp.metrics import match_rate_and_rmse

    found = match_rate_and_rmse(list(generated), list(references), **tolerances)['rms_dist']
    return np.array([0.0 if distance is None else 1.0 for distance in found])


def sample_and_label(
    sampler,
    references: StructureArrays,
    samples_per_structure: int = 1,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[StructureArrays, dict]:
    """Sample ``samples_per_structure`` crystals of each reference's composition (its cell's atoms) with an
    :class:`~aiida_hpcai.models.equicsp.generation.EquiCSPSampler` and label each by :func:`label_samples`
    against that reference. Returns the valid samples (ids ``<reference id>#<k>``, label ``match``) and counts:
    references skipped (an element the generator does not know, more atoms than it was trained on), samples,
    invalid samples per reason, matches. Deterministic for a seed and batch size."""
    from pymatgen.core.periodic_table import Element

    from .equicsp.metrics import checked_structures
    from .structure_io import SkippedRow, from_pymatgen

    lookup = {Element(symbol).Z: index for index, symbol in enumerate(sampler.elements)}
    kept, skipped_references = [], collections.Counter()
    for index in range(len(references)):
        numbers = references.atoms_of(index)[0]
        if not set(numbers.tolist()) <= set(lookup):
            skipped_references['unknown element'] += 1
        elif len(numbers) > sampler.max_atoms:
            skipped_references['too many atoms'] += 1
        else:
            kept.append(index)
    owners = [(index, k) for index in kept for k in range(samples_per_structure)]
    chunks = range(0, len(owners), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc='sampling and matching', unit=' batches')
    structures, references_of, reasons = [], [], collections.Counter()
    labels = []
    for chunk, start in enumerate(chunks):
        batch = owners[start : start + batch_size]
        num_atoms = [int(references.natoms[index]) for index, _ in batch]
        types = [np.array([lookup[int(z)] for z in references.atoms_of(index)[0]]) for index, _ in batch]
        crystals = sampler.sample(num_atoms, types, steps=steps, seed=seed + chunk, batch_size=batch_size)
        generated, why = checked_structures(crystals)
        truth = [references.to_pymatgen(index) for index, _ in batch]
        labels.extend(label_samples(generated, truth).tolist())
        structures.extend(generated)
        references_of.extend(batch)
        reasons.update(reason for reason in why if reason is not None)
    valid = [n for n, structure in enumerate(structures) if structure is not None]
    refused: list[SkippedRow] = []
    arrays = from_pymatgen(
        [structures[n] for n in valid],
        ids=[f'{references.ids[references_of[n][0]]}{GROUP_SEPARATOR}{references_of[n][1]}' for n in valid],
        labels={MATCH_LABEL: [labels[n] for n in valid]},
        skipped=refused,
    )
    matched = int(np.sum(labels))
    stats = {
        'n_references': len(kept),
        'skipped_references': dict(skipped_references),
        'samples_per_structure': samples_per_structure,
        'n_samples': len(owners),
        'invalid': dict(reasons),
        'refused_by_validation': len(refused),
        'n_written': len(arrays),
        'n_matched': matched,
        'match_rate': matched / len(owners) if owners else math.nan,
        'positive_fraction_written': float(arrays.labels[MATCH_LABEL].mean()) if len(arrays) else math.nan,
    }
    return arrays, stats


def group_split(ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """A seeded train/val/test split of ``ids`` by composition group (the id before ``#``): every sample of one
    reference lands in the same split."""
    from .datasets import split_by_id

    ids = [str(i) for i in ids]
    groups = {identifier: identifier.split(GROUP_SEPARATOR)[0] for identifier in ids}
    by_group = split_by_id(sorted(set(groups.values())), tuple(fractions), seed)
    where = {group: name for name, members in by_group.items() for group in members}
    return {name: [i for i in ids if where[groups[i]] == name] for name in by_group}


# -- calibration ---------------------------------------------------------------------------------
def sigmoid(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -values))


def log_loss(logits, labels) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against 0/1 ``labels`` (computed from the logits, stable)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits)) if len(logits) else math.nan


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T in ``bounds`` that minimises the log loss of ``sigmoid(logits / T)`` (temperature scaling,
    Guo et al. 2017): T > 1 softens over-confident probabilities, T < 1 sharpens timid ones; the ranking (and so
    the accuracy at 0.5) is unchanged. 1.0 without data."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    if len(logits) == 0:
        return 1.0
    result = minimize_scalar(
        lambda log_t: log_loss(logits / math.exp(log_t), labels),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method='bounded',
        options={'xatol': 1e-6},
    )
    return float(math.exp(result.x))


def calibration_bins(probabilities, labels, bins: int = DEFAULT_BINS) -> dict:
    """Equal-width bins of the predicted probability on [0, 1]: per bin the count, the mean predicted probability
    (``confidence``) and the observed fraction of positives (``frequency``); NaN for an empty bin."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.float64)
    which = np.clip((probabilities * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid='ignore', divide='ignore'):
        confidence = np.bincount(which, probabilities, minlength=bins) / counts
        frequency = np.bincount(which, labels, minlength=bins) / counts
    return {
        'edges': np.linspace(0.0, 1.0, bins + 1).tolist(),
        'counts': counts.tolist(),
        'confidence': confidence.tolist(),
        'frequency': frequency.tolist(),
    }


def expected_calibration_error(probabilities, labels, bins: int = DEFAULT_BINS) -> float:
    """ECE of the positive class: ``sum_b n_b / N * |frequency_b - confidence_b|`` over equal-width bins."""
    table = calibration_bins(probabilities, labels, bins)
    counts = np.asarray(table['counts'], np.float64)
    if counts.sum() == 0:
        return math.nan
    gap = np.abs(np.asarray(table['frequency']) - np.asarray(table['confidence']))
    return float(np.sum(counts[counts > 0] * gap[counts > 0]) / counts.sum())


def roc_auc(scores, labels) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None with a single class."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positives, negatives]))
    return float(
        (ranks[: len(positives)].sum() - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives))
    )


def classification_metrics(logits, labels, temperature: float, bins: int = DEFAULT_BINS) -> dict:
    """Accuracy at 0.5, log loss, Brier score, ROC AUC and ECE of ``sigmoid(logits / temperature)``, and the log
    loss and ECE of the uncalibrated ``sigmoid(logits)``."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    probabilities = sigmoid(logits / temperature)
    return {
        'n': int(len(labels)),
        'positive_fraction': float(labels.mean()) if len(labels) else math.nan,
        'accuracy': float(np.mean((probabilities >= 0.5) == (labels > 0.5))) if len(labels) else math.nan,
        'log_loss': log_loss(logits / temperature, labels),
        'brier': float(np.mean((probabilities - labels) ** 2)) if len(labels) else math.nan,
        'roc_auc': roc_auc(logits, labels),
        'ece': expected_calibration_error(probabilities, labels, bins),
        'uncalibrated': {
            'log_loss': log_loss(logits, labels),
            'ece': expected_calibration_error(sigmoid(logits), labels, bins),
        },
    }


# -- prediction ----------------------------------------------------------------------------------
class DiscriminatorPredictor(EnsemblePredictor):
    """Calibrated match probabilities from one or more discriminator checkpoints: each checkpoint's members'
    mean logit divided by its temperature through the sigmoid, averaged over the checkpoints; sigma is the
    spread of the members' calibrated probabilities (NaN for a single member). Dropout stays off."""

    def __init__(self, checkpoints: list[dict], device: str = 'cpu'):
        super().__init__(checkpoints, device)
        self.temperatures = [float(c.get('temperature', 1.0)) for c in checkpoints]

    def resolve_method(self, method: str) -> str:
        return 'ensemble'  # the members' plain outputs: the logits

    def logits(self, graphs, batch_size: int | None = None) -> np.ndarray:
        """The members' logits, one row per member, (uncalibrated)."""
        return self.sample(graphs, batch_size, 'ensemble')

    def predict_graphs(self, graphs, batch_size=None, method='ensemble', mc_samples=10):
        if not graphs:
            return np.zeros(0), np.zeros(0)
        rows = self.logits(graphs, batch_size)
        sizes = np.array([len(group.states) for group in self.groups])
        starts = np.concatenate([[0], np.cumsum(sizes)])
        per_checkpoint = [
            sigmoid(rows[start:stop].mean(axis=0) / temperature)
            for start, stop, temperature in zip(starts[:-1], starts[1:], self.temperatures)
        ]
        members = sigmoid(rows / np.repeat(self.temperatures, sizes)[:, None])
        sigma = members.std(axis=0) if len(rows) > 1 else np.full(len(graphs), np.nan)
        return np.mean(per_checkpoint, axis=0), sigma


def run_predict(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    """``hpcai-model predict`` of discriminator checkpoints: the calibrated match probability as ``mean``."""
    from .inference import run_predict as predict_task

    predict_task(config, input_dir, output_dir, architecture=ARCHITECTURE, predictor_class=DiscriminatorPredictor)


# -- training ------------------------------------------------------------------------------------
def finalize_discriminator(
    members: list[dict],
    histories: list[list],
    model_config,
    config,
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
    bins: int = DEFAULT_BINS,
) -> tuple[dict, dict]:
    """The ``finalize`` of :func:`~aiida_hpcai.models.training.train_ensemble` for a discriminator: the temperature
    fitted on the validation split, metrics per split, then model.pt, metadata.json, metrics.json,
    learning_curve.png and reliability.png in ``output_dir``."""
    from . import plots
    from .checkpoint import id_digest, new_checkpoint, save_checkpoint
    from .crysformer import Crysformer, count_parameters
    from .training import STATE_FILE

    output_dir = pathlib.Path(output_dir)
    training = config.to_dict()
    if member_training:
        training['members'] = member_training
    checkpoint = new_checkpoint(
        ARCHITECTURE,
        {'model': model_config.to_dict(), 'training': training},
        members,
        target=target,
        units=units,
        normalization={'mean': 0.0, 'std': 1.0},
        element_reference=None,
        temperature=1.0,
    )
    predictor = DiscriminatorPredictor([checkpoint], config.device)
    logits = {
        name: predictor.logits(d.graphs, config.batch_size).mean(axis=0)
        for name, d in data.items()
        if name in ('val', 'test') and d.graphs
    }
    temperature = fit_temperature(logits['val'], data['val'].raw)
    metrics = {
        name: classification_metrics(values, data[name].raw, temperature, bins) for name, values in logits.items()
    }
    curves = {}
    for name, values in logits.items():
        for calibrated, scale in (('uncalibrated', 1.0), (f'T = {temperature:.3g}', temperature)):
            probabilities = sigmoid(values / scale)
            curves[f'{name}, {calibrated}'] = {
                **calibration_bins(probabilities, data[name].raw, bins),
                'ece': expected_calibration_error(probabilities, data[name].raw, bins),
            }
    checkpoint.update(
        temperature=temperature,
        metrics={name: metrics[name] for name in metrics},
        split={name: id_digest(d.ids) for name, d in data.items()},
        dataset=dict(dataset or {}),
    )
    sha = save_checkpoint(checkpoint, output_dir / MODEL_FILE)
    everything = {
        **metrics,
        'temperature': temperature,
        'calibration_bins': bins,
        'reliability': curves,
        'history': histories,
        'training_seconds': training_seconds,
        'n_parameters': count_parameters(Crysformer(model_config)),
        'n_structures': {name: len(d.graphs) for name, d in data.items()},
        'graph_failures': failures,
    }
    metadata = {
        'architecture': ARCHITECTURE,
        'hyperparameters': checkpoint['hyperparameters'],
        'target': target,
        'units': units,
        'metrics': checkpoint['metrics'],
        'temperature': temperature,
        'sha256': sha,
        'n_members': len(members),
        'dataset': checkpoint['dataset'],
        'split': checkpoint['split'],
    }
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    (output_dir / METRICS_FILE).write_text(json.dumps(everything, indent=2))
    plots.learning_curve(
        histories,
        output_dir / LEARNING_CURVE_FIGURE,
        metric='val_bce',
        metric_label='validation cross-entropy',
        train_label='train cross-entropy',
    )
    plots.reliability_diagram(
        {name: curve for name, curve in curves.items() if name.startswith('val')},
        output_dir / RELIABILITY_FIGURE,
        title=f'validation split (n = {len(data["val"].graphs)})',
        label=target,
    )
    state_path = output_dir / STATE_FILE
    if state_path.exists():
        state_path.unlink()
    return checkpoint, everything


def run_train(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    """``hpcai-model train`` of a discriminator: the Crysformer training loop with the loss ``bce`` on the 0/1 label
    ``target`` (default ``match``), split by composition group unless the config lists ids, then calibrated."""
    from .checkpoint import load_verified
    from .structure_io import read_npz
    from .training import _TRAINING_KEYS, split_from_config, train_ensemble

    input_dir, output_dir = pathlib.Path(input_dir), pathlib.Path(output_dir)
    target = config.get('target') or MATCH_LABEL
    arrays = read_npz(input_dir / STRUCTURES_FILE)
    if target not in arrays.labels:
        raise TaskError(MISSING_LABEL, f'structures.npz has no label {target!r} (labels: {sorted(arrays.labels)})')
    labelled = np.nonzero(np.isfinite(arrays.labels[target]))[0]
    if len(labelled) == 0:
        raise TaskError(MISSING_LABEL, f'no structure has a finite {target!r} label')
    values = arrays.labels[target][labelled]
    if not np.all((values == 0.0) | (values == 1.0)):
        raise TaskError(MISSING_LABEL, f'the label {target!r} must be 0 or 1, found {sorted(set(values.tolist()))[:5]}')
    arrays = arrays.subset(labelled)
    split = config.get('split') or {'fractions': [0.8, 0.1, 0.1], 'seed': 0}
    if 'train' not in split:
        split = group_split(arrays.ids, split.get('fractions', (0.8, 0.1, 0.1)), int(split.get('seed', 0)))
    indices = split_from_config(arrays, split)
    parent = load_verified(config[PARENT_KEY], input_dir, ARCHITECTURE) if config.get(PARENT_KEY) else None
    training = {key: config[key] for key in _TRAINING_KEYS if key in config}
    training.setdefault('progress', False)
    training.update(loss='bce', element_reference=False)
    try:
        train_ensemble(
            arrays,
            target,
            indices,
            output_dir,
            model_config=config.get('model_config', 'cpu'),
            training=training,
            units='',
            parent=parent,
            dataset={
                'name': config.get('dataset_name', STRUCTURES_FILE),
                'n_structures': len(arrays),
                'positive_fraction': float(arrays.labels[target].mean()),
                'formulae_sha256': arrays.formulae_digest(),
            },
            finalize=functools.partial(finalize_discriminator, bins=int(config.get('calibration_bins', DEFAULT_BINS))),
        )
    except ValueError as exc:
        if 'parent predicts' in str(exc):
            raise TaskError(INCOMPATIBLE_MODELS, str(exc)) from exc
        raise
