"""Dataset loaders on the real shared datasets and on broken rows; deterministic splits."""

import csv
import gzip
import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from aiida_hpcai.models import datasets, structure_io
from tests.samples import NACL, cif_of


@pytest.fixture
def broken_csv(tmp_path):
    good = cif_of(NACL)
    rows = [
        ('good-1', good, '1.0'),
        ('malformed', 'data_x\n_cell_length_a 5\nthis is not a cif', '1.0'),
        ('unknown-element', good.replace('Cl', 'Xx'), '1.0'),
        ('nan-label', good, 'nan'),
        ('collapsed', cif_of(Structure(Lattice.cubic(0.8), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]])), '1.0'),
        ('overlap', cif_of(Structure(Lattice.cubic(5.0), ['Na', 'Cl'], [[0, 0, 0], [0.02, 0, 0]])), '1.0'),
        ('partial', cif_of(Structure(Lattice.cubic(4.0), [{'Fe': 0.5, 'Ni': 0.5}], [[0, 0, 0]])), '1.0'),
        ('good-2', cif_of(Structure(Lattice.cubic(4.2), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])), '-3.0'),
    ]
    path = tmp_path / 'broken.csv'
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['', 'material_id', 'cif', 'energy'])
        for index, row in enumerate(rows):
            writer.writerow([index, *row])
    return path


def test_broken_rows_are_skipped_with_reasons(broken_csv):
    dataset = datasets.load_dataset(broken_csv)
    assert dataset.arrays.ids.tolist() == ['good-1', 'good-2']
    assert dataset.arrays.labels['energy'].tolist() == [1.0, -3.0]
    reasons = {row.id: row.reason for row in dataset.skipped}
    assert reasons == {
        'malformed': 'unparsable structure',
        'unknown-element': 'unknown element',
        'nan-label': 'missing label',
        'collapsed': 'collapsed cell',
        'overlap': 'overlapping atoms',
        'partial': 'partial occupancy',
    }
    assert sum(dataset.skip_counts.values()) == 6
    assert 'skipped, collapsed cell: 1' in dataset.summary()


def test_nan_coordinates_are_refused():
    with pytest.raises(structure_io.InvalidStructure, match='non-finite'):
        structure_io.validate_atoms(np.array([11, 17]), np.array([[0, 0, 0], [np.nan, 0, 0]]), np.eye(3) * 5)


def test_fast_p1_reader_matches_pymatgen(shared_data_dir):
    dataset = datasets.load_dataset(shared_data_dir / 'mp_cgcnn' / 'mp_cgcnn.csv.gz', limit=40)
    with gzip.open(shared_data_dir / 'mp_cgcnn' / 'mp_cgcnn.csv.gz', 'rt') as handle:
        csv.field_size_limit(10**9)
        rows = [row for _, row in zip(range(40), csv.DictReader(handle))]
    for index, row in enumerate(rows):
        numbers, positions, cell = datasets._parse_cif_pymatgen(row['cif'])
        ours = dataset.arrays.atoms_of(index)
        assert ours[0].tolist() == numbers.tolist()
        np.testing.assert_allclose(ours[2], cell, atol=1e-8)
        # pymatgen snaps fractional coordinates within 1e-4 of special values (1/3, ...); we keep the file's.
        delta = np.linalg.solve(cell.T, (ours[1] - positions).T).T
        np.testing.assert_allclose(delta - np.round(delta), 0, atol=1.01e-4)


def test_mp_cgcnn_loads_with_targets(shared_data_dir):
    dataset = datasets.load_dataset(
        shared_data_dir / 'mp_cgcnn' / 'mp_cgcnn.csv.gz', limit=300, targets=['formation_energy_per_atom', 'band_gap']
    )
    assert len(dataset.arrays) + len(dataset.skipped) == 300
    assert len(dataset.arrays) >= 295
    assert sorted(dataset.arrays.labels) == ['band_gap', 'formation_energy_per_atom']
    assert dataset.arrays.ids[0] == 'mp-1'


@pytest.mark.parametrize(
    'name, labels',
    [
        ('perov_5/val.csv', ['dir_gap', 'heat_all', 'heat_ref', 'ind_gap']),
        ('carbon_24/val.csv', ['energy_per_atom']),
    ],
)
def test_cdvae_csv(shared_data_dir, name, labels):
    dataset = datasets.load_dataset(shared_data_dir / name, limit=200)
    assert len(dataset.arrays) == 200 and not dataset.skipped
    assert sorted(dataset.arrays.labels) == labels
    if name.startswith('perov'):
        assert set(dataset.arrays.natoms.tolist()) == {5}


