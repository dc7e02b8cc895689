"""What AiiDA adds: the ``hpcai.surrogate`` WorkChain against the bare ``hpcai-model predict`` on the same input.

Both sides run the same executable (the ``hpcai-model`` program of the code ``hpcai-model@localhost``)
on the same structures, the same checkpoint and the same program options, with the same threads
(``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, default 2):

* bare: an input folder laid out as a CalcJob lays it out (``config.json``, ``models/``,
  ``structures.npz``), then ``hpcai-model predict --input . --output outputs`` as a subprocess;
  timed from start to exit (Python start-up and imports included: that is the model's cost).
* AiiDA: the structures stored as ONE StructureSet (timed apart), then the ``hpcai.surrogate``
  WorkChain run in this process with ``aiida.engine.run_get_node``; timed from the call to its
  return. That covers the WorkChain steps, the ``hpcai.predict`` CalcJob (upload with
  ``local_copy_list``, job submission through the ``core.direct`` scheduler, polling, retrieval,
  parsing) and the ``classify_predictions`` calcfunction. The job script records when the
  program starts and ends (``date`` in ``prepend_text``/``append_text``, a file retrieved with
  ``additional_retrieve_list``), so the AiiDA time splits into before / program / after.

Overhead = WorkChain wall - bare program wall, also given as a percentage of the bare program wall
(the model time). Because the two runs happen one after the other on a possibly shared machine,
the overhead inside the same run (WorkChain wall - the program's wall inside the job) is reported
too; it does not depend on the two program runs taking the same time. The target of issue 3 is an
overhead of at most 10% of the model time.
With ``--repeats`` the bare/AiiDA pairs alternate in order and the summary pools their times.

Profile: by default a throw-away one in a temporary ``AIIDA_PATH``, made the way ``aiida-hpcai setup``
makes it (``verdi presto``: SQLite storage; computer ``localhost``, code ``hpcai-model@localhost``);
``--profile NAME`` uses an existing profile instead (its ``--code``). Caching is disabled for the runs.
Not counted: Python/AiiDA start-up and loading the profile (a daemon worker or a user's script
pays them once), creating the profile, and storing the model as a ModelData (once per model);
they are recorded beside the figures.

Structures: the mp_cgcnn test split, then the validation split, then the training split in
order, until ``--count`` (default 10,000); optionally only those with at most ``--max-atoms``.

    python benchmarks/surrogate_overhead.py                        # 10,000 structures, the shipped model
    python benchmarks/surrogate_overhead.py --count 300 --members 1 --output /tmp/overhead.json

Writes benchmarks/results/surrogate_overhead.json (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from aiida_hpcai.models.contract import (
    CONFIG_FILE,
    MODEL_FILE,
    MODELS_DIR,
    OUTPUT_DIR,
    PREDICTIONS_FILE,
    STRUCTURES_FILE,
    SUMMARY_FILE,
)
from aiida_hpcai.models.evaluation import (
    RESULTS_DIR,
    default_source,
    get_split,
    load_filtered,
    run_record,
    thread_environment,
)
from aiida_hpcai.models.uncertainty import UNCERTAINTY_METHODS

RESULTS_FILE = RESULTS_DIR / 'surrogate_overhead.json'
TARGET_OVERHEAD_PERCENT = 10.0
SPLIT_ORDER = ('test', 'val', 'train')
PROGRAM_TIMES_FILENAME = 'program_wall_times.txt'


def select_structures(data: pathlib.Path, count: int, max_atoms: int | None):
    """The first ``count`` structures of test, then val, then train; returns (arrays, per-split counts)."""
    arrays, info = load_filtered(data)
    split = get_split(arrays)
    chosen, taken = [], {}
    for name in SPLIT_ORDER:
        candidates = [int(i) for i in split[name] if max_atoms is None or arrays.natoms[i] <= max_atoms]
        picked = candidates[: count - len(chosen)]
        chosen.extend(picked)
        taken[name] = len(picked)
    if len(chosen) < count:
        raise SystemExit(f'only {len(chosen)} structures match (asked for {count})')
    return arrays.subset(chosen), taken, info


def checkpoint_file(target: str, members: int | None, folder: pathlib.Path) -> tuple[pathlib.Path, int]:
    """The shipped pretrained model, or a copy holding only its first ``members`` members."""
    from aiida_hpcai.models.checkpoint import load_checkpoint, pretrained_path, save_checkpoint

    path = pretrained_path(target)
    checkpoint = load_checkpoint(path)
    available = len(checkpoint['members'])
    if members is None or members == available:
        return path, available
    if not 1 <= members <= available:
        raise SystemExit(f'--members must be between 1 and {available}')
    checkpoint['members'] = checkpoint['members'][:members]
    truncated = folder / f'{path.stem}_first{members}.pt'
    save_checkpoint(checkpoint, truncated)
    return truncated, members


def program_config(model_entries: list[dict], args) -> dict:
    """What ``PredictCalculation.build_config`` writes for these parameters (plus the device)."""
    return {
        'models': model_entries,
        'batch_size': args.batch_size,
        'uncertainty': args.uncertainty,
        'mc_samples': args.mc_samples,
        'device': 'cpu',
    }


def children_cpu_seconds() -> float:
    """CPU used so far by this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- bare ---------------------------------------------------------------------------------------
