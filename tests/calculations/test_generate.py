"""``hpcai.generate``: a tiny EquiCSP trained by ``hpcai.train`` samples crystals through the real CalcJob."""

import collections
import json
import pathlib

import numpy as np
import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory, ParserFactory
from pymatgen.core import Composition

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models import contract
from aiida_hpcai.models.equicsp.generation import INVALID_REASONS
from tests.generate_helpers import OPTIONS, model_program_code, train_tiny_equicsp

GenerateCalculation = CalculationFactory('hpcai.generate')


@pytest.fixture(scope='module')
def code(aiida_profile, tmp_path_factory):
    return model_program_code(str(tmp_path_factory.mktemp('generate_work')))


@pytest.fixture(scope='module')
def model(code):
    return train_tiny_equicsp(code).outputs.model


def _generate(code, model, parameters, **inputs):
    return run_get_node(
        GenerateCalculation,
        code=code,
        model=model,
        parameters=orm.Dict(parameters),
        metadata={'options': OPTIONS},
        **inputs,
    )[1]


def _all_ids(structures: StructureSet) -> list[str]:
    return sorted(structures.ids + [row['id'] for row in structures.get_skipped()])


def test_the_trained_model_is_a_generator(model):
    assert model.architecture == 'equicsp' and model.target is None


def test_the_job_reads_its_config_and_the_checkpoint(code, model):
    parameters = {'mode': 'abinitio', 'n_samples': 5, 'n_strategy': 'uniform', 'seed': 2}
    process = instantiate_process(
        get_manager().get_runner(), GenerateCalculation, code=code, model=model, parameters=orm.Dict(parameters)
    )
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        config = json.loads(pathlib.Path(folder.get_abs_path(contract.CONFIG_FILE)).read_text())
    # the checkpoint is copied from the node's repository, not stored again; there are no input structures
    assert calcinfo.local_copy_list == [(model.uuid, model.filename, 'models/model.pt')]
    assert config == {
        **parameters,
        'models': [{'file': 'models/model.pt', 'sha256': model.sha256}],
        'device': 'cpu',
    }
    assert calcinfo.codes_info[0].cmdline_params[0] == 'generate'


def test_csp(code, model):
    parameters = {'mode': 'csp', 'compositions': {'LiO': 2, 'MgS': 1}, 'steps': 10, 'seed': 3, 'batch_size': 2}
    node = _generate(code, model, parameters)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    structures, summary = node.outputs.structures, node.outputs.summary.get_dict()
    assert _all_ids(structures) == ['LiO#0', 'LiO#1', 'MgS#0']
    assert (summary['mode'], summary['seed'], summary['steps'], summary['n_requested']) == ('csp', 3, 10, 3)
    assert (summary['n_valid'], summary['n_invalid']) == (structures.count, len(structures.get_skipped()))
    attributes = structures.base.attributes
    assert (attributes.get('mode'), attributes.get('seed'), attributes.get('steps')) == ('csp', 3, 10)
    for row in structures.get_skipped():  # a sample that is no crystal says why
        assert row['reason'] in INVALID_REASONS and row['detail']
    for identifier, crystal in zip(structures.ids, structures):  # read back from the stored node's repository
        assert crystal.composition == Composition(identifier.split('#')[0]) and crystal.volume > 0
    assert model.uuid == node.inputs.model.uuid


def test_abinitio(code, model):
    parameters = {'mode': 'abinitio', 'n_samples': 4, 'n_strategy': 'hybrid', 'switch': 2, 'steps': 8, 'seed': 1}
    node = _generate(code, model, parameters, device=orm.Str('cpu'))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    structures, summary = node.outputs.structures, node.outputs.summary.get_dict()
    assert (summary['mode'], summary['n_strategy'], summary['n_requested']) == ('abinitio', 'hybrid', 4)
    ids = _all_ids(structures)
    assert len(ids) == 4 and all('#' in identifier for identifier in ids)
    # ids count per formula from 0
    by_formula = collections.defaultdict(list)
    for identifier in ids:
        formula, k = identifier.split('#')
        by_formula[formula].append(int(k))
    assert all(sorted(ks) == list(range(len(ks))) for ks in by_formula.values())
    assert set(structures.elements) <= {'Li', 'O', 'Mg', 'S', 'Fe', 'Cu'}
    assert structures.base.attributes.get('mode') == 'abinitio'


def test_abinitio_within_elements(code, model):
    parameters = {'mode': 'abinitio', 'n_samples': 4, 'steps': 6, 'seed': 1, 'elements': ['Li', 'O']}
    node = _generate(code, model, parameters)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    summary = node.outputs.summary.get_dict()
    assert (summary['elements'], summary['required_elements']) == (['Li', 'O'], ['Li', 'O'])
    formulae = [identifier.split('#')[0] for identifier in _all_ids(node.outputs.structures)]
    assert len(formulae) == 4 and all(Composition(f).chemical_system == 'Li-O' for f in formulae), formulae


@pytest.mark.parametrize('key', ['elements', 'required_elements'])
def test_an_element_the_model_does_not_know_is_an_exit_code(code, model, key):
    node = _generate(code, model, {'mode': 'abinitio', 'n_samples': 1, 'steps': 2, key: ['Na']})
    assert node.exit_status == GenerateCalculation.exit_codes['ERROR_UNKNOWN_ELEMENT'].status
    assert 'Na' in node.exit_message and 'structures' not in node.outputs


