"""``aiida-hpcai setup --storage postgresql`` makes a user's PostgreSQL + RabbitMQ profile (in a throw-away config)."""

import json
import os
import subprocess

from aiida.manage.external.postgres import Postgres


def test_setup_makes_a_postgresql_rabbitmq_profile(tmp_path, postgres_database):
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path)}
    command = ['aiida-hpcai', 'setup', '--storage', 'postgresql', '--profile-name', 'cluster']
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'cluster (core.psql_dos, broker core.rabbitmq)' in result.stdout

    profile = json.loads((tmp_path / '.aiida' / 'config.json').read_text())['profiles']['cluster']
    storage = profile['storage']['config']
    try:
        assert (profile['storage']['backend'], profile['process_control']['backend']) == (
            'core.psql_dos',
            'core.rabbitmq',
        )
        # Run again: everything is found, nothing created twice.
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and 'created' not in again.stdout, again.stdout
    finally:
        subprocess.run(['verdi', 'profile', 'delete', '--delete-data', '--force', 'cluster'], env=env, check=True)
        Postgres(interactive=False, quiet=True, dbinfo={'host': None, 'user': None}).drop_dbuser(
            storage['database_username']
        )
