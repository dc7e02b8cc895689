"""Provisioning: the profile, the ``localhost`` computer, the codes and the pseudopotential family, idempotently.

``aiida-hpcai setup`` calls these in order; tests and benchmarks call them as a library. Each
``ensure_*`` makes sure of one thing and adds a line to a :class:`SetupReport` saying what it
created, found or updated.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

DEFAULT_PROFILE_NAME = 'hpcai'
DEFAULT_PSEUDO_FAMILY = 'SSSP/1.3/PBE/efficiency/subset'
PSEUDO_SUBSET_DIRNAME = 'sssp_pbe_efficiency_1.3.0_subset'
CUTOFFS_FILENAME = 'sssp_efficiency_subset.json'
MODEL_CODE_LABEL = 'hpcai-model'
PW_CODE_LABEL = 'pw'


def default_pseudo_dir() -> pathlib.Path | None:
    """``$HPCAI_PSEUDO_DIR``/<subset>, else ``../shared/pseudos/<subset>`` beside cwd or the checkout."""
    roots = [pathlib.Path(os.environ['HPCAI_PSEUDO_DIR'])] if 'HPCAI_PSEUDO_DIR' in os.environ else []
    roots += [
        pathlib.Path.cwd().parent / 'shared' / 'pseudos',
        pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'pseudos',
    ]
    return next((root / PSEUDO_SUBSET_DIRNAME for root in roots if (root / PSEUDO_SUBSET_DIRNAME).is_dir()), None)


class SetupReport:
    """Collects one line per item: what was created, what was found already there."""

    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, item: str, status: str, detail: str) -> None:
        self.rows.append((item, status, detail))

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title='aiida-hpcai setup')
        for column in ('item', 'status', 'detail'):
            table.add_column(column)
        styles = {'created': 'green', 'found': 'cyan', 'updated': 'yellow', 'skipped': 'magenta'}
        for item, status, detail in self.rows:
            table.add_row(item, f'[{styles.get(status, "white")}]{status}[/]', detail)
        Console(width=max(shutil.get_terminal_size().columns, 120)).print(table)


STORAGES = ('sqlite', 'postgresql')


def presto_command(profile_name: str, storage: str = 'sqlite') -> list[str]:
    """The ``verdi presto`` call creating a profile: embedded SQLite, or (``postgresql``) a database and user it makes
    on the PostgreSQL server on localhost, as the current user, who must be allowed to create them."""
    verdi = shutil.which('verdi') or str(pathlib.Path(sys.executable).parent / 'verdi')
    return [verdi, 'presto', '--profile-name', profile_name] + (['--use-postgres'] if storage == 'postgresql' else [])


def ensure_profile(profile_name: str, report: SetupReport, storage: str = 'sqlite'):
    """Load the default profile; if there is none, create one with ``verdi presto``. Returns (profile, created).

    ``storage`` (one of :data:`STORAGES`) only matters for a new profile; ``verdi presto`` picks RabbitMQ as the
    broker when it answers on localhost, else the built-in ZeroMQ broker.
    """
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config, load_profile, reset_config

    manager = get_manager()
    if manager.get_profile() is not None:
        profile = manager.get_profile()
        report.add(
            'profile', 'found', f'{profile.name} ({profile.storage_backend}, broker {profile.process_control_backend})'
        )
        return profile, False
    config = get_config(create=True)
    if config.default_profile_name is not None:
        profile = load_profile(config.default_profile_name)
        report.add(
            'profile', 'found', f'{profile.name} ({profile.storage_backend}, broker {profile.process_control_backend})'
        )
        return profile, False
    # `verdi presto` is the reference for an embedded profile: SQLite storage and, without a RabbitMQ
    # server, the built-in ZeroMQ broker. Running it keeps our profile identical to the documented one.
    result = subprocess.run(presto_command(profile_name, storage), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'`verdi presto` failed: {result.stdout} {result.stderr}'.strip())
    reset_config()  # the subprocess wrote a new config file; read it again
    profile = load_profile(profile_name, allow_switch=True)
    report.add(
        'profile',
        'created',
        f'{profile.name} ({profile.storage_backend}, broker {profile.process_control_backend}) with `verdi presto`',
    )
    return profile, True


# No login shell: AiiDA runs each scheduler poll (once a second here) and each submission through the
# transport, and a login shell runs the user's start-up files every time (`pyenv init` here: 0.23 CPU
# seconds a command against 0.013 s without), CPU taken from the running job's cores. Jobs then
# inherit the environment of the AiiDA process, and our codes use absolute paths.
LOCALHOST_TRANSPORT = {'safe_interval': 0, 'use_login_shell': False}


def uses_login_shell(computer) -> bool:
    """Whether the computer's transport runs its commands in a login shell (AiiDA's default when unset)."""
    return computer.get_configuration().get('use_login_shell', True)


# The descriptions `verdi presto` and this module give the localhost they create: such a computer is ours
# to adjust (default MPI processes); any other localhost belongs to its user and only gets hints.
_OWN_LOCALHOST_DESCRIPTIONS = ('this machine', 'Localhost automatically created by `verdi presto`')


def machine_cores() -> int:
    """Cores this process may run on (the affinity mask in a container or under a batch system)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def ensure_localhost(report: SetupReport, new_profile: bool = False):
    """The ``localhost`` computer; one created here, on a profile created just now or by ``verdi presto``
    configured our way (no login shell: see LOCALHOST_TRANSPORT).

    A localhost created here or by ``verdi presto`` runs as many MPI processes as the machine has cores by
    default (``verdi presto`` sets 1, which left DFT on one core of a many-core machine).
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer('localhost')
    except NotExistent:
        from aiida.manage.configuration import get_config

        workdir = pathlib.Path(get_config().dirpath) / 'scratch' / orm.User.collection.get_default().email
        computer = orm.Computer(
            label='localhost',
            hostname='localhost',
            description='this machine',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=str(workdir),
        ).store()
        computer.configure(**LOCALHOST_TRANSPORT)
        computer.set_minimum_job_poll_interval(1)
        report.add('computer localhost', 'created', str(workdir))
    else:
        own = new_profile or computer.description in _OWN_LOCALHOST_DESCRIPTIONS
        if not computer.is_configured or (own and uses_login_shell(computer)):
            computer.configure(**LOCALHOST_TRANSPORT)
            report.add('computer localhost', 'updated', f'{computer.get_workdir()}; configured without a login shell')
        elif uses_login_shell(computer):  # someone else's: a hint only
            report.add(
                'computer localhost',
                'found',
                f'{computer.get_workdir()}; it polls in a login shell, running '
                'your shell start-up files at every poll: `verdi computer configure core.local localhost '
                '--use-login-shell False` makes that cheaper',
            )
        else:
            report.add('computer localhost', 'found', computer.get_workdir())
    _ensure_default_mpiprocs(computer, report, own=new_profile or computer.description in _OWN_LOCALHOST_DESCRIPTIONS)
    # Open MPI refuses to run as root unless told; the containers and CI machines we run on are root.
    if os.geteuid() == 0 and '--allow-run-as-root' not in computer.get_mpirun_command():
        computer.set_mpirun_command(['mpirun', '--allow-run-as-root', '-np', '{tot_num_mpiprocs}'])
        report.add('computer localhost', 'updated', 'mpirun command gets --allow-run-as-root (running as root)')
    return computer


def _ensure_default_mpiprocs(computer, report: SetupReport, own: bool) -> None:
    cores = machine_cores()
    current = computer.get_default_mpiprocs_per_machine()
    if current == cores:
        report.add('computer localhost', 'found', f'{cores} MPI processes by default (the cores of this machine)')
    elif own:
        computer.set_default_mpiprocs_per_machine(cores)
        report.add(
            'computer localhost', 'updated', f"{cores} MPI processes by default (was {current}): this machine's cores"
        )
    else:
        report.add(
            'computer localhost',
            'found',
            f'{current} MPI processes by default, this machine has {cores} cores: `aiida-hpcai dft --num-mpiprocs '
            f'{cores}` uses them all',
        )


def ensure_code(label: str, executable: str, computer, report: SetupReport, plugin: str | None = None):
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    full_label = f'{label}@{computer.label}'
    try:
        code = orm.load_code(full_label)
    except NotExistent:
        code = orm.InstalledCode(
            label=label,
            computer=computer,
            filepath_executable=executable,
            default_calc_job_plugin=plugin,
            description=f'{label} registered by aiida-hpcai setup',
        )
        code.store()
        report.add(f'code {full_label}', 'created', executable)
        return code
    if str(code.filepath_executable) != executable:
        report.add(
            f'code {full_label}',
            'found',
            f'{code.filepath_executable} (this environment has {executable}; kept the registered one)',
        )
    else:
        report.add(f'code {full_label}', 'found', executable)
    return code


def install_pseudo_family(folder: str | os.PathLike, label: str = DEFAULT_PSEUDO_FAMILY):
    """Install the UPF files of ``folder`` as an aiida-pseudo cutoffs family; return ``(family, created)``.

    Cutoffs (Ry) come from ``sssp_efficiency_subset.json`` beside the files (stringency 'normal').
    """
    from aiida import orm
    from aiida_pseudo.data.pseudo import UpfData
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    existing = orm.QueryBuilder().append(CutoffsPseudoPotentialFamily, filters={'label': label}).first()
    if existing:
        return existing[0], False
    folder = pathlib.Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        # The folder also holds toml/json metadata; aiida-pseudo wants pseudopotential files only.
        for upf in folder.glob('*.upf'):
            shutil.copy(upf, tmp)
        family = CutoffsPseudoPotentialFamily.create_from_folder(pathlib.Path(tmp), label, pseudo_type=UpfData)
    cutoffs = json.loads((folder / CUTOFFS_FILENAME).read_text())
    family.set_cutoffs(
        {
            element: {'cutoff_wfc': float(values['cutoff_wfc_Ry']), 'cutoff_rho': float(values['cutoff_rho_Ry'])}
            for element, values in cutoffs.items()
            if element in family.elements
        },
        stringency='normal',
        unit='Ry',
    )
    family.description = f'SSSP PBE efficiency 1.3.0 subset from {folder}'
    return family, True
