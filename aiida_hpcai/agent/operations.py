"""The operations of the coordinate pattern as plain functions: plan, look up, generate, predict, run DFT, status, results.

The planner, the CLI and the MCP server (:mod:`aiida_hpcai.agent.mcp_server`) call these; each takes
typed arguments and returns JSON-serialisable data (dicts of str, numbers, lists, None). A refusal or a
failure the caller should read is an :class:`OperationError` with a one-line message; a request the
planner cannot read is the planner's :class:`~aiida_hpcai.agent.goal.PlanError`.

DFT budget. :func:`run_dft` never starts more DFT calculations (one per structure) than the Goal's
``dft_budget``, counting those already started for the same Goal. The Goal is stored once, as a ``Dict``
node labelled :data:`GOAL_NODE_LABEL` found again by the digest of its JSON (extra
:data:`GOAL_DIGEST_EXTRA`): the same Goal, from any caller, shares one budget. Every process
:func:`run_dft` submits carries the extras :data:`GOAL_EXTRA` (the Goal node's UUID) and
:data:`DFT_RUNS_EXTRA` (how many structures it computes); :func:`dft_runs_started` sums them, so the
budget is visible in the profile (``verdi node extras PK``). Elemental references computed on the way
(once per engine and protocol) are not counted: the budget counts the structures asked for.
See docs/source/agent.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

from aiida import orm

from .goal import Goal, PlanError, goal_from_dict

__all__ = (
    'DFT_RUNS_EXTRA',
    'GOAL_DIGEST_EXTRA',
    'GOAL_EXTRA',
    'GOAL_NODE_LABEL',
    'BudgetExceeded',
    'OperationError',
    'dft_runs_started',
    'generate',
    'goal_node',
    'look_up',
    'plan',
    'predict',
    'results',
    'run_dft',
    'status',
)

GOAL_NODE_LABEL = 'hpcai.goal'
GOAL_DIGEST_EXTRA = 'hpcai_goal_digest'
GOAL_EXTRA = 'hpcai_goal'
DFT_RUNS_EXTRA = 'hpcai_dft_runs'

DFT_PROCESS_TYPE = 'aiida.workflows:hpcai.dft'
# Label names under which an imported StructureSet may hold each Goal property (MP's CSV calls the
# distance to the hull e_above_hull); values are read in the Goal's units (eV/atom, eV), as MP gives them.
LABEL_NAMES = {
    'formation_energy_per_atom': ('formation_energy_per_atom',),
    'energy_above_hull': ('energy_above_hull', 'e_above_hull'),
    'band_gap': ('band_gap',),
}
# Outputs of hpcai.dft that carry a Goal property.
DFT_OUTPUTS = ('formation_energy_per_atom', 'band_gap')


class OperationError(Exception):
    """An operation refused or failed, with a one-line message for the caller."""


class BudgetExceeded(OperationError):
    """:func:`run_dft` would start more DFT calculations than the Goal's ``dft_budget`` allows."""


# ---------------------------------------------------------------------------------------------- goals


def _as_goal(goal: Goal | dict) -> Goal:
    return goal if isinstance(goal, Goal) else goal_from_dict(goal)


def _goal_json(goal: Goal) -> dict:
    return json.loads(goal.model_dump_json())


def _goal_digest(goal: Goal) -> str:
    return hashlib.sha256(json.dumps(_goal_json(goal), sort_keys=True).encode()).hexdigest()


def goal_node(goal: Goal | dict, create: bool = True) -> orm.Dict | None:
    """The stored ``Dict`` node of ``goal`` (stored on first use when ``create``), or None."""
    goal = _as_goal(goal)
    digest = _goal_digest(goal)
    query = orm.QueryBuilder().append(
        orm.Dict, filters={'label': GOAL_NODE_LABEL, f'extras.{GOAL_DIGEST_EXTRA}': digest}, tag='goal'
    )
    query.order_by({'goal': {'id': 'asc'}})
    found = query.first(flat=True)
    if found is not None or not create:
        return found
    node = orm.Dict(_goal_json(goal), label=GOAL_NODE_LABEL, description='a Goal of aiida_hpcai.agent').store()
    node.base.extras.set(GOAL_DIGEST_EXTRA, digest)
    return node


