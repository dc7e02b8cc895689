"""``hpcai.predict``: predict a property, with an uncertainty, for every structure of a StructureSet."""

from __future__ import annotations

from aiida import orm

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.models import contract, registry
from aiida_hpcai.models.uncertainty import UNCERTAINTY_METHODS

from .base import ModelProgramCalculation, checkpoint_entry, model_file_target, validate_parameter_keys

__all__ = ('PredictCalculation',)

PREDICT_PARAMETERS = {'batch_size', 'uncertainty', 'mc_samples', 'seed'}
# MC-dropout draws are seeded: the same inputs give the same sigma, so a cached CalcJob is not a frozen draw.
DEFAULT_SEED = 0


def validate_models(models, _):
    """At least one model, all of them for the same target in the same units, and of one registered architecture
    that can predict (where recorded: the program reads the architecture from each file all the same)."""
    if not models:
        return 'give at least one model in the `models` namespace'
    targets = {(node.target, node.units) for node in models.values()}
    if len(targets) > 1:
        return f'the models predict different targets/units and cannot form one ensemble: {sorted(map(str, targets))}'
    known = registry.architectures()
    names = sorted({node.architecture for node in models.values()} & set(known))
    if len(names) > 1:
        return f'the models are of different architectures and cannot form one ensemble: {names}'
    if names and not known[names[0]].supports(PredictCalculation.TASK):
        return f'architecture {names[0]!r} cannot predict; its tasks are {sorted(known[names[0]].tasks)}'
    return None


def validate_predict_parameters(node, port):
    message = validate_parameter_keys(PREDICT_PARAMETERS)(node, port)
    if message or node is None:
        return message
    parameters = node.get_dict()
    if parameters.get('uncertainty', 'ensemble') not in UNCERTAINTY_METHODS:
        return f'`uncertainty` must be one of {UNCERTAINTY_METHODS}, not {parameters["uncertainty"]!r}'
    for key in ('batch_size', 'mc_samples'):
        if key in parameters and (not isinstance(parameters[key], int) or parameters[key] < 1):
            return f'`{key}` must be a positive integer, not {parameters[key]!r}'
    if 'seed' in parameters and (not isinstance(parameters['seed'], int) or parameters['seed'] < 0):
        return f'`seed` must be a non-negative integer, not {parameters["seed"]!r}'
    return None


class PredictCalculation(ModelProgramCalculation):
    """Run ``hpcai-model predict``: one mean and one sigma per structure from an ensemble of checkpoints.

    Structures the models cannot handle (an element never seen in training, broken geometry, ...)
    are marked ``failed`` with a reason in the ``predictions`` output; the job still succeeds as
    long as at least one structure was predicted. If none was, it exits with
    ``ERROR_NO_STRUCTURE_PREDICTED`` and still attaches the outputs, so the reasons can be read.
    """

    TASK = 'predict'
    TEMPORARY_OUTPUTS = (contract.PREDICTIONS_FILE,)
    RETRIEVED_OUTPUTS = (contract.ERROR_FILE, contract.SUMMARY_FILE)

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace(
            'models',
            valid_type=ModelData,
            dynamic=True,
            validator=validate_models,
            help='One or more checkpoints of the same target; all their members form one '
            'ensemble whose spread is the uncertainty.',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            validator=validate_predict_parameters,
            help=f'Optional program settings: {sorted(PREDICT_PARAMETERS)} (defaults: batch_size 24 on a '
            'CPU and 64 on a GPU, uncertainty `ensemble`, mc_samples 10). `ensemble` takes the spread '
            'over every member of every checkpoint (one checkpoint file can hold a whole ensemble); '
            '`mc_dropout` samples each member `mc_samples` times with dropout active; '
            "`mc_dropout_readout` samples only the readout's dropout, at about the cost of one plain "
            f'prediction. `seed` (default {DEFAULT_SEED}) seeds the dropout draws, so the same inputs give the '
            'same sigma (and caching the CalcJob is safe).',
        )
        spec.inputs['metadata']['options']['parser_name'].default = 'hpcai.predict'

        spec.output(
            'predictions',
            valid_type=orm.ArrayData,
            help='Aligned with `structures`: arrays `mean`, `sigma` (float64; NaN where failed), `status` '
            "('ok' or 'failed') and `reason` (empty where ok).",
        )
        spec.output(
            'summary',
            valid_type=orm.Dict,
            help='target, units, n_structures, n_ok, n_failed, seconds, structures_per_second, device.',
        )

        spec.exit_code(
            310,
            'ERROR_NO_STRUCTURE_PREDICTED',
            message='None of the {n_structures} structures could be predicted; first reasons: {reasons}',
        )

    def model_files(self):
        return [(self.inputs.models[key], model_file_target(key)) for key in sorted(self.inputs.models)]

    def build_config(self) -> dict:
        parameters = self.inputs.parameters.get_dict() if 'parameters' in self.inputs else {}
        config = {
            contract.MODELS_KEY: [checkpoint_entry(node, target) for node, target in self.model_files()],
            'uncertainty': parameters.get('uncertainty', 'ensemble'),
            'mc_samples': parameters.get('mc_samples', 10),
            'seed': parameters.get('seed', DEFAULT_SEED),
        }
        if 'batch_size' in parameters:  # otherwise the program's default for its device
            config['batch_size'] = parameters['batch_size']
        return config
