"""``aiida-hpcai generate`` through click's runner on a test profile: real jobs with a tiny EquiCSP, and refusals."""

import csv
import json

import ase.io
import pytest
from aiida import orm
from click.testing import CliRunner
from pymatgen.core import Composition

from aiida_hpcai.cli import cli
from aiida_hpcai.cli.generate import write_output
from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from tests.cli.test_bad_input import assert_fails
from tests.generate_helpers import TINY_EQUICSP, model_program_code, train_tiny_equicsp


@pytest.fixture(scope='module')
def code(aiida_profile, tmp_path_factory):
    return model_program_code(str(tmp_path_factory.mktemp('generate_cli_work')))


@pytest.fixture(scope='module')
def model(code):
    return train_tiny_equicsp(code).outputs.model


def invoke(*args):
    return CliRunner().invoke(cli, ['generate', *map(str, args)])


def test_csp_json_and_csv(code, model, tmp_path):
    table = tmp_path / 'generated.csv'
    result = invoke(
        '--mode', 'csp', '--composition', 'LiO', '--composition', 'FeS', '-n', 2, '--steps', 8, '--seed', 4,
        '--model', model.pk, '--code', code.full_label, '--json', '--output', table,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload['mode'], payload['seed'], payload['steps'], payload['n_requested']) == ('csp', 4, 8, 4)
    assert sorted(row['id'] for row in payload['rows']) == ['FeS#0', 'FeS#1', 'LiO#0', 'LiO#1']
    for row in payload['rows']:
        assert row['formula'] == row['id'].split('#')[0]
        assert (row['status'] == 'valid') == (not row['reason'])
    structures = orm.load_node(payload['structures_pk'])
    assert isinstance(structures, StructureSet) and structures.count == payload['n_valid']
    node = orm.load_node(payload['process_pk'])
    assert node.inputs.parameters.get_dict() == {
        'mode': 'csp',
        'compositions': {'LiO': 2, 'FeS': 2},
        'steps': 8,
        'seed': 4,
    }
    with table.open() as handle:
        assert list(csv.DictReader(handle)) == [
            {key: str(value) for key, value in row.items()} for row in payload['rows']
        ]
    # the other kind of file --output writes, from the same results
    write_output(tmp_path / 'generated.extxyz', structures, payload['rows'])
    frames = ase.io.read(tmp_path / 'generated.extxyz', index=':') if structures.count else []
    assert [sorted(atoms.numbers) for atoms in frames] == [sorted(s.atomic_numbers) for s in structures]


def test_abinitio_table_and_cif_folder(code, model, tmp_path):
    folder = tmp_path / 'cifs'
    result = invoke('--mode', 'abinitio', '-n', 3, '--steps', 6, '--model', model.uuid, '--code', code.full_label,
                    '--output', folder)  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = ' '.join(result.output.split())  # rich may wrap the lines
    assert 'abinitio samples, seed 0, 6 steps' in printed and 'of 3 valid' in printed
    node = orm.QueryBuilder().append(StructureSet, tag='s').order_by({'s': {'id': 'desc'}}).first(flat=True)
    assert sorted(path.stem for path in folder.glob('*.cif')) == sorted(i.replace('#', '_') for i in node.ids)


def test_abinitio_within_elements(code, model):
    result = invoke('--mode', 'abinitio', '-n', 3, '--steps', 6, '--elements', 'Li,O', '--model', model.pk,
                    '--code', code.full_label, '--json')  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload['rows']) == 3
    assert all(set(Composition(row['formula']).as_dict()) == {'Li', 'O'} for row in payload['rows']), payload['rows']
    node = orm.load_node(payload['process_pk'])
    assert node.inputs.parameters['elements'] == ['Li', 'O'] and 'required_elements' not in node.inputs.parameters
    result = invoke('--mode', 'abinitio', '-n', 1, '--steps', 2, '--elements', 'Li,O', '--require', 'none',
                    '--model', model.pk, '--code', code.full_label, '--json')  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orm.load_node(json.loads(result.stdout)['process_pk']).inputs.parameters['required_elements'] == []


def test_an_element_the_model_does_not_know(code, model):
    result = invoke('--mode', 'abinitio', '-n', 1, '--steps', 2, '--elements', 'Na,O', '--model', model.pk,
                    '--code', code.full_label)  # fmt: skip
    # the job ran and failed: its parser's report line, then the command's own one-line error
    assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
    critical = [line for line in result.output.splitlines() if line.startswith('Critical:')]
    assert len(critical) == 1 and 'exit status 370' in critical[0] and 'Na not among' in critical[0], result.output


