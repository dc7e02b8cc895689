"""The contract between the CalcJobs and the ``hpcai-model`` program: file names, config keys, error codes.

Both sides import these names from here: the program's tasks (``models/``) that read and write the
files, the CalcJobs (``calculations/``) that write the input folder and retrieve the outputs, the
parsers (``parsers/``) that read them, and ``data/`` where a node keeps one of them in its repository.
Pure python, no torch and no aiida, so that importing it costs nothing on either side.

A job's working directory::

    config.json           CONFIG_FILE: the task's parameters, written by the CalcJob
    structures.npz        STRUCTURES_FILE: the input structures (:mod:`aiida_hpcai.models.structure_io`)
    models/<name>.pt      MODELS_DIR: checkpoints, named in the config as ``{"file": ..., "sha256": ...}``
    outputs/              OUTPUT_DIR: written by ``hpcai-model <task> --input . --output outputs``

What the tasks write into the output folder:

- every task, on a failure the caller should react to: ``error.json`` (``{"error": <code>, "message": ...}``,
  ``<code>`` one of :data:`PROGRAM_ERRORS`), and the program exits non-zero;
- ``train``: ``model.pt`` (the checkpoint), ``metadata.json`` (:data:`METADATA_KEYS` at least),
  ``metrics.json`` and figures (``*.png``, e.g. ``learning_curve.png`` and ``parity.png``);
- ``predict``: ``predictions.npz`` (:data:`PREDICTION_ARRAYS`, aligned with ``structures.npz``) and
  ``summary.json``;
- ``generate``: ``structures.npz`` (the valid samples, ids ``<formula>#<k>``), ``invalid.json`` (the others
  with their reasons) and ``summary.json`` (mode, seed, counts); NaN samples are listed as invalid and the
  task then fails with ``nan_output``, its files written;
- ``info``: ``info.json``.
"""

from __future__ import annotations

import dataclasses

# -- files of the input folder ----------------------------------------------------------------------
CONFIG_FILE = 'config.json'
STRUCTURES_FILE = 'structures.npz'
MODELS_DIR = 'models'  # checkpoints copied into the input folder
OUTPUT_DIR = 'outputs'  # the CalcJob's --output folder, relative to its working directory

# -- files of the output folder ---------------------------------------------------------------------
ERROR_FILE = 'error.json'
INFO_FILE = 'info.json'
MODEL_FILE = 'model.pt'
METADATA_FILE = 'metadata.json'
METRICS_FILE = 'metrics.json'
FIGURE_PATTERN = '*.png'  # every figure a train task writes is kept (as the `plots` output)
LEARNING_CURVE_FIGURE = 'learning_curve.png'
PARITY_FIGURE = 'parity.png'
PREDICTIONS_FILE = 'predictions.npz'
INVALID_FILE = 'invalid.json'  # generate: the invalid samples, [{"id", "reason", "message"}, ...]
SUMMARY_FILE = 'summary.json'

# -- what the files hold ----------------------------------------------------------------------------
# config.json: the architecture to train (else the checkpoints' own, else DEFAULT_ARCHITECTURE) and the
# checkpoints a task reads, each as {"file": <path in the input folder>, "sha256": <hex digest>}
ARCHITECTURE_KEY = 'architecture'
DEFAULT_ARCHITECTURE = 'crysformer'
MODELS_KEY = 'models'  # predict (and generate): a list of checkpoint entries
PARENT_KEY = 'parent'  # train: the checkpoint to fine-tune, one entry
# metadata.json: what the trained ModelData records (target and units are null for a model without a target)
METADATA_KEYS = ('architecture', 'hyperparameters', 'target', 'units', 'metrics')
# predictions.npz: one row per structure of structures.npz
PREDICTION_ARRAYS = ('mean', 'sigma', 'status', 'reason')
STATUS_OK, STATUS_FAILED = 'ok', 'failed'
# predict: structures per batch when config.json gives no `batch_size`. On a CPU small batches stay in cache
# (24 gave a third more structures/s than 64 on 2 threads, 8 and 32 less than 24;
# benchmarks/results/surrogate_throughput_vs_0d371cb.json); a GPU wants large ones.
DEFAULT_BATCH_SIZE = {'cpu': 24, 'cuda': 64}


def default_batch_size(device: str) -> int:
    """The batch size of a predict task on ``device`` (``cpu``, ``cuda``, ``cuda:<index>``) without ``batch_size``."""
    return DEFAULT_BATCH_SIZE.get(str(device).split(':')[0], DEFAULT_BATCH_SIZE['cpu'])


