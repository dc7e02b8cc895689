"""``hpcai.surrogate`` and ``hpcai.dft`` on the daemon (2 workers) of a PostgreSQL + RabbitMQ profile, and a
surrogate whose workers were killed."""

import os
import shutil
import signal
import time

import pytest
from aiida import orm
from aiida.engine import submit
from aiida.plugins import WorkflowFactory

from tests.conftest import require
from tests.scaleout.conftest import wait_for

SurrogateWorkChain = WorkflowFactory('hpcai.surrogate')


def surrogate_inputs(structures, model, code, **options):
    return {
        'structures': structures,
        'models': {'tiny': model},
        # no sigma of a tiny model reaches this: every structure predicted is confident
        'sigma_threshold': orm.Float(1e6),
        'predict': {'code': code, 'metadata': {'options': options}},
    }


def predict_jobs(node):
    """The ``hpcai.predict`` CalcJobs of a surrogate (its ``hpcai.predict_base`` child runs them), oldest first."""
    jobs = [child for child in node.called_descendants if child.process_type == 'aiida.calculations:hpcai.predict']
    return sorted(jobs, key=lambda job: job.pk)


def test_surrogate_on_the_daemon_with_two_workers(daemon, model_code, tiny_model, training_set):
    assert daemon.get_number_of_workers() == 2
    # Two WorkChains at once: each worker can take one.
    subsets = [training_set.subset(range(0, 5)).store(), training_set.subset(range(5, 12)).store()]
    nodes = [submit(SurrogateWorkChain, **surrogate_inputs(subset, tiny_model, model_code)) for subset in subsets]
    for node, subset in zip(nodes, subsets):
        wait_for(node, daemon=daemon)
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        assert node.outputs.summary['n_structures'] == subset.count
        assert node.outputs.summary['n_confident'] == subset.count
        (predict,) = predict_jobs(node)
        assert predict.is_finished_ok and predict.inputs.structures.uuid == subset.uuid


def test_worker_killed_during_surrogate(daemon, model_code, tiny_model, training_set):
    """SIGKILL every worker while the WorkChain waits for its job: RabbitMQ gives the tasks back, the workers circus
    starts in their place continue from the checkpoints, and nothing is lost or run twice. (Restarting the daemon
    right after such a kill is another matter: see the cluster how-to.)"""
    subset = training_set.subset(range(12, 17)).store()
    # The job sleeps first, so the kill lands while it runs.
    node = submit(SurrogateWorkChain, **surrogate_inputs(subset, tiny_model, model_code, prepend_text='sleep 5'))
    start = time.monotonic()
    while not (predict_jobs(node) and predict_jobs(node)[0].get_job_id()):
        assert time.monotonic() - start < 180 and not node.is_terminated, node.process_state
        time.sleep(0.2)
    (predict,) = predict_jobs(node)
    job_id = predict.get_job_id()

    killed = [int(pid) for pid in daemon.get_worker_info()['info']]  # the one holding the process is among them
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert not node.is_terminated

    wait_for(node, timeout=300, daemon=daemon)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    # Nothing lost: every structure predicted and classified. Nothing twice: one CalcJob, whose job was submitted
    # once (the job id of before the kill), and one split.
    assert node.outputs.summary['n_structures'] == node.outputs.summary['n_confident'] == subset.count
    assert [child.pk for child in predict_jobs(node)] == [predict.pk]
    assert predict.is_finished_ok and predict.get_job_id() == job_id
    calcfunctions = [child for child in node.called if isinstance(child, orm.CalcFunctionNode)]
    assert len(calcfunctions) == 1 and calcfunctions[0].is_finished_ok
    assert node.outputs.needs_dft.creator.pk == calcfunctions[0].pk
    workers = [int(pid) for pid in daemon.get_worker_info()['info']]
    assert len(workers) == 2 and not set(workers) & set(killed)


@pytest.fixture(scope='module')
def pw_code(local_computer, shared_pseudos_dir):
    """``pw@localhost`` on 2 MPI ranks and the SSSP subset in this profile, as ``aiida-hpcai setup`` makes them."""
    from aiida_hpcai.provisioning import DEFAULT_PSEUDO_FAMILY, PSEUDO_SUBSET_DIRNAME, install_pseudo_family

    executable = shutil.which('pw.x')
    require(executable is not None and shutil.which('mpirun') is not None, 'pw.x or mpirun not found')
    install_pseudo_family(shared_pseudos_dir / PSEUDO_SUBSET_DIRNAME, DEFAULT_PSEUDO_FAMILY)
    local_computer.set_mpirun_command(
        ['mpirun'] + (['--allow-run-as-root'] if os.geteuid() == 0 else []) + ['-np', '{tot_num_mpiprocs}']
    )
    local_computer.set_prepend_text('export OMP_NUM_THREADS=1')
    return orm.InstalledCode(
        label='pw',
        computer=local_computer,
        filepath_executable=executable,
        default_calc_job_plugin='quantumespresso.pw',
    ).store()


@pytest.mark.slow
def test_dft_on_the_daemon(daemon, pw_code, shared_data_dir):
    """``hpcai.dft`` on Si (QE ``fast``): relax, SCF and the formation energy against itself as the reference."""
    from aiida_hpcai.workchains.dft import DftWorkChain
    from tests.workchains.test_dft import OPTIONS, _dataset_rows

    silicon = _dataset_rows(shared_data_dir, {'mp-149'})['mp-149'][1]
    node = submit(
        DftWorkChain,
        structure=orm.StructureData(pymatgen=silicon),
        engine=orm.Str('quantumespresso'),
        code=pw_code,
        protocol=orm.Str('fast'),
        options=orm.Dict(OPTIONS),
    )
    wait_for(node, timeout=900, daemon=daemon)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert 0.4 < node.outputs.band_gap.value < 0.8
    assert node.outputs.identity['protocol'] == 'fast'
    assert 19.5 < node.outputs.relaxed_structure.get_cell_volume() / 2 < 21.0
