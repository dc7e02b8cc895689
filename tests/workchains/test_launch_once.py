"""A step that a daemon fault makes run again follows the children it launched before, instead of launching them twice.

The real fault (a worker SIGKILLed in the middle of a batch) is tests/scaleout/test_daemon_faults.py; here the
second run of a step is made on purpose: the step launches its children, forgets what it recorded (what a worker
killed before the next checkpoint leaves behind: the context of the last checkpoint) and runs its body again.
"""

from importlib.metadata import entry_points

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ToContext, WorkChain, run_get_node
from aiida.plugins import WorkflowFactory

from aiida_hpcai.workchains.launch_once import LAUNCHED, LaunchesOnce, orphaned_child


class Child(WorkChain):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('x', valid_type=orm.Int)
        spec.output('y', valid_type=orm.Int)
        spec.outline(cls.double)

    def double(self):
        self.out('y', orm.Int(2 * self.inputs.x.value).store())


class Batch(LaunchesOnce, WorkChain):
    """Launches one child per value, with a call link label each; with ``lose_step`` it runs that body twice."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('numbers', valid_type=orm.List)
        spec.input('lose_step', valid_type=orm.Bool, default=lambda: orm.Bool(False))
        spec.output('results', valid_type=orm.List)
        spec.outline(cls.launch, cls.collect)

    def launch_all(self):
        return {
            f'child_{i}': self.submit(Child, x=orm.Int(value), metadata={'call_link_label': f'child_{i}'})
            for i, value in enumerate(self.inputs.numbers.get_list())
        }

    def launch(self):
        children = self.launch_all()
        if self.inputs.lose_step.value:
            del self.ctx[LAUNCHED]  # the context of the last checkpoint, before this step
            children = self.launch_all()
        return ToContext(**children)

    def collect(self):
        values = self.inputs.numbers.get_list()
        self.out('results', orm.List([self.ctx[f'child_{i}'].outputs.y.value for i in range(len(values))]).store())


def calls(node) -> list[tuple[str, int]]:
    return sorted(
        (triple.link_label, triple.node.pk)
        for triple in node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()
    )


@pytest.mark.parametrize('lose_step', [False, True])
def test_each_child_is_launched_once(aiida_profile, lose_step):
    results, node = run_get_node(Batch, numbers=orm.List([1, 2, 3]), lose_step=orm.Bool(lose_step))
    assert node.is_finished_ok
    assert results['results'].get_list() == [2, 4, 6]
    links = calls(node)
    assert [label for label, _ in links] == ['child_0', 'child_1', 'child_2']  # once each, in both cases
    followed = [line for line in orm.Log.collection.get_logs_for(node) if 'following it instead' in line.message]
    assert len(followed) == (3 if lose_step else 0)


def test_orphaned_child_matches_label_and_process_type_and_skips_known(aiida_profile):
    parent = orm.WorkflowNode()
    parent.store()
    children = {}
    for label, process_type in [
        ('relax', 'aiida.workflows:quantumespresso.pw.relax'),
        ('relax', 'aiida.workflows:quantumespresso.pw.relax'),
        ('scf', 'aiida.workflows:quantumespresso.pw.base'),
    ]:
        child = orm.WorkflowNode()
        child.process_type = process_type
        child.base.links.add_incoming(parent, link_type=LinkType.CALL_WORK, link_label=label)
        child.store()
        children.setdefault(label, []).append(child.pk)
    relax = 'aiida.workflows:quantumespresso.pw.relax'
    first, second = children['relax']
    assert orphaned_child(parent, 'relax', relax, []).pk == first
    assert orphaned_child(parent, 'relax', relax, [first]).pk == second
    assert orphaned_child(parent, 'relax', relax, [first, second]) is None
    assert orphaned_child(parent, 'scf', relax, []) is None  # another process type under that label
    assert orphaned_child(parent, 'rela_', relax, []) is None  # the label is matched exactly, not as a pattern
    assert orphaned_child(parent, 'missing', relax, []) is None


@pytest.mark.parametrize(
    'name', sorted(entry.name for entry in entry_points(group='aiida.workflows') if entry.name.startswith('hpcai.'))
)
def test_every_workchain_of_the_plugin_launches_once(name):
    assert issubclass(WorkflowFactory(name), LaunchesOnce)