def dft_runs_started(goal_uuid: str) -> int:
    """DFT calculations already started for the Goal node ``goal_uuid``: the sum of the tagged processes' counts."""
    query = orm.QueryBuilder().append(
        orm.ProcessNode, filters={f'extras.{GOAL_EXTRA}': goal_uuid}, project=[f'extras.{DFT_RUNS_EXTRA}']
    )
    return sum(int(count or 0) for count in query.all(flat=True))


# ---------------------------------------------------------------------------------------------- plan


def plan(request: str, planner: str = 'rules') -> dict:
    """The Goal of ``request`` as JSON (what ``aiida-hpcai plan --json`` prints); PlanError when it cannot be read."""
    from .planner import plan as plan_text

    return _goal_json(plan_text(request, planner))


# ---------------------------------------------------------------------------------------------- look up


def _reduced(formula: str) -> tuple[str, frozenset[str]]:
    from pymatgen.core import Composition

    composition = Composition(formula)
    return composition.reduced_formula, frozenset(element.symbol for element in composition.elements)


def _composition_fits(goal: Goal, reduced: str, elements: frozenset[str]) -> bool:
    if goal.composition is not None and reduced != goal.composition:
        return False
    if goal.chemsys is not None and elements != set(goal.chemsys.split('-')):
        return False
    return set(goal.must_include) <= elements and not (set(goal.exclude) & elements)


def _symmetry_fits(goal: Goal, spacegroup) -> bool:
    """``spacegroup``: a callable giving the space group number, called only when the Goal asks for symmetry."""
    if goal.spacegroup is None and goal.crystal_system is None:
        return True
    number = spacegroup()
    if goal.spacegroup is not None and number != goal.spacegroup:
        return False
    if goal.crystal_system is not None:
        from .goal import crystal_system_of

        return crystal_system_of(number) == goal.crystal_system
    return True


def _bounds_fit(goal: Goal, values: dict) -> bool | None:
    """True/False whether ``values`` lie within the Goal's bounds; None when a bounded value is unknown."""
    for name, (low, high) in goal.bounds.items():
        value = values.get(name)
        if value is None:
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            return False
    return True


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _space_group_of(structure) -> int:
    from aiida_hpcai.screening.filters import FINGERPRINT_SYMPREC, space_group

    return space_group(structure, symprec=FINGERPRINT_SYMPREC)[0]


