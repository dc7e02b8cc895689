"""``hpcai.train`` and ``hpcai.predict`` on remote-style computers: through the one-node Slurm cluster with the
options a GPU cluster needs, and over SSH (``core.ssh_async``) to 127.0.0.1, submitted to the daemon."""

import pathlib
import subprocess

import numpy as np
import pytest
from aiida import orm
from aiida.engine import submit
from aiida.plugins import CalculationFactory

from tests.conftest import LOCALHOST_TRANSPORT
from tests.scaleout.conftest import model_code_on, wait_for
from tests.surrogate_helpers import TINY_TRAINING

TrainCalculation = CalculationFactory('hpcai.train')
PredictCalculation = CalculationFactory('hpcai.predict')

# What a GPU cluster asks for, on the stand-in GRES of scripts/services.sh: a GPU per job, a partition and
# environment modules (here a shell function standing in for `module load`). The job records what Slurm gave it.
SLURM_OPTIONS = {
    'queue_name': 'debug',
    'custom_scheduler_commands': '#SBATCH --gres=gpu:1',
    'prepend_text': 'module() { echo "module $*" >> modules.txt; }\nmodule load cuda/12\n'
    'echo "$SLURM_JOB_ID $SLURM_JOB_PARTITION $CUDA_VISIBLE_DEVICES" > slurm_env.txt',
    'additional_retrieve_list': ['slurm_env.txt', 'modules.txt'],
    'max_wallclock_seconds': 600,
}


@pytest.fixture(scope='module')
def slurm_computer(slurm_cluster, services_profile, tmp_path_factory):
    computer = orm.Computer(
        label='slurm-hpcai',
        hostname='localhost',
        description='the one-node Slurm cluster of scripts/services.sh',
        transport_type='core.local',
        scheduler_type='core.slurm',
        workdir=str(tmp_path_factory.mktemp('slurm_work')),
    ).store()
    computer.configure(**LOCALHOST_TRANSPORT)
    computer.set_minimum_job_poll_interval(1)
    return computer


def _slurm_job(job_id: str) -> dict:
    """What slurmctld records of a job (``scontrol show job``; kept for MinJobAge=600 s after it ends)."""
    output = subprocess.run(['scontrol', '-o', 'show', 'job', job_id], capture_output=True, text=True, check=True)
    return dict(field.split('=', 1) for field in output.stdout.split() if '=' in field)


def _assert_went_through_slurm(node, partition='debug'):
    job_id = node.get_job_id()
    assert job_id and job_id.isdigit(), job_id
    job = _slurm_job(job_id)
    assert (job['JobState'], job['Partition'], job['ExitCode']) == ('COMPLETED', partition, '0:0')
    assert 'gpu:1' in job.get('TresPerNode', '')
    # The batch script AiiDA wrote, and what the job saw inside its allocation.
    script = (pathlib.Path(node.outputs.remote_folder.get_remote_path()) / '_aiidasubmit.sh').read_text()
    assert '#SBATCH --partition=debug' in script and '#SBATCH --gres=gpu:1' in script
    recorded_id, recorded_partition, gpus = node.outputs.retrieved.get_object_content('slurm_env.txt').split()
    assert (recorded_id, recorded_partition, gpus) == (job_id, partition, '0')
    assert node.outputs.retrieved.get_object_content('modules.txt') == 'module load cuda/12\n'


def test_train_and_predict_through_slurm(daemon, slurm_computer, training_set):
    code = model_code_on(slurm_computer)
    metadata = {'options': SLURM_OPTIONS}
    train = submit(
        TrainCalculation,
        code=code,
        structures=training_set,
        parameters=orm.Dict(TINY_TRAINING),
        device=orm.Str('cpu'),  # `cuda` on a real GPU node; the stand-in GPU here has no device
        metadata=metadata,
    )
    wait_for(train, daemon=daemon)
    assert train.is_finished_ok, (train.exit_status, train.exit_message)
    _assert_went_through_slurm(train)

    structures = training_set.subset(range(6)).store()
    predict = submit(
        PredictCalculation,
        code=code,
        structures=structures,
        models={'tiny': train.outputs.model},
        device=orm.Str('cpu'),
        metadata=metadata,
    )
    wait_for(predict, daemon=daemon)
    assert predict.is_finished_ok, (predict.exit_status, predict.exit_message)
    _assert_went_through_slurm(predict)
    assert predict.outputs.summary['n_ok'] == structures.count
    assert np.isfinite(predict.outputs.predictions.get_array('mean')).all()


@pytest.fixture(scope='module')
def ssh_computer(ssh_host, services_profile, tmp_path_factory):
    """A ``core.ssh_async`` computer to the SSH alias of ``scripts/services.sh``, as one sets up a remote cluster."""
    computer = orm.Computer(
        label='ssh-hpcai',
        hostname='127.0.0.1',
        description='127.0.0.1 over SSH (scripts/services.sh)',
        transport_type='core.ssh_async',
        scheduler_type='core.direct',
        workdir=str(tmp_path_factory.mktemp('ssh_work')),
    ).store()
    computer.configure(
        host=ssh_host,
        max_io_allowed=8,
        authentication_script='None',
        backend='asyncssh',
        use_login_shell=False,
        safe_interval=0,
    )
    computer.set_minimum_job_poll_interval(1)
    return computer


def test_predict_over_ssh(daemon, ssh_computer, tiny_model, training_set):
    structures = training_set.subset(range(4)).store()
    predict = submit(
        PredictCalculation,
        code=model_code_on(ssh_computer),
        structures=structures,
        models={'tiny': tiny_model},
    )
    wait_for(predict, daemon=daemon)
    assert predict.is_finished_ok, (predict.exit_status, predict.exit_message)
    assert predict.computer.transport_type == 'core.ssh_async'
    # The remote folder is where the SSH transport put it, and the job ran there.
    remote = predict.outputs.remote_folder
    assert remote.get_remote_path().startswith(ssh_computer.get_workdir())
    assert '_aiidasubmit.sh' in remote.listdir()
    assert predict.outputs.summary['n_ok'] == structures.count
