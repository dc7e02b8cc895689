"""``aiida-hpcai data ...``: bring structure datasets into the profile as StructureSet nodes."""

from __future__ import annotations

import pathlib

import click
from aiida.cmdline.utils import decorators

from . import cli


@cli.group('data')
def data():
    """Import and inspect structure datasets."""


@data.command('import')
@click.argument('path', type=click.Path(exists=True, path_type=pathlib.Path))
@click.option(
    '--format',
    'fmt',
    default='auto',
    show_default=True,
    type=click.Choice(['auto', 'csv', 'matbench', 'extxyz', 'cif-folder', 'npz']),
    help='Dataset format; auto decides by file name.',
)
@click.option('--limit', type=int, default=None, help='Read at most this many rows.')
@click.option(
    '--target',
    'targets',
    multiple=True,
    help='Label column to keep (repeatable); rows missing it are skipped. Default: all numeric columns.',
)
@click.option('--label', default=None, help='Node label; default: the file name.')
@decorators.with_dbenv()
def import_dataset(path, fmt, limit, targets, label):
    """Store the dataset at PATH as one StructureSet node and print the counts and skip reasons."""
    from rich.console import Console

    from aiida_hpcai.data.structure_set import StructureSet

    structure_set = StructureSet.from_file(path, fmt=fmt, limit=limit, targets=list(targets) or None, progress=True)
    structure_set.label = label or path.name
    structure_set.description = f'imported from {path.resolve()}'
    structure_set.store()
    print_structure_set(structure_set, Console())


def print_structure_set(structure_set, console) -> None:
    """Counts, elements, labels and skip reasons of a StructureSet, as users see it after an import."""
    from rich.table import Table

    table = Table(title=f'StructureSet<{structure_set.pk}> {structure_set.label}', show_header=False)
    table.add_row('structures', str(structure_set.count))
    table.add_row('atoms', str(structure_set.base.attributes.get('natoms_total')))
    table.add_row('elements', f'{len(structure_set.elements)}: {" ".join(structure_set.elements)}')
    table.add_row('labels', ', '.join(structure_set.label_names) or '-')
    table.add_row('skipped', str(structure_set.base.attributes.get('skipped_count', 0)))
    for reason, count in sorted(structure_set.base.attributes.get('skipped_reasons', {}).items()):
        table.add_row(f'  {reason}', str(count))
    table.add_row('uuid', structure_set.uuid)
    console.print(table)
