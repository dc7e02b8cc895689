"""Every entry point declared in pyproject.toml is installed, loads, and `verdi plugin list` shows it."""

import subprocess
import tomllib
from importlib.metadata import entry_points

import pytest

from tests.conftest import REPO_ROOT

DECLARED = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())['project']
PLUGINS = [(group, name) for group, names in DECLARED['entry-points'].items() for name in names]


@pytest.mark.parametrize('group, name', PLUGINS + [('console_scripts', n) for n in DECLARED['scripts']])
def test_entry_point_loads(group, name):
    (entry_point,) = entry_points(group=group, name=name)
    assert entry_point.load() is not None


@pytest.mark.parametrize('group', sorted({group for group, _ in PLUGINS if group != 'aiida.cmdline.data'}))
def test_verdi_plugin_list_shows_them(group):
    output = subprocess.run(['verdi', 'plugin', 'list', group], capture_output=True, text=True, check=True).stdout
    for plugin_group, name in PLUGINS:
        if plugin_group == group:
            assert name in output
