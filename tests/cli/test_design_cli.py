"""``aiida-hpcai design``: refusals in one line with nothing run, and one loop with tiny models (look-up hit, AI
acceptances, no DFT) printed as JSON and written to an output folder."""

import json

import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_hpcai.cli import cli
from aiida_hpcai.workchains.coordinate import CoordinateWorkChain
from tests.cli.test_bad_input import assert_fails
from tests.workchains.test_coordinate import (  # noqa: F401 -- fixtures
    LOOSE,
    code,
    generator,
    imported_set,
    property_model,
)

# The bound keeps unlabelled MgO sets that earlier test modules stored (training sets) from being look-up hits
REQUEST = 'up to 3 MgO structures with the lowest formation energy below 0 eV/atom, no DFT'


def _invoke(*args):
    return CliRunner().invoke(cli, ['design', *map(str, args)])


def _loops() -> int:
    return orm.QueryBuilder().append(CoordinateWorkChain).count()


@pytest.mark.parametrize(
    'args, status, fragments',
    [
        (('make it shiny',), 1, ['cannot plan the request', "'shiny'"]),
        (('Xq2O3 structures',), 1, ['cannot plan the request', 'Xq']),
        ((REQUEST,), 2, ['no equicsp checkpoint is shipped', '--model']),
        ((REQUEST, '--model', 'GENERATOR', '--surrogate-model', 987654321), 2, ['--model', 'no node']),
        ((REQUEST, '--model', 'GENERATOR', '--surrogate-model', 'MODEL', '--code', 'nowhere@nothing'), 2, ['nowhere']),
        (
            (
                'MgO structures, at most 1 DFT run',
                '--model',
                'GENERATOR',
                '--surrogate-model',
                'MODEL',
                '--dft-code',
                'nowhere@nothing',
            ),
            2,
            ['--dft-code', 'nowhere@nothing'],
        ),  # fmt: skip
        ((REQUEST, '--dft-budget', -1), 2, ['--dft-budget']),
        (
            (
                'MgO structures, at most 1 DFT run',
                '--model',
                'GENERATOR',
                '--surrogate-model',
                'MODEL',
                '--dft-overrides',
                '{no_such_setting: 1}',
            ),
            2,
            ['--dft-overrides', 'no_such_setting'],
        ),  # fmt: skip
        ((REQUEST, '--dft-overrides', '[0.5]'), 2, ['--dft-overrides', 'must be a mapping']),
        (
            ('MgO structures, at most 1 DFT run', '--audit', 2),
            2,
            ['--audit', '2 audit(s) need as many DFT runs: the budget is 1'],
        ),
        ((REQUEST, '--audit', -1), 2, ['--audit']),
        ((REQUEST, '--discriminator-threshold', 0.7), 2, ['--discriminator-threshold needs --discriminator']),
        (
            (REQUEST, '--model', 'GENERATOR', '--surrogate-model', 'MODEL', '--discriminator', 'MODEL'),
            2,
            ['--discriminator', 'not a match discriminator'],
        ),
        ((REQUEST, '--submit', '--output', '.'), 2, ['--output writes the results']),
        ((REQUEST, '--formula-units', '1,0'), 2, ['--formula-units', 'distinct whole numbers >= 1']),
        ((REQUEST, '--formula-units', 'two'), 2, ['--formula-units', 'distinct whole numbers >= 1']),
        (
            ('Li-O structures, no DFT', '--model', 'GENERATOR', '--surrogate-model', 'MODEL', '--formula-units', '1,2'),
            1,
            ['refused its inputs', 'applies to a goal with a composition'],
        ),
        (
            ('oxides within 0.1 eV/atom of the hull', '--model', 'GENERATOR', '--surrogate-model', 'MODEL'),
            1,
            ['cannot evaluate energy_above_hull'],
        ),
    ],
)
def test_refusals(code, generator, property_model, args, status, fragments, request):  # noqa: F811
    if 'no equicsp checkpoint is shipped' in fragments:
        request.getfixturevalue('no_shipped_generator')
    replaced = {'GENERATOR': generator.pk, 'MODEL': property_model.pk}
    args = [replaced.get(arg, arg) for arg in args]
    before = _loops()
    assert_fails(
        _invoke(*args, '--code', code.full_label) if '--code' not in args else _invoke(*args), status, *fragments
    )
    assert _loops() == before


def test_unparseable_request_as_json(aiida_profile):
    result = _invoke('make it shiny', '--json')
    assert result.exit_code == 1
    assert json.loads(result.stdout)['error']['unparsed'] == ['shiny']


