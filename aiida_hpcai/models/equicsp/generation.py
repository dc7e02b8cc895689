"""Sampling crystals from an EquiCSP checkpoint, and the ``hpcai-model generate`` task.

Modes: **CSP** (``compositions``: a formula per cell, e.g. ``Fe2O3`` is five atoms, with the
number of samples of each) and **ab initio** (``n_samples``; the atom count N and the types are
sampled). N comes from one of EquiCSP's strategies: ``dataset`` (the training set's distribution of
atom counts, kept in the checkpoint), ``uniform`` (1 .. the model's ``max_atoms``) or ``hybrid``
(the first ``switch`` samples from the dataset distribution, the rest uniform).

Every sample gets the id ``<formula>#<k>`` (the cell's Hill formula, k counting that formula's
samples from 0) and is checked: ``nan`` (NaN or infinity in the sampler's state), ``non_positive_volume``
(lattice angles that admit no cell) and ``too_close`` (two atoms, or an atom and its own image, closer
than 0.5 Angstrom) make it invalid.

Task files (input: ``config.json`` and the checkpoint it names in ``models``; output):

- ``structures.npz``: the valid samples, in the order sampled;
- ``invalid.json``: ``[{"id", "reason", "message"}, ...]`` for the others;
- ``summary.json``: mode, seed, steps, counts (requested, valid, invalid per reason), seconds,
  structures per hour, device.

Config keys: ``models`` (one checkpoint entry), ``mode`` (``csp``/``abinitio``), ``compositions``
(``{formula: n_samples}``, CSP), ``n_samples``, ``n_strategy``, ``switch`` (ab initio), ``steps``
(default: the model's training steps), ``step_lr`` (Langevin corrector step, default 1e-5), ``seed``,
``batch_size``, ``device``, ``precision`` (of the denoiser's products: ``float32``, the default, or ``bfloat16``); ab initio only: ``elements`` (the only elements the samples may hold) and
``required_elements`` (elements every sample holds; default all of ``elements``, so ``elements: ["Fe", "O"]``
alone is the Fe-O system: Fe and O both present, nothing else; ``[]`` lets a sample hold any of ``elements``;
without ``elements`` the required ones come with any of the model's elements). Every sample then has at least
as many atoms as required elements.
"""

from __future__ import annotations

import collections
import json
import pathlib
import time

import numpy as np
import torch

from ..contract import GENERATE_MODES as MODES
from ..contract import INVALID_FILE, N_STRATEGIES, SAMPLING_PRECISIONS
from ..diffusion import LatticeScaler, Schedules, TypeRestriction, parameters_to_cell, sample
from ..structure_io import MIN_DISTANCE, StructureArrays, _shortest_periodic_distance, write_npz
from .network import EquiCSPConfig, EquiCSPDenoiser

INVALID_REASONS = {
    'nan': 'NaN or infinite values during sampling',
    'non_positive_volume': 'the lattice angles admit no cell of positive volume',
    'too_close': f'two atoms closer than {MIN_DISTANCE} Angstrom',
}


