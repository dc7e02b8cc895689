"""What every CalcJob running the ``hpcai-model`` program shares.

The remote working directory of such a job looks like this (the names are those of
:mod:`aiida_hpcai.models.contract`, which the program imports too)::

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
from aiida_hpcai.models import contract

__all__ = ('ModelProgramCalculation', 'validate_device')

# the scheduler's capture of the program's output; the job's own files are in `contract`
STDOUT_FILENAME = 'hpcai-model.out'
STDERR_FILENAME = 'hpcai-model.err'

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
    RETRIEVED_OUTPUTS: tuple[str, ...] = (contract.ERROR_FILE,)

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
        # 330-369: failures the program reported itself in `error.json`, one per code of the contract.
        spec.exit_code(
            331,
            'ERROR_PROGRAM_UNKNOWN_ERROR',
            message='The program reported an error code this plugin does not know, `{code}`: {message}',
        )
        for error in contract.PROGRAM_ERRORS:
            spec.exit_code(
                error.exit_status, error.exit_label, message=error.message, invalidates_cache=error.invalidates_cache
            )

    def build_config(self) -> dict:
        """The ``config.json`` the program reads."""
        raise NotImplementedError

    def model_files(self) -> list[tuple[ModelData, str]]:
        """``(node, relative target path)`` of every checkpoint to copy into the working directory."""
        return []

    def prepare_for_submission(self, folder):
        config = self.build_config()
        config['device'] = self.inputs.device.value
        with folder.open(contract.CONFIG_FILE, 'w') as handle:
            json.dump(config, handle, indent=2, sort_keys=True)

        if self.model_files():
            folder.get_subfolder(contract.MODELS_DIR, create=True)
        local_copy_list = []
        if 'structures' in self.inputs:  # a subclass that reads no structures (generate) removes the port
            local_copy_list.append((self.inputs.structures.uuid, StructureSet.FILENAME, contract.STRUCTURES_FILE))
        local_copy_list += [(node.uuid, node.filename, target) for node, target in self.model_files()]

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self.TASK, '--input', '.', '--output', contract.OUTPUT_DIR]
        codeinfo.stdout_name = STDOUT_FILENAME
        codeinfo.stderr_name = STDERR_FILENAME

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        # depth 0: the files land at the top of the retrieved folder, without the `outputs/` prefix.
        calcinfo.retrieve_list = [STDOUT_FILENAME, STDERR_FILENAME] + [
            (f'{contract.OUTPUT_DIR}/{name}', '.', 0) for name in self.RETRIEVED_OUTPUTS
        ]
        calcinfo.retrieve_temporary_list = [
            (f'{contract.OUTPUT_DIR}/{name}', '.', 0) for name in self.TEMPORARY_OUTPUTS
        ]
        return calcinfo


def model_file_target(name: str) -> str:
    """Where a copied checkpoint lands in the working directory (``models/<name>.pt``)."""
    return f'{contract.MODELS_DIR}/{name}.pt'


def checkpoint_entry(node: ModelData, target: str) -> dict:
    """How the config names one copied checkpoint: the program re-checks the hash before loading it."""
    return contract.checkpoint_entry(target, node.sha256)
