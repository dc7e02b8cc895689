"""``hpcai.dft_batch``: ``hpcai.dft`` on every structure of a ``StructureSet``, a few at a time.

Steps:

1. plan the elemental references: for each structure, the elements and the identity under which its
   ``hpcai.dft`` child will look their references up (:func:`~aiida_hpcai.workchains.dft.reference_identity`);
   the pairs no earlier WorkChain computed are collected once each;
2. compute those references, at most ``max_concurrent`` at a time, and tag them as ``hpcai.dft`` tags its
   own: children started later find them instead of computing them again. (Children started together
   would otherwise each compute the same missing reference.)
3. run one ``hpcai.dft`` per structure, in waves of at most ``max_concurrent``; a structure whose
   reference failed is recorded as failed without a calculation;
4. collect, in one calcfunction (so every number is linked to the child output it comes from), the
   relaxed structures with their DFT labels as a ``StructureSet`` and a ``results`` Dict with each id's
   values or failure. Relaxed structures get the screening fingerprint extra, so later screenings see them (not
   the cells of single points, ``dft.relax`` False).

A batch where some structures fail finishes ok (exit status 0) with the failures in ``results``: failing
candidates are the normal outcome of screening generated structures, and AiiDA reads any non-zero exit
status as a failed process. Only a batch where nothing succeeded exits with ``ERROR_ALL_FAILED``.
"""

from __future__ import annotations

import math

from aiida import orm
from aiida.engine import WorkChain, calcfunction, while_

from ..data.structure_set import StructureSet
from ..engines import get_engine
from ..engines import references as refs
from ..screening.calcfunctions import set_fingerprint
from .dft import (
    DftWorkChain,
    formation_energy_on_mp_scale,
    is_single_point,
    reference_identity,
    reference_inputs,
)
from .launch_once import LaunchesOnce

#: Output name of ``hpcai.dft`` -> label of the relaxed ``StructureSet``.
LABELS = {
    'energy_per_atom': 'energy_per_atom',
    'formation_energy_per_atom': 'formation_energy_per_atom',
    'formation_energy_per_atom_uncorrected': 'formation_energy_per_atom_uncorrected',
    'band_gap': 'band_gap',
}


def _positive(value, _):
    if value.value < 1:
        return 'max_concurrent must be at least 1'


def _not_empty(value, _):
    if not len(value):
        return 'the structure set is empty'


@calcfunction
def collect_batch(structures: StructureSet, records: orm.Dict, **nodes):
    """The relaxed ``StructureSet`` (DFT values as labels, input ids) and the ``results`` Dict of a batch.

    ``structures``: the batch's input set (linked for provenance: the results describe its ids);

    ``records``: ``{'structures': [{'index', 'id', 'status', ...}], ...}`` written by the WorkChain;
    ``nodes``: ``relaxed_<index>`` and ``<output>_<index>`` for each output of :data:`LABELS` a child made.
    """
    content = records.get_dict()
    rows = content['structures']
    succeeded = [row for row in rows if row['status'] == 'finished_ok']
    for row in succeeded:
        for output in LABELS:
            node = nodes.get(f'{output}_{row["index"]}')
            row[output] = node.value if node is not None else None
    content['succeeded'] = [row['id'] for row in succeeded]
    content['failed'] = [row['id'] for row in rows if row['status'] != 'finished_ok']
    outputs = {'results': orm.Dict(content)}
    if succeeded:
        labels = {
            LABELS[output]: [math.nan if row[output] is None else row[output] for row in succeeded]
            for output in LABELS
            if any(row[output] is not None for row in succeeded)
        }
        outputs['relaxed_structures'] = StructureSet.from_structuredata(
            [nodes[f'relaxed_{row["index"]}'] for row in succeeded],
            ids=[row['id'] for row in succeeded],
            labels=labels,
        )
    return outputs


