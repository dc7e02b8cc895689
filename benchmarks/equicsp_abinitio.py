"""Ab initio generation with an EquiCSP checkpoint: validity, screening and generation rate per N strategy.

For each atom-count strategy (``--strategies``: ``dataset``, ``uniform``, ``hybrid``; see
:func:`aiida_hpcai.models.equicsp.generation.atom_counts`) ``--batches`` batches of ``--batch-size``
crystals are sampled (atom count N and types sampled) and measured as a generation campaign
(``hpcai.directive``) measures them:

- **structure validity**: :func:`~aiida_hpcai.models.equicsp.generation.check_crystal` (finite, positive
  volume, no two atoms closer than 0.5 A), the ``valid`` of the generate task;
- **composition validity**: SMACT charge neutrality through the screening filter ``charge_neutral``, with
  SMACT's original ``smact14`` oxidation states (the set of the DiffCSP paper's figures) and with the
  screening's default set (what ``hpcai.screen`` uses); over every sample, as DiffCSP counts it;
  ``diffcsp_valid`` is both structure and (smact14) composition valid. A composition of more distinct
  elements than the screening's ``max_elements`` (10) is not given to SMACT (its search is combinatorial
  in the elements: one of 13 took a minute) and counts as invalid; their number is recorded;
- **valid after screening**: the crystals of a batch through :func:`aiida_hpcai.screening.filters.screen`
  with the parameters ``hpcai.screen`` uses by default (or ``--screening``), de-duplicated within the batch
  and against the survivors of the strategy's earlier batches (as a campaign de-duplicates against what its
  profile holds);
- the valid rate per batch over time (the paper's Fig. 6b), drawn to ``--figure`` (default: the result's
  name with ``.png``) by :func:`aiida_hpcai.screening.plots.valid_rate_plot`;
- structures per hour: generated (sampling time only, at ``--threads`` and ``--steps`` on ``--device``) and
  valid after screening (sampling and screening time).

Several ``--steps`` and ``--precision`` (``float32``, ``bfloat16``) give one campaign per pair, on the same
atom counts and seeds, under ``by_sampling``; the top-level figures and the plot are the first pair's. Fewer
steps trade quality for rate: this is where that trade is measured.

Beside the published figures: EquiCSP's campaign generated about 5,663 structures/hour, 1,859 of them valid
(33%), on an NVIDIA A800 (its valid rate per batch: 43% falling to 22% with the dataset's N, about 28% with
uniform N); DiffCSP's ab initio validity on MP-20 is 100.00% (structure) / 83.25% (composition).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import time
import types

import numpy as np

from aiida_hpcai.models.contract import N_STRATEGIES, SAMPLING_PRECISIONS
from aiida_hpcai.models.evaluation import REPO, RESULTS_DIR, run_record

RESULTS_FILE = RESULTS_DIR / 'equicsp_abinitio.json'
DIFFCSP_OXIDATION_STATES = 'smact14'
MAX_SMACT_ELEMENTS = 10  # without the screening's max_elements: SMACT took 60 s on one 13-element composition
PUBLISHED = {
    'EquiCSP campaign (seed paper, NVIDIA A800)': {
        'generated_per_hour': 5663,
        'valid_per_hour': 1859,
        'valid_percent': 33,
        'valid_rate_per_batch': 'dataset N: 43% falling to 22%; uniform N: about 28%',
    },
    'DiffCSP, MP-20 (Jiao et al., NeurIPS 2023)': {
        'structure_valid_percent': 100.00,
        'composition_valid_percent': 83.25,
    },
    'CDVAE, MP-20 (from DiffCSP)': {'structure_valid_percent': 100.00, 'composition_valid_percent': 86.70},
    'DiffCSP, perov_5': {'structure_valid_percent': 100.00, 'composition_valid_percent': 98.85},
}


def _percent(part: int, whole: int) -> float | None:
    return 100 * part / whole if whole else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=pathlib.Path, required=True, help='an EquiCSP model.pt (ab initio)')
    parser.add_argument('--strategies', nargs='+', choices=N_STRATEGIES, default=list(N_STRATEGIES))
    parser.add_argument('--batches', type=int, default=3, help='batches per strategy')
    parser.add_argument('--batch-size', type=int, default=64, help='crystals per batch (one sampler call)')
    parser.add_argument('--switch', type=int, default=None, help='hybrid: samples drawn with the dataset N first')
    parser.add_argument(
        '--steps',
        type=int,
        nargs='+',
        default=None,
        help="sampling steps (default: the model's, 1000); several give one campaign each (under by_sampling)",
    )
    parser.add_argument(
        '--precision',
        choices=SAMPLING_PRECISIONS,
        nargs='+',
        default=['float32'],
        help="of the denoiser's products; several give one campaign each (under by_sampling)",
    )
    parser.add_argument('--step-lr', type=float, default=1e-5)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--screening', default=None, help="JSON of ScreeningParameters (default: hpcai.screen's)")
    parser.add_argument('--result', type=pathlib.Path, default=RESULTS_FILE)
    parser.add_argument('--figure', type=pathlib.Path, default=None, help='default: the result with .png')
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f'no checkpoint file {args.checkpoint}')
    if args.batches < 1 or args.batch_size < 1:
        parser.error('--batches and --batch-size must be at least 1')
    if args.steps is not None and min(args.steps) < 1:
        parser.error('--steps must be at least 1')

    import torch
    from pymatgen.core import Composition
    from tqdm import tqdm

    from aiida_hpcai.models.checkpoint import load_checkpoint, sha256_file
    from aiida_hpcai.models.equicsp.generation import EquiCSPSampler, atom_counts
    from aiida_hpcai.models.equicsp.metrics import checked_structures
    from aiida_hpcai.screening.filters import REASONS, ScreeningParameters, charge_neutral, screen
    from aiida_hpcai.screening.plots import valid_rate_plot

    try:
        screening = ScreeningParameters.from_dict(json.loads(args.screening) if args.screening else None)
    except (ValueError, TypeError) as exc:
        parser.error(f'--screening: {exc}')
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.get('architecture') != 'equicsp' or 'abinitio' not in checkpoint.get('modes', ()):
        raise SystemExit(f'{args.checkpoint}: not an EquiCSP checkpoint trained for ab initio generation')
    samplers = {precision: EquiCSPSampler(checkpoint, args.device, precision) for precision in args.precision}
    sampler = samplers[args.precision[0]]
    settings = [(steps, precision) for steps in args.steps or [sampler.config.timesteps] for precision in samplers]
    smact14 = ScreeningParameters(oxidation_states_set=DIFFCSP_OXIDATION_STATES)
    cache: dict[tuple[str, str], bool] = {}

    max_elements = screening.max_elements or MAX_SMACT_ELEMENTS

    def composition_valid(numbers: np.ndarray, parameters: ScreeningParameters) -> bool:
        """The screening's charge_neutral (it reads only the composition), once per formula and set; False,
        untested, beyond ``max_elements`` distinct elements (SMACT is combinatorial in them)."""
        composition = Composition(dict(collections.Counter(int(z) for z in numbers)))
        if len(composition) > max_elements:
            return False
        key = (composition.formula, str(parameters.oxidation_states_set))
        if key not in cache:
            cache[key] = charge_neutral(types.SimpleNamespace(composition=composition), parameters)
        return cache[key]

    # warm-up, so that the first batch's time holds no first-call costs (imports, spglib, SMACT's tables)
    warm = checked_structures(sampler.sample([2], None, 1, args.step_lr, args.seed, 1))[0]
    screen([s for s in warm if s is not None], parameters=screening)
    composition_valid(np.array([11, 17]), smact14), composition_valid(np.array([11, 17]), screening)
    cache.clear()

    n_total = args.batches * args.batch_size

    def campaign(sampler, steps: int) -> tuple[dict, list]:
        """Every strategy's batches at ``steps`` and the sampler's precision: the summaries and the batches."""
        batches, summaries = [], {}
        for s_index, strategy in enumerate(args.strategies):
            counts = atom_counts(
                n_total,
                strategy,
                sampler.num_atoms_counts,
                sampler.max_atoms,
                np.random.default_rng(args.seed + s_index),
                args.switch,
            )
            known: list = []
            elapsed = 0.0
            totals = collections.Counter()
            for b in tqdm(
                range(args.batches), desc=f'{strategy} N ({steps} steps, {sampler.precision})', unit=' batch'
            ):
                chunk = counts[b * args.batch_size : (b + 1) * args.batch_size]
                tick = time.perf_counter()
                crystals = sampler.sample(chunk, None, steps, args.step_lr, args.seed + 1000 * s_index + b, len(chunk))
                sampling_seconds = time.perf_counter() - tick
                tick = time.perf_counter()
                structures, reasons = checked_structures(crystals)
                crystal_rows = [row for row, structure in enumerate(structures) if structure is not None]
                ids = [f'{strategy}-{b}-{row}' for row in crystal_rows]
                result = screen([structures[row] for row in crystal_rows], ids, screening, known)
                known += [(ids[index], structures[crystal_rows[index]]) for index in result.valid]
                screening_seconds = time.perf_counter() - tick
                tick = time.perf_counter()  # the validity statistics: not part of the campaign's time
                smact14_valid = [composition_valid(c['numbers'], smact14) for c in crystals]
                default_valid = [composition_valid(c['numbers'], screening) for c in crystals]
                composition_seconds = time.perf_counter() - tick
                elapsed += sampling_seconds + screening_seconds
                batch = {
                    'n_strategy': strategy,
                    'steps': steps,
                    'precision': sampler.precision,
                    'batch': b,
                    'generated': len(crystals),
                    'structure_valid': len(crystal_rows),
                    'composition_valid_smact14': int(sum(smact14_valid)),
                    'composition_valid_screening_set': int(sum(default_valid)),
                    'diffcsp_valid': int(sum(v and s is not None for v, s in zip(smact14_valid, structures))),
                    'composition_untested_too_many_elements': sum(
                        len(set(c['numbers'].tolist())) > max_elements for c in crystals
                    ),  # fmt: skip
                    'valid': len(result.valid),
                    'invalid_reasons': dict(collections.Counter(r for r in reasons if r is not None)),
                    'rejections': result.counts(),
                    'mean_atoms': float(np.mean(chunk)),
                    'sampling_seconds': sampling_seconds,
                    'screening_seconds': screening_seconds,
                    'composition_validity_seconds': composition_seconds,
                    'elapsed_seconds': elapsed,
                }
                batches.append(batch)
                totals.update({key: batch[key] for key in (
                    'generated', 'structure_valid', 'composition_valid_smact14', 'composition_valid_screening_set',
                    'diffcsp_valid', 'composition_untested_too_many_elements', 'valid', 'sampling_seconds',
                    'screening_seconds')})  # fmt: skip
                totals.update({f'rejected_{reason}': n for reason, n in result.counts().items()})
            generated = totals['generated']
            summaries[strategy] = {
                'generated': generated,
                'mean_atoms': float(np.mean(counts)),
                'structure_valid_percent': _percent(totals['structure_valid'], generated),
                'composition_valid_percent_smact14': _percent(totals['composition_valid_smact14'], generated),
                'composition_valid_percent_screening_set': _percent(
                    totals['composition_valid_screening_set'], generated
                ),
                'diffcsp_valid_percent': _percent(totals['diffcsp_valid'], generated),
                'composition_untested_too_many_elements': totals['composition_untested_too_many_elements'],
                'valid_after_screening': totals['valid'],
                'valid_after_screening_percent': _percent(totals['valid'], generated),
                'rejections': {reason: totals[f'rejected_{reason}'] for reason in REASONS},
                'sampling_seconds': totals['sampling_seconds'],
                'screening_seconds': totals['screening_seconds'],
                'generated_per_hour': 3600 * generated / totals['sampling_seconds'],
                'valid_per_hour': 3600 * totals['valid'] / (totals['sampling_seconds'] + totals['screening_seconds']),
                'valid_rate_per_batch_percent': [
                    _percent(row['valid'], row['generated']) for row in batches if row['n_strategy'] == strategy
                ],
            }
        return summaries, batches

    campaigns = []
    for steps, precision in settings:
        summaries, batches = campaign(samplers[precision], steps)
        campaigns.append({'steps': steps, 'precision': precision, 'strategies': summaries, 'batches': batches})
    first = campaigns[0]

    figure = args.figure or args.result.with_suffix('.png')
    figure.parent.mkdir(parents=True, exist_ok=True)
    valid_rate_plot(first['batches'], figure)
    path = args.checkpoint.resolve()
    result = {
        'benchmark': 'EquiCSP ab initio generation: validity, screening, structures per hour',
        'model': {
            'file': str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name,
            'sha256': sha256_file(path),
            'config': sampler.config.to_dict(),
            'trained_on': (checkpoint.get('dataset') or {}).get('name'),
            'n_elements': len(sampler.elements),
            'max_atoms': sampler.max_atoms,
        },
        'sampling': {
            'steps': first['steps'],
            'precision': first['precision'],
            'step_lr': args.step_lr,
            'batch_size': args.batch_size,
            'batches_per_strategy': args.batches,
            'switch': (args.switch if args.switch is not None else n_total // 2)
            if 'hybrid' in args.strategies
            else None,
            'seed': args.seed,
            'threads': args.threads,
            'device': args.device,
        },
        'screening': {
            'parameters': dataclasses.asdict(screening),
            'known': "the survivors of the strategy's earlier batches",
        },
        'strategies': first['strategies'],
        'batches': first['batches'],
        'by_sampling': [{key: campaign[key] for key in ('steps', 'precision', 'strategies')} for campaign in campaigns]
        if len(campaigns) > 1
        else None,
        'published': PUBLISHED,
        'figure': figure.name,
        'wall_seconds': time.perf_counter() - started,
        'run': run_record(
            load_before=load_before,
            torch=torch.__version__,
            threads=args.threads,
            gpu=torch.cuda.get_device_name() if args.device.startswith('cuda') else None,
        ),
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2))
    print(json.dumps({f'{c["steps"]} steps, {c["precision"]}': c['strategies'] for c in campaigns}, indent=2))
    print(f'written to {args.result} and {figure}')
    return result


if __name__ == '__main__':
    main()
