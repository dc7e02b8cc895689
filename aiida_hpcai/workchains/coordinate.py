"""``hpcai.coordinate``: AI and DFT take turns in a closed loop towards a Goal (the coordinate pattern).

Steps (docs/source/coordinate.md):

1. look-up: what the profile already holds that satisfies the Goal (:func:`aiida_hpcai.agent.operations.look_up`:
   finished ``hpcai.dft`` results and labelled entries of imported StructureSets) becomes results at once, gathered
   by the calcfunction :func:`gather_hits` so that every hit is linked to its source node;
2. each iteration proposes candidates: the ``candidates`` StructureSet in the first iteration when given, else one
   ``hpcai.generate`` job (CSP mode for the Goal's composition, ab initio otherwise, restricted to the Goal's
   chemical system or required elements by :func:`goal_elements`; what still falls outside the Goal, such as
   excluded elements or another symmetry, is dropped by :func:`goal_candidates`), screened by ``hpcai.screen`` (duplicates of the hits, of earlier iterations and of the
   profile's fingerprinted structures rejected) and predicted by ``hpcai.surrogate`` with the current model;
3. each prediction is accepted when its sigma is at most the threshold and its mean lies within the Goal's bounds;
   a confident prediction outside the bounds is dropped; the others go to ``hpcai.dft_batch``, as many as the Goal's
   DFT budget (shared with every other process tagged with the same Goal) and ``dft_per_iteration`` allow;
4. DFT results within the Goal are results; every DFT result enters the fine-tuning buffer (a formation energy off
   MP's scale, from GGA+U by an engine MP's constants do not fit, is neither a result nor taught). When ``buffer_size``
   new results are in it, ``hpcai.train`` fine-tunes the current model (``parent_model``) on all of the loop's DFT
   results, submitted as its own process: the loop does not wait for it, and at the start of each iteration it
   switches to the new model if the job has finished ok (a failed job is logged and the loop keeps its model);
5. the loop stops at the Goal's count, at ``max_iterations``, when it has no candidates left, or when a candidate
   needs DFT that the budget cannot pay for (unless ``continue_without_dft``). The calcfunction
   :func:`coordinate_report` drops duplicates (StructureMatcher) and structures of space group 1, ranks the results
   by the Goal's objective and makes the result set, the table, the decision log and the figure.

Only nodes and JSON-serialisable values live in the context, so the WorkChain is checkpointed like any other and
survives a daemon restart.
"""

from __future__ import annotations

import io
import json
import math
import tempfile

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_

from ..agent import operations
from ..agent.goal import PROPERTY_UNITS, PlanError, goal_from_dict
from ..calculations.generate import GenerateCalculation, validate_generate_parameters
from ..calculations.predict import PredictCalculation
from ..calculations.train import TrainCalculation
from ..data.model import ModelData
from ..data.structure_set import StructureSet
from ..models.plots import _pyplot
from ..screening import filters
from ..screening.calcfunctions import screen_structure_set
from .dft_batch import LABELS, DftBatchWorkChain
from .launch_once import LaunchesOnce
from .structures import select_structures
from .surrogate import SurrogateWorkChain, default_sigma_threshold

__all__ = (
    'CoordinateWorkChain',
    'coordinate_report',
    'gather_hits',
    'goal_candidates',
    'goal_elements',
    'progress_plot',
)

SOURCES = ('database', 'dft', 'ai')
#: Goal properties a DFT result of ``hpcai.dft`` gives (the others can only come from the look-up).
DFT_PROPERTIES = tuple(name for name in LABELS if name in PROPERTY_UNITS)
#: Columns of the ``table`` output, one row per result.
TABLE_COLUMNS = (
    'id',
    'formula',
    'source',
    'value',
    'sigma',
    'model_version',
    'model_pk',
    'node_pk',
    'spacegroup',
    'iteration',
)
#: Training settings of a fine-tune unless ``fine_tune`` says otherwise (the parent's architecture and
#: hyperparameters are kept; ``ensemble_size`` defaults to the parent's).
FINE_TUNE_DEFAULTS = {'epochs': 20, 'batch_size': 16, 'seed': 0}
PREDICT_ONLY_OPTIONS = ('parser_name', 'input_filename', 'output_filename')
#: Settings of the generator the loop passes on from ``generation`` (mode and samples are the loop's).
GENERATION_KEYS = ('steps', 'step_lr', 'batch_size', 'seed', 'n_strategy', 'precision')
#: The loop's own generation setting: the cells' formula units in CSP mode (Z; the iteration's samples spread over
#: them in turn). One formula unit alone gives few distinct cells of a small formula (MgO: 2 atoms).
FORMULA_UNITS = 'formula_units'


# ---------------------------------------------------------------------------------------------- calcfunctions


def goal_elements(goal) -> dict:
    """The element restriction of ab initio sampling for a Goal without a composition (generate parameters).

    A chemical system is sampled as itself: ``elements`` its elements, every one of them in every sample (a
    sample of Fe alone is not in the Fe-O system). Elements the Goal must include without naming the system
    become ``required_elements``: every sample holds them, with any other element of the model (``must_include``
    Si asks for Si and SiO2 alike, so restricting to Si alone would narrow the Goal). Excluded elements are not
    passed on (the generator would need all its other elements listed); :func:`goal_candidates` still drops
    the samples that hold one.
    """
    if goal.chemsys is not None:
        return {'elements': goal.chemsys.split('-')}
    if goal.must_include:
        return {'required_elements': list(goal.must_include)}
    return {}


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@calcfunction
def gather_hits(hits: orm.Dict, **sources) -> StructureSet:
    """The look-up hits (``hits['hits']``, rows of :func:`~aiida_hpcai.agent.operations.look_up`) as one StructureSet.

    ``sources``: ``set_<pk>`` (the imported StructureSets the ``database`` hits come from) and ``structure_<pk>``
    (the relaxed structures of the ``dft`` hits), so the graph leads from every hit to where it was found. The set
    carries each Goal property as a label (NaN where the hit has none).
    """
    rows = hits['hits']
    structures = []
    for row in rows:
        if row['source'] == 'database':
            structures.append(sources[f'set_{row["node_pk"]}'].get_pymatgen(row['index']))
        else:
            structures.append(sources[f'structure_{row["structure_pk"]}'].get_pymatgen_structure())
    labels = {
        name: [math.nan if row['values'].get(name) is None else row['values'][name] for row in rows]
        for name in PROPERTY_UNITS
    }
    return StructureSet.from_pymatgen(
        structures, ids=[f'hit{i}-{row["id"]}' for i, row in enumerate(rows)], labels=labels
    )


@calcfunction
def goal_candidates(structures: StructureSet, goal: orm.Dict, prefix: orm.Str) -> dict:
    """The structures of ``structures`` whose composition (and symmetry, when the Goal asks for it) fit ``goal``.

    The generator is restricted to the Goal's composition, chemical system or required elements
    (:func:`goal_elements`), given candidates are not: this keeps the Goal's composition, chemical system,
    required and excluded elements, space group and crystal system. Outputs ``structures`` (the subset, ids
    prefixed with ``prefix`` so that they stay unique over the iterations) and ``rejected``
    (``{'rejected': [{'id', 'reason'}]}``).
    """
    from ..models.structure_io import concatenate

    target = goal_from_dict(goal.get_dict())
    kept, rejected = [], []
    for index, (identifier, formula) in enumerate(zip(structures.ids, structures.arrays.formulae())):
        reduced, elements = operations._reduced(formula)
        if not operations._composition_fits(target, reduced, elements):
            rejected.append({'id': identifier, 'reason': f'{reduced} is outside the goal'})
            continue
        structure = structures.get_pymatgen(index)
        if not operations._symmetry_fits(target, lambda structure=structure: operations._space_group_of(structure)):
            rejected.append({'id': identifier, 'reason': 'not the symmetry of the goal'})
            continue
        kept.append(index)
    subset = StructureSet(concatenate([(prefix.value, structures.arrays.subset(kept))]))
    return {'structures': subset, 'rejected': orm.Dict({'rejected': rejected})}


