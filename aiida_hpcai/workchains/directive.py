"""``hpcai.directive``: a generative model proposes crystals, screening keeps the plausible ones, DFT computes the best.

Steps:

1. ``batches`` rounds of ``hpcai.generate`` (its inputs exposed under ``generate``), one after the other;
   in ab initio mode each round runs once per entry of ``n_strategies`` (default: the parameters' own),
   every job with its own seed (``seed`` + job number), so that batches differ;
2. each batch screened by ``hpcai.screen`` as soon as it is generated (duplicates of the profile's
   structures and of the earlier batches' valid ones rejected too);
3. the valid structures of every batch ranked by ``hpcai.surrogate`` (inputs exposed under ``surrogate``;
   optional: without it the first valid structures are taken) on its predicted mean, lowest first unless
   ``rank_by`` is ``highest``;
4. ``hpcai.dft_batch`` (inputs exposed under ``dft_batch``) on the ``top_k`` best ranked (0: no DFT);
5. one calcfunction, ``directive_report``, makes the statistics and the figures from the nodes above.

Every batch's ids are prefixed with its job number (``b0-Fe2O3#3``), so that ids stay unique across batches.
"""

from __future__ import annotations

import io
import math
import tempfile

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_

from ..calculations.generate import GenerateCalculation
from ..data.structure_set import StructureSet
from ..engines import get_engine
from ..engines import references as refs
from ..models import contract
from ..models.structure_io import concatenate
from ..screening import filters, plots
from ..screening.calcfunctions import screen_structure_set
from .dft_batch import LABELS, DftBatchWorkChain
from .launch_once import LaunchesOnce
from .surrogate import PREDICTED_MEAN, PREDICTED_SIGMA, SurrogateWorkChain

__all__ = ('DirectiveWorkChain', 'dft_cannot_run', 'directive_report', 'merge_batches', 'rank_structures')

RANK_ORDERS = ('lowest', 'highest')


def _prefix(key: str) -> str:
    return f'{key.removeprefix("batch_")}-'


@calcfunction
def merge_batches(**batches: StructureSet) -> StructureSet:
    """The batches (keys ``batch_b<job>``) as one StructureSet, ids prefixed ``b<job>-``; skipped records kept."""
    keys = sorted(batches, key=lambda key: int(key.removeprefix('batch_b')))
    skipped = [{**row, 'id': f'{_prefix(key)}{row["id"]}'} for key in keys for row in batches[key].get_skipped()]
    return StructureSet(concatenate([(_prefix(key), batches[key].arrays) for key in keys]), skipped=skipped)


@calcfunction
def rank_structures(
    structures: StructureSet,
    top_k: orm.Int,
    rank_by: orm.Str,
    predictions: orm.ArrayData | None = None,
    max_atoms: orm.Int | None = None,
    exclude: orm.List | None = None,
) -> StructureSet:
    """The ``top_k`` structures of ``structures`` with the lowest (or highest) predicted mean, best first.

    ``predictions``: ``hpcai.surrogate``'s ``classified_predictions`` (aligned with ``structures``); structures
    it could not predict come last. Without predictions, the first ``top_k`` in order. Passed over: cells of
    more than ``max_atoms`` atoms and the ids in ``exclude``. The selection carries the predicted mean and sigma
    as labels.
    """
    count = len(structures)
    if predictions is None:
        order = list(range(count))
        mean = sigma = np.full(count, math.nan)
    else:
        mean, sigma = predictions.get_array('mean'), predictions.get_array('sigma')
        sign = 1.0 if rank_by.value == 'lowest' else -1.0
        order = sorted(
            range(count), key=lambda i: (not np.isfinite(mean[i]), sign * mean[i] if np.isfinite(mean[i]) else 0)
        )
    if max_atoms is not None:
        natoms = structures.arrays.natoms
        order = [index for index in order if natoms[index] <= max_atoms.value]
    if exclude is not None:
        excluded, ids = set(exclude.get_list()), structures.ids
        order = [index for index in order if ids[index] not in excluded]
    chosen = order[: top_k.value]
    arrays = structures.arrays.subset(chosen)
    arrays.labels[PREDICTED_MEAN] = np.asarray(mean, float)[chosen]
    arrays.labels[PREDICTED_SIGMA] = np.asarray(sigma, float)[chosen]
    return StructureSet(arrays)


