"""`aiida-hpcai setup`: fresh machine (creates an embedded profile) and an existing profile, each twice."""

import os
import re
import shutil
import subprocess

import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_hpcai.cli import cli
from aiida_hpcai.provisioning import DEFAULT_PSEUDO_FAMILY


def run_setup(env):
    return subprocess.run(
        ['aiida-hpcai', 'setup', '--profile-name', 'hpcai-test'], env=env, capture_output=True, text=True, check=False
    )


def test_setup_on_a_fresh_machine_twice(tmp_path, shared_pseudos_dir):
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path), 'COLUMNS': '200', 'HPCAI_PSEUDO_DIR': str(shared_pseudos_dir)}
    first = run_setup(env)
    assert first.returncode == 0, first.stderr
    assert 'created' in first.stdout and 'core.sqlite_dos' in first.stdout
    # `verdi presto` picks a running RabbitMQ when it finds one, else its built-in ZeroMQ broker
    assert 'core.zeromq' in first.stdout or 'core.rabbitmq' in first.stdout
    second = run_setup(env)
    assert second.returncode == 0, second.stderr
    assert 'created' not in second.stdout
    for item in ('profile', 'code hpcai-model@localhost', f'pseudo family {DEFAULT_PSEUDO_FAMILY}'):
        assert item in second.stdout
    # the profile is new, so its localhost is ours: polls and submissions without a login shell
    transport = subprocess.run(
        ['verdi', 'computer', 'configure', 'show', 'localhost'], env=env, capture_output=True, text=True, check=True
    )
    assert re.search(r'use_login_shell\s+False', transport.stdout), transport.stdout
    codes = subprocess.run(['verdi', 'code', 'list', '-a'], env=env, capture_output=True, text=True, check=True)
    assert 'hpcai-model@localhost' in codes.stdout
    if shutil.which('pw.x'):
        assert 'pw@localhost' in codes.stdout


def test_setup_uses_the_current_profile(aiida_profile, shared_pseudos_dir, monkeypatch):
    monkeypatch.setenv('HPCAI_PSEUDO_DIR', str(shared_pseudos_dir))
    runner = CliRunner()
    first = runner.invoke(cli, ['setup'], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    count = orm.QueryBuilder().append(orm.Node).count()
    second = runner.invoke(cli, ['setup'], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert orm.QueryBuilder().append(orm.Node).count() == count  # nothing new the second time
    assert aiida_profile.name in second.output
    code = orm.load_code('hpcai-model@localhost')
    assert code.filepath_executable.name == 'hpcai-model'
    family = orm.load_group(DEFAULT_PSEUDO_FAMILY)
    assert {'Si', 'Mg', 'O'} <= set(family.elements)
    cutoffs = family.get_recommended_cutoffs(elements=('Si',), unit='Ry')
    assert cutoffs == (30.0, 240.0)
    if os.geteuid() == 0:
        assert '--allow-run-as-root' in orm.load_computer('localhost').get_mpirun_command()


@pytest.mark.parametrize('args', [['data', 'import', '--help'], ['setup', '--help']])
def test_help(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and 'Usage' in result.output


#: The description of a localhost that `aiida-hpcai setup` did not make.
SOMEONE_ELSES = 'a localhost of the user'


def test_localhost_login_shell(aiida_localhost):
    """A localhost setup did not make keeps its login shell (with a hint); on a new profile, or made by
    `verdi presto`, setup turns it off."""
    from aiida_hpcai.provisioning import LOCALHOST_TRANSPORT, SetupReport, ensure_localhost

    description = aiida_localhost.description
    aiida_localhost.description = SOMEONE_ELSES  # an earlier `aiida-hpcai setup` may have made it
    aiida_localhost.configure(safe_interval=0, use_login_shell=True)
    try:
        report = SetupReport()
        ensure_localhost(report, new_profile=False)
        assert aiida_localhost.get_configuration()['use_login_shell'] is True
        found = [detail for item, status, detail in report.rows if status == 'found']
        assert any('--use-login-shell False' in detail for detail in found)

        report = SetupReport()
        ensure_localhost(report, new_profile=True)
        assert aiida_localhost.get_configuration()['use_login_shell'] is False
        assert ('computer localhost', 'updated') in [(item, status) for item, status, _ in report.rows]

        # the localhost `verdi presto` made on an existing profile (presto first, then setup) is ours too
        aiida_localhost.configure(safe_interval=0, use_login_shell=True)
        aiida_localhost.description = 'Localhost automatically created by `verdi presto`'
        report = SetupReport()
        ensure_localhost(report, new_profile=False)
        assert aiida_localhost.get_configuration()['use_login_shell'] is False
        assert ('computer localhost', 'updated') in [(item, status) for item, status, _ in report.rows]
    finally:
        aiida_localhost.description = description
        aiida_localhost.configure(**LOCALHOST_TRANSPORT)


def test_localhost_runs_on_every_core(aiida_localhost):
    """A localhost setup adopts (new profile) runs as many MPI processes as the machine has cores; another is kept."""
    from aiida_hpcai.provisioning import SetupReport, ensure_localhost, machine_cores

    before, description = aiida_localhost.get_default_mpiprocs_per_machine(), aiida_localhost.description
    aiida_localhost.description = SOMEONE_ELSES  # an earlier `aiida-hpcai setup` may have made it
    try:
        aiida_localhost.set_default_mpiprocs_per_machine(machine_cores() + 1)
        report = SetupReport()
        ensure_localhost(report, new_profile=True)
        assert aiida_localhost.get_default_mpiprocs_per_machine() == machine_cores()
        assert any(f'{machine_cores()} MPI processes by default' in detail for _, _, detail in report.rows)

        aiida_localhost.set_default_mpiprocs_per_machine(machine_cores() + 1)
        report = SetupReport()
        ensure_localhost(report, new_profile=False)  # someone else's localhost: a hint only
        assert aiida_localhost.get_default_mpiprocs_per_machine() == machine_cores() + 1
        assert any(f'--num-mpiprocs {machine_cores()}' in detail for _, _, detail in report.rows)
    finally:
        aiida_localhost.set_default_mpiprocs_per_machine(before)
        aiida_localhost.description = description
