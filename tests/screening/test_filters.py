"""The screening filters (pure pymatgen / spglib / SMACT, no profile) on small real structures."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from aiida_hpcai.screening import filters
from aiida_hpcai.screening.filters import ScreeningParameters, screen


def rock_salt(a=5.64, species=('Na', 'Cl')):
    return Structure.from_spacegroup('Fm-3m', Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def silicon():
    return Structure.from_spacegroup('Fd-3m', Lattice.cubic(5.47), ['Si'], [[0, 0, 0]]).get_primitive_structure()


def reasons(result):
    return {rejection.id: rejection.reason for rejection in result.rejected}


def test_valid_rock_salt_passes_every_filter():
    nacl = rock_salt()
    assert filters.space_group(nacl) == (225, 'Fm-3m')
    assert filters.charge_neutral(nacl)
    assert filters.minimum_distance(nacl, 0.5) is None
    result = screen([nacl], ['NaCl'])
    assert result.valid == [0] and not result.rejected


def test_misplaced_charge_is_not_charge_neutral():
    # Cl on one Na site of the conventional rock salt: Na3Cl5 has no charge-neutral SMACT oxidation states.
    misplaced = rock_salt()
    misplaced.replace(next(i for i, site in enumerate(misplaced) if site.specie.symbol == 'Na'), 'Cl')
    assert misplaced.composition.reduced_formula == 'Na3Cl5'
    assert not filters.charge_neutral(misplaced)
    assert reasons(screen([misplaced], ['bad'])) == {'bad': 'not_charge_neutral'}
    # Metals only: SMACT counts them as alloys unless told otherwise.
    cu3au = Structure.from_spacegroup('Pm-3m', Lattice.cubic(3.75), ['Au', 'Cu'], [[0, 0, 0], [0.5, 0.5, 0]])
    assert filters.charge_neutral(cu3au)
    assert not filters.charge_neutral(cu3au, ScreeningParameters(include_alloys=False))


def test_distorted_cell_is_p1_at_a_tight_tolerance_only():
    rng = np.random.default_rng(0)
    distorted = rock_salt().get_primitive_structure()
    distorted.perturb(0.05, min_distance=0.04)  # 0.04-0.05 Å random displacements
    distorted.lattice = Lattice(distorted.lattice.matrix + rng.uniform(-0.05, 0.05, (3, 3)))
    assert filters.space_group(distorted, symprec=0.001)[0] == 1
    assert reasons(screen([distorted], ['x'], ScreeningParameters(symprec=0.001))) == {'x': 'no_symmetry'}
    # At a looser tolerance spglib sees the rock salt again.
    assert filters.space_group(distorted, symprec=0.2)[0] == 225
    assert screen([distorted], ['x'], ScreeningParameters(symprec=0.2)).valid == [0]


def test_two_atoms_on_top_of_each_other():
    nacl = rock_salt()
    stacked = nacl.copy()
    stacked.append('Na', [0.01, 0, 0])
    stacked.append('Cl', [0.51, 0.5, 0.5])  # keep it charge neutral: only the distance fails
    shortest = filters.minimum_distance(stacked, 0.5)
    assert shortest == pytest.approx(0.0564, abs=1e-3)
    result = screen([stacked], ['stacked'])
    assert reasons(result) == {'stacked': 'atoms_too_close'}
    assert '0.056' in result.rejected[0].detail
    # A one-atom cell too small for its periodic image.
    assert filters.minimum_distance(Structure(Lattice.cubic(0.4), ['Si'], [[0, 0, 0]]), 0.5) == pytest.approx(0.4)


def test_too_many_elements_is_configurable():
    nacl = rock_salt()
    assert reasons(screen([nacl], ['n'], ScreeningParameters(max_elements=1))) == {'n': 'too_many_elements'}
    assert screen([nacl], ['n'], ScreeningParameters(max_elements=2)).valid == [0]


def test_duplicates_in_batch_include_supercells_and_rotations():
    nacl = rock_salt()
    primitive = nacl.get_primitive_structure()
    supercell = primitive * (2, 1, 1)
    rotated = primitive.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    strained = rock_salt(a=5.70)  # 3% larger: StructureMatcher scales volumes, so still the same structure
    kcl = rock_salt(a=6.29, species=('K', 'Cl'))
    batch = [nacl, kcl, supercell, rotated, strained, primitive]
    ids = ['nacl', 'kcl', 'supercell', 'rotated', 'strained', 'primitive']
    result = screen(batch, ids)
    assert result.valid == [0, 1]
    assert reasons(result) == dict.fromkeys(['supercell', 'rotated', 'strained', 'primitive'], 'duplicate_in_batch')
    assert all(rejection.detail == 'same structure as nacl' for rejection in result.rejected)
    assert result.counts()['duplicate_in_batch'] == 4
    assert screen(batch, ids, ScreeningParameters(deduplicate=False)).valid == list(range(6))


def test_duplicates_of_known_structures_use_the_fingerprint():
    nacl, kcl = rock_salt(), rock_salt(a=6.29, species=('K', 'Cl'))
    known = [('relaxed NaCl', rock_salt(a=5.69).get_primitive_structure())]
    result = screen([nacl, kcl], ['nacl', 'kcl'], known=known)
    assert result.valid == [1]
    assert result.rejected[0].reason == 'duplicate_of_known'
    assert result.rejected[0].detail == 'same structure as relaxed NaCl'
    # Outside the fingerprint's volume window the matcher is never asked.
    assert screen([nacl], ['nacl'], ScreeningParameters(volume_tolerance=0.01), known=known).valid == [0]


def test_fingerprint():
    fingerprint = filters.fingerprint(rock_salt())
    assert fingerprint['reduced_formula'] == 'NaCl' and fingerprint['space_group'] == 225
    assert fingerprint['volume_per_atom'] == pytest.approx(5.64**3 / 8)


def test_first_failure_wins_and_counts_cover_every_reason():
    stacked_nacl2 = Structure(Lattice.cubic(4.0), ['Na', 'Cl', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    result = screen([stacked_nacl2, silicon()], ['a', 'b'])
    assert reasons(result) == {'a': 'atoms_too_close'}
    assert set(result.counts()) == set(filters.REASONS)
    assert sum(result.counts().values()) == 1


def test_parameters_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match='symprek'):
        ScreeningParameters.from_dict({'symprek': 0.1})
    with pytest.raises(ValueError, match='stol'):
        ScreeningParameters.from_dict({'stol': -1})
    assert ScreeningParameters.from_dict({'max_elements': 3}).max_elements == 3