@pytest.mark.parametrize(
    'compositions, exit_label',
    [({'NaCl': 1}, 'ERROR_UNKNOWN_ELEMENT'), ({'Li2O2': 1}, 'ERROR_TOO_MANY_ATOMS')],
)
def test_what_the_model_cannot_do_is_an_exit_code(code, model, compositions, exit_label):
    node = _generate(code, model, {'mode': 'csp', 'compositions': compositions, 'steps': 2})
    assert node.exit_status == GenerateCalculation.exit_codes[exit_label].status
    assert next(iter(compositions)) in node.exit_message
    assert 'structures' not in node.outputs


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'mode': 'csp', 'compositions': {'LiO': 0}}, 'zero samples asked'),
        ({'mode': 'abinitio', 'n_samples': 0}, 'zero samples asked'),
        ({'mode': 'sideways', 'n_samples': 2}, '`mode` must be one of'),
        ({'compositions': {'LiO': 1}}, '`mode` must be one of'),
        ({'mode': 'csp', 'compositions': {'LiO': 1}, 'n_samples': 3}, "do not apply to mode 'csp'"),
        ({'mode': 'csp', 'compositions': {'LiO': 1}, 'temperature': 3}, 'unknown parameter'),
        ({'mode': 'csp', 'compositions': {'fe2o3': 1}}, "cannot read the formula 'fe2o3'"),
        ({'mode': 'csp', 'compositions': {'LiO0.5': 1}}, 'whole numbers of atoms'),
        ({'mode': 'csp', 'compositions': {'LiO': 1.5}}, 'whole number >= 0'),
        ({'mode': 'csp', 'compositions': {}}, 'must map formulae'),
        ({'mode': 'abinitio', 'n_samples': 2, 'n_strategy': 'poisson'}, '`n_strategy` must be one of'),
        ({'mode': 'abinitio', 'n_samples': 2, 'switch': 1}, 'only to `n_strategy` hybrid'),
        ({'mode': 'abinitio', 'n_samples': 2, 'steps': 0}, '`steps` must be an integer >= 1'),
        ({'mode': 'abinitio', 'n_samples': 2, 'seed': -1}, '`seed` must be an integer >= 0'),
        ({'mode': 'abinitio', 'n_samples': 2, 'batch_size': True}, '`batch_size` must be an integer'),
        ({'mode': 'abinitio', 'n_samples': 2, 'step_lr': 0}, '`step_lr` must be a positive number'),
        ({'mode': 'abinitio', 'n_samples': 2, 'precision': 'half'}, '`precision` must be one of'),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': []}, '`elements` is empty'),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': 'Fe,O'}, '`elements` must be a list of element symbols'),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': ['Fe', 'Xx']}, "'Xx' is not an element symbol"),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': ['O', 'O']}, 'names an element twice'),
        ({'mode': 'abinitio', 'n_samples': 2, 'elements': ['Li'], 'required_elements': ['O']}, 'are not among'),
        ({'mode': 'csp', 'compositions': {'LiO': 1}, 'elements': ['Li', 'O']}, "do not apply to mode 'csp'"),
    ],
)
def test_parameters_are_refused_before_a_job_runs(code, model, parameters, message):
    with pytest.raises(ValueError, match=message):
        _generate(code, model, parameters)


def test_a_property_model_cannot_generate(code):
    crysformer = ModelData(b'not loaded', filename='model.pt', architecture='crysformer', target='band_gap').store()
    with pytest.raises(ValueError, match="is a 'crysformer' model, which cannot generate; architectures that can"):
        _generate(code, crysformer, {'mode': 'abinitio', 'n_samples': 1})


def test_nan_samples_are_an_exit_code_and_the_others_are_kept(aiida_localhost, model, tmp_path, monkeypatch):
    """The program's own output when every crystal holding Mg goes NaN, parsed as the job's retrieved files."""
    from aiida_hpcai.models import program
    from aiida_hpcai.models.equicsp.generation import EquiCSPSampler
    from tests.parsers.test_model_parsers import _calcjob_node

    sample = EquiCSPSampler.sample

    def nan_for_magnesium(self, *args, **kwargs):
        crystals = sample(self, *args, **kwargs)
        for crystal in crystals:
            if 12 in crystal['numbers']:
                crystal['frac'] = np.full_like(crystal['frac'], np.nan)
        return crystals

    monkeypatch.setattr(EquiCSPSampler, 'sample', nan_for_magnesium)
    (tmp_path / 'in' / 'models').mkdir(parents=True)
    (tmp_path / 'in' / 'models' / 'model.pt').write_bytes(model.get_content(mode='rb'))
    config = {'models': [{'file': 'models/model.pt', 'sha256': model.sha256}], 'mode': 'csp', 'steps': 4}
    config['compositions'] = {'LiO': 2, 'MgS': 2}
    (tmp_path / 'in' / contract.CONFIG_FILE).write_text(json.dumps(config))
    out = tmp_path / 'out'
    assert program.main(['generate', '--input', str(tmp_path / 'in'), '--output', str(out)]) != 0

    retrieved = {name: (out / name).read_bytes() for name in GenerateCalculation.RETRIEVED_OUTPUTS}
    node = _calcjob_node('hpcai.generate', aiida_localhost, {'model': model}, retrieved)
    results, calcfunction = ParserFactory('hpcai.generate').parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=str(out)
    )
    assert calcfunction.exit_status == GenerateCalculation.exit_codes.ERROR_NAN_OUTPUT.status
    assert 'MgS#0' in calcfunction.exit_message
    structures = results['structures']
    assert sorted(row['id'] for row in structures.get_skipped() if row['reason'] == 'nan') == ['MgS#0', 'MgS#1']
    assert _all_ids(structures) == ['LiO#0', 'LiO#1', 'MgS#0', 'MgS#1']  # the LiO samples kept, valid or not
    assert results['summary']['invalid_reasons']['nan'] == 2
