"""The scale-out tests run on the real services of ``scripts/services.sh``: a ``core.psql_dos`` profile with the
RabbitMQ broker and a daemon of 2 workers, a one-node Slurm cluster and an SSH server on 127.0.0.1.

Every test here carries the ``services`` marker. Without the services they are skipped with the reason (on a
developer's machine) or fail (``CI=true``, where ``scripts/test.sh`` has started them).
"""

import pathlib
import secrets
import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import require

SSH_KEY = pathlib.Path('/root/.ssh/hpcai_services_ed25519')
SSH_HOST_ALIAS = 'hpcai-services-ssh'
DAEMON_WORKERS = 2


def pytest_collection_modifyitems(items):
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(item.fspath).parents:
            item.add_marker(pytest.mark.services)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(('127.0.0.1', port)) == 0


def _runs(*command: str) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


START_HINT = 'start the services with `bash scripts/services.sh start`'


@pytest.fixture(scope='package')
def postgres_database():
    """A fresh PostgreSQL user and database on the server of ``scripts/services.sh`` (dropped afterwards)."""
    require(_port_open(5432), f'no PostgreSQL on 127.0.0.1:5432: {START_HINT}')
    from aiida.manage.external.postgres import Postgres

    # Root logs in over the Unix socket with the `root` role services.sh creates (peer authentication).
    postgres = Postgres(interactive=False, quiet=True, dbinfo={'host': None, 'port': 5432, 'user': None})
    require(postgres.is_connected, f'cannot log in to PostgreSQL as a superuser: {START_HINT}')
    name = f'hpcai_test_{secrets.token_hex(4)}'
    password = secrets.token_hex(12)
    user, database = postgres.create_dbuser_db_safe(dbname=name, dbuser=name, dbpass=password)
    yield {
        'database_engine': 'postgresql_psycopg',
        'database_hostname': 'localhost',
        'database_port': 5432,
        'database_name': database,
        'database_username': user,
        'database_password': password,
    }
    # FORCE: the daemon's and this process's connections may still be open
    postgres.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    postgres.drop_dbuser(user)


