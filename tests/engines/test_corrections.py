"""MP2020 anion corrections of ``hpcai.dft`` formation energies (``aiida_hpcai.engines.corrections``)."""

import pytest
from pymatgen.core import Lattice, Structure

from aiida_hpcai.engines.corrections import anion_corrections

# MP2020's fitted constants (eV per anion atom), Wang et al., Sci. Rep. 11, 15496 (2021), Table 1.
OXIDE, PEROXIDE, NITRIDE, FLUORIDE = -0.687, -0.465, -0.361, -0.462


def _rock_salt(cation, anion, a=4.2):
    return Structure.from_spacegroup('Fm-3m', Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_oxide_correction_per_atom_of_the_cell():
    record = anion_corrections(_rock_salt('Mg', 'O'))
    assert [item['name'] for item in record['adjustments']] == ['MP2020 anion correction (oxide)']
    assert record['per_atom'] == pytest.approx(OXIDE / 2)  # one O in two atoms
    assert record['gga_u_elements'] == []


def test_peroxide_is_told_from_oxide_by_the_o_o_bond():
    # Li2O2-like cell: an O2 dimer at 1.5 Å, against an isolated O in Li2O.
    peroxide = Structure(
        Lattice.cubic(5.0), ['Li', 'Li', 'O', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.35], [0.25, 0.25, 0.65]]
    )
    oxide = Structure(Lattice.cubic(5.0), ['Li', 'Li', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    assert anion_corrections(peroxide)['per_atom'] == pytest.approx(2 * PEROXIDE / 4)
    assert anion_corrections(oxide)['per_atom'] == pytest.approx(OXIDE / 3)


@pytest.mark.parametrize(('cation', 'anion', 'constant'), [('Ga', 'N', NITRIDE), ('Li', 'F', FLUORIDE)])
def test_other_anions(cation, anion, constant):
    assert anion_corrections(_rock_salt(cation, anion))['per_atom'] == pytest.approx(constant / 2)


def test_no_correction_without_an_anion_or_with_one_element():
    assert anion_corrections(_rock_salt('Si', 'C'))['adjustments'] == []  # covalent carbide: MP2020 corrects none
    silicon = Structure(Lattice.cubic(5.43), ['Si'], [[0, 0, 0]])
    assert anion_corrections(silicon)['per_atom'] == 0.0


def test_gga_u_compounds_get_the_anion_correction_and_a_flag():
    # MP runs Fe oxides with +U and shifts them by a per-Fe constant that describes a +U run: not applied.
    record = anion_corrections(_rock_salt('Fe', 'O'))
    assert [item['name'] for item in record['adjustments']] == ['MP2020 anion correction (oxide)']
    assert record['gga_u_elements'] == ['Fe']


def test_none_and_unknown_schemes():
    assert anion_corrections(_rock_salt('Mg', 'O'), 'none') == {
        'scheme': 'none',
        'adjustments': [],
        'per_atom': 0.0,
        'gga_u_elements': [],
    }
    with pytest.raises(ValueError, match='unknown energy correction'):
        anion_corrections(_rock_salt('Mg', 'O'), 'mp2011')
