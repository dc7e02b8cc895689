"""``aiida-hpcai generate``: crystal structures from a generative model (the ``hpcai.generate`` CalcJob)."""

from __future__ import annotations

import csv
import json

import click
from aiida.cmdline.utils import decorators, echo

from ..models.contract import GENERATE_MODES, N_STRATEGIES, SAMPLING_PRECISIONS
from . import cli
from .params import (
    CODE,
    DEVICE,
    JSON,
    NON_NEGATIVE_INT,
    OUTPUT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SUBMIT,
    ElementList,
    OverridableOption,
    WritablePath,
    load_node_of,
)
from .surrogate import _load_code, _process_reports_to_stderr, _run, _submit

GENERATOR_ARCHITECTURE = 'equicsp'
# --output: a table of ids and formulae, all samples in one extxyz file, or (any other path) a folder of CIFs
TABLE_SUFFIXES = ('.csv',)
EXTXYZ_SUFFIXES = ('.extxyz', '.xyz')

# -- the generator's options, shared with `aiida-hpcai directive` (which overrides the help where it differs) -------
MODE = OverridableOption(
    '--mode',
    type=click.Choice(GENERATE_MODES),
    required=True,
    help='csp: the composition is given; abinitio: the atom count and the elements are sampled too.',
)
COMPOSITIONS = OverridableOption(
    '--composition',
    'compositions',
    multiple=True,
    metavar='FORMULA',
    help='csp: the formula of one cell (Fe2O3 is five atoms); repeatable, each gets -n samples.',
)
SAMPLES = OverridableOption(
    '-n',
    '--samples',
    'n_samples',
    type=POSITIVE_INT,
    required=True,
    help='Samples per composition (csp) or in all (abinitio).',
)
MODEL = OverridableOption(
    '--model',
    metavar='PK_OR_UUID',
    default=None,
    help=f'The {GENERATOR_ARCHITECTURE} ModelData to sample from. Default: the checkpoint shipped with the package.',
)
ELEMENTS = OverridableOption(
    '--elements',
    type=ElementList(),
    default=None,
    help='abinitio: the only elements the samples may hold, e.g. Fe,O; each of them in every sample (the Fe-O '
    'system) unless --require says otherwise.',
)
REQUIRE = OverridableOption(
    '--require',
    'required_elements',
    type=ElementList(none_ok=True),
    default=None,
    help='abinitio: elements every sample holds, e.g. Si (default: all of --elements; none: any of them). '
    'Without --elements the samples hold these and any others of the model.',
)
STEPS = OverridableOption(
    '--steps', type=POSITIVE_INT, default=None, help="Sampler steps (default: the model's diffusion steps)."
)


def shipped_generator():
    """The EquiCSP checkpoint shipped with the package, as one stored node; a usage error when none is shipped."""
    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.models.checkpoint import DEFAULT_GENERATOR

    try:
        return ModelData.pretrained(DEFAULT_GENERATOR)
    except FileNotFoundError:  # the checkpoint is missing from this installation
        pass
    raise click.UsageError(
        f'no {GENERATOR_ARCHITECTURE} checkpoint is shipped with this version; train one with '
        f'`aiida-hpcai train SOURCE --architecture {GENERATOR_ARCHITECTURE}` and pass its pk with --model'
    )


def check_element_restriction(mode, elements, required_elements) -> dict:
    """The sampler parameters ``elements`` and ``required_elements`` of --elements and --require (those given);
    a usage error when they do not apply to ``mode`` or contradict each other."""
    if mode == 'csp' and (elements is not None or required_elements is not None):
        raise click.UsageError('--elements and --require apply to --mode abinitio; csp takes --composition')
    if elements is not None and required_elements and set(required_elements) - set(elements):
        raise click.UsageError(
            f'--require {",".join(required_elements)}: not all among --elements {",".join(elements)}'
        )
    given = {'elements': elements, 'required_elements': required_elements}
    return {key: value for key, value in given.items() if value is not None}


def _check_output(output):
    """An output path that exists must be of the kind its suffix names (a folder of CIFs otherwise)."""
    if output is None or output.suffix in TABLE_SUFFIXES + EXTXYZ_SUFFIXES:
        return
    if output.exists() and not output.is_dir():
        raise click.BadParameter(
            f'{output} is a file: give a .csv or .extxyz file, or a folder for CIF files', param_hint='--output'
        )


def generated_rows(structures) -> list[dict]:
    """One dict per sample asked: id, formula (of the cell), status (``valid``/``invalid``), reason."""
    rows = [{'id': identifier, 'status': 'valid', 'reason': ''} for identifier in structures.ids]
    rows += [
        {'id': row['id'], 'status': 'invalid', 'reason': f'{row["reason"]}: {row["detail"]}'.rstrip(': ')}
        for row in structures.get_skipped()
    ]
    return [{'id': row['id'], 'formula': row['id'].split('#')[0], **row} for row in rows]