def _dft_hits(goal: Goal, counts: dict) -> list[dict]:
    """Finished ``hpcai.dft`` results whose relaxed structure and values satisfy ``goal`` (single points, ``relax``
    False, are counted apart and are no hits)."""
    from aiida_hpcai.screening.calcfunctions import FINGERPRINT_EXTRA
    from aiida_hpcai.workchains.dft import formation_energy_on_mp_scale, is_single_point

    query = orm.QueryBuilder()
    query.append(
        orm.WorkflowNode,
        filters={'process_type': DFT_PROCESS_TYPE, 'attributes.exit_status': 0},
        tag='dft',
        project='*',
    )
    query.append(orm.StructureData, with_incoming='dft', edge_filters={'label': 'relaxed_structure'}, project='*')
    query.order_by({'dft': {'id': 'asc'}})
    hits = []
    for process, relaxed in query.iterall():
        if is_single_point(process):  # an audit, `aiida-hpcai dft --no-relax`
            counts['single_points'] += 1
            continue
        counts['dft_results'] += 1
        reduced, elements = _reduced(relaxed.get_formula(mode='hill'))
        if not _composition_fits(goal, reduced, elements):
            continue
        fingerprint = relaxed.base.extras.get(FINGERPRINT_EXTRA, None)

        def spacegroup(relaxed=relaxed, fingerprint=fingerprint):
            # The fingerprint extra (hpcai.dft_batch writes it) holds the space group at the same tolerance.
            return fingerprint['space_group'] if fingerprint else _space_group_of(relaxed.get_pymatgen_structure())

        if not _symmetry_fits(goal, spacegroup):
            continue
        outputs = process.outputs
        values = {name: _finite(outputs[name].value) for name in DFT_OUTPUTS if name in outputs}
        if not formation_energy_on_mp_scale(outputs):
            values.pop('formation_energy_per_atom', None)  # a Goal's formation energy is on MP's scale
        fits = _bounds_fit(goal, values)
        if fits is None:
            counts['unverified'] += 1
        if not fits:
            continue
        hits.append(
            {
                'source': 'dft',
                # the input's id (run_dft's selections label it), else the WorkChain's label
                'id': process.inputs.structure.label or process.label or relaxed.uuid,
                'formula': reduced,
                'spacegroup': spacegroup() if goal.spacegroup or goal.crystal_system else None,
                'values': values,
                'node_pk': process.pk,
                'node_uuid': process.uuid,
                'structure_pk': relaxed.pk,
                'structure_uuid': relaxed.uuid,
                'identity': outputs.identity.get_dict() if 'identity' in outputs else None,
            }
        )
    return hits


def _structure_set_hits(goal: Goal, counts: dict) -> list[dict]:
    """Labelled entries of imported StructureSets (stored by a user, not made by a process) that satisfy ``goal``."""
    from aiida_hpcai.data.structure_set import StructureSet

    needed = set(goal.must_include)
    if goal.composition is not None:
        needed |= _reduced(goal.composition)[1]
    if goal.chemsys is not None:
        needed |= set(goal.chemsys.split('-'))
    filters = {'attributes.elements': {'contains': sorted(needed)}} if needed else {}
    query = orm.QueryBuilder().append(StructureSet, filters=filters, tag='set')
    query.order_by({'set': {'id': 'asc'}})
    hits = []
    for structure_set in query.all(flat=True):
        if structure_set.creator is not None:
            continue  # a process output (predictions, DFT batches): its values are no reference data
        names = {}
        for name in goal.bounds:
            names[name] = next((label for label in LABEL_NAMES[name] if label in structure_set.label_names), None)
        if None in names.values():
            counts['sets_without_labels'].append(structure_set.pk)
            continue
        counts['structure_sets'] += 1
        arrays = structure_set.arrays
        counts['entries'] += len(arrays)
        available = {
            name: label
            for name, labels in LABEL_NAMES.items()
            for label in labels
            if label in structure_set.label_names
        }
        for index, (identifier, formula) in enumerate(zip(arrays.ids.tolist(), arrays.formulae())):
            reduced, elements = _reduced(formula)
            if not _composition_fits(goal, reduced, elements):
                continue
            values = {name: _finite(arrays.labels[label][index]) for name, label in available.items()}
            fits = _bounds_fit(goal, values)
            if fits is None:
                counts['unverified'] += 1
            if not fits:
                continue
            number = None
            if goal.spacegroup is not None or goal.crystal_system is not None:
                number = _space_group_of(arrays.to_pymatgen(index))
                if not _symmetry_fits(goal, lambda number=number: number):
                    continue
            hits.append(
                {
                    'source': 'database',
                    'id': identifier,
                    'formula': reduced,
                    'spacegroup': number,
                    'values': values,
                    'node_pk': structure_set.pk,
                    'node_uuid': structure_set.uuid,
                    'index': index,
                }
            )
    return hits


