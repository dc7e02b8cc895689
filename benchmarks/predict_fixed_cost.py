"""The fixed cost of one ``aiida-hpcai predict`` call, step by step, as a new user meets it.

A fresh throw-away ``AIIDA_PATH``, ``verdi presto --use-zeromq`` and ``aiida-hpcai setup`` (the embedded
default: SQLite and the ZeroMQ broker; timed, not counted), then per repeat:

* ``aiida-hpcai predict FILE --json`` on 12 and on 1,500 structures of the mp_cgcnn test split
  (:func:`aiida_hpcai.models.evaluation.small_test_structures`: the 12 with at most 10 atoms, as the
  README's main job predicts; the first 1,500 of any size) written as extxyz, with the shipped
  formation-energy ensemble and every default. The command runs in a child process timed from its
  start to its exit. The child is this script (``_cli`` mode): it records the time at which Python is up,
  imports ``aiida_hpcai.cli`` and calls its ``cli`` exactly as the console script does, with the
  command's own steps (``load_models``, ``_load_code``, ``read_structure_files``, ``_run``,
  ``prediction_rows``) wrapped to record when they start and end. Inside ``_run`` the steps come from
  the provenance graph and the job's working directory: node creation times (``ctime``/``mtime``),
  ``scheduler_lastchecktime`` (the poll that saw the job done) and file modification times
  (``_scheduler-stdout.txt``: the job started; ``predictions.npz``/``summary.json``: the program
  finished; ``summary.json`` ``seconds``: the prediction itself, as the program times it).
* the bare program, ``hpcai-model predict`` on a copy of the CalcJob's own input folder, timed from
  start to exit: its ``seconds`` give the in-program rate, measured in the same run as the call.
* a probe of the program's start-up on the 12-structure inputs: Python up, ``import torch``, the
  model code (e3nn), the checkpoints read (architecture and hash), the prediction.

Each figure is the median of ``--repeats`` (3) runs; every run is kept with the load average before it.
``--phase before|after`` files the figures under that name in the JSON and keeps the other phase;
``--source-tree`` is a copy of a commit, put first on ``PYTHONPATH`` of every child (``aiida-hpcai
setup`` and the job included). Two phases measured at the same time, each into its own file, are put
into one with ``--merge``:

    git archive <before> | tar -x -C /tmp/before; git archive <after> | tar -x -C /tmp/after
    python benchmarks/predict_fixed_cost.py --phase before --source-tree /tmp/before --output /tmp/b.json &
    python benchmarks/predict_fixed_cost.py --phase after --source-tree /tmp/after --output /tmp/a.json
    python benchmarks/predict_fixed_cost.py --merge /tmp/b.json /tmp/a.json

Writes benchmarks/results/predict_fixed_cost.json (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

COUNTS = (12, 1500)
SMALL_MAX_ATOMS = 10
TARGET_SMALL_SECONDS = 8.0
TARGET_RATE_FRACTION = 0.7
# the command's own steps the `_cli` child times (functions of aiida_hpcai.cli.surrogate)
WRAPPED = ('load_models', '_load_code', 'read_structure_files', '_run', 'prediction_rows')
BARE_FROM = 100  # the bare program runs beside the calls of at least this many structures
PROGRAM_INPUTS = ('config.json', 'structures.npz', 'models')


# -- the child: the command, instrumented ------------------------------------------------------------
def instrumented_cli(marks_path: str, argv: list[str]) -> None:
    """Run ``aiida-hpcai <argv>`` in this process as the tree's console script does, writing the time of each
    step to ``marks_path``; then leave as that console script leaves (trees before 1d9ef84: a normal exit)."""
    marks = {'python_up': time.time()}
    package = None
    try:
        import aiida_hpcai.cli as package
        from aiida_hpcai.cli import cli

        marks['cli_imported'] = time.time()
        from aiida_hpcai.cli import surrogate as command

        for name in WRAPPED:
            setattr(command, name, _timed(getattr(command, name), name, marks))
        cli.main(argv, prog_name='aiida-hpcai', standalone_mode=False)
    finally:
        marks['command_returned'] = time.time()
        marks['cpu_seconds'] = cpu_seconds(resource.RUSAGE_SELF)
        # the commands the transport ran (submission, scheduler polls); not the job, which the scheduler detaches
        marks['commands_cpu_seconds'] = cpu_seconds(resource.RUSAGE_CHILDREN)
        pathlib.Path(marks_path).write_text(json.dumps(marks))
    if hasattr(package, 'exit_without_teardown'):
        package.exit_without_teardown(0)


def cpu_seconds(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _timed(function, name: str, marks: dict):
    def wrapper(*args, **kwargs):
        marks[f'{name}_start'] = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            marks[f'{name}_end'] = time.time()

    return wrapper


def program_probe(input_dir: str, output_dir: str, marks_path: str) -> None:
    """The program's start-up in its parts, on a CalcJob's input folder (what ``hpcai-model predict`` does)."""
    marks = {'python_up': time.time()}
    from aiida_hpcai.models import program

    marks['program_module'] = time.time()
    import torch  # noqa: F401

    marks['torch'] = time.time()
    # as main() does before an architecture's task (trees before that function had none)
    getattr(program, 'import_e3nn_without_compiler', lambda: None)()
    from aiida_hpcai.models import inference  # noqa: F401 - the model code: e3nn and Crysformer

    marks['model_code'] = time.time()
    config = json.loads((pathlib.Path(input_dir) / 'config.json').read_text())
    pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
    task = program.task_function('predict', config, pathlib.Path(input_dir))
    marks['checkpoints_read'] = time.time()
    task(config, pathlib.Path(input_dir), pathlib.Path(output_dir))
    marks['predicted'] = time.time()
    pathlib.Path(marks_path).write_text(json.dumps(marks))
    # leave as the tree's program leaves (trees before 1d9ef84: a normal exit)
    if hasattr(program, 'exit_without_teardown'):
        program.exit_without_teardown(0)


# -- the parent ----------------------------------------------------------------------------------------
def child_environment(aiida_path: pathlib.Path, source_tree: pathlib.Path | None) -> dict:
    env = {**os.environ, 'AIIDA_PATH': str(aiida_path)}
    if source_tree is not None:
        env['PYTHONPATH'] = os.pathsep.join([str(source_tree), *filter(None, [os.environ.get('PYTHONPATH')])])
    return env


def make_embedded_profile(env: dict, cwd: pathlib.Path) -> float:
    """``verdi presto --use-zeromq`` then ``aiida-hpcai setup`` in the ``AIIDA_PATH`` of ``env``; the seconds taken.

    The embedded default of a fresh machine (SQLite + ZeroMQ), even where RabbitMQ runs (presto would take it)."""
    started = time.perf_counter()
    for command in (['verdi', 'presto', '--use-zeromq'], ['aiida-hpcai', 'setup']):
        setup = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
        if setup.returncode != 0:
            raise SystemExit(f'{" ".join(command)} failed:\n{setup.stdout}\n{setup.stderr}')
    return time.perf_counter() - started


def workdir_profile(workdir: pathlib.Path) -> tuple[pathlib.Path, float | None]:
    """The ``AIIDA_PATH`` of the embedded profile in ``workdir/aiida``, made by :func:`make_embedded_profile` unless it
    exists (a resumed run keeps it), and the seconds that took (None when it existed)."""
    workdir = workdir.resolve()
    aiida_path = workdir / 'aiida'
    if (aiida_path / '.aiida' / 'config.json').exists():
        return aiida_path, None
    aiida_path.mkdir(parents=True, exist_ok=True)
    print(f'making an embedded profile in {aiida_path}', flush=True)
    return aiida_path, make_embedded_profile(child_environment(aiida_path, None), workdir)


def load_workdir_profile(workdir: pathlib.Path):
    """:func:`workdir_profile`, loaded in this process (``AIIDA_PATH`` set for it and its children): the profile, its
    ``AIIDA_PATH`` and the seconds its making took (None when it existed)."""
    aiida_path, setup_seconds = workdir_profile(workdir)
    os.environ['AIIDA_PATH'] = str(aiida_path)
    from aiida import load_profile
    from aiida.manage.configuration import reset_config, settings

    # aiida fixes its config folder when imported: a module imported before (the CLI's) would keep ~/.aiida
    settings.AiiDAConfigDir.set(aiida_path / '.aiida')
    reset_config()
    return load_profile(), aiida_path, setup_seconds


def package_location(env: dict) -> str:
    """Where the children import aiida_hpcai from (the source tree of the phase)."""
    code = 'import aiida_hpcai, pathlib; print(pathlib.Path(aiida_hpcai.__file__).parent.parent)'
    return subprocess.run(
        # not from here: `-c` puts the working directory (a checkout) before PYTHONPATH
        [sys.executable, '-c', code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.sep,
    ).stdout.strip()


def write_inputs(folder: pathlib.Path, counts) -> dict:
    from aiida_hpcai.models.datasets import write_extxyz
    from aiida_hpcai.models.evaluation import default_source, small_test_structures

    files = {}
    for count in counts:
        max_atoms = SMALL_MAX_ATOMS if count < 100 else 10**6
        arrays = small_test_structures(default_source(), count, max_atoms)
        if len(arrays) != count:
            raise SystemExit(f'only {len(arrays)} test structures (asked for {count})')
        path = folder / f'test_{count}.extxyz'
        write_extxyz(arrays, path)
        files[count] = {'path': path, 'mean_atoms': float(arrays.natoms.mean()), 'max_atoms_filter': max_atoms}
    return files


def run_command(file: pathlib.Path, env: dict, workdir: pathlib.Path) -> dict:
    """``aiida-hpcai predict FILE --json`` in a child; its marks, wall time and output."""
    marks_path = workdir / 'marks.json'
    load = os.getloadavg()
    started = time.time()
    process = subprocess.run(
        [sys.executable, __file__, '_cli', str(marks_path), 'predict', str(file), '--json'],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    ended = time.time()
    if process.returncode != 0:
        raise SystemExit(f'aiida-hpcai predict failed ({process.returncode}):\n{process.stderr[-3000:]}')
    marks = json.loads(marks_path.read_text())
    return {
        'load_average_before': list(load),
        'spawned': started,
        'exited': ended,
        'marks': marks,
        'process_pk': json.loads(process.stdout)['process_pk'],
    }


def provenance_times(workchain_pk: int) -> dict:
    """Times of the process's steps from its nodes and its job's working directory (epoch seconds)."""
    from aiida import orm

    workchain = orm.load_node(workchain_pk)
    # the job of the last (successful) try: hpcai.surrogate -> hpcai.predict_base -> hpcai.predict
    jobs = [node for node in workchain.called_descendants if isinstance(node, orm.CalcJobNode)]
    calcjob = max(jobs, key=lambda node: node.ctime)
    workdir = pathlib.Path(calcjob.outputs.remote_folder.get_remote_path())
    summary = json.loads((workdir / 'outputs' / 'summary.json').read_text())
    return {
        'workchain_created': workchain.ctime.timestamp(),
        'calcjob_created': calcjob.ctime.timestamp(),
        'uploaded': calcjob.outputs.remote_folder.ctime.timestamp(),
        'job_started': (workdir / '_scheduler-stdout.txt').stat().st_mtime,
        'predictions_written': (workdir / 'outputs' / 'predictions.npz').stat().st_mtime,
        'program_finished': (workdir / 'outputs' / 'summary.json').stat().st_mtime,
        'seen_done': calcjob.get_scheduler_lastchecktime().timestamp(),
        'retrieved': calcjob.outputs.retrieved.ctime.timestamp(),
        'calcjob_finished': calcjob.mtime.timestamp(),
        'workchain_finished': workchain.mtime.timestamp(),
        'in_program_seconds': summary['seconds'],
        'n_ok': summary['n_ok'],
        'n_members': summary['n_members'],
        'workdir': str(workdir),
        'calcjob_pk': calcjob.pk,
    }


def steps_of(run: dict, times: dict) -> dict:
    """Seconds per step, in order; they add up to the wall time of the call."""
    m = run['marks']
    in_program = times['in_program_seconds']
    program_start = times['predictions_written'] - in_program
    edges = [
        ('python_start', run['spawned'], m['python_up']),
        ('cli_import', m['python_up'], m['cli_imported']),
        ('profile_load_and_command_imports', m['cli_imported'], m['load_models_start']),
        ('model_node', m['load_models_start'], m['load_models_end']),
        ('code_load', m['_load_code_start'], m['_load_code_end']),
        ('structure_parsing', m['read_structure_files_start'], m['read_structure_files_end']),
        ('process_creation_and_input_storing', m['_run_start'], times['calcjob_created']),
        ('upload', times['calcjob_created'], times['uploaded']),
        ('submission_to_job_start', times['uploaded'], times['job_started']),
        ('program_startup', times['job_started'], program_start),
        ('in_program_prediction', program_start, times['predictions_written']),
        ('program_exit_and_poll_wait', times['predictions_written'], times['seen_done']),
        ('retrieve', times['seen_done'], times['retrieved']),
        ('parse_and_calcjob_finish', times['retrieved'], times['calcjob_finished']),
        ('classify_and_workchain_finish', times['calcjob_finished'], m['_run_end']),
        ('rows_and_output', m['_run_end'], m['command_returned']),
        ('python_exit', m['command_returned'], run['exited']),
    ]
    steps = {name: end - start for name, start, end in edges}
    accounted = sum(steps.values())
    steps['between_steps'] = (run['exited'] - run['spawned']) - accounted  # gaps between the wrapped steps
    return steps


def run_bare(workdir: pathlib.Path, env: dict, scratch: pathlib.Path) -> dict:
    """``hpcai-model predict`` on a copy of the CalcJob's input folder, timed from start to exit."""
    folder = scratch / 'bare'
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name in PROGRAM_INPUTS:
        source = workdir / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, folder / name)
    executable = shutil.which('hpcai-model') or str(pathlib.Path(sys.executable).parent / 'hpcai-model')
    load = os.getloadavg()
    cpu_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [executable, 'predict', '--input', '.', '--output', 'outputs'],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before
    summary = json.loads((folder / 'outputs' / 'summary.json').read_text())
    return {
        'load_average_before': list(load),
        'program_wall_seconds': wall,
        'program_cpu_seconds': cpu,
        'in_program_seconds': summary['seconds'],
        'n_structures': summary['n_structures'],
        'in_program_structures_per_second': summary['n_structures'] / summary['seconds'],
    }


