"""Shared fixtures: a real AiiDA profile from aiida's own pytest fixtures, plus the shared data."""
import os
import pathlib

import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures']

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _shared_dir(name: str, env: str) -> pathlib.Path:
    return pathlib.Path(os.environ.get(env, REPO_ROOT.parent / 'shared' / name))


@pytest.fixture(scope='session')
def shared_data_dir() -> pathlib.Path:
    """``../shared/data`` (or ``$HPCAI_DATA_DIR``); the tests that read real datasets need it."""
    path = _shared_dir('data', 'HPCAI_DATA_DIR')
    if not path.is_dir():
        pytest.skip(f'shared data folder {path} not found (set HPCAI_DATA_DIR)')
    return path


@pytest.fixture(scope='session')
def shared_pseudos_dir() -> pathlib.Path:
    """``../shared/pseudos`` (or ``$HPCAI_PSEUDO_DIR``)."""
    path = _shared_dir('pseudos', 'HPCAI_PSEUDO_DIR')
    if not path.is_dir():
        pytest.skip(f'shared pseudopotential folder {path} not found (set HPCAI_PSEUDO_DIR)')
    return path


@pytest.fixture
def aiida_localhost(aiida_computer_local):
    """aiida's ``localhost`` fixture, its transport configured as ``aiida-hpcai setup`` configures it."""
    from aiida_hpcai.cli.setup import LOCALHOST_TRANSPORT

    computer = aiida_computer_local(label='localhost', configure=False)
    computer.configure(**LOCALHOST_TRANSPORT)
    return computer
