"""``aiida-hpcai predict`` / ``train`` run the real processes on the test profile."""

import csv
import json

import ase.io
import click
import pytest
from click.testing import CliRunner

from aiida_hpcai.cli import cli
from aiida_hpcai.cli.surrogate import read_structure_files
from tests.surrogate_helpers import (
    TINY_TRAINING_CLI,
    model_program_code,
    needs_model_program,
    perov_structures,
    train_tiny_model,
)


@pytest.fixture
def structure_files(tmp_path, shared_data_dir):
    """One CIF, one POSCAR and an extxyz with two frames, all perov_5 structures the tiny model knows."""
    structures = list(perov_structures(shared_data_dir))[:4]
    structures[0].to(filename=str(tmp_path / 'first.cif'))
    structures[1].to(filename=str(tmp_path / 'POSCAR'), fmt='poscar')
    ase.io.write(tmp_path / 'two.extxyz', [s.to_ase_atoms() for s in structures[2:4]], format='extxyz')
    return [tmp_path / 'first.cif', tmp_path / 'POSCAR', tmp_path / 'two.extxyz'], structures


def test_read_structure_files_names_every_structure(structure_files):
    paths, structures = structure_files
    structure_set = read_structure_files(paths)
    assert structure_set.ids == ['first.cif', 'POSCAR', 'two.extxyz#0', 'two.extxyz#1']
    for read, original in zip(structure_set, structures):
        assert read.composition.reduced_formula == original.composition.reduced_formula
        assert read.lattice.volume == pytest.approx(original.lattice.volume)


def test_read_structure_files_refuses_unreadable(tmp_path):
    bad = tmp_path / 'broken.cif'
    bad.write_text('data_nothing\n')
    with pytest.raises(click.BadParameter, match='broken.cif'):
        read_structure_files([bad])


def test_unreadable_file_is_recorded_and_the_rest_go_on(structure_files, tmp_path):
    paths, _ = structure_files
    bad = tmp_path / 'broken.cif'
    bad.write_text('data_nothing\n')
    structure_set = read_structure_files([paths[0], bad, paths[2]])
    assert structure_set.ids == ['first.cif', 'two.extxyz#0', 'two.extxyz#1']
    assert [row['id'] for row in structure_set.get_skipped()] == ['broken.cif']
    assert structure_set.base.attributes.get('skipped_reasons') == {'unparsable structure': 1}


def test_extxyz_ids_and_labels_are_kept(tmp_path, shared_data_dir):
    frames = [s.to_ase_atoms() for s in list(perov_structures(shared_data_dir))[:2]]
    for index, atoms in enumerate(frames):
        atoms.info.update({'id': f'perov-{index}', 'heat_ref': 0.5 * index})
    ase.io.write(tmp_path / 'labelled.extxyz', frames, format='extxyz')
    structure_set = read_structure_files([tmp_path / 'labelled.extxyz'])
    assert structure_set.ids == ['perov-0', 'perov-1']
    assert structure_set.get_label('heat_ref').tolist() == [0.0, 0.5]


