"""The VASP engine of ``hpcai.dft`` (aiida-vasp ``vasp.relax`` / ``vasp.vasp`` + pymatgen MP input sets).

VASP and its POTCARs are licensed and absent here. The end-to-end tests run the real aiida-vasp WorkChains,
CalcJob and parser on a real profile with aiida-vasp's strict ``mock-vasp`` as the executable, a registry
of real VASP outputs (aiida-vasp's test data in ``../shared/data/vasp_fixtures_aiida_vasp``) keyed on the
inputs we expect our builders to write, and a family of DUMMY POTCARs (test-only, unusable by VASP; see
``vasp_mock.py``). A builder writing any other INCAR / POSCAR / KPOINTS makes ``mock-vasp`` fail.
Expected numbers are read from the fixtures' ``vasprun.xml`` with pymatgen, independently of aiida-vasp.
"""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_hpcai.engines import band_gap_from_eigenvalues, get_engine
from aiida_hpcai.engines.base import merge_overrides
from aiida_hpcai.workchains.dft import DftWorkChain
from tests.conftest import require

from .vasp_mock import mock_report, mock_vasp_executable, register_calculation, upload_dummy_potcar_family

FAMILY = 'hpcai-test-dummy-potcars'
# The POTCAR symbols MP's sets pick for the elements of the fixtures (Si; Zn, P, S); Ge deliberately left out.
FAMILY_SYMBOLS = ['Si', 'Zn', 'P', 'S']
OPTIONS = {
    'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1},
    'withmpi': False,
    'max_wallclock_seconds': 600,
}


@pytest.fixture
def vasp_fixtures(shared_data_dir):
    path = shared_data_dir / 'vasp_fixtures_aiida_vasp'
    require(path.is_dir(), f'{path} not found')
    return path


@pytest.fixture
def engine():
    return get_engine('vasp')


@pytest.fixture
def protocol(engine):
    return engine.load_protocol('balanced', {'potential_family': FAMILY})


@pytest.fixture
def potcar_family(aiida_profile, tmp_path):
    from aiida_vasp.data.potcar import PotcarData

    if PotcarData.get_potcar_group(FAMILY) is None:
        upload_dummy_potcar_family(tmp_path / 'potcars', FAMILY, FAMILY_SYMBOLS)
    return FAMILY


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / 'mock_vasp_registry'
    path.mkdir()
    return path


@pytest.fixture
def mock_vasp_code(aiida_code_installed, registry):
    """``mock-vasp`` as a VASP code on localhost, looking only into this test's registry."""
    return aiida_code_installed(
        default_calc_job_plugin='vasp.vasp',
        filepath_executable=mock_vasp_executable(),
        prepend_text=f'export MOCK_VASP_REG_BASE={registry}',
    )


def pymatgen_run(folder):
    from pymatgen.io.vasp import Vasprun

    return Vasprun(str(folder / 'vasprun.xml'), parse_potcar_file=False)


def mp_incar(set_name, structure) -> dict:
    """MP's INCAR for ``structure`` as aiida-vasp's INCAR writer takes it (lower-case tags)."""
    import pymatgen.io.vasp.sets as pmg_sets

    incar = getattr(pmg_sets, set_name)(structure.get_pymatgen_structure(), sort_structure=False).incar
    return {key.lower(): value for key, value in incar.items()}


def mp_kpoints(set_name, structure) -> orm.KpointsData:
    """MP's k-point mesh for ``structure`` as a ``KpointsData`` (aiida-vasp writes Gamma-centred meshes)."""
    import pymatgen.io.vasp.sets as pmg_sets

    pmg_kpoints = getattr(pmg_sets, set_name)(structure.get_pymatgen_structure(), sort_structure=False).kpoints
    mesh = list(pmg_kpoints.kpts[0])
    # VASP's Monkhorst-Pack mesh is the Gamma-centred one shifted by half a step along even divisions.
    offset = [0.5 if pmg_kpoints.style.name == 'Monkhorst' and n % 2 == 0 else 0.0 for n in mesh]
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh(mesh, offset=offset)
    return kpoints


def structure_parsed_by_aiida_vasp(vasprun_path) -> orm.StructureData:
    """The final structure of a ``vasprun.xml`` as aiida-vasp's parser turns it into the output structure."""
    from aiida_vasp.parsers.content_parsers.vasprun import VasprunParser
    from aiida_vasp.parsers.vasp import get_structure_node

    with open(vasprun_path, 'rb') as handle:
        return get_structure_node(VasprunParser(handler=handle).structure)