class EquiCSPSampler:
    """A loaded EquiCSP checkpoint, ready to sample crystals."""

    def __init__(self, checkpoint: dict, device: str = 'cpu', precision: str = 'float32'):
        if precision not in SAMPLING_PRECISIONS:
            raise ValueError(f'unknown sampling precision {precision!r}; known: {list(SAMPLING_PRECISIONS)}')
        self.checkpoint = checkpoint
        self.precision = precision
        self.config = EquiCSPConfig.from_dict(checkpoint['hyperparameters']['model'])
        self.elements: list[str] = list(checkpoint['elements'])
        self.max_atoms = int(checkpoint['max_atoms'])
        self.num_atoms_counts = np.asarray(checkpoint['num_atoms_counts'], dtype=np.float64)
        self.modes = tuple(checkpoint['modes'])
        self.scaler = LatticeScaler(**checkpoint['lattice_scaler'])
        self.device = device
        self.model = EquiCSPDenoiser(self.config, len(self.elements))
        self.model.load_state_dict(checkpoint['members'][0])
        self.model.to(device).eval()
        self.schedules = Schedules(self.config.timesteps, self.config.sigma_begin, self.config.sigma_end)

    def sample(
        self,
        num_atoms: list[int],
        types: list[np.ndarray] | None = None,
        steps: int | None = None,
        step_lr: float = 1e-5,
        seed: int = 0,
        batch_size: int = 64,
        restriction: TypeRestriction | None = None,
    ) -> list[dict]:
        """One crystal per entry of ``num_atoms`` (with ``types``, element indices, for CSP; ab initio within
        ``restriction`` when given): a list of ``{'numbers', 'frac', 'cell'}`` in the order asked.
        Deterministic for a seed and batch size."""
        generator = torch.Generator().manual_seed(int(seed))
        atomic_numbers = np.array([_atomic_number(symbol) for symbol in self.elements])
        out = []
        for start in range(0, len(num_atoms), batch_size):
            counts = torch.as_tensor(num_atoms[start : start + batch_size], dtype=torch.long)
            given = None if types is None else torch.as_tensor(np.concatenate(types[start : start + batch_size]))
            result = sample(
                self.model,
                counts,
                self.schedules,
                self.scaler,
                len(self.elements),
                types=given,
                steps=steps or self.config.timesteps,
                step_lr=step_lr,
                generator=generator,
                device=self.device,
                restriction=restriction,
                precision=self.precision,
            )
            frac = result['frac'].double().cpu().numpy()
            state_finite = torch.isfinite(result['lattice']).all(-1).cpu().numpy()
            cells = parameters_to_cell(
                result['lengths'].double().cpu().numpy(), result['angles'].double().cpu().numpy()
            )
            element_index = result['types'].cpu().numpy()
            offsets = np.concatenate([[0], np.cumsum(counts.numpy())])
            for row in range(len(counts)):
                atoms = slice(offsets[row], offsets[row + 1])
                out.append(
                    {
                        'numbers': atomic_numbers[element_index[atoms]],
                        'frac': frac[atoms] if state_finite[row] else np.full_like(frac[atoms], np.nan),
                        'cell': cells[row],
                    }
                )
        return out


def check_crystal(numbers: np.ndarray, frac: np.ndarray, cell: np.ndarray) -> tuple[str, str] | None:
    """None for a crystal, else ``(reason, message)`` with a reason of :data:`INVALID_REASONS`."""
    if not np.all(np.isfinite(frac)):
        return 'nan', 'NaN or infinite coordinates or lattice'
    volume = float(np.linalg.det(cell)) if np.all(np.isfinite(cell)) else float('nan')
    if not volume > 0:
        return 'non_positive_volume', f'volume {volume:.3g} A^3'
    shortest = _shortest_periodic_distance(frac @ cell, cell)
    if shortest < MIN_DISTANCE:
        return 'too_close', f'two atoms {shortest:.3f} A apart'
    return None


def atom_counts(
    n_samples: int,
    strategy: str,
    counts: np.ndarray,
    max_atoms: int,
    rng: np.random.Generator,
    switch: int | None = None,
    min_atoms: int = 1,
) -> list[int]:
    """Atom counts of ``n_samples`` ab initio samples by one of :data:`N_STRATEGIES`, none below ``min_atoms``
    (the dataset's distribution above it, renormalised; uniform where the dataset has no cell that large)."""
    if strategy not in N_STRATEGIES:
        raise ValueError(f'unknown N strategy {strategy!r}; known: {list(N_STRATEGIES)}')
    if not 1 <= min_atoms <= max_atoms:
        raise ValueError(f'cannot draw cells of at least {min_atoms} atoms from 1 .. {max_atoms}')
    sizes = np.arange(len(counts))
    weights = np.where(sizes >= min_atoms, counts, 0.0)
    if not weights.sum():
        weights = ((sizes >= min_atoms) & (sizes <= max_atoms)).astype(float)
    from_dataset = rng.choice(sizes, size=n_samples, p=weights / weights.sum())
    uniform = rng.integers(min_atoms, max_atoms + 1, size=n_samples)
    if strategy == 'dataset':
        chosen = from_dataset
    elif strategy == 'uniform':
        chosen = uniform
    else:
        switch = n_samples // 2 if switch is None else int(switch)
        chosen = np.where(np.arange(n_samples) < switch, from_dataset, uniform)
    return [int(n) for n in chosen]


def _atomic_number(symbol: str) -> int:
    from pymatgen.core.periodic_table import Element

    return Element(symbol).Z


