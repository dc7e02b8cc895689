"""The model program's start-up: e3nn without torch's compiler stack, and the same numbers."""

import subprocess
import sys

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
