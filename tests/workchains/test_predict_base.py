"""``hpcai.predict_base``: the model program's failures on a real profile with the real ``hpcai-model`` program.

Out of memory is real: the job runs under ``ulimit -v`` (its ``prepend_text``), set between what the program
needs at half the batch and at the whole batch. What the program needs besides the batch (torch, the network)
differs between machines, so the test measures it first with a small prediction under the same environment.
"""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, WorkflowFactory

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models import contract
from aiida_hpcai.models.structure_io import write_npz
from tests.surrogate_helpers import model_program_code, needs_model_program, perov_structures, train_tiny_model

PredictBaseWorkChain = WorkflowFactory('hpcai.predict_base')
SurrogateWorkChain = WorkflowFactory('hpcai.surrogate')
PredictCalculation = CalculationFactory('hpcai.predict')

pytestmark = needs_model_program

# One thread and one malloc arena: the address space the program reserves then depends on what it allocates, not
# on the number of cores (each thread's arena reserves 64 MB of it).
ENVIRONMENT = 'export OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=1'
N_STRUCTURES = 1024
# Peak address space above the calibration run's, measured for the tiny model on 1024 perov_5 structures (2026-12-02,
# VmPeak, OMP_NUM_THREADS=1, MALLOC_ARENA_MAX=1): +144 MB at batch 1024, +78 MB at batch 512. The limit sits between.
HEADROOM_KB = 110_000


def returned(node) -> list[str]:
    """The labels of the outputs a process returned."""
    return node.base.links.get_outgoing(link_type=LinkType.RETURN).all_link_labels()


def jobs_of(node):
    return sorted((child for child in node.called if isinstance(child, orm.CalcJobNode)), key=lambda job: job.pk)


@pytest.fixture
def code(aiida_code_installed):
    return model_program_code(aiida_code_installed)


@pytest.fixture
def tiny_model(code, shared_data_dir):
    return train_tiny_model(code, perov_structures(shared_data_dir)).outputs.model


@pytest.fixture(scope='module')
def many_structures(shared_data_dir):
    """The first 1024 structures of perov_5 val.csv (5 atoms each)."""
    from aiida_hpcai.models.datasets import load_dataset

    dataset = load_dataset(shared_data_dir / 'perov_5' / 'val.csv', limit=N_STRUCTURES, targets=['heat_ref'])
    assert len(dataset.arrays) == N_STRUCTURES
    return StructureSet(dataset.arrays).store()


_CALIBRATED = {}


@pytest.fixture
def memory_limit_kb(tiny_model, many_structures, tmp_path_factory):
    """The program's peak address space (VmPeak) for 64 structures at batch 8, plus HEADROOM_KB (measured once)."""
    if tiny_model.uuid not in _CALIBRATED:
        _CALIBRATED[tiny_model.uuid] = _peak_address_space_kb(tiny_model, many_structures, tmp_path_factory)
    return _CALIBRATED[tiny_model.uuid] + HEADROOM_KB


def _peak_address_space_kb(tiny_model, many_structures, tmp_path_factory) -> int:
    folder = tmp_path_factory.mktemp('calibrate')
    (folder / 'models').mkdir()
    (folder / 'models' / 'tiny.pt').write_bytes(tiny_model.get_verified_content())
    write_npz(many_structures.arrays.subset(np.arange(64)), folder / contract.STRUCTURES_FILE)
    config = {'models': [{'file': 'models/tiny.pt', 'sha256': tiny_model.sha256}], 'batch_size': 8, 'device': 'cpu'}
    (folder / contract.CONFIG_FILE).write_text(json.dumps(config))
    script = (
        'from aiida_hpcai.models import program\n'
        "assert program.main(['predict', '--input', '.', '--output', 'outputs']) == 0\n"
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmPeak')))\n"
    )
    result = subprocess.run(
        ['bash', '-c', f'{ENVIRONMENT}; exec {sys.executable} -c "$0"', script],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.split()[-1])


def predict_inputs(code, model, structures, batch_size=None, prepend_text=None, **extra):
    parameters = {'batch_size': batch_size} if batch_size else {}
    options = {'prepend_text': prepend_text} if prepend_text else {}
    predict = {'code': code, 'metadata': {'options': options}}
    if parameters:
        predict['parameters'] = orm.Dict(parameters)
    return {'predict': predict, 'structures': structures, 'models': {'tiny': model}, **extra}


