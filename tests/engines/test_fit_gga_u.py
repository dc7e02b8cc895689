"""The engines' own GGA/GGA+U constants: the file ``hpcai.dft`` reads them from and the tool that fits them
(``python -m aiida_hpcai.engines.fit_gga_u``). The fit on a real pw.x run: tests/workchains/test_dft.py (NiO)."""

import json

import pytest

from aiida_hpcai.engines import base, fit_gga_u
from aiida_hpcai.engines.base import get_engine

QE_IDENTITY = {'engine': 'quantumespresso', 'protocol': 'fast', 'protocol_digest': 'abc', 'pseudo_family': 'SSSP'}
NI_FIT = {'Ni': {'constant': -1.6, 'compounds': []}}


@pytest.fixture
def constants_file(tmp_path, monkeypatch):
    path = tmp_path / 'gga_u_constants.json'
    monkeypatch.setattr(base, 'GGA_U_CONSTANTS_FILE', path)
    return path


def test_an_engine_has_the_constants_of_its_own_identity_only(constants_file):
    qe, vasp = get_engine('quantumespresso'), get_engine('vasp')
    assert qe.gga_u_constants(QE_IDENTITY) == {}  # no file: none fitted
    fit_gga_u.write_fit(QE_IDENTITY, NI_FIT, [], 'test', path=constants_file)
    assert qe.gga_u_constants(QE_IDENTITY) == {'Ni': -1.6}
    # another merged protocol or pseudopotential family: the fit does not hold
    assert qe.gga_u_constants({**QE_IDENTITY, 'protocol_digest': 'other'}) == {}
    assert qe.gga_u_constants({**QE_IDENTITY, 'pseudo_family': 'PseudoDojo'}) == {}
    # VASP takes MP's own constants, whatever the file holds
    assert vasp.gga_u_constants({**QE_IDENTITY, 'engine': 'vasp'}) == {}


def test_write_fit_replaces_the_fit_of_its_identity_and_keeps_the_others(constants_file):
    other = {**QE_IDENTITY, 'protocol': 'moderate', 'protocol_digest': 'def'}
    fit_gga_u.write_fit(QE_IDENTITY, NI_FIT, [], 'first', path=constants_file)
    fit_gga_u.write_fit(other, {'Fe': {'constant': -2.0, 'compounds': []}}, [], 'other', path=constants_file)
    fit_gga_u.write_fit(QE_IDENTITY, {'Ni': {'constant': -1.7, 'compounds': []}}, [], 'again', path=constants_file)
    fits = json.loads(constants_file.read_text())['fits']
    assert [(fit['identity']['protocol'], fit['command']) for fit in fits] == [('moderate', 'other'), ('fast', 'again')]
    assert fits[1]['constants']['Ni']['constant'] == -1.7
    assert {'date', 'commit', 'reference', 'compounds'} <= set(fits[1])


@pytest.mark.parametrize(
    'args, message',
    [
        (['mp-nothing'], 'not in mp_cgcnn: mp-nothing'),
        (['mp-1265'], 'MgO): MP runs it with +U on no metal'),  # MgO: plain GGA at MP
        (['mp-19009', '--engine', 'vasp'], "MP's constants already hold for vasp"),
        (['mp-19009', '--protocol', 'nonsense'], 'unknown quantumespresso protocol'),
        (['mp-19009', '--overrides', '{nonsense_key: 1}'], 'unknown protocol override key(s): nonsense_key'),
        (['mp-19009', '--overrides', '[0.5]'], 'must be a mapping'),
    ],
)
def test_tool_refuses_what_it_cannot_fit_before_running_anything(args, message, shared_data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit_gga_u.main([*args, '--data-dir', str(shared_data_dir)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compute_formation_energy_adds_the_engine_constants_given(aiida_profile):
    from aiida import orm
    from pymatgen.core import Lattice, Structure

    from aiida_hpcai.workchains.dft import compute_formation_energy

    nio = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.18), ['Ni', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nio = nio.get_primitive_structure()
    inputs = {
        'structure': orm.StructureData(pymatgen=nio),
        'energy_per_atom': orm.Float(-10.0),
        'energy_correction': orm.Str('mp2020'),
        'hubbard_u': orm.Dict({'Ni': 6.2}),
        'mp_gga_u_constants_apply': orm.Bool(False),
        'Ni': orm.Float(-9.0),
        'O': orm.Float(-10.5),
    }
    raw = -10.0 - (-9.0 - 10.5) / 2
    without = compute_formation_energy(**inputs)
    assert without['formation_energy_per_atom_uncorrected'].value == pytest.approx(raw)
    assert not without['energy_corrections']['on_mp_scale']
    with_own = compute_formation_energy(**inputs, gga_u_constants=orm.Dict({'Ni': -1.6}))
    assert with_own['energy_corrections']['on_mp_scale']
    assert with_own['formation_energy_per_atom'].value == pytest.approx(raw + (-0.687 - 1.6) / 2)


def test_the_shipped_fe_fit_holds_for_the_protocol_it_was_fitted_on():
    """The shipped file's Fe fit is found for its own merged protocol (the design benchmark's coarse relaxation
    mesh) and for no other; its constant is the mean of its compounds' estimates, as the tool fits it."""
    qe = get_engine('quantumespresso')
    overrides = {'kpoints_distance': 0.5, 'scf': {'kpoints_distance': 0.3}}
    fitted = qe.identity(None, 'fast', qe.load_protocol('fast', overrides))
    assert set(qe.gga_u_constants(fitted)) == {'Fe'}
    assert qe.gga_u_constants(qe.identity(None, 'fast', qe.load_protocol('fast'))) == {}
    (fit,) = [fit for fit in json.loads(base.GGA_U_CONSTANTS_FILE.read_text())['fits'] if 'Fe' in fit['constants']]
    estimates = [compound['estimate'] for compound in fit['constants']['Fe']['compounds']]
    assert len(estimates) == len(fit['compounds']) >= 2
    assert fit['constants']['Fe']['constant'] == pytest.approx(sum(estimates) / len(estimates))
