"""Composing the plugin's WorkChains as docs/source/surrogate.md says, and the page's queries on the result.

- Every WorkChain of the plugin can be exposed in a parent with its inputs left out (the parent gives
  them itself): its namespace validator must not demand them.
- ``ScreenAndVerifyWorkChain`` (tests/workchains/screen_and_verify.py, shown on the page as it is) runs the
  real ``hpcai-model`` and pw.x: the surrogate screens Si (mp-149) and AuMg; both go on to DFT with their ids
  and predictions; Si is computed (its own elemental reference), AuMg stops before any calculation (no Au
  pseudopotential). Then the page's ``% test:`` python blocks run on that graph, and ``aiida-hpcai results``.
"""

import re
from importlib.metadata import entry_points

import pytest
from aiida import orm
from aiida.engine import WorkChain, run_get_node
from aiida.manage.caching import enable_caching
from aiida.plugins import WorkflowFactory
from pymatgen.core import Lattice, Structure

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.engines import references as refs
from tests.conftest import REPO_ROOT
from tests.surrogate_helpers import model_program_code, needs_model_program, perov_structures, train_tiny_model
from tests.workchains.screen_and_verify import ScreenAndVerifyWorkChain

PAGE = REPO_ROOT / 'docs' / 'source' / 'surrogate.md'
TESTED_BLOCK = re.compile(r'^% test: (\S+)\n```python\n(.*?)^```', re.MULTILINE | re.DOTALL)
OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 2}, 'max_wallclock_seconds': 1800}
PLUGIN_WORKFLOWS = sorted(
    entry.name for entry in entry_points(group='aiida.workflows') if entry.name.startswith('hpcai.')
)


def page_blocks() -> dict[str, str]:
    """The page's python blocks marked ``% test: NAME`` (a MyST comment line, not rendered)."""
    return {name: code for name, code in TESTED_BLOCK.findall(PAGE.read_text(encoding='utf-8'))}


def test_the_page_shows_the_composition_this_module_runs():
    page = PAGE.read_text(encoding='utf-8')
    assert '../../tests/workchains/screen_and_verify.py' in page
    assert set(page_blocks()) >= {'results', 'surrogate_vs_dft'}


@pytest.mark.parametrize('name', PLUGIN_WORKFLOWS)
def test_every_workchain_can_be_exposed_with_inputs_left_out(aiida_profile, name):
    """A parent may give any input itself: the exposed namespace's validator checks only the ports it holds."""
    child = WorkflowFactory(name)
    inputs = [key for key in child.spec().inputs if key != 'metadata']

    class Parent(WorkChain):
        @classmethod
        def define(cls, spec):
            super().define(spec)
            spec.expose_inputs(child, namespace='child', exclude=inputs)

    assert Parent.spec().inputs.validate({'child': {}}) is None


def test_screen_and_verify_validates_the_exposed_namespaces(aiida_profile, aiida_code_installed):
    """A missing hpcai-model code is an error naming its port, before anything runs."""
    structures = StructureSet.from_pymatgen([refs.get_reference_structure('Si').get_pymatgen_structure()])
    with pytest.raises(ValueError, match='`predict.code` is required'):
        run_get_node(ScreenAndVerifyWorkChain, structures=structures, surrogate={'models': {}}, dft={})


@pytest.mark.slow
@needs_model_program
def test_screen_and_verify_end_to_end(aiida_code_installed, shared_data_dir, pw_code, sssp_family, capsys):
    model = train_tiny_model(model_code := model_program_code(aiida_code_installed), perov_structures(shared_data_dir))
    model = model.outputs.model
    silicon = refs.get_reference_structure('Si').get_pymatgen_structure()  # mp-149, as in the dataset
    gold_magnesium = Structure(Lattice.cubic(3.4), ['Au', 'Mg'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structures = StructureSet.from_pymatgen([silicon, gold_magnesium], ids=['mp-149', 'au-mg']).store()

    # A pw.x run some other test made with the same inputs is reused (pw.x is deterministic: safe to cache).
    with enable_caching(identifier='aiida.calculations:quantumespresso.pw'):
        results, node = run_get_node(
            ScreenAndVerifyWorkChain,
            structures=structures,
            # No confident prediction at a threshold of 0: both structures need DFT.
            surrogate={'models': {'tiny': model}, 'sigma_threshold': orm.Float(0.0), 'predict': {'code': model_code}},
            dft={
                'engine': orm.Str('quantumespresso'),
                'code': pw_code,
                'protocol': orm.Str('fast'),
                'options': orm.Dict(OPTIONS),
            },
        )

    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    needs_dft = results['surrogate']['needs_dft']
    assert sorted(needs_dft.ids) == ['au-mg', 'mp-149']
    # Si is computed, and is its own reference: formation energy 0; AuMg stops before any calculation (301).
    assert set(results['formation_energy_per_atom']) == {'mp_149'}
    assert results['formation_energy_per_atom']['mp_149'].value == pytest.approx(0.0, abs=1e-3)
    dft = {child.inputs.structure.label: child for child in node.called if child.process_label == 'DftWorkChain'}
    assert dft['au-mg'].exit_status == WorkflowFactory('hpcai.dft').exit_codes.ERROR_MISSING_PSEUDOPOTENTIAL.status
    # The structure the DFT ran on was made from the surrogate's needs_dft by hpcai.structures.select.
    creator = dft['mp-149'].inputs.structure.creator
    assert creator.process_label == 'select_structures' and creator.inputs.structures.uuid == needs_dft.uuid

    # The page's queries, on this graph.
    blocks = page_blocks()
    namespace = {}
    exec(compile(blocks['results'], f'{PAGE}:results', 'exec'), namespace)  # noqa: S102
    assert node.outputs.surrogate.classified_predictions.pk in {row.predictions for row in namespace['predictions']}
    assert all(row.models == (model.pk,) for row in namespace['predictions'] if row.surrogate is not None)
    namespace = {}
    exec(compile(blocks['surrogate_vs_dft'], f'{PAGE}:surrogate_vs_dft', 'exec'), namespace)  # noqa: S102
    rows = {row[0]: row for row in namespace['rows']}
    assert rows['mp-149'][3] == results['formation_energy_per_atom']['mp_149'].value
    predicted = node.outputs.surrogate.classified_predictions
    assert rows['mp-149'][1] == predicted.get_array('mean')[predicted.base.attributes.get('ids').index('mp-149')]
    assert 'au-mg' not in rows  # its DFT failed: no formation energy to compare with
    assert 'mp-149: surrogate' in capsys.readouterr().out

    from click.testing import CliRunner

    from aiida_hpcai.cli import cli

    output = CliRunner().invoke(cli, ['results', '--id', 'mp-149', '--id', 'no-such-id'])
    assert output.exit_code == 0, output.output
    assert f'ArrayData<{predicted.pk}>' in output.output and f'ModelData<{model.pk}>' in output.output
    assert 'no-such-id' in output.output