@pytest.mark.slow
def test_out_of_memory_is_retried_with_half_the_batch(code, tiny_model, many_structures, memory_limit_kb):
    limit = f'{ENVIRONMENT}\nulimit -v {memory_limit_kb}'
    _, node = run_get_node(
        PredictBaseWorkChain, **predict_inputs(code, tiny_model, many_structures, N_STRUCTURES, limit)
    )

    assert node.is_finished_ok, (node.exit_status, node.exit_message, memory_limit_kb)
    first, second = jobs_of(node)
    # The first job ran out of memory: its exit code, the program's one line, no outputs.
    assert first.exit_status == PredictCalculation.exit_codes.ERROR_OUT_OF_MEMORY.status, first.exit_message
    assert first.inputs.parameters['batch_size'] == N_STRUCTURES
    assert 'predictions' not in first.outputs and 'summary' not in first.outputs
    stderr = first.outputs.retrieved.base.repository.get_object_content('hpcai-model.err')
    assert f'hpcai-model predict: {contract.OUT_OF_MEMORY}:' in stderr and 'Traceback' not in stderr
    assert "can't allocate memory" in first.exit_message or 'MemoryError' in first.exit_message
    # The second, at half the batch under the same limit, predicted everything; its outputs are the WorkChain's.
    assert second.is_finished_ok and second.inputs.parameters['batch_size'] == N_STRUCTURES // 2
    assert node.outputs.predictions.uuid == second.outputs.predictions.uuid
    assert node.outputs.predictions.base.attributes.get('n_ok') == N_STRUCTURES


@pytest.mark.slow
def test_out_of_memory_at_the_smallest_batch_is_the_exit_code(code, tiny_model, many_structures, memory_limit_kb):
    limit = f'{ENVIRONMENT}\nulimit -v {memory_limit_kb}'
    inputs = predict_inputs(code, tiny_model, many_structures, N_STRUCTURES, limit)
    _, node = run_get_node(PredictBaseWorkChain, min_batch_size=orm.Int(N_STRUCTURES), **inputs)

    assert node.exit_status == PredictBaseWorkChain.exit_codes.ERROR_OUT_OF_MEMORY.status
    (job,) = jobs_of(node)
    assert job.exit_status == PredictCalculation.exit_codes.ERROR_OUT_OF_MEMORY.status
    assert node.exit_message == job.exit_message
    assert returned(node) == []


def test_a_corrupt_model_stops_at_once_with_its_exit_code(code, shared_data_dir):
    corrupt = ModelData(b'these bytes are no torch checkpoint', filename='model.pt', target='heat_ref', units='eV/atom')
    structures = perov_structures(shared_data_dir).subset(range(3)).store()

    _, node = run_get_node(PredictBaseWorkChain, **predict_inputs(code, corrupt.store(), structures))

    status = PredictCalculation.exit_codes.ERROR_CHECKPOINT_MISMATCH.status
    assert node.exit_status == status, node.exit_message
    (job,) = jobs_of(node)  # the same inputs would fail again: not run twice
    assert job.exit_status == status and node.exit_message == job.exit_message
    assert returned(node) == [] and 'predictions' not in job.outputs


def _nan_model(model: ModelData) -> ModelData:
    """The tiny model with every weight NaN, as a training run that diverged leaves it."""
    checkpoint = torch.load(io.BytesIO(model.get_verified_content()), weights_only=False)
    for member in checkpoint['members']:
        for tensor in member.values():
            if tensor.is_floating_point():
                tensor.fill_(float('nan'))
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return ModelData(buffer.getvalue(), filename='nan.pt', target=model.target, units=model.units).store()


def test_nan_from_the_model_is_an_exit_code_without_outputs(code, tiny_model, shared_data_dir):
    nan_model = _nan_model(tiny_model)
    structures = perov_structures(shared_data_dir).subset(range(3)).store()

    _, node = run_get_node(PredictBaseWorkChain, **predict_inputs(code, nan_model, structures))

    status = PredictCalculation.exit_codes.ERROR_NAN_OUTPUT.status
    assert node.exit_status == status, node.exit_message
    (job,) = jobs_of(node)
    assert job.exit_status == status and 'no finite value' in job.exit_message
    assert returned(node) == [] and 'predictions' not in job.outputs

    # The surrogate does not send every structure to DFT on a broken model: it fails, naming the job's code.
    _, surrogate = run_get_node(
        SurrogateWorkChain,
        structures=structures,
        models={'nan': nan_model},
        sigma_threshold=orm.Float(0.1),
        predict={'code': code},
    )
    assert surrogate.exit_status == SurrogateWorkChain.exit_codes.ERROR_PREDICT_FAILED.status
    assert f'exit status {status}' in surrogate.exit_message and 'no finite value' in surrogate.exit_message
    assert 'needs_dft' not in surrogate.outputs
