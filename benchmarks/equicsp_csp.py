"""Crystal structure prediction (CSP) with an EquiCSP checkpoint: match rate and RMSE on a CSP test split.

The protocol of CDVAE, DiffCSP, EquiCSP and FlowMM: for every structure of the test split (``--dataset``
perov_5, carbon_24 or mp20, as :func:`aiida_hpcai.models.evaluation.csp_dataset` defines them) one
sample is drawn with that structure's composition (its atoms, in its order) given; the sample is
compared with the test structure by pymatgen's ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``.
Match rate: matched / test structures, a sample that is no crystal (``check_crystal``: NaN, no
positive volume, two atoms closer than 0.5 A) or holds an element the model does not know counting as
a miss. RMSE: the mean of ``get_rms_dist()[0]`` over the matches (see
:mod:`aiida_hpcai.models.equicsp.metrics`).

Two figures are written: ``ours`` (the miss rules above) and ``diffcsp_protocol``, where, as in
DiffCSP's ``RecEval``, a pair also misses when the composition fails SMACT's charge-neutrality test
(SMACT's original ``smact14`` oxidation states, through the screening filter ``charge_neutral``) or
the test structure itself is no crystal by the same check. DiffCSP also drops pairs whose CrystalNN
fingerprint fails (matminer); that test is not made here.

``--limit N`` measures a seeded random subset of N test structures (``--subset-seed``, recorded);
the published figures are on the whole split. The match rate's 95% Wilson interval is recorded, so a
subset's figure can be read against them. Sampling time (samples/s, structures/hour at ``--threads``
and ``--steps``) and the wall time are recorded too; the published figures use the model's full
1000 steps on a GPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pathlib
import time

import numpy as np

from aiida_hpcai.models.contract import SAMPLING_PRECISIONS
from aiida_hpcai.models.evaluation import CSP_DATASETS, REPO, RESULTS_DIR, csp_dataset, run_record

#: Match rate (%) / RMSE as published, per dataset (None: not reported). CDVAE and DiffCSP: Jiao et al.,
#: NeurIPS 2023 (DiffCSP), Table 1; EquiCSP: Lin et al., ICML 2024; FlowMM: Miller et al., ICML 2024.
PUBLISHED = {
    'perov_5': {
        'CDVAE': {'match_rate_percent': 45.31, 'rmse': 0.1138},
        'DiffCSP': {'match_rate_percent': 52.02, 'rmse': 0.0760},
        'EquiCSP': {'match_rate_percent': 52.02, 'rmse': 0.0707},
        'FlowMM': {'match_rate_percent': 53.15, 'rmse': 0.0992},
    },
    'carbon_24': {
        'CDVAE': {'match_rate_percent': 17.09, 'rmse': 0.2969},
        'DiffCSP': {'match_rate_percent': 17.54, 'rmse': 0.2759},
        'EquiCSP': None,
        'FlowMM': {'match_rate_percent': 23.47, 'rmse': 0.4122},
    },
    'mp20': {
        'CDVAE': {'match_rate_percent': 33.90, 'rmse': 0.1045},
        'DiffCSP': {'match_rate_percent': 51.49, 'rmse': 0.0631},
        'EquiCSP': {'match_rate_percent': 57.59, 'rmse': 0.0510},
        'FlowMM': {'match_rate_percent': 61.39, 'rmse': 0.0566},
    },
}
PUBLISHED_NOTE = (
    'one sample per test structure, StructureMatcher stol=0.5 angle_tol=10 ltol=0.3, whole test split, 1000 '
    'sampling steps on a GPU; MP-20 is the full MP-20 set, ours the <= 20-atom part of the mp_cgcnn test split'
)
DIFFCSP_OXIDATION_STATES = 'smact14'


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of a binomial proportion (None for n = 0)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def chosen_test_positions(test: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """The whole test split, or a seeded random subset of ``limit`` of it (in split order)."""
    if limit is None or limit >= len(test):
        return np.asarray(test)
    rng = np.random.default_rng(seed)
    return np.asarray(test)[np.sort(rng.choice(len(test), size=limit, replace=False))]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=pathlib.Path, required=True, help='an EquiCSP model.pt (CSP mode)')
    parser.add_argument('--dataset', choices=CSP_DATASETS, required=True)
    parser.add_argument('--data-dir', default=None, help='the shared data folder (default: $HPCAI_DATA_DIR)')
    parser.add_argument('--limit', type=int, default=None, help='a seeded random subset of N test structures')
    parser.add_argument('--subset-seed', type=int, default=0, help='seed of the --limit subset')
    parser.add_argument(
        '--steps',
        type=int,
        nargs='+',
        default=None,
        help="sampling steps (default: the model's, 1000); several are measured one after the other (by_sampling)",
    )
    parser.add_argument('--step-lr', type=float, default=1e-5, help='Langevin corrector step (DiffCSP: 1e-5 MP-20)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0, help='sampling seed (batch k uses seed + k)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--precision',
        choices=SAMPLING_PRECISIONS,
        nargs='+',
        default=['float32'],
        help="of the denoiser's products while sampling; several are measured one after the other on the same "
        'structures and seeds (under by_sampling, one entry per steps and precision), the top-level figures being '
        'those of the first',
    )
    parser.add_argument('--result', type=pathlib.Path, default=None, help='default: results/equicsp_csp_<dataset>.json')
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f'no checkpoint file {args.checkpoint}')
    if args.limit is not None and args.limit < 1:
        parser.error('--limit must be at least 1')
    if args.steps is not None and min(args.steps) < 1:
        parser.error('--steps must be at least 1')

    import torch

    from aiida_hpcai.models.checkpoint import load_checkpoint, sha256_file
    from aiida_hpcai.models.equicsp.generation import EquiCSPSampler, check_crystal
    from aiida_hpcai.models.equicsp.metrics import MATCHER_SETTINGS, match_rate_and_rmse, sample_like, summarize
    from aiida_hpcai.screening.filters import ScreeningParameters, charge_neutral

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.get('architecture') != 'equicsp' or 'csp' not in checkpoint.get('modes', ()):
        raise SystemExit(f'{args.checkpoint}: not an EquiCSP checkpoint trained for CSP')
    samplers = {precision: EquiCSPSampler(checkpoint, args.device, precision) for precision in args.precision}
    sampler = samplers[args.precision[0]]
    settings = [(steps, precision) for steps in args.steps or [sampler.config.timesteps] for precision in samplers]

    arrays, split, info = csp_dataset(args.dataset, args.data_dir)
    positions = chosen_test_positions(split['test'], args.limit, args.subset_seed)
    references = [arrays.to_pymatgen(int(i)) for i in positions]
    # DiffCSP's RecEval: the pair also needs a SMACT-valid composition and a reference that is a crystal
    smact = ScreeningParameters(oxidation_states_set=DIFFCSP_OXIDATION_STATES)
    composition_valid = [charge_neutral(structure, smact) for structure in references]
    reference_crystal = [
        check_crystal(np.array(s.atomic_numbers), s.frac_coords, s.lattice.matrix) is None for s in references
    ]

    def figures(result):
        interval = wilson_interval(result['n_matched'], result['n'])
        return {
            'n': result['n'],
            'n_matched': result['n_matched'],
            'match_rate_percent': 100 * result['match_rate'],
            'match_rate_95_percent_interval': [100 * x for x in interval] if interval else None,
            'rmse': result['rmse'],
        }

    def evaluate(sampler, steps: int) -> dict:
        """One sample per test structure at ``steps`` and the sampler's precision, its composition given, matched
        with the reference."""
        # timed with the validity check (a small part)
        sampling_started = time.perf_counter()
        generated, reasons = sample_like(
            sampler, references, steps, args.step_lr, args.seed, args.batch_size, progress=True
        )
        misses = collections.Counter(reason for reason in reasons if reason is not None)
        sampling_seconds = time.perf_counter() - sampling_started
        matching_started = time.perf_counter()
        ours = match_rate_and_rmse(generated, references, progress=True)
        matching_seconds = time.perf_counter() - matching_started
        diffcsp = summarize(ours['rms_dist'], [a and b for a, b in zip(composition_valid, reference_crystal)])
        n_sampled = len(references) - misses['unknown_element'] - misses['too_many_atoms']
        return {
            'sampling': {
                'steps': steps,
                'step_lr': args.step_lr,
                'batch_size': args.batch_size,
                'seed': args.seed,
                'threads': args.threads,
                'device': args.device,
                'precision': sampler.precision,
                'n_sampled': n_sampled,
                'seconds': sampling_seconds,
                'samples_per_second': n_sampled / sampling_seconds if sampling_seconds > 0 else None,
                'structures_per_hour': 3600 * n_sampled / sampling_seconds if sampling_seconds > 0 else None,
            },
            'misses_before_matching': dict(misses),
            'ours': {**figures(ours), 'n_compared': ours['n_compared'], 'n_matcher_errors': ours['n_errors']},
            'diffcsp_protocol': {
                **figures(diffcsp),
                'oxidation_states_set': DIFFCSP_OXIDATION_STATES,
                'n_composition_not_smact_valid': int(len(references) - sum(composition_valid)),
                'n_reference_not_a_crystal': int(len(references) - sum(reference_crystal)),
                'not_tested': 'CrystalNN fingerprint of the sample (matminer)',
            },
            'matching_seconds': matching_seconds,
        }

    evaluations = [evaluate(samplers[precision], steps) for steps, precision in settings]
    wall_seconds = time.perf_counter() - started

    path = args.checkpoint.resolve()
    first = evaluations[0]
    result = {
        'benchmark': 'EquiCSP crystal structure prediction: match rate and RMSE',
        'dataset': {
            **info,
            'split': 'test',
            'n_test': int(len(split['test'])),
            'limit': args.limit,
            'subset_seed': args.subset_seed if args.limit is not None else None,
            'n_measured': len(positions),
            'mean_atoms': float(np.mean([len(s) for s in references])) if references else None,
        },
        'model': {
            'file': str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name,
            'sha256': sha256_file(path),
            'config': sampler.config.to_dict(),
            'trained_on': (checkpoint.get('dataset') or {}).get('name'),
            'n_elements': len(sampler.elements),
            'max_atoms': sampler.max_atoms,
            'modes': list(sampler.modes),
        },
        'sampling': first['sampling'],
        'matcher': MATCHER_SETTINGS,
        'misses_before_matching': first['misses_before_matching'],
        'ours': first['ours'],
        'diffcsp_protocol': first['diffcsp_protocol'],
        'by_sampling': evaluations if len(evaluations) > 1 else None,
        'published': {'figures': PUBLISHED[args.dataset], 'note': PUBLISHED_NOTE},
        'matching_seconds': first['matching_seconds'],
        'wall_seconds': wall_seconds,
        'run': run_record(load_before=load_before, torch=torch.__version__, threads=args.threads),
    }
    output = args.result or RESULTS_DIR / f'equicsp_csp_{args.dataset}.json'
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    shown = {key: result[key] for key in ('ours', 'diffcsp_protocol', 'sampling', 'wall_seconds')}
    print(json.dumps(shown, indent=2))
    print(f'written to {output}')
    return result


if __name__ == '__main__':
    main()