@calcfunction
def fine_tune_set(target: orm.Str, excluded: orm.Dict, **results: StructureSet) -> StructureSet:
    """The loop's DFT results (``relaxed_<iteration>`` and ``audit_<iteration>``: the output sets of its
    ``hpcai.dft_batch`` runs, relaxed or single points) with a finite ``target``, as one StructureSet to fine-tune
    on; ``excluded`` (``{<key>: [id, ...]}``) names results whose ``target`` must not teach the model (formation
    energies off MP's scale). A single point teaches the energy of a generated cell as it is, which is what the
    surrogate is asked about such cells."""
    from ..models.structure_io import concatenate

    left_out = excluded.get_dict()
    parts = []
    for key in sorted(results, key=_dft_set_order):
        arrays = results[key].arrays
        usable = np.isfinite(arrays.labels[target.value]) & ~np.isin(results[key].ids, left_out.get(key, []))
        parts.append(('', arrays.subset(np.flatnonzero(usable))))
    return StructureSet(concatenate(parts))


def _dft_set_order(key: str) -> tuple[int, str]:
    """Sort key of the loop's DFT sets (``relaxed_<iteration>``, ``audit_<iteration>``): by iteration."""
    kind, iteration = key.rsplit('_', 1)
    return int(iteration), kind


def progress_plot(rows: list[dict], path, prop: str, units: str) -> None:
    """The value of ``prop`` of every result against the iteration that found it, coloured by source (paper Fig. 11).

    ``rows``: dicts with ``iteration`` (0: the look-up), ``source``, ``value`` and ``sigma`` (error bars of the AI).
    """
    plt = _pyplot()
    colours = {'database': 'tab:green', 'dft': 'tab:red', 'ai': 'tab:blue'}
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for source in SOURCES:
        chosen = [row for row in rows if row['source'] == source and row['value'] is not None]
        if not chosen:
            continue
        x = [row['iteration'] for row in chosen]
        y = [row['value'] for row in chosen]
        error = [row['sigma'] or 0.0 for row in chosen] if source == 'ai' else None
        axes.errorbar(x, y, yerr=error, fmt='o', color=colours[source], label=source, capsize=3, alpha=0.8)
    axes.set_xlabel('iteration (0: look-up)')
    axes.set_ylabel(f'{prop} ({units})' if units else prop)
    axes.set_title('results per iteration by source')
    if any(row['value'] is not None for row in rows):
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _png(rows, prop, units) -> orm.SinglefileData:
    with tempfile.NamedTemporaryFile(suffix='.png') as handle:
        progress_plot(rows, handle.name, prop, units)
        handle.seek(0)
        return orm.SinglefileData(io.BytesIO(handle.read()), filename='progress.png')


def _objective_key(goal, row):
    """Sort key: the Goal's objective (results without its value last), else the order found."""
    if goal.objective is None:
        return (False, 0.0)
    direction, name = goal.objective
    value = row['values'].get(name)
    sign = 1.0 if direction == 'minimize' else -1.0
    return (value is None, 0.0 if value is None else sign * value)


def dft_priority(goal, prop: str, entry: dict, atoms: int) -> tuple:
    """Sort key of an uncertain candidate for the DFT budget: predicted within the Goal's bounds first, then by the
    objective, then the likelier match (the discriminator's probability, when there is one), then the smaller cell
    (``atoms``): a plane-wave relaxation's cost grows steeply with the atom count (an 8-atom SiC cell was still
    relaxing after 70 minutes of pw.x where a 2-atom one took 4), and the budget counts runs, not hours."""
    fits = entry['mean'] is not None and operations._bounds_fit(goal, {prop: entry['mean']})
    probability = entry.get('match_probability')
    return (
        fits is False,
        _objective_key(goal, {'values': {prop: entry['mean']}}),
        -(probability if probability is not None else -1.0),
        atoms,
    )


def distinct_results(rows: list[dict], structures: list, symprec: float, angle_tolerance: float):
    """Which ``rows`` (with their pymatgen ``structures``) are results: the first of each group of duplicates
    (StructureMatcher at the screening's tolerances) and none of space group 1 at ``symprec``.
    Returns :class:`~aiida_hpcai.screening.filters.ScreeningResult`; give the rows in order of preference."""
    settings = filters.ScreeningParameters(
        max_elements=None,
        min_distance=None,
        charge_neutrality=False,
        reject_p1=True,
        symprec=symprec,
        angle_tolerance=angle_tolerance,
        deduplicate=True,
    )
    return filters.screen(structures, [row['id'] for row in rows], settings)


def _preferred(rows: list[dict]) -> list[dict]:
    """Rows in order of preference among duplicates: database before dft before ai, then as found."""
    return sorted(rows, key=lambda row: SOURCES.index(row['source']))


@calcfunction
def coordinate_report(goal: orm.Dict, records: orm.Dict, **sets: StructureSet) -> dict:
    """The results of a coordinate loop from its records and the sets they point into.

    ``records``: ``rows`` (every result the loop accepted: id, formula, source, values, value, sigma, model_version,
    model_pk, node_pk, iteration, and ``set``/``index``: where its structure is among ``sets``), ``iterations`` (the
    decision log), ``look_up``, ``stop_reason``, ``property``, ``units``, ``symprec`` and ``angle_tolerance`` (the
    screening's). Duplicates (:func:`distinct_results`; the first of each group in the order database, dft, ai is
    kept) and structures of space group 1 are dropped, the rest ranked by the Goal's objective and cut at its count.
    Outputs ``structures`` (StructureSet: ids, every Goal property as a label, ``source`` in the table), ``table``
    (Dict ``rows`` with :data:`TABLE_COLUMNS`), ``decision_log`` (Dict) and ``plot`` (PNG).
    """
    target = goal_from_dict(goal.get_dict())
    content = records.get_dict()
    rows = _preferred(content['rows'])
    structures = [sets[row['set']].get_pymatgen(row['index']) for row in rows]
    symprec, angle_tolerance = content['symprec'], content['angle_tolerance']
    screened = distinct_results(rows, structures, symprec, angle_tolerance)
    dropped = [
        {'id': rejection.id, 'source': rows[rejection.index]['source'], 'reason': rejection.reason}
        for rejection in screened.rejected
    ]
    kept = sorted(screened.valid, key=lambda index: _objective_key(target, rows[index]))
    if target.count is not None:
        for index in kept[target.count :]:
            dropped.append({'id': rows[index]['id'], 'source': rows[index]['source'], 'reason': 'beyond the count'})
        kept = kept[: target.count]
    table = []
    for index in kept:
        row = rows[index]
        spacegroup = filters.space_group(structures[index], symprec, angle_tolerance)[0]
        table.append({**{column: row.get(column) for column in TABLE_COLUMNS}, 'spacegroup': spacegroup})
    labels = {
        name: [math.nan if rows[i]['values'].get(name) is None else rows[i]['values'][name] for i in kept]
        for name in PROPERTY_UNITS
    }
    result = StructureSet.from_pymatgen([structures[i] for i in kept], ids=[rows[i]['id'] for i in kept], labels=labels)
    counts = {source: sum(row['source'] == source for row in table) for source in SOURCES}
    log = {
        'look_up': content['look_up'],
        'iterations': content['iterations'],
        'stop_reason': content['stop_reason'],
        'fine_tunes': content['fine_tunes'],
        'threshold': content['threshold'],
        'threshold_source': content['threshold_source'],
        'acceptance': content.get('acceptance'),
        'dropped': dropped,
        'results': counts,
        'property': content['property'],
        'units': content['units'],
    }
    return {
        'structures': result,
        'table': orm.Dict({'columns': list(TABLE_COLUMNS), 'rows': table, 'counts': counts}),
        'decision_log': orm.Dict(log),
        'plot': _png(rows, content['property'], content['units']),
    }


def acceptance_threshold(models: list) -> tuple[float, str, dict | None]:
    """The sigma threshold of the initial ``models``, where it comes from and the acceptance record behind it:
    the calibrated acceptance rule shipped for the model (:func:`aiida_hpcai.models.acceptance.shipped_acceptance`,
    when its record names these checkpoint bytes), else the surrogate's default for the target
    (``surrogate.yaml``; no record)."""
    from ..models.acceptance import shipped_acceptance

    target = models[0].target
    if len(models) == 1:
        try:
            record = shipped_acceptance(target)
        except ValueError:
            record = None
        if record is not None and record.get('model') == models[0].sha256:
            return float(record['threshold']), 'calibrated acceptance rule of the shipped model', record
    return default_sigma_threshold(target), 'default of hpcai.surrogate (surrogate.yaml)', None


