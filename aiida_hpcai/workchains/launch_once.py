"""A WorkChain step launches each of its child processes once, also when a daemon fault makes it run again.

AiiDA runs a WorkChain step again from the WorkChain's last checkpoint when the daemon worker that ran the step
dies before the next checkpoint. Every child the lost run of the step had already submitted is then submitted a
second time, and both copies run: a batch step that had launched 30 ``hpcai.dft`` would run 30 relaxations twice
(aiida-core issue 3671). :class:`LaunchesOnce` makes the plugin's own WorkChains follow such a child instead.

The context is part of the checkpoint, so a child the WorkChain launched in a step that finished is in
``ctx.launched_children``; a stored child with the same call link label and process type that is not there was
launched by a run of a step that the fault cut short.
"""

from __future__ import annotations

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessBuilder

LAUNCHED = 'launched_children'


def orphaned_child(
    parent: orm.ProcessNode, label: str, process_type: str, launched: list[int]
) -> orm.ProcessNode | None:
    """The first child of ``parent`` called with ``label``, of ``process_type``, whose pk is not in ``launched``."""
    query = orm.QueryBuilder().append(orm.ProcessNode, filters={'id': parent.pk}, tag='parent')
    query.append(
        orm.ProcessNode,
        with_incoming='parent',
        edge_filters={'label': label, 'type': {'in': [LinkType.CALL_CALC.value, LinkType.CALL_WORK.value]}},
        filters={'process_type': process_type},
        project='id',
    )
    known = set(launched)
    orphans = [pk for pk in query.all(flat=True) if pk not in known]
    return orm.load_node(min(orphans)) if orphans else None


class LaunchesOnce:
    """Mixin (before ``WorkChain`` in the bases) whose ``submit`` follows a child that a cut-short run of the
    current step already launched, instead of launching it again; every child is recorded in the context."""

    def submit(self, process, inputs=None, **kwargs):
        if isinstance(process, ProcessBuilder):
            process_class, label = process.process_class, process.metadata.call_link_label
        else:
            process_class = process
            label = {**(inputs or {}), **kwargs}.get('metadata', {}).get('call_link_label', 'CALL')
        launched = list(self.ctx.get(LAUNCHED, []))
        node = orphaned_child(self.node, label, process_class.build_process_type(), launched)
        if node is None:
            node = super().submit(process, inputs, **kwargs)
        else:
            self.report(
                f'{node.process_label}<{node.pk}> ({label}) was launched by a run of this step that a daemon fault '
                'cut short; following it instead of launching it again'
            )
        self.ctx[LAUNCHED] = [*launched, node.pk]
        return node
