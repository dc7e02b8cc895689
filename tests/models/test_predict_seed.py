"""MC-dropout sampling is seeded: the same config gives the same sigma (so a cached hpcai.predict is no frozen draw)."""

import json
import shutil

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from aiida_hpcai.models import program
from aiida_hpcai.models.checkpoint import pretrained_path, sha256_file
from aiida_hpcai.models.structure_io import from_pymatgen, write_npz


def _predict(folder, **options) -> tuple[np.ndarray, dict]:
    (folder / 'models').mkdir(parents=True)
    model = pretrained_path('formation_energy_per_atom')
    shutil.copyfile(model, folder / 'models' / 'm.pt')
    lif = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.03), ['Li', 'F'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    write_npz(from_pymatgen([lif, lif.copy().scale_lattice(70.0)]), folder / 'structures.npz')
    config = {'models': [{'file': 'models/m.pt', 'sha256': sha256_file(model)}], 'device': 'cpu', **options}
    (folder / 'config.json').write_text(json.dumps(config))
    assert program.main(['predict', '--input', str(folder), '--output', str(folder / 'out')]) == 0
    with np.load(folder / 'out' / 'predictions.npz') as result:
        sigma = result['sigma']
    return sigma, json.loads((folder / 'out' / 'summary.json').read_text())


@pytest.mark.parametrize('method', ['mc_dropout_readout'])
def test_mc_dropout_draws_follow_the_seed(tmp_path, method):
    options = {'uncertainty': method, 'mc_samples': 3}
    first, summary = _predict(tmp_path / 'a', seed=7, **options)
    again, _ = _predict(tmp_path / 'b', seed=7, **options)
    other, _ = _predict(tmp_path / 'c', seed=8, **options)
    assert summary['seed'] == 7 and summary['uncertainty'] == method
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    _, default = _predict(tmp_path / 'd', **options)
    assert default['seed'] == 0
