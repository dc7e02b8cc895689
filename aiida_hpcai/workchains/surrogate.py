"""``hpcai.surrogate``: an ML model replaces DFT where it is confident, and says which structures still need DFT.

One ``hpcai.predict`` CalcJob predicts every structure (mean and sigma of an ensemble), run by
``hpcai.predict_base``, which runs it again with a smaller batch when it runs out of memory; a
calcfunction then splits the set at ``sigma_threshold``. The structures that were not predicted
confidently (or not at all) come out as one StructureSet, ``needs_dft``, ready for a DFT WorkChain,
with their ids and their predicted mean and sigma as labels (``predicted_mean``, ``predicted_sigma``).
"""

from __future__ import annotations

import pathlib

import numpy as np
import yaml
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_hpcai.calculations.predict import PredictCalculation
from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet

from .launch_once import LaunchesOnce
from .predict_base import PredictBaseWorkChain
from .structures import invalid_link_labels, link_label, structures_from_nodes

__all__ = ('SurrogateWorkChain', 'classify_predictions', 'default_sigma_threshold')

DEFAULTS_FILE = pathlib.Path(__file__).with_suffix('.yaml')


def default_sigma_threshold(target: str | None) -> float | None:
    """The documented default threshold for ``target`` (``surrogate.yaml``), or None if there is none."""
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())['sigma_threshold']
    return defaults.get(target)


#: Labels of ``needs_dft``: what the surrogate predicted for each structure that still needs DFT.
PREDICTED_MEAN, PREDICTED_SIGMA = 'predicted_mean', 'predicted_sigma'


@calcfunction
def classify_predictions(structures: StructureSet, raw_predictions: orm.ArrayData, sigma_threshold: orm.Float) -> dict:
    """Add the ``confident`` mask and the ``ids`` to the predictions and collect the structures that need DFT.

    Confident means: predicted (status ``ok``), a finite mean, and ``sigma <= sigma_threshold``.
    ``classified_predictions`` holds the ids as an array (aligned with the others) and as the attribute
    ``ids``, so that ``QueryBuilder`` finds the predictions of a structure by id (``aiida_hpcai.results``);
    ``needs_dft`` carries each structure's predicted mean and sigma as labels (NaN where not predicted).
    """
    mean = raw_predictions.get_array('mean')
    sigma = raw_predictions.get_array('sigma')
    status = raw_predictions.get_array('status')
    confident = (status == 'ok') & np.isfinite(mean) & np.isfinite(sigma) & (sigma <= sigma_threshold.value)

    predictions = orm.ArrayData()
    for name in raw_predictions.get_arraynames():
        predictions.set_array(name, raw_predictions.get_array(name))
    predictions.set_array('confident', confident)
    ids = structures.ids
    predictions.set_array('ids', np.asarray(ids, dtype=str))
    needs_dft_index = np.flatnonzero(~confident)
    counts = {
        'n_structures': len(confident),
        'n_ok': int((status == 'ok').sum()),
        'n_failed': int((status != 'ok').sum()),
        'n_confident': int(confident.sum()),
        'n_needs_dft': len(needs_dft_index),
    }
    predictions.base.attributes.set_many(
        {
            **counts,
            'sigma_threshold': sigma_threshold.value,
            'target': raw_predictions.base.attributes.get('target', None),
            'units': raw_predictions.base.attributes.get('units', None),
            'ids': ids,
        }
    )
    summary = orm.Dict(
        {
            **counts,
            'sigma_threshold': sigma_threshold.value,
            'target': predictions.base.attributes.get('target'),
            'units': predictions.base.attributes.get('units'),
            'needs_dft_ids': [ids[i] for i in needs_dft_index],
        }
    )
    arrays = structures.arrays.subset(needs_dft_index)
    arrays.labels[PREDICTED_MEAN] = mean[needs_dft_index]
    arrays.labels[PREDICTED_SIGMA] = sigma[needs_dft_index]
    return {'classified_predictions': predictions, 'needs_dft': StructureSet(arrays), 'summary': summary}


