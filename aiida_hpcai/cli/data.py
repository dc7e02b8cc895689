"""``aiida-hpcai data ...``: bring structure datasets into the profile as StructureSet nodes."""

from __future__ import annotations

import pathlib

import click
from aiida.cmdline.utils import decorators, echo

from . import cli
from .params import POSITIVE_INT

FORMATS = ('auto', 'csv', 'matbench', 'extxyz', 'cif-folder', 'cif', 'npz')
SKIPPED_SHOWN = 20  # skipped rows listed one by one; the rest are counted (all are in skipped.json)


def parse_ids(ctx, param, value) -> list[str] | None:
    """``--ids``: a file of ids (one per line, or separated by commas or spaces) or a comma-separated list."""
    if value is None:
        return None
    path = pathlib.Path(value)
    text = path.read_text(encoding='utf-8') if path.is_file() else value
    ids = [item for item in text.replace(',', ' ').split() if item]
    if not ids:
        raise click.BadParameter(f'{value!r} holds no id', ctx=ctx, param=param)
    return ids


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
    type=click.Choice(FORMATS),
    help='Dataset format; auto decides by file name (a folder is a cif-folder).',
)
@click.option('--limit', type=POSITIVE_INT, default=None, help='Read at most this many rows (of those --ids selects).')
@click.option(
    '--ids',
    callback=parse_ids,
    default=None,
    metavar='FILE_OR_LIST',
    help='Import only these ids: a file of ids (one per line) or a comma-separated list, e.g. mp-149,mp-1265.',
)
@click.option(
    '--target',
    'targets',
    multiple=True,
    help='Label column to keep (repeatable); rows missing it are skipped. Default: all numeric columns.',
)
@click.option('--label', default=None, help='Node label; default: the file name.')
@decorators.with_dbenv()
def import_dataset(path, fmt, limit, ids, targets, label):
    """Store the dataset at PATH as one StructureSet node and print the counts and skip reasons.

    Every row is validated (known elements, finite numbers, a cell that has not collapsed, no overlapping
    atoms, unique ids); a row that fails is listed with its id and reason and kept in the node's
    skipped.json, the others are stored. A file that breaks off (a truncated .csv.gz) keeps the rows read
    before the damage and says where reading stopped.
    """
    from rich.console import Console

    from aiida_hpcai.data.structure_set import StructureSet

    structure_set = StructureSet.from_file(
        path, fmt=fmt, limit=limit, targets=list(targets) or None, ids=ids, progress=True
    )
    report_skipped(structure_set.get_skipped())
    if ids is not None:
        found = set(structure_set.ids) | {row['id'] for row in structure_set.get_skipped()}
        absent = [i for i in ids if i not in found]
        if absent:
            echo.echo_warning(f'{len(absent)} of the {len(ids)} ids asked for are not in {path.name}: {_some(absent)}')
    if not structure_set.count:
        raise click.ClickException(f'no structure of {path.name} passed, nothing stored')
    structure_set.label = label or path.name
    structure_set.description = f'{structure_set.summary()}; imported from {path.resolve()}'
    structure_set.store()
    print_structure_set(structure_set, Console())


def report_skipped(skipped: list[dict]) -> None:
    """One warning line per refused structure (id, reason, the parser's detail), the first few of them."""
    for row in skipped[:SKIPPED_SHOWN]:
        detail = f' ({row["detail"]})' if row.get('detail') else ''
        echo.echo_warning(f'skipped {row["id"]}: {row["reason"]}{detail}', err=True)
    if len(skipped) > SKIPPED_SHOWN:
        echo.echo_warning(f"... and {len(skipped) - SKIPPED_SHOWN} more skipped (all are in the node's skipped.json)")


def _some(items, shown: int = 10) -> str:
    return ', '.join(map(str, items[:shown])) + (f', ... (+{len(items) - shown})' if len(items) > shown else '')


def print_structure_set(structure_set, console, rows: int = 0, ids=None) -> None:
    """Counts, elements, labels and skip reasons of a StructureSet; then its first ``rows`` rows or the ``ids``."""
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
    if rows or ids:
        console.print(_rows_table(structure_set, rows, ids))


def _rows_table(structure_set, rows: int, ids):
    from pymatgen.core import Composition
    from rich.table import Table

    all_ids = structure_set.ids
    if ids:
        position = {identifier: index for index, identifier in enumerate(all_ids)}
        absent = [i for i in ids if i not in position]
        if absent:
            raise click.BadParameter(f'not in this set: {_some(absent)}', param_hint='--ids')
        indices = [position[i] for i in ids]
    else:
        indices = list(range(min(rows, len(all_ids))))
    arrays = structure_set.arrays
    title = f'structures {len(indices)} of {len(all_ids)}' if not ids else f'{len(indices)} structures by id'
    table = Table(title=title)
    for column in ('#', 'id', 'formula', 'natoms', *structure_set.label_names):
        table.add_column(column, justify='right' if column in ('#', 'natoms') else 'left')
    picked = arrays.subset(indices)
    for index, identifier, formula, natoms, *labels in zip(
        indices,
        picked.ids.tolist(),
        picked.formulae(),
        picked.natoms.tolist(),
        *[picked.labels[name].tolist() for name in structure_set.label_names],
    ):
        table.add_row(
            str(index), identifier, Composition(formula).reduced_formula, str(natoms), *[f'{v:.6g}' for v in labels]
        )
    return table