def dft_cannot_run(structures: StructureSet, dft) -> dict[str, str]:
    """Ids of ``structures`` that ``hpcai.dft`` with inputs ``dft`` would stop before any calculation, with why.

    The same checks as its exit codes 301 (no pseudopotential) and 302 (no elemental reference, when the
    formation energy is on). Sending such a structure would spend a slot of the top K on a certain failure.
    """
    engine = get_engine(dft['engine'].value)
    overrides = dft['overrides'].get_dict() if 'overrides' in dft else None
    protocol = engine.load_protocol(dft['protocol'].value if 'protocol' in dft else None, overrides)
    formation_energy = 'compute_formation_energy' not in dft or dft['compute_formation_energy'].value
    blocked = {}
    for index, identifier in enumerate(structures.ids):
        structure = structures.get_structuredata(index)
        missing = engine.check_structure(structure, dft['code'], protocol)
        if missing:
            blocked[identifier] = f'no pseudopotential for {", ".join(missing)}'
        elif formation_energy and (absent := refs.missing_references(structure.get_symbols_set())):
            blocked[identifier] = f'no elemental reference for {", ".join(absent)}'
    return blocked


def _png(draw, *args, **kwargs) -> orm.SinglefileData:
    with tempfile.NamedTemporaryFile(suffix='.png') as handle:
        draw(*args, handle.name, **kwargs)
        handle.seek(0)
        return orm.SinglefileData(io.BytesIO(handle.read()), filename=f'{draw.__name__}.png')


@calcfunction
def directive_report(records: orm.Dict, **nodes) -> dict:
    """The ``statistics`` Dict and the figures (outputs ``plot_<name>``) of a directive run, from the nodes it made.

    ``records``: per generate job the WorkChain's own records (job, batch, n_strategy, seed, status, times);
    ``nodes``: ``summary_<job>`` (hpcai.generate's summary), ``counts_<job>`` (hpcai.screen's counts),
    ``valid`` (the valid set), ``selected`` (the ranked top K) and ``relaxed`` (dft_batch's relaxed set), each
    where it exists; ``target`` and ``units`` (Str) of the surrogate when it ran.
    """
    content = records.get_dict()
    batches = []
    for record in content['jobs']:
        job = record['job']
        summary = nodes[f'summary_{job}'].get_dict() if f'summary_{job}' in nodes else {}
        counts = nodes[f'counts_{job}'].get_dict() if f'counts_{job}' in nodes else {}
        batches.append(
            {
                **record,
                'generated': summary.get('n_requested', 0),
                'crystals': summary.get('n_valid', 0),
                'invalid_samples': {k: v for k, v in summary.get('invalid_reasons', {}).items() if v},
                'valid': counts.get('valid', 0),
                'rejected': {reason: counts[reason] for reason in filters.REASONS if counts.get(reason)},
                'generate_seconds': summary.get('seconds'),
            }
        )
    totals = {key: sum(batch[key] for batch in batches) for key in ('generated', 'crystals', 'valid')}
    for key in ('invalid_samples', 'rejected'):
        merged: dict[str, int] = {}
        for batch in batches:
            for reason, count in batch[key].items():
                merged[reason] = merged.get(reason, 0) + count
        totals[key] = merged
    totals['valid_rate'] = totals['valid'] / totals['generated'] if totals['generated'] else 0.0
    statistics = {'batches': batches, 'totals': totals}

    pictures = {'valid_rate': _png(plots.valid_rate_plot, batches)}
    if 'valid' in nodes:
        composition = plots.crystal_statistics(nodes['valid'], symprec=content.get('symprec', 0.1))
        statistics['valid_structures'] = composition
        pictures['elements'] = _png(plots.element_heatmap, composition['elements'])
        pictures['atoms_per_cell'] = _png(plots.atoms_per_cell_plot, composition['atoms_per_cell'])
        pictures['crystal_systems'] = _png(plots.crystal_systems_plot, composition['crystal_systems'])
    target = nodes['target'].value if 'target' in nodes else None
    if 'relaxed' in nodes and 'selected' in nodes and target in LABELS:
        selected, relaxed = nodes['selected'], nodes['relaxed']
        predicted = selected.get_label(PREDICTED_MEAN)
        computed = dict(zip(relaxed.ids, relaxed.get_label(LABELS[target])))
        units = nodes['units'].value if 'units' in nodes else ''
        pictures['surrogate_vs_dft'] = _png(
            plots.property_distributions, predicted, list(computed.values()), label=target, units=units
        )
        statistics['surrogate_vs_dft'] = [
            {'id': identifier, 'surrogate': float(value), 'dft': float(computed[identifier])}
            for identifier, value in zip(selected.ids, predicted)
            if identifier in computed
        ]
    return {'statistics': orm.Dict(statistics), **{f'plot_{name}': node for name, node in pictures.items()}}


