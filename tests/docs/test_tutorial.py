"""Run docs/source/tutorial_surrogate.md as a user would, on the test profile.

Extraction rule (also stated in a comment at the top of the tutorial):
- a fenced block whose info string is exactly ``console`` is run: each line starting with ``$ `` is a
  command (a trailing ``\\`` continues it on the next line); other lines are example output, ignored;
- a fenced block whose info string is exactly ``python`` is run with ``exec``, each in a fresh namespace;
- every other fence (``bash``, ``yaml``, ``text``, ``{code-block} python``, ``{eval-rst}``) is shown only.
Runnable blocks run in the order they appear on the page, all in one working folder.

Commands are ``aiida-hpcai ...`` or ``verdi ...`` and are invoked in this process with click's CliRunner,
as tests/cli does, so they use the test profile. ``> FILE`` writes the command's stdout to FILE.
``<CLASS_PK>`` in a command stands for the pk the last command printed as ``Class<pk>``
(e.g. ``ModelData<12>`` fills ``<MODELDATA_PK>``), which is what the page tells its readers to do.

The working folder sits beside a ``shared`` folder linking the shared data (and pseudopotentials), so the
page's ``../shared/data/...`` paths resolve as they do in a checkout.
"""

import dataclasses
import re
import shlex

import pytest
from click.testing import CliRunner

from tests.conftest import REPO_ROOT, _shared_dir
from tests.surrogate_helpers import needs_model_program

TUTORIAL = REPO_ROOT / 'docs' / 'source' / 'tutorial_surrogate.md'
RUNNABLE = ('console', 'python')
FENCE = re.compile(r'^```([^\n]*)\n(.*?)^```[ \t]*$', re.MULTILINE | re.DOTALL)
PRINTED_PK = re.compile(r'\b([A-Z][A-Za-z]+)<(\d+)>')
PLACEHOLDER = re.compile(r'<([A-Z]+_PK)>')


@dataclasses.dataclass
class Block:
    kind: str  # 'console' or 'python'
    line: int  # line of the opening fence, for error messages
    text: str

    def commands(self) -> list[str]:
        commands, pending = [], None
        for raw in self.text.splitlines():
            line = raw.strip()
            if pending is not None:
                pending += ' ' + line.rstrip('\\').strip()
            elif line.startswith('$ '):
                pending = line[2:].rstrip('\\').strip()
            else:
                continue
            if not line.endswith('\\'):
                commands.append(pending)
                pending = None
        return commands


def runnable_blocks(markdown: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(markdown):
        info = match.group(1).strip()
        if info in RUNNABLE:
            blocks.append(Block(info, markdown.count('\n', 0, match.start()) + 1, match.group(2)))
    return blocks


def test_extraction_rule():
    """The rule the page relies on: only ```console and ```python blocks run, `$ ` lines are commands."""
    page = (
        '```console\n$ aiida-hpcai setup\nsome output\n$ aiida-hpcai predict a.cif \\\n    --json\n```\n'
        '```bash\naiida-hpcai predict --device cuda\n```\n'
        '```{code-block} python\nsubmit(x)\n```\n'
        '```python\nprint(1)\n```\n'
    )
    blocks = runnable_blocks(page)
    assert [block.kind for block in blocks] == ['console', 'python']
    assert blocks[0].commands() == ['aiida-hpcai setup', 'aiida-hpcai predict a.cif --json']
    assert blocks[1].text == 'print(1)\n'


def test_tutorial_has_the_steps_it_promises():
    """Fails if the page loses its runnable commands (the run below would otherwise pass vacuously)."""
    blocks = runnable_blocks(TUTORIAL.read_text())
    commands = [command for block in blocks if block.kind == 'console' for command in block.commands()]
    subcommands = [shlex.split(command)[1] for command in commands if command.startswith('aiida-hpcai ')]
    assert {'setup', 'train', 'predict'} <= set(subcommands), commands
    assert any('--model' in command for command in commands if ' predict ' in command), 'predict with a trained model'
    assert any('--model' not in command for command in commands if ' predict ' in command), 'predict, pretrained'
    assert any('QueryBuilder' in block.text for block in blocks if block.kind == 'python')


def _cli(program: str):
    if program == 'aiida-hpcai':
        from aiida_hpcai.cli import cli

        return cli
    if program == 'verdi':
        from aiida.cmdline.commands.cmd_verdi import verdi

        return verdi
    raise AssertionError(f'the tutorial runs {program!r}; only aiida-hpcai and verdi commands can be run here')


def _run_command(command: str, pks: dict, location: str) -> None:
    unresolved = [name for name in PLACEHOLDER.findall(command) if name not in pks]
    assert not unresolved, f'{location}: {unresolved} not printed by an earlier command: {command}'
    command = PLACEHOLDER.sub(lambda match: pks[match.group(1)], command)
    args = shlex.split(command)
    redirect = None
    if '>' in args:
        position = args.index('>')
        args, redirect = args[:position], args[position + 1]
    result = CliRunner().invoke(_cli(args[0]), args[1:])
    assert result.exit_code == 0, (
        f'{location}: `{command}` exited with {result.exit_code}\n{result.output}\n{result.exception!r}'
    )
    if redirect is not None:
        with open(redirect, 'w') as handle:
            handle.write(result.stdout)
    for name, pk in PRINTED_PK.findall(result.output):
        pks[f'{name.upper()}_PK'] = pk


@pytest.fixture
def tutorial_folder(tmp_path, shared_data_dir, monkeypatch):
    """``tmp/work`` beside ``tmp/shared/{data,pseudos}``, the layout the page assumes.

    The pseudopotentials are optional: without them `aiida-hpcai setup` skips the family, which the
    tutorial does not use.
    """
    shared = tmp_path / 'shared'
    shared.mkdir()
    (shared / 'data').symlink_to(shared_data_dir, target_is_directory=True)
    pseudos = _shared_dir('pseudos', 'HPCAI_PSEUDO_DIR')
    if pseudos.is_dir():
        (shared / 'pseudos').symlink_to(pseudos, target_is_directory=True)
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def run_page(page) -> None:
    """Run the page's blocks in order (the rule above); tutorial_directive.md is run the same way."""
    blocks = runnable_blocks(page.read_text())
    assert blocks, f'{page} has no runnable block'
    pks: dict[str, str] = {}
    for block in blocks:
        location = f'{page.name}:{block.line}'
        if block.kind == 'console':
            for command in block.commands():
                _run_command(command, pks, location)
        else:
            exec(compile(block.text, location, 'exec'), {'__name__': '__tutorial__'})  # noqa: S102


@needs_model_program
def test_tutorial_runs(aiida_profile, tutorial_folder):
    run_page(TUTORIAL)
    assert (tutorial_folder / 'predictions.json').is_file()
