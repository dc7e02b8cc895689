"""The architectures ``hpcai-model`` can train and run: name -> :class:`Architecture`.

The program's tasks ``train`` and ``predict`` (and ``generate``, once it exists) dispatch through this
registry: to the architecture that ``config.json`` names (``"architecture"``), else to the one its
checkpoints name (``checkpoint["architecture"]``), else to ``crysformer``. The ``hpcai.train`` CalcJob
validates its ``architecture`` parameter, the parameter keys and the ``model_config`` preset against
the same entries; CalcJobs and parsers need no change for a new architecture.

This module imports neither torch nor aiida: an entry names its network and task functions as
``'module:attribute'`` strings, imported only when a task runs.

Adding an architecture
----------------------
1. One module, e.g. ``aiida_hpcai/models/equicsp.py``, with a task function per task it supports.
   Every task function has the signature of the program's tasks::

       def run_train(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None
       def run_predict(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None
       def run_generate(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None

   ``config`` is ``config.json`` as a dict; the files are those of :mod:`aiida_hpcai.models.contract`:

   - ``train`` reads ``input_dir / STRUCTURES_FILE`` and the config (the ``hpcai.train`` parameters, plus
     ``config[PARENT_KEY]``, a checkpoint entry, to fine-tune), and writes into ``output_dir``:
     ``MODEL_FILE`` (a checkpoint, see below), ``METADATA_FILE`` (a JSON object with at least
     ``METADATA_KEYS``; ``target``/``units`` null for a model without a target), ``METRICS_FILE`` (a JSON
     object) and any figures as ``*.png``.
   - ``predict`` reads ``input_dir / STRUCTURES_FILE`` and the checkpoints listed in ``config[MODELS_KEY]``
     and writes ``PREDICTIONS_FILE`` (arrays ``PREDICTION_ARRAYS``, one row per structure; ``status`` is
     ``STATUS_OK`` or ``STATUS_FAILED``) and ``SUMMARY_FILE`` (``target``, ``units``, ``n_structures``,
     ``n_ok``, ``n_failed``, ``seconds``, ``device``, ...).
   - ``generate``: its files are defined where the task is added (the directive issue).

   Load a checkpoint named in the config with :func:`aiida_hpcai.models.checkpoint.load_verified` (it checks
   the sha256 and the architecture). A checkpoint is a ``torch.save`` dict of tensors, numbers, strings, lists
   and dicts holding at least ``format_version``, ``architecture`` (the registry name), ``hyperparameters``
   and ``members`` (a list of state dicts, one per ensemble member), plus the entry's ``checkpoint_keys``;
   :func:`aiida_hpcai.models.checkpoint.new_checkpoint` builds one. Report a failure the caller should react
   to by raising :class:`aiida_hpcai.models.contract.TaskError` with one of ``contract.PROGRAM_ERRORS``' codes.

2. One line in :data:`BUILTIN` below (or, from another package, an entry point in the group
   ``aiida_hpcai.architectures`` whose name is the architecture's name and whose value is an
   :class:`Architecture`, e.g. ``toy = "my_package.toy:ARCHITECTURE"``; keep that module free of heavy imports).
   Both the CalcJob's process and the ``hpcai-model`` process on the compute node must see it: an entry point
   is found wherever its package is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import sys
import warnings
from collections.abc import Callable, Mapping

ENTRY_POINT_GROUP = 'aiida_hpcai.architectures'


class UnknownArchitecture(KeyError):
    """No architecture of this name is registered, or it has no such task."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One model architecture: its network, its config presets and the program tasks it implements."""

    name: str
    # task name ('train', 'predict', 'generate') -> 'module:function' with the task signature (see above)
    tasks: Mapping[str, str]
    # 'module:Class' of the network (one ensemble member)
    model: str = ''
    # names of the `model_config` presets its train task accepts (besides a dict of hyperparameters)
    presets: tuple[str, ...] = ()
    # keys of the `hpcai.train` `parameters` its train task reads (`architecture` is always allowed)
    train_parameters: frozenset[str] = frozenset()
    # whether training needs a `target` label of the structures (False for a generative model)
    requires_target: bool = True
    # keys its checkpoints hold besides the generic ones (checked when a checkpoint is loaded)
    checkpoint_keys: tuple[str, ...] = ()
    description: str = ''

    def supports(self, task: str) -> bool:
        return task in self.tasks

    def task(self, task: str) -> Callable:
        """The function that runs ``task`` for this architecture (imports its module)."""
        if task not in self.tasks:
            raise UnknownArchitecture(
                f'architecture {self.name!r} has no {task!r} task; it has {sorted(self.tasks) or "none"}'
            )
        return _resolve(self.tasks[task])

    def model_class(self) -> type:
        if not self.model:
            raise UnknownArchitecture(f'architecture {self.name!r} names no model class')
        return _resolve(self.model)


