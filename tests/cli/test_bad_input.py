"""Bad input through the real CLI, as users produce it (issue 21): every case ends with one clear line and the
right exit status, and every good structure handed over in the same call is still processed and stored.

Exit status 2 is a usage error that click reports before anything runs; 1 is an error found while running.
"""

import csv
import gzip
import json

import ase.io
import pytest
from aiida import orm
from aiida.cmdline.commands.cmd_data import verdi_data
from aiida.cmdline.commands.cmd_verdi import verdi
from ase import Atoms
from ase.build import bulk
from click.testing import CliRunner

from aiida_hpcai.cli import cli
from aiida_hpcai.data.structure_set import StructureSet
from tests.samples import NACL, cif_of
from tests.surrogate_helpers import model_program_code, needs_model_program


def invoke(command, args):
    return CliRunner().invoke(command, [str(arg) for arg in args], catch_exceptions=False)


def assert_fails(result, exit_code: int, *fragments: str) -> None:
    """The command failed with ``exit_code`` and says so in ONE line holding every fragment; no traceback."""
    assert result.exit_code == exit_code, result.output
    assert 'Traceback' not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith(('Error:', 'Critical:'))]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def stored_sets() -> int:
    return orm.QueryBuilder().append(StructureSet).count()


def frames(count: int = 3):
    """Rock-salt cells the shipped model knows, each with an id."""
    atoms = []
    for index, (formula, a) in enumerate([('NaCl', 5.64), ('MgO', 4.21), ('LiF', 4.03), ('KCl', 6.29)][:count]):
        cell = bulk(formula, 'rocksalt', a=a)
        cell.info['id'] = f'good-{index}'
        atoms.append(cell)
    return atoms


def write_extxyz_with_bad_frames(path):
    """Frames good-0, good-1, <unknown element Xx>, <coordinate 'abc'>, <two atoms at one place>, good-2, good-0 again."""
    good = frames(3)
    overlapping = Atoms('NaCl', positions=[[0, 0, 0], [0, 0, 0]], cell=[5, 5, 5], pbc=True)
    overlapping.info['id'] = 'overlap'
    unknown, bad_number = good[0].copy(), good[0].copy()
    unknown.info['id'], bad_number.info['id'] = 'unknown-element', 'bad-number'
    duplicate = good[0].copy()
    ase.io.write(path, [good[0], good[1], unknown, bad_number, overlapping, good[2], duplicate], format='extxyz')
    lines = path.read_text().splitlines()
    lines[2 + 4 * 2] = lines[2 + 4 * 2].replace('Na', 'Xx', 1)  # frame 2, first atom
    lines[2 + 4 * 3] = lines[2 + 4 * 3].replace('0.00000000', 'abc', 1)  # frame 3, first atom
    path.write_text('\n'.join(lines) + '\n')
    return path


@pytest.fixture
def files(tmp_path):
    """A good CIF, a CIF with an unknown element, a truncated CIF and an extxyz with good and bad frames."""
    (tmp_path / 'good.cif').write_text(cif_of(NACL))
    (tmp_path / 'unknown.cif').write_text(cif_of(NACL).replace('Cl', 'Xx'))
    text = cif_of(NACL)
    (tmp_path / 'truncated.cif').write_text(text[: text.index('Na  Na0') + 20])  # cut inside the atom loop
    write_extxyz_with_bad_frames(tmp_path / 'frames.extxyz')
    return tmp_path


# -- aiida-hpcai data import ----------------------------------------------------------------------------------
def test_import_keeps_the_good_frames_of_an_extxyz(aiida_profile, files):
    result = invoke(cli, ['data', 'import', files / 'frames.extxyz', '--label', 'bad-frames'])
    assert result.exit_code == 0, result.output
    node = orm.QueryBuilder().append(StructureSet, filters={'label': 'bad-frames'}).one()[0]
    assert node.ids == ['good-0', 'good-1', 'good-2']
    skipped = {row['id']: row for row in node.get_skipped()}
    assert skipped['unknown-element']['reason'] == 'unknown element'
    assert "frame 2: 'Xx' is not an element" in skipped['unknown-element']['detail']
    assert skipped['bad-number']['reason'] == 'unparsable structure'  # its id read from the frame's comment line
    assert 'frame 3' in skipped['bad-number']['detail'] and 'abc' in skipped['bad-number']['detail']
    assert skipped['overlap']['reason'] == 'overlapping atoms'
    assert skipped['good-0']['reason'] == 'duplicate id'
    for row in skipped.values():  # each one named in the output, with its reason
        assert f'skipped {row["id"]}: {row["reason"]}' in result.output


