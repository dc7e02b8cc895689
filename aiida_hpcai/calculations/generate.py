"""``hpcai.generate``: sample crystal structures from a generative model (EquiCSP), by composition or ab initio."""

from __future__ import annotations

from aiida import orm

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models import contract, registry

from .base import ModelProgramCalculation, checkpoint_entry, model_file_target, validate_parameter_keys

__all__ = ('GenerateCalculation',)

MODEL_TARGET = model_file_target('model')
# the keys of `config.json` the generate task reads (aiida_hpcai.models.equicsp.generation), by mode
COMMON_PARAMETERS = {'mode', 'steps', 'step_lr', 'seed', 'batch_size', 'precision'}
MODE_PARAMETERS = {
    'csp': {'compositions'},
    'abinitio': {'n_samples', 'n_strategy', 'switch', 'elements', 'required_elements'},
}
GENERATE_PARAMETERS = COMMON_PARAMETERS.union(*MODE_PARAMETERS.values())


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_generate_model(node, _):
    """A model of a registered architecture that can generate (EquiCSP), not a property model."""
    if node is None:
        return None
    able = sorted(name for name, entry in registry.architectures().items() if entry.supports(GenerateCalculation.TASK))
    if node.architecture not in able:
        return f'ModelData<{node.pk}> is a {node.architecture!r} model, which cannot generate; architectures that can: {able}'
    return None


def validate_generate_parameters(node, port):
    """Keys of the mode, a known N strategy, whole numbers where counts are asked, at least one sample."""
    message = validate_parameter_keys(GENERATE_PARAMETERS)(node, port)
    if message or node is None:
        return message
    parameters = node.get_dict()
    mode = parameters.get('mode')
    if mode not in contract.GENERATE_MODES:
        return f'`mode` must be one of {list(contract.GENERATE_MODES)}, not {mode!r}'
    foreign = sorted(set(parameters) - COMMON_PARAMETERS - MODE_PARAMETERS[mode])
    if foreign:
        return f'{foreign} do not apply to mode {mode!r}; it reads {sorted(COMMON_PARAMETERS | MODE_PARAMETERS[mode])}'
    for key, minimum in (('steps', 1), ('batch_size', 1), ('seed', 0), ('switch', 0)):
        if key in parameters and not _is_int(parameters[key], minimum):
            return f'`{key}` must be an integer >= {minimum}, not {parameters[key]!r}'
    step_lr = parameters.get('step_lr', 1.0)
    if isinstance(step_lr, bool) or not isinstance(step_lr, (int, float)) or not step_lr > 0:
        return f'`step_lr` must be a positive number, not {step_lr!r}'
    if parameters.get('precision', 'float32') not in contract.SAMPLING_PRECISIONS:
        return f'`precision` must be one of {list(contract.SAMPLING_PRECISIONS)}, not {parameters["precision"]!r}'
    if mode == 'csp':
        return _validate_compositions(parameters.get('compositions'))
    if parameters.get('n_strategy', 'dataset') not in contract.N_STRATEGIES:
        return f'`n_strategy` must be one of {list(contract.N_STRATEGIES)}, not {parameters["n_strategy"]!r}'
    if 'switch' in parameters and parameters.get('n_strategy') != 'hybrid':
        return '`switch` applies only to `n_strategy` hybrid'
    if not _is_int(parameters.get('n_samples'), 0):
        return f'`n_samples` must be a whole number of samples, not {parameters.get("n_samples")!r}'
    if parameters['n_samples'] == 0:
        return 'zero samples asked: `n_samples` must be at least 1'
    return _validate_elements(parameters)


def _validate_elements(parameters: dict) -> str | None:
    """``elements`` and ``required_elements``: lists of element symbols, ``elements`` not empty, the required ones
    among ``elements``. Whether the model knows them is the program's to say (exit code 370)."""
    from pymatgen.core.periodic_table import Element

    for key in ('elements', 'required_elements'):
        if key not in parameters:
            continue
        value = parameters[key]
        if not isinstance(value, list) or not all(isinstance(symbol, str) for symbol in value):
            return f'`{key}` must be a list of element symbols, e.g. ["Fe", "O"], not {value!r}'
        unknown = [symbol for symbol in value if not Element.is_valid_symbol(symbol)]
        if unknown:
            return f'`{key}`: {", ".join(map(repr, unknown))} is not an element symbol'
        if len(set(value)) != len(value):
            return f'`{key}` names an element twice: {value}'
    if 'elements' in parameters and not parameters['elements']:
        return "`elements` is empty: name at least one element, or leave it out to sample from all of the model's"
    foreign = sorted(set(parameters.get('required_elements', [])) - set(parameters.get('elements') or []))
    if 'elements' in parameters and foreign:
        return f'`required_elements` {foreign} are not among `elements` {parameters["elements"]}'
    return None