def run_probe(workdir: pathlib.Path, env: dict, scratch: pathlib.Path) -> dict:
    folder = scratch / 'probe'
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name in PROGRAM_INPUTS:
        source = workdir / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, folder / name)
    marks_path = folder / 'marks.json'
    started = time.time()
    subprocess.run(
        [sys.executable, __file__, '_probe', str(folder), str(folder / 'outputs'), str(marks_path)],
        env=env,
        check=True,
        capture_output=True,
    )
    ended = time.time()
    m = json.loads(marks_path.read_text())
    summary = json.loads((folder / 'outputs' / 'summary.json').read_text())
    return {
        'python_start': m['python_up'] - started,
        'program_module': m['program_module'] - m['python_up'],
        'import_torch': m['torch'] - m['program_module'],
        'import_model_code_e3nn': m['model_code'] - m['torch'],
        'checkpoints_read': m['checkpoints_read'] - m['model_code'],
        'predict_task': m['predicted'] - m['checkpoints_read'],
        'of_which_in_program_seconds': summary['seconds'],
        'python_exit': ended - m['predicted'],
        'total': ended - started,
    }


def median_dict(rows: list[dict]) -> dict:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0] if isinstance(rows[0][key], float)}


def summarize(runs: dict) -> tuple[dict, dict]:
    """Medians per count and the targets met, from the runs ({count: [row, ...]}, also a partial runs.json)."""
    results = {}
    for count, rows in runs.items():
        count = int(count)
        if not rows:
            continue
        wall = statistics.median(row['wall_seconds'] for row in rows)
        result = {
            'wall_seconds_median': wall,
            'wall_seconds': [row['wall_seconds'] for row in rows],
            'command_cpu_seconds_median': statistics.median(row['command_cpu_seconds'] for row in rows),
            'end_to_end_structures_per_second': count / wall,
            'steps_median_seconds': median_dict([row['steps'] for row in rows]),
        }
        if 'bare' in rows[0]:
            rate = statistics.median(row['bare']['in_program_structures_per_second'] for row in rows)
            result.update(
                {
                    'in_program_structures_per_second_median': rate,
                    'end_to_end_over_in_program': (count / wall) / rate,
                    'bare_program_wall_seconds_median': statistics.median(
                        row['bare']['program_wall_seconds'] for row in rows
                    ),
                    'bare_program_cpu_seconds_median': statistics.median(
                        row['bare']['program_cpu_seconds'] for row in rows
                    ),
                }
            )
        if 'program_startup_probe' in rows[0]:
            result['program_startup_probe_median_seconds'] = median_dict([row['program_startup_probe'] for row in rows])
        result['runs'] = rows
        results[str(count)] = result
    targets = {}
    if str(min(COUNTS)) in results:
        targets[f'{min(COUNTS)}_structures_within_{TARGET_SMALL_SECONDS:g}_s'] = (
            results[str(min(COUNTS))]['wall_seconds_median'] <= TARGET_SMALL_SECONDS
        )
    if 'end_to_end_over_in_program' in results.get(str(max(COUNTS)), {}):
        targets[f'{max(COUNTS)}_structures_at_{TARGET_RATE_FRACTION:.0%}_of_in_program_rate'] = (
            results[str(max(COUNTS))]['end_to_end_over_in_program'] >= TARGET_RATE_FRACTION
        )
    return results, targets