def run_bare(executable: str, arrays, checkpoint: pathlib.Path, args) -> dict:
    from aiida_hpcai.models.checkpoint import sha256_file
    from aiida_hpcai.models.structure_io import write_npz

    with tempfile.TemporaryDirectory(prefix='hpcai-bare-') as tmp:
        workdir = pathlib.Path(tmp)
        started = time.perf_counter()
        (workdir / MODELS_DIR).mkdir()
        shutil.copyfile(checkpoint, workdir / MODELS_DIR / MODEL_FILE)
        write_npz(arrays, workdir / STRUCTURES_FILE)
        config = program_config([{'file': f'{MODELS_DIR}/{MODEL_FILE}', 'sha256': sha256_file(checkpoint)}], args)
        (workdir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        inputs_seconds = time.perf_counter() - started

        env = {**os.environ, **thread_environment(args.threads)}
        cpu_before = children_cpu_seconds()
        started = time.perf_counter()
        with open(workdir / 'hpcai-model.out', 'w') as stdout, open(workdir / 'hpcai-model.err', 'w') as stderr:
            process = subprocess.run(
                [executable, 'predict', '--input', '.', '--output', OUTPUT_DIR],
                cwd=workdir,
                env=env,
                stdout=stdout,
                stderr=stderr,
                preexec_fn=_pin(args.program_cores),
            )
        wall = time.perf_counter() - started
        cpu = children_cpu_seconds() - cpu_before
        if process.returncode != 0:
            raise SystemExit(
                f'bare hpcai-model failed ({process.returncode}):\n{(workdir / "hpcai-model.err").read_text()[-3000:]}'
            )
        summary = json.loads((workdir / OUTPUT_DIR / SUMMARY_FILE).read_text())
        with np.load(workdir / OUTPUT_DIR / PREDICTIONS_FILE) as result:
            predictions = {name: result[name] for name in ('mean', 'status')}
    return {
        'inputs_seconds': inputs_seconds,
        'program_wall_seconds': wall,
        'program_cpu_seconds': cpu,
        'in_program_seconds': summary['seconds'],
        'n_ok': summary['n_ok'],
        'n_members': summary['n_members'],
        'uncertainty': summary['uncertainty'],
        '_predictions': predictions,
    }


def _pin(cores: list[int] | None):
    """A ``preexec_fn`` that restricts the child to ``cores`` (None: leaves it as it is)."""
    if not cores:
        return None
    return lambda: os.sched_setaffinity(0, cores)


# -- AiiDA --------------------------------------------------------------------------------------
def make_profile() -> dict:
    """A throw-away profile as ``aiida-hpcai setup`` makes it; ``AIIDA_PATH`` is already ``workdir``."""
    from aiida_hpcai.provisioning import MODEL_CODE_LABEL, SetupReport, ensure_code, ensure_localhost, ensure_profile

    report = SetupReport()
    profile, new_profile = ensure_profile('hpcai-overhead', report)
    computer = ensure_localhost(report, new_profile)
    executable = shutil.which('hpcai-model') or str(pathlib.Path(sys.executable).parent / 'hpcai-model')
    ensure_code(MODEL_CODE_LABEL, executable, computer, report)
    return {'name': profile.name, 'created': new_profile}


def model_node(path: pathlib.Path):
    """The checkpoint as a ModelData (found by sha256 if already stored), as ``aiida-hpcai predict`` does."""
    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.models.checkpoint import load_checkpoint

    content = load_checkpoint(path)
    node, _ = ModelData.get_or_create(
        path,
        architecture=content['architecture'],
        hyperparameters=content['hyperparameters'],
        target=content['target'],
        units=content['units'],
        metrics=content.get('metrics', {}),
    )
    return node


def timed_job_options(threads: int, program_cores: list[int] | None = None) -> dict:
    """``metadata.options`` of the predict job that record when the program starts and ends and its CPU time."""
    return {
        'environment_variables': thread_environment(threads),
        # wall clock of the program inside the job, to split the AiiDA time (two `date` calls), and
        # the CPU time of the job script's children (bash `times`), to compare with the bare run's
        'prepend_text': (f'taskset -cp {",".join(map(str, program_cores))} $$ > /dev/null\n' if program_cores else '')
        + 'hpcai_program_start=$(date +%s.%N)',
        'append_text': f'echo "$hpcai_program_start $(date +%s.%N)" > {PROGRAM_TIMES_FILENAME}; '
        f'times >> {PROGRAM_TIMES_FILENAME}',
        'additional_retrieve_list': [PROGRAM_TIMES_FILENAME],
    }


def program_times(calculation) -> tuple[float, float, float]:
    """(start epoch, end epoch, CPU seconds) of the program inside a job run with :func:`timed_job_options`."""
    times = calculation.outputs.retrieved.base.repository.get_object_content(PROGRAM_TIMES_FILENAME).splitlines()
    program_start, program_end = map(float, times[0].split())
    # `times`: the shell's user/system time, then its children's (the program): e.g. '1m30.200s 0m2.100s'
    program_cpu = sum(
        int(minutes) * 60 + float(seconds) for minutes, seconds in re.findall(r'(\d+)m([\d.]+)s', times[2])
    )
    return program_start, program_end, program_cpu


def surrogate_inputs(structures, model, code, args, options: dict) -> dict:
    """The ``hpcai.surrogate`` inputs of a measured run: the program options of ``args``, the job ``options``."""
    from aiida import orm

    parameters = {'batch_size': args.batch_size, 'uncertainty': args.uncertainty, 'mc_samples': args.mc_samples}
    return {
        'structures': structures,
        'models': {'model': model},
        'predict': {
            'code': code,
            'device': orm.Str('cpu'),
            'parameters': orm.Dict(parameters),
            'metadata': {'options': options},
        },
    }


def run_aiida(code, model, arrays, args) -> dict:
    from aiida import orm
    from aiida.engine import run_get_node
    from aiida.manage.caching import disable_caching

    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.workchains.surrogate import SurrogateWorkChain

    started = time.perf_counter()
    structures = StructureSet(arrays).store()
    store_seconds = time.perf_counter() - started

    inputs = surrogate_inputs(structures, model, code, args, timed_job_options(args.threads, args.program_cores))
    if args.sigma_threshold is not None:
        inputs['sigma_threshold'] = orm.Float(args.sigma_threshold)

    with disable_caching():
        started_epoch = time.time()
        started = time.perf_counter()
        runner_cpu_before = time.process_time()
        commands_cpu_before = children_cpu_seconds()
        _, node = run_get_node(SurrogateWorkChain, **inputs)
        runner_cpu = time.process_time() - runner_cpu_before
        commands_cpu = children_cpu_seconds() - commands_cpu_before
        wall = time.perf_counter() - started
        finished_epoch = time.time()
    if not node.is_finished_ok:
        raise SystemExit(f'SurrogateWorkChain<{node.pk}> failed: {node.exit_status} {node.exit_message}')
    calculation = node.base.links.get_outgoing(link_label_filter='predict').one().node
    summary = calculation.outputs.summary.get_dict()
    program_start, program_end, program_cpu = program_times(calculation)
    predictions = node.outputs.classified_predictions
    return {
        'structureset_store_seconds': store_seconds,
        'workchain_wall_seconds': wall,
        'program_wall_seconds': program_end - program_start,
        'program_cpu_seconds': program_cpu,
        # CPU used by this process (the runner: WorkChain steps, upload, polling, parsing) meanwhile
        'runner_cpu_seconds': runner_cpu,
        # CPU of the shell commands the runner ran through the transport (submission, scheduler polls);
        # not the job's: the direct scheduler detaches it, so it is never this process's waited-for child
        'runner_commands_cpu_seconds': commands_cpu,
        'in_program_seconds': summary['seconds'],
        'before_program_seconds': program_start - started_epoch,
        'after_program_seconds': finished_epoch - program_end,
        'n_ok': summary['n_ok'],
        'n_members': summary.get('n_members'),
        'uncertainty': summary.get('uncertainty'),
        'workchain_pk': node.pk,
        'calcjob_pk': calculation.pk,
        '_predictions': {'mean': predictions.get_array('mean'), 'status': predictions.get_array('status')},
    }


def transport_command_cost(repeats: int = 20) -> dict:
    """CPU and wall of one command through the local transport, with and without a login shell.

    A scheduler poll of ``core.direct`` is one such command (``ps``); side by side here, because
    what a login shell costs depends on the user's shell start-up files.
    """
    from aiida.transports.plugins.local import LocalTransport

    cost = {}
    for login_shell in (True, False):
        with LocalTransport(use_login_shell=login_shell) as transport:
            cpu_before, started = children_cpu_seconds(), time.perf_counter()
            for _ in range(repeats):
                transport.exec_command_wait('ps -o pid,stat,user,time -p 1')
            cost['login_shell' if login_shell else 'no_login_shell'] = {
                'cpu_seconds': (children_cpu_seconds() - cpu_before) / repeats,
                'wall_seconds': (time.perf_counter() - started) / repeats,
            }
    cost['command'] = f'ps -o pid,stat,user,time -p 1 ({repeats} times each)'
    return cost


# -- report -------------------------------------------------------------------------------------
def overheads(bare: dict, aiida: dict) -> dict:
    """Overhead of one bare/AiiDA pair, in seconds and as a percentage of the model time."""
    model_time = bare['program_wall_seconds']
    between_runs = aiida['workchain_wall_seconds'] - model_time
    within_run = aiida['workchain_wall_seconds'] - aiida['program_wall_seconds']
    end_to_end = (
        aiida['structureset_store_seconds'] + aiida['workchain_wall_seconds'] - bare['inputs_seconds'] - model_time
    )
    return {
        'model_time_seconds': model_time,
        'overhead_seconds': between_runs,
        'overhead_percent': 100 * between_runs / model_time,
        'overhead_within_run_seconds': within_run,
        'overhead_within_run_percent': 100 * within_run / aiida['program_wall_seconds'],
        # also counting how the structures reach the program: StructureSet storage vs writing the npz
        'overhead_with_inputs_seconds': end_to_end,
        'overhead_with_inputs_percent': 100 * end_to_end / model_time,
    }


def summarize(runs: list[dict]) -> dict:
    """Overheads pooled over all pairs (sums of times: alternating order cancels a steady drift in load)."""

    def total(side, key):
        return sum(run[side][key] for run in runs)

    model_time = total('bare', 'program_wall_seconds')
    workchain = total('aiida', 'workchain_wall_seconds')
    program_in_aiida = total('aiida', 'program_wall_seconds')
    # also counting how the structures reach the program: StructureSet storage vs writing the npz
    with_inputs = (
        total('aiida', 'structureset_store_seconds') + workchain - total('bare', 'inputs_seconds') - model_time
    )
    pairs = len(runs)
    summary = {
        'pairs': pairs,
        'model_time_seconds': model_time / pairs,
        'workchain_wall_seconds': workchain / pairs,
        'overhead_seconds': (workchain - model_time) / pairs,
        'overhead_percent': 100 * (workchain - model_time) / model_time,
        'overhead_percent_per_pair': [run['overhead_percent'] for run in runs],
        'overhead_within_run_seconds': (workchain - program_in_aiida) / pairs,
        'overhead_within_run_percent': 100 * (workchain - program_in_aiida) / program_in_aiida,
        'overhead_with_inputs_seconds': with_inputs / pairs,
        'overhead_with_inputs_percent': 100 * with_inputs / model_time,
        # same CPU but more wall inside the job means the program waited for the cores (runner or machine)
        'program_cpu_seconds_bare': total('bare', 'program_cpu_seconds') / pairs,
        'program_cpu_seconds_in_job': total('aiida', 'program_cpu_seconds') / pairs,
        'program_wall_seconds_in_job': program_in_aiida / pairs,
        'runner_cpu_seconds': total('aiida', 'runner_cpu_seconds') / pairs,
        'runner_commands_cpu_seconds': total('aiida', 'runner_commands_cpu_seconds') / pairs,
        'target_overhead_percent': TARGET_OVERHEAD_PERCENT,
    }
    for suffix in ('', '_within_run', '_with_inputs'):
        summary[f'target_met{suffix}'] = bool(summary[f'overhead{suffix}_percent'] <= TARGET_OVERHEAD_PERCENT)
    return summary


def agreement(bare: dict, aiida: dict, method: str) -> dict:
    same_status = bool(
        np.array_equal(bare['_predictions']['status'].astype(str), aiida['_predictions']['status'].astype(str))
    )
    both = np.isfinite(bare['_predictions']['mean']) & np.isfinite(aiida['_predictions']['mean'])
    difference = np.abs(bare['_predictions']['mean'][both] - aiida['_predictions']['mean'][both])
    return {
        'same_status': same_status,
        'max_abs_mean_difference': float(difference.max()) if difference.size else None,
        'note': 'MC dropout samples at random: means differ between runs'
        if method == 'mc_dropout'
        else 'deterministic ensemble: means should agree to float precision',
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=str(default_source()), help='mp_cgcnn.csv.gz or an exported npz')
    parser.add_argument('--count', type=int, default=10000)
    parser.add_argument('--max-atoms', type=int, default=None, help='only structures with at most this many atoms')
    parser.add_argument(
        '--target',
        default='formation_energy_per_atom',
        choices=('formation_energy_per_atom', 'band_gap'),
        help='which pretrained model',
    )
    parser.add_argument(
        '--members', type=int, default=None, help='use only the first N members of the pretrained model (default: all)'
    )
    parser.add_argument(
        '--uncertainty',
        default='ensemble',
        choices=UNCERTAINTY_METHODS,
        help='program option (one member falls back to mc_dropout)',
    )
    parser.add_argument('--mc-samples', type=int, default=10, help='program option')
    parser.add_argument('--batch-size', type=int, default=64, help='program option')
    parser.add_argument(
        '--sigma-threshold', type=float, default=None, help='WorkChain input (default: per target; band_gap needs one)'
    )
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=1, help='bare/AiiDA pairs (order alternates)')
    parser.add_argument(
        '--job-poll-interval',
        type=float,
        default=None,
        help='seconds between scheduler polls of the computer (default: as aiida-hpcai setup leaves it)',
    )
    parser.add_argument(
        '--login-shell',
        choices=('yes', 'no'),
        default=None,
        help='run the transport commands in a login shell (default: as aiida-hpcai setup leaves it)',
    )
    parser.add_argument(
        '--program-cores',
        type=int,
        nargs='+',
        default=None,
        help='run the program (bare and in the job) on these CPU cores only and this process '
        '(the AiiDA runner) on the others: the daemon off the compute cores',
    )
    parser.add_argument('--profile', default=None, help='use this existing profile instead of a throw-away one')
    parser.add_argument('--code', default='hpcai-model@localhost', help='with --profile: the model program code')
    parser.add_argument('--keep', action='store_true', help='keep the throw-away AIIDA_PATH (printed)')
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    if args.target == 'band_gap' and args.sigma_threshold is None:
        parser.error('band_gap has no default sigma threshold: give --sigma-threshold')
    if args.program_cores:
        runner_cores = os.sched_getaffinity(0) - set(args.program_cores)
        if not runner_cores or not set(args.program_cores) <= os.sched_getaffinity(0):
            parser.error(f'--program-cores must be a proper subset of the cores {sorted(os.sched_getaffinity(0))}')
        os.sched_setaffinity(0, runner_cores)

    workdir = None
    if args.profile is None:
        # before aiida reads its configuration: a private config folder, storage and scratch
        workdir = pathlib.Path(tempfile.mkdtemp(prefix='hpcai-overhead-'))
        os.environ['AIIDA_PATH'] = str(workdir)
    try:
        result = benchmark(args)
    finally:
        if workdir is not None:
            if args.keep:
                print(f'throw-away profile kept in AIIDA_PATH={workdir}')
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def benchmark(args) -> dict:
    import torch

    from aiida_hpcai.models.checkpoint import pretrained_path
    from aiida_hpcai.provisioning import uses_login_shell

    arrays, taken, data_info = select_structures(pathlib.Path(args.data), args.count, args.max_atoms)
    checkpoint_dir = pathlib.Path(tempfile.mkdtemp(prefix='hpcai-overhead-model-'))
    try:
        checkpoint, n_members = checkpoint_file(args.target, args.members, checkpoint_dir)

        started = time.perf_counter()
        import aiida
        from aiida import load_profile, orm

        if args.profile is None:
            profile_info = make_profile()
        else:
            load_profile(args.profile)
            profile_info = {'name': args.profile, 'created': False}
        profile = aiida.get_profile()
        code = orm.load_code(args.code)
        setup_seconds = time.perf_counter() - started
        computer = code.computer
        if args.job_poll_interval is not None:
            computer.set_minimum_job_poll_interval(args.job_poll_interval)
        if args.login_shell is not None:
            computer.configure(**{**computer.get_configuration(), 'use_login_shell': args.login_shell == 'yes'})
        command_cost = transport_command_cost()
        executable = str(code.filepath_executable)

        started = time.perf_counter()
        model = model_node(checkpoint)
        model_seconds = time.perf_counter() - started

        load_before = os.getloadavg()
        runs = []
        for repeat in range(args.repeats):
            # alternate the order so that a drift in the machine's load does not favour one side
            if repeat % 2 == 0:
                bare = run_bare(executable, arrays, checkpoint, args)
                aiida_run = run_aiida(code, model, arrays, args)
            else:
                aiida_run = run_aiida(code, model, arrays, args)
                bare = run_bare(executable, arrays, checkpoint, args)
            method = bare['uncertainty']
            runs.append(
                {
                    'order': 'bare first' if repeat % 2 == 0 else 'aiida first',
                    'load_average_after': os.getloadavg(),
                    'bare': {k: v for k, v in bare.items() if not k.startswith('_')},
                    'aiida': {k: v for k, v in aiida_run.items() if not k.startswith('_')},
                    'predictions_agree': agreement(bare, aiida_run, method),
                    **overheads(bare, aiida_run),
                }
            )
            print(
                f'repeat {repeat}: bare {bare["program_wall_seconds"]:.1f} s ({bare["program_cpu_seconds"]:.1f} CPU s), '
                f'WorkChain {aiida_run["workchain_wall_seconds"]:.1f} s (program {aiida_run["program_wall_seconds"]:.1f} s, '
                f'{aiida_run["program_cpu_seconds"]:.1f} CPU s; runner {aiida_run["runner_cpu_seconds"]:.1f} CPU s, '
                f'its commands {aiida_run["runner_commands_cpu_seconds"]:.1f} CPU s), '
                f'overhead {runs[-1]["overhead_seconds"]:.2f} s ({runs[-1]["overhead_percent"]:.1f}%)',
                file=sys.stderr,
            )
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)

    return {
        'benchmark': 'surrogate_overhead',
        'structures': {
            'source': data_info['source'],
            'count': len(arrays),
            'from_splits': taken,
            'split_order': list(SPLIT_ORDER),
            'max_atoms': args.max_atoms,
            'mean_atoms': float(arrays.natoms.mean()),
            'total_atoms': int(arrays.natoms.sum()),
        },
        'model': {
            'target': args.target,
            'pretrained_file': pretrained_path(args.target).name,
            'n_members_used': n_members,
            'sha256': model.sha256,
        },
        'program_options': {
            'batch_size': args.batch_size,
            'uncertainty': args.uncertainty,
            'uncertainty_used': runs[0]['bare']['uncertainty'],
            'mc_samples': args.mc_samples,
            'device': 'cpu',
            'threads': args.threads,
            'program_cores': args.program_cores,
            'runner_cores': sorted(os.sched_getaffinity(0)) if args.program_cores else None,
        },
        'aiida': {
            'version': aiida.__version__,
            'profile': profile_info['name'],
            'throw_away_profile': profile_info['created'],
            'storage_backend': profile.storage_backend,
            'broker': profile.process_control_backend,
            'runner_poll_interval_s': profile.get_option('runner.poll.interval'),
            'computer': computer.label,
            'scheduler': computer.scheduler_type,
            'transport': computer.transport_type,
            'minimum_job_poll_interval_s': computer.get_minimum_job_poll_interval(),
            'use_login_shell': uses_login_shell(computer),
            'transport_command_cost': command_cost,
            'code': code.full_label,
            'executable': executable,
            'caching': 'disabled',
            'how_run': 'run_get_node in this process',
        },
        'not_counted': {
            'profile_setup_seconds': setup_seconds,
            'model_node_seconds': model_seconds,
            'note': 'Python/AiiDA start-up, profile creation or loading, storing the ModelData',
        },
        'run': run_record(
            load_before=load_before,
            load_average_after=load_after,
            python=platform.python_version(),
            torch=torch.__version__,
        ),
        'runs': runs,
        'summary': summarize(runs),
    }


if __name__ == '__main__':
    main()
