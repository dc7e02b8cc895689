"""The coordinate loop (``hpcai.coordinate``) on design requests, run to the end on a fresh embedded profile.

Per request, in a throw-away ``AIIDA_PATH`` under ``--workdir`` (``verdi presto --use-zeromq``, then
``aiida-hpcai setup``, as :func:`predict_fixed_cost.make_embedded_profile` makes it; kept for ``--resume``):

1. the request planned into a Goal by the deterministic planner (``aiida-hpcai design``'s ``_plan``), with the
   DFT budget of the request's entry in :data:`REQUESTS` (or ``--dft-budget``);
2. ``hpcai.coordinate`` run here to the end with what ``aiida-hpcai design`` gives it by default (the shipped
   EquiCSP and formation-energy ensemble, the calibrated acceptance rule shipped for it, Quantum ESPRESSO
   ``pw@localhost``), the protocol ``--protocol`` (fast), and ``continue_without_dft`` (after the budget is
   spent the loop goes on with AI acceptances only, up to the count or ``--iterations``); timed;
3. from its decision log and table: look-up hits, AI acceptances, DFT calls, uncertain candidates left
   without DFT, fine-tunes, and the fraction of DFT calls avoided, ``ai / (ai + dft)`` (every AI acceptance is
   a DFT run a DFT-only loop would have made for the same result; look-up hits are counted apart);
4. a sample of the accepted AI predictions (``--validate`` of them, evenly spread over the table) computed
   afterwards with ``hpcai.dft_batch`` (same engine and protocol): the error of the accepted prediction
   against DFT, once on the generated cell as the surrogate saw it (a single-point SCF, ``relax`` False) and
   once on the relaxed structure, and the surrogate's error on these held-out relaxed results (never in a
   fine-tune) with the shipped model before and the loop's last fine-tuned model after.

Writes benchmarks/results/coordinate_requests.json (or ``--output``) after every step of every request;
``--resume`` keeps the requests already finished there and runs the others.

    python benchmarks/coordinate_requests.py --workdir /tmp/coord-smoke --requests mgo --dft-budget 1 \\
        --iterations 2 --samples 4 --steps 20 --validate 1 --output /tmp/coord-smoke.json   # the machinery
    setsid nohup python3 benchmarks/coordinate_requests.py --workdir /work/coord \\
        > /work/notes/coordinate_requests.log 2>&1 &                                          # the figures

Run it with the machine to itself: its ``pw.x`` shares the cores with whatever else runs. ``nice`` does not
help under ``setsid`` on Linux with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``): a new
session is its own group, groups share the CPU equally whatever the nice values of their processes, and only
the group's own value (``echo 19 > /proc/<pid>/autogroup``) lowers a background job's share.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

from predict_fixed_cost import load_workdir_profile

from aiida_hpcai.models.contract import SAMPLING_PRECISIONS

PAPER_REQUEST = 'Please generate up to 50 structures of Fe2O3 materials with a formation energy of less than 1 eV/atom'
PAPER = {
    'request': PAPER_REQUEST,
    'iterations': 50,
    'ai_predictions': 9,
    'dft_runs': 5,
    'unique_structures': 14,
    'fraction_of_dft_calls_avoided': 0.64,
}
TARGETS = {'fraction_of_dft_calls_avoided_at_least': 0.8, 'accepted_within_eV_per_atom_of_dft': 0.12}
#: The requests, in the order they run. Non-magnetic, small cells first (MgO and SiC: 2 atoms per formula unit,
#: cells that the QE fast protocol relaxes in minutes on 2 cores); the paper's Fe2O3 (magnetic, the Fe
#: pseudopotential the most expensive of the set) last. A count of 20 against a DFT budget of 3: with a count of
#: 10 the loop stops at 10 results, at most 7 of them by the AI, so it could not avoid more than 0.7 of its DFT
#: calls whatever the surrogate did (the target is 0.8).
REQUESTS = {
    'mgo': {
        'request': 'Please generate up to 20 structures of MgO with a formation energy of less than 0 eV/atom',
        'dft_budget': 3,
        'iterations': 12,
        'validate': 3,
        'note': 'non-magnetic, 2 atoms per formula unit',
    },
    'sic': {
        'request': 'Please generate up to 20 structures of SiC with a formation energy of less than 1 eV/atom',
        'dft_budget': 3,
        'iterations': 12,
        'validate': 3,
        'note': 'non-magnetic, 2 atoms per formula unit',
    },
    'fe2o3': {
        'request': PAPER_REQUEST,
        'dft_budget': 1,
        'iterations': 8,
        'validate': 1,
        'note': "the paper's request; magnetic 5-atom cells and the costly Fe pseudopotential: a DFT budget of 1 "
        "and 8 iterations instead of the paper's 50 to fit 2 shared cores",
    },
}
PROPERTY = 'formation_energy_per_atom'


# -- the loop ---------------------------------------------------------------------------------------------
def loop_inputs(goal, args, budget: int, iterations: int) -> dict:
    """The ``hpcai.coordinate`` inputs of ``aiida-hpcai design``'s defaults, with the benchmark's sizes."""
    from aiida import orm

    from aiida_hpcai.agent import operations
    from aiida_hpcai.cli.design import _discriminator
    from aiida_hpcai.cli.generate import shipped_generator
    from aiida_hpcai.cli.params import DEFAULT_CODE
    from aiida_hpcai.cli.surrogate import _load_code, load_models

    code = _load_code(DEFAULT_CODE)
    inputs = {
        'goal': operations.goal_node(goal),
        'surrogate': {'models': load_models((), PROPERTY), 'predict': {'code': code, 'device': orm.Str('cpu')}},
        'generate': {'code': code, 'model': shipped_generator(), 'device': orm.Str('cpu')},
        'samples_per_iteration': orm.Int(args.samples),
        'max_iterations': orm.Int(iterations),
        'buffer_size': orm.Int(args.buffer_size),
        'fine_tune': orm.Dict({'epochs': args.fine_tune_epochs}),
        'continue_without_dft': orm.Bool(True),
        'audit': orm.Int(min(args.audit, budget)),
        'audit_relax': orm.Bool(not args.audit_single_point),
    }
    if args.discriminator:  # aiida-hpcai design --discriminator shipped
        inputs['discriminator'] = _discriminator('shipped')
    generation = {'steps': args.steps, 'precision': args.precision, 'formula_units': args.formula_units}
    generation = {key: value for key, value in generation.items() if value is not None}
    if generation:
        inputs['generation'] = orm.Dict(generation)
    if budget > 0:
        inputs['dft_batch'] = {'dft': dft_inputs(args), 'max_concurrent': orm.Int(1)}
    return inputs


def dft_inputs(args) -> dict:
    """The loop's ``dft_batch.dft`` inputs, as ``aiida-hpcai design`` builds them, on MP's scale (the surrogate's)."""
    from aiida import orm

    from aiida_hpcai.cli.dft import dft_batch_inputs

    dft = dft_batch_inputs('quantumespresso', args.protocol, args.dft_overrides, None, None)['dft']
    return {**dft, 'energy_correction': orm.Str('mp2020')}


def loop_figures(node) -> dict:
    """Counts from the decision log and the table of one finished loop."""
    log = node.outputs.decision_log.get_dict()
    table = node.outputs.table.get_dict()
    iterations = log['iterations']
    accepted = sum(len(entry.get('accepted', [])) for entry in iterations)
    dft = sum(len(entry.get('sent_to_dft', [])) for entry in iterations)
    hits = log['look_up']['n_hits']
    return {
        'process_pk': node.pk,
        'exit_status': node.exit_status,
        'stop_reason': log['stop_reason'],
        'iterations': len(iterations),
        'threshold': log.get('threshold'),
        'threshold_source': log.get('threshold_source'),
        'look_up_hits': hits,
        'candidates_proposed': sum(entry.get('candidates', 0) for entry in iterations),
        'valid_after_screening': sum(entry.get('valid', 0) for entry in iterations),
        'ai_accepted': accepted,
        'dropped_confident_outside_bounds': sum(len(entry.get('dropped', [])) for entry in iterations),
        'dft_calls': dft,
        'dft_failed': sum(len(entry.get('dft_failed', [])) for entry in iterations),
        'uncertain_left_without_dft': sum(len(entry.get('not_sent_to_dft', [])) for entry in iterations),
        'fraction_of_dft_calls_avoided': accepted / (accepted + dft) if accepted + dft else None,
        'fraction_avoided_counting_hits': (accepted + hits) / (accepted + hits + dft)
        if accepted + hits + dft
        else None,
        'fine_tunes': [
            {key: tune.get(key) for key in ('status', 'model_pk', 'model_version')}
            for tune in log.get('fine_tunes', [])
        ],
        # the loop's own DFT results against the predictions that sent them to DFT (the model of the time)
        'acceptance_on_loop_dft': {
            key: (log.get('acceptance') or {}).get(key)
            for key in (
                'tolerance',
                'loop_results',
                'loop_within_tolerance',
                'loop_accepted_by_final_threshold',
                'loop_accepted_within_tolerance',
                'audits',
                'audits_within_tolerance',
            )
        },
        'threshold_refreshes': [
            entry['acceptance_refresh'] for entry in iterations if entry.get('acceptance_refresh') is not None
        ],
        'results_by_source': table['counts'],
        'unique_results': len(table['rows']),
        'rows': [
            {
                key: row.get(key)
                for key in ('id', 'formula', 'source', 'value', 'sigma', 'model_version', 'spacegroup', 'iteration')
            }
            for row in table['rows']
        ],
    }


# -- the check against DFT ----------------------------------------------------------------------------------
def sample_ids(rows: list[dict], count: int) -> list[str]:
    """``count`` AI rows evenly spread over the table (best first), deterministic."""
    ai = [row['id'] for row in rows if row['source'] == 'ai']
    if count <= 0 or not ai:
        return []
    step = max(len(ai) / count, 1.0)
    return list(dict.fromkeys(ai[int(i * step)] for i in range(min(count, len(ai)))))


def predict_with(structures, model) -> dict:
    """id -> (mean, sigma) of ``model`` on ``structures`` through ``hpcai.surrogate``."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_hpcai.agent.operations import _prediction_rows
    from aiida_hpcai.cli.params import DEFAULT_CODE
    from aiida_hpcai.cli.surrogate import _load_code
    from aiida_hpcai.workchains.surrogate import SurrogateWorkChain

    inputs = {
        'structures': structures,
        'models': {'model': model},
        'predict': {'code': _load_code(DEFAULT_CODE), 'device': orm.Str('cpu')},
    }
    _, node = run_get_node(SurrogateWorkChain, **inputs)
    return {row['id']: (row['mean'], row['sigma']) for row in _prediction_rows(node.outputs.classified_predictions)}


def error_summary(errors: list[float], tolerance: float) -> dict:
    if not errors:
        return {'n': 0}
    absolute = [abs(error) for error in errors]
    return {
        'n': len(errors),
        'mae': sum(absolute) / len(absolute),
        'max_abs': max(absolute),
        'within_tolerance': sum(value <= tolerance for value in absolute),
    }


def run_dft(structures, inputs: dict) -> tuple[dict, object, float]:
    """id -> formation energy of the structures that finished, the ``hpcai.dft_batch`` node and its wall time."""
    from aiida import orm
    from aiida.engine import run_get_node
    from aiida.manage.caching import enable_caching

    from aiida_hpcai.workchains.dft_batch import DftBatchWorkChain

    started = time.perf_counter()
    # a check resumed after a stop takes the pw.x runs an interrupted one finished from AiiDA's cache
    with enable_caching(identifier='aiida.calculations:quantumespresso.pw'):
        _, batch = run_get_node(DftBatchWorkChain, structures=structures, dft=inputs, max_concurrent=orm.Int(1))
    values = {
        row['id']: row.get(PROPERTY)
        for row in batch.outputs.results.get('structures', [])
        if row.get('status') == 'finished_ok' and row.get(PROPERTY) is not None
    }
    return values, batch, time.perf_counter() - started


def failures(batch, values: dict) -> list[dict]:
    return [
        {key: row.get(key) for key in ('id', 'status', 'exit_status', 'exit_message')}
        for row in batch.outputs.results.get('structures', [])
        if row['id'] not in values
    ]


def volumes_per_atom(structures) -> dict[str, float]:
    """id -> volume per atom (Å^3) of a StructureSet, from its arrays."""
    import numpy as np

    arrays = structures.arrays
    return dict(zip(structures.ids, (np.abs(np.linalg.det(arrays.cells)) / arrays.natoms).tolist()))


def validate(node, figures: dict, args, count: int, save=None) -> dict:
    """DFT on a sample of the accepted AI predictions: first a single-point SCF of each generated cell as the
    surrogate saw it (no relaxation: is the prediction right for that cell?), then the relaxed structure (what the
    result is worth once DFT relaxes it); the surrogate's error on the relaxed results before and after the
    fine-tunes. ``save(partial)`` is called with the single-point figures before the relaxations start."""
    from aiida import orm

    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.workchains.dft import formation_energy_will_be_on_mp_scale
    from aiida_hpcai.workchains.structures import select_structures

    ids = sample_ids(figures['rows'], count)
    if not ids:
        return {'n_sampled': 0, 'note': 'no AI acceptance to check' if count else 'not asked'}
    inputs = dft_inputs(args)
    sampled = select_structures(node.outputs.structures, orm.List(ids))['subset']
    # a DFT formation energy off MP's scale (QE's +U compounds) cannot check a prediction on it: not run
    off_scale = [
        identifier
        for index, identifier in enumerate(sampled.ids)
        if not formation_energy_will_be_on_mp_scale(inputs, sampled.get_structuredata(index))
    ]
    ids = [identifier for identifier in ids if identifier not in off_scale]
    if not ids:
        return {
            'n_sampled': len(off_scale),
            'n_dft_ok': 0,
            'off_mp_scale': off_scale,
            'note': f"not checked: {inputs['engine'].value}'s formation energies of these compounds would be off "
            "MP's scale (GGA+U)",
        }
    subset = select_structures(node.outputs.structures, orm.List(ids))['subset']
    accepted = {row['id']: row for row in figures['rows']}
    tolerance = TARGETS['accepted_within_eV_per_atom_of_dft']
    volumes = volumes_per_atom(subset)

    same_cell, same_cell_batch, same_cell_seconds = run_dft(subset, {**inputs, 'relax': orm.Bool(False)})
    per_structure = [
        {
            'id': identifier,
            'accepted_value': accepted[identifier]['value'],
            'accepted_sigma': accepted[identifier]['sigma'],
            'accepted_model_version': accepted[identifier]['model_version'],
            'dft_same_cell': same_cell.get(identifier),
            'volume_per_atom': volumes[identifier],
        }
        for identifier in ids
    ]
    check = {
        'n_sampled': len(ids) + len(off_scale),
        'off_mp_scale': off_scale,
        'same_cell_dft_batch_pk': same_cell_batch.pk,
        'same_cell_dft_seconds': same_cell_seconds,
        'accepted_vs_dft_same_cell': error_summary(
            [accepted[key]['value'] - value for key, value in same_cell.items()], tolerance
        ),
        'same_cell_failed': failures(same_cell_batch, same_cell),
        'structures': per_structure,
    }
    if save is not None:
        save(check)

    relaxed, batch, dft_seconds = run_dft(subset, inputs)
    relaxed_volumes = (
        volumes_per_atom(batch.outputs.relaxed_structures) if 'relaxed_structures' in batch.outputs else {}
    )
    before = predict_with(subset, ModelData.pretrained(PROPERTY))
    after_model = node.outputs.model if 'model' in node.outputs else None
    after = predict_with(subset, after_model) if after_model is not None else {}
    for row in per_structure:
        row.update(
            dft=relaxed.get(row['id']),
            relaxed_volume_per_atom=relaxed_volumes.get(row['id']),
            shipped_model=before.get(row['id'], (None,))[0],
            fine_tuned_model=after.get(row['id'], (None,))[0],
        )
    computed = [row for row in per_structure if row['dft'] is not None]

    def errors(key):
        return [row[key] - row['dft'] for row in computed if row[key] is not None]

    return check | {
        'n_dft_ok': len(computed),
        'dft_batch_pk': batch.pk,
        'dft_seconds': dft_seconds,
        'accepted_vs_dft': error_summary(errors('accepted_value'), tolerance),
        'held_out_shipped_model': error_summary(errors('shipped_model'), tolerance),
        'held_out_fine_tuned_model': error_summary(errors('fine_tuned_model'), tolerance)
        if after_model is not None
        else {'n': 0, 'note': 'no fine-tune finished: the loop kept the shipped model'},
        'fine_tuned_model_pk': after_model.pk if after_model is not None else None,
        'failed': failures(batch, relaxed),
    }


# -- the run ------------------------------------------------------------------------------------------------
def write(payload: dict, output: pathlib.Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2) + '\n')


def run_request(name: str, args, payload: dict, output: pathlib.Path, previous: dict | None = None) -> None:
    """Plan, run the loop, write; check a sample against DFT, write. ``previous``: this request's unfinished entry
    of an earlier invocation on the same profile; a loop it records as done is not run again."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_hpcai.cli.design import _plan
    from aiida_hpcai.workchains.coordinate import CoordinateWorkChain

    spec = REQUESTS[name]
    budget = spec['dft_budget'] if args.dft_budget is None else args.dft_budget
    iterations = args.iterations or spec['iterations']
    goal = _plan(spec['request'], 'rules', budget, False)
    entry = {
        'request': spec['request'],
        'note': spec['note'],
        'goal': json.loads(goal.model_dump_json()),
        'dft_budget': budget,
        'max_iterations': iterations,
        'finished': False,
        # each request's own settings and run record: --resume runs requests at other times and settings
        'settings': payload['settings'],
        'run': payload['run'],
    }
    payload['requests'][name] = entry
    started = time.perf_counter()
    if previous and previous.get('process_pk') and previous.get('goal') == entry['goal']:
        entry.update(previous)
        node = orm.load_node(previous['process_pk'])
        print(f'[{name}] loop done earlier: hpcai.coordinate<{node.pk}>; checking against DFT', flush=True)
    else:
        print(f'[{name}] {spec["request"]!r}: DFT budget {budget}, {iterations} iterations', flush=True)
        load_before = os.getloadavg()
        _, node = run_get_node(CoordinateWorkChain, **loop_inputs(goal, args, budget, iterations))
        entry['loop_wall_seconds'] = time.perf_counter() - started
        entry['load_average_before'] = list(load_before)
        entry['load_average_after_loop'] = list(os.getloadavg())
        entry['process_pk'] = node.pk
        write(payload, output)
    if 'table' not in node.outputs:
        entry['error'] = f'hpcai.coordinate<{node.pk}> failed [{node.exit_status}]: {node.exit_message}'
        print(f'[{name}] {entry["error"]}', flush=True)
        write(payload, output)
        return
    entry['loop'] = loop_figures(node)
    loop = entry['loop']
    print(
        f'[{name}] loop done in {entry["loop_wall_seconds"]:.0f} s: {loop["look_up_hits"]} hits, '
        f'{loop["ai_accepted"]} AI, {loop["dft_calls"]} DFT, avoided {loop["fraction_of_dft_calls_avoided"]}, '
        f'stop: {loop["stop_reason"]}',
        flush=True,
    )
    write(payload, output)
    checked = time.perf_counter()

    def save(partial):
        entry['check_against_dft'] = partial
        print(f'[{name}] same cell: {json.dumps(partial.get("accepted_vs_dft_same_cell"))}', flush=True)
        write(payload, output)

    entry['check_against_dft'] = validate(
        node, loop, args, spec['validate'] if args.validate is None else args.validate, save
    )
    entry['check_wall_seconds'] = time.perf_counter() - checked
    entry['wall_seconds'] = entry['loop_wall_seconds'] + entry['check_wall_seconds']
    check = entry['check_against_dft']
    print(f'[{name}] check against DFT: {json.dumps(check.get("accepted_vs_dft"))}', flush=True)
    entry['finished'] = True
    write(payload, output)


def main(argv=None) -> None:
    from aiida_hpcai.cli.dft import overrides_argument

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('/tmp/hpcai-coordinate-requests'))
    parser.add_argument('--requests', nargs='+', choices=list(REQUESTS), default=list(REQUESTS))
    parser.add_argument('--dft-budget', type=int, default=None, help="every request's DFT budget (default: its own)")
    parser.add_argument('--iterations', type=int, default=None, help="the loop's cap (default: the request's)")
    parser.add_argument('--samples', type=int, default=10, help='samples generated per iteration (10)')
    parser.add_argument('--steps', type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument('--precision', choices=SAMPLING_PRECISIONS, default=None, help='sampler precision (float32)')
    parser.add_argument(
        '--formula-units', type=int, nargs='+', default=None, help='formula units per generated cell (1)'
    )
    parser.add_argument(
        '--audit', type=int, default=0, help='DFT runs of the budget kept to audit AI acceptances in the loop (0)'
    )
    parser.add_argument(
        '--audit-single-point',
        action='store_true',
        help='audit an AI acceptance with a single-point SCF of its cell as generated, not a relaxation',
    )
    parser.add_argument('--buffer-size', type=int, default=2, help='fine-tune after this many DFT results (2)')
    parser.add_argument('--fine-tune-epochs', type=int, default=20)
    parser.add_argument('--protocol', default='fast', help='QE protocol (fast)')
    parser.add_argument(
        '--dft-overrides',
        type=overrides_argument,
        default=None,
        help='overrides of the QE protocol as YAML/JSON text, e.g. "{kpoints_distance: 0.5, scf: {kpoints_distance: '
        '0.3}}" (none)',
    )
    parser.add_argument(
        '--validate', type=int, default=None, help="accepted AI predictions checked by DFT (default: the request's)"
    )
    parser.add_argument(
        '--discriminator',
        action='store_true',
        help='gate acceptances with the shipped match discriminator, and rank DFT by its probability (off)',
    )
    parser.add_argument('--resume', action='store_true', help='keep the requests finished in --output')
    parser.add_argument('--output', type=pathlib.Path, default=None)
    args = parser.parse_args(argv)

    from aiida_hpcai.models.evaluation import RESULTS_DIR, run_record

    output = args.output or RESULTS_DIR / 'coordinate_requests.json'
    previous = json.loads(output.read_text()) if args.resume and output.exists() else {}
    load_before = os.getloadavg()
    profile, aiida_path, setup_seconds = load_workdir_profile(args.workdir)
    payload = {
        'benchmark': 'coordinate_requests',
        'what': 'hpcai.coordinate on design requests run to the end on a fresh embedded profile (verdi presto '
        '--use-zeromq, aiida-hpcai setup): look-up hits, AI acceptances, DFT calls (Quantum ESPRESSO), fraction of '
        'DFT calls avoided = ai / (ai + dft), the error of a sample of accepted predictions against DFT run '
        'afterwards, and the surrogate error on those held-out DFT results before and after the fine-tunes',
        'paper': PAPER,
        'targets': TARGETS,
        'settings': {
            key: getattr(args, key)
            for key in (
                'samples',
                'steps',
                'precision',
                'formula_units',
                'buffer_size',
                'fine_tune_epochs',
                'protocol',
                'dft_overrides',
                'validate',
                'audit',
                'audit_single_point',
                'discriminator',
            )  # fmt: skip
        }
        | {'continue_without_dft': True, 'dft_per_iteration': 2, 'max_concurrent_dft': 1, 'device': 'cpu'},
        'profile': {
            'name': profile.name,
            'storage': profile.storage_backend,
            'broker': profile.process_control_backend,
            'aiida_path': str(aiida_path),
            'setup_seconds': setup_seconds,
        },
        'requests': {name: entry for name, entry in previous.get('requests', {}).items() if entry.get('finished')},
        'complete': False,
    }
    for entry in payload['requests'].values():  # a request finished before entries had their own records
        entry.setdefault('settings', previous.get('settings'))
        entry.setdefault('run', previous.get('run'))
    for name in args.requests:
        if name in payload['requests']:
            print(f'[{name}] finished in {output}: skipped', flush=True)
            continue
        payload['run'] = run_record(load_before=load_before)
        run_request(name, args, payload, output, previous.get('requests', {}).get(name))
    payload['complete'] = all(payload['requests'].get(name, {}).get('finished') for name in REQUESTS)
    payload['run'] = run_record(load_before=load_before)
    write(payload, output)
    print(f'wrote {output}', flush=True)


if __name__ == '__main__':
    main()
