"""``hpcai.train``: train (or fine-tune) a property model on a labelled StructureSet."""

from __future__ import annotations

from aiida import orm
from aiida.engine.processes.calcjobs.calcjob import validate_calc_job

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.models import contract, registry

from .base import ModelProgramCalculation, checkpoint_entry, model_file_target, validate_parameter_keys

__all__ = ('TrainCalculation',)

PARENT_TARGET = model_file_target('parent')


def validate_train_parameters(node, _):
    """What holds for every architecture; what depends on it is checked with the other inputs."""
    if node is None:
        return None
    parameters = node.get_dict()
    name = parameters.get(contract.ARCHITECTURE_KEY)
    if name is not None:
        try:
            architecture = registry.get(name)
        except registry.UnknownArchitecture as exc:
            return f'`architecture`: {exc}'
        if not architecture.supports(TrainCalculation.TASK):
            return f'architecture {name!r} cannot be trained; its tasks are {sorted(architecture.tasks)}'
    split = parameters.get('split')
    if split is not None and not ({'train', 'val'} <= set(split) or 'fractions' in split):
        return '`split` must be {"train": [ids], "val": [ids], "test": [ids]} or {"fractions": [...], "seed": int}'
    return None


def train_architecture(parameters: dict, parent: ModelData | None) -> registry.Architecture:
    """The architecture a train job runs, as the program chooses it: the `architecture` parameter, else the
    parent's (where its node records a registered one), else the default."""
    known = registry.architectures()
    if contract.ARCHITECTURE_KEY in parameters:
        return known[parameters[contract.ARCHITECTURE_KEY]]
    if parent is not None and parent.architecture in known:
        return known[parent.architecture]
    return known[contract.DEFAULT_ARCHITECTURE]


def validate_train_inputs(inputs, ctx):
    """The parameters the architecture reads, its target label in the set, a parent of the same target and
    architecture: fail before a job is queued rather than after."""
    message = validate_calc_job(inputs, ctx)
    if message:
        return message
    if 'structures' not in inputs or 'parameters' not in inputs:
        return None
    parameters = inputs['parameters'].get_dict()
    parent = inputs.get('parent_model')
    architecture = train_architecture(parameters, parent)
    message = validate_parameter_keys(architecture.train_parameters | {contract.ARCHITECTURE_KEY})(
        inputs['parameters'], None
    )
    if message:
        return f'{message} (architecture {architecture.name!r})'
    target = parameters.get('target')
    if architecture.requires_target and not target:
        return '`parameters` must name the `target` label to train on'
    model_config = parameters.get('model_config', architecture.presets[0] if architecture.presets else {})
    if not isinstance(model_config, dict) and model_config not in architecture.presets:
        return (
            f'`model_config` must be a preset of {architecture.name} {list(architecture.presets)} or a dict of '
            f'hyperparameters, not {model_config!r}'
        )
    label_names = inputs['structures'].label_names or []
    if target and target not in label_names:
        return f'the structures have no label {target!r} to train on; they have {label_names}'
    if parent is not None and parent.target not in (None, target):
        return f'the parent model predicts {parent.target!r}, not {target!r}: fine-tuning keeps the target'
    if (
        parent is not None
        and parent.architecture in registry.architectures()
        and parent.architecture != architecture.name
    ):
        return f'the parent model is a {parent.architecture!r}, not a {architecture.name!r}: fine-tuning keeps it'
    return None


class TrainCalculation(ModelProgramCalculation):
    """Run ``hpcai-model train``: fit a model (an ensemble of ``ensemble_size`` members) to one label.

    With ``parent_model`` the run fine-tunes that checkpoint (optionally freezing its first
    ``freeze_blocks`` blocks) instead of starting from random weights.
    """

    TASK = 'train'
    TEMPORARY_OUTPUTS = (contract.MODEL_FILE, contract.FIGURE_PATTERN)
    RETRIEVED_OUTPUTS = (contract.ERROR_FILE, contract.METADATA_FILE, contract.METRICS_FILE)

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            validator=validate_train_parameters,
            help='Training settings: `architecture` (a name of `aiida_hpcai.models.registry`, default `crysformer`, '
            "or the parent's) and the keys that architecture reads (its registry entry's `train_parameters`; for "
            f'crysformer {sorted(registry.BUILTIN["crysformer"].train_parameters)}). `target` (a label of '
            '`structures`) is required for a property model; the program documents the defaults of the others.',
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
            help='The figures the program wrote (`*.png`; for crysformer `learning_curve.png` and `parity.png`).',
        )

    def model_files(self):
        if 'parent_model' in self.inputs:
            return [(self.inputs.parent_model, PARENT_TARGET)]
        return []

    def build_config(self) -> dict:
        config = self.inputs.parameters.get_dict()
        if 'parent_model' in self.inputs:
            config[contract.PARENT_KEY] = checkpoint_entry(self.inputs.parent_model, PARENT_TARGET)
        return config
