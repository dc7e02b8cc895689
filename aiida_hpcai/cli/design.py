"""``aiida-hpcai design``: a request in words, planned into a Goal and pursued by the ``hpcai.coordinate`` loop."""

from __future__ import annotations

import json

import click
from aiida.cmdline.utils import decorators, echo

from . import cli
from .dft import DFT_CODE, DFT_OVERRIDES, DFT_PROTOCOL, ENGINE, MAX_CONCURRENT, _parse_overrides, dft_batch_inputs
from .generate import MODEL, SAMPLES, STEPS, shipped_generator
from .params import (
    CODE,
    DEVICE,
    JSON,
    NON_NEGATIVE_INT,
    OUTPUT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SUBMIT,
    WritablePath,
    load_node_of,
)
from .surrogate import _load_code, _process_reports_to_stderr, _run, _submit, load_models


def loop_property(goal) -> str:
    """The property the surrogate predicts: the objective's, else the one bounded property, else formation energy."""
    from aiida_hpcai.workchains.coordinate import DFT_PROPERTIES

    if goal.objective is not None and goal.objective[1] in DFT_PROPERTIES:
        return goal.objective[1]
    bounded = [name for name in goal.bounds if name in DFT_PROPERTIES]
    return bounded[0] if len(bounded) == 1 else 'formation_energy_per_atom'


def _plan(request: str, planner: str, dft_budget: int | None, as_json: bool):
    """The Goal of ``request`` (its budget replaced by ``dft_budget``); a refusal ends the command in one line."""
    from aiida_hpcai.agent.goal import PlanError, goal_from_dict
    from aiida_hpcai.agent.planner import plan as plan_text

    try:
        goal = plan_text(request, planner)
        if dft_budget is not None:
            goal = goal_from_dict({**json.loads(goal.model_dump_json()), 'dft_budget': dft_budget})
    except PlanError as error:
        if as_json:
            click.echo(json.dumps(error.as_dict(), indent=2))
        unparsed = f' (unparsed: {" ".join(error.unparsed)})' if error.unparsed else ''
        echo.echo_critical(f'cannot plan the request: {error.message}{unparsed}')
    return goal


def _parse_formula_units(ctx, param, value):
    if value is None:
        return None
    from aiida_hpcai.workchains.coordinate import formula_units_problem

    try:
        units = [int(part) for part in value.split(',')]
    except ValueError:
        raise click.BadParameter(f'{value!r}: give distinct whole numbers >= 1, separated by commas (1,2,4)') from None
    problem = formula_units_problem(units)
    if problem:
        raise click.BadParameter(problem)
    return units


