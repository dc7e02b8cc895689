"""``aiida-hpcai directive``: generate, screen, rank and compute (the ``hpcai.directive`` WorkChain)."""

from __future__ import annotations

import json

import click
from aiida.cmdline.utils import decorators, echo

from ..models.contract import N_STRATEGIES
from . import cli
from .dft import DFT_CODE, DFT_OVERRIDES, DFT_PROTOCOL, ENGINE, MAX_CONCURRENT, _parse_overrides, dft_batch_inputs
from .generate import (
    COMPOSITIONS,
    ELEMENTS,
    MODE,
    MODEL,
    REQUIRE,
    SAMPLES,
    STEPS,
    check_element_restriction,
    shipped_generator,
)
from .params import (
    CODE,
    DEVICE,
    JSON,
    NON_NEGATIVE_INT,
    OUTPUT,
    POSITIVE_INT,
    SUBMIT,
    WritablePath,
    load_node_of,
)
from .surrogate import DEFAULT_TARGET, _load_code, _process_reports_to_stderr, _run, _submit, load_models


@cli.command('directive')
@MODE(help='csp (composition given) or abinitio.')
@COMPOSITIONS(help='csp: the formula of one cell; repeatable.')
@SAMPLES(help='Samples per batch (per composition in csp).')
@click.option('--batches', type=POSITIVE_INT, default=1, show_default=True, help='Rounds of generation.')
@click.option(
    '--n-strategy',
    'n_strategies',
    type=click.Choice(N_STRATEGIES),
    multiple=True,
    help='abinitio: the atom-count strategy; repeat it (--n-strategy dataset --n-strategy uniform) to run each '
    'batch once per strategy and compare their valid rates. Default: dataset.',
)
@ELEMENTS()
@REQUIRE()
@MODEL()
@STEPS()
@click.option('--seed', type=NON_NEGATIVE_INT, default=None, help='Seed of the first job (0); job j uses seed + j.')
@click.option(
    '--screening',
    callback=_parse_overrides,
    default=None,
    help='Screening parameters as YAML/JSON text or file, e.g. "{max_elements: 4, symprec: 0.05}".',
)
@click.option(
    '--surrogate-model',
    'surrogate_models',
    multiple=True,
    metavar='PK_OR_UUID',
    help='ModelData ranking the valid structures (repeatable: an ensemble). Default: the model shipped for --target.',
)
@click.option('--target', default=DEFAULT_TARGET, show_default=True, help='Property the surrogate ranks by.')
@click.option('--no-surrogate', is_flag=True, help='Do not rank: the first valid structures go to DFT.')
@click.option(
    '--rank-by', type=click.Choice(('lowest', 'highest')), default='lowest', show_default=True, help='Best first.'
)
@click.option(
    '--top-k', type=NON_NEGATIVE_INT, default=0, show_default=True, help='DFT on this many best ranked; 0: no DFT.'
)
@click.option(
    '--dft-max-atoms',
    type=POSITIVE_INT,
    default=None,
    help='Only cells of at most this many atoms go to DFT (the ranking passes over larger ones).',
)
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
    help='A folder (made if missing) for the plots (PNG), statistics.json and valid.extxyz. Checked before running.',
)
@SUBMIT()
@decorators.with_dbenv()
def directive(
    mode,
    compositions,
    n_samples,
    batches,
    n_strategies,
    elements,
    required_elements,
    model,
    steps,
    seed,
    screening,
    surrogate_models,
    target,
    no_surrogate,
    rank_by,
    top_k,
    dft_max_atoms,
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
    """Generate crystals in batches, screen them, rank the valid ones with a surrogate, run DFT on the top K.

    \b
    aiida-hpcai directive --mode abinitio -n 50 --batches 4 --n-strategy dataset --n-strategy uniform
    aiida-hpcai directive --mode csp --composition Fe2O3 -n 20 --top-k 2 --protocol fast --output run/
    aiida-hpcai directive --mode abinitio -n 50 --elements Si,O --top-k 2

    Runs the hpcai.directive WorkChain and prints per batch the samples generated, the crystals and the
    valid ones after screening, then the DFT results of the top K.
    """
    from aiida import orm

    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.workchains.directive import DirectiveWorkChain

    if mode == 'csp' and not compositions:
        raise click.UsageError('--mode csp needs at least one --composition')
    if mode == 'abinitio' and compositions:
        raise click.UsageError('--composition applies to --mode csp; ab initio samples the composition')
    if mode == 'csp' and n_strategies:
        raise click.UsageError('--n-strategy applies to --mode abinitio')
    element_parameters = check_element_restriction(mode, elements, required_elements)
    if submit and output is not None:
        raise click.UsageError('--output writes the results, which --submit does not wait for')
    if output is not None and output.exists() and not output.is_dir():
        raise click.BadParameter(f'{output} is a file: give a folder', param_hint='--output')

    parameters = {'mode': mode}
    if mode == 'csp':
        parameters['compositions'] = dict.fromkeys(compositions, n_samples)
    else:
        parameters['n_samples'] = n_samples
    parameters.update(element_parameters)
    parameters.update({key: value for key, value in (('steps', steps), ('seed', seed)) if value is not None})
    code = _load_code(code_label)
    inputs = {
        'generate': {
            'code': code,
            'model': shipped_generator() if model is None else load_node_of(model, ModelData, '--model'),
            'parameters': orm.Dict(parameters),
            'device': orm.Str(device),
        },
        'batches': orm.Int(batches),
        'rank_by': orm.Str(rank_by),
        'top_k': orm.Int(top_k),
    }
    if n_strategies:
        inputs['n_strategies'] = orm.List(list(dict.fromkeys(n_strategies)))
    if screening is not None:
        inputs['screening'] = orm.Dict(screening)
    if not no_surrogate:
        inputs['surrogate'] = {
            'models': load_models(surrogate_models, target),
            'predict': {'code': code, 'device': orm.Str(device)},
        }
    if top_k:
        inputs['dft_batch'] = dft_batch_inputs(engine, protocol, dft_overrides, dft_code_label, max_concurrent)
        if dft_max_atoms:
            inputs['dft_max_atoms'] = orm.Int(dft_max_atoms)

    if submit:
        _submit(DirectiveWorkChain, inputs, 'hpcai.directive', as_json)
        return

    with _process_reports_to_stderr(enabled=as_json):
        node = _run(DirectiveWorkChain, inputs)
    if 'statistics' not in node.outputs:
        echo.echo_critical(f'hpcai.directive<{node.pk}> failed [{node.exit_status}]: {node.exit_message}')
    statistics = node.outputs.statistics.get_dict()
    dft_rows = _dft_rows(node)
    if output is not None:
        _write_output(output, node, statistics)
    if as_json:
        payload = {
            'process_pk': node.pk,
            'exit_status': node.exit_status,
            'exit_message': node.exit_message,
            **{
                f'{name}_pk': node.outputs[name].pk
                for name in ('generated_structures', 'valid_structures', 'selected_structures')
                if name in node.outputs
            },
            'statistics': statistics,
            'dft': dft_rows,
            'plots': {name: picture.pk for name, picture in node.outputs.plots.items()},
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        _print_tables(node, statistics, dft_rows)
    if not node.is_finished_ok:
        echo.echo_error(f'hpcai.directive<{node.pk}> [{node.exit_status}]: {node.exit_message}')
        raise click.exceptions.Exit(1)


def _dft_rows(node) -> list[dict]:
    """Per structure sent to DFT: id, status and the DFT values (from ``dft_batch``'s results)."""
    if 'dft' not in node.outputs:
        return []
    fields = (
        'id',
        'status',
        'formation_energy_per_atom',
        'formation_energy_per_atom_uncorrected',
        'band_gap',
        'exit_status',
        'exit_message',
    )
    return [{key: row.get(key) for key in fields} for row in node.outputs.dft.results.get('structures', [])]


def _write_output(output, node, statistics) -> None:
    output.mkdir(exist_ok=True)
    for name, picture in node.outputs.plots.items():
        (output / f'{name}.png').write_bytes(picture.get_content(mode='rb'))
    (output / 'statistics.json').write_text(json.dumps(statistics, indent=2))
    if 'valid_structures' in node.outputs:
        node.outputs.valid_structures.write(output / 'valid.extxyz')


def _print_tables(node, statistics, dft_rows) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f'hpcai.directive<{node.pk}>: batches')
    for column in ('job', 'batch', 'N strategy', 'generated', 'crystals', 'valid', 'rejected', 'wall (s)'):
        table.add_column(column)
    for row in statistics['batches']:
        rejected = ', '.join(f'{reason} {count}' for reason, count in row['rejected'].items()) or '-'
        table.add_row(
            *map(str, (row['job'], row['batch'], row['n_strategy'] or '-', row['generated'], row['crystals'])),
            str(row['valid']),
            rejected,
            f'{row["wall_seconds"]:.1f}',
        )
    console.print(table)
    totals = statistics['totals']
    console.print(f'{totals["valid"]} valid of {totals["generated"]} generated ({100 * totals["valid_rate"]:.1f}%)')
    if dft_rows:
        table = Table(title='DFT of the top ranked')
        for column in ('id', 'status', 'formation energy (eV/atom)', 'band gap (eV)'):
            table.add_column(column)
        for row in dft_rows:
            values = [row.get(key) for key in ('formation_energy_per_atom', 'band_gap')]
            cells = ['-' if value is None else f'{value:.4f}' for value in values]
            status = (
                row['status'] if row['status'] == 'finished_ok' else f'{row["status"]}: {row.get("exit_message") or ""}'
            )
            table.add_row(row['id'], status, *cells)
        console.print(table)
    outputs = ', '.join(f'{name} <{node.outputs[name].pk}>' for name in ('valid_structures',) if name in node.outputs)
    console.print(f'plots: {", ".join(sorted(node.outputs.plots))}. {outputs}')
