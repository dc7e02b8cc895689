"""Shared fixtures: a real AiiDA profile from aiida's own pytest fixtures, plus the shared data."""

import os
import pathlib
import shutil

import pytest
from aiida import orm

from aiida_hpcai.provisioning import LOCALHOST_TRANSPORT

pytest_plugins = ['aiida.tools.pytest_fixtures']

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Run the scale-out tests last: they load a PostgreSQL profile of their own, and when the session's profile
    comes back its storage is a new object, so nodes that session-scoped fixtures stored before would be closed."""
    scaleout = REPO_ROOT / 'tests' / 'scaleout'
    items.sort(key=lambda item: scaleout in pathlib.Path(str(item.fspath)).parents)


def _shared_dir(name: str, env: str) -> pathlib.Path:
    return pathlib.Path(os.environ.get(env, REPO_ROOT.parent / 'shared' / name))


def require(condition: bool, reason: str) -> None:
    """Skip a test whose prerequisite is missing on a developer's machine; fail it in CI (``CI=true``),
    where every prerequisite is installed by ``.ci/run`` and a silent skip would hide a broken set-up."""
    if condition:
        return
    if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
        pytest.fail(f'prerequisite missing in CI: {reason}', pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope='session')
def shared_data_dir() -> pathlib.Path:
    """``../shared/data`` (or ``$HPCAI_DATA_DIR``); the tests that read real datasets need it."""
    path = _shared_dir('data', 'HPCAI_DATA_DIR')
    require(path.is_dir(), f'shared data folder {path} not found (set HPCAI_DATA_DIR)')
    return path


@pytest.fixture(scope='session')
def shared_pseudos_dir() -> pathlib.Path:
    """``../shared/pseudos`` (or ``$HPCAI_PSEUDO_DIR``)."""
    path = _shared_dir('pseudos', 'HPCAI_PSEUDO_DIR')
    require(path.is_dir(), f'shared pseudopotential folder {path} not found (set HPCAI_PSEUDO_DIR)')
    return path


@pytest.fixture
def aiida_localhost(aiida_computer_local):
    """aiida's ``localhost`` fixture, its transport configured as ``aiida-hpcai setup`` configures it."""
    computer = aiida_computer_local(label='localhost', configure=False)
    computer.configure(**LOCALHOST_TRANSPORT)
    return computer


PSEUDO_FAMILY = 'SSSP/1.3/PBE/efficiency/subset'
PSEUDO_SUBSET = 'sssp_pbe_efficiency_1.3.0_subset'


@pytest.fixture(scope='session')
def sssp_family(aiida_profile, shared_pseudos_dir):
    """The SSSP subset installed as ``aiida-hpcai setup`` installs it."""
    from aiida_hpcai.provisioning import install_pseudo_family

    family, _ = install_pseudo_family(shared_pseudos_dir / PSEUDO_SUBSET, PSEUDO_FAMILY)
    return family


@pytest.fixture(scope='session')
def pw_code(aiida_profile, tmp_path_factory):
    """``pw.x`` on a local computer running 2 MPI ranks (``--allow-run-as-root`` when we are root)."""
    executable = shutil.which('pw.x')
    require(executable is not None and shutil.which('mpirun') is not None, 'pw.x or mpirun not found')
    label = 'hpcai-dft-localhost'
    try:
        computer = orm.load_computer(label)
    except Exception:  # noqa: BLE001 -- NotExistent; first use in this profile
        computer = orm.Computer(
            label=label,
            hostname='localhost',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=str(tmp_path_factory.mktemp('aiida_work')),
        ).store()
        mpirun = ['mpirun'] + (['--allow-run-as-root'] if os.geteuid() == 0 else []) + ['-np', '{tot_num_mpiprocs}']
        computer.set_mpirun_command(mpirun)
        computer.set_default_mpiprocs_per_machine(2)
        computer.set_prepend_text('export OMP_NUM_THREADS=1')
        computer.configure(**LOCALHOST_TRANSPORT)
    try:
        return orm.load_code(f'pw@{label}')
    except Exception:  # noqa: BLE001
        return orm.InstalledCode(
            label='pw', computer=computer, filepath_executable=executable, default_calc_job_plugin='quantumespresso.pw'
        ).store()


@pytest.fixture
def no_shipped_generator(monkeypatch, tmp_path):
    """As an installation whose shipped EquiCSP checkpoints are missing (the surrogates still there)."""
    from aiida_hpcai.models import checkpoint

    missing = {key: f'missing-{name}' for key, name in checkpoint.PRETRAINED_FILES.items() if key.startswith('equicsp')}
    monkeypatch.setattr(checkpoint, 'PRETRAINED_FILES', {**checkpoint.PRETRAINED_FILES, **missing})


@pytest.fixture(autouse=True)
def process_reports_in_the_database():
    """Process reports stored as Log nodes in every test, as in a process that loaded the profile.

    A command run in this process (CliRunner) reconfigures logging through its verbosity option, without the
    handler that stores reports in the database (aiida.common.log.configure_logging(with_orm=False)): every
    later test then found no Log node of its processes (tests/workchains/test_dft_faults.py in the CI).
    """
    yield
    import logging

    from aiida.common.log import configure_logging
    from aiida.orm.utils.log import DBLogHandler

    if not any(isinstance(handler, DBLogHandler) for handler in logging.getLogger('aiida').handlers):
        configure_logging(with_orm=True)
