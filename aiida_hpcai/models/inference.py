"""Prediction with Crysformer ensembles, and the ``hpcai-model predict`` task.

Several checkpoint files can be pooled into one ensemble: each file keeps its own target
normalisation and element reference, so members are de-standardised per file and then pooled.
All files must predict the same target in the same units.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
import torch

from .checkpoint import load_checkpoint, load_verified, model_config_of
from .contract import (
    INCOMPATIBLE_MODELS,
    INVALID_CONFIG,
    MODELS_KEY,
    NAN_OUTPUT,
    PREDICTIONS_FILE,
    STATUS_FAILED,
    STATUS_OK,
    STRUCTURES_FILE,
    SUMMARY_FILE,
    TaskError,
    default_batch_size,
)
from .crysformer import Crysformer, enable_mc_dropout
from .graph import GraphError, collate, neighbour_graph
from .structure_io import InvalidStructure, StructureArrays, read_npz, validate_atoms
from .uncertainty import MC_DROPOUT_METHODS, UNCERTAINTY_METHODS, spread

#: The reason of a structure the model evaluated but gave no finite value.
NOT_FINITE = 'prediction is not finite'


class IncompatibleModels(ValueError):
    """Checkpoints that cannot be pooled (different targets or units)."""


def element_reference_offsets(numbers_per_structure, reference: dict | None) -> np.ndarray:
    """``sum_Z fraction_Z * coefficient_Z`` per structure (0 without a reference)."""
    if not reference:
        return np.zeros(len(numbers_per_structure))
    coefficients = np.asarray(reference['coefficients'], dtype=np.float64)
    out = np.empty(len(numbers_per_structure))
    for index, numbers in enumerate(numbers_per_structure):
        numbers = np.asarray(numbers, dtype=np.int64)
        valid = numbers < len(coefficients)
        out[index] = coefficients[numbers[valid]].sum() / max(len(numbers), 1)
    return out


@dataclasses.dataclass
class _MemberGroup:
    model: Crysformer  # shared by every group of the same architecture, see EnsemblePredictor
    states: list[dict]  # the members' parameters
    normalization: dict
    element_reference: dict | None
    sigma_scale: dict


class EnsemblePredictor:
    """Mean and sigma from the pooled members of one or more checkpoints.

    Members of one architecture are evaluated by a single network that loads each member's
    parameters in turn: building a network (e3nn generates code for every layer) takes about
    0.2 s, loading a member's parameters into it a few milliseconds."""

    def __init__(self, checkpoints: list[dict], device: str = 'cpu'):
        if not checkpoints:
            raise ValueError('no checkpoint given')
        targets = {(c['target'], c['units']) for c in checkpoints}
        if len(targets) > 1:
            raise IncompatibleModels(f'checkpoints predict different targets/units: {sorted(targets)}')
        self.target, self.units = targets.pop()
        self.device = torch.device(device)
        networks: dict[str, Crysformer] = {}
        self.groups = []
        for checkpoint in checkpoints:
            config = model_config_of(checkpoint)
            key = json.dumps(config.to_dict(), sort_keys=True)
            if key not in networks:
                networks[key] = Crysformer(config).to(self.device).eval()
            states = [
                {name: tensor.to(self.device) for name, tensor in state.items()} for state in checkpoint['members']
            ]
            for state in states:
                networks[key].load_state_dict(state)  # fails here, not mid-prediction, on a mismatch
            self.groups.append(
                _MemberGroup(
                    networks[key],
                    states,
                    checkpoint['normalization'],
                    checkpoint.get('element_reference'),
                    dict(checkpoint.get('sigma_scale') or {}),
                )
            )
        bounds = {c.get('lower_bound') for c in checkpoints} - {None}
        self.lower_bound = max(bounds) if bounds else None
        self.max_atomic_number = min(g.model.max_atomic_number for g in self.groups)
        self.num_neighbours = {g.model.config.num_neighbours for g in self.groups}

    @classmethod
    def from_files(cls, paths, device: str = 'cpu') -> EnsemblePredictor:
        return cls([load_checkpoint(p) for p in paths], device)

    @property
    def num_members(self) -> int:
        return sum(len(g.states) for g in self.groups)

    def sigma_scale(self, method: str) -> float:
        weights = [len(g.states) for g in self.groups]
        scales = [float(g.sigma_scale.get(method, 1.0)) for g in self.groups]
        return float(np.average(scales, weights=weights))

    def resolve_method(self, method: str) -> str:
        """An ensemble of one member has no spread: it falls back to MC dropout."""
        if method not in UNCERTAINTY_METHODS:
            raise ValueError(f'unknown uncertainty method {method!r}; use one of {UNCERTAINTY_METHODS}')
        return 'mc_dropout' if method == 'ensemble' and self.num_members < 2 else method

    @torch.no_grad()
    def sample(
        self, graphs, batch_size: int | None = None, method: str = 'ensemble', mc_samples: int = 10
    ) -> np.ndarray:
        """Predictions in physical units, shape (n_samples, n_graphs): one row per member (and
        per dropout sample with the MC-dropout methods). ``batch_size`` None: the device's default."""
        batch_size = batch_size or default_batch_size(self.device)
        rows = []
        numbers = [g.numbers for g in graphs]
        for group in self.groups:
            offset = element_reference_offsets(numbers, group.element_reference)
            mean, std = group.normalization['mean'], group.normalization['std']
            model = group.model
            for state in group.states:
                model.load_state_dict(state)
                repeats = mc_samples if method in MC_DROPOUT_METHODS else 1
                enable_mc_dropout(model, method in MC_DROPOUT_METHODS, readout_only=method == 'mc_dropout_readout')
                outputs = [np.empty(len(graphs)) for _ in range(repeats)]
                for start in range(0, len(graphs), batch_size):
                    batch = collate(graphs[start : start + batch_size]).to(self.device)
                    if method == 'mc_dropout_readout':
                        atom_scalars = model.atom_scalars(batch)
                        for repeat in range(repeats):
                            outputs[repeat][start : start + batch_size] = (
                                model.readout_mean(atom_scalars, batch).double().cpu().numpy()
                            )
                        continue
                    for repeat in range(repeats):
                        outputs[repeat][start : start + batch_size] = model(batch).double().cpu().numpy()
                model.eval()
                rows.extend(output * std + mean + offset for output in outputs)
        return np.stack(rows)

    def bounded(self, values: np.ndarray) -> np.ndarray:
        """``values`` raised to the target's physical lower bound, if it has one."""
        return values if self.lower_bound is None else np.maximum(values, self.lower_bound)

    def summarize(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point prediction and uncalibrated sigma of the rows that :meth:`sample` returns. With a lower
        bound the point prediction is the median of the predictive distribution censored at the bound,
        max(mean, bound): the value with the least expected absolute error; sigma is the spread of the
        uncensored samples."""
        mean, sigma = spread(samples)
        return self.bounded(mean), sigma

    def predict_graphs(
        self, graphs, batch_size: int | None = None, method: str = 'ensemble', mc_samples: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        method = self.resolve_method(method)
        if not graphs:
            return np.zeros(0), np.zeros(0)
        mean, sigma = self.summarize(self.sample(graphs, batch_size, method, mc_samples))
        return mean, sigma * self.sigma_scale(method)

    def predict(
        self, arrays: StructureArrays, batch_size: int | None = None, method: str = 'ensemble', mc_samples: int = 10
    ) -> dict[str, np.ndarray]:
        """Predict every structure; those the model cannot handle are marked failed, with a reason."""
        n = len(arrays)
        status = np.full(n, STATUS_OK, dtype=object)
        reason = np.full(n, '', dtype=object)
        graphs, good = [], []
        k = max(self.num_neighbours)
        for index in range(n):
            numbers, positions, cell, pbc = arrays.atoms_of(index)
            if len(numbers) and (numbers.min() < 1 or numbers.max() > self.max_atomic_number):
                status[index], reason[index] = STATUS_FAILED, f'unknown element (Z outside 1..{self.max_atomic_number})'
                continue
            try:
                graph = neighbour_graph(numbers, positions, cell, pbc, num_neighbours=k)
                # the checks every other door applies; the graph's edges hold each atom's nearest neighbour
                validate_atoms(numbers, positions, cell, shortest_distance=float(graph.distances.min()))
            except GraphError as exc:
                status[index], reason[index] = STATUS_FAILED, f'no neighbour graph: {exc}'
                continue
            except InvalidStructure as exc:
                status[index], reason[index] = STATUS_FAILED, str(exc)
                continue
            graphs.append(graph)
            good.append(index)
        mean = np.full(n, np.nan)
        sigma = np.full(n, np.nan)
        if good:
            mean[good], sigma[good] = self.predict_graphs(graphs, batch_size, method, mc_samples)
        for index in good:
            if not np.isfinite(mean[index]):
                status[index], reason[index] = STATUS_FAILED, NOT_FINITE
        return {'mean': mean, 'sigma': sigma, 'status': status.astype(str), 'reason': reason.astype(str)}


def _resolve_device(requested: str) -> str:
    if requested.startswith('cuda') and not torch.cuda.is_available():
        print('hpcai-model: CUDA requested but not available; running on CPU')
        return 'cpu'
    return requested


def run_predict(
    config: dict,
    input_dir: pathlib.Path,
    output_dir: pathlib.Path,
    architecture: str = 'crysformer',
    predictor_class: type[EnsemblePredictor] = EnsemblePredictor,
) -> None:
    """``hpcai-model predict`` of Crysformer checkpoints: ensemble mean and sigma for every structure.
    An architecture built on Crysformer (the match discriminator) passes its name and its predictor class."""
    input_dir, output_dir = pathlib.Path(input_dir), pathlib.Path(output_dir)
    entries = config.get(MODELS_KEY) or []
    if not entries:
        raise TaskError(INVALID_CONFIG, 'config.json names no models')
    checkpoints = [load_verified(entry, input_dir, architecture) for entry in entries]
    device = _resolve_device(config.get('device', 'cpu'))
    start = time.perf_counter()
    try:
        predictor = predictor_class(checkpoints, device)
    except IncompatibleModels as exc:
        raise TaskError(INCOMPATIBLE_MODELS, str(exc)) from exc
    arrays = read_npz(input_dir / STRUCTURES_FILE)
    method = predictor.resolve_method(config.get('uncertainty', 'ensemble'))
    batch_size = config.get('batch_size')
    # MC-dropout draws come from torch's generator: seeded, the same config gives the same sigma.
    seed = int(config.get('seed', 0))
    torch.manual_seed(seed)
    result = predictor.predict(arrays, batch_size and int(batch_size), method, int(config.get('mc_samples', 10)))
    seconds = time.perf_counter() - start
    n_ok = int((result['status'] == STATUS_OK).sum())
    n_not_finite = int((result['reason'] == NOT_FINITE).sum())
    if n_not_finite and n_ok == 0:
        # A model that gives no finite value for any structure it evaluates is broken: no predictions are written
        # (structures it could not evaluate, such as unknown elements, are not its fault and are written).
        raise TaskError(NAN_OUTPUT, f'the model gave no finite value for any of the {n_not_finite} structures')
    np.savez(
        output_dir / PREDICTIONS_FILE,
        mean=result['mean'].astype(np.float64),
        sigma=result['sigma'].astype(np.float64),
        status=result['status'],
        reason=result['reason'],
    )
    summary = {
        'target': predictor.target,
        'units': predictor.units,
        'n_structures': len(arrays),
        'n_ok': n_ok,
        'n_failed': len(arrays) - n_ok,
        'seconds': seconds,
        'structures_per_second': len(arrays) / seconds if seconds > 0 else None,
        'device': device,
        'uncertainty': method,
        'n_members': predictor.num_members,
        'seed': seed,
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
