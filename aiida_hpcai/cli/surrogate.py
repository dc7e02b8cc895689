"""``aiida-hpcai train`` and ``aiida-hpcai predict``: the surrogate pattern from the command line.

Both run the real processes (``hpcai.train`` CalcJob, ``hpcai.surrogate`` WorkChain) in this
shell with ``run_get_node``, so every result is in the profile's provenance graph.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import pathlib
import sys

import click
from aiida.cmdline.utils import decorators, echo

from ..models import contract, registry
from ..models.uncertainty import UNCERTAINTY_METHODS
from . import cli
from .params import (
    CODE,
    DEVICE,
    JSON,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    OUTPUT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    load_node_of,
)

DEFAULT_TARGET = 'formation_energy_per_atom'
TRAINABLE = sorted(name for name, entry in registry.architectures().items() if entry.supports('train'))


def read_structure_files(paths):
    """The files as one StructureSet; every refused structure reported, none readable a usage error."""
    from aiida_hpcai.data.structure_set import StructureSet

    from .data import report_skipped

    structures = StructureSet.from_files(paths)
    report_skipped(structures.get_skipped())
    if not structures.count:
        raise click.BadParameter(f'no valid structure in {", ".join(map(str, paths))}', param_hint='FILES')
    return structures


def load_models(identifiers, target: str) -> dict:

    from aiida_hpcai.data.model import ModelData

    if not identifiers:
        try:
            return {'pretrained': ModelData.pretrained(target)}
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise click.UsageError(f'{exc}; pass --model with a ModelData pk or uuid') from exc
    models = {}
    for identifier in identifiers:
        node = load_node_of(identifier, ModelData, '--model')
        models[f'model_{node.pk}'] = node
    return models


def prediction_rows(structures, predictions) -> list[dict]:
    """One dict per structure: id, formula, mean, sigma, confident, status, reason (None for missing numbers)."""
    from pymatgen.core import Composition

    def number(value):
        return float(value) if math.isfinite(value) else None

    arrays = {name: predictions.get_array(name) for name in ('mean', 'sigma', 'confident', 'status', 'reason')}
    target = predictions.base.attributes.get('target', None)
    reference = structures.labels.get(target)
    rows = []
    for index, (identifier, formula) in enumerate(zip(structures.ids, structures.arrays.formulae())):
        row = {
            'id': identifier,
            'formula': Composition(formula).reduced_formula,
            'mean': number(arrays['mean'][index]),
            'sigma': number(arrays['sigma'][index]),
            'confident': bool(arrays['confident'][index]),
            'status': str(arrays['status'][index]),
            'reason': str(arrays['reason'][index]),
        }
        if reference is not None:
            row['reference'] = number(reference[index])
        rows.append(row)
    return rows


def skipped_rows(structures) -> list[dict]:
    """The structures refused before prediction, as rows of the same shape (status ``skipped``)."""
    return [
        {
            'id': row['id'],
            'formula': '',
            'mean': None,
            'sigma': None,
            'confident': False,
            'status': 'skipped',
            'reason': f'{row["reason"]}: {row["detail"]}' if row.get('detail') else row['reason'],
        }
        for row in structures.get_skipped()
    ]


@cli.command('predict')
@click.argument('files', nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option(
    '--model',
    'models',
    multiple=True,
    metavar='PK_OR_UUID',
    help='ModelData node to predict with (repeatable: several form an ensemble). '
    'Default: the pretrained model shipped for --target.',
)
@click.option(
    '--target',
    default=DEFAULT_TARGET,
    show_default=True,
    help='Property, used to pick the pretrained model when no --model is given.',
)
@click.option(
    '--threshold',
    type=NON_NEGATIVE_FLOAT,
    default=None,
    help='Confident when sigma <= this (model units). Default: per target (0.12 eV/atom for formation '
    'energy, 0.6 eV for band gap).',
)
@CODE()
@DEVICE()
@click.option(
    '--batch-size',
    type=POSITIVE_INT,
    default=None,
    help='Structures per batch (default of the program: 24 on a CPU, 64 on a GPU).',
)
@click.option(
    '--uncertainty',
    type=click.Choice(UNCERTAINTY_METHODS),
    default=None,
    help='How sigma is estimated (default of the program: ensemble, or MC dropout for one member); '
    'mc_dropout_readout costs about one plain prediction.',
)
@click.option(
    '--mc-samples', type=POSITIVE_INT, default=None, help='Samples per member for the MC-dropout methods (10).'
)
@JSON()
@OUTPUT(help='Also write the rows to this CSV file (its folder is checked before anything runs).')
@decorators.with_dbenv()
def predict(files, models, target, threshold, code_label, device, batch_size, uncertainty, mc_samples, as_json, output):
    """Predict a property with an uncertainty for the structures in FILES (CIF, POSCAR, extxyz).

    Runs the hpcai.surrogate WorkChain: structures whose sigma exceeds the threshold, or that the
    model cannot handle, are reported as not confident (they would need DFT).
    """
    from aiida import orm

    from aiida_hpcai.workchains.surrogate import SurrogateWorkChain

    model_nodes = load_models(models, target)
    code = _load_code(code_label)
    structures = read_structure_files(files)
    predict_inputs = {'code': code, 'device': orm.Str(device)}
    parameters = {
        key: value
        for key, value in (('batch_size', batch_size), ('uncertainty', uncertainty), ('mc_samples', mc_samples))
        if value is not None
    }
    if parameters:
        predict_inputs['parameters'] = orm.Dict(parameters)
    inputs = {'structures': structures, 'models': model_nodes, 'predict': predict_inputs}
    if threshold is not None:
        inputs['sigma_threshold'] = orm.Float(threshold)

    with _process_reports_to_stderr(enabled=as_json):
        node = _run(SurrogateWorkChain, inputs, poll_interval=PREDICT_POLL_INTERVAL)
    if not node.is_finished_ok:
        echo.echo_critical(
            f'SurrogateWorkChain<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}'
        )

    summary = node.outputs.summary.get_dict()
    rows = prediction_rows(structures, node.outputs.classified_predictions)
    rows += [{**dict.fromkeys(rows[0]), **row} for row in skipped_rows(structures)]
    if output is not None:
        with output.open('w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if as_json:
        payload = {
            'process_pk': node.pk,
            'target': summary['target'],
            'units': summary['units'],
            'sigma_threshold': summary['sigma_threshold'],
            'rows': rows,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    _print_prediction_table(rows, summary, node)


@contextlib.contextmanager
def _process_reports_to_stderr(enabled: bool):
    """Send the processes' log lines (``Report: ...``) to stderr, so that stdout holds only the JSON."""
    from aiida.cmdline.utils.log import CliHandler

    def to_stderr(record):
        record.err = True
        return True

    handlers = [handler for handler in logging.getLogger('aiida').handlers if isinstance(handler, CliHandler)]
    if enabled:
        for handler in handlers:
            handler.addFilter(to_stderr)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(to_stderr)


