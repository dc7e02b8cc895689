"""``python -m aiida_hpcai.models.release train-equicsp`` on a tiny stand-in of a CDVAE data folder."""

import csv
import gzip
import json

import pytest
from pymatgen.core import Lattice, Structure

from aiida_hpcai.models import release
from aiida_hpcai.models.checkpoint import PRETRAINED_FILES, load_checkpoint, sha256_file
from aiida_hpcai.models.contract import METADATA_FILE, MODEL_FILE
from aiida_hpcai.models.evaluation import csp_dataset
from tests.samples import cif_of

FILES = {'train': 'train_structures_from_jarvis.csv.gz', 'val': 'val.csv', 'test': 'test.csv'}


def _perovskite(a_site, b_site, anion, length):
    return Structure(
        Lattice.cubic(length),
        [a_site, b_site, anion, anion, anion],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def _write(path, rows):
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'wt', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['', 'material_id', 'cif'])
        writer.writerows(rows)


@pytest.fixture
def perov_dir(tmp_path, monkeypatch):
    """``<tmp>/data/perov_5`` laid out like CDVAE's (train from JARVIS as csv.gz, val and test csv): 16 cubic
    perovskites, 10 / 3 / 3."""
    monkeypatch.setenv('HPCAI_CACHE_DIR', str(tmp_path / 'cache'))
    cells = [
        _perovskite(a_site, b_site, anion, 3.8 + 0.05 * n)
        for n, (a_site, b_site, anion) in enumerate(
            (a, b, x) for a in ('Ba', 'Sr', 'Ca', 'K') for b in ('Ti', 'Zr') for x in ('O', 'F')
        )
    ]
    folder = tmp_path / 'data' / 'perov_5'
    folder.mkdir(parents=True)
    bounds = {'train': (0, 10), 'val': (10, 13), 'test': (13, 16)}
    for name, (start, stop) in bounds.items():
        _write(folder / FILES[name], [[n, 1000 + n, cif_of(cells[n])] for n in range(start, stop)])
    return tmp_path / 'data'


def test_train_equicsp_on_a_tiny_perov_5(perov_dir, tmp_path, capsys):
    arrays, split, info = csp_dataset('perov_5', perov_dir)
    assert info['n_structures'] == {'train': 10, 'val': 3, 'test': 3} and len(arrays) == 16
    out = tmp_path / 'run'
    common = ['--data-dir', str(perov_dir), '--out', str(out), '--config', 'tiny', '--epochs', '2']
    summary = release.main(['train-equicsp', '--dataset', 'perov_5', *common, '--batch-size', '4', '--threads', '1',
                            '--no-progress'])  # fmt: skip
    assert summary['dataset'] == 'perov_5' and summary['epochs_run'] == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    checkpoint = load_checkpoint(out / MODEL_FILE)
    assert checkpoint['architecture'] == 'equicsp'
    assert checkpoint['max_atoms'] == 5 and checkpoint['num_atoms_counts'][5] == 10  # the train split only
    assert set(checkpoint['elements']) == {'Ba', 'Sr', 'Ca', 'Ti', 'Zr', 'O', 'F'}  # K is only in val and test
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata['architecture'] == 'equicsp' and metadata['sha256']
    assert metadata['dataset']['name'] == 'perov_5' and metadata['dataset']['n_structures']['test'] == 3
    assert metadata['modes'] == ['csp', 'abinitio']  # --modes both by default

    # shipped under its dataset's key, with a record of the file and no target
    record = release.main(['ship', '--run', str(out), '--training-device', 'tiny test', '--trained-with', 'train-equicsp',
                           '--destination', str(tmp_path / 'pretrained')])  # fmt: skip
    shipped = tmp_path / 'pretrained' / PRETRAINED_FILES['equicsp_perov_5']
    assert json.loads(shipped.with_suffix('.json').read_text()) == record
    assert record['sha256'] == sha256_file(shipped) and record['architecture'] == 'equicsp'
    assert record['target'] is None and record['modes'] == ['csp', 'abinitio'] and record['training']['epochs'] == 2


def test_train_equicsp_goes_on_from_a_shipped_generator(perov_dir, tmp_path, capsys):
    """``--init``: a second run starts from the first's shipped file; the record names the parent by digest and
    counts its epochs and seconds; a file that is no generator is refused with a message."""
    common = ['--dataset', 'perov_5', '--data-dir', str(perov_dir), '--config', 'tiny', '--batch-size', '4',
              '--threads', '1', '--no-progress']  # fmt: skip
    release.main(['train-equicsp', *common, '--out', str(tmp_path / 'first'), '--epochs', '2'])
    first = release.main(['ship', '--run', str(tmp_path / 'first'), '--training-device', 'tiny test',
                          '--trained-with', 'first', '--destination', str(tmp_path / 'one')])  # fmt: skip
    parent_file = tmp_path / 'one' / PRETRAINED_FILES['equicsp_perov_5']
    release.main(['train-equicsp', *common, '--out', str(tmp_path / 'second'), '--epochs', '1', '--init',
                  str(parent_file)])  # fmt: skip
    second = release.main(['ship', '--run', str(tmp_path / 'second'), '--training-device', 'tiny test',
                           '--trained-with', 'second', '--destination', str(tmp_path / 'two')])  # fmt: skip
    start = second['dataset']['initialized_from']
    assert start['sha256'] == first['sha256'] and start['epochs'] == 2 and start['command'] == 'first'
    assert second['training']['epochs'] == 1 and second['training']['epochs_with_parent'] == 3
    assert second['training']['seconds_with_parent'] == pytest.approx(
        second['training']['seconds'] + first['training']['seconds']
    )
    capsys.readouterr()

    not_a_generator = tmp_path / 'notes.pt'
    not_a_generator.write_text('not a checkpoint')
    with pytest.raises(SystemExit, match='--init: .*notes.pt: not a readable checkpoint'):
        release.main(['train-equicsp', *common, '--out', str(tmp_path / 'third'), '--init', str(not_a_generator)])


def test_train_equicsp_refuses_an_unknown_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        release.main(['train-equicsp', '--dataset', 'perov_6', '--out', str(tmp_path / 'run')])
    assert stopped.value.code == 2
    assert "invalid choice: 'perov_6'" in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()
    with pytest.raises(ValueError, match="unknown CSP dataset 'perov_6'; known: perov_5, carbon_24, mp20"):
        csp_dataset('perov_6', tmp_path)
