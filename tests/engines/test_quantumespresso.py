"""The engine interface (protocols, band gap rule) and the Quantum ESPRESSO adapter's builders."""

import re

import numpy as np
import pytest
from aiida import orm

from aiida_hpcai.engines import get_engine
from aiida_hpcai.engines.base import band_gap_from_eigenvalues, merge_overrides, protocol_digest
from aiida_hpcai.engines.quantumespresso import QuantumEspressoEngine
from tests.conftest import PSEUDO_FAMILY
from tests.samples import engine_workchain


def _structure(formula: str) -> orm.StructureData:
    """Primitive cells (1-2 atoms) near their PBE lattice constants."""
    from pymatgen.core import Lattice, Structure

    if formula == 'Si':
        structure = Structure.from_spacegroup('Fd-3m', Lattice.cubic(5.47), ['Si'], [[0, 0, 0]])
    elif formula == 'MgO':
        structure = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.25), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    elif formula == 'NiO':
        structure = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.17), ['Ni', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    elif formula == 'Fe':
        structure = Structure.from_spacegroup('Im-3m', Lattice.cubic(2.83), ['Fe'], [[0, 0, 0]])
    else:
        raise ValueError(formula)
    return orm.StructureData(pymatgen=structure.get_primitive_structure())


# -- engine-agnostic pieces ---------------------------------------------------------------------------------
def test_get_engine_unknown_name():
    with pytest.raises(ValueError, match='unknown DFT engine'):
        get_engine('castep')
    assert isinstance(get_engine('quantumespresso'), QuantumEspressoEngine)


def test_protocols_and_overrides():
    engine = QuantumEspressoEngine()
    assert set(engine.protocol_names()) == {'fast', 'balanced', 'precise'}
    fast, balanced = engine.load_protocol('fast'), engine.load_protocol('balanced')
    assert fast['kpoints_distance'] > balanced['kpoints_distance']
    assert fast['cutoff_scale'] < balanced['cutoff_scale']
    overridden = engine.load_protocol('fast', {'kpoints_distance': 0.5, 'relax': {'press_conv_thr': 2.0}})
    assert overridden['kpoints_distance'] == 0.5
    assert overridden['relax']['press_conv_thr'] == 2.0
    assert overridden['relax']['forc_conv_thr'] == fast['relax']['forc_conv_thr']
    # Raw pw.x namelists accept any key; everything else is checked.
    assert engine.load_protocol('fast', {'parameters': {'SYSTEM': {'nosym': True}}})['parameters']['SYSTEM']['nosym']
    with pytest.raises(ValueError, match='kpoint_distance'):
        engine.load_protocol('fast', {'kpoint_distance': 0.5})
    with pytest.raises(ValueError, match='relax.fmax'):
        engine.load_protocol('fast', {'relax': {'fmax': 0.5}})
    with pytest.raises(ValueError, match='unknown quantumespresso protocol'):
        engine.load_protocol('sloppy')
    # Overrides change the identity under which references are stored.
    assert protocol_digest(overridden) != protocol_digest(fast)
    assert protocol_digest(fast) == protocol_digest(engine.load_protocol('fast'))


def test_merge_overrides_replaces_leaves_and_keeps_input():
    base = {'a': {'b': 1, 'c': [1, 2]}}
    merged = merge_overrides(base, {'a': {'c': [3]}})
    assert merged == {'a': {'b': 1, 'c': [3]}}
    assert base == {'a': {'b': 1, 'c': [1, 2]}}


@pytest.mark.parametrize('name', ['quantumespresso', 'vasp'])
def test_identity_and_options_come_from_the_base_class(name):
    """Both adapters share one identity rule and one options merge (only the family's protocol key differs)."""
    engine = get_engine(name)
    protocol = engine.load_protocol('fast')
    identity = engine.identity(None, 'fast', protocol)
    assert identity == {
        'engine': name,
        'protocol': 'fast',
        'protocol_digest': protocol_digest(protocol),
        'pseudo_family': protocol[engine.pseudo_family_key],
    }
    options = engine._options({'resources': {'num_mpiprocs_per_machine': 2}, 'queue_name': 'debug'})
    assert options['resources'] == {'num_machines': 1, 'num_mpiprocs_per_machine': 2}
    assert options['queue_name'] == 'debug' and options['withmpi'] is True
    assert engine.DEFAULT_OPTIONS['resources'] == {'num_machines': 1}  # the defaults are not mutated


def test_band_gap_from_eigenvalues():
    eigenvalues = np.array([[-1.0, 0.0, 1.5, 2.0], [-0.5, 0.2, 1.2, 3.0]])
    # Counting electrons: the lowest N/2 bands are occupied at every k-point.
    assert band_gap_from_eigenvalues(eigenvalues, number_of_electrons=4) == pytest.approx(1.0)
    # An odd count without spin polarization fills half a band: a metal.
    assert band_gap_from_eigenvalues(eigenvalues, number_of_electrons=3) == 0.0
    # Overlapping bands: a metal even with an even count.
    assert band_gap_from_eigenvalues([[0.0, 1.0], [1.5, 2.0]], number_of_electrons=2) == 0.0
    # Two spin channels with 2 μB (an O2-like triplet: 3 up, 1 down): edges taken over both channels.
    up = [[-1.0, 0.0, 0.5, 2.5], [-0.8, 0.1, 0.4, 2.2]]  # 3 occupied: edges 0.5 and 2.2
    down = [[-0.9, 1.0, 1.5, 3.0], [-0.7, 1.1, 1.6, 3.0]]  # 1 occupied: edges -0.7 and 1.0
    assert band_gap_from_eigenvalues([up, down], number_of_electrons=4, total_magnetization=2.0) == pytest.approx(0.5)
    assert band_gap_from_eigenvalues([up, down], number_of_electrons=4, total_magnetization=1.3) == 0.0
    with pytest.raises(ValueError, match='too few bands'):
        band_gap_from_eigenvalues([[0.0, 1.0]], number_of_electrons=4)
    # Occupations from cold smearing leave the top valence state half empty: counting is right, the
    # occupation threshold is not (this is why engines pass the number of electrons).
    occupations = np.array([[2.0, 0.9, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]])
    assert band_gap_from_eigenvalues(eigenvalues, number_of_electrons=4) == pytest.approx(1.0)
    assert band_gap_from_eigenvalues(eigenvalues, occupations) == 0.0
    assert band_gap_from_eigenvalues(eigenvalues, fermi_energy=0.6) == pytest.approx(1.0)


# -- the Quantum ESPRESSO adapter ---------------------------------------------------------------------------
def test_check_structure_and_identity(sssp_family, pw_code):
    engine = QuantumEspressoEngine()
    protocol = engine.load_protocol('fast')
    assert engine.check_structure(_structure('MgO'), pw_code, protocol) == []
    from pymatgen.core import Lattice, Structure

    gold = orm.StructureData(pymatgen=Structure(Lattice.cubic(4.08), ['Au', 'Mg'], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert engine.check_structure(gold, pw_code, protocol) == ['Au']
    absent = engine.load_protocol('fast', {'pseudo_family': 'no/such/family'})
    assert engine.check_structure(gold, pw_code, absent) == ['Au', 'Mg']
    identity = engine.identity(pw_code, 'fast', protocol)
    assert identity['engine'] == 'quantumespresso'
    assert identity['pseudo_family'] == PSEUDO_FAMILY
    assert identity['protocol'] == 'fast'


def test_relax_and_scf_builders(sssp_family, pw_code):
    engine = QuantumEspressoEngine()
    protocol = engine.load_protocol('fast')
    structure = _structure('MgO')
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 2}}

    relax = engine.get_relax_builder(structure, pw_code, protocol, options=options)
    parameters = relax.base_relax.pw.parameters.get_dict()
    assert parameters['CONTROL']['calculation'] == 'vc-relax'
    assert parameters['CELL']['cell_dofree'] == 'all'
    # The O pseudopotential sets the cutoffs (SSSP normal 50/400 Ry), scaled down in `fast`.
    wfc, rho = sssp_family.get_recommended_cutoffs(structure=structure, stringency='normal', unit='Ry')
    assert parameters['SYSTEM']['ecutwfc'] == pytest.approx(wfc * protocol['cutoff_scale'])
    assert parameters['SYSTEM']['ecutrho'] == pytest.approx(rho * protocol['cutoff_scale'])
    assert parameters['SYSTEM']['occupations'] == 'smearing'
    assert 'nspin' not in parameters['SYSTEM']
    assert parameters['ELECTRONS']['conv_thr'] == pytest.approx(2 * protocol['conv_thr_per_atom'])
    assert set(relax.base_relax.pw.pseudos) == {'Mg', 'O'}
    assert relax.base_relax.kpoints_distance.value == protocol['kpoints_distance']
    assert relax.base_relax.pw.metadata.options['resources']['num_mpiprocs_per_machine'] == 2
    assert relax.base_relax.pw.metadata.options['withmpi'] is True

    fixed_cell = engine.get_relax_builder(structure, pw_code, protocol, relax_cell=False)
    assert fixed_cell.base_relax.pw.parameters['CONTROL']['calculation'] == 'relax'
    assert 'CELL' not in fixed_cell.base_relax.pw.parameters.get_dict()
    assert fixed_cell.meta_convergence.value is False

    scf = engine.get_scf_builder(structure, pw_code, protocol, magnetic_moments={'O': 1.0})
    parameters = scf.pw.parameters.get_dict()
    assert parameters['CONTROL']['calculation'] == 'scf'
    assert parameters['SYSTEM']['nspin'] == 2
    o_valence = sssp_family.get_pseudo('O').z_valence
    assert parameters['SYSTEM']['starting_magnetization'] == {'O': pytest.approx(1.0 / o_valence)}

    # Elemental references of MgO are computed at MgO's cutoffs, whatever their own element's.
    magnesium = _structure('MgO')
    overrides = engine.reference_overrides(magnesium, protocol)
    assert overrides == {
        'parameters': {'SYSTEM': {'ecutwfc': pytest.approx(wfc * 0.8), 'ecutrho': pytest.approx(rho * 0.8)}}
    }
    assert protocol['cutoff_scale'] == 0.8

    # Raw namelist overrides are merged last.
    overridden = engine.load_protocol('fast', {'parameters': {'SYSTEM': {'ecutwfc': 20.0}}})
    assert engine.get_scf_builder(structure, pw_code, overridden).pw.parameters['SYSTEM']['ecutwfc'] == 20.0


def test_magnetic_elements_start_spin_polarized(sssp_family, pw_code):
    engine = QuantumEspressoEngine()
    protocol = engine.load_protocol('fast')
    parameters = engine.get_scf_builder(_structure('Fe'), pw_code, protocol).pw.parameters.get_dict()
    assert parameters['SYSTEM']['nspin'] == 2
    assert 0 < parameters['SYSTEM']['starting_magnetization']['Fe'] <= 1
    # An explicit empty mapping turns spin polarization off.
    parameters = engine.get_scf_builder(_structure('Fe'), pw_code, protocol, magnetic_moments={}).pw.parameters
    assert 'nspin' not in parameters.get_dict()['SYSTEM']


def test_gga_u_where_the_materials_project_uses_it(sssp_family, pw_code, tmp_path, monkeypatch):
    """MP's U values (oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W) reach pw.x as Hubbard_U per species."""
    from aiida.engine import run

    engine = QuantumEspressoEngine()
    protocol = engine.load_protocol('fast')
    nickel_oxide = _structure('NiO')
    assert engine.hubbard_u(nickel_oxide, protocol) == {'Ni': 6.2}
    scf = engine.get_scf_builder(nickel_oxide, pw_code, protocol)
    system = scf.pw.parameters.get_dict()['SYSTEM']
    assert system['lda_plus_u'] is True
    assert system['hubbard_u'] == {'Ni': 6.2}
    assert system['nspin'] == 2  # Ni starts spin-polarized
    relax = engine.get_relax_builder(nickel_oxide, pw_code, protocol)
    assert relax.base_relax.pw.parameters['SYSTEM']['hubbard_u'] == {'Ni': 6.2}

    # The input file pw.x reads (aiida-quantumespresso numbers the species alphabetically: Ni 1, O 2).
    monkeypatch.chdir(tmp_path)
    scf.pw.metadata.dry_run = True
    scf.pw.metadata.store_provenance = False
    from aiida_quantumespresso.calculations.pw import PwCalculation

    inputs = {key: scf.pw[key] for key in scf.pw}
    inputs['kpoints'] = orm.KpointsData()
    inputs['kpoints'].set_kpoints_mesh([2, 2, 2])
    run(PwCalculation, **inputs)
    written = next(tmp_path.glob('submit_test/*/aiida.in')).read_text()
    assert 'lda_plus_u = .true.' in written.lower()
    assert re.search(r'hubbard_u\(1\) = +6\.20+d\+00', written, re.IGNORECASE)
    assert written.split('ATOMIC_SPECIES')[1].split()[0] == 'Ni'

    # Not for a compound MP runs with plain GGA, an element, or with `hubbard: none`.
    for structure in (_structure('MgO'), _structure('Fe')):
        assert engine.hubbard_u(structure, protocol) == {}
        assert 'lda_plus_u' not in engine.get_scf_builder(structure, pw_code, protocol).pw.parameters['SYSTEM']
    plain = engine.load_protocol('fast', {'hubbard': 'none'})
    assert engine.hubbard_u(nickel_oxide, plain) == {}
    assert 'hubbard_u' not in engine.get_scf_builder(nickel_oxide, pw_code, plain).pw.parameters['SYSTEM']
    with pytest.raises(ValueError, match='protocol key hubbard'):
        engine.load_protocol('fast', {'hubbard': 'dudarev'})


def test_failed_restart_after_walltime_is_recognised(aiida_localhost):
    """The provenance that ``hpcai.dft`` runs a step again from scratch for (seen 9 times in 50 in
    benchmarks/dft_concurrent.py): pw.x stopped at its wall time (400), and the full restart from that run's folder
    stopped with 'charge is wrong' (531). Not a 531 without a stopped parent, nor a restart that failed otherwise."""
    from aiida_quantumespresso.calculations.pw import PwCalculation

    out_of_walltime = PwCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status
    charge_is_wrong = PwCalculation.exit_codes.ERROR_CHARGE_IS_WRONG.status

    def base_workchain(*exit_statuses, parents=None):
        """A failed PwBaseWorkChain whose pw.x runs ended with ``exit_statuses``; run ``i`` restarts from the folder
        of run ``parents[i]`` (default: each from the one before; ``None``: from scratch)."""
        parents = parents if parents is not None else [None, *range(len(exit_statuses) - 1)]
        return engine_workchain(
            aiida_localhost, 402, [(status, parent, True) for status, parent in zip(exit_statuses, parents)]
        )

    engine = QuantumEspressoEngine()
    assert engine.failed_restarting_after_walltime(base_workchain(out_of_walltime, charge_is_wrong))
    # PwBaseWorkChain runs an unhandled failure once more with the same inputs: both restarts from the stopped run.
    assert engine.failed_restarting_after_walltime(
        base_workchain(out_of_walltime, charge_is_wrong, charge_is_wrong, parents=[None, 0, 0])
    )
    assert not engine.failed_restarting_after_walltime(base_workchain(charge_is_wrong))
    assert not engine.failed_restarting_after_walltime(base_workchain(out_of_walltime, 305))
    assert not engine.failed_restarting_after_walltime(base_workchain(410, charge_is_wrong))
    assert not engine.failed_restarting_after_walltime(
        base_workchain(out_of_walltime, charge_is_wrong, parents=[None, None])
    )
    assert not engine.failed_restarting_after_walltime(orm.WorkflowNode().store())
    # Engines that do not know such a failure say no.
    assert not get_engine('vasp').failed_restarting_after_walltime(base_workchain(out_of_walltime, charge_is_wrong))
