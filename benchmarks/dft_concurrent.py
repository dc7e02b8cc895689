"""Load: N (default 50) ``hpcai.dft`` submitted at once to a daemon of 2 workers, with the jobs run by
``core.direct`` on this machine and by the one-node Slurm cluster (``core.slurm``) of ``scripts/services.sh``.

One invocation makes a throw-away PostgreSQL + RabbitMQ profile (``aiida-hpcai setup --storage postgresql`` in a
fresh ``AIIDA_PATH``: ``localhost``, ``pw@localhost``, the SSSP subset family), adds the computer
``slurm`` (``core.slurm`` over ``core.local``, same ``mpirun`` and work directory layout) with ``pw@slurm``,
starts ``verdi daemon start WORKERS`` and, for each target in turn (``direct``, then ``slurm``):

1. the elemental references the structures need, planned as ``hpcai.dft_batch`` plans them
   (``dft_batch.plan_references``: one per element and identity), submitted at once, one ``hpcai.dft`` each,
   and tagged when finished; the second target finds them (the identity does not depend on the computer)
   and computes none. Without this step every one of N ``hpcai.dft`` submitted at once on a fresh profile
   would compute the references it misses itself: the look-up only finds finished references;
2. N ``hpcai.dft`` submitted at once (``aiida.engine.submit``, ``QE``, protocol ``fast``, one MPI process each,
   formation energy on), then polled until every one is terminated.

Recorded: exit statuses, wall time (first submit to the last one terminated), each WorkChain's ctime -> mtime,
the CPU time of the daemon workers (they update every job they hold at each scheduler poll, every
``--poll-interval`` seconds),
the largest number of ``pw.x`` running at the same time (sampled every 2 s: ``core.direct`` starts every job
at once and the machine's cores time-share them; Slurm runs as many as the node has CPUs and queues the rest),
and the checks that nothing ran twice: one ``hpcai.dft`` per structure, no structure computing a reference
itself, one reference WorkChain per (element, identity) in the whole profile, one job id per ``pw.x`` CalcJob
and no job id twice; for Slurm, the jobs' final states from slurmctld's job-completion log
(``/var/log/slurm/jobcomp.log``: this cluster has no accounting storage, so ``sacct`` has nothing).

Structures: ``mp_cgcnn`` cells of 1 to 3 atoms, one or two elements out of a set whose pseudopotentials
need at most 50 Ry and whose references are cheap (``CHEAP_ELEMENTS``), smallest first.

    python benchmarks/dft_concurrent.py --count 4 --output /tmp/dft4.json          # check the machinery
    nohup python benchmarks/dft_concurrent.py > /work/notes/load_dft.log 2>&1 &   # 50 on each target

Writes benchmarks/results/dft_concurrent.json (or ``--output``), rewritten every minute while it runs;
``--resume`` keeps the targets that finished there with the same structures and poll interval (each with its
own date and commit) and runs the others in a new profile, which then computes the references again
(recorded with that target).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pathlib
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from aiida_hpcai.models.evaluation import RESULTS_DIR, run_record

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_FILE = RESULTS_DIR / 'dft_concurrent.json'
TARGETS = ('direct', 'slurm')
# SSSP cutoffs <= 50 Ry, not magnetic, references of at most a few atoms (dft_qe.json: P, B, Li, Zn and
# Ga took 2 to 15 minutes each on 2 cores; these 11 to 110 s)
CHEAP_ELEMENTS = ('Al', 'As', 'Ba', 'Ca', 'Ge', 'Mg', 'Na', 'O', 'Si', 'Sr', 'Ti')
JOBCOMP_LOG = pathlib.Path('/var/log/slurm/jobcomp.log')


def select_structures(data_dir: pathlib.Path, count: int, max_atoms: int):
    import pandas as pd
    from pymatgen.core import Composition, Structure

    frame = pd.read_csv(data_dir / 'mp_cgcnn' / 'mp_cgcnn.csv.gz')
    frame = frame[(frame.natoms <= max_atoms) & (frame.formation_energy_per_atom > -5)]
    elements = frame.formula.map(lambda formula: {element.symbol for element in Composition(formula).elements})
    frame = frame[elements.map(lambda symbols: len(symbols) <= 2 and symbols <= set(CHEAP_ELEMENTS))]
    frame = frame.sort_values(['natoms', 'material_id'], kind='stable').head(count)
    if len(frame) < count:
        raise SystemExit(f'only {len(frame)} structures match (asked for {count}); raise --max-atoms')
    return [(row.material_id, row.formula, Structure.from_str(row.cif, fmt='cif')) for row in frame.itertuples()]


# -- profile, computers, daemon -------------------------------------------------------------------
def make_profile(name: str, workers: int, poll_interval: float) -> dict:
    """``aiida-hpcai setup --storage postgresql`` in this process's fresh AIIDA_PATH, the Slurm computer, the daemon."""
    from aiida import orm
    from aiida.manage.configuration import load_profile, reset_config

    from aiida_hpcai.provisioning import LOCALHOST_TRANSPORT

    started = time.perf_counter()
    setup = subprocess.run(
        ['aiida-hpcai', 'setup', '--storage', 'postgresql', '--profile-name', name], capture_output=True, text=True
    )
    if setup.returncode != 0:
        raise SystemExit(f'aiida-hpcai setup failed:\n{setup.stdout}\n{setup.stderr}')
    reset_config()
    profile = load_profile(name, allow_switch=True)
    localhost = orm.load_computer('localhost')
    localhost.set_prepend_text('export OMP_NUM_THREADS=1')
    # `aiida-hpcai setup` polls localhost every second, which suits one quick predict job; a daemon worker
    # updates every job it holds at each poll, and with 50 jobs at 1 s the two workers took 0.81 of 2 cores.
    localhost.set_minimum_job_poll_interval(poll_interval)
    pw = orm.load_code('pw@localhost')
    slurm = orm.Computer(
        label='slurm',
        hostname='localhost',
        description='the one-node Slurm cluster of scripts/services.sh',
        transport_type='core.local',
        scheduler_type='core.slurm',
        workdir=str(pathlib.Path(os.environ['AIIDA_PATH']) / 'slurm_scratch'),
    ).store()
    slurm.configure(**LOCALHOST_TRANSPORT)
    slurm.set_minimum_job_poll_interval(poll_interval)
    slurm.set_mpirun_command(localhost.get_mpirun_command())
    slurm.set_prepend_text('export OMP_NUM_THREADS=1')
    orm.InstalledCode(
        label='pw',
        computer=slurm,
        filepath_executable=str(pw.filepath_executable),
        default_calc_job_plugin='quantumespresso.pw',
    ).store()
    subprocess.run(['verdi', '-p', name, 'daemon', 'start', str(workers)], check=True, capture_output=True)
    return {
        'profile': name,
        'storage_backend': profile.storage_backend,
        'broker': profile.process_control_backend,
        'daemon_workers': workers,
        'job_poll_interval_seconds': poll_interval,
        'setup_seconds': time.perf_counter() - started,
        'setup_report': setup.stdout.splitlines(),
        'storage_config': dict(profile.storage_config),
    }