def look_up(goal: Goal | dict, limit: int | None = 50) -> dict:
    """What the profile already holds that satisfies ``goal``: finished ``hpcai.dft`` results and labelled entries
    of imported StructureSets.

    A hit has the Goal's composition / chemical system / elements, lies within every bound (a property the
    entry does not have fails the bound: such entries are counted as ``unverified``) and, when asked for,
    has the space group or crystal system (spglib at the screening fingerprint's tolerance). Each hit names
    its source node (``node_pk``/``node_uuid``: the ``hpcai.dft`` WorkChain, or the StructureSet with the
    entry's ``index``). Hits are ranked by the Goal's objective (those without its value last); at most
    ``limit`` are returned (``None``: all), ``n_hits`` says how many there were.
    """
    goal = _as_goal(goal)
    if limit is not None and limit < 0:
        raise OperationError(f'limit must not be negative, not {limit}')
    counts = {
        'dft_results': 0,
        'single_points': 0,
        'structure_sets': 0,
        'entries': 0,
        'unverified': 0,
        'sets_without_labels': [],
    }
    hits = _dft_hits(goal, counts) + _structure_set_hits(goal, counts)
    if goal.objective is not None:
        direction, name = goal.objective
        sign = 1 if direction == 'minimize' else -1
        hits.sort(key=lambda hit: (hit['values'].get(name) is None, sign * (hit['values'].get(name) or 0.0)))
    return {
        'goal': _goal_json(goal),
        'n_hits': len(hits),
        'hits': hits if limit is None else hits[:limit],
        'searched': counts,
    }


# ---------------------------------------------------------------------------------------------- predict


def _load(identifier: int | str, node_class, what: str):
    from aiida.common import exceptions

    try:
        node = orm.load_node(identifier)
    except (exceptions.NotExistent, exceptions.MultipleObjectsError, ValueError) as exception:
        raise OperationError(f'{what} {identifier!r}: {exception}') from None
    if not isinstance(node, node_class):
        raise OperationError(f'{what} {identifier!r} is a {type(node).__name__}, not a {node_class.__name__}')
    return node


def _load_code(label: str):
    from aiida.common import exceptions

    try:
        return orm.load_code(label)
    except (exceptions.NotExistent, exceptions.MultipleObjectsError) as exception:
        raise OperationError(f'code {label!r}: {exception} (run `aiida-hpcai setup`, or give the code)') from None


def _set_position(structure_set, ids: Sequence[str]) -> list[int]:
    position = {value: index for index, value in enumerate(structure_set.ids)}
    missing = [value for value in ids if value not in position]
    if missing:
        raise OperationError(f'id(s) not in StructureSet<{structure_set.pk}>: {", ".join(map(str, missing))}')
    if len(set(ids)) != len(ids):
        raise OperationError('an id is given twice')
    return [position[value] for value in ids]