def test_import_a_single_cif_and_a_truncated_one(aiida_profile, files):
    result = invoke(cli, ['data', 'import', files / 'good.cif', '--label', 'one-cif'])
    assert result.exit_code == 0, result.output
    assert orm.QueryBuilder().append(StructureSet, filters={'label': 'one-cif'}).one()[0].ids == ['good.cif']

    before = stored_sets()
    result = invoke(cli, ['data', 'import', files / 'truncated.cif'])
    assert_fails(result, 1, 'nothing stored')
    assert 'looks cut off' in result.output and 'modulo' not in result.output
    assert stored_sets() == before


def test_import_a_csv_without_cif_column(aiida_profile, tmp_path):
    (tmp_path / 'table.csv').write_text('material_id,energy\nmp-1,1.0\n')
    before = stored_sets()
    assert_fails(invoke(cli, ['data', 'import', tmp_path / 'table.csv']), 1, 'needs a "cif" column')
    assert_fails(invoke(cli, ['data', 'import', tmp_path / 'table.csv', '--format', 'extxyz']), 1, 'nothing stored')
    (tmp_path / 'notes.txt').write_text('hello')
    assert_fails(invoke(cli, ['data', 'import', tmp_path / 'notes.txt']), 1, 'cannot tell the format', '--format')
    assert_fails(invoke(cli, ['data', 'import', tmp_path, '--format', 'csv']), 1, 'is a folder')
    assert stored_sets() == before


def broken_csv(path, rows):
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['material_id', 'cif', 'energy'])
        writer.writerows(rows)
    return path


def test_import_names_each_skipped_row_and_its_parser_error(aiida_profile, tmp_path):
    path = broken_csv(
        tmp_path / 'rows.csv',
        [('mp-1', cif_of(NACL), '1.0'), ('mp-bad', 'data_x\n_cell_length_a 5\n', '2.0'), ('mp-1', cif_of(NACL), '3')],
    )
    result = invoke(cli, ['data', 'import', path, '--label', 'rows'])
    assert result.exit_code == 0, result.output
    assert 'skipped mp-bad: unparsable structure (no atom positions' in result.output
    assert "skipped mp-1: duplicate id (id 'mp-1' is already taken" in result.output
    node = orm.QueryBuilder().append(StructureSet, filters={'label': 'rows'}).one()[0]
    assert node.ids == ['mp-1'] and node.get_label('energy').tolist() == [1.0]


