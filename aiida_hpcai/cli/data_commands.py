"""``verdi data hpcai.structures`` and ``verdi data hpcai.model`` (entry points ``aiida.cmdline.data``)."""

from __future__ import annotations

import json
import pathlib

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.params import arguments, types
from aiida.cmdline.utils import decorators, echo


def _list_nodes(data_class, columns):
    from aiida import orm
    from rich.console import Console
    from rich.table import Table

    query = orm.QueryBuilder().append(
        data_class, project=['id', 'label', 'ctime'] + [f'attributes.{c}' for c in columns]
    )
    table = Table()
    for name in ['pk', 'label', 'created'] + list(columns):
        table.add_column(name)
    for row in query.order_by({data_class: {'id': 'asc'}}).all():
        table.add_row(str(row[0]), row[1] or '', row[2].strftime('%Y-%m-%d %H:%M'), *[_short(v) for v in row[3:]])
    Console().print(table)


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + '...'


@click.group('hpcai.structures', cls=VerdiCommandGroup)
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
@decorators.with_dbenv()
def structures_show(datum):
    """Show counts, elements, labels and skip reasons of a StructureSet."""
    from rich.console import Console

    from .data import print_structure_set

    print_structure_set(datum, Console())


@structures.command('export')
@arguments.DATUM(type=types.DataParamType(sub_classes=('aiida.data:hpcai.structures',)))
@click.argument('output', type=click.Path(dir_okay=False, path_type=pathlib.Path))
@decorators.with_dbenv()
def structures_export(datum, output):
    """Write the set to OUTPUT: .npz (our format) or .extxyz (ids and labels in each frame)."""
    datum.write(output)
    echo.echo_success(f'wrote {datum.count} structures to {output}')


@click.group('hpcai.model', cls=VerdiCommandGroup)
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
@click.argument('output', type=click.Path(path_type=pathlib.Path))
@decorators.with_dbenv()
def model_export(datum, output):
    """Write the checkpoint to OUTPUT (a file or folder) after checking its sha256."""
    path = datum.export(output)
    echo.echo_success(f'wrote {path} (sha256 {datum.sha256} verified)')
