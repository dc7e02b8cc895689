"""`aiida_hpcai.models` and `hpcai-model` must work where `aiida` cannot be imported (compute nodes)."""

import json
import os
import pkgutil
import subprocess
import sys

import aiida_hpcai.models

BLOCK_AIIDA = (
    'import sys\n'
    'class _BlockAiida:\n'
    '    def find_spec(self, name, path=None, target=None):\n'
    '        if name == "aiida" or name.startswith("aiida."):\n'
    '            raise ImportError("aiida is not installed on this compute node")\n'
    'sys.meta_path.insert(0, _BlockAiida())\n'
)


def run_without_aiida(tmp_path, code: str):
    (tmp_path / 'sitecustomize.py').write_text(BLOCK_AIIDA)
    env = {**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}'}
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=False)


def test_aiida_really_is_blocked(tmp_path):
    result = run_without_aiida(tmp_path, 'import aiida')
    assert result.returncode != 0 and 'compute node' in result.stderr


def test_every_models_module_imports_without_aiida(tmp_path):
    modules = [m.name for m in pkgutil.walk_packages(aiida_hpcai.models.__path__, 'aiida_hpcai.models.')]
    assert 'aiida_hpcai.models.program' in modules
    code = 'import importlib\n' + ''.join(f'importlib.import_module({m!r})\n' for m in modules)
    result = run_without_aiida(tmp_path, code)
    assert result.returncode == 0, result.stderr


def test_program_help_and_info_without_aiida(tmp_path):
    result = run_without_aiida(
        tmp_path, 'import sys; from aiida_hpcai.models.program import main; sys.exit(main(["--help"]))'
    )
    assert result.returncode == 0 and 'TASK' in result.stdout, result.stderr
    out = tmp_path / 'out'
    code = f'import sys; from aiida_hpcai.models.program import main; sys.exit(main(["info", "-o", {str(out)!r}]))'
    result = run_without_aiida(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert 'info' in json.loads((out / 'info.json').read_text())['tasks']


def test_console_script_help(tmp_path):
    (tmp_path / 'sitecustomize.py').write_text(BLOCK_AIIDA)
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    result = subprocess.run(['hpcai-model', '--help'], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and 'hpcai-model' in result.stdout, result.stderr