def test_extxyz_round_trip(tmp_path, broken_csv):
    dataset = datasets.load_dataset(broken_csv)
    path = tmp_path / 'set.extxyz'
    datasets.write_extxyz(dataset.arrays, path)
    again = datasets.load_dataset(path)
    assert again.arrays.ids.tolist() == dataset.arrays.ids.tolist()
    np.testing.assert_allclose(again.arrays.positions, dataset.arrays.positions, atol=1e-7)
    assert again.arrays.labels['energy'].tolist() == [1.0, -3.0]


def test_cif_folder_with_id_prop(tmp_path):
    (tmp_path / 'a.cif').write_text(cif_of(NACL))
    (tmp_path / 'b.cif').write_text('not a cif at all')
    (tmp_path / 'id_prop.csv').write_text('a,0.5\nb,0.7\n')
    dataset = datasets.load_dataset(tmp_path)
    assert dataset.format == 'cif-folder'
    assert dataset.arrays.ids.tolist() == ['a']
    assert dataset.arrays.labels['target'].tolist() == [0.5]
    assert [(row.id, row.reason) for row in dataset.skipped] == [('b', 'unparsable structure')]


def test_matbench_json_gz(tmp_path):
    payload = {
        'index': ['mb-1', 'mb-2'],
        'columns': ['structure', 'e_form'],
        'data': [[NACL.as_dict(), -2.0], [{'bad': 'dict'}, 1.0]],
    }
    path = tmp_path / 'matbench_mp_e_form.json.gz'
    with gzip.open(path, 'wt') as handle:
        json.dump(payload, handle)
    dataset = datasets.load_dataset(path)
    assert dataset.arrays.ids.tolist() == ['mb-1']
    assert dataset.arrays.labels['e_form'].tolist() == [-2.0]
    assert dataset.skipped[0].reason == 'unparsable structure'


def test_cache_gives_identical_dataset(tmp_path, broken_csv, monkeypatch):
    monkeypatch.setenv('HPCAI_CACHE_DIR', str(tmp_path / 'cache'))
    first = datasets.load_dataset(broken_csv, cache=True)
    second = datasets.load_dataset(broken_csv, cache=True)
    assert list((tmp_path / 'cache').glob('*.npz'))
    assert np.array_equal(first.arrays.positions, second.arrays.positions)
    assert first.skipped == second.skipped


def test_split_is_deterministic_and_written(tmp_path):
    ids = [f'mp-{i}' for i in range(1000)]
    split = datasets.split_by_id(ids, seed=7)
    assert split == datasets.split_by_id(list(reversed(ids)), seed=7)  # order of rows does not matter
    assert split != datasets.split_by_id(ids, seed=8)
    assert [len(split[n]) for n in ('train', 'val', 'test')] == [800, 100, 100]
    assert not set(split['train']) & set(split['test'])
    datasets.write_split(tmp_path / 'split', split)
    assert datasets.read_split(tmp_path / 'split') == split
    positions = datasets.split_indices(ids, split)
    assert sorted(np.concatenate(list(positions.values())).tolist()) == list(range(1000))


