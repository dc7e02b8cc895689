"""``hpcai.train``: train (or fine-tune) a property model on a labelled StructureSet."""

from __future__ import annotations

from aiida import orm
from aiida.engine.processes.calcjobs.calcjob import validate_calc_job

from aiida_hpcai.data.model import ModelData

from .base import ModelProgramCalculation, checkpoint_entry, validate_parameter_keys

__all__ = ('TrainCalculation',)

TRAIN_PARAMETERS = {
    'target',
    'units',
    'model_config',
    'ensemble_size',
    'epochs',
    'batch_size',
    'learning_rate',
    'seed',
    'max_minutes',
    'patience',
    'split',
    'freeze_blocks',
    'element_reference',
    # finer training knobs the program also reads (aiida_hpcai.models.training.TrainingConfig)
    'weight_decay',
    'warmup_fraction',
    'min_lr_ratio',
    'ridge_alpha',
    'gradient_clip',
    'mc_samples',
    'dataset_name',
}
MODEL_CONFIGS = ('tiny', 'cpu', 'paper')
PARENT_TARGET = 'models/parent.pt'


def validate_train_parameters(node, port):
    message = validate_parameter_keys(TRAIN_PARAMETERS)(node, port)
    if message or node is None:
        return message
    parameters = node.get_dict()
    if not parameters.get('target'):
        return '`parameters` must name the `target` label to train on'
    model_config = parameters.get('model_config', 'tiny')
    if not isinstance(model_config, dict) and model_config not in MODEL_CONFIGS:
        return f'`model_config` must be one of {MODEL_CONFIGS} or a dict of hyperparameters, not {model_config!r}'
    split = parameters.get('split')
    if split is not None and not ({'train', 'val'} <= set(split) or 'fractions' in split):
        return '`split` must be {"train": [ids], "val": [ids], "test": [ids]} or {"fractions": [...], "seed": int}'
    return None


def validate_train_inputs(inputs, ctx):
    """The label must exist in the set: fail before a job is queued rather than after."""
    message = validate_calc_job(inputs, ctx)
    if message:
        return message
    if 'structures' not in inputs or 'parameters' not in inputs:
        return None
    target = inputs['parameters'].get('target')
    label_names = inputs['structures'].label_names or []
    if target and target not in label_names:
        return f'the structures have no label {target!r} to train on; they have {label_names}'
    parent = inputs.get('parent_model')
    if parent is not None and parent.target not in (None, target):
        return f'the parent model predicts {parent.target!r}, not {target!r}: fine-tuning keeps the target'
    return None


class TrainCalculation(ModelProgramCalculation):
    """Run ``hpcai-model train``: fit a model (an ensemble of ``ensemble_size`` members) to one label.

    With ``parent_model`` the run fine-tunes that checkpoint (optionally freezing its first
    ``freeze_blocks`` blocks) instead of starting from random weights.
    """

    TASK = 'train'
    TEMPORARY_OUTPUTS = ('model.pt', 'learning_curve.png', 'parity.png')
    RETRIEVED_OUTPUTS = ('error.json', 'metadata.json', 'metrics.json')

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            validator=validate_train_parameters,
            help=f'Training settings: {sorted(TRAIN_PARAMETERS)}. `target` (a label of `structures`) is '
            'required; the program documents the defaults of the others.',
        )
        spec.input(
            'parent_model',
            valid_type=ModelData,
            required=False,
            help='Checkpoint to fine-tune instead of training from scratch.',
        )
        spec.inputs.validator = validate_train_inputs
        spec.inputs['metadata']['options']['parser_name'].default = 'hpcai.train'

        spec.output(
            'model',
            valid_type=ModelData,
            help='The trained checkpoint; its attributes record architecture, hyperparameters, target, units, '
            'metrics and the uuid of the training set.',
        )
        spec.output('metrics', valid_type=orm.Dict, help='Errors on the train/val/test splits and training history.')
        spec.output(
            'plots',
            valid_type=orm.FolderData,
            required=False,
            help='`learning_curve.png` and `parity.png`, where the program wrote them.',
        )

    def model_files(self):
        if 'parent_model' in self.inputs:
            return [(self.inputs.parent_model, PARENT_TARGET)]
        return []

    def build_config(self) -> dict:
        config = self.inputs.parameters.get_dict()
        if 'parent_model' in self.inputs:
            config['parent'] = checkpoint_entry(self.inputs.parent_model, PARENT_TARGET)
        return config