def _json_clean(record: dict) -> dict:
    # a checkpointed context and a Dict node hold plain JSON: the record's counts may be numpy numbers
    return json.loads(json.dumps(record, default=lambda value: value.tolist()))


# ---------------------------------------------------------------------------------------------- validation


def _positive(value, _):
    if value.value < 1:
        return f'must be at least 1, not {value.value}'


def _not_negative(value, _):
    if value.value < 0:
        return f'must be 0 or more, not {value.value}'


def _valid_goal(value, _):
    try:
        goal = goal_from_dict(value.get_dict())
    except PlanError as exception:
        return exception.message
    return goal_problem(goal)


def goal_problem(goal) -> str | None:
    """Why the loop cannot pursue ``goal`` (a property neither DFT nor a surrogate gives), or None."""
    asked = set(goal.bounds) | ({goal.objective[1]} if goal.objective else set())
    unknown = sorted(asked - set(DFT_PROPERTIES))
    if unknown:
        return (
            f'the loop cannot evaluate {", ".join(unknown)} (neither hpcai.dft nor a surrogate gives it); '
            'operations.look_up answers such a goal from the profile'
        )
    return None


def _screening(value, _):
    try:
        filters.ScreeningParameters.from_dict(value.get_dict())
    except (TypeError, ValueError) as exception:
        return f'invalid screening parameters: {exception}'


def _generation(value, _):
    settings = value.get_dict()
    unknown = sorted(set(settings) - set(GENERATION_KEYS) - {FORMULA_UNITS})
    if unknown:
        return f'unknown generation setting(s) {unknown}; known: {[*GENERATION_KEYS, FORMULA_UNITS]}'
    problem = formula_units_problem(settings.pop(FORMULA_UNITS, [1]))
    if problem:
        return problem
    # the values as hpcai.generate will judge them, before the first iteration rather than in one
    return validate_generate_parameters(orm.Dict({'mode': 'abinitio', 'n_samples': 1, **settings}), None)


def formula_units_problem(units) -> str | None:
    """Why ``units`` is no list of formula units per cell (distinct whole numbers >= 1); None when it is one."""
    if (
        not isinstance(units, list)
        or not units
        or any(isinstance(z, bool) or not isinstance(z, int) or z < 1 for z in units)
        or len(set(units)) != len(units)
    ):
        return f'`{FORMULA_UNITS}` must be a list of distinct whole numbers >= 1, not {units!r}'
    return None


def csp_compositions(composition: str, count: int, formula_units: list[int]) -> dict[str, int]:
    """``count`` CSP samples of ``composition`` spread in turn over cells of ``formula_units`` formula units each
    (``{'MgO': 2, 'Mg2O2': 1}`` for 3 samples over [1, 2]); a multiple no sample falls on is left out."""
    from pymatgen.core import Composition

    counts: dict[str, int] = {}
    for k in range(count):
        z = formula_units[k % len(formula_units)]
        formula = composition if z == 1 else (Composition(composition) * z).formula.replace(' ', '')
        counts[formula] = counts.get(formula, 0) + 1
    return counts


def _discriminator(value, _):
    if value is not None and value.architecture != 'discriminator':
        return f'ModelData<{value.pk}> is a {value.architecture!r} model, not a match discriminator'


def _probability(value, _):
    if not 0.0 <= value.value <= 1.0:
        return f'must be a probability between 0 and 1, not {value.value}'


def _fine_tune(value, _):
    from ..models import registry

    allowed = set(registry.BUILTIN['crysformer'].train_parameters) - {'target', 'units', 'split', 'architecture'}
    unknown = sorted(set(value.get_dict()) - allowed)
    if unknown:
        return f'unknown fine-tune setting(s) {unknown}; known: {sorted(allowed)}'


def _acceptance_record(value, _):
    if value is None:
        return None
    record = value.get_dict()
    missing = sorted({'threshold', 'tolerance', 'level', 'confidence', 'n'} - set(record))
    if missing:
        return f'not an acceptance record (made by calibrate_acceptance): it lacks {missing}'


def validate_inputs(inputs, ctx):
    """A model of a property the Goal can name; DFT inputs when the budget allows DFT; one model to fine-tune."""
    ports = set(ctx)
    dft = (inputs.get('dft_batch') or {}).get('dft') or {}
    if 'surrogate' in ports and 'models' in (inputs.get('surrogate') or {}):
        models = inputs['surrogate']['models']
        targets = {node.target for node in models.values()}
        if len(targets) != 1:
            return f'the surrogate models predict different targets: {sorted(map(str, targets))}'
        (target,) = targets
        if target not in DFT_PROPERTIES:
            return f'the surrogate predicts {target!r}; the loop needs one of {list(DFT_PROPERTIES)}'
        if 'sigma_threshold' in inputs and 'acceptance' in inputs:
            return 'give `sigma_threshold` (a fixed threshold) or `acceptance` (a calibration record), not both'
        if 'sigma_threshold' not in inputs and 'acceptance' not in inputs and default_sigma_threshold(target) is None:
            return f'there is no default sigma_threshold for {target!r}: give one'
        if inputs.get('buffer_size') is not None and inputs['buffer_size'].value > 0 and len(models) != 1:
            return 'fine-tuning needs one ModelData in `surrogate.models` (it may hold an ensemble); or buffer_size 0'
        correction = dft.get('energy_correction')
        if target == 'formation_energy_per_atom' and correction is not None and correction.value == 'none':
            # The surrogate learned MP's corrected values: raw GGA would judge and fine-tune it on another scale.
            return "dft_batch.dft.energy_correction 'none' puts DFT on another scale than the surrogate's: use 'mp2020'"
    if 'goal' in inputs and _valid_goal(inputs['goal'], None) is None:
        budget = goal_from_dict(inputs['goal'].get_dict()).dft_budget
        if 'dft_batch' in ports and budget > 0 and 'code' not in dft:
            return f'the goal allows {budget} DFT run(s): give `dft_batch.dft` (code, engine, protocol)'
    generation = inputs['generation'].get_dict() if inputs.get('generation') is not None else {}
    if FORMULA_UNITS in generation and 'goal' in inputs and _valid_goal(inputs['goal'], None) is None:
        if goal_from_dict(inputs['goal'].get_dict()).composition is None:
            return f'`generation.{FORMULA_UNITS}` applies to a goal with a composition (CSP); this goal has none'
    if 'candidates' in ports and 'candidates' not in inputs and not (inputs.get('generate') or {}).get('model'):
        return 'give a generator (`generate.code` and `generate.model`), `candidates`, or both'
    return None


# ---------------------------------------------------------------------------------------------- the WorkChain