def delete_profile(info: dict) -> None:
    from aiida.manage import get_manager
    from aiida.manage.external.postgres import Postgres

    name = info['profile']
    # this process's own connection first: dropped under it, its rollback at exit printed a traceback
    get_manager().reset_profile()
    subprocess.run(['verdi', '-p', name, 'daemon', 'stop'], capture_output=True, timeout=300)
    subprocess.run(['verdi', 'profile', 'delete', '--delete-data', '--force', name], capture_output=True)
    config = info['storage_config']
    postgres = Postgres(interactive=False, quiet=True, dbinfo={'host': None, 'user': None})
    if postgres.db_exists(config['database_name']):
        postgres.execute(f'DROP DATABASE "{config["database_name"]}" WITH (FORCE)')
    postgres.drop_dbuser(config['database_username'])


# -- running --------------------------------------------------------------------------------------
class PwCounter(threading.Thread):
    """The largest number of ``pw.x`` processes under ``workdir`` running at the same time."""

    def __init__(self, workdir: str, interval: float = 2.0):
        super().__init__(daemon=True)
        self.workdir, self.interval, self.peak = workdir, interval, 0
        self._halt = threading.Event()

    def run(self):
        import psutil

        while not self._halt.is_set():
            running = 0
            for process in psutil.process_iter(['name']):
                try:
                    if process.info['name'] == 'pw.x' and process.cwd().startswith(self.workdir):
                        running += 1
                except psutil.Error:
                    continue
            self.peak = max(self.peak, running)
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def wait_all(nodes, timeout: float, on_poll=None, interval: float = 5.0) -> float:
    started = time.perf_counter()
    last_report = started
    while not all(node.is_terminated for node in nodes):
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f'{sum(not n.is_terminated for n in nodes)} of {len(nodes)} not terminated')
        time.sleep(interval)
        if on_poll and time.perf_counter() - last_report > 60:
            on_poll()
            last_report = time.perf_counter()
    return time.perf_counter() - started


