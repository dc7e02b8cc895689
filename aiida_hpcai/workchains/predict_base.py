"""``hpcai.predict_base``: run ``hpcai.predict`` and react to its failures, as ``PwBaseWorkChain`` does for pw.x.

A ``BaseRestartWorkChain`` around the CalcJob. Its process handlers:

- out of memory (``ERROR_OUT_OF_MEMORY``): run again with half the batch size, down to ``min_batch_size``; a job
  that runs out of memory at that size ends the WorkChain with ``ERROR_OUT_OF_MEMORY``;
- nothing predicted (``ERROR_NO_STRUCTURE_PREDICTED``: every structure invalid for the model): an answer, not a
  fault; the WorkChain exits with that code and still returns the CalcJob's outputs, whose reasons say why;
- any other error the program reported (a corrupt checkpoint, NaN from the model, a crash): running again would
  fail the same way, so the WorkChain stops at once with the CalcJob's own exit code and message, and no outputs.

A job that left no report at all (killed by the scheduler, a node lost) is BaseRestartWorkChain's unhandled
failure: by default it stops with ``ERROR_UNHANDLED_FAILURE``; ``on_unhandled_failure='restart_once'`` runs it
once more.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_hpcai.calculations.predict import PredictCalculation
from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models import contract
from aiida_hpcai.workchains.launch_once import LaunchesOnce

__all__ = ('PredictBaseWorkChain',)

DEFAULT_MIN_BATCH_SIZE = 1

# The CalcJob's exit codes this WorkChain can end with, under the same number and label: nothing predicted (310)
# and every error the program reports (330-399).
_JOB_EXIT_CODES = {
    label: code for label, code in PredictCalculation.spec().exit_codes.items() if 310 <= code.status < 400
}
# Those that running the program again with the same inputs cannot mend.
_FINAL_EXIT_CODES = [
    code for label, code in _JOB_EXIT_CODES.items() if code.status >= 330 and label != 'ERROR_OUT_OF_MEMORY'
]


def validate_min_batch_size(node, _):
    if node is not None and node.value < 1:
        return f'`min_batch_size` must be a positive integer, not {node.value}'
    return None


class PredictBaseWorkChain(LaunchesOnce, BaseRestartWorkChain):
    """Run ``hpcai.predict`` on a StructureSet; retry with a smaller batch when the program runs out of memory."""

    _process_class = PredictCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(
            PredictCalculation,
            namespace='predict',
            exclude=('structures', 'models'),
            namespace_options={
                'help': 'Inputs of the `hpcai.predict` CalcJob (code, device, parameters, metadata.options).'
            },
        )
        spec.input('structures', valid_type=StructureSet, help='The structures to predict, as one StructureSet.')
        spec.input_namespace(
            'models',
            valid_type=ModelData,
            dynamic=True,
            help='The checkpoints (one, or several forming an ensemble) of one target.',
        )
        spec.input(
            'min_batch_size',
            valid_type=orm.Int,
            default=lambda: orm.Int(DEFAULT_MIN_BATCH_SIZE),
            validator=validate_min_batch_size,
            help='The out-of-memory handler halves `parameters.batch_size` (or the default of the device) down to '
            'this size; a job out of memory at this size ends the WorkChain with `ERROR_OUT_OF_MEMORY`.',
        )
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.expose_outputs(PredictCalculation)

        # The CalcJob's own codes where the WorkChain ends because of them, with the same number and label.
        for label, code in _JOB_EXIT_CODES.items():
            spec.exit_code(code.status, label, message=code.message)

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(PredictCalculation, namespace='predict'))
        self.ctx.inputs.structures = self.inputs.structures
        self.ctx.inputs.models = dict(self.inputs.models)

    def report_error_handled(self, node, action: str) -> None:
        self.report(f'{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: {action}')

    def same_exit_code(self, node):
        """This WorkChain's exit code of the number the CalcJob ``node`` exited with, and the CalcJob's message."""
        return self.exit_codes(node.exit_status)._replace(message=node.exit_message)

    def batch_size(self) -> int:
        """The batch size the next job runs with: its ``parameters``, else the program's default for its device."""
        parameters = self.ctx.inputs.get('parameters')
        if parameters is not None and 'batch_size' in parameters.get_dict():
            return parameters['batch_size']
        device = self.ctx.inputs.get('device')
        return contract.default_batch_size(device.value if device is not None else 'cpu')

    @process_handler(priority=600, exit_codes=PredictCalculation.exit_codes.ERROR_OUT_OF_MEMORY)
    def handle_out_of_memory(self, node):
        """Halve the batch size, down to ``min_batch_size``; out of memory at that size: stop."""
        batch_size, floor = self.batch_size(), self.inputs.min_batch_size.value
        if batch_size <= floor:
            self.report_error_handled(node, f'out of memory at batch_size {batch_size} (min_batch_size {floor})')
            return ProcessHandlerReport(True, self.same_exit_code(node))
        smaller = max(floor, batch_size // 2)
        parameters = self.ctx.inputs.get('parameters')
        self.ctx.inputs.parameters = orm.Dict({**(parameters.get_dict() if parameters else {}), 'batch_size': smaller})
        self.report_error_handled(node, f'out of memory at batch_size {batch_size}: running again with {smaller}')
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=PredictCalculation.exit_codes.ERROR_NO_STRUCTURE_PREDICTED)
    def handle_nothing_predicted(self, node):
        """Not a fault of the job: return its outputs (every structure with its reason) and its exit code."""
        self.ctx.is_finished = True
        self.results()
        return ProcessHandlerReport(True, self.same_exit_code(node))

    @process_handler(priority=400, exit_codes=_FINAL_EXIT_CODES)
    def handle_program_error(self, node):
        """An error the program reported that the same inputs would meet again: stop with the CalcJob's code."""
        self.report_error_handled(node, 'the same inputs would fail again, stopping')
        return ProcessHandlerReport(True, self.same_exit_code(node))
