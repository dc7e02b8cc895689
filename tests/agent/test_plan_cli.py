"""``aiida-hpcai plan``: JSON and a readable summary, and one-line refusals with a non-zero status."""

import json
import os
import subprocess

from click.testing import CliRunner

from aiida_hpcai.agent.planner import plan_request
from aiida_hpcai.cli import cli

PAPER_REQUEST = 'Please generate up to 50 structures of Fe2O3 materials with a formation energy of less than 1 eV/atom'


def test_plan_json_is_the_goal():
    result = CliRunner().invoke(cli, ['plan', PAPER_REQUEST, '--json'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == plan_request(PAPER_REQUEST).model_dump(mode='json')


def test_plan_summary():
    result = CliRunner().invoke(cli, ['plan', 'Find 10 stable Li-Fe-P-O compounds, maximize the band gap'])
    assert result.exit_code == 0, result.output
    lines = [' '.join(line.split()) for line in result.output.splitlines()]
    assert lines == [
        'chemsys Fe-Li-O-P',
        'count 10',
        'energy_above_hull 0 to 0 eV/atom',
        'objective maximize band_gap',
        'dft_budget 5',
    ]


def test_plan_refusal_json_and_text():
    result = CliRunner().invoke(cli, ['plan', 'make it shiny', '--json'])
    assert result.exit_code == 1
    assert json.loads(result.output) == {
        'error': {'message': "cannot place 'shiny': the planner does not guess words", 'unparsed': ['shiny']}
    }
    # a request that starts with "-" comes after "--", as for any command-line argument
    result = CliRunner().invoke(cli, ['plan', '--', '-3 structures of Xx2O3'])
    assert result.exit_code == 1
    assert result.output.strip() == 'Error: a count must be a whole number above zero, not -3 (unparsed: -3)'


def test_plan_bad_options():
    result = CliRunner().invoke(cli, ['plan', 'Fe2O3', '--planner', 'oracle'])
    assert result.exit_code == 2 and "'oracle' is not one of 'rules', 'llm'" in result.output
    result = CliRunner().invoke(cli, ['plan'])
    assert result.exit_code == 2 and "Missing argument 'REQUEST'" in result.output


def test_console_script_without_a_profile(tmp_path):
    """The installed command on a machine with no AiiDA profile: status 1 and JSON on stdout, no traceback."""
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path)}
    refused = subprocess.run(
        ['aiida-hpcai', 'plan', 'hello world', '--json'], env=env, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)['error']['unparsed'] == ['hello', 'world']
    assert 'Traceback' not in refused.stderr
    planned = subprocess.run(
        ['aiida-hpcai', 'plan', 'Fe2O3 in Fm-3m', '--json'], env=env, capture_output=True, text=True, check=False
    )
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)['spacegroup'] == 225