def test_design_json_and_output(code, generator, property_model, imported_set, tmp_path, capsys, monkeypatch):  # noqa: F811
    folder = tmp_path / 'run'
    result = _invoke(
        REQUEST, '--model', generator.pk, '--surrogate-model', property_model.pk, '-n', 3, '--iterations', 1,
        '--steps', 10, '--screening', json.dumps(LOOSE), '--sigma-threshold', 10, '--code', code.full_label,
        '--json', '--output', folder, '--audit-single-point',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    node = orm.load_node(payload['process_pk'])
    assert node.is_finished_ok and node.inputs.goal.label == 'hpcai.goal'
    assert node.inputs.audit_relax.value is False
    assert payload['goal']['composition'] == 'MgO' and payload['goal']['dft_budget'] == 0
    assert payload['rows'] == node.outputs.table['rows'] and payload['dft_runs'] == 0
    assert payload['iterations'] == 1 and payload['property'] == 'formation_energy_per_atom'
    sources = [row['source'] for row in payload['rows']]
    assert 'database' in sources and set(sources) <= {'database', 'dft', 'ai'}
    database = next(row for row in payload['rows'] if row['source'] == 'database')
    assert database['node_pk'] == imported_set.pk and database['value'] == -3.0

    assert json.loads((folder / 'table.json').read_text()) == node.outputs.table.get_dict()
    assert json.loads((folder / 'decision_log.json').read_text()) == node.outputs.decision_log.get_dict()
    assert (folder / 'progress.png').read_bytes() == node.outputs.plot.get_content(mode='rb')
    assert (folder / 'results.extxyz').is_file()

    from aiida_hpcai.cli.design import _print_table

    monkeypatch.setenv('COLUMNS', '240')  # rich folds long ids in a narrow terminal
    _print_table(node, node.outputs.table.get_dict(), node.outputs.decision_log.get_dict())
    printed = capsys.readouterr().out
    assert database['id'] in printed and 'stopped:' in printed


def test_candidates_without_a_generator(code, property_model, imported_set, tmp_path, no_shipped_generator):  # noqa: F811
    """--candidates and no --model where no EquiCSP ships: the loop considers the file's structures and stops."""
    from pymatgen.core import Lattice, Structure

    cif = tmp_path / 'MgO-CsCl.cif'
    Structure(Lattice.cubic(3.1), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    result = _invoke(
        'up to 3 MgO structures with a negative formation energy, no DFT', '--candidates', cif,
        '--surrogate-model', property_model.pk, '--sigma-threshold', 10, '--code', code.full_label, '--json',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    node = orm.load_node(payload['process_pk'])
    assert 'generate' not in node.inputs and node.inputs.candidates.label == 'MgO-CsCl.cif'
    assert payload['stop_reason'].startswith('candidates') and payload['iterations'] == 1
    rows = {row['source']: row for row in payload['rows']}
    assert rows['database']['node_pk'] == imported_set.pk
    assert rows['ai']['id'] == 'i1-MgO-CsCl.cif' and rows['ai']['spacegroup'] == 221 and rows['ai']['value'] < 0


def test_design_with_the_shipped_discriminator(code, property_model, tmp_path, no_shipped_generator):  # noqa: F811
    """--discriminator shipped: the loop scores its candidates with the shipped match discriminator."""
    from pymatgen.core import Lattice, Structure

    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.models.checkpoint import DEFAULT_DISCRIMINATOR, pretrained_path, sha256_file

    cif = tmp_path / 'MgO-CsCl.cif'
    Structure(Lattice.cubic(3.1), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    result = _invoke(
        'up to 3 MgO structures with a negative formation energy, no DFT', '--candidates', cif,
        '--surrogate-model', property_model.pk, '--sigma-threshold', 10, '--code', code.full_label,
        '--discriminator', 'shipped', '--discriminator-threshold', 0.0, '--json',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    node = orm.load_node(json.loads(result.stdout)['process_pk'])
    shipped = node.inputs.discriminator
    assert shipped.uuid == ModelData.pretrained(DEFAULT_DISCRIMINATOR).uuid and shipped.architecture == 'discriminator'
    assert shipped.sha256 == sha256_file(pretrained_path(DEFAULT_DISCRIMINATOR))
    assert node.inputs.discriminator_threshold.value == 0.0
    (entry,) = node.outputs.decision_log['iterations']
    job = orm.load_node(entry['discriminator_pk'])
    assert job.is_finished_ok and 0.0 <= job.outputs.predictions.get_array('mean')[0] <= 1.0
    assert entry['accepted'][0]['match_probability'] == pytest.approx(job.outputs.predictions.get_array('mean')[0])