class CoordinateWorkChain(LaunchesOnce, WorkChain):
    """Look up, generate, predict, send the uncertain to DFT and fine-tune on the results, until the Goal is met."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'goal',
            valid_type=orm.Dict,
            validator=_valid_goal,
            help='The Goal (aiida_hpcai.agent.goal.Goal as JSON: `aiida-hpcai plan --json`, operations.plan).',
        )
        spec.input(
            'candidates',
            valid_type=StructureSet,
            required=False,
            help='Structures to consider in the first iteration instead of generating (e.g. prototypes).',
        )
        spec.expose_inputs(
            GenerateCalculation,
            namespace='generate',
            exclude=('parameters',),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'The `hpcai.generate` job of each iteration (code, model, device, metadata.options); the loop '
                'sets its parameters from the Goal.',
            },
        )
        spec.input(
            'generation',
            valid_type=orm.Dict,
            required=False,
            validator=_generation,
            help=f'Generator settings passed on ({", ".join(GENERATION_KEYS)}); iteration i samples with seed + i. '
            f'`{FORMULA_UNITS}` (CSP goals; default [1]): the formula units per cell, the samples spread over them.',
        )
        spec.input(
            'samples_per_iteration',
            valid_type=orm.Int,
            default=lambda: orm.Int(10),
            validator=_positive,
            help='Samples generated per iteration.',
        )
        spec.input(
            'screening',
            valid_type=orm.Dict,
            required=False,
            validator=_screening,
            help='Parameters of `hpcai.screen` (ScreeningParameters); default its own.',
        )
        spec.expose_inputs(
            SurrogateWorkChain,
            namespace='surrogate',
            exclude=('structures', 'structure_nodes', 'sigma_threshold'),
            namespace_options={'help': 'Inputs of `hpcai.surrogate`: the initial `models` and `predict.code`.'},
        )
        spec.input(
            'sigma_threshold',
            valid_type=orm.Float,
            required=False,
            help='Accept a prediction whose sigma is at most this (model units). Default: the calibrated acceptance '
            "rule shipped for the model (aiida_hpcai.models.acceptance), else the surrogate's default for the target.",
        )
        spec.input(
            'acceptance',
            valid_type=orm.Dict,
            required=False,
            validator=_acceptance_record,
            help='A calibration record of the acceptance rule to start from (as aiida_hpcai.models.acceptance.'
            "calibrate_acceptance makes it; a loop's `decision_log.acceptance.record` continues it), instead of the "
            'one shipped for the model. The loop refreshes it with its own DFT results.',
        )
        spec.input(
            'discriminator',
            valid_type=ModelData,
            required=False,
            validator=_discriminator,
            help='A match discriminator (architecture `discriminator`): a prediction is accepted only when the '
            "structure's match probability is at least `discriminator_threshold`; otherwise it goes to DFT.",
        )
        spec.input(
            'discriminator_threshold',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.5),
            validator=_probability,
            help='Smallest match probability of an accepted prediction (with `discriminator`).',
        )
        spec.expose_inputs(
            DftBatchWorkChain,
            namespace='dft_batch',
            exclude=('structures',),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Inputs of `hpcai.dft_batch` (dft.code, dft.engine, dft.protocol, max_concurrent); needed '
                'when the Goal allows DFT.',
            },
        )
        spec.input(
            'dft_per_iteration',
            valid_type=orm.Int,
            default=lambda: orm.Int(2),
            validator=_positive,
            help="Most structures sent to DFT in one iteration (the Goal's dft_budget caps the whole loop).",
        )
        spec.input(
            'audit',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            validator=_not_negative,
            help="DFT runs of the Goal's budget kept to check the acceptance rule on the loop's own candidates: in "
            'each of the first iterations with AI acceptances, one of them drawn at random goes to DFT instead, '
            'until this many were sent. Its DFT value is the result, and it refreshes the rule where the calibration '
            'set did not look like the generated structures. 0: no audit.',
        )
        spec.input(
            'audit_relax',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='True: an audited acceptance is relaxed, and the prediction judged against the relaxed value. '
            'False: the cell as generated gets a single-point SCF (`hpcai.dft` relax False, in its own '
            '`hpcai.dft_batch`): the prediction is judged on the very cell it was made for, at a fraction of the cost.',
        )
        spec.input(
            'continue_without_dft',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help='Go on (AI acceptances only) after a candidate needed DFT that the budget could not pay for.',
        )
        spec.input('max_iterations', valid_type=orm.Int, default=lambda: orm.Int(10), validator=_positive, help='Cap.')
        spec.input(
            'buffer_size',
            valid_type=orm.Int,
            default=lambda: orm.Int(5),
            validator=_not_negative,
            help='Fine-tune when this many new DFT results are buffered; 0: never fine-tune.',
        )
        spec.input(
            'fine_tune',
            valid_type=orm.Dict,
            required=False,
            validator=_fine_tune,
            help=f'Training settings of `hpcai.train` for the fine-tunes (default {FINE_TUNE_DEFAULTS}, '
            "ensemble_size the parent's); the code is `surrogate.predict.code`.",
        )
        spec.input(
            'wait_for_fine_tune',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='At the end, wait for a fine-tune still running so that its model is the `model` output.',
        )
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.setup,
            cls.look_up,
            while_(cls.should_iterate)(
                cls.check_fine_tune,
                cls.propose,
                cls.screen,
                if_(cls.has_valid)(
                    cls.predict,
                    cls.decide,
                    while_(cls.has_dft_to_run)(cls.run_dft),
                    if_(cls.has_dft)(cls.inspect_dft),
                ),
                cls.close_iteration,
            ),
            if_(cls.should_wait_for_fine_tune)(cls.wait_for_fine_tune),
            cls.check_fine_tune,
            cls.results,
        )

        spec.output('structures', valid_type=StructureSet, help='The results, best first (Goal objective).')
        spec.output(
            'table',
            valid_type=orm.Dict,
            help=f'`rows`, one per result: {", ".join(TABLE_COLUMNS)}; source is database, ai or dft; `counts`.',
        )
        spec.output(
            'decision_log',
            valid_type=orm.Dict,
            help='look_up, iterations (one entry each: candidates, accepted, sent to DFT and why, fine-tune events), '
            'stop_reason, dropped results (duplicate, space group 1, beyond the count).',
        )
        spec.output('plot', valid_type=orm.SinglefileData, help='PNG: the property per iteration, coloured by source.')
        spec.output('model', valid_type=ModelData, required=False, help='The last fine-tuned model, if any.')

        spec.exit_code(
            430, 'ERROR_NOTHING_FOUND', message='no result satisfies the goal (stopped: {reason}); see decision_log'
        )
        spec.exit_code(
            431, 'ERROR_GENERATE_FAILED', message='hpcai.generate<{pk}> made no crystal, the loop stopped: {message}'
        )
        spec.exit_code(432, 'ERROR_SURROGATE_FAILED', message='hpcai.surrogate<{pk}> failed: {message}')
        spec.exit_code(
            433, 'ERROR_DISCRIMINATOR_FAILED', message='the discriminator PredictCalculation<{pk}> failed: {message}'
        )

    # -- helpers ----------------------------------------------------------------------------------------
    def _goal(self):
        return goal_from_dict(self.inputs.goal.get_dict())

    def _log(self) -> dict:
        return self.ctx.iterations[-1]

    # -- steps ------------------------------------------------------------------------------------------
    def setup(self):
        goal = self._goal()
        models = dict(self.inputs.surrogate.models)
        self.ctx.property = next(iter(models.values())).target
        self.ctx.units = PROPERTY_UNITS[self.ctx.property]
        if 'sigma_threshold' in self.inputs:
            threshold, source, record = self.inputs.sigma_threshold.value, 'input', None
        elif 'acceptance' in self.inputs:
            record = self.inputs.acceptance.get_dict()
            threshold, source = float(record['threshold']), f'acceptance record Dict<{self.inputs.acceptance.pk}>'
        else:
            threshold, source, record = acceptance_threshold(list(models.values()))
        # The rule is refreshed with the loop's DFT results (acceptance.refresh), a fixed threshold is not.
        self.ctx.acceptance = None if record is None else _json_clean(record)
        self.ctx.loop_checks = []  # (iteration, model version, id, mean, sigma, DFT value) of every DFT'd candidate
        self.ctx.threshold = threshold
        self.ctx.threshold_source = source
        self.ctx.models = models
        self.ctx.model_version = 0
        # The Goal's DFT budget is shared with every process tagged with the same Goal node (operations.run_dft).
        stored = operations.goal_node(goal, create=False) or self.inputs.goal
        self.ctx.goal_uuid = stored.uuid
        self.ctx.dft_left = max(goal.dft_budget - operations.dft_runs_started(stored.uuid), 0)
        self.ctx.audits_left = min(self.inputs.audit.value, self.ctx.dft_left)
        self.ctx.audited_rows = {}  # id -> the AI's table row of an audited candidate of this iteration
        self.ctx.iteration = 0
        self.ctx.iterations = []
        self.ctx.rows = []
        self.ctx.sets = {}
        self.ctx.known = []  # hits and earlier valid sets: no candidate may duplicate them
        self.ctx.dft_keys = []  # the sets of DFT results: relaxed_<iteration>, audit_<iteration> (single points)
        self.ctx.dft_queue = []  # this iteration's hpcai.dft_batch runs still to submit, one after the other
        self.ctx.dft_batches = []  # the keys of this iteration's hpcai.dft_batch runs (batch_<key> in the context)
        self.ctx.off_scale = {}  # <key of a DFT set> -> ids whose formation energy is not on MP's scale
        self.ctx.buffered = 0
        self.ctx.fine_tune_pk = None
        self.ctx.fine_tunes = []
        self.ctx.stop_reason = None
        self.ctx.generate_failure = None
        self.ctx.surrogate_failure = None
        self.ctx.discriminator_failure = None
        self.report(
            f'goal {goal.model_dump_json()}; {self.ctx.property} threshold sigma <= {threshold} {self.ctx.units}; '
            f'{self.ctx.dft_left} DFT run(s) left'
        )

    def look_up(self):
        goal = self._goal()
        answer = operations.look_up(goal, limit=None)
        hits = answer['hits']
        self.ctx.look_up = {'n_hits': answer['n_hits'], 'searched': answer['searched'], 'hits': []}
        if not hits:
            self.report('look-up: no hit')
            return
        sources = {}
        for row in hits:
            if row['source'] == 'database':
                sources[f'set_{row["node_pk"]}'] = orm.load_node(row['node_pk'])
            else:
                sources[f'structure_{row["structure_pk"]}'] = orm.load_node(row['structure_pk'])
        found = gather_hits(orm.Dict({'hits': hits}), metadata={'call_link_label': 'look_up'}, **sources)
        self.ctx.sets['hits'] = found
        self.ctx.known.append(found)
        for index, row in enumerate(hits):
            self.ctx.rows.append(
                {
                    'id': found.ids[index],
                    'formula': row['formula'],
                    'source': 'database' if row['source'] == 'database' else 'dft',
                    'values': row['values'],
                    'value': row['values'].get(self.ctx.property),
                    'sigma': None,
                    'model_version': None,
                    'model_pk': None,
                    'node_pk': row['node_pk'],
                    'iteration': 0,
                    'set': 'hits',
                    'index': index,
                }
            )
            self.ctx.look_up['hits'].append(
                {'id': found.ids[index], 'source': row['source'], 'node_pk': row['node_pk']}
            )
        self.report(f'look-up: {len(hits)} hit(s) in the profile')

    def _screening(self) -> filters.ScreeningParameters:
        return filters.ScreeningParameters.from_dict(
            self.inputs.screening.get_dict() if 'screening' in self.inputs else None
        )

    def _accepted(self) -> int:
        """Distinct results so far (duplicates and space group 1 do not count towards the Goal's count)."""
        if not self.ctx.rows:
            return 0
        rows = _preferred(self.ctx.rows)
        structures = [self.ctx.sets[row['set']].get_pymatgen(row['index']) for row in rows]
        settings = self._screening()
        return len(distinct_results(rows, structures, settings.symprec, settings.angle_tolerance).valid)

    def should_iterate(self):
        goal = self._goal()
        if self.ctx.stop_reason is not None:
            return False
        found = self._accepted() if goal.count is not None else 0
        if goal.count is not None and found >= goal.count:
            self.ctx.stop_reason = f'count: {found} distinct results for a count of {goal.count}'
        elif self.ctx.iteration >= self.inputs.max_iterations.value:
            self.ctx.stop_reason = f'iterations: the cap of {self.inputs.max_iterations.value}'
        elif self.ctx.iteration > 0 and 'model' not in (self.inputs.get('generate') or {}):
            self.ctx.stop_reason = 'candidates: no generator, and the candidates were considered'
        return self.ctx.stop_reason is None

    def check_fine_tune(self):
        """Switch to the fine-tuned model if its job has finished ok; log a failure and keep the model otherwise."""
        if self.ctx.fine_tune_pk is None:
            return
        node = orm.load_node(self.ctx.fine_tune_pk)
        if not node.is_terminated:
            return
        # the first iteration that may use the new model (max_iterations + 1: only the `model` output does)
        event = {'fine_tune_pk': node.pk, 'from_iteration': self.ctx.iteration + 1}
        if node.is_finished_ok:
            self.ctx.models = {'model': node.outputs.model}
            self.ctx.model_version += 1
            event.update(status='switched', model_pk=node.outputs.model.pk, model_version=self.ctx.model_version)
            self.report(f'switched to the fine-tuned ModelData<{node.outputs.model.pk}> of TrainCalculation<{node.pk}>')
        else:
            event.update(status='failed', exit_status=node.exit_status, message=node.exit_message)
            self.report(
                f'fine-tune TrainCalculation<{node.pk}> failed [{node.exit_status}] {node.exit_message}; '
                'keeping the current model'
            )
        self.ctx.fine_tunes.append(event)
        self.ctx.fine_tune_pk = None

    def propose(self):
        self.ctx.iteration += 1
        model = next(iter(self.ctx.models.values()))
        self.ctx.iterations.append(
            {
                'iteration': self.ctx.iteration,
                'model_version': self.ctx.model_version,
                'model_pk': model.pk,
                'candidates': 0,
                'valid': 0,
                'accepted': [],
                'dropped': [],
                'sent_to_dft': [],
                'not_sent_to_dft': [],
            }
        )
        if self.ctx.iteration == 1 and 'candidates' in self.inputs:
            self._log().update(source='candidates')
            return None
        goal = self._goal()
        inputs = self.exposed_inputs(GenerateCalculation, namespace='generate')
        settings = self.inputs.generation.get_dict() if 'generation' in self.inputs else {}
        count = self.inputs.samples_per_iteration.value
        parameters = {key: settings[key] for key in GENERATION_KEYS if key in settings and key != 'n_strategy'}
        parameters['seed'] = settings.get('seed', 0) + self.ctx.iteration
        if goal.composition is not None:
            compositions = csp_compositions(goal.composition, count, settings.get(FORMULA_UNITS, [1]))
            parameters.update(mode='csp', compositions=compositions)
        else:
            parameters.update(mode='abinitio', n_samples=count, **goal_elements(goal))
            if 'n_strategy' in settings:
                parameters['n_strategy'] = settings['n_strategy']
        inputs['parameters'] = orm.Dict(parameters)
        inputs.setdefault('metadata', {})['call_link_label'] = f'generate_{self.ctx.iteration}'
        node = self.submit(GenerateCalculation, **inputs)
        restricted = {key: parameters[key] for key in ('elements', 'required_elements') if key in parameters}
        self._log().update(source='generate', generate_pk=node.pk, mode=parameters['mode'], **restricted)
        self.report(f'iteration {self.ctx.iteration}: launched GenerateCalculation<{node.pk}> ({parameters["mode"]})')
        return ToContext(generate=node)

    def screen(self):
        log = self._log()
        self.ctx.valid = None
        if log['source'] == 'candidates':
            proposed = self.inputs.candidates
        else:
            node = self.ctx.generate
            if 'structures' not in node.outputs or not len(node.outputs.structures):
                message = f'[{node.exit_status}] {node.exit_message}'
                log.update(candidates=0, generate_failed=message)
                self.ctx.generate_failure = {'pk': node.pk, 'message': message}
                self.ctx.stop_reason = f'generate: GenerateCalculation<{node.pk}> made no crystal {message}'
                self.report(self.ctx.stop_reason)
                return
            proposed = node.outputs.structures
        log['candidates'] = len(proposed)
        fitting = goal_candidates(
            proposed,
            self.inputs.goal,
            orm.Str(f'i{self.ctx.iteration}-'),
            metadata={'call_link_label': f'goal_filter_{self.ctx.iteration}'},
        )
        log['outside_goal'] = fitting['rejected']['rejected']
        batch = fitting['structures']
        if not len(batch):
            log.update(valid=0)
            return
        outputs, end = screen_structure_set(
            batch,
            self.inputs.screening if 'screening' in self.inputs else None,
            known_sets=list(self.ctx.known),
            metadata={'call_link_label': f'screen_{self.ctx.iteration}'},
        )
        counts = outputs['counts'].get_dict() if end.is_finished_ok else {}
        log.update(valid=counts.get('valid', 0), rejected={r: counts[r] for r in filters.REASONS if counts.get(r)})
        if end.is_finished_ok and len(outputs['valid_structures']):
            self.ctx.valid = outputs['valid_structures']
            self.ctx.known.append(self.ctx.valid)
            self.ctx.sets[f'valid_{self.ctx.iteration}'] = self.ctx.valid

    def has_valid(self):
        return self.ctx.valid is not None

    def predict(self):
        inputs = self.exposed_inputs(SurrogateWorkChain, namespace='surrogate')
        inputs['models'] = dict(self.ctx.models)
        inputs['structures'] = self.ctx.valid
        inputs['sigma_threshold'] = orm.Float(self.ctx.threshold)
        inputs.setdefault('metadata', {})['call_link_label'] = f'surrogate_{self.ctx.iteration}'
        node = self.submit(SurrogateWorkChain, **inputs)
        self._log()['surrogate_pk'] = node.pk
        if 'discriminator' not in self.inputs:
            return ToContext(surrogate=node)
        # the match discriminator scores the same structures, at the same time, with the same code
        predict = inputs['predict']
        metadata = {'call_link_label': f'discriminator_{self.ctx.iteration}'}
        if 'options' in predict.get('metadata', {}):
            metadata['options'] = predict['metadata']['options']
        job = self.submit(
            PredictCalculation,
            code=predict['code'],
            structures=self.ctx.valid,
            models={'discriminator': self.inputs.discriminator},
            metadata=metadata,
        )
        self._log()['discriminator_pk'] = job.pk
        return ToContext(surrogate=node, discriminator=job)

    def decide(self):
        """Accept, drop or send to DFT each prediction of this iteration; submit the DFT batch if any."""
        goal = self._goal()
        log = self._log()
        node = self.ctx.surrogate
        self.ctx.dft_queue, self.ctx.dft_batches = [], []
        if not node.is_finished_ok:
            self.ctx.stop_reason = f'surrogate failed: hpcai.surrogate<{node.pk}> [{node.exit_status}]'
            self.ctx.surrogate_failure = {'pk': node.pk, 'message': node.exit_message}
            return None
        probability = self._match_probabilities()
        if probability is None:
            return None
        predictions = node.outputs.classified_predictions
        mean, sigma = predictions.get_array('mean'), predictions.get_array('sigma')
        status = predictions.get_array('status')
        valid = self.ctx.valid
        formulae = valid.arrays.formulae()
        accepted, dropped, uncertain = [], [], []
        for index, identifier in enumerate(valid.ids):
            value, spread = _finite_or_none(mean[index]), _finite_or_none(sigma[index])
            entry = {'id': identifier, 'mean': value, 'sigma': spread}
            matched = True
            if probability is not False:
                entry['match_probability'] = _finite_or_none(probability[index])
                limit = self.inputs.discriminator_threshold.value
                matched = entry['match_probability'] is not None and entry['match_probability'] >= limit
            if status[index] != 'ok' or value is None or spread is None:
                uncertain.append({**entry, 'reason': f'not predicted ({status[index]})'})
                continue
            fits = operations._bounds_fit(goal, {self.ctx.property: value})
            confident = spread <= self.ctx.threshold
            if confident and not matched:
                uncertain.append(
                    {
                        **entry,
                        'reason': f'match probability {entry["match_probability"]} < '
                        f'{self.inputs.discriminator_threshold.value}',
                    }
                )
            elif confident and fits:
                accepted.append(entry)
                self.ctx.rows.append(
                    {
                        'id': identifier,
                        'formula': operations._reduced(formulae[index])[0],
                        'source': 'ai',
                        'values': {self.ctx.property: value},
                        'value': value,
                        'sigma': spread,
                        'model_version': self.ctx.model_version,
                        'model_pk': next(iter(self.ctx.models.values())).pk,
                        'node_pk': node.pk,
                        'iteration': self.ctx.iteration,
                        'set': f'valid_{self.ctx.iteration}',
                        'index': index,
                    }
                )
            elif confident and fits is False:
                dropped.append({**entry, 'reason': 'confidently predicted outside the bounds'})
            elif confident:
                unverified = sorted(set(goal.bounds) - {self.ctx.property})
                uncertain.append({**entry, 'reason': f'the surrogate does not predict {", ".join(unverified)}'})
            else:
                uncertain.append({**entry, 'reason': f'sigma {spread:.4g} > threshold {self.ctx.threshold:.4g}'})

        atoms = dict(zip(valid.ids, valid.arrays.natoms.tolist()))
        uncertain.sort(key=lambda entry: dft_priority(goal, self.ctx.property, entry, atoms[entry['id']]))
        uncertain, useless = self._dft_can_answer(goal, uncertain)
        audited = self._audit(goal, accepted)
        # the runs kept for audits are not the uncertain candidates' to spend
        left = self.ctx.dft_left - len(audited) - self.ctx.audits_left
        room = max(min(left, self.inputs.dft_per_iteration.value - len(audited)), 0)
        left = max(left, 0)
        to_dft, not_sent = uncertain[:room], uncertain[room:]
        for entry in not_sent:
            if left > len(to_dft):
                entry['not_sent'] = 'dft_per_iteration cap'
            elif left + self.ctx.audits_left > len(to_dft):
                entry['not_sent'] = f'the {self.ctx.audits_left} DFT run(s) left are kept for audits'
            else:
                entry['not_sent'] = 'DFT budget spent'
        not_sent += useless
        to_dft = audited + to_dft
        log.update(accepted=accepted, dropped=dropped, sent_to_dft=to_dft, not_sent_to_dft=not_sent)
        if any(entry['not_sent'] == 'DFT budget spent' for entry in not_sent) and not self.inputs.continue_without_dft:
            self.ctx.stop_reason = f'dft_budget: {len(not_sent)} candidate(s) needed DFT beyond the budget'
        self.report(
            f'iteration {self.ctx.iteration}: {len(accepted)} accepted by the AI, {len(dropped)} dropped, '
            f'{len(to_dft)} to DFT{f" ({len(audited)} an audit)" if audited else ""}, {len(not_sent)} uncertain left '
            'without DFT'
        )
        if not to_dft:
            return None
        # Single-point audits run in a batch of their own (relax False), before the relaxations: one batch at a
        # time, so that `dft_batch.max_concurrent` bounds the loop's DFT runs as it bounds one batch's.
        single_points = [] if self.inputs.audit_relax.value else audited
        relaxed = [entry for entry in to_dft if entry not in single_points]
        self.ctx.dft_queue = [
            {'key': key, 'ids': [entry['id'] for entry in entries]}
            for key, entries in (('audit', single_points), ('relaxed', relaxed))
            if entries
        ]
        self.ctx.dft_left -= len(to_dft)
        return None

    def has_dft_to_run(self):
        return bool(self.ctx.dft_queue)

    def run_dft(self):
        """Submit the next ``hpcai.dft_batch`` of this iteration (relaxed, or single points of the cells as
        generated), tagged with the Goal (its DFT budget counts them)."""
        batch = self.ctx.dft_queue[0]
        self.ctx.dft_queue = self.ctx.dft_queue[1:]
        key = f'{batch["key"]}_{self.ctx.iteration}'
        label = 'dft' if batch['key'] == 'relaxed' else 'audit_dft'
        selected = select_structures(
            self.ctx.valid,
            orm.List(batch['ids']),
            metadata={'call_link_label': f'{label.replace("dft", "select")}_{self.ctx.iteration}'},
        )
        inputs = self.exposed_inputs(DftBatchWorkChain, namespace='dft_batch')
        inputs['structures'] = selected['subset']
        if batch['key'] == 'audit':
            inputs['dft'] = {**inputs['dft'], 'relax': orm.Bool(False)}
        inputs.setdefault('metadata', {})['call_link_label'] = f'{label}_{self.ctx.iteration}'
        node = self.submit(DftBatchWorkChain, **inputs)
        node.base.extras.set_many(
            {operations.GOAL_EXTRA: self.ctx.goal_uuid, operations.DFT_RUNS_EXTRA: len(batch['ids'])}
        )
        self._log()[f'{label}_pk'] = node.pk
        self.ctx.dft_batches = [*self.ctx.dft_batches, key]
        return ToContext(**{f'batch_{key}': node})

    def _audit(self, goal, accepted: list[dict]) -> list[dict]:
        """One of this iteration's AI acceptances, drawn at random, taken back from ``accepted`` (and its table row)
        to go to DFT, while audits are left (``audit``) and DFT can settle it; [] otherwise. Drawn at random so that
        the loop's audited errors are a fair sample of what its rule accepts."""
        if self.ctx.audits_left <= 0 or not accepted:
            return []
        answerable = [entry for entry in accepted if self._dft_settles(goal, entry['id']) is not False]
        if not answerable:
            return []
        rng = np.random.default_rng([self.node.pk, self.ctx.iteration])
        chosen = answerable[int(rng.integers(len(answerable)))]
        accepted[:] = [entry for entry in accepted if entry['id'] != chosen['id']]
        (row,) = [
            row
            for row in self.ctx.rows
            if row['source'] == 'ai' and row['set'] == f'valid_{self.ctx.iteration}' and row['id'] == chosen['id']
        ]
        self.ctx.rows = [other for other in self.ctx.rows if other is not row]
        self.ctx.audits_left -= 1
        # the AI's row comes back should the DFT run fail (inspect_dft): a failed check takes nothing away
        self.ctx.audited_rows = {**self.ctx.audited_rows, chosen['id']: row}
        return [{**chosen, 'audit': True, 'reason': 'audit: accepted by the AI (drawn at random), checked by DFT'}]

    def _dft_can_answer(self, goal, uncertain: list[dict]) -> tuple[list[dict], list[dict]]:
        """Split the uncertain candidates into those DFT can settle and those it cannot (:meth:`_dft_settles`)."""
        answerable = [entry for entry in uncertain if self._dft_settles(goal, entry['id']) is not False]
        useless = [entry for entry in uncertain if entry not in answerable]
        if useless:
            engine = self.inputs.dft_batch.dft.engine.value
            for entry in useless:
                entry['not_sent'] = (
                    f"its {engine} formation energy would be off MP's scale (GGA+U), and the goal needs the "
                    'formation energy'
                )
            self.report(
                f"{len(useless)} uncertain candidate(s) not sent to DFT: {engine}'s formation energy of their "
                "composition would be off MP's scale (GGA+U)"
            )
        return answerable, useless

    def _dft_settles(self, goal, identifier: str) -> bool | None:
        """Whether DFT can settle the valid structure ``identifier`` for the Goal; None where the question does not
        arise (no DFT inputs, or the Goal neither bounds nor ranks by the formation energy). False when the Goal
        needs the formation energy and the structure's would be off MP's scale (a compound MP runs with GGA+U, by
        an engine MP's constants were not fitted to: Quantum ESPRESSO): its DFT run would spend the budget on a
        value the loop must leave out (:meth:`inspect_dft`)."""
        from .dft import formation_energy_will_be_on_mp_scale

        name = 'formation_energy_per_atom'
        needed = name in goal.bounds or (goal.objective is not None and goal.objective[1] == name)
        if not needed or 'dft_batch' not in self.inputs:  # no DFT inputs: nothing is sent anyway
            return None
        dft = self.exposed_inputs(DftBatchWorkChain, namespace='dft_batch').get('dft', {})
        if 'engine' not in dft:
            return None
        valid = self.ctx.valid
        return formation_energy_will_be_on_mp_scale(dft, valid.get_structuredata(valid.ids.index(identifier)))

    def _match_probabilities(self):
        """The discriminator's match probability per valid structure; False without a discriminator; None (the loop
        stops) when its job failed."""
        if 'discriminator' not in self.inputs:
            return False
        job = self.ctx.discriminator
        if 'predictions' not in job.outputs:
            self.ctx.stop_reason = f'discriminator failed: PredictCalculation<{job.pk}> [{job.exit_status}]'
            self.ctx.discriminator_failure = {'pk': job.pk, 'message': job.exit_message}
            return None
        predictions = job.outputs.predictions
        probability = np.asarray(predictions.get_array('mean'), dtype=float)
        return np.where(predictions.get_array('status') == 'ok', probability, np.nan)

    def has_dft(self):
        return bool(self.ctx.dft_batches)

    def inspect_dft(self):
        """Take in this iteration's DFT results (relaxed, and single-point audits when ``audit_relax`` is False),
        then refresh the acceptance rule with all of them at once."""
        log = self._log()
        log.update(dft_failed=[], dft_accepted=[], dft_outside_goal=[])
        finished, checks = set(), []
        for key in self.ctx.dft_batches:
            finished |= self._inspect_batch(self.ctx[f'batch_{key}'], key, checks)
        # an audit whose DFT run failed checked nothing: the AI's acceptance stands
        restored = [row for identifier, row in self.ctx.audited_rows.items() if identifier not in finished]
        self.ctx.rows.extend(restored)
        self.ctx.audited_rows = {}
        if restored:
            log['audits_failed_ai_kept'] = [row['id'] for row in restored]
        self._refresh_acceptance(checks)

    def _inspect_batch(self, node, key: str, checks: list) -> set[str]:
        """Results of one ``hpcai.dft_batch`` into the table, the fine-tuning buffer and ``checks`` (the predictions
        it tests); its output set is kept as ``key``. Returns the ids that finished ok."""
        goal = self._goal()
        log = self._log()
        results = node.outputs.results.get_dict() if 'results' in node.outputs else {'structures': []}
        log['dft_failed'].extend(
            {'id': row['id'], 'exit_status': row['exit_status'], 'message': row['exit_message']}
            for row in results['structures']
            if row['status'] != 'finished_ok'
        )
        finished = {row['id'] for row in results['structures'] if row['status'] == 'finished_ok'}
        if 'relaxed_structures' not in node.outputs:
            self.report(f'DftBatchWorkChain<{node.pk}>: no structure finished ok')
            return set()
        relaxed = node.outputs.relaxed_structures
        finished &= set(relaxed.ids)
        single_point = key.startswith('audit')
        self.ctx.sets[key] = relaxed
        self.ctx.dft_keys.append(key)
        children = {row['id']: row['process'] for row in results['structures']}
        # A formation energy off MP's scale (QE's +U compounds) cannot be compared with the Goal's bounds, the
        # surrogate's predictions or its training data: it is left out of acceptance, the rule's refresh and
        # fine-tuning (the other properties of that result still count).
        off_scale = [row['id'] for row in results['structures'] if row.get('on_mp_scale') is False]
        self.ctx.off_scale[key] = off_scale
        if off_scale:
            log.setdefault('dft_off_mp_scale', []).extend(off_scale)
            self.report(
                f"{len(off_scale)} DFT result(s) with a formation energy off MP's scale (GGA+U by an engine MP's "
                f'constants were not fitted to): not used as formation energies'
            )
        usable = self._usable(key, relaxed.ids)
        self.ctx.buffered += len(usable)
        for index, identifier in enumerate(relaxed.ids):
            values = {name: _finite_or_none(relaxed.get_label(LABELS[name])[index]) for name in DFT_PROPERTIES}
            values = {name: value for name, value in values.items() if value is not None}
            if identifier in off_scale:
                values.pop('formation_energy_per_atom', None)
            structure = relaxed.get_pymatgen(index)
            reduced, elements = operations._reduced(structure.composition.formula)
            fits = (
                operations._bounds_fit(goal, values)
                and operations._composition_fits(goal, reduced, elements)
                and operations._symmetry_fits(goal, lambda structure=structure: operations._space_group_of(structure))
            )
            entry = {'id': identifier, **values, **({'single_point': True} if single_point else {})}
            if not fits:
                log['dft_outside_goal'].append(entry)
                continue
            log['dft_accepted'].append(entry)
            self.ctx.rows.append(
                {
                    'id': identifier,
                    'formula': reduced,
                    'source': 'dft',
                    'values': values,
                    'value': values.get(self.ctx.property),
                    'sigma': None,
                    'model_version': None,
                    'model_pk': None,
                    'node_pk': orm.load_node(children[identifier]).pk,
                    'iteration': self.ctx.iteration,
                    'set': key,
                    'index': index,
                }
            )
        checks.extend(self._checks(relaxed, usable, single_point))
        return finished

    def _usable(self, key: str, ids) -> list[str]:
        """The ids of a DFT set whose value of the loop's property may judge and teach the surrogate."""
        if self.ctx.property != 'formation_energy_per_atom':
            return list(ids)
        return [identifier for identifier in ids if identifier not in self.ctx.off_scale.get(key, [])]

    def _checks(self, relaxed: StructureSet, usable: list[str], single_point: bool) -> list[dict]:
        """The current model's predictions of the ``usable`` DFT results of ``relaxed`` against their DFT values
        (``single_point``: on the cells as generated); none was in the model's training."""
        predicted = {entry['id']: entry for entry in self._log()['sent_to_dft']}
        truth = relaxed.get_label(LABELS[self.ctx.property])
        checks = [
            {
                'iteration': self.ctx.iteration,
                'model_version': self.ctx.model_version,
                'id': identifier,
                'mean': predicted[identifier]['mean'],
                'sigma': predicted[identifier]['sigma'],
                'dft': _finite_or_none(truth[index]),
                'audit': bool(predicted[identifier].get('audit')),
                'single_point': single_point,
            }
            for index, identifier in enumerate(relaxed.ids)
            if identifier in usable and identifier in predicted and predicted[identifier]['mean'] is not None
        ]
        return [check for check in checks if check['dft'] is not None and check['sigma'] is not None]

    def _refresh_acceptance(self, checks: list[dict]):
        """Count this iteration's ``checks`` (:meth:`_checks`) and refresh the acceptance rule on them
        (:func:`aiida_hpcai.models.acceptance.refresh`).

        The counts of the record are pooled across fine-tunes: a fine-tuned model's sigma is taken to sort its
        errors as its parent's did, and the refresh's own check (the results added by the loop's refreshes so
        far must not be evidence against the promise) is what reacts when it does not."""
        from ..models import acceptance

        log = self._log()
        self.ctx.loop_checks.extend(checks)
        if self.ctx.acceptance is None or not checks:
            return
        before = self.ctx.threshold
        record = acceptance.refresh(
            self.ctx.acceptance,
            [check['mean'] for check in checks],
            [check['sigma'] for check in checks],
            [check['dft'] for check in checks],
        )
        self.ctx.acceptance = _json_clean(record)
        self.ctx.threshold = float(record['threshold'])
        log['acceptance_refresh'] = {
            'results': len(checks),
            'threshold_before': before,
            'threshold_after': self.ctx.threshold,
            'pooled': record.get('pooled'),
            'reason': record.get('reason'),
        }
        self.report(
            f'acceptance rule refreshed with {len(checks)} DFT result(s): threshold {before:.4g} -> '
            f'{self.ctx.threshold:.4g}'
        )

    def _acceptance_summary(self) -> dict:
        """How the surrogate did on the loop's DFT results: the share within the rule's tolerance, overall and
        among those the threshold in use at the end accepts; and the final record (to start the next loop)."""
        record = self.ctx.acceptance
        tolerance = float(record['tolerance']) if record else None
        checks = self.ctx.loop_checks
        within = [abs(check['mean'] - check['dft']) <= tolerance for check in checks] if record else []
        accepted = [ok for ok, check in zip(within, checks) if check['sigma'] <= self.ctx.threshold]
        audits = [check for check in checks if check.get('audit')]
        return {
            'record': record,
            'tolerance': tolerance,
            'loop_results': checks,
            'loop_within_tolerance': sum(within) if record else None,
            'loop_accepted_by_final_threshold': len(accepted),
            'loop_accepted_within_tolerance': sum(accepted),
            # accepted by the rule in use when they were drawn: the rate the rule promises, on the loop's candidates
            'audits': len(audits),
            'audits_within_tolerance': sum(abs(c['mean'] - c['dft']) <= tolerance for c in audits) if record else None,
        }

    def close_iteration(self):
        """Submit a fine-tune when the buffer is full (and none is running); never wait for it here."""
        log = self._log()
        log['results_so_far'] = self._accepted()
        size = self.inputs.buffer_size.value
        if not size or self.ctx.buffered < size or self.ctx.fine_tune_pk is not None:
            log['buffer'] = self.ctx.buffered
            return
        parent = next(iter(self.ctx.models.values()))
        excluded = {key: ids for key, ids in self.ctx.off_scale.items() if ids}
        training = fine_tune_set(
            orm.Str(self.ctx.property),
            orm.Dict(excluded if self.ctx.property == 'formation_energy_per_atom' else {}),
            metadata={'call_link_label': f'fine_tune_set_{self.ctx.iteration}'},
            **{key: self.ctx.sets[key] for key in self.ctx.dft_keys},
        )
        ids = training.ids
        parameters = {
            **FINE_TUNE_DEFAULTS,
            'ensemble_size': parent.hyperparameters.get('training', {}).get('ensemble_size', 1),
            **(self.inputs.fine_tune.get_dict() if 'fine_tune' in self.inputs else {}),
            'target': self.ctx.property,
            'units': self.ctx.units,
            # A few DFT results hold no separate validation split: every one is in both (the training then keeps
            # the parent's sigma scale, which seen data cannot fit; the acceptance rule re-checks it).
            'split': {'train': ids, 'val': ids, 'test': []},
        }
        predict = self.exposed_inputs(SurrogateWorkChain, namespace='surrogate')['predict']
        # where and how the predict jobs run (resources, environment, queue), not what is specific to hpcai.predict:
        # its parser and file names come with the exposed options too
        options = {
            key: value
            for key, value in predict.get('metadata', {}).get('options', {}).items()
            if key not in PREDICT_ONLY_OPTIONS
        }
        inputs = {
            'code': predict['code'],
            'structures': training,
            'parameters': orm.Dict(parameters),
            'parent_model': parent,
            'metadata': {
                'call_link_label': f'fine_tune_{self.ctx.iteration}',
                **({'options': options} if options else {}),
            },
        }
        node = self.submit(TrainCalculation, **inputs)
        self.ctx.fine_tune_pk = node.pk
        self.ctx.buffered = 0
        log['buffer'] = 0
        log['fine_tune_submitted'] = {'pk': node.pk, 'structures': len(ids), 'parent_model_pk': parent.pk}
        self.report(f'submitted fine-tune TrainCalculation<{node.pk}> on {len(ids)} DFT result(s); not waiting for it')

    def should_wait_for_fine_tune(self):
        return self.ctx.fine_tune_pk is not None and self.inputs.wait_for_fine_tune.value

    def wait_for_fine_tune(self):
        self.report(f'waiting for the fine-tune TrainCalculation<{self.ctx.fine_tune_pk}> before finishing')
        return ToContext(last_fine_tune=orm.load_node(self.ctx.fine_tune_pk))

    def results(self):
        if self.ctx.stop_reason is None:
            self.ctx.stop_reason = 'done'
        records = {
            'rows': self.ctx.rows,
            'iterations': self.ctx.iterations,
            'look_up': self.ctx.look_up,
            'stop_reason': self.ctx.stop_reason,
            'property': self.ctx.property,
            'units': self.ctx.units,
            'fine_tunes': self.ctx.fine_tunes,
            'threshold': self.ctx.threshold,
            'threshold_source': self.ctx.threshold_source,
            'acceptance': self._acceptance_summary(),
            'symprec': self._screening().symprec,
            'angle_tolerance': self._screening().angle_tolerance,
        }
        used = {row['set'] for row in self.ctx.rows}
        report = coordinate_report(
            self.inputs.goal,
            orm.Dict(records),
            metadata={'call_link_label': 'report'},
            **{key: node for key, node in self.ctx.sets.items() if key in used},
        )
        self.out_many(report)
        if self.ctx.model_version > 0:
            self.out('model', next(iter(self.ctx.models.values())))
        counts = report['table']['counts']
        self.report(f'{len(report["structures"])} result(s) {counts}; stopped: {self.ctx.stop_reason}')
        # a failed step stops the loop with its exit code, the results found until then attached
        if self.ctx.surrogate_failure is not None:
            return self.exit_codes.ERROR_SURROGATE_FAILED.format(**self.ctx.surrogate_failure)
        if self.ctx.discriminator_failure is not None:
            return self.exit_codes.ERROR_DISCRIMINATOR_FAILED.format(**self.ctx.discriminator_failure)
        if self.ctx.generate_failure is not None:
            return self.exit_codes.ERROR_GENERATE_FAILED.format(**self.ctx.generate_failure)
        if not len(report['structures']):
            return self.exit_codes.ERROR_NOTHING_FOUND.format(reason=self.ctx.stop_reason)
        return None