def _positive(value, _):
    if value.value < 1:
        return f'must be at least 1, not {value.value}'


def _not_negative(value, _):
    if value.value < 0:
        return f'must be 0 (no DFT) or more, not {value.value}'


def _screening(value, _):
    try:
        filters.ScreeningParameters.from_dict(value.get_dict())
    except (TypeError, ValueError) as exception:
        return f'invalid screening parameters: {exception}'


def _rank_by(value, _):
    if value.value not in RANK_ORDERS:
        return f'must be one of {list(RANK_ORDERS)}, not {value.value!r}'


def validate_inputs(inputs, ctx):
    """Strategies only in ab initio mode; the DFT inputs when ``top_k`` asks for DFT."""
    ports = set(ctx)
    strategies = inputs.get('n_strategies')
    parameters = (inputs.get('generate') or {}).get('parameters')
    if strategies is not None and parameters is not None:
        if parameters.get('mode') != 'abinitio':
            return '`n_strategies` applies only to mode abinitio'
        unknown = sorted(set(strategies.get_list()) - set(contract.N_STRATEGIES))
        if unknown or not strategies.get_list():
            return (
                f'`n_strategies` must be a non-empty list of {list(contract.N_STRATEGIES)}, not {strategies.get_list()}'
            )
    top_k = inputs.get('top_k')
    if (
        'dft_batch' in ports
        and top_k is not None
        and top_k.value > 0
        and 'code' not in ((inputs.get('dft_batch') or {}).get('dft') or {})
    ):
        return f'`top_k` is {top_k.value}: give the DFT inputs `dft_batch.dft` (code, engine, protocol), or top_k 0'
    return None