@pytest.mark.parametrize(
    'args, status, fragments',
    [
        (['--mode', 'csp', '-n', 0, '--composition', 'LiO'], 2, ['0 is not in the range']),
        (['--mode', 'csp', '-n', 2], 2, ['--mode csp needs at least one --composition']),
        (['--mode', 'abinitio', '-n', 2, '--composition', 'LiO'], 2, ['--composition applies to --mode csp']),
        (['--mode', 'sideways', '-n', 2], 2, ["'sideways' is not one of"]),
        (['--mode', 'csp', '-n', 1, '--composition', 'fe2o3'], 1, ["cannot read the formula 'fe2o3'"]),
        (['--mode', 'abinitio', '-n', 1, '--switch', 1], 1, ['only to `n_strategy` hybrid']),
        (['--mode', 'abinitio', '-n', 1, '--elements', 'Fe,Xx'], 2, ["'Xx' is not an element symbol"]),
        (['--mode', 'abinitio', '-n', 1, '--elements', ','], 2, ['name at least one element']),
        (['--mode', 'abinitio', '-n', 1, '--elements', 'O,O'], 2, ['names an element twice']),
        (['--mode', 'abinitio', '-n', 1, '--elements', 'Li', '--require', 'O'], 2, ['not all among --elements']),
        (['--mode', 'csp', '-n', 1, '--composition', 'LiO', '--elements', 'Li,O'], 2, ['apply to --mode abinitio']),
    ],
)
def test_refused_before_anything_runs(code, model, args, status, fragments):
    before = orm.QueryBuilder().append(orm.CalcJobNode).count()
    assert_fails(invoke(*args, '--model', model.pk, '--code', code.full_label), status, *fragments)
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == before


def test_model_that_cannot_generate(code, model):
    crysformer = ModelData(b'not loaded', filename='model.pt', architecture='crysformer', target='band_gap').store()
    result = invoke('--mode', 'abinitio', '-n', 1, '--model', crysformer.pk, '--code', code.full_label)
    assert_fails(result, 1, "'crysformer' model, which cannot generate")
    assert_fails(
        invoke('--mode', 'abinitio', '-n', 1, '--model', code.pk, '--code', code.full_label), 2, 'not a ModelData'
    )


def test_no_shipped_model_says_how_to_train_one(code, no_shipped_generator):
    result = invoke('--mode', 'abinitio', '-n', 1, '--code', code.full_label)
    assert_fails(result, 2, 'no equicsp checkpoint is shipped', 'aiida-hpcai train SOURCE --architecture equicsp')


def test_shipped_generator_is_the_default(code):
    """Without --model the shipped EquiCSP (MP, <= 20 atoms) samples: one stored node, a crystal of the composition."""
    from aiida_hpcai.models.checkpoint import DEFAULT_GENERATOR

    shipped = ModelData.pretrained(DEFAULT_GENERATOR)
    assert shipped.architecture == 'equicsp' and ModelData.pretrained(DEFAULT_GENERATOR).pk == shipped.pk
    result = invoke(
        '--mode', 'csp', '--composition', 'AlAs', '-n', 2, '--steps', 20, '--code', code.full_label, '--json'
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    job = orm.load_node(payload['process_pk'])
    assert job.inputs.model.pk == shipped.pk
    assert (payload['mode'], payload['steps'], payload['n_requested']) == ('csp', 20, 2)
    for row in payload['rows']:
        assert row['id'].startswith('AlAs#')


def test_output_is_checked_first(code, model, tmp_path):
    common = ['--mode', 'abinitio', '-n', 1, '--model', model.pk, '--code', code.full_label]
    assert_fails(invoke(*common, '--output', tmp_path / 'missing' / 'x.csv'), 2, 'does not exist')
    (tmp_path / 'file.txt').write_text('taken')
    assert_fails(invoke(*common, '--output', tmp_path / 'file.txt'), 2, 'give a .csv or .extxyz file, or a folder')
    assert_fails(invoke(*common, '--output', tmp_path / 'x.csv', '--submit'), 2, 'which --submit does not wait for')


def test_submit_hands_the_job_to_the_daemon(code, model, monkeypatch):
    import aiida.engine

    submitted = {}

    def fake_submit(process_class, **inputs):
        submitted.update(inputs, process=process_class)
        return model  # any stored node: the command prints its pk

    monkeypatch.setattr(aiida.engine, 'submit', fake_submit)
    result = invoke('--mode', 'csp', '--composition', 'FeO', '-n', 5, '--model', model.pk, '--code', code.full_label,
                    '--submit', '--json')  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {'process_pk': model.pk, 'submitted': True}
    assert submitted['process'].__name__ == 'GenerateCalculation'
    assert submitted['parameters'].get_dict() == {'mode': 'csp', 'compositions': {'FeO': 5}}


def test_train_a_generator_from_the_command_line(code, model):
    """`aiida-hpcai train --architecture equicsp` sends what the shared fixture sent (so the cache answers)."""
    from aiida.manage.caching import enable_caching

    structures = orm.load_node(model.training_set_uuid)
    args = ['train', structures.pk, '--architecture', 'equicsp', '--config', 'tiny', '--epochs', 3, '--batch-size', 8,
            '--learning-rate', 5e-3, '--seed', 0, '--code', code.full_label]  # fmt: skip
    with enable_caching(identifier='aiida.calculations:hpcai.train'):
        result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output
    trained = orm.QueryBuilder().append(ModelData, tag='m').order_by({'m': {'id': 'desc'}}).first(flat=True)
    assert trained.architecture == 'equicsp' and trained.target is None
    assert trained.creator.inputs.parameters.get_dict() == TINY_EQUICSP
    assert trained.creator.base.caching.is_created_from_cache  # the same job as the fixture's: trained once


def test_train_without_target_only_for_a_generator(code):
    result = CliRunner().invoke(cli, ['train', 'nowhere.csv', '--code', code.full_label])
    assert_fails(result, 2, '--target is required to train a crysformer')