def add_vhost(vhost: str) -> None:
    """An empty RabbitMQ virtual host ``vhost`` that the broker user ``guest`` may use."""
    subprocess.run(['rabbitmqctl', '-q', 'add_vhost', vhost], check=True, capture_output=True, timeout=120)
    subprocess.run(
        ['rabbitmqctl', '-q', 'set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*'],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture(scope='package', autouse=True)
def services_profile(aiida_config_factory, aiida_profile_factory, tmp_path_factory, postgres_database):
    """A ``core.psql_dos`` + ``core.rabbitmq`` profile in a throw-away config, loaded for every test of this folder;
    the session's embedded profile comes back afterwards."""
    require(_port_open(5672), f'no RabbitMQ on 127.0.0.1:5672: {START_HINT}')
    root = tmp_path_factory.mktemp('services_config')
    storage_config = {**postgres_database, 'repository_uri': (root / 'repository').as_uri()}
    # A virtual host of its own: its queues and exchanges go with it at the end.
    vhost = postgres_database['database_name']
    add_vhost(vhost)
    broker_config = {
        'broker_protocol': 'amqp',
        'broker_username': 'guest',
        'broker_password': 'guest',
        'broker_host': '127.0.0.1',
        'broker_port': 5672,
        'broker_virtual_host': vhost,
    }
    try:
        with aiida_config_factory(root) as config:
            with aiida_profile_factory(
                config,
                storage_backend='core.psql_dos',
                storage_config=storage_config,
                broker_backend='core.rabbitmq',
                broker_config=broker_config,
            ) as profile:
                yield profile
    finally:
        subprocess.run(['rabbitmqctl', '-q', 'delete_vhost', vhost], capture_output=True)


@pytest.fixture(scope='package')
def daemon(services_profile):
    """The profile's daemon with 2 workers (what ``verdi daemon start 2`` starts); stopped at the end."""
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client(services_profile.name)
    if not client.is_daemon_running:
        client.start_daemon(number_workers=DAEMON_WORKERS)
    yield client
    stop_daemon(client)


def stop_daemon(client) -> None:
    """Stop the daemon and wait until it is gone (on a busy machine that takes longer than circus's 20 s)."""
    from aiida.engine.daemon.client import DaemonException

    try:
        client.stop_daemon(wait=True, timeout=120)
    except DaemonException:  # not running any more, or slow to answer: the wait below decides
        pass
    start = time.monotonic()
    while client.is_daemon_running and time.monotonic() - start < 120:
        time.sleep(0.5)


@pytest.fixture(scope='package')
def local_computer(services_profile, tmp_path_factory):
    """``localhost`` (``core.local`` + ``core.direct``), configured as ``aiida-hpcai setup`` configures it."""
    from aiida import orm

    from tests.conftest import LOCALHOST_TRANSPORT

    computer = orm.Computer(
        label='localhost',
        hostname='localhost',
        transport_type='core.local',
        scheduler_type='core.direct',
        workdir=str(tmp_path_factory.mktemp('localhost_work')),
    ).store()
    computer.configure(**LOCALHOST_TRANSPORT)
    computer.set_minimum_job_poll_interval(1)
    return computer


def model_code_on(computer):
    """``hpcai-model@<computer>``: every computer here is this machine, so the same executable."""
    from aiida import orm

    executable = shutil.which('hpcai-model')
    require(executable is not None, 'the hpcai-model program is not installed (pip install -e .)')
    existing = (
        orm.QueryBuilder()
        .append(orm.Computer, filters={'uuid': computer.uuid}, tag='computer')
        .append(orm.InstalledCode, with_computer='computer', filters={'label': 'hpcai-model'})
        .first(flat=True)
    )
    return (
        existing
        or orm.InstalledCode(
            label='hpcai-model',
            computer=computer,
            filepath_executable=executable,
            default_calc_job_plugin='hpcai.predict',
        ).store()
    )


@pytest.fixture(scope='package')
def model_code(local_computer):
    return model_code_on(local_computer)


@pytest.fixture(scope='package')
def training_set(services_profile, shared_data_dir):
    from tests.surrogate_helpers import perov_structures

    return perov_structures(shared_data_dir)


@pytest.fixture(scope='package')
def tiny_model(model_code, training_set):
    """A tiny model trained once by the real ``hpcai.train`` (in the test process) for every test here."""
    from tests.surrogate_helpers import train_tiny_model

    return train_tiny_model(model_code, training_set).outputs.model


def daemon_log_tail(daemon) -> str:
    """The last 4,000 characters of the daemon's log: what a failure message shows of it."""
    return pathlib.Path(daemon.daemon_log_file).read_text()[-4000:]


def wait_for(node, timeout: float = 180, daemon=None):
    """Wait until ``node`` is terminated; on a timeout fail with its state and the daemon log's tail."""
    start = time.monotonic()
    while not node.is_terminated:
        if time.monotonic() - start > timeout:
            log = daemon_log_tail(daemon) if daemon else ''
            pytest.fail(f'{node} not terminated after {timeout} s ({node.process_state}): {log}')
        time.sleep(0.5)
    return node


@pytest.fixture(scope='package')
def slurm_cluster():
    """The one-node Slurm cluster of ``scripts/services.sh`` (partition ``debug``)."""
    require(shutil.which('sbatch') is not None and _runs('sinfo'), f'no Slurm cluster: {START_HINT}')
    state = subprocess.run(['sinfo', '-h', '-N', '-o', '%T'], capture_output=True, text=True).stdout.strip()
    require(state in ('idle', 'mixed', 'allocated'), f'the Slurm node is {state!r}, not idle: {START_HINT}')
    return 'debug'


@pytest.fixture(scope='package')
def ssh_host():
    """The OpenSSH server of ``scripts/services.sh`` on 127.0.0.1, reached as root with its key."""
    require(SSH_KEY.is_file() and _port_open(22), f'no SSH server on 127.0.0.1:22 or no key {SSH_KEY}: {START_HINT}')
    require(
        _runs('ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=5', SSH_HOST_ALIAS, 'true'),
        f'`ssh {SSH_HOST_ALIAS} true` fails: {START_HINT}',
    )
    return SSH_HOST_ALIAS