class DirectiveWorkChain(LaunchesOnce, WorkChain):
    """Generate crystals in batches, screen them, rank the valid ones with a surrogate and run DFT on the best."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(
            GenerateCalculation,
            namespace='generate',
            namespace_options={
                'help': 'Inputs of every `hpcai.generate` job (code, model, parameters of one batch, device, options).'
            },
        )
        spec.input('batches', valid_type=orm.Int, default=lambda: orm.Int(1), validator=_positive, help='Rounds.')
        spec.input(
            'n_strategies',
            valid_type=orm.List,
            required=False,
            help='Ab initio mode: each round runs one job per N strategy listed (e.g. ["dataset", "uniform"]), to '
            "compare their valid rates; default the parameters' `n_strategy`.",
        )
        spec.input(
            'screening',
            valid_type=orm.Dict,
            required=False,
            validator=_screening,
            help='Parameters of `hpcai.screen` (ScreeningParameters: max_elements, symprec, ...); default its own.',
        )
        spec.expose_inputs(
            SurrogateWorkChain,
            namespace='surrogate',
            exclude=('structures', 'structure_nodes'),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Inputs of `hpcai.surrogate` (models, predict.code, ...) that ranks the valid structures; '
                'without them the first valid structures go to DFT.',
            },
        )
        spec.input(
            'rank_by',
            valid_type=orm.Str,
            default=lambda: orm.Str('lowest'),
            validator=_rank_by,
            help='Best first: `lowest` (e.g. formation energy) or `highest` predicted mean.',
        )
        spec.input(
            'top_k',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            validator=_not_negative,
            help='Run DFT on this many of the best ranked valid structures; 0: no DFT.',
        )
        spec.input(
            'dft_max_atoms',
            valid_type=orm.Int,
            required=False,
            validator=_positive,
            help='Only cells of at most this many atoms go to DFT (the ranking passes over larger ones).',
        )
        spec.expose_inputs(
            DftBatchWorkChain,
            namespace='dft_batch',
            exclude=('structures',),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Inputs of `hpcai.dft_batch` (dft.code, dft.engine, dft.protocol, max_concurrent); '
                'needed when top_k > 0.',
            },
        )
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.setup,
            while_(cls.has_jobs)(cls.run_generate, cls.screen_batch),
            cls.merge,
            if_(cls.should_rank)(cls.run_surrogate, cls.inspect_surrogate),
            if_(cls.should_run_dft)(cls.run_dft, cls.inspect_dft),
            cls.results,
        )

        spec.output(
            'generated_structures',
            valid_type=StructureSet,
            help='Every crystal generated (ids b<job>-<id>); the samples that were no crystal are its skipped records.',
        )
        spec.output('valid_structures', valid_type=StructureSet, required=False, help='Those that passed screening.')
        spec.output(
            'selected_structures',
            valid_type=StructureSet,
            required=False,
            help='The top K sent to DFT, best first, with the labels predicted_mean and predicted_sigma.',
        )
        spec.expose_outputs(
            SurrogateWorkChain,
            namespace='surrogate',
            namespace_options={'required': False, 'help': 'Outputs of the ranking hpcai.surrogate, when it ran.'},
        )
        spec.expose_outputs(
            DftBatchWorkChain,
            namespace='dft',
            namespace_options={'required': False, 'help': 'Outputs of hpcai.dft_batch (results, relaxed_structures).'},
        )
        spec.output(
            'statistics',
            valid_type=orm.Dict,
            help='batches (per job: batch, n_strategy, seed, generated, crystals, invalid_samples, valid, rejected per '
            'reason, wall_seconds, elapsed_seconds), totals, valid_structures (elements, atoms_per_cell, '
            'crystal_systems) and surrogate_vs_dft (id, surrogate, dft) when DFT ran.',
        )
        spec.output_namespace(
            'plots',
            valid_type=orm.SinglefileData,
            dynamic=True,
            help='PNG figures: valid_rate, elements, atoms_per_cell, crystal_systems, surrogate_vs_dft (when they apply).',
        )

        spec.exit_code(
            420, 'ERROR_NO_STRUCTURE_GENERATED', message='no hpcai.generate job produced a crystal: {message}'
        )
        spec.exit_code(
            421,
            'ERROR_NONE_VALID',
            message='none of the {count} generated crystals passed screening; rejections: {reasons}',
        )
        spec.exit_code(422, 'ERROR_SURROGATE_FAILED', message='the ranking hpcai.surrogate<{pk}> failed: {message}')
        spec.exit_code(
            423,
            'ERROR_DFT_FAILED',
            message='hpcai.dft_batch<{pk}> failed: {message}',
        )

    # -- steps ------------------------------------------------------------------------------------------
    def setup(self):
        parameters = self.inputs.generate.parameters.get_dict()
        strategies = self.inputs.n_strategies.get_list() if 'n_strategies' in self.inputs else None
        if strategies is None:
            strategies = [parameters.get('n_strategy', 'dataset') if parameters['mode'] == 'abinitio' else None]
        seed = parameters.get('seed', 0)
        self.ctx.jobs = [
            {'job': len(strategies) * batch + index, 'batch': batch, 'n_strategy': strategy}
            for batch in range(self.inputs.batches.value)
            for index, strategy in enumerate(strategies)
        ]
        for job in self.ctx.jobs:
            job['seed'] = seed + job['job']
        self.ctx.next_job = 0
        self.ctx.records = []
        self.ctx.generated = {}  # batch_b<job> -> StructureSet
        self.ctx.valid = {}
        self.ctx.report_nodes = {}
        self.ctx.failures = []

    def has_jobs(self):
        return self.ctx.next_job < len(self.ctx.jobs)

    def run_generate(self):
        job = self.ctx.jobs[self.ctx.next_job]
        inputs = self.exposed_inputs(GenerateCalculation, namespace='generate')
        parameters = {**inputs['parameters'].get_dict(), 'seed': job['seed']}
        if job['n_strategy'] is not None:
            parameters['n_strategy'] = job['n_strategy']
            if job['n_strategy'] != 'hybrid':
                parameters.pop('switch', None)
        inputs['parameters'] = orm.Dict(parameters)
        inputs.setdefault('metadata', {})['call_link_label'] = f'generate_{job["job"]}'
        node = self.submit(GenerateCalculation, **inputs)
        strategy = f', N strategy {job["n_strategy"]}' if job['n_strategy'] else ''
        self.report(f'batch {job["batch"]}{strategy}: launched GenerateCalculation<{node.pk}> (seed {job["seed"]})')
        return ToContext(generate=node)

    def screen_batch(self):
        job = self.ctx.jobs[self.ctx.next_job]
        self.ctx.next_job += 1
        node = self.ctx.generate
        key = f'b{job["job"]}'
        record = {**job, 'status': 'finished_ok' if node.is_finished_ok else f'exit {node.exit_status}'}
        if 'structures' not in node.outputs:
            self.ctx.failures.append(f'GenerateCalculation<{node.pk}>: [{node.exit_status}] {node.exit_message}')
            self.report(f'GenerateCalculation<{node.pk}> made no structures: [{node.exit_status}] {node.exit_message}')
            self.ctx.records.append({**record, 'wall_seconds': 0.0, 'elapsed_seconds': self._elapsed(node)})
            return
        structures = node.outputs.structures
        self.ctx.report_nodes[f'summary_{job["job"]}'] = node.outputs.summary
        self.ctx.generated[f'batch_{key}'] = structures
        end = node
        if len(structures):
            screening = self.inputs.screening if 'screening' in self.inputs else None
            outputs, end = screen_structure_set(
                structures,
                screening,
                known_sets=list(self.ctx.valid.values()),
                metadata={'call_link_label': f'screen_{job["job"]}'},
            )
            if not end.is_finished_ok:
                self.ctx.failures.append(f'screening of batch {key}: [{end.exit_status}] {end.exit_message}')
            else:
                self.ctx.report_nodes[f'counts_{job["job"]}'] = outputs['counts']
                if len(outputs['valid_structures']):
                    self.ctx.valid[f'batch_{key}'] = outputs['valid_structures']
        counts = self.ctx.report_nodes.get(f'counts_{job["job"]}')
        valid = counts['valid'] if counts is not None else 0
        wall = (end.mtime - node.ctime).total_seconds()
        self.ctx.records.append({**record, 'wall_seconds': wall, 'elapsed_seconds': self._elapsed(end)})
        self.report(f'batch {key}: {len(structures)} crystals generated, {valid} valid after screening ({wall:.1f} s)')

    def _elapsed(self, node) -> float:
        return (node.mtime - self.node.ctime).total_seconds()

    def merge(self):
        if not self.ctx.generated or not sum(len(node) for node in self.ctx.generated.values()):
            return self._finish(
                self.exit_codes.ERROR_NO_STRUCTURE_GENERATED.format(
                    message='; '.join(self.ctx.failures) or "every sample was invalid (see the jobs' structures)"
                )
            )
        self.ctx.generated_set = merge_batches(**self.ctx.generated)
        self.out('generated_structures', self.ctx.generated_set)
        if not self.ctx.valid:
            rejected: dict[str, int] = {}
            for key, node in self.ctx.report_nodes.items():
                if key.startswith('counts_'):
                    for reason in filters.REASONS:
                        rejected[reason] = rejected.get(reason, 0) + node.get(reason, 0)
            reasons = ', '.join(f'{reason} {count}' for reason, count in rejected.items() if count) or 'none recorded'
            return self._finish(
                self.exit_codes.ERROR_NONE_VALID.format(count=len(self.ctx.generated_set), reasons=reasons)
            )
        self.ctx.valid_set = merge_batches(**self.ctx.valid)
        self.out('valid_structures', self.ctx.valid_set)
        self.ctx.report_nodes['valid'] = self.ctx.valid_set
        self.report(f'{len(self.ctx.valid_set)} of {len(self.ctx.generated_set)} generated crystals are valid')
        return None

    def should_rank(self):
        return 'surrogate' in self.inputs and bool(self.inputs.surrogate)

    def run_surrogate(self):
        inputs = self.exposed_inputs(SurrogateWorkChain, namespace='surrogate')
        inputs['structures'] = self.ctx.valid_set
        inputs.setdefault('metadata', {})['call_link_label'] = 'surrogate'
        node = self.submit(SurrogateWorkChain, **inputs)
        self.report(f'launched SurrogateWorkChain<{node.pk}> to rank {len(self.ctx.valid_set)} valid structures')
        return ToContext(surrogate=node)

    def inspect_surrogate(self):
        node = self.ctx.surrogate
        if not node.is_finished_ok:
            return self._finish(self.exit_codes.ERROR_SURROGATE_FAILED.format(pk=node.pk, message=node.exit_message))
        self.out_many(self.exposed_outputs(node, SurrogateWorkChain, namespace='surrogate'))
        predictions = node.outputs.classified_predictions
        for key in ('target', 'units'):
            value = predictions.base.attributes.get(key, None)
            if value:
                self.ctx.report_nodes[key] = orm.Str(value)
        return None

    def should_run_dft(self):
        return self.inputs.top_k.value > 0

    def run_dft(self):
        ranking = {'predictions': self.ctx.surrogate.outputs.classified_predictions} if self.should_rank() else {}
        if 'dft_max_atoms' in self.inputs:
            ranking['max_atoms'] = self.inputs.dft_max_atoms
        blocked = dft_cannot_run(self.ctx.valid_set, self.inputs.dft_batch.dft)
        if blocked:
            ranking['exclude'] = orm.List(sorted(blocked))
            examples = '; '.join(f'{key}: {reason}' for key, reason in list(blocked.items())[:3])
            more = '; ...' if len(blocked) > 3 else ''
            self.report(f'passed over {len(blocked)} valid structure(s) the DFT engine cannot run ({examples}{more})')
        selected = rank_structures(self.ctx.valid_set, self.inputs.top_k, self.inputs.rank_by, **ranking)
        self.out('selected_structures', selected)
        self.ctx.report_nodes['selected'] = selected
        if not len(selected):
            limit = f'of at most {self.inputs.dft_max_atoms.value} atoms ' if 'dft_max_atoms' in self.inputs else ''
            self.report(f'no valid structure {limit}that the DFT engine can run: no DFT')
            return None
        inputs = self.exposed_inputs(DftBatchWorkChain, namespace='dft_batch')
        inputs['structures'] = selected
        inputs.setdefault('metadata', {})['call_link_label'] = 'dft_batch'
        node = self.submit(DftBatchWorkChain, **inputs)
        self.report(f'launched DftBatchWorkChain<{node.pk}> on the {len(selected)} best ranked structures')
        return ToContext(dft_batch=node)

    def inspect_dft(self):
        if 'dft_batch' not in self.ctx:
            return None
        node = self.ctx.dft_batch
        self.out_many(self.exposed_outputs(node, DftBatchWorkChain, namespace='dft'))
        if not node.is_finished_ok:
            return self._finish(self.exit_codes.ERROR_DFT_FAILED.format(pk=node.pk, message=node.exit_message))
        if 'relaxed_structures' in node.outputs:
            self.ctx.report_nodes['relaxed'] = node.outputs.relaxed_structures
        failed = node.outputs.results.get('failed', [])
        self.report(f'DFT: {len(failed)} of {len(self.ctx.report_nodes["selected"])} structures failed')
        return None

    def results(self):
        self._finish(None)

    def _finish(self, exit_code):
        """Statistics and plots of what ran so far, then ``exit_code`` (None: done)."""
        symprec = filters.ScreeningParameters.from_dict(
            self.inputs.screening.get_dict() if 'screening' in self.inputs else None
        ).symprec
        report = directive_report(
            orm.Dict({'jobs': self.ctx.records, 'symprec': symprec}),
            metadata={'call_link_label': 'report'},
            **self.ctx.report_nodes,
        )
        self.out('statistics', report['statistics'])
        plots_made = {key.removeprefix('plot_'): node for key, node in report.items() if key.startswith('plot_')}
        self.out('plots', plots_made)
        totals = report['statistics']['totals']
        self.report(
            f'{totals["valid"]} valid of {totals["generated"]} generated; plots: {", ".join(sorted(plots_made))}'
        )
        return exit_code