def validate_inputs(inputs, ctx):
    """Check what the namespace holds: a parent exposing this WorkChain without some ports gives those later."""
    ports = set(ctx)
    if 'predict' in ports and 'code' in ctx['predict'] and 'code' not in (inputs.get('predict') or {}):
        return '`predict.code` is required: the `hpcai-model` code (for example `hpcai-model@localhost`)'
    if {'structures', 'structure_nodes'} <= ports and ('structures' in inputs) == bool(inputs.get('structure_nodes')):
        return 'give exactly one of `structures` (a StructureSet) or `structure_nodes` (StructureData nodes)'
    invalid = invalid_link_labels(inputs.get('structure_nodes') or {})
    if invalid:
        mapped = ', '.join(f'{key!r} -> {link_label(key)!r}' for key in invalid)
        return (
            f'`structure_nodes` keys must be valid link labels (letters, digits, single underscores): {mapped}; '
            "set the id as the node's label to keep it (aiida_hpcai.workchains.structures.link_label, or "
            'the `hpcai.structures.select` calcfunction, which does both)'
        )
    if 'models' not in ports:
        return None
    models = inputs.get('models') or {}
    if not models:
        return 'give at least one model in the `models` namespace'
    if 'sigma_threshold' not in inputs:
        targets = {node.target for node in models.values()}
        if len(targets) == 1 and default_sigma_threshold(next(iter(targets))) is None:
            return (
                f'there is no default `sigma_threshold` for target {next(iter(targets))!r}; '
                'give one in the units of the model'
            )
    return None


