"""Run docs/source/tutorial_coordinate.md as a user would, on the test profile, with the rules of
tests/docs/test_tutorial.py (``run_page``): the shipped EquiCSP and Crysformer models, one small pw.x run."""

import shlex
import shutil

from tests.conftest import REPO_ROOT, require
from tests.docs.test_tutorial import run_page, runnable_blocks, tutorial_folder  # noqa: F401 -- the fixture
from tests.surrogate_helpers import needs_model_program

TUTORIAL = REPO_ROOT / 'docs' / 'source' / 'tutorial_coordinate.md'


def test_tutorial_has_the_steps_it_promises():
    """Fails if the page loses its runnable commands (the run below would otherwise pass vacuously)."""
    blocks = runnable_blocks(TUTORIAL.read_text())
    commands = [command for block in blocks if block.kind == 'console' for command in block.commands()]
    subcommands = [shlex.split(command)[1] for command in commands if command.startswith('aiida-hpcai ')]
    assert {'setup', 'plan', 'design'} <= set(subcommands), commands
    assert any('--surrogate-model <MODELDATA_PK>' in command for command in commands), 'predicts with the fine-tune'
    python = [block.text for block in blocks if block.kind == 'python']
    assert any('decision_log.json' in text for text in python) and any('QueryBuilder' in text for text in python)


@needs_model_program
def test_tutorial_runs(aiida_profile, tutorial_folder):  # noqa: F811 -- the imported fixture
    require(shutil.which('pw.x') is not None and shutil.which('mpirun') is not None, 'pw.x or mpirun not found')
    require((tutorial_folder.parent / 'shared' / 'pseudos').is_dir(), 'no pseudopotential folder')
    run_page(TUTORIAL)
    assert (tutorial_folder / 'si_loop' / 'progress.png').is_file()