def predict(
    structure_set: int | str | None = None,
    files: Sequence[str] | None = None,
    target: str = 'formation_energy_per_atom',
    sigma_threshold: float | None = None,
    code: str | None = None,
) -> dict:
    """Predict ``target`` with the shipped model (``ModelData.pretrained(target)``) through ``hpcai.surrogate``.

    Give a stored StructureSet (pk or UUID) or structure ``files`` (CIF, POSCAR, extxyz; read as
    ``aiida-hpcai predict`` reads them). Runs here, to the end. Returns, per id, the mean and sigma, and
    ``needs_dft`` (not confident at ``sigma_threshold``, default the target's documented threshold), with
    the WorkChain's pk and the model used; structures refused on reading are listed under ``skipped``.
    """
    from aiida.engine import run_get_node

    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.provisioning import MODEL_CODE_LABEL
    from aiida_hpcai.workchains.surrogate import SurrogateWorkChain, default_sigma_threshold

    if (structure_set is None) == (not files):
        raise OperationError('give either a StructureSet (pk or UUID) or structure files, not both or neither')
    try:
        model = ModelData.pretrained(target)
    except (KeyError, FileNotFoundError, ValueError) as exception:
        raise OperationError(f'no shipped model for target {target!r}: {exception}') from None
    if sigma_threshold is None and default_sigma_threshold(target) is None:
        raise OperationError(f'target {target!r} has no default sigma_threshold; give one')
    if structure_set is not None:
        structures = _load(structure_set, StructureSet, 'StructureSet')
    else:
        structures = StructureSet.from_files(list(files))
        if not structures.count:
            reasons = '; '.join(
                f'{row["id"]}: {row["reason"]}' + (f' ({row["detail"]})' if row.get('detail') else '')
                for row in structures.get_skipped()
            )
            raise OperationError(f'no valid structure in the files ({reasons})')
    inputs = {
        'structures': structures,
        'models': {'pretrained': model},
        'predict': {'code': _load_code(code or f'{MODEL_CODE_LABEL}@localhost')},
    }
    if sigma_threshold is not None:
        inputs['sigma_threshold'] = orm.Float(sigma_threshold)
    _, node = run_get_node(SurrogateWorkChain, **inputs)
    if not node.is_finished_ok:
        raise OperationError(
            f'hpcai.surrogate<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}'
        )
    summary = node.outputs.summary.get_dict()
    return {
        'process_pk': node.pk,
        'process_uuid': node.uuid,
        'target': summary['target'],
        'units': summary['units'],
        'sigma_threshold': summary['sigma_threshold'],
        'model': {'pk': model.pk, 'uuid': model.uuid, 'label': model.label},
        'structure_set': {'pk': structures.pk, 'uuid': structures.uuid},
        'rows': _prediction_rows(node.outputs.classified_predictions),
        'skipped': structures.get_skipped(),
    }


def _prediction_rows(predictions: orm.ArrayData) -> list[dict]:
    arrays = {name: predictions.get_array(name) for name in ('ids', 'mean', 'sigma', 'confident', 'status', 'reason')}
    return [
        {
            'id': str(identifier),
            'mean': _finite(mean),
            'sigma': _finite(sigma),
            'needs_dft': not bool(confident),
            'status': str(state),
            'reason': str(reason),
        }
        for identifier, mean, sigma, confident, state, reason in zip(*arrays.values())
    ]


# ---------------------------------------------------------------------------------------------- run DFT


def _daemon_running() -> bool:
    """Whether the profile can take a submission, and whether its daemon runs; OperationError when it cannot."""
    from aiida.manage import get_manager

    manager = get_manager()
    profile = manager.get_profile()
    if profile.process_control_backend is None:
        raise OperationError(
            f'profile {profile.name!r} has no broker, so nothing can be submitted to a daemon; '
            'configure one for it (verdi profile configure-rabbitmq) and start the daemon'
        )
    running = manager.get_daemon_client().is_daemon_running
    if profile.process_control_backend == 'core.zeromq' and not running:
        raise OperationError(f'the daemon of profile {profile.name!r} is not running (its broker lives in the daemon)')
    return running


