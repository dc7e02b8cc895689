"""The ``aiida-hpcai plan`` examples of docs/source/planner.md print what the page shows."""

import pathlib
import re
import shlex

import pytest
from click.testing import CliRunner

from aiida_hpcai.cli import cli

PAGE = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'source' / 'planner.md'


def documented_commands() -> list[tuple[str, str]]:
    """(command, printed text) of every deterministic ``$ aiida-hpcai plan`` line in the page's console blocks."""
    examples = []
    for block in re.findall(r'```console\n(.*?)```', PAGE.read_text(), flags=re.DOTALL):
        for chunk in re.split(r'^\$ ', block, flags=re.MULTILINE)[1:]:
            command, _, output = chunk.partition('\n')
            if command.startswith('aiida-hpcai plan') and '--planner llm' not in command:
                examples.append((command, output.strip()))
    return examples


def test_the_page_has_examples():
    assert len(documented_commands()) >= 4


@pytest.mark.parametrize('command, output', documented_commands(), ids=lambda value: value[:50])
def test_documented_output(command, output):
    result = CliRunner().invoke(cli, shlex.split(command)[1:])
    assert result.output.strip() == output
    assert result.exit_code == (1 if '"error"' in output else 0)
