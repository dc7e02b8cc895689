"""Daemon faults on the PostgreSQL + RabbitMQ profile (2 workers): the worker that holds ``hpcai.dft_batch`` killed
with SIGKILL while pw.x runs, and ``hpcai.coordinate`` with its daemon stopped in the middle of its loop; each followed
by the recovery of the cluster how-to (docs/source/cluster.md, "When a daemon worker dies"), after which the WorkChain
finishes with nothing lost and nothing run twice, as its provenance graph shows.

The daemon runs here as on a user's profile: AiiDA declares the task queue of a *test* profile (what
``aiida_profile_factory`` makes) non-durable and deleted by RabbitMQ 10 s after its last consumer has gone, so on a test
profile every process task is lost once the daemon stays stopped for 10 s, a failure users never meet. The module
fixture ``user_daemon`` turns the profile into an ordinary one while these tests run.
"""

import datetime
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import submit

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.engines import references as refs
from aiida_hpcai.workchains.coordinate import CoordinateWorkChain
from tests.generate_helpers import OPTIONS
from tests.samples import engine_workchain
from tests.scaleout.conftest import DAEMON_WORKERS, add_vhost, daemon_log_tail, stop_daemon, wait_for
from tests.scaleout.test_daemon import pw_code  # noqa: F401 -- fixture
from tests.workchains.test_coordinate import (  # noqa: F401 -- fixtures: tiny EquiCSP, tiny Crysformer
    LOOSE,
    TARGET,
    _inputs,
    code,
    generator,
    property_model,
)

DFT = 'aiida.workflows:hpcai.dft'
PW = 'aiida.calculations:quantumespresso.pw'
PW_BASE = 'aiida.workflows:quantumespresso.pw.base'
# A protocol of its own (fast, smaller cutoffs and mesh, so each pw.x run takes seconds): no earlier test computed
# its Si reference, so the batch computes it, once, before its children.
OVERRIDES = {'cutoff_scale': 0.5, 'kpoints_distance': 0.6}
DFT_OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 2}, 'max_wallclock_seconds': 1800}


@pytest.fixture(scope='module')
def user_daemon(daemon, services_profile):
    """The package's daemon (2 workers) on the profile made an ordinary (non-test) one: a durable task queue that
    outlives a stopped daemon, as on a profile of ``verdi presto`` or ``aiida-hpcai setup``. Switched back after.

    A switch needs a new start on the RabbitMQ side, for the daemon and for this process. On a test profile kiwipy
    declares the profile's exchanges ``auto_delete``; on an ordinary one not, and RabbitMQ refuses to declare an
    existing exchange with the other setting (PRECONDITION_FAILED). This process's communicator, made by an earlier
    test's submission, keeps the test profile's task exchange alive (its reply queue is bound to it) and its own
    setting: the new workers then cannot subscribe, and every task sent has no route (kiwipy UnroutableError
    NO_ROUTE). So the daemon is stopped, this process's communicator and runner are closed (the next submission makes
    them anew, for the profile as it is now), and the profile's virtual host is made again, empty."""
    from aiida.brokers.rabbitmq.utils import get_launch_queue_name
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    vhost = services_profile.process_control_config['broker_virtual_host']
    queue = get_launch_queue_name(f'aiida-{services_profile.uuid}')

    def switch(test_profile: bool):
        stop_daemon(daemon)
        # no task of the earlier tests is pending (their processes have terminated)
        manager = get_manager()
        manager.reset_broker()
        manager.reset_runner()
        subprocess.run(['rabbitmqctl', '-q', 'delete_vhost', vhost], check=True, capture_output=True, timeout=120)
        add_vhost(vhost)
        services_profile.is_test_profile = test_profile
        config = get_config()
        config.update_profile(services_profile)
        config.store()
        daemon.start_daemon(number_workers=DAEMON_WORKERS)
        # every worker subscribed to the task queue: it could declare the profile's exchanges and the queue
        deadline = time.monotonic() + 120
        while (consumers := queue_consumers(vhost, queue)) < DAEMON_WORKERS:
            assert time.monotonic() < deadline, (
                f'{consumers} consumer(s) of {queue} after 120 s: {daemon_log_tail(daemon)}'
            )
            time.sleep(1)

    switch(False)
    yield daemon
    switch(True)


