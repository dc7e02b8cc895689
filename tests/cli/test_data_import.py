"""`aiida-hpcai data import` and `verdi data hpcai.*` on a real profile."""

from aiida import orm
from aiida.cmdline.commands.cmd_data import verdi_data
from click.testing import CliRunner

from aiida_hpcai.cli import cli
from aiida_hpcai.data.structure_set import StructureSet


def test_import_prints_counts_and_reasons(aiida_profile, tmp_path):
    from tests.samples import NACL, cif_of

    (tmp_path / 'good.cif').write_text(cif_of(NACL))
    (tmp_path / 'bad.cif').write_text(cif_of(NACL).replace('Cl', 'Qq'))
    result = CliRunner().invoke(cli, ['data', 'import', str(tmp_path), '--label', 'tiny-set'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert 'unknown element' in result.output
    node = orm.QueryBuilder().append(StructureSet, filters={'label': 'tiny-set'}).one()[0]
    assert node.count == 1 and node.base.attributes.get('skipped_count') == 1

    shown = CliRunner().invoke(verdi_data, ['hpcai.structures', 'show', str(node.pk)], catch_exceptions=False)
    assert 'tiny-set' in shown.output and 'unknown element' in shown.output
    listed = CliRunner().invoke(verdi_data, ['hpcai.structures', 'list'], catch_exceptions=False)
    assert str(node.pk) in listed.output
    exported = CliRunner().invoke(verdi_data, ['hpcai.structures', 'export', str(node.pk), str(tmp_path / 'x.extxyz')])
    assert exported.exit_code == 0 and (tmp_path / 'x.extxyz').read_text().startswith('2\n')


def test_import_real_dataset(aiida_profile, shared_data_dir):
    result = CliRunner().invoke(
        cli,
        ['data', 'import', str(shared_data_dir / 'perov_5' / 'val.csv'), '--limit', '50', '--target', 'heat_ref'],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert '50' in result.output and 'heat_ref' in result.output


def test_model_commands(aiida_profile, tmp_path):
    from aiida_hpcai.data.model import ModelData

    node, _ = ModelData.get_or_create(b'cli-model-bytes', filename='m.pt', architecture='crysformer', target='band_gap')
    runner = CliRunner()
    assert 'crysformer' in runner.invoke(verdi_data, ['hpcai.model', 'list']).output
    assert node.sha256 in runner.invoke(verdi_data, ['hpcai.model', 'show', str(node.pk)]).output
    result = runner.invoke(verdi_data, ['hpcai.model', 'export', str(node.pk), str(tmp_path)])
    assert result.exit_code == 0 and (tmp_path / 'm.pt').read_bytes() == b'cli-model-bytes'
