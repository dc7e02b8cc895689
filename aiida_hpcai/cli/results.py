"""``aiida-hpcai results``: what the surrogate predicted for a structure, by which model, with which sigma."""

from __future__ import annotations

import json

import click
from aiida.cmdline.utils import decorators, echo

from . import cli


@cli.command('results')
@click.option(
    '--id', 'structure_ids', multiple=True, required=True, help='A structure id, e.g. mp-149 (repeat for several).'
)
@click.option('--json', 'as_json', is_flag=True, help='Print machine-readable JSON instead of a table.')
@decorators.with_dbenv()
def results(structure_ids, as_json):
    """Every hpcai.surrogate prediction of the structures with these ids, oldest first.

    Each row gives the mean and sigma, whether it was confident at the threshold of its run, the
    ModelData pks of the ensemble and the pk of the predictions node and of the surrogate WorkChain
    (`verdi process show PK` for more).
    """
    from aiida_hpcai.results import predictions_for

    found = {structure_id: predictions_for(structure_id) for structure_id in structure_ids}
    if as_json:
        click.echo(json.dumps({key: [row.as_dict() for row in rows] for key, rows in found.items()}, indent=2))
        return
    missing = [key for key, rows in found.items() if not rows]
    rows = [row for key in structure_ids for row in found[key]]
    if rows:
        _print_table(rows)
    if missing:
        echo.echo_warning(f'no hpcai.surrogate prediction of: {", ".join(missing)}')
    if not rows:
        raise SystemExit(1)


def _print_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title='hpcai.surrogate predictions')
    for column in (
        'id',
        'target',
        'mean ± sigma',
        'confident (threshold)',
        'status',
        'models',
        'predictions',
        'surrogate',
        'date',
    ):
        table.add_column(column)
    for row in rows:
        value = f'{row.mean:.4f} ± {row.sigma:.4f} {row.units or ""}' if row.status == 'ok' else row.reason
        table.add_row(
            row.structure_id,
            str(row.target),
            value,
            f'{"yes" if row.confident else "no"} ({row.sigma_threshold:g})',
            row.status,
            ', '.join(f'ModelData<{pk}>' for pk in row.models),
            f'ArrayData<{row.predictions}>',
            f'hpcai.surrogate<{row.surrogate}>' if row.surrogate is not None else '-',
            row.ctime.strftime('%Y-%m-%d %H:%M'),
        )
    # Wide enough that nothing is cut when the output is not a terminal (a pipe, a file).
    Console(width=None if Console().is_terminal else 250).print(table)
