"""End-to-end prediction throughput of ``hpcai-model predict`` on 1,000 MP structures (<= 20 atoms).

What is timed is the program exactly as a CalcJob runs it: a fresh process reads config.json,
checks and loads the checkpoint(s), reads structures.npz, builds every neighbour graph, runs the
network and writes predictions.npz and summary.json. Two figures per case: ``wall`` (the whole
process, Python start-up and imports included) and ``in-program`` (summary.json's ``seconds``:
model loading, graphs and forward passes). Threads are limited to 2 (OMP/MKL and torch).

Cases, for each ``--checkpoint`` (default: the shipped formation-energy model): all its members
with ensemble uncertainty (when it has more than one), its first member with readout-only MC
dropout (10 samples on one pass of the blocks), that member alone with one sample (no uncertainty:
the cost of a single network) and, with ``--mc-dropout``, all members with full MC dropout (10
samples per member). The 1,000 structures are the first test-split ids with <= 20 atoms.
With ``--device cuda`` the program runs the network on the GPU; it still builds the graphs on
its CPU threads (``benchmarks/gpu_check.sh`` runs this on a lent GPU machine).

With ``--peer-python`` (the interpreter of the peers venv, see ``benchmarks/peers/README.md``), the same
structures are then predicted by CHGNet (pretrained, batch 16) and ALIGNN (``ALIGNNAtomWisePure``, batch 64;
the checkpoint of ``--alignn-checkpoint`` or fresh weights, which cost the same) in the same run, through
``benchmarks/peers/predict_peers.py``: their ``seconds`` cover model loading, structure parsing, graphs
and forward passes, like our in-program figure (ours reads the npz instead of parsing structures).

The machine's load average is recorded next to the numbers: on a shared machine the wall figures
are lower bounds of what an idle one gives, so the CPU time of the program is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from aiida_hpcai.models.contract import (
    CONFIG_FILE,
    MODELS_DIR,
    MODELS_KEY,
    PREDICTIONS_FILE,
    STRUCTURES_FILE,
    SUMMARY_FILE,
)
from aiida_hpcai.models.evaluation import (
    REPO,
    RESULTS_DIR,
    default_source,
    run_record,
    small_test_structures,
    thread_environment,
)

RESULTS_FILE = RESULTS_DIR / 'surrogate_throughput.json'


def run_case(name: str, arrays, checkpoints: list[pathlib.Path], options: dict, threads: int, repeats: int) -> dict:
    """Time ``hpcai-model predict`` on ``arrays``; ``options`` go into its config.json beside the models."""
    import shutil

    from aiida_hpcai.models.checkpoint import sha256_file
    from aiida_hpcai.models.structure_io import write_npz

    walls, inner, cpu = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            (tmp / 'in' / MODELS_DIR).mkdir(parents=True)
            entries = []
            for n, path in enumerate(checkpoints):
                shutil.copyfile(path, tmp / 'in' / MODELS_DIR / f'm{n}.pt')
                entries.append({'file': f'{MODELS_DIR}/m{n}.pt', 'sha256': sha256_file(path)})
            write_npz(arrays, tmp / 'in' / STRUCTURES_FILE)
            (tmp / 'in' / CONFIG_FILE).write_text(json.dumps({MODELS_KEY: entries, **options}))
            env = {**os.environ, **thread_environment(threads)}
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            # the console script's code path (``python -m`` would load program.py twice)
            subprocess.run(
                [
                    sys.executable,
                    '-c',
                    'import sys; from aiida_hpcai.models.program import main; sys.exit(main())',
                    'predict',
                    '--input',
                    str(tmp / 'in'),
                    '--output',
                    str(tmp / 'out'),
                ],
                check=True,
                env=env,
                cwd=REPO,
            )
            walls.append(time.perf_counter() - started)
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append((cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime))
            summary = json.loads((tmp / 'out' / SUMMARY_FILE).read_text())
            inner.append(summary['seconds'])
            with np.load(tmp / 'out' / PREDICTIONS_FILE) as result:
                n_ok = int((result['status'] == 'ok').sum())
    best_wall, best_inner = min(walls), min(inner)
    return {
        'case': name,
        'n_structures': len(arrays),
        'n_ok': n_ok,
        'options': options,
        'n_members': summary['n_members'],
        'uncertainty': summary['uncertainty'],
        'wall_seconds': walls,
        'in_program_seconds': inner,
        'cpu_seconds': cpu,
        'structures_per_second_wall': len(arrays) / best_wall,
        'structures_per_second_in_program': len(arrays) / best_inner,
        # what the process would reach with its threads to itself: n / (CPU seconds / threads);
        # derived, for machines shared with other work (the wall figures are the measured ones)
        'structures_per_second_cpu_bound_estimate': len(arrays) / (min(cpu) / threads),
    }


def run_peer(
    python: str, model: str, structures: pathlib.Path, threads: int, repeats: int, checkpoint: str | None
) -> dict:
    """One peer model's prediction of the same structures, in its own venv (see benchmarks/peers)."""
    command = [
        python,
        str(REPO / 'benchmarks' / 'peers' / 'predict_peers.py'),
        '--model',
        model,
        '--structures',
        str(structures),
        '--threads',
        str(threads),
        '--repeats',
        str(repeats),
    ]
    if checkpoint:
        command += ['--checkpoint', checkpoint]
    env = {**os.environ, **thread_environment(threads)}
    completed = subprocess.run(command, check=True, env=env, cwd=REPO, capture_output=True, text=True)
    return json.loads(completed.stdout)