def _print_prediction_table(rows, summary, node) -> None:
    from rich.console import Console
    from rich.table import Table

    units = summary.get('units') or ''
    table = Table(title=f'{summary.get("target")} ({units}), confident when sigma <= {summary["sigma_threshold"]}')
    with_reference = 'reference' in rows[0]
    for column in ('id', 'formula', 'mean ± sigma', 'confident', 'status') + (('reference',) if with_reference else ()):
        table.add_column(column)
    for row in rows:
        value = '-' if row['mean'] is None else f'{row["mean"]:.4f} ± {row["sigma"]:.4f}'
        # A skipped structure's detail was printed above the table; its reason alone keeps the column narrow.
        reason = row['reason'].split(':')[0] if row['status'] == 'skipped' else row['reason']
        status = row['status'] if not reason else f'{row["status"]}: {reason}'
        cells = [row['id'], row['formula'], value, 'yes' if row['confident'] else 'no', status]
        if with_reference:
            cells.append('-' if row['reference'] is None else f'{row["reference"]:.4f}')
        table.add_row(*cells)
    console = Console()
    console.print(table)
    skipped = sum(row['status'] == 'skipped' for row in rows)
    console.print(
        f'{summary["n_confident"]} of {summary["n_structures"]} confident, {summary["n_needs_dft"]} need '
        f'DFT{f", {skipped} skipped before prediction" if skipped else ""}. SurrogateWorkChain<{node.pk}> '
        f'(needs_dft: StructureSet<{node.outputs.needs_dft.pk}>)'
    )


