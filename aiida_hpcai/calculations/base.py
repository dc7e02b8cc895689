"""What every CalcJob running the ``hpcai-model`` program shares.

The remote working directory of such a job looks like this::

    config.json          written by the CalcJob (kept in the CalcJob node's repository)
    structures.npz       copied from the StructureSet node's repository (``local_copy_list``)
    models/<name>.pt     copied from each ModelData node's repository (``local_copy_list``)
    outputs/             written by ``hpcai-model <task> --input . --output outputs``

Input files that already live in a node's repository are copied with ``local_copy_list`` so that
they are not stored a second time. Large output files (checkpoints, predictions, plots) are
retrieved with ``retrieve_temporary_list``: the parser turns them into nodes, and the
``retrieved`` folder keeps only the small JSON reports and the program's stdout/stderr.
"""

from __future__ import annotations

import json
import re

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet

__all__ = ('ModelProgramCalculation', 'validate_device')

CONFIG_FILENAME = 'config.json'
OUTPUT_DIRNAME = 'outputs'
STDOUT_FILENAME = 'hpcai-model.out'
STDERR_FILENAME = 'hpcai-model.err'
ERROR_FILENAME = 'error.json'

# The program's error codes (``OUTPUT/error.json``) and the exit code label each maps to.
PROGRAM_ERROR_EXIT_CODES = {
    'checkpoint_mismatch': 'ERROR_CHECKPOINT_MISMATCH',
    'incompatible_models': 'ERROR_INCOMPATIBLE_MODELS',
    'nan_output': 'ERROR_NAN_OUTPUT',
    'out_of_memory': 'ERROR_OUT_OF_MEMORY',
    'missing_label': 'ERROR_MISSING_LABEL',
    'invalid_split': 'ERROR_INVALID_SPLIT',
    'invalid_config': 'ERROR_INVALID_CONFIG',
    'unexpected_error': 'ERROR_PROGRAM_UNEXPECTED',
}

_DEVICE_PATTERN = re.compile(r'^(cpu|cuda(:\d+)?)$')


def validate_device(node, _):
    """Accept ``cpu``, ``cuda`` or ``cuda:<index>``: what ``torch.device`` understands and the program supports."""
    if node is not None and not _DEVICE_PATTERN.match(node.value):
        return f'device {node.value!r} is not one of cpu, cuda, cuda:<index>'
    return None


def validate_parameter_keys(allowed: set[str]):
    """Return a validator refusing keys the program would not read: a typo must not be silently ignored."""

    def validator(node, _):
        if node is None:
            return None
        unknown = sorted(set(node.get_dict()) - allowed)
        if unknown:
            return f'unknown parameter(s) {unknown}; allowed: {sorted(allowed)}'
        return None

    return validator


class ModelProgramCalculation(CalcJob):
    """Base class: run ``hpcai-model <TASK>`` on a StructureSet (and, optionally, checkpoints).

    Subclasses set :attr:`TASK` and implement :meth:`build_config` (the dict written as
    ``config.json``) and :meth:`model_files` (which ModelData nodes to copy where).
    """

    TASK: str = ''
    # Output files the parser turns into nodes; retrieved temporarily so they are stored once.
    TEMPORARY_OUTPUTS: tuple[str, ...] = ()
    # Small output files kept in the ``retrieved`` folder for the record.
    RETRIEVED_OUTPUTS: tuple[str, ...] = (ERROR_FILENAME,)

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('structures', valid_type=StructureSet, help='The structures, as one StructureSet node.')
        spec.input(
            'device',
            valid_type=orm.Str,
            default=lambda: orm.Str('cpu'),
            validator=validate_device,
            help='Torch device the program runs on: `cpu`, `cuda` or `cuda:<index>`. A GPU run also needs '
            'scheduler options that give the job a GPU (see the documentation).',
        )
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        spec.inputs['metadata']['options']['withmpi'].default = False

        # 300-329: the job ran but its results are missing or unreadable.
        spec.exit_code(
            300,
            'ERROR_OUTPUT_FILES_MISSING',
            message='The program wrote no `{filename}`: it probably crashed or was killed; see '
            f'`{STDERR_FILENAME}` in the retrieved folder.',
        )
        spec.exit_code(
            301, 'ERROR_OUTPUT_FILES_UNREADABLE', message='The output file `{filename}` could not be read: {exception}'
        )
        spec.exit_code(302, 'ERROR_OUTPUT_INCONSISTENT', message='The program output is inconsistent: {message}')
        # 330-369: failures the program reported itself in `error.json`.
        spec.exit_code(330, 'ERROR_PROGRAM_UNEXPECTED', message='The program failed unexpectedly: {message}')
        spec.exit_code(
            331,
            'ERROR_PROGRAM_UNKNOWN_ERROR',
            message='The program reported an error code this plugin does not know, `{code}`: {message}',
        )
        spec.exit_code(332, 'ERROR_INVALID_CONFIG', message='The program refused `config.json`: {message}')
        spec.exit_code(
            340,
            'ERROR_CHECKPOINT_MISMATCH',
            message='A checkpoint does not match its recorded sha256 or cannot be loaded: {message}',
        )
        spec.exit_code(
            341,
            'ERROR_INCOMPATIBLE_MODELS',
            message='The models cannot be combined (different targets, units or input features): {message}',
        )
        spec.exit_code(350, 'ERROR_NAN_OUTPUT', message='The model produced NaN or infinite values: {message}')
        spec.exit_code(
            351,
            'ERROR_OUT_OF_MEMORY',
            invalidates_cache=True,
            message='The program ran out of (GPU) memory; try a smaller `batch_size`: {message}',
        )
        spec.exit_code(360, 'ERROR_MISSING_LABEL', message='The structures lack the label to train on: {message}')
        spec.exit_code(361, 'ERROR_INVALID_SPLIT', message='The train/val/test split cannot be used: {message}')

    def build_config(self) -> dict:
        """The ``config.json`` the program reads."""
        raise NotImplementedError

    def model_files(self) -> list[tuple[ModelData, str]]:
        """``(node, relative target path)`` of every checkpoint to copy into the working directory."""
        return []

    def prepare_for_submission(self, folder):
        config = self.build_config()
        config['device'] = self.inputs.device.value
        with folder.open(CONFIG_FILENAME, 'w') as handle:
            json.dump(config, handle, indent=2, sort_keys=True)

        if self.model_files():
            folder.get_subfolder('models', create=True)
        local_copy_list = [(self.inputs.structures.uuid, StructureSet.FILENAME, StructureSet.FILENAME)]
        local_copy_list += [(node.uuid, node.filename, target) for node, target in self.model_files()]

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self.TASK, '--input', '.', '--output', OUTPUT_DIRNAME]
        codeinfo.stdout_name = STDOUT_FILENAME
        codeinfo.stderr_name = STDERR_FILENAME

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        # depth 0: the files land at the top of the retrieved folder, without the `outputs/` prefix.
        calcinfo.retrieve_list = [STDOUT_FILENAME, STDERR_FILENAME] + [
            (f'{OUTPUT_DIRNAME}/{name}', '.', 0) for name in self.RETRIEVED_OUTPUTS
        ]
        calcinfo.retrieve_temporary_list = [(f'{OUTPUT_DIRNAME}/{name}', '.', 0) for name in self.TEMPORARY_OUTPUTS]
        return calcinfo


def checkpoint_entry(node: ModelData, target: str) -> dict:
    """How the config names one copied checkpoint: the program re-checks the hash before loading it."""
    return {'file': target, 'sha256': node.sha256}
