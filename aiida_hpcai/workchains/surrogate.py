"""``hpcai.surrogate``: an ML model replaces DFT where it is confident, and says which structures still need DFT.

One ``hpcai.predict`` CalcJob predicts every structure (mean and sigma of an ensemble); a
calcfunction then splits the set at ``sigma_threshold``. The structures that were not predicted
confidently (or not at all) come out as one StructureSet, ``needs_dft``, ready for a DFT WorkChain.
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

__all__ = ('SurrogateWorkChain', 'structures_from_nodes', 'classify_predictions', 'default_sigma_threshold')

DEFAULTS_FILE = pathlib.Path(__file__).with_suffix('.yaml')


def default_sigma_threshold(target: str | None) -> float | None:
    """The documented default threshold for ``target`` (``surrogate.yaml``), or None if there is none."""
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())['sigma_threshold']
    return defaults.get(target)


@calcfunction
def structures_from_nodes(**structure_nodes: orm.StructureData) -> StructureSet:
    """Gather StructureData nodes into one StructureSet; ids are the namespace keys, in sorted order."""
    keys = sorted(structure_nodes)
    return StructureSet.from_structuredata([structure_nodes[key] for key in keys], ids=keys)


@calcfunction
def classify_predictions(structures: StructureSet, raw_predictions: orm.ArrayData, sigma_threshold: orm.Float) -> dict:
    """Add the ``confident`` mask to the predictions and collect the structures that need DFT.

    Confident means: predicted (status ``ok``), a finite mean, and ``sigma <= sigma_threshold``.
    """
    mean = raw_predictions.get_array('mean')
    sigma = raw_predictions.get_array('sigma')
    status = raw_predictions.get_array('status')
    confident = (status == 'ok') & np.isfinite(mean) & np.isfinite(sigma) & (sigma <= sigma_threshold.value)

    predictions = orm.ArrayData()
    for name in raw_predictions.get_arraynames():
        predictions.set_array(name, raw_predictions.get_array(name))
    predictions.set_array('confident', confident)
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
        }
    )
    summary = orm.Dict(
        {
            **counts,
            'sigma_threshold': sigma_threshold.value,
            'target': predictions.base.attributes.get('target'),
            'units': predictions.base.attributes.get('units'),
            'needs_dft_ids': [structures.ids[i] for i in needs_dft_index],
        }
    )
    return {'predictions': predictions, 'needs_dft': structures.subset(needs_dft_index), 'summary': summary}


def validate_inputs(inputs, _):
    if ('structures' in inputs) == bool(inputs.get('structure_nodes')):
        return 'give exactly one of `structures` (a StructureSet) or `structure_nodes` (StructureData nodes)'
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


class SurrogateWorkChain(WorkChain):
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
            'StructureSet by a calcfunction (ids = the namespace keys).',
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
            'predictions',
            valid_type=orm.ArrayData,
            help='Aligned with the input structures: mean, sigma, status, reason and the boolean `confident`.',
        )
        spec.output(
            'needs_dft',
            valid_type=StructureSet,
            help='The structures that were not predicted confidently (may be empty), ids kept.',
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
            message='The hpcai.predict CalcJob<{pk}> failed with exit status {status}: {message}',
        )

    def setup(self):
        if 'structures' in self.inputs:
            self.ctx.structures = self.inputs.structures
        else:
            self.ctx.structures = structures_from_nodes(**self.inputs.structure_nodes)
            self.out('structures', self.ctx.structures)
        if 'sigma_threshold' in self.inputs:
            self.ctx.sigma_threshold = self.inputs.sigma_threshold
        else:
            target = next(iter(self.inputs.models.values())).target
            self.ctx.sigma_threshold = orm.Float(default_sigma_threshold(target))
            self.report(f'using the default sigma_threshold {self.ctx.sigma_threshold.value} for target {target!r}')

    def run_predict(self):
        inputs = self.exposed_inputs(PredictCalculation, namespace='predict')
        inputs['structures'] = self.ctx.structures
        inputs['models'] = dict(self.inputs.models)
        inputs.setdefault('metadata', {})['call_link_label'] = 'predict'
        calculation = self.submit(PredictCalculation, **inputs)
        self.report(f'launched PredictCalculation<{calculation.pk}> for {self.ctx.structures.count} structures')
        return ToContext(predict=calculation)

    def inspect_predict(self):
        calculation = self.ctx.predict
        exit_codes = PredictCalculation.exit_codes
        nothing_predicted = (exit_codes.ERROR_NO_STRUCTURE_PREDICTED.status, exit_codes.ERROR_NAN_OUTPUT.status)
        if calculation.is_finished_ok:
            return None
        # Nothing predicted is still an answer for a surrogate: every structure goes to DFT, with its reason.
        if calculation.exit_status in nothing_predicted and 'predictions' in calculation.outputs:
            self.report(
                f'PredictCalculation<{calculation.pk}> predicted no structure ({calculation.exit_message}); '
                'all of them need DFT'
            )
            return None
        return self.exit_codes.ERROR_PREDICT_FAILED.format(
            pk=calculation.pk, status=calculation.exit_status, message=calculation.exit_message
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
        self.out_many({key: results[key] for key in ('predictions', 'needs_dft', 'summary')})