def main(argv=None) -> None:
    import torch

    from aiida_hpcai.models.checkpoint import load_checkpoint, pretrained_path, save_checkpoint, sha256_file
    from aiida_hpcai.models.inference import default_batch_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=str(default_source()))
    parser.add_argument('--count', type=int, default=1000)
    parser.add_argument('--max-atoms', type=int, default=20)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--device', default='cpu', help='where the program runs the network (cpu, cuda)')
    parser.add_argument(
        '--batch-size', type=int, default=None, help="default: the program's (24 on a CPU, 64 on a GPU)"
    )
    parser.add_argument(
        '--checkpoint',
        type=pathlib.Path,
        action='append',
        help='a checkpoint to time (repeatable; default: the shipped formation-energy model)',
    )
    parser.add_argument('--mc-dropout', action='store_true', help='also time MC dropout (10 samples per member)')
    parser.add_argument('--peer-python', help='python of the peers venv: also time CHGNet and ALIGNN')
    parser.add_argument('--alignn-checkpoint', help='ALIGNN checkpoint folder written by train_alignn.py')
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)

    arrays = small_test_structures(args.data, args.count, args.max_atoms)
    checkpoints = args.checkpoint or [pretrained_path('formation_energy_per_atom')]
    options = {'device': args.device}
    if args.batch_size is not None:
        options['batch_size'] = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        load_before = os.getloadavg()
        cases, models = [], []
        for index, path in enumerate(checkpoints):
            checkpoint = load_checkpoint(path)
            models.append(
                {
                    'file': str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else path.name,
                    'sha256': sha256_file(path),
                    'n_members': len(checkpoint['members']),
                    'config': checkpoint['hyperparameters']['model'],
                }
            )
            single = pathlib.Path(tmp) / f'single{index}.pt'
            checkpoint['members'] = checkpoint['members'][:1]
            save_checkpoint(checkpoint, single)
            label = path.name
            if models[-1]['n_members'] > 1:
                cases.append(
                    run_case(
                        f'{label}: ensemble of {models[-1]["n_members"]}',
                        arrays,
                        [path],
                        {**options, 'uncertainty': 'ensemble'},
                        args.threads,
                        args.repeats,
                    )
                )
            cases.append(
                run_case(
                    f'{label}: one member, readout MC dropout x10',
                    arrays,
                    [single],
                    {**options, 'uncertainty': 'mc_dropout_readout', 'mc_samples': 10},
                    args.threads,
                    args.repeats,
                )
            )
            cases.append(
                run_case(
                    f'{label}: one member, one pass (no uncertainty)',
                    arrays,
                    [single],
                    {**options, 'uncertainty': 'mc_dropout', 'mc_samples': 1},
                    args.threads,
                    args.repeats,
                )
            )
            if args.mc_dropout:
                cases.append(
                    run_case(
                        f'{label}: all members, MC dropout x10',
                        arrays,
                        [path],
                        {**options, 'uncertainty': 'mc_dropout', 'mc_samples': 10},
                        args.threads,
                        1,
                    )
                )
        peers = {}
        if args.peer_python:
            structures = pathlib.Path(tmp) / 'structures.json'
            structures.write_text(json.dumps([arrays.to_pymatgen(i).as_dict() for i in range(len(arrays))]))
            for model in ('chgnet', 'alignn'):
                peers[model] = run_peer(
                    args.peer_python,
                    model,
                    structures,
                    args.threads,
                    args.repeats,
                    args.alignn_checkpoint if model == 'alignn' else None,
                )
        load_after = os.getloadavg()
    result = {
        'structures': {
            'source': f'mp_cgcnn test split, first ids with <= {args.max_atoms} atoms',
            'count': len(arrays),
            'mean_atoms': float(arrays.natoms.mean()),
        },
        'threads': args.threads,
        'device': args.device,
        'batch_size': args.batch_size or default_batch_size(args.device),
        'run': run_record(
            load_before=load_before,
            load_average_after=load_after,
            torch=torch.__version__,
            gpu=torch.cuda.get_device_name() if args.device.startswith('cuda') else None,
        ),
        'models': models,
        'cases': cases,
        'peers': peers,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