def test_import_a_truncated_csv_gz_keeps_the_rows_before(aiida_profile, tmp_path):
    rows = [(f'mp-{i}', cif_of(NACL), str(i)) for i in range(400)]
    text = broken_csv(tmp_path / 'full.csv', rows).read_bytes()
    packed = gzip.compress(text)
    (tmp_path / 'cut.csv.gz').write_bytes(packed[: len(packed) // 2])
    result = invoke(cli, ['data', 'import', tmp_path / 'cut.csv.gz', '--label', 'cut'])
    assert result.exit_code == 0, result.output
    assert 'truncated file' in result.output and 'which are kept' in result.output
    node = orm.QueryBuilder().append(StructureSet, filters={'label': 'cut'}).one()[0]
    assert 0 < node.count < 400 and node.ids == [f'mp-{i}' for i in range(node.count)]
    assert node.base.attributes.get('skipped_reasons') == {'truncated file': 1}


@pytest.mark.parametrize('limit', ['0', '-3', 'many'])
def test_import_refuses_a_limit_that_is_not_positive(aiida_profile, files, limit):
    before = stored_sets()
    assert_fails(invoke(cli, ['data', 'import', files / 'frames.extxyz', '--limit', limit]), 2, '--limit')
    assert stored_sets() == before


def test_import_selects_ids(aiida_profile, files, tmp_path):
    result = invoke(
        cli, ['data', 'import', files / 'frames.extxyz', '--ids', 'good-2,good-1,nosuch', '--label', 'by-id']
    )
    assert result.exit_code == 0, result.output
    assert '1 of the 3 ids asked for are not in frames.extxyz: nosuch' in result.output
    assert orm.QueryBuilder().append(StructureSet, filters={'label': 'by-id'}).one()[0].ids == ['good-1', 'good-2']
    (tmp_path / 'ids.txt').write_text('good-0\n')
    result = invoke(cli, ['data', 'import', files / 'frames.extxyz', '--ids', tmp_path / 'ids.txt', '--label', 'file'])
    assert result.exit_code == 0, result.output
    # good-0 twice in the file: the first is kept, the repeat named as a duplicate
    node = orm.QueryBuilder().append(StructureSet, filters={'label': 'file'}).one()[0]
    assert node.ids == ['good-0'] and [row['reason'] for row in node.get_skipped()] == ['duplicate id']


def test_import_names_the_labels_a_file_has(aiida_profile, tmp_path):
    path = broken_csv(tmp_path / 'rows.csv', [('mp-1', cif_of(NACL), '1.0')])
    before = stored_sets()
    assert_fails(invoke(cli, ['data', 'import', path, '--target', 'nosuch']), 1, "no label 'nosuch'", "['energy']")
    assert stored_sets() == before


def invoke_at_debug(monkeypatch, command, args):
    """``command args`` run as a fresh process would run it: aiida applies --verbosity once per process (the first
    command sets CLI_ACTIVE), so that is undone for this call, and the logging set up as before afterwards."""
    from aiida.common import log

    with monkeypatch.context() as patch:
        patch.setattr(log, 'CLI_ACTIVE', False)
        patch.setattr(log, 'CLI_LOG_LEVEL', None)
        result = invoke(command, args)
    log.configure_logging()
    return result


def test_debug_verbosity_shows_the_traceback(aiida_profile, tmp_path, monkeypatch):
    (tmp_path / 'table.csv').write_text('material_id,energy\nmp-1,1.0\n')
    result = invoke_at_debug(monkeypatch, cli, ['data', 'import', tmp_path / 'table.csv', '-v', 'debug'])
    assert result.exit_code == 1 and 'Traceback' in result.output and 'needs a "cif" column' in result.output


def test_an_unexpected_error_is_one_line_and_its_traceback_with_debug(aiida_profile, files, tmp_path, monkeypatch):
    """`verdi data hpcai.*`: an error no command expects is one line with a hint; `-v debug` shows where it came
    from (the hint then left out)."""
    node = StructureSet.from_files([files / 'good.cif']).store()

    def broken_write(self, path):
        raise KeyError('no such array')

    monkeypatch.setattr(StructureSet, 'write', broken_write)
    args = ['hpcai.structures', 'export', node.pk, tmp_path / 'x.npz']
    assert_fails(invoke(verdi_data, args), 1, "KeyError: 'no such array'", '`-v debug` shows the traceback')
    # through `verdi`, as a shell runs it: verdi gives the data group an unset --verbosity of its own
    result = invoke_at_debug(monkeypatch, verdi, ['data', *args, '-v', 'debug'])
    assert result.exit_code == 1 and 'Traceback' in result.output and 'in broken_write' in result.output
    assert "Critical: KeyError: 'no such array'" in result.output and 'shows the traceback' not in result.output


@pytest.mark.parametrize('through', ['verdi data hpcai.structures show', 'aiida-hpcai data import'])
def test_an_error_while_the_options_are_read_is_one_line_too(aiida_profile, files, tmp_path, monkeypatch, through):
    """An option's callback that fails (--ids names a file that is no text) ends as one line, not a traceback;
    `-v debug` shows the traceback even when it stands after that option."""
    (tmp_path / 'ids.txt').write_bytes(b'\xff\xfe\x00 mp-1')
    if through.startswith('verdi'):
        command, args = (
            verdi,
            ['data', 'hpcai.structures', 'show', StructureSet.from_files([files / 'good.cif']).store().pk],
        )
    else:
        command, args = cli, ['data', 'import', files / 'good.cif']
    args += ['--ids', tmp_path / 'ids.txt']
    before = stored_sets()
    assert_fails(invoke(command, args), 1, "'utf-8' codec can't decode byte 0xff")
    result = invoke_at_debug(monkeypatch, command, [*args, '-v', 'debug'])
    assert result.exit_code == 1 and 'Traceback' in result.output and 'in parse_ids' in result.output
    assert stored_sets() == before


# -- verdi data hpcai.* ------------------------------------------------------------------------------------------
def test_model_export_of_a_damaged_model_and_to_a_missing_folder(aiida_profile, tmp_path):
    from aiida_hpcai.data.model import ModelData

    node = ModelData(b'checkpoint bytes', filename='m.pt', architecture='crysformer', target='band_gap')
    node.base.attributes.set('sha256', '0' * 64)  # as if the stored file had changed since
    node.store()
    assert node.label == 'crysformer band_gap'  # what `verdi node graph` shows
    result = invoke(verdi_data, ['hpcai.model', 'export', node.pk, tmp_path])
    assert_fails(result, 1, 'does not match', 'nothing written')
    assert not (tmp_path / 'm.pt').exists()
    assert_fails(invoke(verdi_data, ['hpcai.model', 'export', node.pk, tmp_path / 'no' / 'm.pt']), 2, 'does not exist')


def test_structures_show_and_export(aiida_profile, files, tmp_path):
    node = StructureSet.from_files([files / 'frames.extxyz', files / 'good.cif']).store()
    assert node.label.startswith('4 structures: NaCl, MgO, LiF')
    result = invoke(verdi_data, ['hpcai.structures', 'show', node.pk, '--ids', 'good.cif,good-1'])
    assert result.exit_code == 0, result.output
    assert 'good.cif' in result.output and 'MgO' in result.output and 'good-2' not in result.output
    assert 'good-2' in invoke(verdi_data, ['hpcai.structures', 'show', node.pk]).output  # the first rows
    assert_fails(invoke(verdi_data, ['hpcai.structures', 'show', node.pk, '--ids', 'nosuch']), 2, 'nosuch')
    shown = invoke(verdi_data, ['hpcai.structures', 'show', node.pk, '--skipped']).output
    assert 'unknown-element\tunknown element' in shown
    listed = invoke(verdi_data, ['hpcai.structures', 'list']).output  # not a terminal: tab-separated, not cut
    assert f'{node.pk}\t{node.label}\t' in listed
    assert_fails(invoke(verdi_data, ['hpcai.structures', 'export', node.pk, tmp_path / 'no' / 'x.npz']), 2, 'no')


# -- aiida-hpcai predict / train / dft: refused before anything runs ---------------------------------------------
def test_predict_refuses_before_running(aiida_code_installed, files):
    model_program_code(aiida_code_installed)
    runs = orm.QueryBuilder().append(orm.WorkflowNode, filters={'attributes.process_label': 'SurrogateWorkChain'})
    before = runs.count()
    good = files / 'good.cif'
    assert_fails(invoke(cli, ['predict', good, '--output', files / 'no' / 'out.csv']), 2, 'does not exist')
    assert_fails(invoke(cli, ['predict', good, '--model', '999999']), 2, "no node with pk or uuid '999999'")
    assert_fails(invoke(cli, ['predict', good, '--model', 'not-a-uuid']), 2, "'not-a-uuid'")
    assert_fails(invoke(cli, ['predict', good, '--threshold', '-1']), 2, '--threshold')
    assert_fails(invoke(cli, ['predict', good, '--batch-size', '0']), 2, '--batch-size')
    assert_fails(invoke(cli, ['predict', files / 'unknown.cif', files / 'truncated.cif']), 2, 'no valid structure')
    assert runs.count() == before


@pytest.mark.parametrize('option', [['--epochs', '0'], ['--epochs', '-1'], ['--ensemble-size', '0']])
def test_train_refuses_nonsense_counts(aiida_profile, files, option):
    assert_fails(invoke(cli, ['train', files / 'frames.extxyz', '--target', 'energy', *option]), 2, option[0])


def test_train_names_the_labels(aiida_code_installed, tmp_path):
    code = model_program_code(aiida_code_installed)
    path = broken_csv(tmp_path / 'rows.csv', [('mp-1', cif_of(NACL), '1.0')])
    before = stored_sets()
    result = invoke(cli, ['train', path, '--target', 'nosuch', '--code', code.full_label])
    assert_fails(result, 1, "no label 'nosuch'", "['energy']")
    assert stored_sets() == before
    node = StructureSet.from_file(path).store()
    result = invoke(cli, ['train', node.pk, '--target', 'nosuch', '--code', code.full_label])
    assert_fails(result, 2, "no label 'nosuch'", 'its labels: energy')


def test_dft_refuses_an_unknown_element_and_a_protocol(aiida_profile, files):
    assert_fails(invoke(cli, ['dft', files / 'unknown.cif']), 2, 'unknown element', 'Xx')
    assert_fails(invoke(cli, ['dft', files / 'frames.extxyz']), 2, 'unknown-element: unknown element')
    assert_fails(invoke(cli, ['dft', files / 'good.cif', '--protocol', 'nosuch']), 2, '--protocol')
    assert_fails(invoke(cli, ['dft', files / 'good.cif', '--engine', 'nosuch']), 2, '--engine')
    assert_fails(invoke(cli, ['dft', files / 'good.cif', '--num-mpiprocs', '0']), 2, '--num-mpiprocs')


def test_dft_without_reference_hints_the_cli_flag(pw_code, sssp_family, tmp_path):
    lif = bulk('LiF', 'rocksalt', a=4.03)  # F has a pseudopotential but no elemental reference structure
    ase.io.write(tmp_path / 'LiF.cif', lif)
    result = invoke(cli, ['dft', tmp_path / 'LiF.cif', '--code', pw_code.full_label, '--protocol', 'fast'])
    assert result.exit_code == 1, result.output
    assert '--no-formation-energy' in result.output and 'F' in result.output
    assert 'total energy' not in result.output and '┏' not in result.output  # no empty table before the error


# -- aiida-hpcai predict: the bad structures fail alone --------------------------------------------------------
@needs_model_program
def test_predict_keeps_every_good_structure(aiida_code_installed, files, tmp_path):
    code = model_program_code(aiida_code_installed)
    table = tmp_path / 'out.csv'
    paths = [files / name for name in ('good.cif', 'unknown.cif', 'truncated.cif', 'frames.extxyz')]
    result = CliRunner().invoke(
        cli, ['predict', *map(str, paths), '--code', code.full_label, '--json', '--output', str(table)]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)['rows']
    predicted = [row for row in rows if row['status'] != 'skipped']
    assert [row['id'] for row in predicted] == ['good.cif', 'good-0', 'good-1', 'good-2']
    assert all(row['status'] == 'ok' and row['mean'] is not None for row in predicted), predicted
    skipped = {row['id']: row['reason'] for row in rows if row['status'] == 'skipped'}
    assert set(skipped) == {'unknown.cif', 'truncated.cif', 'unknown-element', 'bad-number', 'overlap', 'good-0'}
    assert skipped['overlap'].startswith('overlapping atoms') and skipped['unknown.cif'].startswith('unknown element')
    assert skipped['good-0'].startswith('duplicate id')
    assert 'skipped truncated.cif: unparsable structure' in result.stderr
    with table.open() as handle:
        assert len(list(csv.DictReader(handle))) == len(rows) == 10
    workchain = orm.load_node(json.loads(result.stdout)['process_pk'])
    structures = workchain.inputs.structures
    assert structures.ids == [row['id'] for row in predicted]
    assert structures.base.attributes.get('skipped_count') == 6