def write_output(output, structures, rows) -> None:
    if output.suffix in TABLE_SUFFIXES:
        with output.open('w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=['id', 'formula', 'status', 'reason'])
            writer.writeheader()
            writer.writerows(rows)
    elif output.suffix in EXTXYZ_SUFFIXES:
        structures.write(output)
    else:
        output.mkdir(exist_ok=True)
        for identifier, structure in zip(structures.ids, structures):
            structure.to(filename=str(output / f'{identifier.replace("#", "_")}.cif'))


@cli.command('generate')
@MODE()
@COMPOSITIONS()
@SAMPLES()
@click.option(
    '--n-strategy',
    type=click.Choice(N_STRATEGIES),
    default=None,
    help="abinitio: how the atom count is drawn: from the training set's distribution (dataset, the default), "
    'uniform up to the largest training cell, or hybrid (dataset for the first --switch samples, then uniform).',
)
@click.option('--switch', type=NON_NEGATIVE_INT, default=None, help='hybrid: samples drawn by dataset (default half).')
@ELEMENTS()
@REQUIRE()
@MODEL()
@STEPS()
@click.option('--step-lr', type=POSITIVE_FLOAT, default=None, help='Langevin corrector step size (1e-5).')
@click.option('--seed', type=NON_NEGATIVE_INT, default=None, help='Random seed (0): the same seed, the same samples.')
@click.option('--batch-size', type=POSITIVE_INT, default=None, help='Crystals sampled at once (64).')
@click.option(
    '--precision',
    type=click.Choice(SAMPLING_PRECISIONS),
    default=None,
    help="Precision of the network's products (float32); bfloat16 is faster on CPUs with bfloat16 instructions.",
)
@CODE()
@DEVICE()
@JSON()
@OUTPUT(
    type=WritablePath(folder_ok=True),
    help='Also write the results: a .csv of ids, formulae and status, an .extxyz of the valid structures, or '
    'a folder (made if missing) of one CIF per valid structure. Checked before anything runs.',
)
@SUBMIT()
@decorators.with_dbenv()
def generate(
    mode,
    compositions,
    n_samples,
    n_strategy,
    switch,
    elements,
    required_elements,
    model,
    steps,
    step_lr,
    seed,
    batch_size,
    precision,
    code_label,
    device,
    as_json,
    output,
    submit,
):
    """Generate crystal structures with EquiCSP: for given compositions (--mode csp) or ab initio.

    \b
    aiida-hpcai generate --mode csp --composition Fe2O3 -n 20
    aiida-hpcai generate --mode abinitio -n 100 --output generated/
    aiida-hpcai generate --mode abinitio -n 20 --elements Fe,O

    Runs the hpcai.generate CalcJob: the valid samples become one StructureSet (ids <formula>#<k>), the
    others are listed with the reason they are no crystal.
    """
    from aiida import orm

    from aiida_hpcai.calculations.generate import GenerateCalculation
    from aiida_hpcai.data.model import ModelData

    if mode == 'csp' and not compositions:
        raise click.UsageError('--mode csp needs at least one --composition')
    if mode == 'abinitio' and compositions:
        raise click.UsageError('--composition applies to --mode csp; ab initio samples the composition')
    element_parameters = check_element_restriction(mode, elements, required_elements)
    if submit and output is not None:
        raise click.UsageError('--output writes the results, which --submit does not wait for')
    _check_output(output)

    parameters = {'mode': mode}
    if mode == 'csp':
        parameters['compositions'] = dict.fromkeys(compositions, n_samples)
    else:
        parameters['n_samples'] = n_samples
    optional = {
        'n_strategy': n_strategy,
        'switch': switch,
        **element_parameters,
        'steps': steps,
        'step_lr': step_lr,
        'seed': seed,
        'batch_size': batch_size,
        'precision': precision,
    }
    parameters.update({key: value for key, value in optional.items() if value is not None})
    inputs = {
        'code': _load_code(code_label),
        'model': shipped_generator() if model is None else load_node_of(model, ModelData, '--model'),
        'parameters': orm.Dict(parameters),
        'device': orm.Str(device),
    }

    if submit:
        _submit(GenerateCalculation, inputs, 'hpcai.generate', as_json)
        return

    with _process_reports_to_stderr(enabled=as_json):
        node = _run(GenerateCalculation, inputs)
    if 'structures' not in node.outputs:
        echo.echo_critical(
            f'GenerateCalculation<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}'
        )

    structures, summary = node.outputs.structures, node.outputs.summary.get_dict()
    rows = generated_rows(structures)
    if output is not None:
        write_output(output, structures, rows)
    if as_json:
        payload = {
            'process_pk': node.pk,
            'structures_pk': structures.pk,
            'exit_status': node.exit_status,
            **{key: summary.get(key) for key in ('mode', 'seed', 'steps', 'n_requested', 'n_valid', 'n_invalid')},
            'invalid_reasons': summary.get('invalid_reasons'),
            'rows': rows,
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        _print_table(rows, summary, node, structures)
    if not node.is_finished_ok:  # NaN in some samples: the others are above, the job itself failed
        echo.echo_error(f'GenerateCalculation<{node.pk}> [{node.exit_status}]: {node.exit_message}')
        raise click.exceptions.Exit(1)


def _print_table(rows, summary, node, structures) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f'{summary["mode"]} samples, seed {summary["seed"]}, {summary["steps"]} steps')
    for column in ('id', 'formula', 'status'):
        table.add_column(column)
    for row in rows:
        table.add_row(row['id'], row['formula'], f'invalid: {row["reason"]}' if row['reason'] else row['status'])
    console = Console()
    console.print(table)
    console.print(
        f'{summary["n_valid"]} of {summary["n_requested"]} valid. GenerateCalculation<{node.pk}> '
        f'(structures: StructureSet<{structures.pk}>)'
    )