@cli.command('train')
@click.argument('source')
@click.option(
    '--architecture',
    type=click.Choice(TRAINABLE),
    default=None,
    help="Model architecture (default crysformer, or the parent's); equicsp is a generator and takes no --target.",
)
@click.option('--target', default=None, help='Label to train on (a label of the set, or a column of the file).')
@click.option('--units', default=None, help='Units of the target, recorded in the model (e.g. eV/atom).')
@click.option(
    '--config',
    'model_config',
    type=click.Choice(['tiny', 'cpu', 'paper']),
    default='cpu',
    show_default=True,
    help='Model size: tiny (tests), cpu (a laptop), paper (the published model, GPU).',
)
@click.option('--epochs', type=POSITIVE_INT, default=None, help='Training epochs (program default if omitted).')
@click.option(
    '--ensemble-size', type=POSITIVE_INT, default=None, help='Ensemble members trained (they give the sigma).'
)
@click.option('--batch-size', type=POSITIVE_INT, default=None)
@click.option('--learning-rate', type=POSITIVE_FLOAT, default=None)
@click.option('--seed', type=NON_NEGATIVE_INT, default=None)
@click.option('--max-minutes', type=POSITIVE_FLOAT, default=None, help='Stop training after this many minutes.')
@click.option('--patience', type=POSITIVE_INT, default=None, help='Early stopping after this many epochs without gain.')
@click.option('--parent', default=None, metavar='PK_OR_UUID', help='ModelData to fine-tune instead of starting fresh.')
@click.option('--limit', type=POSITIVE_INT, default=None, help='When SOURCE is a file: read at most this many rows.')
@CODE()
@DEVICE()
@decorators.with_dbenv()
def train(
    source,
    architecture,
    target,
    units,
    model_config,
    epochs,
    ensemble_size,
    batch_size,
    learning_rate,
    seed,
    max_minutes,
    patience,
    parent,
    limit,
    code_label,
    device,
):
    """Train a model on SOURCE: a StructureSet (pk or uuid) or a dataset file the loaders read.

    Runs the hpcai.train CalcJob and prints the metrics and the pk of the new ModelData.
    """
    from aiida import orm

    from aiida_hpcai.calculations.train import TrainCalculation

    if target is None and registry.get(architecture or contract.DEFAULT_ARCHITECTURE).requires_target:
        raise click.UsageError(f'--target is required to train a {architecture or contract.DEFAULT_ARCHITECTURE}')
    structures = _load_structure_source(source, target, limit)
    parameters = {'model_config': model_config}
    optional = {
        'architecture': architecture,
        'target': target,
        'units': units,
        'epochs': epochs,
        'ensemble_size': ensemble_size,
        'batch_size': batch_size,
        'learning_rate': learning_rate,
        'seed': seed,
        'max_minutes': max_minutes,
        'patience': patience,
    }
    parameters.update({key: value for key, value in optional.items() if value is not None})
    inputs = {
        'code': _load_code(code_label),
        'structures': structures,
        'parameters': orm.Dict(parameters),
        'device': orm.Str(device),
    }
    if parent is not None:
        from aiida_hpcai.data.model import ModelData

        inputs['parent_model'] = load_node_of(parent, ModelData, '--parent')

    echo.echo_report(
        f'training on StructureSet<{structures.pk}> ({structures.count} structures)'
        + (f', target {target}' if target else '')
    )
    node = _run(TrainCalculation, inputs)
    if not node.is_finished_ok:
        echo.echo_critical(
            f'TrainCalculation<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}'
        )
    _print_metrics(node.outputs.metrics.get_dict())
    model = node.outputs.model
    echo.echo_success(f'ModelData<{model.pk}> ({model.uuid}) from TrainCalculation<{node.pk}>')


