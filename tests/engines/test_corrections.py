"""MP2020 corrections of ``hpcai.dft`` formation energies (``aiida_hpcai.engines.corrections``)."""

import pytest
from pymatgen.core import Lattice, Structure

from aiida_hpcai.engines.corrections import (
    ENGINE_CONSTANT_NAME,
    energy_corrections,
    fit_gga_u_constants,
    mp_hubbard_u,
    on_mp_scale,
)

# MP2020's fitted constants (eV per anion atom), Wang et al., Sci. Rep. 11, 15496 (2021), Table 1.
OXIDE, PEROXIDE, NITRIDE, FLUORIDE = -0.687, -0.465, -0.361, -0.462
# GGA/GGA+U mixing constants (eV per metal atom) for oxides, same table.
FE_U, NI_U = -2.256, -2.541


def _rock_salt(cation, anion, a=4.2):
    return Structure.from_spacegroup('Fm-3m', Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_oxide_correction_per_atom_of_the_cell():
    record = energy_corrections(_rock_salt('Mg', 'O'))
    assert [item['name'] for item in record['adjustments']] == ['MP2020 anion correction (oxide)']
    assert record['per_atom'] == pytest.approx(OXIDE / 2)  # one O in two atoms
    assert record['gga_u_elements'] == []
    assert record['on_mp_scale'] is True


def test_peroxide_is_told_from_oxide_by_the_o_o_bond():
    # Li2O2-like cell: an O2 dimer at 1.5 Å, against an isolated O in Li2O.
    peroxide = Structure(
        Lattice.cubic(5.0), ['Li', 'Li', 'O', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.35], [0.25, 0.25, 0.65]]
    )
    oxide = Structure(Lattice.cubic(5.0), ['Li', 'Li', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    assert energy_corrections(peroxide)['per_atom'] == pytest.approx(2 * PEROXIDE / 4)
    assert energy_corrections(oxide)['per_atom'] == pytest.approx(OXIDE / 3)


@pytest.mark.parametrize(('cation', 'anion', 'constant'), [('Ga', 'N', NITRIDE), ('Li', 'F', FLUORIDE)])
def test_other_anions(cation, anion, constant):
    assert energy_corrections(_rock_salt(cation, anion))['per_atom'] == pytest.approx(constant / 2)


def test_no_correction_without_an_anion_or_with_one_element():
    assert energy_corrections(_rock_salt('Si', 'C'))['adjustments'] == []  # covalent carbide: MP2020 corrects none
    silicon = Structure(Lattice.cubic(5.43), ['Si'], [[0, 0, 0]])
    assert energy_corrections(silicon)['per_atom'] == 0.0


def test_mp_hubbard_u_follows_mp_rules():
    assert mp_hubbard_u(_rock_salt('Ni', 'O')) == {'Ni': 6.2}
    assert mp_hubbard_u(_rock_salt('Fe', 'F')) == {'Fe': 5.3}
    assert mp_hubbard_u(_rock_salt('Ni', 'S')) == {}  # MP uses +U for oxides and fluorides only
    assert mp_hubbard_u(_rock_salt('Mg', 'O')) == {}
    assert mp_hubbard_u(Structure(Lattice.cubic(2.87), ['Fe'], [[0, 0, 0]])) == {}  # never for an element


def test_gga_u_compound_run_with_mp_u_gets_the_mixing_constant():
    record = energy_corrections(_rock_salt('Ni', 'O'), hubbard_u={'Ni': 6.2})
    assert [item['name'] for item in record['adjustments']] == [
        'MP2020 anion correction (oxide)',
        'MP2020 GGA/GGA+U mixing correction (Ni)',
    ]
    assert record['per_atom'] == pytest.approx((OXIDE + NI_U) / 2)
    assert record['on_mp_scale'] is True and on_mp_scale(record)
    assert record['hubbard_u'] == {'Ni': 6.2}
    # The same run by an engine whose +U energies are not VASP's: the constants are the best estimate there is,
    # but the value is not on MP's scale.
    other_code = energy_corrections(_rock_salt('Ni', 'O'), hubbard_u={'Ni': 6.2}, constants_apply=False)
    assert other_code['per_atom'] == record['per_atom']
    assert not other_code['on_mp_scale']
    # An oxide MP runs without +U is on the scale whatever the engine.
    assert energy_corrections(_rock_salt('Mg', 'O'), constants_apply=False)['on_mp_scale']


@pytest.mark.parametrize('hubbard_u', [None, {}, {'Fe': 4.0}])
def test_gga_u_compound_run_otherwise_gets_the_anion_correction_and_is_off_scale(hubbard_u):
    # MP runs Fe oxides with U = 5.3 and shifts them by a per-Fe constant that describes such a run only.
    record = energy_corrections(_rock_salt('Fe', 'O'), hubbard_u=hubbard_u)
    assert [item['name'] for item in record['adjustments']] == ['MP2020 anion correction (oxide)']
    assert record['per_atom'] == pytest.approx(OXIDE / 2)
    assert record['gga_u_elements'] == ['Fe']
    assert not record['on_mp_scale'] and not on_mp_scale(record)
    with_u = energy_corrections(_rock_salt('Fe', 'O'), hubbard_u={'Fe': 5.3})
    assert with_u['per_atom'] == pytest.approx((OXIDE + FE_U) / 2)


def test_u_where_mp_uses_none_is_off_scale():
    assert not energy_corrections(_rock_salt('Mg', 'O'), hubbard_u={'Mg': 3.0})['on_mp_scale']


def test_none_and_unknown_schemes():
    assert energy_corrections(_rock_salt('Mg', 'O'), 'none') == {
        'scheme': 'none',
        'adjustments': [],
        'per_atom': 0.0,
        'gga_u_elements': [],
        'hubbard_u': {},
        'on_mp_scale': False,
    }
    with pytest.raises(ValueError, match='unknown energy correction'):
        energy_corrections(_rock_salt('Mg', 'O'), 'mp2011')


def test_records_from_before_gga_u():
    """Records stored before ``on_mp_scale`` existed came from plain-GGA runs."""
    assert on_mp_scale({'scheme': 'mp2020', 'gga_u_elements': []})
    assert not on_mp_scale({'scheme': 'mp2020', 'gga_u_elements': ['Fe']})
    assert not on_mp_scale({'scheme': 'none', 'gga_u_elements': []})


# -- an engine's own GGA/GGA+U constants ----------------------------------------------------------------------------
def test_engine_constants_put_a_gga_u_compound_on_mp_scale():
    nio = _rock_salt('Ni', 'O')
    record = energy_corrections(nio, hubbard_u={'Ni': 6.2}, constants_apply=False, engine_constants={'Ni': -1.6})
    assert [item['name'] for item in record['adjustments']] == [
        'MP2020 anion correction (oxide)',
        f'{ENGINE_CONSTANT_NAME} (Ni)',
    ]
    assert record['per_atom'] == pytest.approx((OXIDE - 1.6) / 2)
    assert record['on_mp_scale'] is True
    # MP's constants hold for the engine (VASP): its own are not used
    vasp = energy_corrections(nio, hubbard_u={'Ni': 6.2}, constants_apply=True, engine_constants={'Ni': -1.6})
    assert vasp['per_atom'] == pytest.approx((OXIDE + NI_U) / 2)
    # a constant for another metal, or a run without MP's U: off the scale, as without constants
    for hubbard_u, constants in (({'Ni': 6.2}, {'Fe': -2.0}), ({'Ni': 4.0}, {'Ni': -1.6})):
        other = energy_corrections(nio, hubbard_u=hubbard_u, constants_apply=False, engine_constants=constants)
        assert not other['on_mp_scale']
        assert ENGINE_CONSTANT_NAME not in str(other['adjustments'])
    # a compound MP runs without +U is untouched
    assert energy_corrections(_rock_salt('Mg', 'O'), constants_apply=False, engine_constants={'Ni': -1.6})[
        'per_atom'
    ] == pytest.approx(OXIDE / 2)


def test_fit_gga_u_constants_per_metal_with_leave_one_out():
    # NiO (2 atoms) needs -1.6 eV per Ni, Ni2O3 (5 atoms) -2.0 per Ni: the constant is their mean, -1.8
    rows = [
        {'formula': 'NiO', 'element': 'Ni', 'natoms': 2, 'n_element': 1, 'formation_energy_uncorrected': 0.1,
         'anion_per_atom': OXIDE / 2, 'reference': 0.1 + OXIDE / 2 - 1.6 / 2},
        {'formula': 'Ni2O3', 'element': 'Ni', 'natoms': 5, 'n_element': 2, 'formation_energy_uncorrected': 0.2,
         'anion_per_atom': 3 * OXIDE / 5, 'reference': 0.2 + 3 * OXIDE / 5 - 2 * 2.0 / 5},
        {'formula': 'CoO', 'element': 'Co', 'natoms': 2, 'n_element': 1, 'formation_energy_uncorrected': 0.0,
         'anion_per_atom': OXIDE / 2, 'reference': OXIDE / 2 - 1.5 / 2},
    ]  # fmt: skip
    fits = fit_gga_u_constants(rows)
    assert fits['Ni']['constant'] == pytest.approx(-1.8)
    assert fits['Co']['constant'] == pytest.approx(-1.5)
    nio, ni2o3 = fits['Ni']['compounds']
    assert nio['estimate'] == pytest.approx(-1.6) and ni2o3['estimate'] == pytest.approx(-2.0)
    # with -1.8 NiO lands 0.1 eV/atom low, Ni2O3 0.08 high; fitted on the other alone, 0.2 and 0.16
    assert nio['error_per_atom'] == pytest.approx(-0.1) and ni2o3['error_per_atom'] == pytest.approx(0.08)
    assert nio['leave_one_out_error_per_atom'] == pytest.approx(-0.2)
    assert ni2o3['leave_one_out_error_per_atom'] == pytest.approx(0.16)
    assert fits['Co']['compounds'][0]['leave_one_out_error_per_atom'] is None