def profile_settings(aiida_path: pathlib.Path) -> dict:
    """The profile's storage and broker and the ``localhost`` computer the calls ran on."""
    os.environ['AIIDA_PATH'] = str(aiida_path)
    from aiida import load_profile, orm

    profile = load_profile()
    computer = orm.load_computer('localhost')
    return {
        'storage': profile.storage_backend,
        'broker': profile.process_control_backend,
        'minimum_job_poll_interval': computer.get_minimum_job_poll_interval(),
        'transport': computer.get_configuration(),
        'scheduler': computer.scheduler_type,
        'transport_type': computer.transport_type,
    }


def measure_partial(args) -> dict:
    """The runs a measurement stopped before its end completed (its scratch folder's ``runs.json``), filed as
    :func:`measure` files them; the setup's time was not kept."""
    from aiida_hpcai.models.datasets import read_structure_files
    from aiida_hpcai.models.evaluation import run_record

    scratch = args.partial
    runs = {int(count): rows for count, rows in json.loads((scratch / 'runs.json').read_text()).items()}
    env = child_environment(scratch / 'aiida', args.source_tree)
    results, targets = summarize(runs)
    return {
        'source_tree': package_location(env),
        'source_commit': args.source_commit,
        'setup_seconds': None,
        'localhost': profile_settings(scratch / 'aiida'),
        'inputs_mean_atoms': {
            str(count): float(read_structure_files([scratch / f'test_{count}.extxyz']).arrays.natoms.mean())
            for count in runs
        },
        'results': results,
        'targets_met': targets,
        'counts_measured': sorted(runs),
        'repeats': {str(count): len(rows) for count, rows in runs.items()},
        'stopped_early': f'filed from {scratch}/runs.json with --partial: the runs completed when it was stopped',
        'run': run_record(aiida_path=str(scratch / 'aiida')),
    }