_CRYSFORMER_TRAIN_PARAMETERS = frozenset(
    {
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
)

BUILTIN: dict[str, Architecture] = {
    'crysformer': Architecture(
        name='crysformer',
        tasks={'train': 'aiida_hpcai.models.training:run_train', 'predict': 'aiida_hpcai.models.inference:run_predict'},
        model='aiida_hpcai.models.crysformer:Crysformer',
        presets=('cpu', 'paper', 'tiny'),  # aiida_hpcai.models.crysformer.PRESETS
        train_parameters=_CRYSFORMER_TRAIN_PARAMETERS,
        checkpoint_keys=('target', 'units', 'normalization'),
        description='equivariant graph transformer: a property with an ensemble/MC-dropout sigma',
    ),
    'equicsp': Architecture(
        name='equicsp',
        tasks={
            'train': 'aiida_hpcai.models.equicsp.training:run_train',
            'generate': 'aiida_hpcai.models.equicsp.generation:run_generate',
        },
        model='aiida_hpcai.models.equicsp.network:EquiCSPDenoiser',
        presets=('cpu', 'paper', 'tiny'),  # aiida_hpcai.models.equicsp.network.PRESETS
        # aiida_hpcai.models.equicsp.training.EquiCSPTrainingConfig, less device/progress, plus the task's own keys
        train_parameters=frozenset(
            {
                'model_config',
                'split',
                'dataset_name',
                'epochs',
                'batch_size',
                'learning_rate',
                'weight_decay',
                'warmup_fraction',
                'min_lr_ratio',
                'patience',
                'seed',
                'max_minutes',
                'modes',
                'gradient_clip',
            }
        ),
        requires_target=False,
        checkpoint_keys=('elements', 'max_atoms', 'num_atoms_counts', 'lattice_scaler', 'modes'),
        description='periodic E(3)-equivariant diffusion (EquiCSP): crystal structures for a composition or ab initio',
    ),
    'discriminator': Architecture(
        name='discriminator',
        tasks={
            'train': 'aiida_hpcai.models.discriminator:run_train',
            'predict': 'aiida_hpcai.models.discriminator:run_predict',
        },
        model='aiida_hpcai.models.crysformer:Crysformer',
        presets=('cpu', 'paper', 'tiny'),  # aiida_hpcai.models.crysformer.PRESETS
        # the Crysformer training options that apply to a classifier, plus the reliability diagram's bins
        train_parameters=_CRYSFORMER_TRAIN_PARAMETERS - {'units', 'element_reference', 'ridge_alpha', 'mc_samples'}
        | {'calibration_bins'},
        checkpoint_keys=('target', 'units', 'normalization', 'temperature'),
        description='match discriminator: the calibrated probability that a generated structure matches the ground '
        'truth of its composition (Crysformer encoder, one logit, BCE, temperature scaling)',
    ),
}


def architectures() -> dict[str, Architecture]:
    """Every registered architecture: the built-in ones and those of installed packages' entry points."""
    return {**_from_entry_points(tuple(sys.path)), **BUILTIN}


def get(name: str) -> Architecture:
    """The architecture called ``name``; :class:`UnknownArchitecture` names the known ones."""
    known = architectures()
    if name not in known:
        raise UnknownArchitecture(f'unknown architecture {name!r}; known: {sorted(known)}')
    return known[name]


@functools.lru_cache(maxsize=8)
def _from_entry_points(_search_path: tuple[str, ...]) -> dict[str, Architecture]:
    # cached per sys.path: scanning the installed distributions takes tens of milliseconds
    found = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            architecture = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the built-in architectures down
            warnings.warn(f'architecture entry point {entry_point.value!r} cannot be loaded: {exc}', stacklevel=2)
            continue
        if not isinstance(architecture, Architecture) or architecture.name != entry_point.name:
            warnings.warn(
                f'entry point {entry_point.name} = {entry_point.value!r} is not an Architecture of that name',
                stacklevel=2,
            )
            continue
        found[entry_point.name] = architecture
    return found


def _resolve(reference: str):
    module_name, attribute = reference.split(':')
    return getattr(importlib.import_module(module_name), attribute)