def plan_references(
    structures: StructureSet,
    engine_name: str,
    code,
    protocol_name: str,
    overrides: dict | None,
    molecular_crystal: bool,
) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """The elemental references the ``hpcai.dft`` children of ``structures`` need and no WorkChain has computed.

    Returns ``(references, needs)``: ``references`` maps a key per (element, identity) to
    ``{'element', 'identity', 'overrides', 'status': 'pending'}``, once each however many structures need it;
    ``needs`` maps ``str(index)`` to the keys of every reference that structure's child will look up. A
    structure whose child exits before any calculation (no pseudopotential, no reference structure) needs none.
    """
    engine = get_engine(engine_name)
    protocol = engine.load_protocol(protocol_name, overrides)
    if molecular_crystal:
        protocol = engine.molecular_crystal_protocol(protocol)
    references: dict[str, dict] = {}
    needs: dict[str, list[str]] = {}
    for index in range(len(structures)):
        structure = structures.get_structuredata(index)
        elements = sorted(structure.get_symbols_set())
        if engine.check_structure(structure, code, protocol) or refs.missing_references(elements):
            continue
        reference_overrides, identity = reference_identity(engine, code, protocol_name, overrides, structure, protocol)
        keys = []
        for element in elements:
            key = f'{element}:{sorted(identity.items())}'
            keys.append(key)
            if key in references or refs.find_reference(element, identity) is not None:
                continue
            references[key] = {
                'element': element,
                'identity': identity,
                'overrides': reference_overrides,
                'status': 'pending',
            }
        needs[str(index)] = keys
    return references, needs