def expected_gap(run) -> float:
    """The band gap of a pymatgen ``Vasprun`` by band counting with the run's own NELECT and k-point weights."""
    eigenvalues = np.array([run.eigenvalues[spin][:, :, 0] for spin in run.eigenvalues])
    occupations = np.array([run.eigenvalues[spin][:, :, 1] for spin in run.eigenvalues])
    weights = np.array(run.actual_kpoints_weights) / np.sum(run.actual_kpoints_weights)
    per_channel = (occupations.sum(axis=-1) * weights).sum(axis=-1)
    moment = float(per_channel[0] - per_channel[1]) if len(per_channel) == 2 else 0.0
    return band_gap_from_eigenvalues(
        eigenvalues, number_of_electrons=run.parameters['NELECT'], total_magnetization=moment
    )


# -- builders, no calculation ---------------------------------------------------------------------------
def test_relax_builder_follows_mp_relax_set(aiida_profile, engine, protocol, potcar_family, aiida_code_installed):
    """INCAR and k-points of the relaxation are MPRelaxSet's, with IBRION/ISIF/NSW/EDIFFG in relax_settings."""
    from pymatgen.core import Lattice, Structure

    pmg = Structure(Lattice.cubic(5.43), ['Si'] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    structure = orm.StructureData(pymatgen=pmg)
    code = aiida_code_installed(default_calc_job_plugin='vasp.vasp')
    builder = engine.get_relax_builder(structure, code, protocol, OPTIONS)

    incar = builder.vasp.parameters['incar']
    expected = mp_incar('MPRelaxSet', structure)
    for tag in ('ibrion', 'isif', 'nsw'):
        expected.pop(tag)
    assert incar == expected
    settings = builder.relax_settings.get_dict()
    mp = mp_incar('MPRelaxSet', structure)
    assert (mp['ibrion'], mp['isif'], mp['nsw']) == (2, 3, 99)  # conjugate gradient, positions + cell, 99 steps
    assert {key: settings[key] for key in ('algo', 'steps', 'positions', 'shape', 'volume', 'force_cutoff')} == {
        'algo': 'cg',
        'steps': 99,
        'positions': True,
        'shape': True,
        'volume': True,
        'force_cutoff': protocol['relax']['force_cutoff'],
    }
    assert builder.vasp.kpoints.get_kpoints_mesh() == mp_kpoints('MPRelaxSet', structure).get_kpoints_mesh()
    assert builder.vasp.potential_mapping.get_dict() == {'Si': 'Si'}
    assert builder.vasp.calc.metadata.options['withmpi'] is False

    fixed_cell = engine.get_relax_builder(structure, code, protocol, OPTIONS, relax_cell=False).relax_settings
    assert (fixed_cell['positions'], fixed_cell['shape'], fixed_cell['volume']) == (True, False, False)


def test_magmom_and_hubbard_u_follow_aiida_vasp_species_order(aiida_profile, engine, protocol):
    """MAGMOM per site; LDAU lists per run of kinds, as aiida-vasp writes POSCAR and POTCAR."""
    structure = orm.StructureData(cell=np.eye(3) * 4.0)
    # Fe1 O Fe2 O: four runs of kinds although there are only two elements.
    for position, symbol, name in [
        ((0, 0, 0), 'Fe', 'Fe1'),
        ((2, 0, 0), 'O', 'O'),
        ((0, 2, 0), 'Fe', 'Fe2'),
        ((0, 0, 2), 'O', 'O'),
    ]:
        structure.append_atom(position=position, symbols=symbol, name=name)
    pmg_set = engine.input_set('MPStaticSet', structure, protocol['scf'], protocol)
    mp = pmg_set.incar
    incar = engine.incar(structure, pmg_set, magnetic_moments=None)
    assert incar['magmom'] == list(mp['MAGMOM'])
    assert incar['ispin'] == 2
    u_by_element = dict(zip(pmg_set.poscar.site_symbols, mp['LDAUU']))
    assert u_by_element['Fe'] > 0
    assert incar['ldauu'] == [u_by_element[s] for s in ('Fe', 'O', 'Fe', 'O')]
    # What the energy corrections are told: MP's own U on Fe, so its GGA/GGA+U constant applies.
    assert engine.hubbard_u(structure, protocol) == {'Fe': 5.3}
    plain = merge_overrides(protocol, {'scf': {'incar': {'LDAU': None}}}, strict=False)
    assert engine.hubbard_u(structure, plain) == {}
    assert engine.mp_gga_u_constants_apply

    assert engine.incar(structure, pmg_set, magnetic_moments={})['ispin'] == 1
    assert 'magmom' not in engine.incar(structure, pmg_set, magnetic_moments={})
    assert engine.incar(structure, pmg_set, magnetic_moments={'Fe': 3.0})['magmom'] == [3.0, 0.0, 3.0, 0.0]


def test_monkhorst_pack_mesh_becomes_shifted_gamma_mesh(aiida_profile):
    from pymatgen.io.vasp.inputs import Kpoints

    from aiida_hpcai.engines.vasp import kpoints_from_pymatgen

    structure = orm.StructureData(cell=np.eye(3) * 3.0)
    structure.append_atom(position=(0, 0, 0), symbols='Si')
    kpoints = kpoints_from_pymatgen(Kpoints.monkhorst_automatic((4, 3, 2)), structure)
    assert kpoints.get_kpoints_mesh() == ([4, 3, 2], [0.5, 0.0, 0.5])
    kpoints = kpoints_from_pymatgen(Kpoints.gamma_automatic((4, 3, 2)), structure)
    assert kpoints.get_kpoints_mesh() == ([4, 3, 2], [0.0, 0.0, 0.0])


def test_protocols_and_overrides(aiida_profile, engine):
    assert set(engine.protocol_names()) == {'fast', 'balanced', 'precise'}
    precise = engine.load_protocol('precise', {'relax': {'incar': {'ENCUT': 600}}})
    assert precise['relax']['incar'] == {'EDIFF_PER_ATOM': 1.0e-6, 'ENCUT': 600}
    structure = orm.StructureData(cell=np.eye(3) * 3.0)
    for position in ((0, 0, 0), (1.5, 1.5, 1.5)):
        structure.append_atom(position=position, symbols='Si')
    incar = engine.incar(structure, engine.input_set('MPRelaxSet', structure, precise['relax'], precise), None)
    # pymatgen turns its pseudo-tag EDIFF_PER_ATOM into EDIFF but leaves it in the INCAR; VASP must not see it.
    assert (incar['ediff'], incar['encut']) == (pytest.approx(2 * 1.0e-6), 600)
    assert 'ediff_per_atom' not in incar
    with pytest.raises(ValueError, match='relax.force_cutoffs'):
        engine.load_protocol('balanced', {'relax': {'force_cutoffs': 0.1}})


def test_missing_potcar_is_reported_before_any_calculation(aiida_profile, engine, protocol, potcar_family):
    structure = orm.StructureData(cell=np.eye(3) * 5.0)
    structure.append_atom(position=(0, 0, 0), symbols='Si')
    structure.append_atom(position=(2.5, 2.5, 2.5), symbols='Ge')
    assert engine.check_structure(structure, None, protocol) == ['Ge']
    assert engine.check_structure(structure, None, {**protocol, 'potential_family': 'no-such-family'}) == ['Ge', 'Si']
    mapped = engine.load_protocol('balanced', {'potential_family': FAMILY, 'potential_mapping': {'Si': 'Si_GW'}})
    assert engine.check_structure(structure, None, mapped) == ['Ge', 'Si']
    # Po has no POTCAR in MP's table at all, whatever the family holds.
    structure.append_atom(position=(0, 2.5, 2.5), symbols='Po')
    assert engine.check_structure(structure, None, protocol) == ['Ge', 'Po']


def test_spin_polarized_result_needs_the_outcar_magnetization(aiida_profile, engine, vasp_fixtures):
    """Spin-polarized bands (a real ISPIN=2 vasprun.xml): gap over both channels; no magnetization is an error.

    No fixture has both vasprun.xml and OUTCAR of one spin-polarized run, so this path is not run through
    mock-vasp: the nodes are made as aiida-vasp's parser makes them, bands and magnetization from two runs.
    """
    from aiida_vasp.parsers.content_parsers.outcar import OutcarParser
    from aiida_vasp.parsers.content_parsers.vasprun import VasprunParser
    from aiida_vasp.parsers.vasp import get_kpoints_node

    with open(vasp_fixtures / 'spin' / 'vasprun.xml', 'rb') as handle:
        quantities, _ = VasprunParser(handler=handle).get_all_quantities()
    eigenvalues = np.array([quantities['eigenvalues'][spin] for spin in ('up', 'down')])
    occupations = np.array([quantities['occupancies'][spin] for spin in ('up', 'down')])
    bands = orm.BandsData()
    bands.set_kpointsdata(get_kpoints_node(quantities['kpoints'], quantities['structure']['unitcell']))
    bands.set_bands(eigenvalues, occupations=occupations)
    structure = orm.StructureData(cell=quantities['structure']['unitcell'])
    for site in quantities['structure']['sites']:
        structure.append_atom(position=site['position'], symbols=site['symbol'])
    misc = {
        'total_energies': {key: float(value) for key, value in quantities['total_energies'].items()},
        'fermi_level': quantities['fermi_level'],
        'run_status': {'electronic_converged': True},
    }
    nodes = {'misc': orm.Dict(misc), 'bands': bands, 'structure': structure}
    with pytest.raises(ValueError, match='magnetization'):
        engine.scf_result_from_nodes(nodes)

    nodes['misc'] = orm.Dict(misc | {'magnetization': [0.1, 0.2, 2.0]})  # non-collinear: x, y, z
    with pytest.raises(ValueError, match='collinear'):
        engine.scf_result_from_nodes(nodes)

    # A collinear spin-polarized OUTCAR (another real run) as aiida-vasp's parser reads it into `misc`.
    with open(vasp_fixtures / 'magnetization_single' / 'OUTCAR', encoding='utf-8') as handle:
        outcar, _ = OutcarParser(handler=handle).get_all_quantities()
    nodes['misc'] = orm.Dict(misc | {'magnetization': outcar['magnetization']})
    result = engine.scf_result_from_nodes(nodes)
    assert result.total_magnetization == outcar['magnetization'][0] != 0.0
    assert result.total_energy == quantities['total_energies']['energy_extrapolated']
    # Band counting over both spin channels: NELECT from the run's parameters, split by the occupations.
    weights = np.asarray(quantities['kpoints']['weights']) / np.sum(quantities['kpoints']['weights'])
    per_channel = (occupations.sum(axis=-1) * weights).sum(axis=-1)
    assert per_channel.sum() == pytest.approx(quantities['parameters']['nelect'], abs=1e-3)
    assert result.band_gap == pytest.approx(
        band_gap_from_eigenvalues(
            eigenvalues,
            number_of_electrons=quantities['parameters']['nelect'],
            total_magnetization=per_channel[0] - per_channel[1],
        )
    )
    # Both channels count: the gap is at most the gap of either channel alone.
    channel_gaps = [band_gap_from_eigenvalues(eigenvalues[i], occupations[i], max_occupation=1.0) for i in (0, 1)]
    assert result.band_gap <= min(channel_gaps) + 1e-9


# -- end to end with mock-vasp ---------------------------------------------------------------------------
def test_dft_workchain_with_vasp_through_mock_vasp(
    aiida_profile, engine, protocol, potcar_family, registry, mock_vasp_code, vasp_fixtures
):
    """``hpcai.dft`` with engine ``vasp``: vasp.relax (relaxation + its single point), then vasp.vasp (MPStaticSet).

    The fixture is a converged static run of a relaxed 26-atom Zn-P-S cell (residual forces < 1e-3 eV/Å) with
    a clean 2.2 eV gap; mock-vasp returns it for each of the three calculations, so vasp.relax sees no change
    of cell or positions and forces below the cutoff, and accepts the relaxation after one round.
    """
    outputs = vasp_fixtures / 'born_effective_charge'
    run = pymatgen_run(outputs)
    structure = orm.StructureData(pymatgen=run.initial_structure)
    relaxed = structure_parsed_by_aiida_vasp(outputs / 'vasprun.xml')
    relax_kpoints = mp_kpoints('MPRelaxSet', structure)

    # Expected inputs: MP's sets, plus what vasp.relax writes itself (EDIFFG from the force cutoff; IBRION, ISIF
    # and NSW equal MP's values in the relaxation and are absent from its final single point).
    relax_incar = mp_incar('MPRelaxSet', structure) | {'ediffg': -protocol['relax']['force_cutoff']}
    register_calculation(registry, 'relax', relax_incar, structure, relax_kpoints, outputs)
    single_point_incar = {
        tag: value for tag, value in mp_incar('MPRelaxSet', structure).items() if tag not in ('ibrion', 'isif', 'nsw')
    }
    register_calculation(registry, 'relax_single_point', single_point_incar, relaxed, relax_kpoints, outputs)
    register_calculation(
        registry, 'scf', mp_incar('MPStaticSet', relaxed), relaxed, mp_kpoints('MPStaticSet', relaxed), outputs
    )

    results, node = run_get_node(
        DftWorkChain,
        structure=structure,
        engine=orm.Str('vasp'),
        code=mock_vasp_code,
        protocol=orm.Str('balanced'),
        overrides=orm.Dict({'potential_family': FAMILY}),
        options=orm.Dict(OPTIONS),
        standardize=orm.Bool(False),  # the registry holds the fixture's cell as it is
        compute_formation_energy=orm.Bool(False),  # elemental references would need VASP runs of their own
    )
    assert node.is_finished_ok, mock_report(node)
    relaxed_out = results['relaxed_structure']
    assert np.allclose(relaxed_out.cell, run.final_structure.lattice.matrix)
    assert np.allclose([site.position for site in relaxed_out.sites], run.final_structure.cart_coords, atol=1e-6)

    assert results['total_energy'].value == pytest.approx(run.final_energy, abs=1e-6)
    assert results['energy_per_atom'].value == pytest.approx(run.final_energy / 26, abs=1e-6)
    # A clean gap: the shared rule and pymatgen's own band-edge analysis agree.
    assert results['band_gap'].value == pytest.approx(run.eigenvalue_band_properties[0], abs=1e-4)
    assert results['band_gap'].value == pytest.approx(expected_gap(run), abs=1e-4)
    assert results['total_magnetization'].value == 0.0  # the fixture ran without spin polarization
    assert results['identity'].get_dict() == engine.identity(mock_vasp_code, 'balanced', protocol)

    scf = engine.get_scf_result(node.base.links.get_outgoing(link_label_filter='scf').one().node)
    assert scf.fermi_energy == pytest.approx(run.efermi, abs=1e-6)
    assert scf.converged is True


def test_dft_workchain_stops_on_missing_potcar(aiida_profile, potcar_family, mock_vasp_code):
    """Ge has no POTCAR in the family: ``hpcai.dft`` exits before launching any calculation."""
    structure = orm.StructureData(cell=np.eye(3) * 5.0)
    structure.append_atom(position=(0, 0, 0), symbols='Si')
    structure.append_atom(position=(2.5, 2.5, 2.5), symbols='Ge')
    _, node = run_get_node(
        DftWorkChain,
        structure=structure,
        engine=orm.Str('vasp'),
        code=mock_vasp_code,
        overrides=orm.Dict({'potential_family': FAMILY}),
        options=orm.Dict(OPTIONS),
        compute_formation_energy=orm.Bool(False),
    )
    assert node.exit_status == DftWorkChain.exit_codes.ERROR_MISSING_PSEUDOPOTENTIAL.status
    assert 'Ge' in node.exit_message and 'Si' not in node.exit_message.split('family')[0]
    assert not node.called


def test_unconverged_scf_is_recognised(aiida_profile, engine, potcar_family, registry, mock_vasp_code, vasp_fixtures):
    """A real VASP run that hit NELM before converging: the adapter tells the DFT WorkChain so."""
    protocol = engine.load_protocol('balanced', {'potential_family': FAMILY, 'scf': {'max_iterations': 1}})
    outputs = vasp_fixtures / 'exit_codes' / 'elec-unconverged' / 'out'
    structure = orm.StructureData(pymatgen=pymatgen_run(outputs).final_structure)
    register_calculation(
        registry, 'scf', mp_incar('MPStaticSet', structure), structure, mp_kpoints('MPStaticSet', structure), outputs
    )

    _, node = run_get_node(engine.get_scf_builder(structure, mock_vasp_code, protocol, OPTIONS))
    assert not node.is_finished_ok
    assert engine.is_scf_unconverged(node), mock_report(node)
