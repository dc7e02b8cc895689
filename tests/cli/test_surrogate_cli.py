"""``aiida-hpcai predict`` / ``train`` run the real processes on the test profile."""
import csv
import json

import ase.io
import pytest
from click.testing import CliRunner
from pymatgen.core import Lattice, Structure

from aiida_hpcai.cli import cli
from aiida_hpcai.cli.surrogate import read_structure_files
from tests.surrogate_helpers import model_program_code, needs_model_program, perov_structures, train_tiny_model


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
    import click

    with pytest.raises(click.BadParameter, match='broken.cif'):
        read_structure_files([bad])


@needs_model_program
def test_predict_json_and_csv(aiida_code_installed, shared_data_dir, structure_files, tmp_path):
    code = model_program_code(aiida_code_installed)
    model = train_tiny_model(code, perov_structures(shared_data_dir)).outputs.model
    paths, structures = structure_files
    table = tmp_path / 'predictions.csv'

    result = CliRunner().invoke(cli, ['predict', *map(str, paths), '--model', str(model.pk), '--threshold', '1e6',
                                      '--code', code.full_label, '--json', '--output', str(table)])
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
    with table.open() as handle:
        written = list(csv.DictReader(handle))
    assert [float(row['mean']) for row in written] == pytest.approx([row['mean'] for row in rows])


@needs_model_program
def test_predict_table_and_low_threshold(aiida_code_installed, shared_data_dir, structure_files):
    code = model_program_code(aiida_code_installed)
    model = train_tiny_model(code, perov_structures(shared_data_dir)).outputs.model
    paths, _ = structure_files

    result = CliRunner().invoke(cli, ['predict', str(paths[0]), '--model', model.uuid, '--threshold', '0'])
    assert result.exit_code == 0, result.output
    assert 'first.cif' in result.stdout and '0 of 1 confident, 1 need DFT' in result.stdout


def test_predict_refuses_a_node_that_is_not_a_model(aiida_code_installed, structure_files):
    from aiida import orm

    model_program_code(aiida_code_installed)
    not_a_model = orm.Int(3).store()
    paths, _ = structure_files
    result = CliRunner().invoke(cli, ['predict', str(paths[0]), '--model', str(not_a_model.pk)])
    assert result.exit_code != 0 and 'not a ModelData' in result.output
