"""Shared by the tests of ``hpcai.generate`` (CalcJob and CLI): a tiny EquiCSP trained through ``hpcai.train``.

Training runs the real CalcJob with AiiDA caching enabled on one code node per profile, so the second
test module that asks for the model reuses the first one's outputs instead of training again.
"""

import shutil

from aiida import orm
from aiida.engine import run_get_node
from aiida.manage.caching import enable_caching
from aiida.plugins import CalculationFactory

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.provisioning import LOCALHOST_TRANSPORT
from tests.conftest import require
from tests.samples import synthetic_set

COMPUTER = 'hpcai-generate-localhost'
CODE = f'hpcai-model-generate@{COMPUTER}'
# 28 CsCl-type cells of Li, O, Mg, S, Fe, Cu (two atoms each): a model that knows six elements and 2-atom cells
TINY_EQUICSP = {
    'architecture': 'equicsp',
    'model_config': 'tiny',
    'epochs': 3,
    'batch_size': 8,
    'learning_rate': 5e-3,
    'seed': 0,
}
# the program on 2 shared cores: one thread each
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}}


def model_program_code(workdir) -> orm.InstalledCode:
    """``hpcai-model`` on a local computer of its own (one node per profile, so that caching finds it)."""
    executable = shutil.which('hpcai-model')
    require(executable is not None, 'the hpcai-model program is not installed')
    try:
        return orm.load_code(CODE)
    except Exception:  # noqa: BLE001 -- NotExistent: first use in this profile
        pass
    computer = orm.Computer(
        label=COMPUTER, hostname='localhost', transport_type='core.local', scheduler_type='core.direct', workdir=workdir
    ).store()
    computer.configure(**LOCALHOST_TRANSPORT)
    return orm.InstalledCode(label='hpcai-model-generate', computer=computer, filepath_executable=executable).store()


def train_tiny_equicsp(code) -> orm.CalcJobNode:
    """The ``hpcai.train`` job of a tiny EquiCSP (seconds), from the cache after the first time."""
    label = 'synthetic CsCl-type cells (28)'
    structures = orm.QueryBuilder().append(StructureSet, filters={'label': label}).first(flat=True)
    if structures is None:
        structures = StructureSet(synthetic_set(28), label=label).store()
    with enable_caching(identifier='aiida.calculations:hpcai.train'):
        _, node = run_get_node(
            CalculationFactory('hpcai.train'),
            code=code,
            structures=structures,
            parameters=orm.Dict(TINY_EQUICSP),  # no options: `aiida-hpcai train` sets none, and they enter the hash
        )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return node
