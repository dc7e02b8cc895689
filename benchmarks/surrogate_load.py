"""Load: N structures (default 100,000) screened through ``hpcai.surrogate`` submitted to the daemon, on the
embedded profile and on a PostgreSQL + RabbitMQ profile, against the bare program on the same input.

Phases, one after the other in one invocation (so the figures sit side by side in one JSON):

* ``bare``: ``hpcai-model predict`` on an input folder laid out as the CalcJob lays it out
  (``surrogate_overhead.run_bare``);
* ``sqlite``: a throw-away ``AIIDA_PATH`` and a profile made as ``aiida-hpcai setup`` makes it
  (``verdi presto``: ``core.sqlite_dos`` storage, the ``core.zeromq`` broker), ``verdi daemon start WORKERS``;
* ``postgresql``: the same with ``aiida-hpcai setup --storage postgresql`` (``verdi presto --use-postgres``:
  ``core.psql_dos`` and, RabbitMQ answering on localhost, ``core.rabbitmq``); needs the services of
  ``scripts/services.sh`` and a PostgreSQL role allowed to create databases.

In each profile phase a child process (this script with ``--phase``) makes the profile, starts the daemon,
stores the ModelData, stores the structures as ONE StructureSet (timed), submits ``hpcai.surrogate`` with
``aiida.engine.submit`` and waits until the process is terminated (wall time: submit to finished, as seen by
polling every 0.5 s; the node's own ctime -> mtime too). The job records when the program starts and ends
(``surrogate_overhead.timed_job_options``), which splits the wall time into before / program / after.
A sampler thread reads ``/proc/PID/status`` (``VmHWM``: the peak resident set of each process, so a peak
between two samples is not missed; only the last interval of a process's life is) of the daemon workers,
the ZeroMQ broker service and the model program (bare, or inside the job), once a second. At the end the
daemon is stopped and the profile deleted (the PostgreSQL database and role dropped).

Structures: the ``mp_cgcnn`` test split, then val, then train (as ``surrogate_overhead``); the data set holds
32,665 structures, so a count above that repeats it (pass 2 onwards get ``#K`` appended to their ids).

    python benchmarks/surrogate_load.py --count 1000 --output /tmp/load.json       # check the machinery
    nohup python benchmarks/surrogate_load.py > /work/notes/load_surrogate.log 2>&1 &   # 100,000

Writes benchmarks/results/surrogate_load.json (or ``--output``) after every phase; ``--resume`` keeps the
phases already there (same count and options) and runs the others; each phase records when it started and
finished (UTC), so a phase run again alone (its entry removed, then ``--resume --phases NAME``) says so.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from surrogate_overhead import (
    SPLIT_ORDER,
    checkpoint_file,
    model_node,
    program_times,
    run_bare,
    surrogate_inputs,
    timed_job_options,
)

from aiida_hpcai.models.evaluation import RESULTS_DIR, default_source, get_split, load_filtered, run_record

RESULTS_FILE = RESULTS_DIR / 'surrogate_load.json'
PHASES = ('bare', 'sqlite', 'postgresql')
PROFILE_PREFIX = 'hpcai-load'


# -- structures -----------------------------------------------------------------------------------
def select_structures(data: pathlib.Path, count: int):
    """The first ``count`` of test, val, train in order, the whole set repeated as often as needed."""
    arrays, info = load_filtered(data)
    split = get_split(arrays)
    order = np.concatenate([np.asarray(split[name], dtype=np.int64) for name in SPLIT_ORDER])
    passes = -(-count // len(order))
    indices = np.tile(order, passes)[:count]
    chosen = arrays.subset(indices)
    repeat = np.repeat(np.arange(passes), len(order))[:count]
    chosen.ids = np.asarray([i if k == 0 else f'{i}#{k}' for i, k in zip(chosen.ids, repeat)], dtype=str)
    return chosen, {
        'source': info['source'],
        'distinct_structures': len(order),
        'passes_over_the_data': float(count / len(order)),
        'split_order': list(SPLIT_ORDER),
    }


# -- memory sampling ------------------------------------------------------------------------------
def _status_kib(pid: int) -> dict:
    """``VmHWM`` (peak resident set) and ``VmRSS`` of a process in KiB, from ``/proc/PID/status``."""
    values = {}
    with open(f'/proc/{pid}/status') as handle:
        for line in handle:
            if line.startswith(('VmHWM:', 'VmRSS:')):
                key, value = line.split(':')
                values[key] = int(value.split()[0])
    return values


class PeakSampler(threading.Thread):
    """Once every ``interval`` seconds: the peak resident set of every process ``classify`` gives a role."""

    def __init__(self, classify, interval: float = 1.0):
        super().__init__(daemon=True)
        self.classify = classify  # psutil.Process -> role name or None
        self.interval = interval
        self.processes: dict[int, dict] = {}
        self._halt = threading.Event()

    def run(self):
        import psutil

        while not self._halt.is_set():
            for process in psutil.process_iter(['pid', 'cmdline']):
                try:
                    role = self.classify(process)
                    if role is None:
                        continue
                    status = _status_kib(process.pid)
                    cpu = process.cpu_times()
                except (psutil.Error, OSError):
                    continue
                entry = self.processes.setdefault(
                    process.pid, {'role': role, 'cmdline': ' '.join(process.info['cmdline'] or [])[:200]}
                )
                entry['peak_rss_mib'] = max(entry.get('peak_rss_mib', 0.0), status.get('VmHWM', 0) / 1024)
                entry['cpu_seconds'] = cpu.user + cpu.system
            self._halt.wait(self.interval)

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        roles: dict[str, dict] = {}
        for entry in self.processes.values():
            role = roles.setdefault(entry['role'], {'processes': 0, 'peak_rss_mib_max': 0.0, 'cpu_seconds': 0.0})
            role['processes'] += 1
            role['peak_rss_mib_max'] = round(max(role['peak_rss_mib_max'], entry['peak_rss_mib']), 1)
            role['cpu_seconds'] = round(role['cpu_seconds'] + entry['cpu_seconds'], 1)
            role.setdefault('peak_rss_mib_each', []).append(round(entry['peak_rss_mib'], 1))
        return {'sample_interval_s': self.interval, 'by_role': roles}


def _cmdline(process) -> list[str]:
    return process.info['cmdline'] or []


def is_model_program(process, under: str) -> bool:
    """``hpcai-model predict`` running in a folder below ``under``."""
    command = _cmdline(process)
    if not any(part.endswith('hpcai-model') for part in command[:2]) or 'predict' not in command:
        return False
    return process.cwd().startswith(under)


# -- bare -----------------------------------------------------------------------------------------
def bare_phase(arrays, checkpoint: pathlib.Path, args) -> dict:
    executable = shutil.which('hpcai-model') or str(pathlib.Path(sys.executable).parent / 'hpcai-model')
    bare_root = tempfile.gettempdir() + '/hpcai-bare-'
    sampler = PeakSampler(lambda p: 'program' if is_model_program(p, bare_root) else None, args.sample_interval)
    load_before = os.getloadavg()
    sampler.start()
    result = run_bare(executable, arrays, checkpoint, args)
    memory = sampler.stop()
    result.pop('_predictions')
    return {
        **result,
        'structures_per_second': len(arrays) / result['program_wall_seconds'],
        'memory': memory,
        'load_average_before': load_before,
        'load_average_after': os.getloadavg(),
    }


# -- one profile (child process) ------------------------------------------------------------------
def profile_phase(storage: str, arrays_file: pathlib.Path, checkpoint: pathlib.Path, args) -> dict:
    """In a child whose ``AIIDA_PATH`` is a fresh folder: profile, daemon, submit, wait, measure."""
    import secrets

    from aiida.manage.configuration import load_profile, reset_config

    from aiida_hpcai.models.structure_io import read_npz
    from aiida_hpcai.provisioning import MODEL_CODE_LABEL, SetupReport, ensure_code, ensure_localhost, presto_command

    name = f'{PROFILE_PREFIX}-{storage}-{secrets.token_hex(3)}'
    aiida_path = os.environ['AIIDA_PATH']
    started = time.perf_counter()
    report = SetupReport()
    # `aiida-hpcai setup` (provisioning.ensure_profile) runs this `verdi presto`; the embedded profile gets the
    # ZeroMQ broker it has on a machine without RabbitMQ (presto would pick the RabbitMQ running here)
    command = presto_command(name, storage) + (['--use-zeromq'] if storage == 'sqlite' else [])
    subprocess.run(command, check=True, capture_output=True)
    reset_config()
    profile = load_profile(name, allow_switch=True)
    computer = ensure_localhost(report, True)
    executable = shutil.which('hpcai-model') or str(pathlib.Path(sys.executable).parent / 'hpcai-model')
    code = ensure_code(MODEL_CODE_LABEL, executable, computer, report)
    setup_seconds = time.perf_counter() - started
    storage_config = dict(profile.storage_config)
    info = {
        'profile': name,
        'storage_backend': profile.storage_backend,
        'broker': profile.process_control_backend,
        'daemon_workers': args.workers,
        'computer': f'{computer.label} ({computer.scheduler_type}, {computer.transport_type})',
        'minimum_job_poll_interval_s': computer.get_minimum_job_poll_interval(),
        'profile_setup_seconds': setup_seconds,
    }
    verdi = shutil.which('verdi') or str(pathlib.Path(sys.executable).parent / 'verdi')
    workdir_root = computer.get_workdir().split('{')[0]

    def classify(process):
        command = _cmdline(process)
        if '-p' in command and name in command and 'daemon' in command:
            if 'worker' in command:
                return 'daemon_worker'
            if 'broker' in command:
                return 'broker_service'
            return 'daemon_circus'
        if is_model_program(process, workdir_root):
            return 'program'
        return None

    try:
        started = time.perf_counter()
        subprocess.run([verdi, '-p', name, 'daemon', 'start', str(args.workers)], check=True, capture_output=True)
        info['daemon_start_seconds'] = time.perf_counter() - started
        result = submit_and_wait(code, checkpoint, read_npz(arrays_file), args, classify)
    finally:
        subprocess.run([verdi, '-p', name, 'daemon', 'stop'], capture_output=True, timeout=300)
        delete_profile(verdi, name, storage, storage_config, aiida_path)
    return {**info, **result}


def submit_and_wait(code, checkpoint, arrays, args, classify) -> dict:
    from aiida.engine import submit
    from aiida.manage.caching import disable_caching

    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.workchains.surrogate import SurrogateWorkChain

    model = model_node(checkpoint)
    started = time.perf_counter()
    structures = StructureSet(arrays).store()
    store_seconds = time.perf_counter() - started

    inputs = surrogate_inputs(structures, model, code, args, timed_job_options(args.threads))
    sampler = PeakSampler(classify, args.sample_interval)
    load_before = os.getloadavg()
    sampler.start()
    with disable_caching():
        submitted_epoch = time.time()
        started = time.perf_counter()
        node = submit(SurrogateWorkChain, **inputs)
        submit_seconds = time.perf_counter() - started
        while not node.is_terminated:
            if time.perf_counter() - started > args.timeout:
                raise SystemExit(f'{node} not terminated after {args.timeout} s ({node.process_state})')
            time.sleep(0.5)
        wall = time.perf_counter() - started
        finished_epoch = time.time()
    memory = sampler.stop()
    load_after = os.getloadavg()
    if not node.is_finished_ok:
        raise SystemExit(f'SurrogateWorkChain<{node.pk}> failed: {node.exit_status} {node.exit_message}')
    predict_calcs = node.called_descendants
    calculations = [child for child in predict_calcs if child.process_type.endswith('hpcai.predict')]
    calculation = calculations[-1]
    program_start, program_end, program_cpu = program_times(calculation)
    summary = node.outputs.summary.get_dict()
    return {
        'structureset_store_seconds': store_seconds,
        'submit_call_seconds': submit_seconds,
        'workchain_wall_seconds': wall,
        'workchain_ctime_to_mtime_seconds': (node.mtime - node.ctime).total_seconds(),
        'program_wall_seconds': program_end - program_start,
        'program_cpu_seconds': program_cpu,
        'before_program_seconds': program_start - submitted_epoch,
        'after_program_seconds': finished_epoch - program_end,
        'structures_per_second': len(arrays) / wall,
        'n_ok': calculation.outputs.summary['n_ok'],
        'n_confident': summary.get('n_confident'),
        'n_needs_dft': summary.get('n_needs_dft'),
        'predict_calcjobs': len(calculations),
        'job_id': calculation.get_job_id(),
        'workchain_pk': node.pk,
        'memory': memory,
        'load_average_before': load_before,
        'load_average_after': load_after,
    }


def delete_profile(verdi: str, name: str, storage: str, storage_config: dict, aiida_path: str) -> None:
    subprocess.run([verdi, 'profile', 'delete', '--delete-data', '--force', name], capture_output=True)
    if storage == 'postgresql':
        from aiida.manage.external.postgres import Postgres

        postgres = Postgres(interactive=False, quiet=True, dbinfo={'host': None, 'user': None})
        if postgres.db_exists(storage_config['database_name']):
            postgres.execute(f'DROP DATABASE "{storage_config["database_name"]}" WITH (FORCE)')
        postgres.drop_dbuser(storage_config['database_username'])


# -- report ---------------------------------------------------------------------------------------
def compare(bare: dict, phase: dict) -> dict:
    """The AiiDA overhead against the bare program, between the runs and within the AiiDA run."""
    model_time = bare['program_wall_seconds']
    between = phase['workchain_wall_seconds'] - model_time
    within = phase['workchain_wall_seconds'] - phase['program_wall_seconds']
    with_inputs = phase['structureset_store_seconds'] + phase['workchain_wall_seconds'] - bare['inputs_seconds']
    return {
        'overhead_seconds': between,
        'overhead_percent': 100 * between / model_time,
        'overhead_within_run_seconds': within,
        'overhead_within_run_percent': 100 * within / phase['program_wall_seconds'],
        'overhead_with_inputs_percent': 100 * (with_inputs - model_time) / model_time,
    }


def options_record(args) -> dict:
    return {
        'count': args.count,
        'target': args.target,
        'members': args.members,
        'uncertainty': args.uncertainty,
        'mc_samples': args.mc_samples,
        'batch_size': args.batch_size,
        'threads': args.threads,
        'daemon_workers': args.workers,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=str(default_source()), help='mp_cgcnn.csv.gz or an exported npz')
    parser.add_argument('--count', type=int, default=100_000)
    parser.add_argument('--phases', nargs='+', choices=PHASES, default=list(PHASES))
    parser.add_argument('--target', default='formation_energy_per_atom', choices=('formation_energy_per_atom',))
    parser.add_argument('--members', type=int, default=1, help='first N members of the shipped model (default 1)')
    parser.add_argument('--uncertainty', default='mc_dropout', help='program option')
    parser.add_argument('--mc-samples', type=int, default=1, help='program option')
    parser.add_argument('--batch-size', type=int, default=64, help='program option')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--workers', type=int, default=2, help='daemon workers')
    parser.add_argument('--sample-interval', type=float, default=1.0, help='seconds between memory samples')
    parser.add_argument('--timeout', type=float, default=7200, help='seconds to wait for one WorkChain')
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    parser.add_argument('--resume', action='store_true', help='keep the phases already in --output')
    parser.add_argument('--phase', help=argparse.SUPPRESS)  # child: one profile phase
    parser.add_argument('--arrays', type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument('--checkpoint', type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument('--child-output', type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.program_cores = None  # what run_bare reads

    if args.phase:
        result = profile_phase(args.phase, args.arrays, args.checkpoint, args)
        args.child_output.write_text(json.dumps(result, indent=2))
        return

    import torch

    from aiida_hpcai.models.checkpoint import pretrained_path
    from aiida_hpcai.models.structure_io import write_npz

    result = {}
    if args.resume and args.output.exists():
        result = json.loads(args.output.read_text())
        if result.get('options') != options_record(args):
            raise SystemExit(f'--resume: {args.output} was made with other options: {result.get("options")}')
    load_before = os.getloadavg()
    arrays, data_info = select_structures(pathlib.Path(args.data), args.count)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix='hpcai-load-'))
    try:
        checkpoint, n_members = checkpoint_file(args.target, args.members, scratch)
        arrays_file = scratch / 'structures.npz'
        write_npz(arrays, arrays_file)
        result.setdefault('benchmark', 'surrogate_load')
        result['options'] = options_record(args)
        result['structures'] = {
            **data_info,
            'count': len(arrays),
            'mean_atoms': float(arrays.natoms.mean()),
            'total_atoms': int(arrays.natoms.sum()),
        }
        result['model'] = {'pretrained_file': pretrained_path(args.target).name, 'n_members_used': n_members}
        phases = result.setdefault('phases', {})
        for phase in args.phases:
            if phase in phases:
                print(f'{phase}: kept from {args.output}', file=sys.stderr)
                continue
            print(f'{phase}: started {time.strftime("%H:%M:%S")}, load {os.getloadavg()}', file=sys.stderr, flush=True)
            started = utc_timestamp()
            if phase == 'bare':
                phases[phase] = bare_phase(arrays, checkpoint, args)
            else:
                phases[phase] = run_child(phase, arrays_file, checkpoint, scratch, argv)
            phases[phase] |= {'started': started, 'finished': utc_timestamp()}
            print(f'{phase}: {json.dumps(phases[phase])}', file=sys.stderr, flush=True)
            write(result, args, load_before, torch.__version__, complete=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write(result, args, load_before, torch.__version__, complete=all(p in result['phases'] for p in PHASES))
    print(json.dumps(result.get('summary', {}), indent=2))


def utc_timestamp() -> str:
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def run_child(phase: str, arrays_file, checkpoint, scratch: pathlib.Path, argv) -> dict:
    aiida_path = pathlib.Path(tempfile.mkdtemp(prefix=f'hpcai-load-{phase}-'))
    output = scratch / f'{phase}.json'
    command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
    command += ['--phase', phase, '--arrays', str(arrays_file), '--checkpoint', str(checkpoint)]
    command += ['--child-output', str(output)]
    try:
        subprocess.run(command, env={**os.environ, 'AIIDA_PATH': str(aiida_path)}, check=True)
        return json.loads(output.read_text())
    finally:
        shutil.rmtree(aiida_path, ignore_errors=True)


def write(result: dict, args, load_before, torch_version: str, complete: bool) -> None:
    phases = result['phases']
    summary = {}
    for phase in ('sqlite', 'postgresql'):
        if phase in phases:
            entry = {
                'workchain_wall_seconds': phases[phase]['workchain_wall_seconds'],
                'structures_per_second': phases[phase]['structures_per_second'],
                'structureset_store_seconds': phases[phase]['structureset_store_seconds'],
                'peak_rss_mib': {
                    role: values['peak_rss_mib_max'] for role, values in phases[phase]['memory']['by_role'].items()
                },
            }
            if 'bare' in phases:
                entry.update(compare(phases['bare'], phases[phase]))
            summary[phase] = entry
    if 'bare' in phases:
        summary['bare'] = {
            'program_wall_seconds': phases['bare']['program_wall_seconds'],
            'structures_per_second': phases['bare']['structures_per_second'],
            'peak_rss_mib': phases['bare']['memory']['by_role'].get('program', {}).get('peak_rss_mib_max'),
        }
    result['summary'] = summary
    result['complete'] = complete
    result['run'] = run_record(
        load_before=result.get('run', {}).get('machine', {}).get('load_average_before') or load_before,
        python=platform.python_version(),
        torch=torch_version,
        note='phases run one after the other; each phase records its own load average before and after',
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