def dft_inputs(code, structure, label: str, options: dict) -> dict:
    from aiida import orm

    return {
        'structure': orm.StructureData(pymatgen=structure),
        'engine': orm.Str('quantumespresso'),
        'code': code,
        'protocol': orm.Str('fast'),
        'options': orm.Dict(options),
        'metadata': {'label': label},
    }


def daemon_cpu_seconds(profile_name: str) -> float:
    """CPU seconds (user + system) the daemon workers of ``profile_name`` have used so far."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(['cmdline', 'cpu_times']):
        line = ' '.join(process.info['cmdline'] or [])
        if profile_name in line and 'daemon worker' in line:
            total += process.info['cpu_times'].user + process.info['cpu_times'].system
    return total


def run_target(target: str, structures, args, record: dict, save) -> None:
    from aiida import orm
    from aiida.engine import submit

    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.engines import references as refs
    from aiida_hpcai.workchains.dft import DftWorkChain, reference_inputs
    from aiida_hpcai.workchains.dft_batch import plan_references

    code = orm.load_code('pw@localhost' if target == 'direct' else 'pw@slurm')
    # core.direct starts all N jobs at once and they time-share the cores, so a job's wall time grows with N:
    # with 1 h, 9 of 50 relaxations ran out of it (each pw.x had about 1/25 of a core) and aiida-quantumespresso's
    # restart of a run stopped inside its first SCF ended with "charge is wrong" (531). Slurm queues instead.
    hours = math.ceil(len(structures) / (os.cpu_count() or 1)) if target == 'direct' else 1
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'max_wallclock_seconds': 3600 * hours}
    if target == 'slurm':
        options['queue_name'] = 'debug'
    workdir = code.computer.get_workdir().split('{')[0]
    record.update(code=code.full_label, options=options, load_average_before=os.getloadavg())

    # 1. the references, once each
    structure_set = StructureSet.from_pymatgen([s for _, _, s in structures], ids=[m for m, _, _ in structures])
    plan, _ = plan_references(structure_set, 'quantumespresso', code, 'fast', None, False)
    started = time.perf_counter()
    daemon_before = daemon_cpu_seconds(args.profile_name)
    counter = PwCounter(workdir)
    counter.start()
    reference_nodes = {}
    for key, entry in plan.items():
        inputs = reference_inputs(
            entry['element'], orm.Str('quantumespresso'), code, orm.Str('fast'), entry['overrides'], orm.Dict(options)
        )
        inputs['metadata'] = {'label': f'{target} {inputs["metadata"]["label"]}'}
        reference_nodes[key] = submit(DftWorkChain, **inputs)
    wait_all(list(reference_nodes.values()), args.timeout)
    for key, node in reference_nodes.items():
        if node.is_finished_ok:
            refs.tag_reference(node, plan[key]['element'], plan[key]['identity'])
    record['references'] = {
        'computed': len(plan),
        'wall_seconds': time.perf_counter() - started,
        'elements': sorted(entry['element'] for entry in plan.values()),
        'exit_statuses': dict(collections.Counter(str(node.exit_status) for node in reference_nodes.values())),
        'pw_x_running_at_once_max': counter.stop(),
        'daemon_workers_cpu_seconds': daemon_cpu_seconds(args.profile_name) - daemon_before,
    }
    save()

    # 2. N hpcai.dft at once
    counter = PwCounter(workdir)
    counter.start()
    started = time.perf_counter()
    daemon_before = daemon_cpu_seconds(args.profile_name)
    nodes = [submit(DftWorkChain, **dft_inputs(code, s, f'{target} {m}', options)) for m, _, s in structures]
    record['submit_seconds'] = time.perf_counter() - started

    def snapshot():
        record['progress'] = {
            'elapsed_seconds': time.perf_counter() - started,
            'terminated': sum(node.is_terminated for node in nodes),
            'of': len(nodes),
            'load_average': os.getloadavg(),
        }
        save()

    try:
        wait_all(nodes, args.timeout, on_poll=snapshot)
    finally:
        record['wall_seconds'] = time.perf_counter() - started
        record['daemon_workers_cpu_seconds'] = daemon_cpu_seconds(args.profile_name) - daemon_before
        record['pw_x_running_at_once_max'] = counter.stop()
        record['load_average_after'] = os.getloadavg()
        record.pop('progress', None)
        record['runs'] = [
            describe(node, material_id, formula) for node, (material_id, formula, _) in zip(nodes, structures)
        ]
        record['checks'] = checks(target, nodes, record['runs'])
        record['exit_statuses'] = dict(collections.Counter(str(run['exit_status']) for run in record['runs']))
        record['all_finished_ok'] = all(run['exit_status'] == 0 for run in record['runs'])
        save()


def describe(node, material_id: str, formula: str) -> dict:
    from aiida import orm

    calcjobs = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    children = [link.link_label for link in node.base.links.get_outgoing().all()]
    return {
        'material_id': material_id,
        'formula': formula,
        'pk': node.pk,
        'exit_status': node.exit_status,
        'wall_seconds': round((node.mtime - node.ctime).total_seconds(), 1),
        'formation_energy_per_atom': node.outputs.formation_energy_per_atom.value
        if 'formation_energy_per_atom' in node.outputs
        else None,
        'pw_calcjobs': len(calcjobs),
        'job_ids': [calc.get_job_id() for calc in calcjobs],
        'references_computed_here': sorted(label for label in children if label.startswith('reference_')),
    }


def checks(target: str, nodes, runs) -> dict:
    """Nothing duplicated: one WorkChain per structure, references once, one job per CalcJob, job ids unique."""
    from aiida import orm

    from aiida_hpcai.engines.references import REFERENCE_EXTRA

    per_label = collections.Counter(
        orm.QueryBuilder()
        .append(orm.WorkflowNode, filters={'label': {'in': [node.label for node in nodes]}}, project='label')
        .all(flat=True)
    )
    tags = orm.QueryBuilder().append(orm.WorkflowNode, filters={'extras': {'has_key': REFERENCE_EXTRA}})
    references = collections.Counter(
        json.dumps(node.base.extras.get(REFERENCE_EXTRA), sort_keys=True) for node in tags.all(flat=True)
    )
    job_ids = [job for run in runs for job in run['job_ids']]
    result = {
        'hpcai_dft_per_structure_max': max(per_label.values()) if per_label else 0,
        'structures_that_computed_a_reference': sum(bool(run['references_computed_here']) for run in runs),
        'reference_workchains_per_element_and_identity_max': max(references.values()) if references else 0,
        'reference_workchains_in_profile': sum(references.values()),
        'pw_calcjobs': len(job_ids),
        'job_ids_unique': len(set(job_ids)) == len(job_ids),
        'calcjobs_without_job_id': sum(job is None for job in job_ids),
    }
    if target == 'slurm':
        result['slurm'] = slurm_states([job for job in job_ids if job])
    return result


def slurm_states(job_ids: list[str]) -> dict:
    """Final state of each job from slurmctld's job-completion log (``JobId=... JobState=...`` per line)."""
    states = {}
    if JOBCOMP_LOG.exists():
        for line in JOBCOMP_LOG.read_text().splitlines():
            fields = dict(field.split('=', 1) for field in line.split() if '=' in field)
            if fields.get('JobId') in job_ids:
                states[fields['JobId']] = fields.get('JobState')
    return {
        'source': str(JOBCOMP_LOG),
        'jobs_found': len(states),
        'jobs_asked': len(job_ids),
        'states': dict(collections.Counter(states.values())),
        'job_ids': sorted(job_ids, key=int),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--count', type=int, default=50)
    parser.add_argument('--targets', nargs='+', choices=TARGETS, default=list(TARGETS))
    parser.add_argument('--max-atoms', type=int, default=3)
    parser.add_argument('--workers', type=int, default=2, help='daemon workers')
    parser.add_argument('--timeout', type=float, default=6 * 3600, help='seconds to wait for one step')
    parser.add_argument(
        '--data-dir',
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get('HPCAI_DATA_DIR', REPO_ROOT.parent / 'shared' / 'data')),
    )
    parser.add_argument('--keep', action='store_true', help='keep the profile and its AIIDA_PATH (printed)')
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    parser.add_argument(
        '--poll-interval',
        type=float,
        default=10.0,
        help="seconds between a daemon worker's scheduler polls, both computers (10: AiiDA's default for a remote "
        'computer)',
    )
    parser.add_argument(
        '--resume', action='store_true', help='keep the targets finished in --output (same structures); run the others'
    )
    args = parser.parse_args(argv)

    structures = select_structures(args.data_dir, args.count, args.max_atoms)
    aiida_path = pathlib.Path(tempfile.mkdtemp(prefix='hpcai-dft-load-'))
    os.environ['AIIDA_PATH'] = str(aiida_path)  # before aiida reads its configuration
    result = {
        'benchmark': 'dft_concurrent',
        'complete': False,
        'count': args.count,
        'structures': [{'material_id': m, 'formula': f, 'natoms': len(s)} for m, f, s in structures],
        'protocol': 'fast',
        'engine': 'quantumespresso',
        'mpi_processes_per_job': 1,
        'targets': {},
    }
    previous = json.loads(args.output.read_text()) if args.resume and args.output.exists() else {}
    same_poll = previous.get('aiida', {}).get('job_poll_interval_seconds') == args.poll_interval
    if previous.get('structures') == result['structures'] and same_poll:
        for target, record in previous['targets'].items():
            if 'checks' in record:  # finished; its own run record (date, commit) stays with it
                result['targets'][target] = {**record, 'run': record.get('run', previous.get('run'))}
    load_before = os.getloadavg()

    def save():
        result['run'] = run_record(
            load_before=load_before,
            python=platform.python_version(),
            note='each target records its own load average before and after',
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + '\n')

    info = None
    try:
        args.profile_name = f'hpcai-dft-load-{secrets.token_hex(3)}'
        info = make_profile(args.profile_name, args.workers, args.poll_interval)
        result['aiida'] = {key: value for key, value in info.items() if key != 'storage_config'}
        save()
        for target in [target for target in args.targets if target not in result['targets']]:
            print(f'{target}: started {time.strftime("%H:%M:%S")}, load {os.getloadavg()}', file=sys.stderr, flush=True)
            record = result['targets'].setdefault(target, {})
            run_target(target, structures, args, record, save)
            record['run'] = run_record(load_before=tuple(record['load_average_before']))
            print(f'{target}: {json.dumps({k: v for k, v in record.items() if k != "runs"})}', file=sys.stderr)
        result['complete'] = set(result['targets']) == set(TARGETS)
        save()
    finally:
        if info is not None and not args.keep:
            delete_profile(info)
        if args.keep:
            print(f'profile kept: AIIDA_PATH={aiida_path}', file=sys.stderr)
        else:
            shutil.rmtree(aiida_path, ignore_errors=True)


if __name__ == '__main__':
    main()
