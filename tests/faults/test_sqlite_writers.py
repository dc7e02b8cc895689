"""The embedded profile's SQLite file under concurrent writers: 2 daemon workers and CLI runs at the same time.

The profile is the one a new user gets: ``verdi presto --use-zeromq`` (``core.sqlite_dos`` storage, the built-in
ZeroMQ broker, no service) then ``aiida-hpcai setup``, in a throw-away ``AIIDA_PATH``; the daemon runs 2 workers.
While the daemon runs ``hpcai.surrogate`` predictions (the shipped model on 2 structures each), this test runs
``aiida-hpcai predict`` in the shell, ``verdi group`` writes and a script that stores nodes, sets extras and adds
them to a group as fast as it can. Afterwards every process must have finished ok with its outputs, every node
written must be there, and no log may say "database is locked".

Everything runs in subprocesses against that profile, so the session's own profile stays loaded here.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import require

PROFILE = 'hpcai-sqlite'
N_DAEMON = 4  # hpcai.surrogate processes submitted to the daemon
N_CLI = 2  # `aiida-hpcai predict` runs in the shell, both at once, while the daemon works
LOCKED = 'database is locked'

SUBMIT = """
import json, sys
from aiida import load_profile, orm
load_profile()
from aiida.engine import submit
from aiida_hpcai.cli.surrogate import load_models, read_structure_files
from aiida_hpcai.workchains.surrogate import SurrogateWorkChain

models = load_models((), 'formation_energy_per_atom')
code = orm.load_code('hpcai-model@localhost')
pks = []
for index in range(int(sys.argv[1])):
    structures = read_structure_files(sys.argv[2:])
    node = submit(
        SurrogateWorkChain, structures=structures, models=models, predict={'code': code},
        metadata={'label': f'sqlite-writers-{index}'},
    )
    pks.append(node.pk)
print(json.dumps(pks))
"""

# Stores a node, sets an extra on it and adds it to a group, again and again until the stop file appears.
WRITER = """
import json, pathlib, sys, time
from aiida import load_profile, orm
load_profile()
stop = pathlib.Path(sys.argv[1])
group, _ = orm.Group.collection.get_or_create('sqlite-writers')
written, errors, longest = [], [], 0.0
while not stop.exists():
    start = time.monotonic()
    try:
        node = orm.Dict({'index': len(written)}).store()
        node.base.extras.set('hpcai_writer', len(written))
        group.add_nodes(node)
        written.append(node.pk)
    except Exception as exception:  # recorded, not fatal: the test decides
        errors.append(f'{type(exception).__name__}: {exception}')
    longest = max(longest, time.monotonic() - start)
    time.sleep(0.05)
print(json.dumps({'written': written, 'errors': errors, 'longest': longest}))
"""

CHECK = """
import json, sys
from aiida import load_profile, orm
load_profile()
pks = json.loads(sys.argv[1])
report = {}
for pk in pks:
    node = orm.load_node(pk)
    calcs = [child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)]
    report[pk] = {
        'state': node.process_state.value if node.process_state else None,
        'exit_status': node.exit_status,
        'outputs': sorted(node.outputs),
        'calcjobs': [(calc.pk, calc.exit_status) for calc in calcs],
        'rows': len(node.outputs.classified_predictions.get_array('mean'))
        if 'classified_predictions' in node.outputs else None,
    }
writer = json.loads(sys.argv[2])
group = orm.load_group('sqlite-writers')
members = {node.pk for node in group.nodes}
extras = dict(orm.QueryBuilder().append(
    orm.Dict, filters={'id': {'in': writer or [-1]}}, project=['id', 'extras.hpcai_writer']).all())
cli_group = {node.pk for node in orm.load_group('sqlite-cli-group').nodes}
logs = orm.QueryBuilder().append(orm.Log, filters={'message': {'like': '%database is locked%'}}).count()
print(json.dumps({'processes': report, 'group': sorted(members), 'extras': extras, 'cli_group': sorted(cli_group),
                  'locked_log_entries': logs}))
"""


def _verdi_env(root):
    env = {**os.environ, 'AIIDA_PATH': str(root), 'COLUMNS': '200'}
    env.pop('AIIDA_PROFILE', None)
    return env


def _run(command, env, timeout=300):
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f'{" ".join(map(str, command))}\n{result.stdout}\n{result.stderr}'
    return result.stdout


@pytest.fixture(scope='module')
def embedded_profile(tmp_path_factory, shared_pseudos_dir):
    """A new user's embedded profile (SQLite + ZeroMQ), set up by ``aiida-hpcai setup``, with a 2-worker daemon."""
    require(shutil.which('hpcai-model') is not None, 'the hpcai-model program is not installed')
    root = tmp_path_factory.mktemp('embedded_profile')
    env = {**_verdi_env(root), 'HPCAI_PSEUDO_DIR': str(shared_pseudos_dir)}
    _run(['verdi', 'presto', '--use-zeromq', '--profile-name', PROFILE], env)
    _run(['aiida-hpcai', 'setup'], env)
    _run(['verdi', 'daemon', 'start', '2'], env)
    try:
        yield root, env
    finally:
        # `verdi daemon stop` can answer FAILED on a busy machine while the daemon is still going down: ask again.
        for _ in range(3):
            subprocess.run(['verdi', 'daemon', 'stop'], env=env, capture_output=True, timeout=180, check=False)
            status = subprocess.run(['verdi', 'daemon', 'status'], env=env, capture_output=True, text=True, check=False)
            if 'not running' in status.stdout + status.stderr:
                break
            time.sleep(10)