def queue_consumers(vhost: str, queue: str) -> int:
    """The number of consumers of ``queue`` in ``vhost`` (0 when it is not declared)."""
    listed = subprocess.run(
        ['rabbitmqctl', '-q', 'list_queues', '-p', vhost, 'name', 'consumers'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in listed.stdout.splitlines():
        name, _, consumers = line.partition('\t')
        if name == queue and consumers.isdigit():
            return int(consumers)
    return 0


# -- helpers -------------------------------------------------------------------------------------------------------
def worker_holding(daemon, node) -> int:
    """The pid of the daemon worker that runs ``node``: the worker that wrote its last report line to the daemon log
    (``<pid>`` in every line; a process stays with the worker that took its task until it ends or the worker dies)."""
    pattern = re.compile(rf'<(\d+)> .*\[{node.pk}\|')
    pids = pattern.findall(pathlib.Path(daemon.daemon_log_file).read_text())
    assert pids, f'no report of {node} in the daemon log'
    return int(pids[-1])


def workers(daemon) -> list[int]:
    return [int(pid) for pid in daemon.get_worker_info()['info']]


def verdi(daemon, *arguments, timeout=300) -> subprocess.CompletedProcess:
    """``verdi -p <profile> ...`` as a user runs it in a shell, on the daemon's configuration."""
    return subprocess.run(
        ['verdi', '-p', daemon.profile.name, *arguments],
        env=daemon.get_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def terminated_why(node, daemon) -> str:
    """What a process that ended too early said: its state, exit status and report, and the daemon log's tail."""
    from aiida.cmdline.utils.common import get_workchain_report

    report = get_workchain_report(node, 'REPORT')
    return f'{node.process_state} {node.exit_status} {node.exit_message}\n{report}\n{daemon_log_tail(daemon)}'


def called(node, link_type=LinkType.CALL_WORK) -> dict[str, list]:
    """``{call link label: [called nodes]}`` of ``node``."""
    result: dict[str, list] = {}
    for triple in node.base.links.get_outgoing(link_type=link_type).all():
        result.setdefault(triple.link_label, []).append(triple.node)
    return result


def descendants(node, process_type) -> list:
    return sorted((n for n in node.called_descendants if n.process_type == process_type), key=lambda n: n.pk)


def launched_again_by_aiida_core(base, killed_at) -> list:
    """The PwCalculations of ``base`` (a PwBaseWorkChain, aiida-quantumespresso's) that a run of its step cut short by
    the kill had launched before the step ran again and launched the same ``iteration_NN`` once more: the one place the
    kill may run pw.x twice, which the plugin's own WorkChains prevent (``LaunchesOnce``) but cannot in the engine's
    WorkChains (aiida-core issue 3671; docs/source/cluster.md). Such a copy was created before the kill and its
    twin after it; any other duplicate label fails the test."""
    by_label: dict[str, list] = {}
    for triple in base.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all():
        by_label.setdefault(triple.link_label, []).append(triple.node)
    copies = []
    for label, nodes in by_label.items():
        if len(nodes) == 1:
            continue
        first, *rest = sorted(nodes, key=lambda n: n.pk)
        assert len(rest) == 1 and first.ctime < killed_at < rest[0].ctime, (label, [(n.pk, n.ctime) for n in nodes])
        print(
            f'{base.process_label}<{base.pk}>: {label} launched again after the kill; the first copy {first.pk} '
            f'ended {first.process_state.value} {first.exit_status}'
        )
        copies.append(first)
    return copies


def assert_pw_ran_once_per_step(base, killed_at=None) -> list:
    """Every PwCalculation of a PwBaseWorkChain is a step: ones before the last failed (a restart handler reran
    them), the last finished ok. A PwCalculation run again after a kill would be a finished-ok one before the last,
    unless it is the copy of :func:`launched_again_by_aiida_core`."""
    assert base.is_finished_ok, (base.pk, base.exit_status, base.exit_message)
    copies = launched_again_by_aiida_core(base, killed_at) if killed_at else []
    calculations = sorted((n for n in base.called if n.process_type == PW), key=lambda n: n.pk)
    steps = [calculation for calculation in calculations if calculation not in copies]
    assert steps and steps[-1].is_finished_ok
    assert not any(calculation.is_finished_ok for calculation in steps[:-1]), [(c.pk, c.exit_status) for c in steps]
    labels = [triple.link_label for triple in base.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all()]
    assert len(labels) == len(set(labels)) + len(copies), labels  # iteration_01, iteration_02, ...: each once
    return calculations


def assert_dft_child_complete(child, killed_at=None) -> list:
    """One relax and one SCF, each run once unless a daemon fault cost the first run an output and the child ran it
    again (``lost_to_a_daemon_fault``); all outputs; returns its PwCalculations."""
    from aiida_hpcai.workchains.dft import lost_to_a_daemon_fault

    assert child.is_finished_ok, (child.pk, child.exit_status, child.exit_message)
    links = called(child)
    assert sorted(links) == ['relax', 'scf'], links
    for output in ('relaxed_structure', 'total_energy', 'energy_per_atom', 'band_gap', 'identity'):
        assert output in child.outputs, output
    calculations = []
    for label, nodes in links.items():
        *lost, kept = sorted(nodes, key=lambda n: n.pk)
        assert len(lost) <= 1 and all(lost_to_a_daemon_fault(node) for node in lost), (label, nodes)
        if lost:
            print(f'{child.label}: the {label} ran again after {lost[0].process_label}<{lost[0].pk}> lost an output')
            calculations += descendants(lost[0], PW)
        for base in [kept] if kept.process_type == PW_BASE else descendants(kept, PW_BASE):
            calculations += assert_pw_ran_once_per_step(base, killed_at)
    return calculations


# -- hpcai.dft_batch: the worker holding it killed while pw.x runs --------------------------------------------------
@pytest.fixture(scope='module')
def silicon_cells(shared_data_dir):
    """Two 2-atom Si cells: diamond Si (mp-149) and the same cell 6% larger."""
    from tests.workchains.test_dft import _dataset_rows

    diamond = _dataset_rows(shared_data_dir, {'mp-149'})['mp-149'][1]
    expanded = diamond.copy()
    expanded.scale_lattice(diamond.volume * 1.06)
    return StructureSet.from_pymatgen([diamond, expanded], ids=['si-diamond', 'si-expanded']).store()


def si_identity(pw_code, cells):  # noqa: F811
    from aiida_hpcai.engines import get_engine
    from aiida_hpcai.workchains.dft import reference_identity

    engine = get_engine('quantumespresso')
    protocol = engine.load_protocol('fast', OVERRIDES)
    return reference_identity(engine, pw_code, 'fast', OVERRIDES, cells.get_structuredata(0), protocol)[1]


def si_references(identity) -> list:
    query = orm.QueryBuilder().append(orm.WorkflowNode, filters=refs._filters('Si', identity))
    return query.all(flat=True)


def running_pw(node):
    """A PwCalculation under ``node`` whose job runs pw.x now (its process among the job's), or None."""
    import psutil

    for calculation in descendants(node, PW):
        job_id = calculation.get_job_id()
        if not job_id or calculation.is_terminated:
            continue
        try:
            processes = psutil.Process(int(job_id)).children(recursive=True)
            if any('pw.x' in ' '.join(process.cmdline()) for process in processes):
                return calculation
        except psutil.Error:  # the job ended meanwhile
            continue
    return None


def recover_after_kill(daemon, kill_time) -> str:
    """What a user does after a worker was killed (docs/source/cluster.md): ``verdi daemon restart``; when that
    prints FAILED (its stop outlasted ``daemon.timeout``) and leaves the daemon stopped: wait until it is stopped,
    check with ``verdi process repair --dry-run`` that every active process still has its task (the durable queue
    kept them), ``verdi daemon start 2``. When the restart worked it started ``daemon.default_workers`` (1):
    ``verdi daemon incr`` to 2 again. Returns what happened.

    The dry run may find processes without a task: children that the killed worker had stored but not yet sent to
    the broker (``submit`` stores the node, then sends its task). Such a child never ran (state ``created``, made
    before the kill); the user's ``verdi process repair`` sends its task. Any other inconsistency fails."""
    begin = time.monotonic()
    restart = verdi(daemon, 'daemon', 'restart')
    said = ' '.join((restart.stdout + restart.stderr).split())
    text = f'`verdi daemon restart` rc {restart.returncode} after {time.monotonic() - begin:.0f} s: {said}'
    while time.monotonic() - begin < 180:  # a stop still under way, or a start
        status = verdi(daemon, 'daemon', 'status')
        if status.returncode != 0 and 'not running' in status.stdout + status.stderr:
            break
        if status.returncode == 0 and len(workers(daemon)) >= 1:
            break
        time.sleep(1)
    if not daemon.is_daemon_running:
        text += f'; stopped after {time.monotonic() - begin:.0f} s; ' + repair_and_start(daemon, kill_time)
    else:
        missing = DAEMON_WORKERS - len(workers(daemon))
        if missing > 0:
            assert verdi(daemon, 'daemon', 'incr', str(missing)).returncode == 0
        text += f'; running with {DAEMON_WORKERS - missing} worker(s), increased to {DAEMON_WORKERS}'
    return text


def repair_and_start(daemon, kill_time) -> str:
    """With the daemon stopped: ``verdi process repair --dry-run``; processes without a task must be ones stored before
    ``kill_time`` that never ran (:func:`stored_but_never_sent`), and ``verdi process repair`` sends their tasks;
    then ``verdi daemon start 2``. Returns what happened."""
    dry_run = verdi(daemon, 'process', 'repair', '--dry-run')
    if 'No inconsistencies' in dry_run.stdout:
        text = 'no task lost (repair --dry-run)'
    else:
        orphans = stored_but_never_sent(dry_run.stdout + dry_run.stderr, kill_time)
        release_database_connection()
        repair = verdi(daemon, 'process', 'repair', '--force')
        assert repair.returncode == 0, repair.stdout + repair.stderr
        text = f'{orphans} stored without a task: `verdi process repair` sent them'
    start = verdi(daemon, 'daemon', 'start', str(DAEMON_WORKERS))
    assert start.returncode == 0, start.stdout + start.stderr
    return text + f'; started {DAEMON_WORKERS}'


def stored_but_never_sent(dry_run: str, kill_time) -> list[int]:
    """The pks that ``verdi process repair --dry-run`` (its output ``dry_run``) lists as active processes without a
    task, each checked to be a process that never ran and was stored before the kill; any other inconsistency
    (a duplicate task, a task of a terminated process) fails."""
    from plumpy import ProcessState

    assert 'duplicates process tasks' not in dry_run and 'tasks for terminated processes' not in dry_run, dry_run
    found = re.search(r'active processes without process task: \{([\d, ]+)\}', dry_run)
    assert found, dry_run
    orphans = sorted(int(pk) for pk in found.group(1).split(','))
    for pk in orphans:
        node = orm.load_node(pk)
        assert node.process_state == ProcessState.CREATED and node.ctime < kill_time, (node, node.process_state)
    return orphans


def release_database_connection() -> None:
    """End this test's transaction and close its pooled connection: ``verdi process repair`` terminates every
    connection to the profile's database but its own (a notebook's too, docs/source/cluster.md). The next query
    opens a new one."""
    from aiida.manage import get_manager

    session = get_manager().get_profile_storage().get_session()
    session.commit()
    session.get_bind().dispose()


def test_worker_killed_during_dft_batch(user_daemon, pw_code, silicon_cells):  # noqa: F811
    """SIGKILL the worker that holds the batch while a structure's pw.x runs, then recover as a user does; the batch
    finishes with both structures computed, one hpcai.dft child each, the Si reference computed once, each
    PwCalculation run once per step (but for a copy that aiida-core's own step launched again, see
    ``launched_again_by_aiida_core``), and the job running at the kill submitted once."""
    from aiida_hpcai.workchains.dft_batch import DftBatchWorkChain

    daemon = user_daemon
    assert len(workers(daemon)) == DAEMON_WORKERS
    identity = si_identity(pw_code, silicon_cells)
    assert si_references(identity) == []  # this protocol's Si reference is the batch's to compute
    node = submit(
        DftBatchWorkChain,
        structures=silicon_cells,
        max_concurrent=orm.Int(2),
        dft={
            'engine': orm.Str('quantumespresso'),
            'code': pw_code,
            'protocol': orm.Str('fast'),
            'overrides': orm.Dict(OVERRIDES),
            'options': orm.Dict(DFT_OPTIONS),
        },
    )
    start = time.monotonic()
    calculation = None
    while calculation is None:  # a structure's pw.x running (the reference comes first)
        assert time.monotonic() - start < 400 and not node.is_terminated, node.process_state
        children = called(node)
        for label in ('structure_0', 'structure_1'):
            for child in children.get(label, []):
                calculation = calculation or running_pw(child)
        time.sleep(0.2)
    job_id = calculation.get_job_id()
    holder = worker_holding(daemon, node)
    assert holder in workers(daemon)
    os.kill(holder, signal.SIGKILL)
    killed_at, kill_time = time.monotonic(), datetime.datetime.now(datetime.UTC)
    print(f'\nkilled worker {holder} at {killed_at - start:.0f} s while job {job_id} of {calculation} ran pw.x')
    print(recover_after_kill(daemon, kill_time))

    wait_for(node, timeout=400, daemon=daemon)
    print(f'batch finished {time.monotonic() - killed_at:.0f} s after the kill')
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    for process in node.called_descendants:  # a copy that aiida-core launched again may still run: leave no job
        wait_for(process, timeout=400, daemon=daemon)

    # Nothing lost: both structures succeeded, with every DFT value.
    results = node.outputs.results.get_dict()
    assert results['succeeded'] == ['si-diamond', 'si-expanded'] and results['failed'] == []
    relaxed = node.outputs.relaxed_structures
    assert relaxed.ids == ['si-diamond', 'si-expanded']
    for name in ('energy_per_atom', 'formation_energy_per_atom', 'band_gap'):
        assert all(value == value for value in relaxed.get_label(name)), name  # no NaN

    # Nothing twice: one hpcai.dft child per structure (its call link and node label name it), one Si reference.
    links = called(node)
    assert {label: len(nodes) for label, nodes in links.items()} == {
        'reference_Si': 1,
        'structure_0': 1,
        'structure_1': 1,
    }
    assert [links[f'structure_{i}'][0].label for i in (0, 1)] == ['si-diamond', 'si-expanded']
    assert [row['process'] for row in results['structures']] == [links[f'structure_{i}'][0].uuid for i in (0, 1)]
    reference = links['reference_Si'][0]
    assert [n.pk for n in si_references(identity)] == [reference.pk]
    calculations = []
    for label in ('reference_Si', 'structure_0', 'structure_1'):
        child = links[label][0]
        calculations += assert_dft_child_complete(child, kill_time)
        if label != 'reference_Si':
            # the children used the batch's reference and computed none of their own
            formation = child.outputs.formation_energy_per_atom.creator
            assert formation.inputs.Si.pk == reference.outputs.energy_per_atom.pk
    # the job that ran at the kill was submitted once: the same job id, finished ok, the last of its step
    assert calculation.is_finished_ok and calculation.get_job_id() == job_id
    assert len(set(calculations)) == len(calculations) == len(descendants(node, PW))
    print(f'{len(calculations)} PwCalculations: {[(c.pk, c.exit_status) for c in calculations]}')
    assert len(workers(daemon)) == DAEMON_WORKERS and holder not in workers(daemon)


def test_repair_sends_the_task_of_a_process_stored_without_one(user_daemon):
    """The state a worker killed inside ``submit`` leaves (the node stored with its checkpoint, its task never sent: seen
    once in the test above), made on purpose: the recovery the test above follows lists the process, ``verdi process
    repair`` sends its task, and the daemon runs it to the end."""
    from aiida.manage import get_manager
    from aiida.plugins import WorkflowFactory

    daemon = user_daemon
    stop_daemon(daemon)
    runner = get_manager().get_runner()
    add_multiply = WorkflowFactory('core.arithmetic.add_multiply')
    process = runner.instantiate_process(add_multiply, x=orm.Int(1), y=orm.Int(2), z=orm.Int(3))
    runner.persister.save_checkpoint(process)
    process.close()  # what ``submit`` does next is send the task: not done
    node = process.node
    said = repair_and_start(daemon, datetime.datetime.now(datetime.UTC))
    print(said)
    assert said.startswith(f'[{node.pk}] stored without a task')
    wait_for(node, timeout=120, daemon=daemon)
    assert node.is_finished_ok and node.outputs.result.value == 9


# -- hpcai.coordinate: the daemon stopped while a generate job of the loop runs ---------------------------------------

GENERATE = 'aiida.calculations:hpcai.generate'
ITERATIONS = 3


def test_coordinate_survives_a_daemon_restart(user_daemon, code, generator, property_model, tmp_path):  # noqa: F811
    """``verdi daemon stop`` while the generate job of iteration 2 runs, the daemon left stopped longer than a test
    profile's queue would survive, ``verdi daemon start 2``: the loop goes on from its checkpoint to the iteration cap,
    its decision log numbered 1..n, one generate job per iteration (the one running at the stop kept its job id),
    one surrogate per iteration, and a results table that agrees with the log."""
    daemon = user_daemon
    code.computer.set_minimum_job_poll_interval(1)
    # every prediction of the tiny model fits the bound and is confident: the loop runs to its iteration cap
    goal = {'composition': 'MgO', 'count': 50, 'bounds': {TARGET: [None, 1000.0]}, 'dft_budget': 0}
    inputs = _inputs(
        code,
        generator,
        property_model,
        goal,
        samples_per_iteration=orm.Int(2),
        max_iterations=orm.Int(ITERATIONS),
        sigma_threshold=orm.Float(1e6),
        continue_without_dft=orm.Bool(True),
        buffer_size=orm.Int(0),
        # every generated cell goes on to the surrogate, so every iteration predicts (the tiny generator's MgO cells
        # are mostly one structure, some P1): the report drops duplicates and P1 among the results, and says so
        screening=orm.Dict({**LOOSE, 'deduplicate': False, 'reject_p1': False, 'min_distance': None}),
    )
    # The tiny generator takes a second or two: on a busy machine the job of iteration 2 ended before `verdi daemon
    # stop` took effect. While `hold` exists a generate job first sleeps, so the stop lands while that job runs.
    hold = tmp_path / 'hold'
    inputs['generate']['metadata']['options'] = {**OPTIONS, 'prepend_text': f'if [ -e {hold} ]; then sleep 20; fi'}
    node = submit(CoordinateWorkChain, **inputs)
    start = time.monotonic()
    job = None
    while job is None:  # the generate job of iteration 2 running
        assert time.monotonic() - start < 300 and not node.is_terminated, node.process_state
        calcs = called(node, LinkType.CALL_CALC)
        if not hold.exists() and any(calc.is_terminated for calc in calcs.get('generate_1', [])):
            hold.touch()  # long before the job of iteration 2 starts: the surrogate of iteration 1 runs in between
        jobs = calcs.get('generate_2', [])
        if jobs and jobs[0].get_job_id() and not jobs[0].is_terminated:
            job = jobs[0]
        time.sleep(0.2)
    job_id = job.get_job_id()
    before = workers(daemon)
    stop = verdi(daemon, 'daemon', 'stop')
    stopped_at = time.monotonic()
    while daemon.is_daemon_running:  # `verdi daemon stop` may say FAILED on a busy machine and still stop
        assert time.monotonic() - stopped_at < 180, 'the daemon did not stop'
        time.sleep(0.5)
    print(f'\n`verdi daemon stop` at {stopped_at - start:.0f} s: {" ".join(stop.stdout.split())}')
    assert not job.is_terminated and not node.is_terminated, terminated_why(node, daemon)
    time.sleep(12)  # a test profile's task queue would be gone now, with the loop's task
    hold.unlink()  # the job of iteration 2 is in its sleep; that of iteration 3 runs at once
    assert verdi(daemon, 'daemon', 'start', str(DAEMON_WORKERS)).returncode == 0
    assert not set(workers(daemon)) & set(before)

    wait_for(node, timeout=400, daemon=daemon)
    print(f'loop finished {time.monotonic() - stopped_at:.0f} s after the stop')
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    log = node.outputs.decision_log.get_dict()
    iterations = log['iterations']
    assert [entry['iteration'] for entry in iterations] == list(range(1, ITERATIONS + 1))
    assert log['stop_reason'].startswith('iterations')

    # one generate job per iteration, the one of the log; the job running at the stop submitted once
    calcs, works = called(node, LinkType.CALL_CALC), called(node, LinkType.CALL_WORK)
    # each step's job or calcfunction once (generate_i, goal_filter_i, screen_i, look_up, report)
    assert all(len(nodes) == 1 for nodes in calcs.values()), {label: len(nodes) for label, nodes in calcs.items()}
    for entry in iterations:
        (generate,) = calcs[f'generate_{entry["iteration"]}']
        assert generate.pk == entry['generate_pk'] and generate.is_finished_ok
        assert entry['candidates'] == len(generate.outputs.structures)
    assert len([n for n in node.called_descendants if n.process_type == GENERATE]) == ITERATIONS
    assert job.is_finished_ok and job.get_job_id() == job_id
    # one surrogate per iteration that had valid candidates, the one of the log; each calcfunction step once
    predicted = [entry for entry in iterations if entry['valid']]
    assert predicted
    assert sorted(works) == sorted(f'surrogate_{entry["iteration"]}' for entry in predicted)
    for entry in predicted:
        (surrogate,) = works[f'surrogate_{entry["iteration"]}']
        assert surrogate.pk == entry['surrogate_pk'] and surrogate.is_finished_ok

    # the log accounts for every valid candidate of each iteration, and the results table agrees with it: every
    # accepted prediction is a result or dropped from the results for a reason, each AI row comes from the surrogate
    # of its iteration
    assert all(entry['valid'] for entry in iterations)
    accepted = {}
    for entry in iterations:
        decided = [
            item['id'] for key in ('accepted', 'dropped', 'sent_to_dft', 'not_sent_to_dft') for item in entry[key]
        ]
        assert len(decided) == len(set(decided)) == entry['valid']
        assert all(identifier.startswith(f'i{entry["iteration"]}-') for identifier in decided)
        accepted.update({item['id']: entry['iteration'] for item in entry['accepted']})
    table = node.outputs.table.get_dict()
    rows = table['rows']
    assert rows and [row['id'] for row in rows] == node.outputs.structures.ids
    assert len({row['id'] for row in rows}) == len(rows)
    surrogates = {entry['iteration']: entry['surrogate_pk'] for entry in iterations}
    for row in rows:
        assert row['source'] == 'ai' and accepted[row['id']] == row['iteration']
        assert row['node_pk'] == surrogates[row['iteration']]
    dropped = {item['id'] for item in log['dropped']}
    assert set(accepted) == {row['id'] for row in rows} | dropped and not dropped & {row['id'] for row in rows}
    assert table['counts']['ai'] == len(rows)
    print(f'{len(rows)} results {table["counts"]}, {len(accepted)} accepted, {len(dropped)} dropped from the results')


def test_lost_output_is_recognised(local_computer):
    """The failure ``hpcai.dft`` runs a step again for (seen once in test_worker_killed_during_dft_batch, whose kill
    lands in that window only by chance): a failed engine WorkChain whose CalcJob finished ok without
    ``remote_folder``; not a CalcJob that failed, nor one with its outputs."""
    from aiida_hpcai.workchains.dft import lost_to_a_daemon_fault

    def base(exit_status, calc_exit_status, remote_folder):
        return engine_workchain(local_computer, exit_status, [(calc_exit_status, None, remote_folder)])

    assert lost_to_a_daemon_fault(base(11, 0, remote_folder=False))
    assert not lost_to_a_daemon_fault(base(402, 305, remote_folder=True))  # pw.x itself failed
    assert not lost_to_a_daemon_fault(base(402, 305, remote_folder=False))
    assert not lost_to_a_daemon_fault(base(0, 0, remote_folder=True))
