"""``verdi data hpcai.structures`` and ``verdi data hpcai.model`` (entry points ``aiida.cmdline.data``)."""

from __future__ import annotations

import json
import sys

import click
from aiida.cmdline.params import arguments, types
from aiida.cmdline.utils import decorators, echo

from .data import parse_ids
from .params import NON_NEGATIVE_INT, HpcaiGroup, WritablePath


def _list_nodes(data_class, columns):
    """A table on a terminal (long values shortened); tab-separated full values when piped or redirected."""
    from aiida import orm
    from rich.console import Console
    from rich.table import Table

    query = orm.QueryBuilder().append(
        data_class, project=['id', 'label', 'ctime'] + [f'attributes.{c}' for c in columns]
    )
    header = ['pk', 'label', 'created'] + list(columns)
    rows = [
        [str(row[0]), row[1] or '', row[2].strftime('%Y-%m-%d %H:%M'), *[_text(v) for v in row[3:]]]
        for row in query.order_by({data_class: {'id': 'asc'}}).all()
    ]
    if not sys.stdout.isatty():
        for row in [header, *rows]:
            click.echo('\t'.join(row))
        return
    table = Table()
    for name in header:
        table.add_column(name)
    for row in rows:
        table.add_row(*[_short(cell) for cell in row])
    Console().print(table)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + '...'


@click.group('hpcai.structures', cls=HpcaiGroup)
def structures():
    """Inspect and export StructureSet (hpcai.structures) nodes."""


@structures.command('list')
@decorators.with_dbenv()
def structures_list():
    """List every StructureSet with its size and labels."""
    from aiida_hpcai.data.structure_set import StructureSet

    _list_nodes(StructureSet, ['count', 'label_names', 'skipped_count'])


@structures.command('show')
@arguments.DATUM(type=types.DataParamType(sub_classes=('aiida.data:hpcai.structures',)))
@click.option('--rows', type=NON_NEGATIVE_INT, default=10, show_default=True, help='Show the first ROWS structures.')
@click.option(
    '--ids',
    callback=parse_ids,
    default=None,
    metavar='FILE_OR_LIST',
    help='Show these structures (comma list or file).',
)
@click.option('--skipped', 'show_skipped', is_flag=True, help='List every structure refused when the set was built.')
@decorators.with_dbenv()
def structures_show(datum, rows, ids, show_skipped):
    """Show counts, elements, labels and skip reasons of a StructureSet, then its first rows (id, formula, labels)."""
    from rich.console import Console

    from .data import print_structure_set

    console = Console(width=None if sys.stdout.isatty() else 200)
    print_structure_set(datum, console, rows=rows, ids=ids)
    if show_skipped:
        for row in datum.get_skipped():
            click.echo(f'{row["id"]}\t{row["reason"]}\t{row.get("detail", "")}')


@structures.command('export')
@arguments.DATUM(type=types.DataParamType(sub_classes=('aiida.data:hpcai.structures',)))
@click.argument('output', type=WritablePath())
@decorators.with_dbenv()
def structures_export(datum, output):
    """Write the set to OUTPUT: .npz (our format) or .extxyz (ids and labels in each frame)."""
    datum.write(output)
    echo.echo_success(f'wrote {datum.count} structures to {output}')


@click.group('hpcai.model', cls=HpcaiGroup)
def model():
    """Inspect and export ModelData (hpcai.model) checkpoints."""


@model.command('list')
@decorators.with_dbenv()
def model_list():
    """List every ModelData with its architecture, target and sha256."""
    from aiida_hpcai.data.model import ModelData

    _list_nodes(ModelData, ['architecture', 'target', 'units', 'sha256'])


@model.command('show')
@arguments.DATUM(type=types.DataParamType(sub_classes=('aiida.data:hpcai.model',)))
@decorators.with_dbenv()
def model_show(datum):
    """Print the metadata of a ModelData as JSON."""
    attributes = datum.base.attributes.all
    click.echo(
        json.dumps(
            {'pk': datum.pk, 'uuid': datum.uuid, 'filename': datum.filename, **attributes}, indent=2, default=str
        )
    )


@model.command('export')
@arguments.DATUM(type=types.DataParamType(sub_classes=('aiida.data:hpcai.model',)))
@click.argument('output', type=WritablePath(folder_ok=True))
@decorators.with_dbenv()
def model_export(datum, output):
    """Write the checkpoint to OUTPUT (a file or folder) after checking its sha256."""
    from aiida_hpcai.data.model import ChecksumMismatchError

    try:
        path = datum.export(output)
    except ChecksumMismatchError as exc:
        raise click.ClickException(f'{exc}: the stored file is damaged, nothing written') from exc
    echo.echo_success(f'wrote {path} (sha256 {datum.sha256} verified)')
