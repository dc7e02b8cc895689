"""The model program applies the checks of every other door to what it is given (a StructureSet built from raw
arrays reaches it unchecked): overlapping atoms and a collapsed cell fail alone, the rest are predicted."""

import numpy as np

from aiida_hpcai.models.checkpoint import load_checkpoint, pretrained_path
from aiida_hpcai.models.inference import EnsemblePredictor
from aiida_hpcai.models.structure_io import StructureArrays


def test_program_fails_overlapping_atoms_and_collapsed_cells_alone():
    rock_salt = np.array([[0.0, 2.015, 2.015], [2.015, 0.0, 2.015], [2.015, 2.015, 0.0]])  # LiF, a = 4.03
    structures = [
        ([3, 9], [[0, 0, 0], [2.015, 0, 0]], rock_salt),  # LiF
        ([3, 9], [[0, 0, 0], [0, 0, 0]], rock_salt),  # two atoms at one place
        ([3, 9], [[0, 0, 0], [0.3, 0, 0]], rock_salt),  # 0.3 A apart
        ([3, 9], [[0, 0, 0], [0.45, 0.45, 0.45]], np.eye(3) * 0.9),  # 0.36 A^3 per atom
    ]
    arrays = StructureArrays(
        numbers=np.concatenate([s[0] for s in structures]),
        positions=np.concatenate([s[1] for s in structures]),
        cells=np.stack([s[2] for s in structures]),
        pbc=np.ones((4, 3), dtype=bool),
        offsets=[0, 2, 4, 6, 8],
        ids=['lif', 'same-place', 'close', 'collapsed'],
    )
    result = EnsemblePredictor([load_checkpoint(pretrained_path('formation_energy_per_atom'))]).predict(arrays)
    assert result['status'].tolist() == ['ok', 'failed', 'failed', 'failed']
    assert result['reason'][1].startswith('overlapping atoms: two atoms 0.000 A apart')
    assert result['reason'][2].startswith('overlapping atoms: two atoms 0.300 A apart')
    assert result['reason'][3].startswith('collapsed cell')
    assert np.isfinite(result['mean'][0]) and np.isnan(result['mean'][1:]).all()