def _validate_compositions(compositions) -> str | None:
    from pymatgen.core import Composition

    if not isinstance(compositions, dict) or not compositions:
        return '`compositions` must map formulae to numbers of samples, e.g. {"Fe2O3": 20}'
    for formula, count in compositions.items():
        if not _is_int(count, 0):
            return f'`compositions`: {formula}: the number of samples must be a whole number >= 0, not {count!r}'
        try:
            amounts = Composition(formula).get_el_amt_dict().values()
        except Exception as exc:  # noqa: BLE001 - pymatgen raises several types for a bad formula
            return f'`compositions`: cannot read the formula {formula!r}: {exc}'
        if not amounts or any(amount != round(amount) for amount in amounts):
            return f'`compositions`: {formula!r} is not a cell: it needs whole numbers of atoms'
    if not sum(compositions.values()):
        return 'zero samples asked: every composition has 0 samples'
    return None


class GenerateCalculation(ModelProgramCalculation):
    """Run ``hpcai-model generate``: crystal structures sampled from one generative checkpoint.

    In mode ``csp`` the cell's composition is given (``compositions``: formula -> number of samples);
    in mode ``abinitio`` the atom count and the types are sampled too (``n_samples`` with an
    ``n_strategy`` for the atom count). Every sample gets the id ``<formula>#<k>``. Samples that are
    no crystal (NaN, a cell of no volume, atoms closer than 0.5 Angstrom) are left out of the
    ``structures`` output and recorded in its skipped list with their reason; when some went NaN
    the job exits with ``ERROR_NAN_OUTPUT`` and still attaches the others.
    """

    TASK = 'generate'
    TEMPORARY_OUTPUTS = (contract.STRUCTURES_FILE, contract.INVALID_FILE)
    RETRIEVED_OUTPUTS = (contract.ERROR_FILE, contract.SUMMARY_FILE)

    @classmethod
    def define(cls, spec):
        super().define(spec)
        del spec.inputs['structures']  # generation reads no structures
        spec.input(
            'model',
            valid_type=ModelData,
            validator=validate_generate_model,
            help='The generative checkpoint (architecture `equicsp`, trained with `hpcai.train`).',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            validator=validate_generate_parameters,
            help='`mode` (`csp` or `abinitio`). csp: `compositions`, {formula: number of samples} (a formula is one '
            'cell: Fe2O3 has five atoms). abinitio: `n_samples` and `n_strategy` for the atom count (`dataset`, the '
            "training set's distribution, the default; `uniform`, 1 to the largest training cell; `hybrid`, dataset "
            'for the first `switch` samples, default half, then uniform); `elements`, the only elements the samples '
            'may hold, and `required_elements`, those every sample holds (default all of `elements`: a chemical '
            'system; [] for any of them; alone: with any other element of the model). Both: `steps` (sampler steps, default the '
            "model's diffusion steps), `step_lr` (Langevin corrector step, 1e-5), `seed` (0), `batch_size` (64), `precision` of the "
            "network's products (`float32`, the default, or `bfloat16`: 1.75x on a CPU with AVX-512 BF16, see the "
            'benchmarks page).',
        )
        spec.inputs['metadata']['options']['parser_name'].default = 'hpcai.generate'

        spec.output(
            'structures',
            valid_type=StructureSet,
            help='The valid samples (ids `<formula>#<k>`; attributes `mode`, `seed`, `steps`); the invalid ones are '
            'its skipped records (`get_skipped()`: id, reason `nan`/`non_positive_volume`/`too_close`, detail).',
        )
        spec.output(
            'summary',
            valid_type=orm.Dict,
            help='mode, seed, steps, n_requested, n_valid, n_invalid, invalid_reasons (reason -> count), seconds, '
            'structures_per_hour, device and the settings of the mode.',
        )

    def model_files(self):
        return [(self.inputs.model, MODEL_TARGET)]

    def build_config(self) -> dict:
        return {
            **self.inputs.parameters.get_dict(),
            contract.MODELS_KEY: [checkpoint_entry(self.inputs.model, MODEL_TARGET)],
        }
