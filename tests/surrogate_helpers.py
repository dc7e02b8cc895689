"""Shared by the end-to-end tests of the surrogate pattern (WorkChain and CLI): a tiny trained model.

Training runs the real ``hpcai.train`` CalcJob with AiiDA caching enabled, so the second test that
asks for the same model on the same (session-wide) profile reuses the first one's outputs instead of
training again: the inputs (structures, parameters, code) hash identically.
"""

import os
import shutil

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.manage.caching import enable_caching
from aiida.plugins import CalculationFactory

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models import program

# What `aiida-hpcai train SET --target heat_ref --units eV/atom --config tiny --epochs 1 --ensemble-size 2
# --batch-size 16 --seed 0` sends, so that the CLI test hits the same cache entry.
TINY_TRAINING = {
    'target': 'heat_ref',
    'units': 'eV/atom',
    'model_config': 'tiny',
    'ensemble_size': 2,
    'epochs': 1,
    'batch_size': 16,
    'seed': 0,
}
TINY_TRAINING_CLI = [
    '--target',
    'heat_ref',
    '--units',
    'eV/atom',
    '--config',
    'tiny',
    '--epochs',
    '1',
    '--ensemble-size',
    '2',
    '--batch-size',
    '16',
    '--seed',
    '0',
]

# In CI the program is always installed: there the mark never skips, and a missing program fails the tests.
needs_model_program = pytest.mark.skipif(
    os.environ.get('CI', '').lower() not in ('1', 'true', 'yes')
    and not {'train', 'predict'} <= set(program.TASKS)
    or shutil.which('hpcai-model') is None,
    reason='the hpcai-model program has no train/predict task in this checkout',
)


def perov_structures(shared_data_dir, limit: int = 40) -> StructureSet:
    """The first ``limit`` rows of perov_5 val.csv (labelled with heat_ref) as one StructureSet, stored once per
    profile so that every test trains on the same node."""
    from aiida_hpcai.models.datasets import load_dataset

    label = f'perov_5/val.csv[:{limit}]'
    existing = orm.QueryBuilder().append(StructureSet, filters={'label': label}).first(flat=True)
    if existing is not None:
        return existing
    dataset = load_dataset(shared_data_dir / 'perov_5' / 'val.csv', limit=limit, targets=['heat_ref'])
    return StructureSet(dataset.arrays, label=label).store()


def model_program_code(aiida_code_installed) -> orm.InstalledCode:
    """``hpcai-model@localhost``, as ``aiida-hpcai setup`` creates it."""
    return aiida_code_installed(
        label='hpcai-model', default_calc_job_plugin='hpcai.predict', filepath_executable=shutil.which('hpcai-model')
    )


def train_tiny_model(code, structures: StructureSet) -> orm.CalcJobNode:
    with enable_caching(identifier='aiida.calculations:hpcai.train'):
        _, node = run_get_node(
            CalculationFactory('hpcai.train'), code=code, structures=structures, parameters=orm.Dict(TINY_TRAINING)
        )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return node
