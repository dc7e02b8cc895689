"""A WorkChain of another plugin that composes ``hpcai.surrogate`` and ``hpcai.dft``.

docs/source/surrogate.md shows this file as it is ("Composing"), and tests/workchains/test_composition.py
runs it: the surrogate screens a StructureSet, the structures it is not confident about go on to DFT with
their ids and predictions, highest sigma first.
"""

import math

from aiida import orm
from aiida.engine import ToContext, WorkChain
from aiida.plugins import CalculationFactory, DataFactory, WorkflowFactory

SurrogateWorkChain = WorkflowFactory('hpcai.surrogate')
DftWorkChain = WorkflowFactory('hpcai.dft')
select_structures = CalculationFactory('hpcai.structures.select')
StructureSet = DataFactory('hpcai.structures')


class ScreenAndVerifyWorkChain(WorkChain):
    """Predict every structure with an ML ensemble; verify with DFT those it is not confident about."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('structures', valid_type=StructureSet)
        spec.input('max_dft', valid_type=orm.Int, default=lambda: orm.Int(10), help='DFT at most this many.')
        # `models`, `sigma_threshold` and `predict` (code, device, parameters) come with the surrogate's inputs.
        spec.expose_inputs(SurrogateWorkChain, namespace='surrogate', exclude=('structures', 'structure_nodes'))
        # engine, code, protocol, options, ...: everything of hpcai.dft but the structure.
        spec.expose_inputs(DftWorkChain, namespace='dft', exclude=('structure',))
        spec.expose_outputs(SurrogateWorkChain, namespace='surrogate')
        spec.output_namespace('formation_energy_per_atom', valid_type=orm.Float, dynamic=True)
        spec.outline(cls.screen, cls.verify, cls.collect)
        spec.exit_code(401, 'ERROR_SURROGATE_FAILED', message='the surrogate failed: {message}')

    def screen(self):
        inputs = self.exposed_inputs(SurrogateWorkChain, namespace='surrogate')
        return ToContext(surrogate=self.submit(SurrogateWorkChain, structures=self.inputs.structures, **inputs))

    def verify(self):
        surrogate = self.ctx.surrogate
        if not surrogate.is_finished_ok:
            return self.exit_codes.ERROR_SURROGATE_FAILED.format(message=surrogate.exit_message)
        needs_dft = surrogate.outputs.needs_dft
        # Highest predicted sigma first; structures the model could not predict at all (NaN) before any.
        sigma = needs_dft.get_label('predicted_sigma')
        order = sorted(range(needs_dft.count), key=lambda i: -math.inf if math.isnan(sigma[i]) else -sigma[i])
        ids = [needs_dft.ids[i] for i in order[: self.inputs.max_dft.value]]
        # One StructureData per id, created from the set by a calcfunction: the graph stays connected.
        selected = select_structures(needs_dft, orm.List(ids))['structures']
        dft = self.exposed_inputs(DftWorkChain, namespace='dft')
        for key, structure in selected.items():  # key: the id as a link label; structure.label: the id
            inputs = {**dft, 'structure': structure, 'metadata': {'call_link_label': key}}
            node = self.submit(DftWorkChain, **inputs)
            self.to_context(**{key: node})
        self.ctx.dft_keys = sorted(selected)

    def collect(self):
        self.out_many(self.exposed_outputs(self.ctx.surrogate, SurrogateWorkChain, namespace='surrogate'))
        energies = {}
        for key in self.ctx.dft_keys:
            node = self.ctx[key]
            if node.is_finished_ok and 'formation_energy_per_atom' in node.outputs:
                energies[key] = node.outputs.formation_energy_per_atom
            else:
                self.report(f'DFT of {node.inputs.structure.label} failed: {node.exit_status} {node.exit_message}')
        self.out('formation_energy_per_atom', energies)