def run_dft(
    goal: Goal | dict,
    structure_pks: Sequence[int | str] | None = None,
    structure_set: int | str | None = None,
    ids: Sequence[str] | None = None,
    engine: str = 'quantumespresso',
    protocol: str | None = None,
    code: str | None = None,
    max_concurrent: int | None = None,
) -> dict:
    """Submit DFT (relax, SCF, formation energy) to the daemon for structures, within the Goal's DFT budget.

    The structures: StructureData nodes (``structure_pks``: pks or UUIDs) or a stored StructureSet
    (``structure_set``), all of it or its entries ``ids``. One structure is one ``hpcai.dft``; several
    are one ``hpcai.dft_batch`` (``max_concurrent`` children at a time). Refused, with nothing stored or
    submitted, when the structures would take the Goal past its ``dft_budget`` (see the module docstring).
    Returns the submitted process, the Goal's id and its budget; follow it with :func:`status`.
    """
    from aiida.common.exceptions import InvalidOperation
    from aiida.engine import submit

    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.engines import get_engine
    from aiida_hpcai.provisioning import PW_CODE_LABEL

    goal = _as_goal(goal)
    if (structure_set is None) == (not structure_pks):
        raise OperationError('give either structure_pks or a structure_set, not both or neither')
    if structure_set is not None:
        structure_set = _load(structure_set, StructureSet, 'StructureSet')
        ids = list(ids) if ids else structure_set.ids
        _set_position(structure_set, ids)
        requested = len(ids)
    else:
        if ids:
            raise OperationError('ids select entries of a structure_set; with structure_pks give the pks alone')
        nodes = [_load(pk, orm.StructureData, 'StructureData') for pk in structure_pks]
        if len({node.pk for node in nodes}) != len(nodes):
            raise OperationError('a structure is given twice')
        requested = len(nodes)
    if requested == 0:
        raise OperationError('no structure to compute')

    existing = goal_node(goal, create=False)
    used = dft_runs_started(existing.uuid) if existing is not None else 0
    if used + requested > goal.dft_budget:
        raise BudgetExceeded(
            f'refused: {requested} DFT calculation(s) would take the goal past its dft_budget of {goal.dft_budget} '
            f'({used} already started for it, {max(goal.dft_budget - used, 0)} left)'
        )

    try:
        adapter = get_engine(engine)
    except ValueError as exception:
        raise OperationError(str(exception)) from None
    protocol = protocol or adapter.default_protocol()
    if protocol not in adapter.protocol_names():
        raise OperationError(
            f'{engine} has no protocol {protocol!r}; choose from {", ".join(adapter.protocol_names())}'
        )
    if code is None and engine != 'quantumespresso':
        raise OperationError(f'give the code of {engine}')
    dft_inputs = {
        'engine': orm.Str(engine),
        'code': _load_code(code or f'{PW_CODE_LABEL}@localhost'),
        'protocol': orm.Str(protocol),
        'options': orm.Dict({'resources': {'num_machines': 1}}),
    }
    if max_concurrent is not None and max_concurrent < 1:
        raise OperationError('max_concurrent must be at least 1')
    daemon_running = _daemon_running()

    if structure_set is None:
        process_class, inputs = _dft_of_nodes(nodes, dft_inputs)
    else:
        process_class, inputs = _dft_of_set(structure_set, ids, dft_inputs)
    if 'dft' in inputs and max_concurrent is not None:
        inputs['max_concurrent'] = orm.Int(max_concurrent)
    stored_goal = goal_node(goal)
    try:
        node = submit(process_class, **inputs)
    except InvalidOperation as exception:  # e.g. a ZeroMQ broker whose daemon is not running
        raise OperationError(f'could not submit {process_class.__name__}: {exception}') from None
    node.base.extras.set_many({GOAL_EXTRA: stored_goal.uuid, DFT_RUNS_EXTRA: requested})
    return {
        'process_pk': node.pk,
        'process_uuid': node.uuid,
        'process_label': node.process_label,
        'dft_runs': requested,
        'goal_id': stored_goal.uuid,
        'budget': {
            'dft_budget': goal.dft_budget,
            'started': used + requested,
            'left': goal.dft_budget - used - requested,
        },
        'daemon_running': daemon_running,
        'hint': None if daemon_running else 'the daemon is not running: start it (verdi daemon start) to run the DFT',
    }


def _dft_of_set(structure_set, ids: list[str], dft_inputs: dict):
    """hpcai.dft for one entry of a set, hpcai.dft_batch for several; entries become nodes through
    ``hpcai.structures.select``, so the graph leads from every DFT result back to the set."""
    from aiida_hpcai.workchains.dft import DftWorkChain
    from aiida_hpcai.workchains.dft_batch import DftBatchWorkChain
    from aiida_hpcai.workchains.structures import link_label, select_structures

    if ids == structure_set.ids and len(ids) > 1:
        return DftBatchWorkChain, {'structures': structure_set, 'dft': dft_inputs}
    selected = select_structures(structure_set, orm.List(ids))
    if len(ids) == 1:
        return DftWorkChain, {**dft_inputs, 'structure': selected['structures'][link_label(ids[0])]}
    return DftBatchWorkChain, {'structures': selected['subset'], 'dft': dft_inputs}


