"""How well generated crystals reproduce reference crystals: the CSP match rate and RMSE.

The measure of CDVAE, DiffCSP and EquiCSP: each generated structure is compared with its reference
by pymatgen's ``StructureMatcher`` (``stol=0.5, angle_tol=10, ltol=0.3``); the match rate is the
fraction of pairs that match, an invalid sample (``None``) or a pair the matcher cannot compare
counting as a miss, and the RMSE is the mean of ``StructureMatcher.get_rms_dist()[0]`` (the RMS
displacement normalised by ``(volume / atoms) ** (1/3)``) over the matched pairs, as DiffCSP's
``RecEval`` computes it.

Pure pymatgen (no aiida, no torch); :func:`checked_structures` turns the sampler's output into
structures, invalid samples as ``None``, and :func:`sample_like` draws one CSP sample per reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

__all__ = ('MATCHER_SETTINGS', 'checked_structures', 'match_rate_and_rmse', 'sample_like', 'summarize')

#: The StructureMatcher tolerances of the CSP benchmarks (CDVAE, DiffCSP, EquiCSP, FlowMM).
MATCHER_SETTINGS = {'stol': 0.5, 'angle_tol': 10.0, 'ltol': 0.3}


def match_rate_and_rmse(
    generated: Sequence[Structure | None],
    references: Sequence[Structure],
    valid: Sequence[bool] | None = None,
    progress: bool = False,
    **tolerances,
) -> dict:
    """Match rate and RMSE of ``generated[i]`` against ``references[i]``.

    ``None`` in ``generated``, or ``False`` in ``valid`` (e.g. a further validity test, such as DiffCSP's
    SMACT composition validity), makes the pair a miss. ``tolerances`` override :data:`MATCHER_SETTINGS`.

    Returns ``n``, ``n_compared`` (pairs given to the matcher), ``n_matched``, ``n_errors`` (pairs the
    matcher raised on: misses), ``match_rate`` (matched / n), ``rmse`` (mean normalised RMS distance over
    the matches; None without any) and ``rms_dist`` (per pair: the distance, or None for a miss).
    """
    if len(generated) != len(references):
        raise ValueError(f'{len(generated)} generated structures for {len(references)} references')
    if valid is not None and len(valid) != len(references):
        raise ValueError(f'{len(valid)} validity flags for {len(references)} references')
    matcher = StructureMatcher(**{**MATCHER_SETTINGS, **tolerances})
    pairs = range(len(references))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc='matching', unit=' structures')
    distances: list[float | None] = []
    compared = errors = 0
    for index in pairs:
        structure = generated[index]
        if structure is None or (valid is not None and not valid[index]):
            distances.append(None)
            continue
        compared += 1
        try:
            found = matcher.get_rms_dist(structure, references[index])
        except Exception:  # noqa: BLE001 - the matcher fails on degenerate cells; DiffCSP counts those as misses
            errors += 1
            found = None
        distances.append(None if found is None else float(found[0]))
    return {'n_compared': compared, 'n_errors': errors, **summarize(distances)}


def summarize(distances: Sequence[float | None], valid: Sequence[bool] | None = None) -> dict:
    """``n``, ``n_matched``, ``match_rate``, ``rmse`` and ``rms_dist`` of per-pair distances (None: a miss);
    ``False`` in ``valid`` makes a pair a miss (another validity protocol over the same matching)."""
    if valid is not None and len(valid) != len(distances):
        raise ValueError(f'{len(valid)} validity flags for {len(distances)} pairs')
    distances = [d if valid is None or valid[i] else None for i, d in enumerate(distances)]
    matched = [distance for distance in distances if distance is not None]
    n = len(distances)
    return {
        'n': n,
        'n_matched': len(matched),
        'match_rate': len(matched) / n if n else math.nan,
        'rmse': float(np.mean(matched)) if matched else None,
        'rms_dist': distances,
    }


def checked_structures(crystals: Sequence[dict]) -> tuple[list[Structure | None], list[str | None]]:
    """The sampler's crystals (``{'numbers', 'frac', 'cell'}``, see
    :meth:`~aiida_hpcai.models.equicsp.generation.EquiCSPSampler.sample`) as pymatgen structures, with
    ``None`` and the reason of :func:`~aiida_hpcai.models.equicsp.generation.check_crystal` for the invalid
    ones (the reason is ``None`` for a crystal)."""
    from .generation import check_crystal

    structures: list[Structure | None] = []
    reasons: list[str | None] = []
    for crystal in crystals:
        problem = check_crystal(crystal['numbers'], crystal['frac'], crystal['cell'])
        if problem is None:
            structures.append(Structure(Lattice(crystal['cell']), crystal['numbers'].tolist(), crystal['frac']))
            reasons.append(None)
        else:
            structures.append(None)
            reasons.append(problem[0])
    return structures, reasons


def sample_like(
    sampler,
    references: Sequence[Structure],
    steps: int | None = None,
    step_lr: float = 1e-5,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[Structure | None], list[str | None]]:
    """One CSP sample per reference, with its composition given (its atoms, in its order), from ``sampler``
    (an :class:`~aiida_hpcai.models.equicsp.generation.EquiCSPSampler`); batch k of ``batch_size`` uses
    ``seed + k``. Returns the samples aligned with ``references`` (``None`` for a miss) and, for each, ``None``
    or why it is missing: ``unknown_element`` (an element the model does not know), ``too_many_atoms`` (more
    than its ``max_atoms``; neither is sampled) or the reason of :func:`checked_structures`."""
    lookup = {symbol: index for index, symbol in enumerate(sampler.elements)}
    generated: list[Structure | None] = [None] * len(references)
    reasons: list[str | None] = [None] * len(references)
    asked = []
    for row, structure in enumerate(references):
        symbols = [site.specie.symbol for site in structure]
        if any(symbol not in lookup for symbol in symbols):
            reasons[row] = 'unknown_element'
        elif len(symbols) > sampler.max_atoms:
            reasons[row] = 'too_many_atoms'
        else:
            asked.append((row, np.array([lookup[symbol] for symbol in symbols])))
    starts = range(0, len(asked), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f'sampling ({steps or "default"} steps)', unit=' batch')
    for k, start in enumerate(starts):
        chunk = asked[start : start + batch_size]
        crystals = sampler.sample(
            [len(t) for _, t in chunk], [t for _, t in chunk], steps, step_lr, seed + k, len(chunk)
        )
        structures, why = checked_structures(crystals)
        for (row, _), structure, reason in zip(chunk, structures, why):
            generated[row], reasons[row] = structure, reason
    return generated, reasons