#: Seconds between the checks a WorkChain run by ``predict`` makes of the child it waits for. A process run in
#: this shell (``aiida.engine.run_get_node``: a runner without a broker connection) learns that its child ended
#: only from these checks, every ``runner.poll.interval`` of the profile (1 s on a ``verdi presto`` profile): about
#: 0.5 s of waiting per child, twice per call (the job, then ``hpcai.predict_base``), as long as all the rest
#: of the work after a small job (benchmarks/predict_fixed_cost.py). A check is one query of the child's state
#: (~0.5 ms of CPU), and ``predict`` has two processes waiting at a time.
PREDICT_POLL_INTERVAL = 0.1


def _run(process_class, inputs, poll_interval: float | None = None):
    """Run the process here; inputs it refuses are reported as a one-line error, not a traceback.

    ``poll_interval``: seconds between the checks of a waiting process for its child's end (default: the
    profile's ``runner.poll.interval``).
    """
    from aiida.engine import run_get_node
    from aiida.manage import get_manager
    from plumpy.ports import PortValidationError

    try:
        if poll_interval is None:
            return run_get_node(process_class, **inputs)[1]
        # as run_get_node does (a runner of its own, no broker connection), with this poll interval
        runner = get_manager().create_runner(communicator=None, poll_interval=poll_interval)
        return runner.run_get_node(process_class, **inputs)[1]
    except ValueError as exc:  # plumpy raises ValueError(PortValidationError) for refused inputs
        if not (exc.args and isinstance(exc.args[0], PortValidationError)):
            raise
        echo.echo_critical(f'{process_class.__name__} refused its inputs: {exc.args[0]}')


def _submit(process_class, inputs, name: str, as_json: bool = False) -> None:
    """Submit the process to the daemon and say how to follow it (a JSON line with ``--json``)."""
    from aiida.engine import submit

    node = submit(process_class, **inputs)
    if as_json:
        click.echo(json.dumps({'process_pk': node.pk, 'submitted': True}))
    else:
        echo.echo_success(f'submitted {name}<{node.pk}>; follow it with `verdi process status {node.pk}`')


def _load_structure_source(source: str, target: str, limit: int | None):

    from aiida_hpcai.data.structure_set import StructureSet

    from .data import report_skipped

    if pathlib.Path(source).exists():
        structures = StructureSet.from_file(source, limit=limit, targets=[target] if target else [])
        report_skipped(structures.get_skipped())
        if not structures.count:
            raise click.BadParameter(f'no structure of {source} has the label {target!r}', param_hint='SOURCE')
        structures.label = pathlib.Path(source).name
        return structures.store()
    node = load_node_of(source, StructureSet, 'SOURCE')
    if target and target not in node.label_names:
        raise click.BadParameter(
            f'StructureSet<{node.pk}> has no label {target!r}; its labels: {", ".join(node.label_names) or "none"}',
            param_hint='--target',
        )
    return node


def _load_code(label: str):
    from aiida import orm
    from aiida.common import exceptions

    try:
        return orm.load_code(label)
    except (exceptions.NotExistent, exceptions.MultipleObjectsError) as exc:
        raise click.UsageError(f'code {label!r}: {exc}. Run `aiida-hpcai setup` or pass --code.') from exc


def _print_metrics(metrics: dict) -> None:
    """Numbers of the metrics, nested dicts flattened to ``split.name`` (histories are left out)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title='metrics', show_header=False)
    for key, value in _flatten(metrics):
        table.add_row(key, f'{value:.6g}' if isinstance(value, float) else str(value))
    Console(file=sys.stdout).print(table)


def _flatten(values: dict, prefix: str = ''):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f'{prefix}{key}.')
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f'{prefix}{key}', value