# generate: the modes and the ab initio strategies for the atom count N (config keys `mode`, `n_strategy`)
GENERATE_MODES = ('csp', 'abinitio')
N_STRATEGIES = ('dataset', 'uniform', 'hybrid')
# generate: the precision of the denoiser's matrix products (config key `precision`); bfloat16 runs them under
# autocast, the sampler's state staying float32 (benchmarks/equicsp_throughput.py and equicsp_csp.py measure it)
SAMPLING_PRECISIONS = ('float32', 'bfloat16')


def checkpoint_entries(config: dict) -> list[dict]:
    """Every checkpoint entry a task config names (``models`` and ``parent``), in order."""
    entries = list(config.get(MODELS_KEY) or [])
    if config.get(PARENT_KEY):
        entries.append(config[PARENT_KEY])
    return entries


def checkpoint_entry(file: str, sha256: str | None) -> dict:
    """How a config names one checkpoint: the program re-checks the hash before loading it."""
    return {'file': file, 'sha256': sha256}


# -- errors -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProgramError:
    """One error code the program writes in ``error.json``, and the CalcJob exit code it becomes."""

    code: str
    exit_status: int
    exit_label: str
    message: str  # the exit message; ``{message}`` is the program's own message
    invalidates_cache: bool = False


UNEXPECTED_ERROR = 'unexpected_error'
INVALID_CONFIG = 'invalid_config'
CHECKPOINT_MISMATCH = 'checkpoint_mismatch'
INCOMPATIBLE_MODELS = 'incompatible_models'
NAN_OUTPUT = 'nan_output'
OUT_OF_MEMORY = 'out_of_memory'
MISSING_LABEL = 'missing_label'
INVALID_SPLIT = 'invalid_split'
UNKNOWN_ELEMENT = 'unknown_element'  # generate: an element the model was not trained on
TOO_MANY_ATOMS = 'too_many_atoms'  # generate: more atoms in a cell than the model was trained on
NO_SAMPLES = 'no_samples'  # generate: zero samples asked

PROGRAM_ERRORS = (
    ProgramError(UNEXPECTED_ERROR, 330, 'ERROR_PROGRAM_UNEXPECTED', 'The program failed unexpectedly: {message}'),
    ProgramError(INVALID_CONFIG, 332, 'ERROR_INVALID_CONFIG', 'The program refused `config.json`: {message}'),
    ProgramError(
        CHECKPOINT_MISMATCH,
        340,
        'ERROR_CHECKPOINT_MISMATCH',
        'A checkpoint does not match its recorded sha256 or cannot be loaded: {message}',
    ),
    ProgramError(
        INCOMPATIBLE_MODELS,
        341,
        'ERROR_INCOMPATIBLE_MODELS',
        'The models cannot be combined (different targets, units or input features): {message}',
    ),
    ProgramError(NAN_OUTPUT, 350, 'ERROR_NAN_OUTPUT', 'The model produced NaN or infinite values: {message}'),
    ProgramError(
        OUT_OF_MEMORY,
        351,
        'ERROR_OUT_OF_MEMORY',
        'The program ran out of (GPU) memory; try a smaller `batch_size`: {message}',
        invalidates_cache=True,
    ),
    ProgramError(MISSING_LABEL, 360, 'ERROR_MISSING_LABEL', 'The structures lack the label to train on: {message}'),
    ProgramError(INVALID_SPLIT, 361, 'ERROR_INVALID_SPLIT', 'The train/val/test split cannot be used: {message}'),
    ProgramError(UNKNOWN_ELEMENT, 370, 'ERROR_UNKNOWN_ELEMENT', 'An element the model was not trained on: {message}'),
    ProgramError(
        TOO_MANY_ATOMS, 371, 'ERROR_TOO_MANY_ATOMS', 'More atoms in a cell than the model was trained on: {message}'
    ),
    ProgramError(NO_SAMPLES, 372, 'ERROR_NO_SAMPLES', 'Zero samples were asked: {message}'),
)


# -- the program's own exit status (what the scheduler and a shell see) --------------------------------
EXIT_UNEXPECTED = 1  # an unexpected exception: error.json says `unexpected_error`, the traceback is on stderr
EXIT_TASK_ERROR = 2  # a TaskError: error.json has its code, stderr one line
EXIT_OUT_OF_MEMORY = 3  # the task ran out of (GPU) memory: error.json says `out_of_memory`, stderr one line


class TaskError(Exception):
    """A failure with a machine-readable code (one of :data:`PROGRAM_ERRORS`), reported in ``error.json``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