def _csp_plan(compositions: dict, sampler: EquiCSPSampler) -> tuple[list[int], list[np.ndarray]]:
    """Atom counts and element indices of every CSP sample asked; TaskErrors for what the model cannot do."""
    from pymatgen.core import Composition

    from ..contract import INVALID_CONFIG, TOO_MANY_ATOMS, UNKNOWN_ELEMENT, TaskError

    if not isinstance(compositions, dict):
        raise TaskError(INVALID_CONFIG, '"compositions" must map formulae to numbers of samples')
    lookup = {symbol: n for n, symbol in enumerate(sampler.elements)}
    num_atoms, types = [], []
    for formula, count in compositions.items():
        try:
            composition = Composition(formula)
            amounts = {str(element): amount for element, amount in composition.get_el_amt_dict().items()}
        except Exception as exc:  # noqa: BLE001 - pymatgen raises several types for a bad formula
            raise TaskError(INVALID_CONFIG, f'cannot read the formula {formula!r}: {exc}') from exc
        if not amounts or any(abs(a - round(a)) > 1e-8 or a < 1 for a in amounts.values()):
            raise TaskError(INVALID_CONFIG, f'{formula!r}: a cell needs whole numbers of atoms')
        unknown = sorted(set(amounts) - set(lookup))
        if unknown:
            raise TaskError(
                UNKNOWN_ELEMENT, f"{formula}: {', '.join(unknown)} not among the model's elements {sampler.elements}"
            )
        size = int(sum(round(a) for a in amounts.values()))
        if size > sampler.max_atoms:
            raise TaskError(
                TOO_MANY_ATOMS, f'{formula} has {size} atoms; the model was trained on at most {sampler.max_atoms}'
            )
        if not isinstance(count, int) or count < 0:
            raise TaskError(INVALID_CONFIG, f'{formula}: the number of samples must be a whole number >= 0')
        cell_types = np.concatenate([np.full(int(round(a)), lookup[s]) for s, a in sorted(amounts.items())])
        num_atoms += [size] * count
        types += [cell_types] * count
    return num_atoms, types


def _restriction(config: dict, sampler: EquiCSPSampler) -> TypeRestriction | None:
    """The ab initio type restriction of ``elements`` and ``required_elements``; TaskErrors for what cannot be."""
    from ..contract import INVALID_CONFIG, TOO_MANY_ATOMS, UNKNOWN_ELEMENT, TaskError

    if 'elements' not in config and 'required_elements' not in config:
        return None
    lists = {}
    for key in ('elements', 'required_elements'):
        value = config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(symbol, str) for symbol in value):
            raise TaskError(INVALID_CONFIG, f'"{key}" must be a list of element symbols, not {value!r}')
        lists[key] = value
    if 'elements' in config and not lists['elements']:
        raise TaskError(INVALID_CONFIG, '"elements" is empty: name at least one element, or leave it out')
    lookup = {symbol: n for n, symbol in enumerate(sampler.elements)}
    unknown = sorted(set(lists['elements'] + lists['required_elements']) - set(lookup))
    if unknown:
        raise TaskError(UNKNOWN_ELEMENT, f"{', '.join(unknown)} not among the model's elements {sampler.elements}")
    allowed = lists['elements'] if 'elements' in config else sampler.elements
    required = lists['required_elements'] if 'required_elements' in config else lists['elements']
    if not set(required) <= set(allowed):
        raise TaskError(
            INVALID_CONFIG, f'required elements {sorted(set(required) - set(allowed))} are not among "elements"'
        )
    if len(set(required)) > sampler.max_atoms:
        raise TaskError(
            TOO_MANY_ATOMS,
            f'{len(set(required))} required elements need cells of as many atoms; '
            f'the model was trained on at most {sampler.max_atoms}',
        )
    return TypeRestriction([lookup[s] for s in allowed], [lookup[s] for s in required])