@needs_model_program
def test_predict_json_and_csv(aiida_code_installed, shared_data_dir, structure_files, tmp_path):
    code = model_program_code(aiida_code_installed)
    model = train_tiny_model(code, perov_structures(shared_data_dir)).outputs.model
    paths, structures = structure_files
    table = tmp_path / 'predictions.csv'

    result = CliRunner().invoke(
        cli,
        [
            'predict',
            *map(str, paths),
            '--model',
            str(model.pk),
            '--threshold',
            '1e6',
            '--code',
            code.full_label,
            '--json',
            '--output',
            str(table),
            '--uncertainty',
            'mc_dropout_readout',
            '--mc-samples',
            '4',
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = payload['rows']
    assert [row['id'] for row in rows] == ['first.cif', 'POSCAR', 'two.extxyz#0', 'two.extxyz#1']
    assert [row['formula'] for row in rows] == [s.composition.reduced_formula for s in structures]
    assert all(row['status'] == 'ok' and row['confident'] and row['sigma'] >= 0 for row in rows)
    assert payload['units'] == 'eV/atom' and payload['target'] == 'heat_ref'

    from aiida.orm import load_node

    workchain = load_node(payload['process_pk'])
    assert workchain.process_label == 'SurrogateWorkChain' and workchain.is_finished_ok
    (calculation,) = [node for node in workchain.called_descendants if node.process_label == 'PredictCalculation']
    assert calculation.inputs.parameters.get_dict() == {'uncertainty': 'mc_dropout_readout', 'mc_samples': 4}
    with table.open() as handle:
        written = list(csv.DictReader(handle))
    assert [float(row['mean']) for row in written] == pytest.approx([row['mean'] for row in rows])


@pytest.fixture
def shipped_checkpoint(aiida_code_installed, shared_data_dir, tmp_path, monkeypatch):
    """Stand in for the pretrained file of `heat_ref`: a re-saved tiny checkpoint (new bytes, so a new node) with
    its JSON record beside it, in a stand-in for the package's `pretrained/` folder."""
    from aiida_hpcai.models import checkpoint

    code = model_program_code(aiida_code_installed)
    model = train_tiny_model(code, perov_structures(shared_data_dir)).outputs.model
    content = checkpoint.load_checkpoint(model.export(tmp_path / 'trained.pt'))
    content['dataset'] = {'name': 'shipped with the package'}
    path = tmp_path / 'pretrained' / 'pretrained_heat_ref.pt'
    sha256 = checkpoint.save_checkpoint(content, path)
    record = {key: content[key] for key in ('architecture', 'target', 'units', 'hyperparameters', 'metrics')}
    path.with_suffix('.json').write_text(json.dumps({'file': path.name, 'sha256': sha256, **record}))
    monkeypatch.setattr(checkpoint, 'PRETRAINED_DIR', path.parent)
    monkeypatch.setattr(checkpoint, 'PRETRAINED_FILES', {'heat_ref': path.name})
    return path


@needs_model_program
def test_pretrained_model_is_uploaded_once(shipped_checkpoint):
    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.models.checkpoint import sha256_file

    node = ModelData.pretrained('heat_ref')
    assert node.sha256 == sha256_file(shipped_checkpoint)
    assert (node.target, node.units, node.architecture) == ('heat_ref', 'eV/atom', 'crysformer')
    assert node.hyperparameters['model']['num_blocks'] >= 1
    assert ModelData.pretrained('heat_ref').uuid == node.uuid


@needs_model_program
def test_predict_table_with_the_shipped_model(shipped_checkpoint, structure_files, monkeypatch):
    from aiida.manage.manager import Manager

    from aiida_hpcai.cli.surrogate import PREDICT_POLL_INTERVAL

    create_runner, poll_intervals = Manager.create_runner, []

    def recording(self, *args, **kwargs):
        runner = create_runner(self, *args, **kwargs)
        poll_intervals.append(runner._poll_interval)
        return runner

    monkeypatch.setattr(Manager, 'create_runner', recording)
    paths, _ = structure_files
    result = CliRunner().invoke(cli, ['predict', str(paths[0]), '--target', 'heat_ref', '--threshold', '0'])
    assert result.exit_code == 0, result.output
    assert 'first.cif' in result.stdout and '0 of 1 confident, 1 need DFT' in result.stdout
    # the WorkChains check their children every PREDICT_POLL_INTERVAL, not every runner.poll.interval of the profile
    assert poll_intervals == [PREDICT_POLL_INTERVAL]


def test_predict_refuses_a_node_that_is_not_a_model(aiida_code_installed, structure_files):
    from aiida import orm

    model_program_code(aiida_code_installed)
    not_a_model = orm.Int(3).store()
    paths, _ = structure_files
    result = CliRunner().invoke(cli, ['predict', str(paths[0]), '--model', str(not_a_model.pk)])
    assert result.exit_code != 0 and 'not a ModelData' in result.output


@needs_model_program
def test_train_prints_metrics_and_the_model(aiida_code_installed, shared_data_dir):
    from aiida.manage.caching import enable_caching
    from aiida.orm import QueryBuilder

    from aiida_hpcai.data.model import ModelData

    code = model_program_code(aiida_code_installed)
    structures = perov_structures(shared_data_dir)
    train_tiny_model(code, structures)  # the same training, so the command below is served from the cache
    with enable_caching(identifier='aiida.calculations:hpcai.train'):
        result = CliRunner().invoke(cli, ['train', str(structures.pk), *TINY_TRAINING_CLI, '--code', code.full_label])
    assert result.exit_code == 0, result.output
    assert 'mae' in result.stdout
    pk = int(result.stdout.split('ModelData<')[1].split('>')[0])
    model = QueryBuilder().append(ModelData, filters={'id': pk}).one()[0]
    assert model.target == 'heat_ref' and model.training_set_uuid == structures.uuid


def test_train_refuses_a_missing_label(aiida_code_installed, shared_data_dir):
    code = model_program_code(aiida_code_installed)
    structures = perov_structures(shared_data_dir)
    result = CliRunner().invoke(cli, ['train', str(structures.pk), '--target', 'band_gap', '--code', code.full_label])
    assert result.exit_code != 0 and "no label 'band_gap'" in result.output