class DftBatchWorkChain(LaunchesOnce, WorkChain):
    """Relax and compute every structure of a ``StructureSet`` with ``hpcai.dft``, references computed once."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'structures', valid_type=StructureSet, validator=_not_empty, help='The structures to relax and compute.'
        )
        spec.input(
            'max_concurrent',
            valid_type=orm.Int,
            default=lambda: orm.Int(4),
            validator=_positive,
            help='Most hpcai.dft children (or elemental references) running at the same time.',
        )
        spec.expose_inputs(
            DftWorkChain,
            namespace='dft',
            exclude=('structure',),
            namespace_options={'help': 'Inputs of every hpcai.dft child (engine, code, protocol, options, ...).'},
        )
        spec.outline(
            cls.setup,
            cls.plan_references,
            while_(cls.has_references_to_run)(cls.run_references, cls.inspect_references),
            while_(cls.has_structures_to_run)(cls.run_structures, cls.inspect_structures),
            cls.collect,
        )
        spec.output(
            'relaxed_structures',
            valid_type=StructureSet,
            required=False,
            help='The relaxed structures that succeeded, with their input ids and the labels energy_per_atom, '
            'formation_energy_per_atom (with the anion corrections of `dft.energy_correction`), '
            'formation_energy_per_atom_uncorrected and band_gap (eV/atom, eV; NaN where a child did not compute it).',
        )
        spec.output(
            'results',
            valid_type=orm.Dict,
            help="Per id: status, the child's uuid, exit status and message, and the DFT values; the succeeded "
            'and failed ids; the elemental references computed by the batch.',
        )
        spec.exit_code(
            410,
            'ERROR_ALL_FAILED',
            message='none of the {count} structures finished ok; their exit codes and messages are in `results`',
        )

    # -- steps ------------------------------------------------------------------------------------------
    def setup(self):
        structures = self.inputs.structures
        self.ctx.ids = structures.ids
        self.ctx.to_run = list(range(len(structures)))
        self.ctx.running = []
        self.ctx.rows = []
        self.ctx.outputs = {}
        self.ctx.references = {}  # (element, identity as sorted items) -> plan
        self.ctx.references_to_run = []
        self.ctx.needs = {}  # str(index) -> reference keys

    def plan_references(self):
        """Find, per structure, the references its child would compute; keep those no WorkChain has yet."""
        dft = self.inputs.dft
        if not dft.compute_formation_energy.value:
            return
        overrides = dft.overrides.get_dict() if 'overrides' in dft else None
        self.ctx.references, self.ctx.needs = plan_references(
            self.inputs.structures,
            dft.engine.value,
            dft.code,
            dft.protocol.value,
            overrides,
            dft.molecular_crystal.value,
        )
        self.ctx.references_to_run = list(self.ctx.references)
        if self.ctx.references_to_run:
            elements = ', '.join(plan['element'] for plan in self.ctx.references.values())
            self.report(f'computing the elemental references first: {elements}')

    def has_references_to_run(self):
        return bool(self.ctx.references_to_run)

    def run_references(self):
        dft = self.inputs.dft
        wave = self.ctx.references_to_run[: self.inputs.max_concurrent.value]
        self.ctx.references_to_run = self.ctx.references_to_run[len(wave) :]
        self.ctx.running = wave
        for number, key in enumerate(wave):
            plan = self.ctx.references[key]
            inputs = reference_inputs(
                plan['element'], dft.engine, dft.code, dft.protocol, plan['overrides'], dft.get('options')
            )
            node = self.submit(DftWorkChain, **inputs)
            self.report(f'launched the {plan["element"]} reference DftWorkChain<{node.pk}>')
            self.to_context(**{f'reference_{number}': node})

    def inspect_references(self):
        for number, key in enumerate(self.ctx.running):
            node = self.ctx[f'reference_{number}']
            plan = self.ctx.references[key]
            plan['process'] = node.uuid
            if node.is_finished_ok:
                refs.tag_reference(node, plan['element'], plan['identity'])
                plan['status'] = 'finished_ok'
            else:
                plan['status'] = 'failed'
                plan['message'] = f'{node.process_label}<{node.pk}> failed with exit status {node.exit_status}'
                self.report(f'the {plan["element"]} reference {plan["message"]}')
        self.ctx.running = []

    def has_structures_to_run(self):
        return bool(self.ctx.to_run)

    def run_structures(self):
        inputs = self.exposed_inputs(DftWorkChain, namespace='dft')
        launched = 0
        while self.ctx.to_run and launched < self.inputs.max_concurrent.value:
            index = self.ctx.to_run.pop(0)
            identifier = self.ctx.ids[index]
            failed = [
                self.ctx.references[key]
                for key in self.ctx.needs.get(str(index), [])
                if self.ctx.references.get(key, {}).get('status') == 'failed'
            ]
            if failed:
                message = '; '.join(f'the {plan["element"]} reference {plan["message"]}' for plan in failed)
                self._record(index, 'reference_failed', None, None, message)
                continue
            child = {
                **inputs,
                'structure': self.inputs.structures.get_structuredata(index),
                'metadata': {'call_link_label': f'structure_{index}', 'label': identifier},
            }
            node = self.submit(DftWorkChain, **child)
            self.report(f'launched DftWorkChain<{node.pk}> for {identifier}')
            self.to_context(**{f'structure_{index}': node})
            self.ctx.running.append(index)
            launched += 1

    def inspect_structures(self):
        for index in self.ctx.running:
            node = self.ctx[f'structure_{index}']
            if node.is_finished_ok:
                self._record(index, 'finished_ok', node, 0, None, formation_energy_on_mp_scale(node.outputs))
                relaxed = node.outputs.relaxed_structure
                if not is_single_point(node):
                    set_fingerprint(relaxed)
                self.ctx.outputs[f'relaxed_{index}'] = relaxed
                for output in LABELS:
                    if output in node.outputs:
                        self.ctx.outputs[f'{output}_{index}'] = node.outputs[output]
            else:
                status = 'failed' if node.is_finished else node.process_state.value
                message = node.exit_message or f'{node.process_label} {status}'
                self._record(index, status, node, node.exit_status, message)
                self.report(f'{self.ctx.ids[index]}: DftWorkChain<{node.pk}> {status}: {message}')
        self.ctx.running = []

    def _record(self, index, status, node, exit_status, message, on_mp_scale=None):
        self.ctx.rows.append(
            {
                'index': index,
                'id': self.ctx.ids[index],
                'status': status,
                'process': node.uuid if node is not None else None,
                'exit_status': exit_status,
                'exit_message': message,
                # whether its formation energy can stand beside MP's (None: no result)
                'on_mp_scale': on_mp_scale,
            }
        )

    def collect(self):
        references = [
            {'element': plan['element'], 'status': plan['status'], 'process': plan.get('process')}
            for plan in self.ctx.references.values()
        ]
        records = {'structures': sorted(self.ctx.rows, key=lambda row: row['index']), 'references': references}
        outputs = collect_batch(
            structures=self.inputs.structures,
            records=orm.Dict(records),
            metadata={'call_link_label': 'collect'},
            **self.ctx.outputs,
        )
        self.out_many(outputs)
        succeeded = len(outputs['results']['succeeded'])
        self.report(f'{succeeded} of {len(self.ctx.rows)} structures finished ok')
        if not succeeded:
            return self.exit_codes.ERROR_ALL_FAILED.format(count=len(self.ctx.rows))
        return None