def run_generate(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    """``hpcai-model generate``: sample crystals from an EquiCSP checkpoint (see the module docstring)."""
    from ..checkpoint import load_verified
    from ..contract import INVALID_CONFIG, MODELS_KEY, NAN_OUTPUT, NO_SAMPLES, STRUCTURES_FILE, SUMMARY_FILE, TaskError
    from ..inference import _resolve_device

    input_dir, output_dir = pathlib.Path(input_dir), pathlib.Path(output_dir)
    entries = config.get(MODELS_KEY) or []
    if len(entries) != 1:
        raise TaskError(INVALID_CONFIG, f'generate needs exactly one model in "{MODELS_KEY}", got {len(entries)}')
    mode = config.get('mode', 'csp')
    if mode not in MODES:
        raise TaskError(INVALID_CONFIG, f'unknown mode {mode!r}; known: {list(MODES)}')
    checkpoint = load_verified(entries[0], input_dir, 'equicsp')
    if mode not in checkpoint['modes']:
        raise TaskError(INVALID_CONFIG, f'the model was trained for {checkpoint["modes"]}, not {mode!r}')
    device = _resolve_device(config.get('device', 'cpu'))
    precision = config.get('precision', 'float32')
    if precision not in SAMPLING_PRECISIONS:
        raise TaskError(INVALID_CONFIG, f'unknown precision {precision!r}; known: {list(SAMPLING_PRECISIONS)}')
    sampler = EquiCSPSampler(checkpoint, device, precision)
    seed = int(config.get('seed', 0))
    restriction = None
    if mode == 'csp':
        if 'elements' in config or 'required_elements' in config:
            raise TaskError(INVALID_CONFIG, '"elements" and "required_elements" apply to mode abinitio')
        num_atoms, types = _csp_plan(config.get('compositions') or {}, sampler)
    else:
        restriction = _restriction(config, sampler)
        strategy = config.get('n_strategy', 'dataset')
        if strategy not in N_STRATEGIES:
            raise TaskError(INVALID_CONFIG, f'unknown n_strategy {strategy!r}; known: {list(N_STRATEGIES)}')
        n_samples = int(config.get('n_samples', 0))
        num_atoms = atom_counts(
            max(n_samples, 0),
            strategy,
            sampler.num_atoms_counts,
            sampler.max_atoms,
            np.random.default_rng(seed),
            config.get('switch'),
            min_atoms=max(1, len(restriction.required)) if restriction else 1,
        )
        types = None
    if not num_atoms:
        raise TaskError(NO_SAMPLES, 'zero samples asked: give compositions with counts, or n_samples > 0')

    steps = int(config.get('steps') or sampler.config.timesteps)
    step_lr = float(config.get('step_lr', 1e-5))
    started = time.perf_counter()
    crystals = sampler.sample(
        num_atoms, types, steps, step_lr, seed, int(config.get('batch_size', 64)), restriction=restriction
    )
    seconds = time.perf_counter() - started

    arrays = _to_arrays(crystals)
    seen, ids = collections.Counter(), []
    for formula in arrays.formulae():
        ids.append(f'{formula}#{seen[formula]}')
        seen[formula] += 1
    arrays.ids = np.asarray(ids, dtype=str)
    valid, invalid = [], []
    for index, crystal in enumerate(crystals):
        problem = check_crystal(crystal['numbers'], crystal['frac'], crystal['cell'])
        if problem is None:
            valid.append(index)
        else:
            invalid.append({'id': ids[index], 'reason': problem[0], 'message': problem[1]})
    write_npz(arrays.subset(valid), output_dir / STRUCTURES_FILE)
    (output_dir / INVALID_FILE).write_text(json.dumps(invalid, indent=2))
    reasons = collections.Counter(row['reason'] for row in invalid)
    summary = {
        'architecture': 'equicsp',
        'mode': mode,
        'seed': seed,
        'steps': steps,
        'step_lr': step_lr,
        'n_strategy': config.get('n_strategy', 'dataset') if mode == 'abinitio' else None,
        'switch': config.get('switch') if mode == 'abinitio' else None,
        'compositions': config.get('compositions') if mode == 'csp' else None,
        'elements': [sampler.elements[i] for i in restriction.allowed] if restriction else None,
        'required_elements': [sampler.elements[i] for i in restriction.required] if restriction else None,
        'n_requested': len(crystals),
        'n_valid': len(valid),
        'n_invalid': len(invalid),
        'invalid_reasons': {reason: reasons.get(reason, 0) for reason in INVALID_REASONS},
        'seconds': seconds,
        'structures_per_hour': 3600 * len(crystals) / seconds if seconds > 0 else None,
        'device': device,
        'precision': precision,
        'model_sha256': entries[0].get('sha256'),
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if reasons.get('nan'):
        nan_ids = [row['id'] for row in invalid if row['reason'] == 'nan']
        raise TaskError(
            NAN_OUTPUT,
            f'{len(nan_ids)} of {len(crystals)} samples went NaN ({", ".join(nan_ids[:10])}); the rest were kept',
        )


def _to_arrays(crystals: list[dict]) -> StructureArrays:
    """All samples as one set (ids filled in later; NaN positions kept for the checks' sake)."""
    natoms = [len(crystal['numbers']) for crystal in crystals]
    return StructureArrays(
        numbers=np.concatenate([c['numbers'] for c in crystals]),
        positions=np.concatenate([c['frac'] @ c['cell'] for c in crystals]),
        cells=np.stack([c['cell'] for c in crystals]),
        pbc=np.ones((len(crystals), 3), dtype=bool),
        offsets=np.concatenate([[0], np.cumsum(natoms, dtype=np.int64)]),
        ids=[''] * len(crystals),
    )
