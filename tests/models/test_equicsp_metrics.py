"""The CSP match rate and RMSE (StructureMatcher, as DiffCSP computes them) and the sampler-output check."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from aiida_hpcai.models.equicsp.metrics import (
    MATCHER_SETTINGS,
    checked_structures,
    match_rate_and_rmse,
    sample_like,
    summarize,
)
from tests.samples import make_structures

ROCK_SALT = Structure(Lattice.from_parameters(3.99, 3.99, 3.99, 60, 60, 60), ['Na', 'Cl'], [[0, 0, 0], [0.5] * 3])
CESIUM_CHLORIDE = Structure(Lattice.cubic(3.17), ['Na', 'Cl'], [[0, 0, 0], [0.5] * 3])


def _perturbed(structure, scale, seed=0):
    copy = structure.copy()
    copy.perturb(scale, min_distance=scale / 2, seed=seed)  # every site moved by a length in [scale/2, scale]
    return copy


def test_matcher_settings_are_the_benchmarks():
    assert MATCHER_SETTINGS == {'stol': 0.5, 'angle_tol': 10.0, 'ltol': 0.3}


def test_a_structure_matches_itself_and_a_slightly_perturbed_copy():
    references = make_structures()
    same = match_rate_and_rmse([s.copy() for s in references], references)
    assert same['match_rate'] == 1.0 and same['n_matched'] == same['n'] == 3
    assert same['rmse'] == pytest.approx(0.0, abs=1e-8)

    perturbed = match_rate_and_rmse([_perturbed(s, 0.05) for s in references], references)
    assert perturbed['match_rate'] == 1.0
    assert all(0 < distance < 0.1 for distance in perturbed['rms_dist'])
    assert perturbed['rmse'] == pytest.approx(np.mean(perturbed['rms_dist']))


def test_a_different_structure_of_the_same_composition_misses():
    result = match_rate_and_rmse([CESIUM_CHLORIDE, ROCK_SALT.copy()], [ROCK_SALT, ROCK_SALT])
    assert result['rms_dist'][0] is None and result['rms_dist'][1] == pytest.approx(0.0, abs=1e-8)
    assert result['match_rate'] == 0.5 and result['n_matched'] == 1
    assert result['rmse'] == pytest.approx(0.0, abs=1e-8)  # over the matches only


def test_an_invalid_sample_is_a_miss():
    references = make_structures()
    result = match_rate_and_rmse([None, references[1].copy(), references[2].copy()], references)
    assert result['rms_dist'][0] is None and result['n_compared'] == 2
    assert result['match_rate'] == pytest.approx(2 / 3)
    flagged = match_rate_and_rmse([s.copy() for s in references], references, valid=[True, False, True])
    assert flagged['n_matched'] == 2 and flagged['rms_dist'][1] is None
    again = summarize(match_rate_and_rmse([s.copy() for s in references], references)['rms_dist'], [True, False, True])
    assert {key: again[key] for key in ('n', 'n_matched', 'match_rate')} == {
        'n': 3,
        'n_matched': 2,
        'match_rate': 2 / 3,
    }
    nothing = match_rate_and_rmse([None], references[:1])
    assert nothing['match_rate'] == 0.0 and nothing['rmse'] is None
    with pytest.raises(ValueError, match='2 generated structures for 3 references'):
        match_rate_and_rmse(references[:2], references)


def test_checked_structures_keeps_crystals_and_names_what_is_not_one():
    cell = np.eye(3) * 4.0
    crystal = {'numbers': np.array([11, 17]), 'frac': np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), 'cell': cell}
    close = {**crystal, 'frac': np.array([[0, 0, 0], [0.05, 0, 0]])}
    broken = {**crystal, 'frac': np.full((2, 3), np.nan)}
    structures, reasons = checked_structures([crystal, close, broken])
    assert reasons == [None, 'too_close', 'nan']
    assert structures[1] is None and structures[2] is None
    assert structures[0].composition.reduced_formula == 'NaCl'
    assert np.allclose(structures[0].lattice.matrix, cell) and np.allclose(structures[0].frac_coords, crystal['frac'])


class _EchoSampler:
    """Stands in for an EquiCSPSampler: returns each asked composition on a 4 A cubic cell, atoms on a line
    (too close for more than 8), and records what it was asked."""

    elements = ['O', 'Na', 'Cl']
    max_atoms = 3

    def __init__(self):
        self.calls = []

    def sample(self, num_atoms, types, steps, step_lr, seed, batch_size):
        self.calls.append({'num_atoms': list(num_atoms), 'types': [t.tolist() for t in types], 'seed': seed})
        numbers = {0: 8, 1: 11, 2: 17}
        return [
            {
                'numbers': np.array([numbers[int(t)] for t in cell_types]),
                'frac': np.array([[0.5 * i / max(n, 1), 0, 0] for i in range(n)]),
                'cell': np.eye(3) * (4.0 if n < 3 else 0.5),  # three atoms: too close, an invalid sample
            }
            for n, cell_types in zip(num_atoms, types)
        ]


def test_sample_like_asks_each_composition_in_its_order_and_names_the_misses():
    lattice = Lattice.cubic(4.0)
    references = [
        Structure(lattice, ['Cl', 'Na'], [[0, 0, 0], [0.5] * 3]),
        Structure(lattice, ['Fe', 'O'], [[0, 0, 0], [0.5] * 3]),  # Fe: unknown to the model
        Structure(lattice, ['Na', 'Cl', 'O', 'O'], [[0, 0, 0], [0.5] * 3, [0.5, 0, 0], [0, 0.5, 0]]),  # 4 > 3
        Structure(lattice, ['Na', 'O', 'Cl'], [[0, 0, 0], [0.5] * 3, [0.5, 0, 0]]),
        Structure(lattice, ['O'], [[0, 0, 0]]),
    ]
    sampler = _EchoSampler()
    generated, reasons = sample_like(sampler, references, steps=3, seed=7, batch_size=2)
    assert reasons == [None, 'unknown_element', 'too_many_atoms', 'too_close', None]
    assert [s is None for s in generated] == [False, True, True, True, False]
    assert [str(site.specie) for site in generated[0]] == ['Cl', 'Na']  # the reference's atom order
    assert sampler.calls == [
        {'num_atoms': [2, 3], 'types': [[2, 1], [1, 0, 2]], 'seed': 7},
        {'num_atoms': [1], 'types': [[0]], 'seed': 8},
    ]
