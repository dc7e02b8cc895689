"""``aiida-hpcai setup``: profile, computer, codes and pseudopotentials, idempotently (see :mod:`aiida_hpcai.provisioning`)."""

from __future__ import annotations

import pathlib
import shutil
import sys

import click

from ..provisioning import (
    DEFAULT_PROFILE_NAME,
    DEFAULT_PSEUDO_FAMILY,
    MODEL_CODE_LABEL,
    PSEUDO_SUBSET_DIRNAME,
    PW_CODE_LABEL,
    STORAGES,
    SetupReport,
    default_pseudo_dir,
    ensure_code,
    ensure_localhost,
    ensure_profile,
    install_pseudo_family,
)
from . import cli


@cli.command('setup')
@click.option(
    '--profile-name',
    default=DEFAULT_PROFILE_NAME,
    show_default=True,
    help='Name of the profile created when none exists yet.',
)
@click.option(
    '--pseudo-dir',
    type=click.Path(exists=True, file_okay=False, path_type=pathlib.Path),
    default=None,
    help='Folder of UPF files (+ sssp_efficiency_subset.json) to install as the pseudopotential family. '
    f'Default: $HPCAI_PSEUDO_DIR/{PSEUDO_SUBSET_DIRNAME} or ../shared/pseudos/{PSEUDO_SUBSET_DIRNAME}.',
)
@click.option('--pseudo-family', default=DEFAULT_PSEUDO_FAMILY, show_default=True, help='Label of that family.')
@click.option(
    '--storage',
    type=click.Choice(STORAGES),
    default='sqlite',
    show_default=True,
    help='Storage of the profile created when none exists: embedded SQLite, or a new database on the PostgreSQL '
    'server on localhost (`verdi presto --use-postgres`; the current user must be allowed to create one). Either '
    'way RabbitMQ is the broker when it runs on localhost.',
)
def setup(profile_name, pseudo_dir, pseudo_family, storage):
    """Create or reuse everything aiida-hpcai needs; safe to run any number of times.

    Uses the current profile (any storage and broker, e.g. PostgreSQL + RabbitMQ) or, when there
    is none, creates an embedded one like `verdi presto` (SQLite + built-in ZeroMQ broker). Then
    makes sure of the `localhost` computer, the `hpcai-model@localhost` code (this environment's
    model program), `pw@localhost` when `pw.x` is on PATH, and the pseudopotential family.
    """
    report = SetupReport()
    _, new_profile = ensure_profile(profile_name, report, storage)
    computer = ensure_localhost(report, new_profile)

    model_program = shutil.which('hpcai-model') or str(pathlib.Path(sys.executable).parent / 'hpcai-model')
    ensure_code(MODEL_CODE_LABEL, model_program, computer, report)

    pw = shutil.which('pw.x')
    if pw:
        ensure_code(PW_CODE_LABEL, pw, computer, report, plugin='quantumespresso.pw')
    else:
        report.add(f'code {PW_CODE_LABEL}@localhost', 'skipped', 'pw.x not on PATH (apt-get install quantum-espresso)')

    folder = pseudo_dir or default_pseudo_dir()
    if folder is None:
        report.add(f'pseudo family {pseudo_family}', 'skipped', 'no pseudopotential folder found (--pseudo-dir)')
    else:
        family, created = install_pseudo_family(folder, pseudo_family)
        report.add(
            f'pseudo family {pseudo_family}',
            'created' if created else 'found',
            f'{len(family.nodes)} elements: {" ".join(sorted(family.elements))}',
        )
    report.print()
