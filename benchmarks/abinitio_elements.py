"""Ab initio samples inside a chemical system, with and without the sampler's element restriction.

The shipped EquiCSP generator (``checkpoint.DEFAULT_GENERATOR``) samples ``--samples`` crystals ab initio
through the ``hpcai-model generate`` task (:func:`aiida_hpcai.models.equicsp.generation.run_generate`):
once over all its elements, once per system in ``--systems`` with ``elements`` set to that system
(``required_elements`` default: every element present), and once per system in ``--contains`` with
``required_elements`` alone (any other element allowed, as the coordinate loop asks for a Goal's
``must_include``). For every run and system it counts the samples whose elements are exactly the system
(all of them, and those that are crystals by the task's validity check) and those containing it. Writes ``benchmarks/results/abinitio_elements.json``.

    python3 benchmarks/abinitio_elements.py --samples 32 --steps 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile
import time

from aiida_hpcai.models import contract
from aiida_hpcai.models.checkpoint import DEFAULT_GENERATOR, sha256_file
from aiida_hpcai.models.evaluation import RESULTS_DIR, run_record

RESULTS_FILE = RESULTS_DIR / 'abinitio_elements.json'
PRETRAINED = pathlib.Path(__file__).resolve().parents[1] / 'aiida_hpcai' / 'models' / 'pretrained'


def _generate(checkpoint: pathlib.Path, config: dict) -> tuple[list[str], list[str], float]:
    """Formulae of every sample and of the valid ones, and the sampling seconds, of one generate task."""
    from aiida_hpcai.models.equicsp.generation import run_generate
    from aiida_hpcai.models.structure_io import read_npz

    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        (root / 'in').mkdir()
        (root / 'out').mkdir()
        shutil.copy(checkpoint, root / 'in' / 'model.pt')
        entry = contract.checkpoint_entry('model.pt', sha256_file(root / 'in' / 'model.pt'))
        try:
            run_generate({contract.MODELS_KEY: [entry], **config}, root / 'in', root / 'out')
        except contract.TaskError as error:
            if error.code != contract.NAN_OUTPUT:  # NaN samples are recorded as invalid; the rest are kept
                raise
        valid = read_npz(root / 'out' / contract.STRUCTURES_FILE)
        invalid = json.loads((root / 'out' / contract.INVALID_FILE).read_text())
        summary = json.loads((root / 'out' / contract.SUMMARY_FILE).read_text())
    valid_formulae = list(valid.formulae())
    return valid_formulae + [row['id'].split('#')[0] for row in invalid], valid_formulae, summary['seconds']


def _elements(formula: str) -> frozenset:
    from pymatgen.core import Composition

    return frozenset(str(e) for e in Composition(formula).elements)


def _fractions(all_formulae, valid_formulae, system: frozenset) -> dict:
    """In-system counts; of the valid samples in the system, their reduced formulae and how many pass the
    screening's SMACT charge neutrality (its default oxidation states)."""
    import collections
    import types

    from pymatgen.core import Composition

    from aiida_hpcai.screening.filters import charge_neutral

    all_sets, valid_sets = [_elements(f) for f in all_formulae], [_elements(f) for f in valid_formulae]
    inside = sum(s == system for s in all_sets)
    inside_valid = [f for f, s in zip(valid_formulae, valid_sets) if s == system]
    reduced = collections.Counter(Composition(f).reduced_formula for f in inside_valid)
    neutral = sum(charge_neutral(types.SimpleNamespace(composition=Composition(f))) for f in inside_valid)
    return {
        'samples': len(all_sets),
        'in_system': inside,
        'in_system_fraction': inside / len(all_sets),
        'valid': len(valid_sets),
        'valid_in_system': len(inside_valid),
        'valid_in_system_charge_neutral': neutral,
        'valid_in_system_formulae': dict(reduced.most_common()),
        'only_system_elements': sum(s <= system for s in all_sets),
        'containing_system': sum(system <= s for s in all_sets),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=pathlib.Path, default=PRETRAINED / f'{DEFAULT_GENERATOR}.pt')
    parser.add_argument('--systems', nargs='+', default=['Fe-O', 'Si'])
    parser.add_argument(
        '--contains', nargs='*', default=['Si'], help='systems also sampled with required_elements alone (any others)'
    )
    parser.add_argument('--samples', type=int, default=32)
    parser.add_argument('--steps', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument(
        '--final-only',
        action='store_true',
        help='ablation: restrict only the final types (the projection at every step switched off); '
        'records its runs under "ablation_final_only" of --output, beside the main runs',
    )
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    base = {'mode': 'abinitio', 'n_samples': args.samples, 'steps': args.steps, 'seed': args.seed}
    systems = {name: frozenset(name.split('-')) for name in args.systems}
    started = time.time()
    prefix, runs = '', {}
    if args.final_only:
        from aiida_hpcai.models.diffusion import TypeRestriction

        TypeRestriction.project = lambda self, clean, index, size: clean
        prefix, args.contains = 'final-only ', []
    else:
        all_sets, valid_sets, seconds = _generate(args.checkpoint, base)
        runs['unrestricted'] = {
            'seconds': seconds,
            **{n: _fractions(all_sets, valid_sets, s) for n, s in systems.items()},
        }
    for name, system in systems.items():
        all_sets, valid_sets, seconds = _generate(args.checkpoint, {**base, 'elements': sorted(system)})
        runs[f'{prefix}elements {name}'] = {'seconds': seconds, name: _fractions(all_sets, valid_sets, system)}
    for name in args.contains:
        system = frozenset(name.split('-'))
        all_sets, valid_sets, seconds = _generate(args.checkpoint, {**base, 'required_elements': sorted(system)})
        runs[f'required_elements {name}'] = {'seconds': seconds, name: _fractions(all_sets, valid_sets, system)}
    record = {
        **run_record(),
        'checkpoint': str(args.checkpoint.name),
        'checkpoint_sha256': sha256_file(args.checkpoint),
        'settings': {**base, 'threads': args.threads, 'systems': args.systems},
        'runs': runs,
        'wall_seconds': time.time() - started,
    }
    # the ablation is filed inside the figure's one result file, with its own run record; each run keeps the other
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    if args.final_only:
        record = {**previous, 'ablation_final_only': record}
    elif 'ablation_final_only' in previous:
        record['ablation_final_only'] = previous['ablation_final_only']
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + '\n')
    print(json.dumps(runs, indent=2))
    return record


if __name__ == '__main__':
    main()
