"""``hpcai.directive``: a tiny EquiCSP (trained by ``hpcai.train``) generates in batches, screening and a tiny
surrogate follow, on a real profile; the plotting functions on fixed inputs; composition in a parent WorkChain."""

import io

import numpy as np
import pytest
from aiida import orm
from aiida.engine import ToContext, WorkChain, run_get_node
from aiida.manage.caching import enable_caching
from aiida.plugins import CalculationFactory, WorkflowFactory
from PIL import Image
from pymatgen.core import Lattice, Structure

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.screening import filters, plots
from tests.conftest import REPO_ROOT
from tests.docs.test_tutorial import run_page, runnable_blocks, tutorial_folder  # noqa: F401 -- a fixture
from tests.generate_helpers import OPTIONS, model_program_code, train_tiny_equicsp

DirectiveWorkChain = WorkflowFactory('hpcai.directive')
GenerateCalculation = CalculationFactory('hpcai.generate')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# Loose screening for a 3-epoch model: its 2-atom cells rarely have a charge-neutral composition or symmetry.
LOOSE = {'charge_neutrality': False, 'reject_p1': False}


# -- the plotting module, on fixed inputs ---------------------------------------------------------------
def _rocksalt(a=4.2):
    return Structure.from_spacegroup('Fm-3m', Lattice.cubic(a), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_crystal_statistics():
    hexagonal = Structure(Lattice.hexagonal(3.0, 5.0), ['Mg', 'Mg'], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    triclinic = Structure(Lattice.from_parameters(3, 4, 5, 70, 80, 85), ['Li', 'O'], [[0, 0, 0], [0.3, 0.2, 0.1]])
    statistics = plots.crystal_statistics([_rocksalt(), _rocksalt(4.4), hexagonal, triclinic])
    assert statistics['elements'] == {'Cl': 2, 'Li': 1, 'Mg': 1, 'Na': 2, 'O': 1}
    assert statistics['atoms_per_cell'] == {'2': 2, '8': 2}
    assert statistics['crystal_systems'] == {'triclinic': 1, 'hexagonal': 1, 'cubic': 2}


@pytest.mark.parametrize(
    'symbol, position', [('H', (1, 1)), ('He', (1, 18)), ('Fe', (4, 8)), ('La', (8, 3)), ('Lu', (8, 17)), ('U', (9, 6))]
)
def test_periodic_table_position(symbol, position):
    assert plots.periodic_table_position(symbol) == position


def _png_size(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    return Image.open(io.BytesIO(data)).size


def test_every_figure_is_a_png(tmp_path):
    batches = [
        {'n_strategy': 'dataset', 'elapsed_seconds': 60.0, 'generated': 10, 'valid': 4},
        {'n_strategy': 'uniform', 'elapsed_seconds': 120.0, 'generated': 10, 'valid': 2},
        {'n_strategy': 'dataset', 'elapsed_seconds': 180.0, 'generated': 0, 'valid': 0},
    ]
    plots.valid_rate_plot(batches, tmp_path / 'rate.png')
    plots.element_heatmap({'Fe': 3, 'O': 5, 'La': 1, 'U': 2}, tmp_path / 'elements.png')
    plots.atoms_per_cell_plot({'2': 4, '5': 1}, tmp_path / 'atoms.png')
    plots.crystal_systems_plot({'cubic': 3, 'unknown': 1}, tmp_path / 'systems.png')
    plots.property_distributions([0.1, -0.2, np.nan], [0.0, -0.3], tmp_path / 'dist.png', 'E_f', 'eV/atom')
    for name in ('rate', 'elements', 'atoms', 'systems', 'dist'):
        width, height = _png_size(tmp_path / f'{name}.png')
        assert width > 300 and height > 200


# -- the calcfunctions that rank and report, on fixed nodes (the DFT side without DFT) -------------------
def _set(formulas, labels=None):
    structures = [
        Structure(Lattice.cubic(3.0 + 0.1 * i), list(f), [[0, 0, 0], [0.5, 0.5, 0.5]]) for i, f in enumerate(formulas)
    ]
    return StructureSet.from_pymatgen(structures, ids=[f'b0-{"".join(f)}#0' for f in formulas], labels=labels)


@pytest.mark.parametrize(
    'rank_by, expected', [('lowest', ['b0-MgO#0', 'b0-LiF#0']), ('highest', ['b0-NaCl#0', 'b0-LiF#0'])]
)
def test_rank_structures(aiida_profile, rank_by, expected):
    from aiida_hpcai.workchains.directive import rank_structures

    structures = _set([('Li', 'F'), ('Na', 'Cl'), ('K', 'Br'), ('Mg', 'O')]).store()
    predictions = orm.ArrayData()
    predictions.set_array('mean', np.array([0.1, 0.5, np.nan, -0.2]))  # KBr not predicted: always last
    predictions.set_array('sigma', np.array([0.01, 0.02, np.nan, 0.03]))
    selected = rank_structures(structures, orm.Int(2), orm.Str(rank_by), predictions=predictions)
    assert selected.ids == expected
    assert selected.get_label('predicted_mean').tolist() == ([-0.2, 0.1] if rank_by == 'lowest' else [0.5, 0.1])
    unranked = rank_structures(structures, orm.Int(3), orm.Str(rank_by))
    assert unranked.ids == structures.ids[:3] and np.isnan(unranked.get_label('predicted_mean')).all()


def test_rank_structures_passes_over_cells_too_large_for_dft(aiida_profile):
    from aiida_hpcai.workchains.directive import rank_structures

    lattice = Lattice.cubic(4.0)
    big = Structure(lattice, ['Li', 'Li', 'O', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5]])
    small = Structure(lattice, ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structures = StructureSet.from_pymatgen([big, small], ids=['b0-Li2O2#0', 'b0-MgO#0']).store()
    predictions = orm.ArrayData()
    predictions.set_array('mean', np.array([-3.0, -2.0]))  # the 4-atom cell ranks first
    predictions.set_array('sigma', np.array([0.1, 0.1]))
    selected = rank_structures(structures, orm.Int(2), orm.Str('lowest'), predictions=predictions, max_atoms=orm.Int(2))
    assert selected.ids == ['b0-MgO#0']
    none = rank_structures(structures, orm.Int(2), orm.Str('lowest'), predictions=predictions, max_atoms=orm.Int(1))
    assert len(none) == 0


def test_structures_dft_cannot_run_are_passed_over(aiida_profile, sssp_family, pw_code):
    from aiida_hpcai.workchains.directive import dft_cannot_run, rank_structures

    # Au has no pseudopotential in the SSSP subset; S has no elemental reference structure.
    structures = _set([('Mg', 'O'), ('Au', 'Si'), ('Zn', 'S')]).store()
    dft = {'engine': orm.Str('quantumespresso'), 'code': pw_code, 'protocol': orm.Str('fast')}
    blocked = dft_cannot_run(structures, dft)
    assert blocked == {'b0-AuSi#0': 'no pseudopotential for Au', 'b0-ZnS#0': 'no elemental reference for S'}
    assert dft_cannot_run(structures, {**dft, 'compute_formation_energy': orm.Bool(False)}) == {
        'b0-AuSi#0': 'no pseudopotential for Au'
    }
    predictions = orm.ArrayData()
    predictions.set_array('mean', np.array([-1.0, -3.0, -2.0]))  # the two blocked ones rank first
    predictions.set_array('sigma', np.array([0.1, 0.1, 0.1]))
    selected = rank_structures(
        structures, orm.Int(2), orm.Str('lowest'), predictions=predictions, exclude=orm.List(sorted(blocked))
    )
    assert selected.ids == ['b0-MgO#0']


def test_report_compares_surrogate_and_dft(aiida_profile):
    from aiida_hpcai.workchains.directive import directive_report

    selected = _set([('Li', 'F'), ('Mg', 'O')], labels={'predicted_mean': [-1.0, -2.0], 'predicted_sigma': [0.1, 0.1]})
    relaxed = _set([('Mg', 'O')], labels={'formation_energy_per_atom': [-2.5], 'band_gap': [4.0]})  # LiF failed
    records = {
        'jobs': [
            {
                'job': 0,
                'batch': 0,
                'n_strategy': None,
                'seed': 0,
                'status': 'finished_ok',
                'wall_seconds': 1.0,
                'elapsed_seconds': 1.5,
            }
        ],
        'symprec': 0.1,
    }
    counts = orm.Dict({'total': 2, 'valid': 2})
    summary = orm.Dict({'n_requested': 3, 'n_valid': 2, 'invalid_reasons': {'too_close': 1, 'nan': 0}, 'seconds': 0.5})
    result = directive_report(
        orm.Dict(records),
        summary_0=summary,
        counts_0=counts,
        valid=selected,
        selected=selected,
        relaxed=relaxed,
        target=orm.Str('formation_energy_per_atom'),
        units=orm.Str('eV/atom'),
    )
    statistics = result['statistics'].get_dict()
    assert statistics['surrogate_vs_dft'] == [{'id': 'b0-MgO#0', 'surrogate': -2.0, 'dft': -2.5}]
    assert statistics['totals'] == {
        'valid_rate': pytest.approx(2 / 3),
        'generated': 3,
        'crystals': 2,
        'valid': 2,
        'invalid_samples': {'too_close': 1},
        'rejected': {},
    }
    names = sorted(key for key in result if key.startswith('plot_'))
    assert names == [
        'plot_atoms_per_cell',
        'plot_crystal_systems',
        'plot_elements',
        'plot_surrogate_vs_dft',
        'plot_valid_rate',
    ]
    assert result['plot_surrogate_vs_dft'].get_content(mode='rb').startswith(PNG_MAGIC)


# -- the WorkChain on a real profile ---------------------------------------------------------------------
@pytest.fixture(scope='module')
def code(aiida_profile, tmp_path_factory):
    return model_program_code(str(tmp_path_factory.mktemp('directive_work')))


@pytest.fixture(scope='module')
def generator(code):
    return train_tiny_equicsp(code).outputs.model


@pytest.fixture(scope='module')
def property_model(code, generator):
    """A tiny Crysformer ensemble on the same synthetic cells (label ``energy``): the surrogate that ranks."""
    structures = train_tiny_equicsp(code).inputs.structures
    parameters = {'target': 'energy', 'units': 'eV/atom', 'model_config': 'tiny', 'ensemble_size': 2, 'epochs': 1}
    with enable_caching(identifier='aiida.calculations:hpcai.train'):
        _, node = run_get_node(
            CalculationFactory('hpcai.train'),
            code=code,
            structures=structures,
            parameters=orm.Dict({**parameters, 'batch_size': 16, 'seed': 0}),
            metadata={'options': OPTIONS},
        )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return node.outputs.model


def _inputs(code, generator, **extra):
    return {
        'generate': {
            'code': code,
            'model': generator,
            'parameters': orm.Dict({'mode': 'abinitio', 'n_samples': 5, 'steps': 10, 'seed': 7}),
            'metadata': {'options': OPTIONS},
        },
        **extra,
    }


def test_directive_without_dft(code, generator, property_model):
    inputs = _inputs(
        code,
        generator,
        batches=orm.Int(2),
        n_strategies=orm.List(['dataset', 'uniform']),
        screening=orm.Dict(LOOSE),
        surrogate={
            'models': {'m0': property_model},
            'sigma_threshold': orm.Float(10.0),
            'predict': {'code': code, 'metadata': {'options': OPTIONS}},
        },
        top_k=orm.Int(0),
    )
    results, node = run_get_node(DirectiveWorkChain, **inputs)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    jobs = [child for child in node.called if child.process_type == 'aiida.calculations:hpcai.generate']
    assert len(jobs) == 4 and {job.inputs.parameters['seed'] for job in jobs} == {7, 8, 9, 10}
    assert sorted(job.inputs.parameters['n_strategy'] for job in jobs) == ['dataset', 'dataset', 'uniform', 'uniform']

    statistics = results['statistics'].get_dict()
    batches = statistics['batches']
    assert [(row['batch'], row['n_strategy']) for row in batches] == [
        (0, 'dataset'),
        (0, 'uniform'),
        (1, 'dataset'),
        (1, 'uniform'),
    ]
    generated, valid = results['generated_structures'], results['valid_structures']
    for row, job in zip(batches, sorted(jobs, key=lambda job: job.inputs.parameters['seed'])):
        summary = job.outputs.summary.get_dict()
        assert row['generated'] == 5 and row['crystals'] == summary['n_valid']
        # every crystal is either valid or rejected for one reason
        assert row['valid'] + sum(row['rejected'].values()) == row['crystals']
        assert set(row['rejected']) <= set(filters.REASONS)
        assert row['wall_seconds'] > 0 and row['elapsed_seconds'] >= row['wall_seconds']
    assert [row['elapsed_seconds'] for row in batches] == sorted(row['elapsed_seconds'] for row in batches)
    totals = statistics['totals']
    assert totals['generated'] == 20 and totals['valid'] == len(valid) > 0
    assert totals['crystals'] == len(generated) and len(generated) + len(generated.get_skipped()) == 20
    assert len(set(generated.ids)) == len(generated) and all(
        i.split('-')[0] in {'b0', 'b1', 'b2', 'b3'} for i in generated.ids
    )
    assert set(valid.ids) <= set(generated.ids)
    composition = statistics['valid_structures']
    assert sum(composition['crystal_systems'].values()) == len(valid)
    assert sum(composition['atoms_per_cell'].values()) == len(valid)
    assert set(composition['elements']) == set(valid.elements)

    # the surrogate ranked the valid ones; no DFT asked, none run
    assert results['surrogate']['summary']['n_structures'] == len(valid)
    assert 'selected_structures' not in results and 'dft' not in results
    assert sorted(results['plots']) == ['atoms_per_cell', 'crystal_systems', 'elements', 'valid_rate']
    for picture in results['plots'].values():
        assert picture.get_content(mode='rb').startswith(PNG_MAGIC)


def test_no_dft_when_every_valid_cell_is_larger_than_dft_max_atoms(code, generator):
    # a DFT code that could run nothing: no hpcai.dft_batch may start
    inputs = _inputs(code, generator, screening=orm.Dict(LOOSE), top_k=orm.Int(2), dft_max_atoms=orm.Int(1))
    inputs['dft_batch'] = {'dft': {'engine': orm.Str('quantumespresso'), 'code': code, 'protocol': orm.Str('fast')}}
    results, node = run_get_node(DirectiveWorkChain, **inputs)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert min(results['valid_structures'].arrays.natoms) > 1  # this seed's valid cells: none of one atom
    assert len(results['selected_structures']) == 0 and 'dft' not in results
    assert not [child for child in node.called if child.process_label == 'DftBatchWorkChain']
    assert any(
        'at most 1 atoms that the DFT engine can run: no DFT' in entry.message
        for entry in orm.Log.collection.get_logs_for(node)
    )


def test_none_valid_is_an_exit_code_with_statistics(code, generator):
    inputs = _inputs(code, generator, screening=orm.Dict({**LOOSE, 'min_distance': 50.0}))
    results, node = run_get_node(DirectiveWorkChain, **inputs)
    assert node.exit_status == DirectiveWorkChain.exit_codes.ERROR_NONE_VALID.status
    assert 'atoms_too_close' in node.exit_message
    assert results['statistics']['totals']['valid'] == 0
    assert sorted(results['plots']) == ['valid_rate'] and 'valid_structures' not in results


def test_nothing_generated_is_an_exit_code(code, generator):
    """Na and Cl are unknown to the model: the job ends with its own exit code, the directive with 420."""
    inputs = _inputs(code, generator)
    inputs['generate']['parameters'] = orm.Dict({'mode': 'csp', 'compositions': {'NaCl': 2}, 'steps': 2})
    results, node = run_get_node(DirectiveWorkChain, **inputs)
    assert node.exit_status == DirectiveWorkChain.exit_codes.ERROR_NO_STRUCTURE_GENERATED.status
    assert 'GenerateCalculation<' in node.exit_message and 'NaCl' in node.exit_message
    assert (
        results['statistics']['batches'][0]['status']
        == f'exit {GenerateCalculation.exit_codes.ERROR_UNKNOWN_ELEMENT.status}'
    )
    assert 'generated_structures' not in results


@pytest.mark.parametrize(
    'extra, message',
    [
        (('top_k', orm.Int, 2), 'give the DFT inputs'),
        (('top_k', orm.Int, -1), 'must be 0 \\(no DFT\\) or more'),
        (('n_strategies', orm.List, ['poisson']), '`n_strategies` must be a non-empty list'),
        (('screening', orm.Dict, {'temperature': 1}), 'unknown screening parameter'),
        (('rank_by', orm.Str, 'middle'), "must be one of \\['lowest', 'highest'\\]"),
    ],
)
def test_inputs_are_refused_before_anything_runs(code, generator, extra, message):
    port, node_type, value = extra
    with pytest.raises(ValueError, match=message):
        run_get_node(DirectiveWorkChain, **_inputs(code, generator, **{port: node_type(value)}))


# -- composition: hpcai.directive inside another plugin's WorkChain, as docs/source/tutorial_directive.md says
class CampaignWorkChain(WorkChain):
    """Run one directive campaign and pass on its valid structures and statistics."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(DirectiveWorkChain, namespace='directive')
        spec.expose_outputs(DirectiveWorkChain, namespace='directive')
        spec.outline(cls.run_directive, cls.collect)

    def run_directive(self):
        inputs = self.exposed_inputs(DirectiveWorkChain, namespace='directive')
        return ToContext(directive=self.submit(DirectiveWorkChain, **inputs))

    def collect(self):
        self.out_many(self.exposed_outputs(self.ctx.directive, DirectiveWorkChain, namespace='directive'))
        if not self.ctx.directive.is_finished_ok:
            return self.ctx.directive.exit_code


def test_composition(code, generator):
    inputs = _inputs(code, generator, screening=orm.Dict(LOOSE))
    results, node = run_get_node(CampaignWorkChain, directive=inputs)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert isinstance(results['directive']['generated_structures'], StructureSet)
    assert results['directive']['statistics']['totals']['generated'] == 5


# -- the tutorial page, run as the surrogate tutorial is (tests/docs/test_tutorial.py) ---------------------
TUTORIAL = REPO_ROOT / 'docs' / 'source' / 'tutorial_directive.md'


def test_tutorial_runs(aiida_profile, tutorial_folder):  # noqa: F811 -- the imported fixture
    commands = [command for block in runnable_blocks(TUTORIAL.read_text()) for command in block.commands()]
    assert any(command.startswith('aiida-hpcai directive ') for command in commands), commands
    run_page(TUTORIAL)
    assert (tutorial_folder / 'directive_run' / 'valid.extxyz').is_file()


# -- aiida-hpcai directive: refusals in one line before anything runs, and --json -------------------------
def _invoke(*args):
    from click.testing import CliRunner

    from aiida_hpcai.cli import cli

    return CliRunner().invoke(cli, ['directive', *map(str, args)])


def _generate_jobs() -> int:
    return orm.QueryBuilder().append(CalculationFactory('hpcai.generate')).count()


@pytest.mark.parametrize(
    'args, status, fragments',
    [
        (('--mode', 'csp', '-n', 2), 2, ['--mode csp needs at least one --composition']),
        (('--mode', 'csp', '--composition', 'LiO', '-n', 2, '--n-strategy', 'uniform'), 2, ['--n-strategy applies']),
        (('--mode', 'abinitio', '-n', 2), 2, ['no equicsp checkpoint is shipped', '--model']),
        (('--mode', 'abinitio', '-n', 2, '--top-k', 1, '--dft-code', 'nowhere@nothing', 'MODEL'), 2, ['--dft-code']),
        (
            ('--mode', 'abinitio', '-n', 2, '--top-k', 1, '--dft-overrides', '{no_such_setting: 1}', 'MODEL'),
            2,
            ['--dft-overrides', 'no_such_setting'],
        ),
        (
            ('--mode', 'abinitio', '-n', 2, '--screening', '{temperature: 1}', 'MODEL'),
            1,
            ['unknown screening parameter'],
        ),
        (('--mode', 'abinitio', '-n', 2, '--elements', 'Fe,Xx', 'MODEL'), 2, ["'Xx' is not an element symbol"]),
        (('--mode', 'abinitio', '-n', 2, '--elements', 'O,O', 'MODEL'), 2, ['names an element twice']),
        (('--mode', 'abinitio', '-n', 2, '--elements', 'O', '--require', 'Li', 'MODEL'), 2, ['not all among']),
        (
            ('--mode', 'csp', '--composition', 'LiO', '-n', 2, '--elements', 'Li,O', 'MODEL'),
            2,
            ['--elements and --require apply to --mode abinitio'],
        ),
    ],
)
def test_cli_refusals(code, generator, args, status, fragments, request):
    from tests.cli.test_bad_input import assert_fails

    if 'no equicsp checkpoint is shipped' in fragments:
        request.getfixturevalue('no_shipped_generator')
    if args[-1] == 'MODEL':
        args = (*args[:-1], '--model', generator.pk, '--no-surrogate')
    before = _generate_jobs()
    assert_fails(_invoke(*args, '--code', code.full_label), status, *fragments)
    assert _generate_jobs() == before


def test_cli_json(code, generator):
    import json

    result = _invoke(
        '--mode', 'csp', '--composition', 'LiO', '-n', 2, '--steps', 8, '--model', generator.pk, '--no-surrogate',
        '--screening', json.dumps(LOOSE), '--code', code.full_label, '--json',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    node = orm.load_node(payload['process_pk'])
    assert node.is_finished_ok and payload['statistics'] == node.outputs.statistics.get_dict()
    assert payload['statistics']['totals']['generated'] == 2 and payload['dft'] == []
    assert orm.load_node(payload['generated_structures_pk']).uuid == node.outputs.generated_structures.uuid
    assert set(payload['plots']) >= {'valid_rate'}


def test_cli_elements(code, generator):
    """--elements and --require reach every generate job as the sampler's ``elements``/``required_elements``;
    an element the model does not know fails the run with one line."""
    import json

    result = _invoke(
        '--mode', 'abinitio', '-n', 3, '--steps', 8, '--elements', 'Li,O', '--require', 'O', '--model', generator.pk,
        '--no-surrogate', '--screening', json.dumps(LOOSE), '--code', code.full_label, '--json',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    node = orm.load_node(json.loads(result.stdout)['process_pk'])
    jobs = node.base.links.get_outgoing(GenerateCalculation).all_nodes()
    assert len(jobs) == 1 and jobs[0].inputs.parameters['elements'] == ['Li', 'O']
    assert jobs[0].inputs.parameters['required_elements'] == ['O']
    for structure in node.outputs.generated_structures:
        assert 'O' in structure.composition and set(structure.composition.as_dict()) <= {'Li', 'O'}

    result = _invoke('--mode', 'abinitio', '-n', 1, '--steps', 2, '--elements', 'Na,O', '--model', generator.pk,
                     '--no-surrogate', '--code', code.full_label)  # fmt: skip
    assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
    # the tables of what ran, then the command's own one-line error
    errors = [line for line in result.output.splitlines() if line.startswith('Error: hpcai.directive<')]
    assert len(errors) == 1 and '[420]' in errors[0] and 'Na not among' in errors[0], result.output