def _dft_of_nodes(nodes: list, dft_inputs: dict):
    """hpcai.dft for one StructureData, hpcai.dft_batch over the set ``structures_from_nodes`` gathers them into."""
    from aiida_hpcai.workchains.dft import DftWorkChain
    from aiida_hpcai.workchains.dft_batch import DftBatchWorkChain
    from aiida_hpcai.workchains.structures import link_label, structures_from_nodes

    if len(nodes) == 1:
        return DftWorkChain, {**dft_inputs, 'structure': nodes[0]}
    keyed = {}
    for node in nodes:
        key = link_label(node.label) if node.label else f'pk_{node.pk}'
        keyed[key if key not in keyed else f'pk_{node.pk}'] = node
    return DftBatchWorkChain, {'structures': structures_from_nodes(**keyed), 'dft': dft_inputs}


# ---------------------------------------------------------------------------------------------- generate


def generate(
    model: int | str | None = None,
    composition: str | None = None,
    count: int = 10,
    seed: int = 0,
    steps: int | None = None,
    code: str | None = None,
    elements: list[str] | None = None,
    required_elements: list[str] | None = None,
) -> dict:
    """Sample crystal structures from a generative ``ModelData`` (EquiCSP) with ``hpcai.generate``, here, to the end.

    ``composition`` (the formula of one cell, ``Fe2O3`` is five atoms): ``count`` samples of it (CSP mode);
    without one, ``count`` samples whose composition the model draws too (ab initio), restricted to
    ``elements`` (the only elements a sample holds; each of them in every sample unless ``required_elements``
    says otherwise) and ``required_elements`` (the elements every sample holds). Returns the StructureSet of the valid samples (ids ``<formula>#<k>``) with each id and
    reduced formula, and the invalid samples with their reasons. Without ``model``: the generator shipped with
    the package (``ModelData.pretrained(DEFAULT_GENERATOR)``: MP structures of up to 20 atoms).
    """
    from aiida.engine import run_get_node
    from plumpy.ports import PortValidationError

    from aiida_hpcai.calculations.generate import GenerateCalculation
    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.provisioning import MODEL_CODE_LABEL

    if count < 1:
        raise OperationError(f'count must be at least 1, not {count}')
    parameters = {'mode': 'abinitio', 'n_samples': count} if composition is None else {'mode': 'csp'}
    if composition is not None:
        parameters['compositions'] = {composition: count}
    parameters['seed'] = seed
    if steps is not None:
        parameters['steps'] = steps
    for key, value in (('elements', elements), ('required_elements', required_elements)):
        if value is not None:
            parameters[key] = list(value)
    inputs = {
        'code': _load_code(code or f'{MODEL_CODE_LABEL}@localhost'),
        'model': _shipped_generator() if model is None else _load(model, ModelData, 'ModelData'),
        'parameters': orm.Dict(parameters),
    }
    try:
        _, node = run_get_node(GenerateCalculation, **inputs)
    except ValueError as exception:  # plumpy: ValueError(PortValidationError) for refused inputs
        if exception.args and isinstance(exception.args[0], PortValidationError):
            raise OperationError(f'hpcai.generate refused its inputs: {exception.args[0]}') from None
        raise
    if 'structures' not in node.outputs:
        raise OperationError(
            f'hpcai.generate<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}'
        )
    structures, summary = node.outputs.structures, node.outputs.summary.get_dict()
    return {
        'process_pk': node.pk,
        'process_uuid': node.uuid,
        # a job where some samples went NaN still returns the others, with its exit status and message
        'exit_status': node.exit_status,
        'exit_message': node.exit_message,
        'structure_set': {'pk': structures.pk, 'uuid': structures.uuid},
        'mode': summary.get('mode'),
        'seed': summary.get('seed'),
        'steps': summary.get('steps'),
        'valid': [
            {'id': identifier, 'formula': _reduced(formula)[0]}
            for identifier, formula in zip(structures.ids, structures.arrays.formulae())
        ],
        'invalid': structures.get_skipped(),
    }