def _locked_lines(root) -> list[str]:
    """Lines saying "database is locked" in every log of the profile (daemon, workers, broker, CLI)."""
    lines = []
    for path in (root / '.aiida').rglob('*.log'):
        lines += [line for line in path.read_text(errors='replace').splitlines() if LOCKED in line]
    return lines


def _wait_terminated(env, pks, timeout):
    check = 'import sys; from aiida import load_profile, orm; load_profile(); print(all(orm.load_node(int(pk)).is_terminated for pk in sys.argv[1:]))'
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _run([sys.executable, '-c', check, *map(str, pks)], env).strip() == 'True':
            return time.monotonic() - start
        time.sleep(3)
    pytest.fail(f'processes {pks} not terminated after {timeout} s')


@pytest.mark.slow
def test_two_daemon_workers_and_cli_writers_lose_nothing(embedded_profile, tmp_path):
    from pymatgen.core import Lattice, Structure

    root, env = embedded_profile
    files = []
    for name, structure in (
        ('Si.cif', Structure.from_spacegroup('Fd-3m', Lattice.cubic(5.47), ['Si'], [[0, 0, 0]])),
        ('NaCl.cif', Structure.from_spacegroup('Fm-3m', Lattice.cubic(5.64), ['Na', 'Cl'], [[0, 0, 0], [0.5] * 3])),
    ):
        path = tmp_path / name
        structure.to(filename=str(path))
        files.append(str(path))

    stop = tmp_path / 'stop'
    writer = subprocess.Popen(
        [sys.executable, '-c', WRITER, str(stop)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    daemon_pks = json.loads(_run([sys.executable, '-c', SUBMIT, str(N_DAEMON), *files], env).strip().splitlines()[-1])
    assert len(daemon_pks) == N_DAEMON

    # While the daemon works: CLI predictions in the shell (at the same time) and verdi group writes until they end.
    _run(['verdi', 'group', 'create', 'sqlite-cli-group'], env)
    predictions = [
        subprocess.Popen(
            ['aiida-hpcai', 'predict', *files, '--json'],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(N_CLI)
    ]
    verdi_writes = 0
    while any(prediction.poll() is None for prediction in predictions):
        _run(['verdi', 'group', 'add-nodes', '-G', 'sqlite-cli-group', '--force', *map(str, daemon_pks)], env)
        verdi_writes += 1
    cli_pks = []
    for prediction in predictions:
        out, err = prediction.communicate()
        assert prediction.returncode == 0, err
        payload = json.loads(out)
        assert len(payload['rows']) == 2
        cli_pks.append(payload['process_pk'])
    waited = _wait_terminated(env, daemon_pks, timeout=600)

    stop.touch()
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    written = json.loads(out.strip().splitlines()[-1])
    check = json.loads(
        _run([sys.executable, '-c', CHECK, json.dumps(daemon_pks + cli_pks), json.dumps(written['written'])], env)
    )

    print(
        f'\n{N_DAEMON} daemon + {N_CLI} CLI predictions, {verdi_writes} verdi group writes; writer stored {len(written["written"])} nodes '
        f'({len(written["errors"])} errors, longest store + extra + group write {written["longest"]:.2f} s); daemon processes done {waited:.0f} s after the CLI runs; '
        f'"{LOCKED}" in logs: {len(_locked_lines(root))}, in Log nodes: {check["locked_log_entries"]}'
    )
    # Every process finished ok, with its predictions for both structures and one finished-ok job.
    for pk, process in check['processes'].items():
        assert process['state'] == 'finished' and process['exit_status'] == 0, (pk, process)
        assert {'classified_predictions', 'needs_dft', 'summary'} <= set(process['outputs']), (pk, process)
        assert process['rows'] == 2, (pk, process)
        assert [status for _, status in process['calcjobs']] == [0], (pk, process)
    # Every node the writer stored is there, with its extra and in its group; the CLI group got every process.
    assert written['errors'] == []
    assert len(written['written']) > 10
    assert check['group'] == sorted(written['written'])
    assert {int(pk): value for pk, value in check['extras'].items()} == {
        pk: index for index, pk in enumerate(written['written'])
    }
    assert check['cli_group'] == sorted(daemon_pks)
    assert _locked_lines(root) == [] and check['locked_log_entries'] == 0