class SurrogateWorkChain(LaunchesOnce, WorkChain):
    """Predict a property for many structures with an ML ensemble and flag those that need DFT."""

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
        spec.expose_inputs(
            PredictBaseWorkChain,
            namespace='predict_base',
            exclude=('predict', 'structures', 'models', 'metadata'),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Inputs of the `hpcai.predict_base` WorkChain that runs the CalcJob and handles its failures: '
                '`min_batch_size` and `max_iterations` of the out-of-memory retries, `clean_workdir`, ...',
            },
        )
        spec.input(
            'structures',
            valid_type=StructureSet,
            required=False,
            help='The structures to predict, as one StructureSet.',
        )
        spec.input_namespace(
            'structure_nodes',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='Alternatively, individual StructureData nodes; they are gathered into one '
            "StructureSet by a calcfunction. Keys are link labels; a structure's id is its node's label where "
            'the key is that label mapped to a link label (`mp-149` under `mp_149`), else the key.',
        )
        spec.input_namespace(
            'models',
            valid_type=ModelData,
            dynamic=True,
            help='The checkpoints (one, or several forming an ensemble) of one target.',
        )
        spec.input(
            'sigma_threshold',
            valid_type=orm.Float,
            required=False,
            help='A prediction is confident when its sigma is at most this (model units). Default: '
            'per target in `surrogate.yaml` (formation_energy_per_atom: 0.12 eV/atom, band_gap: 0.6 eV).',
        )
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.setup,
            cls.run_predict,
            cls.inspect_predict,
            cls.results,
        )

        spec.output(
            'classified_predictions',
            valid_type=orm.ArrayData,
            help='Aligned with the input structures: ids, mean, sigma, status, reason and the boolean `confident` '
            "(the CalcJob's own output, without ids and `confident`, is its `predictions`).",
        )
        spec.output(
            'needs_dft',
            valid_type=StructureSet,
            help='The structures that were not predicted confidently (may be empty), ids kept, with the '
            f'labels `{PREDICTED_MEAN}` and `{PREDICTED_SIGMA}` (NaN where not predicted).',
        )
        spec.output(
            'structures',
            valid_type=StructureSet,
            required=False,
            help='The StructureSet built from `structure_nodes` (only when those were given).',
        )
        spec.output(
            'summary',
            valid_type=orm.Dict,
            help='Counts (structures, ok, failed, confident, needs DFT), threshold, target, units, and '
            'the ids of the structures that need DFT.',
        )

        spec.exit_code(
            401,
            'ERROR_PREDICT_FAILED',
            message='The prediction failed: {process}<{pk}> ended with exit status {status}: {message}',
        )
        spec.exit_code(
            402,
            'ERROR_NO_VALID_STRUCTURE',
            message='None of the structure_nodes is a valid crystal (reasons in the `structures` output): {reasons}',
        )

    def setup(self):
        if 'structures' in self.inputs:
            self.ctx.structures = self.inputs.structures
        else:
            self.ctx.structures = structures_from_nodes(**self.inputs.structure_nodes)
            self.out('structures', self.ctx.structures)
            if self.ctx.structures.count == 0:
                # nothing to predict: stop here rather than run a job on an empty set
                reasons = self.ctx.structures.base.attributes.get('skipped_reasons', {})
                return self.exit_codes.ERROR_NO_VALID_STRUCTURE.format(reasons=reasons)
        if 'sigma_threshold' in self.inputs:
            self.ctx.sigma_threshold = self.inputs.sigma_threshold
        else:
            target = next(iter(self.inputs.models.values())).target
            self.ctx.sigma_threshold = orm.Float(default_sigma_threshold(target))
            self.report(f'using the default sigma_threshold {self.ctx.sigma_threshold.value} for target {target!r}')

    def run_predict(self):
        given = 'predict_base' in self.inputs  # an optional namespace: absent when none of its ports was given
        inputs = self.exposed_inputs(PredictBaseWorkChain, namespace='predict_base') if given else {}
        inputs['predict'] = self.exposed_inputs(PredictCalculation, namespace='predict')
        inputs['structures'] = self.ctx.structures
        inputs['models'] = dict(self.inputs.models)
        inputs['metadata'] = {'call_link_label': 'predict'}
        node = self.submit(PredictBaseWorkChain, **inputs)
        self.report(f'launched PredictBaseWorkChain<{node.pk}> for {self.ctx.structures.count} structures')
        return ToContext(predict=node)

    def inspect_predict(self):
        workchain = self.ctx.predict
        if workchain.is_finished_ok:
            return None
        # Nothing predicted is still an answer for a surrogate: every structure goes to DFT, with its reason.
        nothing_predicted = PredictBaseWorkChain.exit_codes.ERROR_NO_STRUCTURE_PREDICTED.status
        if workchain.exit_status == nothing_predicted and 'predictions' in workchain.outputs:
            self.report(f'{workchain.process_label}<{workchain.pk}> predicted no structure; all of them need DFT')
            return None
        # The last job says why (out of memory at the smallest batch, a corrupt checkpoint, NaN, a crash).
        # (the restart WorkChain itself, where it was excepted or killed: a lost daemon worker, a locked database)
        jobs = [child for child in workchain.called if isinstance(child, orm.CalcJobNode)]
        if jobs and workchain.exit_status is not None:
            failed = max(jobs, key=lambda job: job.pk)
        else:
            failed = workchain
        exception = (failed.exception or '').strip().splitlines()
        return self.exit_codes.ERROR_PREDICT_FAILED.format(
            process=failed.process_label,
            pk=failed.pk,
            status=failed.exit_status if failed.exit_status is not None else failed.process_state.value,
            message=failed.exit_message or (exception[-1] if exception else 'no message'),
        )

    def results(self):
        results = classify_predictions(
            self.ctx.structures, self.ctx.predict.outputs.predictions, self.ctx.sigma_threshold
        )
        summary = results['summary'].get_dict()
        self.report(
            f'{summary["n_confident"]} of {summary["n_structures"]} structures predicted confidently; '
            f'{summary["n_needs_dft"]} need DFT ({summary["n_failed"]} could not be predicted)'
        )
        self.out_many({key: results[key] for key in ('classified_predictions', 'needs_dft', 'summary')})
