"""The model program's start-up: e3nn without torch's compiler stack, and the same numbers."""

import json
import subprocess
import sys

from aiida_hpcai.models import program

CHECK = """
import sys
from aiida_hpcai.models import program
program.import_e3nn_without_compiler()
import torch
from e3nn import o3
assert 'torch._dynamo' not in sys.modules, 'e3nn pulled in torch._dynamo'
assert torch.compiler.disable.__module__ == 'torch.compiler', 'torch.compiler.disable was not put back'
print(o3.wigner_3j(1, 1, 2).abs().sum().item())
"""

PLAIN = """
from e3nn import o3
print(o3.wigner_3j(1, 1, 2).abs().sum().item())
"""


def test_program_imports_e3nn_without_dynamo():
    """In a fresh process (as a job starts) e3nn comes without torch._dynamo, and computes what it computes."""
    light = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True)
    assert light.returncode == 0, light.stderr
    plain = subprocess.run([sys.executable, '-c', PLAIN], capture_output=True, text=True, check=True)
    assert light.stdout == plain.stdout


def test_console_script_exits_with_the_task_status_and_its_files_written(tmp_path):
    """``run`` leaves without the interpreter's teardown: the status, the error file and stderr must survive that."""
    output = tmp_path / 'out'
    refused = subprocess.run(
        [sys.executable, '-c', 'from aiida_hpcai.models.program import run; run()', 'predict', '--input',
         str(tmp_path), '--output', str(output)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == program.EXIT_TASK_ERROR
    assert json.loads((output / program.ERROR_FILE).read_text())['error'] == 'invalid_config'
    assert refused.stderr.strip() == 'hpcai-model predict: invalid_config: config.json names no models'
