"""Generation throughput of an EquiCSP checkpoint: crystals per hour, ab initio, at a thread count and steps.

The seed paper's EquiCSP campaign generated about 5,663 structures/hour on an NVIDIA A800 (its
sampler's 1000 steps, presumably). Here ``--samples`` ab initio crystals (atom counts N from the
training set's distribution, as the ``dataset`` strategy draws them; types sampled) are generated in
batches of ``--batch-size`` with ``--steps`` predictor-corrector steps on ``--threads`` CPU threads (or
``--device cuda``), after a one-step warm-up, ``--repeats`` times; the best time is used. Several batch
sizes (``--batch-size 16 32 64``) and precisions of the denoiser's products (``--precision float32 bfloat16``)
are measured one after the other in one run, on the same samples; the top-level figures are those of the
fastest. The figure is the sampler's alone (no validity check, no
screening: ``equicsp_abinitio.py`` measures those).

The cost of a step does not depend on the number of steps (a shorter chain is the same network on a
respaced schedule), so ``seconds_per_step`` is measured and ``structures_per_hour_at_1000_steps`` derived
from it (``derived``, not measured) for the comparison with the paper when ``--steps`` is smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np

from aiida_hpcai.models.contract import SAMPLING_PRECISIONS
from aiida_hpcai.models.evaluation import REPO, RESULTS_DIR, run_record

RESULTS_FILE = RESULTS_DIR / 'equicsp_throughput.json'
PUBLISHED = {'EquiCSP campaign (seed paper, NVIDIA A800)': {'generated_per_hour': 5663}}
REFERENCE_STEPS = 1000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=pathlib.Path, required=True, help='an EquiCSP model.pt (ab initio)')
    parser.add_argument('--samples', type=int, default=64, help='crystals generated per repeat')
    parser.add_argument('--batch-size', type=int, nargs='+', default=[64], help='one or more batch sizes')
    parser.add_argument('--steps', type=int, default=None, help="sampling steps (default: the model's, 1000)")
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', choices=SAMPLING_PRECISIONS, nargs='+', default=['float32'])
    parser.add_argument('--result', type=pathlib.Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f'no checkpoint file {args.checkpoint}')
    if min(args.samples, *args.batch_size, args.repeats) < 1:
        parser.error('--samples, --batch-size and --repeats must be at least 1')

    import torch

    from aiida_hpcai.models.checkpoint import load_checkpoint, sha256_file
    from aiida_hpcai.models.equicsp.generation import EquiCSPSampler, atom_counts

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.get('architecture') != 'equicsp' or 'abinitio' not in checkpoint.get('modes', ()):
        raise SystemExit(f'{args.checkpoint}: not an EquiCSP checkpoint trained for ab initio generation')
    samplers = {precision: EquiCSPSampler(checkpoint, args.device, precision) for precision in args.precision}
    sampler = samplers[args.precision[0]]
    steps = args.steps or sampler.config.timesteps
    counts = atom_counts(
        args.samples, 'dataset', sampler.num_atoms_counts, sampler.max_atoms, np.random.default_rng(args.seed)
    )

    def synchronize():
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()

    runs = []
    for batch_size in args.batch_size:  # the precisions of a batch size measured back to back
        for precision, sampler in samplers.items():
            sampler.sample(counts[:batch_size], None, 1, 1e-5, args.seed, batch_size)  # warm-up
            synchronize()
            seconds = []
            for repeat in range(args.repeats):
                started = time.perf_counter()
                sampler.sample(counts, None, steps, 1e-5, args.seed + repeat, batch_size)
                synchronize()
                seconds.append(time.perf_counter() - started)
            per_step = min(seconds) / steps
            runs.append(
                {
                    'precision': precision,
                    'batch_size': batch_size,
                    'seconds': seconds,
                    'structures_per_hour': 3600 * args.samples / min(seconds),
                    'seconds_per_step': per_step,
                    'structures_per_hour_at_1000_steps': {
                        'value': 3600 * args.samples / (per_step * REFERENCE_STEPS),
                        'derived': steps != REFERENCE_STEPS,
                    },
                }
            )
            print(
                f'{precision}, batch {batch_size}: {runs[-1]["structures_per_hour"]:.0f} structures/hour at {steps} steps',
                flush=True,
            )
    fastest = max(runs, key=lambda run: run['structures_per_hour'])
    path = args.checkpoint.resolve()
    result = {
        'benchmark': 'EquiCSP ab initio generation throughput (sampler only)',
        'model': {
            'file': str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name,
            'sha256': sha256_file(path),
            'config': sampler.config.to_dict(),
            'trained_on': (checkpoint.get('dataset') or {}).get('name'),
        },
        'samples': args.samples,
        'mean_atoms': float(np.mean(counts)),
        'n_strategy': 'dataset',
        'steps': steps,
        'threads': args.threads,
        'device': args.device,
        **fastest,
        'runs': runs,
        'published': PUBLISHED,
        'run': run_record(
            load_before=load_before,
            torch=torch.__version__,
            threads=args.threads,
            gpu=torch.cuda.get_device_name() if args.device.startswith('cuda') else None,
        ),
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2))
    shown = (
        'samples',
        'mean_atoms',
        'steps',
        'threads',
        'precision',
        'batch_size',
        'structures_per_hour',
        'structures_per_hour_at_1000_steps',
    )
    print(json.dumps({key: result[key] for key in shown}, indent=2))
    print(f'written to {args.result}')
    return result


if __name__ == '__main__':
    main()