@cli.command('design')
@click.argument('request')
@click.option(
    '--planner', type=click.Choice(['rules', 'llm']), default='rules', show_default=True, help='See `aiida-hpcai plan`.'
)
@click.option('--dft-budget', type=NON_NEGATIVE_INT, default=None, help="DFT runs the loop may start (the request's).")
@MODEL()
@click.option(
    '--surrogate-model',
    'surrogate_models',
    multiple=True,
    metavar='PK_OR_UUID',
    help="ModelData predicting the goal's property (repeatable: an ensemble). Default: the model shipped for it.",
)
@click.option(
    '--sigma-threshold', type=POSITIVE_FLOAT, default=None, help="Accept predictions up to this sigma (the model's)."
)
@click.option(
    '--discriminator',
    metavar='shipped|PK_OR_UUID',
    default=None,
    help="A match discriminator: accept a generated structure's prediction only when its match probability is at "
    "least --discriminator-threshold. 'shipped': the one trained on samples of the shipped generator.",
)
@click.option(
    '--discriminator-threshold',
    type=click.FloatRange(0, 1),
    default=None,
    help='Smallest match probability of an accepted prediction (0.5).',
)
@click.option(
    '--audit',
    type=NON_NEGATIVE_INT,
    default=0,
    show_default=True,
    help='DFT runs of the budget kept to check AI acceptances: one drawn at random per iteration goes to DFT instead.',
)
@click.option(
    '--audit-relax/--audit-single-point',
    default=True,
    show_default=True,
    help='Relax an audited cell (judge the prediction against the relaxed value), or compute the cell as generated '
    'with a single-point SCF (judge it on the cell it was made for, at a fraction of the cost).',
)
@click.option(
    '--candidates',
    metavar='FILE_OR_PK',
    default=None,
    help='Structures to consider first (a structure file, or a StructureSet pk); without a generator, the only ones.',
)
@SAMPLES(required=False, default=10, show_default=True, help='Samples generated per iteration.')
@click.option('--iterations', type=POSITIVE_INT, default=10, show_default=True, help='Most iterations of the loop.')
@STEPS()
@click.option(
    '--formula-units',
    callback=_parse_formula_units,
    default=None,
    metavar='Z[,Z...]',
    help='CSP goals: formula units per generated cell, the samples spread over them (e.g. 1,2,4; default 1).',
)
@click.option(
    '--screening', callback=_parse_overrides, default=None, help='Screening parameters as YAML/JSON text or file.'
)
@click.option(
    '--buffer-size', type=NON_NEGATIVE_INT, default=5, show_default=True, help='Fine-tune after this many DFT results.'
)
@click.option('--fine-tune-epochs', type=POSITIVE_INT, default=None, help='Epochs of each fine-tune (20).')
@ENGINE()
@DFT_PROTOCOL()
@DFT_OVERRIDES()
@DFT_CODE()
@MAX_CONCURRENT()
@CODE()
@DEVICE()
@JSON()
@OUTPUT(
    type=WritablePath(folder_ok=True),
    help='A folder (made if missing) for results.extxyz, table.json, decision_log.json and progress.png.',
)
@SUBMIT()
@decorators.with_dbenv()
def design(
    request,
    planner,
    dft_budget,
    model,
    surrogate_models,
    sigma_threshold,
    discriminator,
    discriminator_threshold,
    audit,
    audit_relax,
    candidates,
    n_samples,
    iterations,
    steps,
    formula_units,
    screening,
    buffer_size,
    fine_tune_epochs,
    engine,
    protocol,
    dft_overrides,
    dft_code_label,
    max_concurrent,
    code_label,
    device,
    as_json,
    output,
    submit,
):
    """Plan REQUEST into a Goal and run the coordinate loop towards it; print the results.

    \b
    aiida-hpcai design "up to 5 MgO structures with the lowest formation energy, at most 1 DFT run"
    aiida-hpcai design "Fe2O3 with a formation energy below 1 eV/atom" --dft-budget 2 --output run/

    The loop looks the goal up in the profile, generates candidates with EquiCSP, accepts the confident
    predictions of the surrogate, sends the others to DFT (Quantum ESPRESSO by default) within the goal's
    DFT budget, and fine-tunes the surrogate on the DFT results as it goes (docs: coordinate).
    """
    from aiida import orm

    from aiida_hpcai.agent import operations
    from aiida_hpcai.workchains.coordinate import CoordinateWorkChain, goal_problem

    if submit and output is not None:
        raise click.UsageError('--output writes the results, which --submit does not wait for')
    if output is not None and output.exists() and not output.is_dir():
        raise click.BadParameter(f'{output} is a file: give a folder', param_hint='--output')
    goal = _plan(request, planner, dft_budget, as_json)
    problem = goal_problem(goal)
    if problem:
        echo.echo_critical(f'the goal of this request: {problem}')
    if audit > goal.dft_budget:
        raise click.BadParameter(
            f'{audit} audit(s) need as many DFT runs: the budget is {goal.dft_budget}', param_hint='--audit'
        )
    target = loop_property(goal)
    code = _load_code(code_label)
    candidate_set = _load_candidates(candidates) if candidates is not None else None
    inputs = {
        'surrogate': {
            'models': load_models(surrogate_models, target),
            'predict': {'code': code, 'device': orm.Str(device)},
        },
        'samples_per_iteration': orm.Int(n_samples),
        'max_iterations': orm.Int(iterations),
        'buffer_size': orm.Int(buffer_size),
        'audit': orm.Int(audit),
        'audit_relax': orm.Bool(audit_relax),
    }
    generator = _generator(model, candidate_set is not None)
    if generator is not None:
        inputs['generate'] = {'code': code, 'model': generator, 'device': orm.Str(device)}
    if candidate_set is not None:
        inputs['candidates'] = candidate_set
    generation = {'steps': steps, 'formula_units': formula_units}
    generation = {key: value for key, value in generation.items() if value is not None}
    if generation:
        inputs['generation'] = orm.Dict(generation)
    if screening is not None:
        inputs['screening'] = orm.Dict(screening)
    if sigma_threshold is not None:
        inputs['sigma_threshold'] = orm.Float(sigma_threshold)
    if discriminator_threshold is not None and discriminator is None:
        raise click.UsageError('--discriminator-threshold needs --discriminator')
    if discriminator is not None:
        inputs['discriminator'] = _discriminator(discriminator)
        if discriminator_threshold is not None:
            inputs['discriminator_threshold'] = orm.Float(discriminator_threshold)
    if fine_tune_epochs is not None:
        inputs['fine_tune'] = orm.Dict({'epochs': fine_tune_epochs})
    if goal.dft_budget > 0 or dft_code_label is not None:
        inputs['dft_batch'] = dft_batch_inputs(engine, protocol, dft_overrides, dft_code_label, max_concurrent)
    # the stored Goal node: the loop's DFT runs count against the budget every client of this Goal shares
    inputs['goal'] = operations.goal_node(goal)

    if submit:
        _submit(CoordinateWorkChain, inputs, 'hpcai.coordinate', as_json)
        return

    with _process_reports_to_stderr(enabled=as_json):
        node = _run(CoordinateWorkChain, inputs)
    if 'table' not in node.outputs:
        echo.echo_critical(f'hpcai.coordinate<{node.pk}> failed [{node.exit_status}]: {node.exit_message}')
    table = node.outputs.table.get_dict()
    log = node.outputs.decision_log.get_dict()
    if output is not None:
        _write_output(output, node, table, log)
    if as_json:
        payload = {
            'process_pk': node.pk,
            'exit_status': node.exit_status,
            'exit_message': node.exit_message,
            'goal': json.loads(goal.model_dump_json()),
            'property': log['property'],
            'units': log['units'],
            'rows': table['rows'],
            'counts': table['counts'],
            'stop_reason': log['stop_reason'],
            'iterations': len(log['iterations']),
            'dft_runs': sum(len(entry.get('sent_to_dft', [])) for entry in log['iterations']),
            'structures_pk': node.outputs.structures.pk,
            'decision_log_pk': node.outputs.decision_log.pk,
            'plot_pk': node.outputs.plot.pk,
            'model_pk': node.outputs.model.pk if 'model' in node.outputs else None,
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        _print_table(node, table, log)
    if not node.is_finished_ok:
        echo.echo_error(f'hpcai.coordinate<{node.pk}> [{node.exit_status}]: {node.exit_message}')
        raise click.exceptions.Exit(1)


def _discriminator(value: str):
    """The ModelData of ``--discriminator``: ``shipped`` (the one shipped for the default generator), or a pk/uuid of
    a match discriminator; a usage error otherwise."""
    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.models.checkpoint import DEFAULT_DISCRIMINATOR
    from aiida_hpcai.models.discriminator import ARCHITECTURE

    if value == 'shipped':
        try:
            return ModelData.pretrained(DEFAULT_DISCRIMINATOR)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise click.UsageError(f'no match discriminator is shipped ({exc}); pass --discriminator PK') from exc
    node = load_node_of(value, ModelData, '--discriminator')
    if node.architecture != ARCHITECTURE:
        raise click.BadParameter(
            f'ModelData<{node.pk}> is a {node.architecture!r} model, not a match discriminator',
            param_hint='--discriminator',
        )
    return node


def _generator(model, has_candidates: bool):
    """The generator: ``--model``, else the shipped EquiCSP; none (candidates only) when there is none to ship and
    candidates are given."""
    from aiida_hpcai.data.model import ModelData

    if model is not None:
        return load_node_of(model, ModelData, '--model')
    try:
        return shipped_generator()
    except click.UsageError:
        if has_candidates:
            return None
        raise


def _load_candidates(source: str):
    """``--candidates``: a structure file read as every other door reads one (bad structures skipped with their
    reason), stored as one StructureSet; or the pk/UUID of a StructureSet."""
    import pathlib

    from aiida_hpcai.data.structure_set import StructureSet

    from .data import report_skipped

    path = pathlib.Path(source)
    if not path.exists():
        return load_node_of(source, StructureSet, '--candidates')
    structures = StructureSet.from_files([path])
    report_skipped(structures.get_skipped())
    if not structures.count:
        raise click.BadParameter(f'{source} holds no valid structure', param_hint='--candidates')
    structures.label = path.name
    return structures.store()


def _write_output(output, node, table, log) -> None:
    output.mkdir(exist_ok=True)
    node.outputs.structures.write(output / 'results.extxyz')
    (output / 'table.json').write_text(json.dumps(table, indent=2))
    (output / 'decision_log.json').write_text(json.dumps(log, indent=2))
    (output / 'progress.png').write_bytes(node.outputs.plot.get_content(mode='rb'))


def _print_table(node, table, log) -> None:
    from rich.console import Console
    from rich.table import Table

    def number(value):
        return '-' if value is None else f'{value:.4f}'

    console = Console()
    result = Table(title=f'hpcai.coordinate<{node.pk}>: {log["property"]} ({log["units"]})')
    for column in ('id', 'formula', 'source', 'value', 'sigma', 'model', 'node', 'space group'):
        result.add_column(column)
    for row in table['rows']:
        version = '-' if row['model_version'] is None else f'v{row["model_version"]} <{row["model_pk"]}>'
        result.add_row(
            row['id'],
            row['formula'],
            row['source'],
            number(row['value']),
            number(row['sigma']),
            version,
            str(row['node_pk']),
            str(row['spacegroup']),
        )
    console.print(result)
    counts = ', '.join(f'{source} {count}' for source, count in table['counts'].items())
    dft_runs = sum(len(entry.get('sent_to_dft', [])) for entry in log['iterations'])
    console.print(
        f'{len(table["rows"])} result(s) ({counts}); {len(log["iterations"])} iteration(s), {dft_runs} DFT run(s); '
        f'stopped: {log["stop_reason"]}. Decision log: verdi node attributes {node.outputs.decision_log.pk}'
    )
    if 'model' in node.outputs:
        console.print(f'The fine-tuned surrogate: ModelData<{node.outputs.model.pk}> (--surrogate-model takes its pk)')