def measure(args) -> dict:
    from aiida_hpcai.models.evaluation import git_commit, run_record

    load_before = os.getloadavg()
    scratch = pathlib.Path(tempfile.mkdtemp(prefix='hpcai-fixed-cost-'))
    aiida_path = scratch / 'aiida'
    aiida_path.mkdir()
    env = child_environment(aiida_path, args.source_tree)
    source = package_location(env)
    counts = sorted(args.counts)
    files = write_inputs(scratch, counts)

    setup_seconds = make_embedded_profile(env, scratch)

    settings = profile_settings(aiida_path)

    runs = {count: [] for count in counts}
    for repeat in range(args.repeats):
        for count in counts:
            run = run_command(files[count]['path'], env, scratch)
            times = provenance_times(run['process_pk'])
            row = {
                'repeat': repeat,
                'load_average_before': run['load_average_before'],
                'wall_seconds': run['exited'] - run['spawned'],
                # the command's process (imports, storing, the runner) and the transport commands it ran
                'command_cpu_seconds': run['marks']['cpu_seconds'],
                'transport_commands_cpu_seconds': run['marks']['commands_cpu_seconds'],
                'steps': steps_of(run, times),
                'in_program_seconds_inside_call': times['in_program_seconds'],
                'n_ok': times['n_ok'],
                'process_pk': run['process_pk'],
            }
            if count >= BARE_FROM:  # the in-program rate, side by side
                row['bare'] = run_bare(pathlib.Path(times['workdir']), env, scratch)
            if count == counts[0]:
                row['program_startup_probe'] = run_probe(pathlib.Path(times['workdir']), env, scratch)
            runs[count].append(row)
            bare = row.get('bare')
            print(
                f'repeat {repeat} {count:5d} structures: call {row["wall_seconds"]:.2f} s'
                + (f', in-program {bare["in_program_seconds"]:.2f} s' if bare else '')
                + f' (load {run["load_average_before"][0]:.1f})',
                flush=True,
            )
            partial = scratch / 'runs.json'
            partial.write_text(json.dumps({str(key): value for key, value in runs.items()}, indent=1))

    results, targets = summarize(runs)
    return {
        'source_tree': source,
        'source_commit': args.source_commit or git_commit(),
        'setup_seconds': setup_seconds,
        'localhost': settings,
        'inputs_mean_atoms': {str(count): files[count]['mean_atoms'] for count in counts},
        'results': results,
        'targets_met': targets,
        'counts_measured': counts,
        'repeats': args.repeats,
        'run': run_record(load_before=load_before, aiida_path=str(aiida_path)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--phase', default='after', help='name the figures are filed under (before, after)')
    parser.add_argument('--source-tree', type=pathlib.Path, default=None, help='checkout the children import')
    parser.add_argument('--source-commit', default=None, help='the commit --source-tree holds (recorded)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--counts', type=int, nargs='+', default=list(COUNTS), help='structures per call (12 1500)')
    parser.add_argument('--output', type=pathlib.Path, default=None)
    parser.add_argument(
        '--partial',
        type=pathlib.Path,
        default=None,
        help='file the completed runs of a measurement stopped before its end (its scratch folder, hpcai-fixed-cost-*)',
    )
    parser.add_argument(
        '--merge', type=pathlib.Path, nargs='+', default=None, help='file the phases of these result files instead'
    )
    args = parser.parse_args()
    from aiida_hpcai.models.evaluation import RESULTS_DIR

    output = args.output or RESULTS_DIR / 'predict_fixed_cost.json'
    payload = json.loads(output.read_text()) if output.exists() else {}
    payload.update(
        {
            'benchmark': 'predict_fixed_cost',
            'what': 'aiida-hpcai predict FILE --json (shipped formation-energy ensemble, every default) on a fresh '
            'embedded profile (verdi presto --use-zeromq, then aiida-hpcai setup); steps in seconds, medians of the '
            'repeats',
            'structures': {
                'source': 'mp_cgcnn test split (committed split), small_test_structures',
                str(min(COUNTS)): f'first {min(COUNTS)} with <= {SMALL_MAX_ATOMS} atoms',
                str(max(COUNTS)): f'first {max(COUNTS)}, any size',
            },
            'targets': {
                f'{min(COUNTS)}_structures_seconds': TARGET_SMALL_SECONDS,
                f'{max(COUNTS)}_structures_fraction_of_in_program_rate': TARGET_RATE_FRACTION,
            },
        }
    )
    if args.merge:  # phases measured side by side into separate files (two runs at once)
        for path in args.merge:
            payload.setdefault('phases', {}).update(json.loads(path.read_text())['phases'])
    else:
        payload.setdefault('phases', {})[args.phase] = measure_partial(args) if args.partial else measure(args)
    output.write_text(json.dumps(payload, indent=2) + '\n')
    print(f'wrote {output}')


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '_cli':
        instrumented_cli(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 1 and sys.argv[1] == '_probe':
        program_probe(*sys.argv[2:5])
    else:
        main()