def _shipped_generator():
    from aiida_hpcai.data.model import ModelData
    from aiida_hpcai.models.checkpoint import DEFAULT_GENERATOR

    try:
        return ModelData.pretrained(DEFAULT_GENERATOR)
    except FileNotFoundError as exception:
        raise OperationError(f'no generator is shipped with this installation: {exception}') from None


# ---------------------------------------------------------------------------------------------- status, results


def _process(pk: int | str) -> orm.ProcessNode:
    return _load(pk, orm.ProcessNode, 'process')


def status(pk: int | str) -> dict:
    """State of the process ``pk`` (pk or UUID) and of the processes it called, with its Goal tag if any."""
    node = _process(pk)
    state = node.process_state.value if node.process_state is not None else None
    return {
        'pk': node.pk,
        'uuid': node.uuid,
        'process_label': node.process_label,
        'process_state': state,
        'exit_status': node.exit_status,
        'exit_message': node.exit_message,
        'is_finished_ok': node.is_finished_ok,
        'ctime': node.ctime.isoformat(),
        'mtime': node.mtime.isoformat(),
        'goal_id': node.base.extras.get(GOAL_EXTRA, None),
        'dft_runs': node.base.extras.get(DFT_RUNS_EXTRA, None),
        'called': [
            {
                'pk': child.pk,
                'process_label': child.process_label,
                'process_state': child.process_state.value if child.process_state is not None else None,
                'exit_status': child.exit_status,
            }
            for child in sorted(node.called, key=lambda child: child.pk)
        ],
    }


def _output_json(node: orm.Node):
    """An output node as JSON: the value of a number/text/dict, a summary of anything larger, with its pk."""
    from aiida_hpcai.data.structure_set import StructureSet

    described = {'type': type(node).__name__, 'pk': node.pk, 'uuid': node.uuid}
    if isinstance(node, (orm.Float, orm.Int, orm.Bool, orm.Str)):
        value = node.value
        return {**described, 'value': _finite(value) if isinstance(node, orm.Float) else value}
    if isinstance(node, (orm.Dict, orm.List)):
        return {**described, 'value': node.get_dict() if isinstance(node, orm.Dict) else node.get_list()}
    if isinstance(node, StructureSet):
        return {**described, 'count': node.count, 'ids': node.ids, 'label_names': node.label_names}
    if isinstance(node, orm.StructureData):
        return {**described, 'formula': node.get_formula(mode='hill'), 'label': node.label}
    if isinstance(node, orm.ArrayData) and 'ids' in node.get_arraynames() and 'confident' in node.get_arraynames():
        return {**described, 'rows': _prediction_rows(node)}
    return described


def results(pk: int | str) -> dict:
    """The outputs of the process ``pk`` (pk or UUID) as JSON: values of numbers and dicts, the rows of
    classified predictions, ids of StructureSets, pks of everything. Refused while it is still running."""
    node = _process(pk)
    if not node.is_terminated:
        state = node.process_state.value if node.process_state is not None else 'unknown'
        raise OperationError(f'{node.process_label}<{node.pk}> is {state}; ask again when it has finished')
    outputs = {}
    for link in node.base.links.get_outgoing(link_type=_output_links()).all():
        outputs[link.link_label] = _output_json(link.node)
    return {**status(node.pk), 'outputs': dict(sorted(outputs.items()))}


def _output_links():
    from aiida.common.links import LinkType

    return (LinkType.CREATE, LinkType.RETURN)


# The planner's refusal is a ValueError the MCP server and the CLI report like an OperationError.
REFUSALS = (OperationError, PlanError)
