"""Small structures, data sets and provenance records that several test modules build (plain functions, not
fixtures)."""

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from aiida_hpcai.models.structure_io import from_pymatgen


def cif_of(structure) -> str:
    return str(CifWriter(structure))


NACL = Structure(Lattice.cubic(5.64), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]])


def make_structures():
    nacl = Structure(Lattice.cubic(5.64), ['Na', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    perovskite = Structure(
        Lattice.from_parameters(3.9, 3.95, 4.0, 90, 91, 92),
        ['Ba', 'Ti', 'O', 'O', 'O'],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    silicon = Structure(
        Lattice.from_parameters(3.87, 3.87, 3.87, 60, 60, 60), ['Si', 'Si'], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )
    return [nacl, perovskite, silicon]


ELEMENT_VALUES = {3: -1.0, 8: -2.0, 12: -1.5, 26: 0.5, 29: 0.8, 16: -0.7}


def synthetic_set(n=40, seed=0):
    """CsCl-type cells of random element pairs; label = composition term + a strain term."""
    rng = np.random.default_rng(seed)
    elements = list(ELEMENT_VALUES)
    structures, labels = [], []
    for _ in range(n):
        a, b = rng.choice(elements, 2)
        lattice = rng.uniform(2.8, 3.6)
        shift = rng.normal(scale=0.05, size=3)
        structures.append(Structure(Lattice.cubic(lattice), [int(a), int(b)], [[0, 0, 0], 0.5 + shift]))
        labels.append(0.5 * (ELEMENT_VALUES[a] + ELEMENT_VALUES[b]) + 0.3 * (lattice - 3.2))
    return from_pymatgen(structures, ids=[f's{i}' for i in range(n)], labels={'energy': labels})


def _split(n):
    return {
        'train': np.arange(0, int(0.7 * n)),
        'val': np.arange(int(0.7 * n), int(0.85 * n)),
        'test': np.arange(int(0.85 * n), n),
    }


TINY = {
    'epochs': 6,
    'batch_size': 7,
    'learning_rate': 5e-3,
    'ensemble_size': 2,
    'mc_samples': 3,
    'progress': False,
    'patience': 50,
}


def engine_workchain(computer, exit_status: int, runs):
    """A stored, finished engine WorkChain node (as PwBaseWorkChain leaves it) with one CalcJob per entry of
    ``runs``: ``(exit status, index of the earlier run whose remote_folder it restarts from or None, whether it
    has a remote_folder output)``."""
    from aiida import orm
    from aiida.common.links import LinkType
    from aiida.engine import ProcessState

    workflow = orm.WorkflowNode()
    workflow.set_process_state(ProcessState.FINISHED)
    workflow.set_exit_status(exit_status)
    workflow.store()
    folders = []
    for iteration, (calc_exit_status, parent, has_remote_folder) in enumerate(runs, start=1):
        calculation = orm.CalcJobNode(computer=computer)
        calculation.set_process_state(ProcessState.FINISHED)
        calculation.set_exit_status(calc_exit_status)
        calculation.base.links.add_incoming(workflow, LinkType.CALL_CALC, f'iteration_{iteration:02d}')
        if parent is not None:
            calculation.base.links.add_incoming(folders[parent], LinkType.INPUT_CALC, 'parent_folder')
        calculation.store()
        folder = None
        if has_remote_folder:
            folder = orm.RemoteData(computer=computer, remote_path='/tmp')
            folder.base.links.add_incoming(calculation, LinkType.CREATE, 'remote_folder')
            folder.store()
        folders.append(folder)
    return workflow