def _frames_file(path):
    """Four NaCl frames (ids f0..f3) with an unknown element in frame 1 and a coordinate 'abc' in frame 2."""
    import ase.io
    from ase.build import bulk

    frames = [bulk('NaCl', 'rocksalt', a=5.64) for _ in range(4)]
    for index, atoms in enumerate(frames):
        atoms.info.update({'id': f'f{index}', 'energy_x': float(index)})
    ase.io.write(path, frames, format='extxyz')
    lines = path.read_text().splitlines()
    lines[2 + 4 * 1] = lines[2 + 4 * 1].replace('Na', 'Xx', 1)
    lines[2 + 4 * 2] = lines[2 + 4 * 2].replace('0.00000000', 'abc', 1)
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_extxyz_frames_fail_alone(tmp_path):
    dataset = datasets.load_dataset(_frames_file(tmp_path / 'frames.extxyz'))
    assert dataset.arrays.ids.tolist() == ['f0', 'f3']
    assert dataset.arrays.labels['energy_x'].tolist() == [0.0, 3.0]
    assert [(row.id, row.reason) for row in dataset.skipped] == [
        ('f1', 'unknown element'),
        ('f2', 'unparsable structure'),
    ]
    assert dataset.skipped[0].detail == "frame 1: 'Xx' is not an element"
    assert dataset.skipped[1].detail.startswith('frame 2:') and 'abc' in dataset.skipped[1].detail

    cut = tmp_path / 'cut.extxyz'
    cut.write_text('\n'.join(_frames_file(tmp_path / 'again.extxyz').read_text().splitlines()[:-1]) + '\n')
    dataset = datasets.load_dataset(cut)
    assert dataset.arrays.ids.tolist() == ['f0']
    assert (dataset.skipped[-1].id, dataset.skipped[-1].reason) == ('cut.extxyz#3', 'truncated file')


def test_truncated_gzip_keeps_the_rows_before(tmp_path, broken_csv):
    packed = gzip.compress(broken_csv.read_bytes() * 1)
    whole = tmp_path / 'whole.csv.gz'
    whole.write_bytes(packed)
    (tmp_path / 'cut.csv.gz').write_bytes(packed[: len(packed) * 3 // 4])
    complete = datasets.load_dataset(whole)
    dataset = datasets.load_dataset(tmp_path / 'cut.csv.gz')
    assert dataset.skipped[-1].reason == 'truncated file' and 'which are kept' in dataset.skipped[-1].detail
    assert dataset.arrays.ids.tolist() == complete.arrays.ids.tolist()[: len(dataset.arrays)]
    (tmp_path / 'garbage.csv.gz').write_bytes(b'not gzip at all')
    dataset = datasets.load_dataset(tmp_path / 'garbage.csv.gz')
    assert len(dataset.arrays) == 0 and dataset.skipped[0].reason == 'truncated file'


def test_select_by_ids_and_name_missing_targets(broken_csv):
    dataset = datasets.load_dataset(broken_csv, ids=['good-2', 'overlap', 'nosuch'])
    assert dataset.arrays.ids.tolist() == ['good-2']
    assert [row.id for row in dataset.skipped] == ['overlap']
    assert datasets.load_dataset(broken_csv, ids=['good-1', 'good-2'], limit=1).arrays.ids.tolist() == ['good-1']
    with pytest.raises(ValueError, match=r"no label 'nosuch'; its labels: \['energy'\]"):
        datasets.load_dataset(broken_csv, targets=['nosuch'])


def test_a_cut_cif_is_reported_as_cut(tmp_path):
    text = cif_of(NACL)
    with pytest.raises(structure_io.InvalidStructure, match='looks cut off') as info:
        datasets.parse_cif(text[: text.index('Na  Na0') + 20])
    assert 'modulo' not in str(info.value)


def test_read_structure_files_ids(tmp_path):
    import ase.io
    from ase.build import bulk

    for folder in ('a', 'b'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'POSCAR').write_text(NACL.to(fmt='poscar'))
    one = bulk('Si')
    one.info['energy_x'] = 1.5
    ase.io.write(tmp_path / 'one.extxyz', one, format='extxyz')
    dataset = datasets.read_structure_files(
        [
            tmp_path / 'a' / 'POSCAR',
            tmp_path / 'b' / 'POSCAR',
            tmp_path / 'one.extxyz',
            _frames_file(tmp_path / 'f.xyz'),
        ]
    )
    # two files named POSCAR: their paths tell them apart; a one-frame extxyz is named by its file
    assert dataset.arrays.ids.tolist() == [
        str(tmp_path / 'a' / 'POSCAR'),
        str(tmp_path / 'b' / 'POSCAR'),
        'one.extxyz',
        'f0',
        'f3',
    ]
    assert [(row.id, row.reason) for row in dataset.skipped] == [
        ('f1', 'unknown element'),
        ('f2', 'unparsable structure'),
    ]
    assert not dataset.arrays.labels  # the POSCARs carry no label, so no label is common to all
    labelled = datasets.read_structure_files([tmp_path / 'one.extxyz', tmp_path / 'f.xyz'])
    assert labelled.arrays.labels['energy_x'].tolist() == [1.5, 0.0, 3.0]
