"""The match discriminator: StructureMatcher labels, the classifier's training and calibration, its predictions,
and the training data from an EquiCSP generator (models layer and the release tool's discriminator-data)."""

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from aiida_hpcai.models import contract, program, release
from aiida_hpcai.models.checkpoint import load_checkpoint, sha256_file
from aiida_hpcai.models.discriminator import (
    MATCH_LABEL,
    RELIABILITY_FIGURE,
    DiscriminatorPredictor,
    expected_calibration_error,
    fit_temperature,
    group_split,
    label_samples,
    sample_and_label,
    sigmoid,
)
from aiida_hpcai.models.structure_io import StructureArrays, from_pymatgen, read_npz, write_npz
from tests.samples import synthetic_set

PAIRS = [(3, 8), (12, 8), (26, 16), (29, 16), (3, 16), (12, 16), (26, 8), (29, 8)]
TINY_TRAINING = {
    'architecture': 'discriminator',
    'target': MATCH_LABEL,
    'model_config': 'tiny',
    'epochs': 12,
    'batch_size': 4,
    'learning_rate': 5e-3,
    'warmup_fraction': 0.0,
    'patience': 50,
    'split': {'fractions': [0.5, 0.5, 0.0], 'seed': 0},
}


def rocksalt(a: float, species=('Na', 'Cl')) -> Structure:
    return Structure(Lattice.cubic(a), list(species) * 4, _ROCKSALT)


_ROCKSALT = [
    [0, 0, 0],
    [0.5, 0.5, 0.5],
    [0.5, 0.5, 0],
    [0, 0, 0.5],
    [0.5, 0, 0.5],
    [0, 0.5, 0],
    [0, 0.5, 0.5],
    [0.5, 0, 0],
]


def caesium_chloride(a: float, species=('Na', 'Cl')) -> Structure:
    return Structure(Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def labelled_samples(per_reference: int = 6, seed: int = 0) -> StructureArrays:
    """'Generated' AB cells for CsCl-type references: jittered CsCl cells (matches) and rhombohedral rock-salt
    or zinc-blende cells (other polymorphs); labels by StructureMatcher, ids <reference>#<k>."""
    rng = np.random.default_rng(seed)
    references, generated, ids = [], [], []
    for index, (a, b) in enumerate(PAIRS):
        reference = caesium_chloride(3.2, (a, b))
        for k in range(per_reference):
            if k % 2 == 0:
                frac = 0.5 + rng.normal(scale=0.02, size=3)
                sample = Structure(Lattice.cubic(3.2 * rng.uniform(0.97, 1.03)), [a, b], [[0, 0, 0], frac])
            else:
                fraction = 1.0 if k % 4 == 1 else 0.5  # rock salt, else zinc blende
                frac = np.full(3, 0.5 * fraction) + rng.normal(scale=0.02, size=3)
                lattice = Lattice.from_parameters(*[rng.uniform(3.7, 4.3)] * 3, 60, 60, 60)
                sample = Structure(lattice, [a, b], [[0, 0, 0], frac])
            references.append(reference)
            generated.append(sample)
            ids.append(f'r{index}#{k}')
    return from_pymatgen(generated, ids=ids, labels={MATCH_LABEL: label_samples(generated, references)})


# -- labels ----------------------------------------------------------------------------------------
def test_labels_a_structure_against_itself_its_supercell_and_another_polymorph():
    nacl = rocksalt(5.64)
    perturbed = nacl.copy()
    perturbed.perturb(0.05, min_distance=0.0)
    supercell = nacl.copy()
    supercell.make_supercell([1, 1, 2])
    primitive = nacl.get_primitive_structure()
    generated = [nacl, perturbed, supercell, primitive, caesium_chloride(3.3), None]
    labels = label_samples(generated, [nacl] * len(generated))
    np.testing.assert_array_equal(labels, [1, 1, 1, 1, 0, 0])
    # the tolerances are the CSP benchmark's, and can be overridden
    displaced = primitive.copy()
    displaced.translate_sites([1], [0.6, 0, 0], frac_coords=False)  # Cl 0.6 Angstrom off its site
    assert label_samples([displaced], [nacl]).tolist() == [1.0]
    assert label_samples([displaced], [nacl], stol=0.1).tolist() == [0.0]


def test_group_split_keeps_the_samples_of_a_reference_together():
    ids = [f'mp-{i}#{k}' for i in range(30) for k in range(4)]
    split = group_split(ids, (0.6, 0.2, 0.2), seed=3)
    assert sorted(sum(split.values(), [])) == sorted(ids)
    where = {i.split('#')[0]: name for name, members in split.items() for i in members}
    for name, members in split.items():
        assert all(where[i.split('#')[0]] == name for i in members)
    assert [len(split[name]) // 4 for name in ('train', 'val', 'test')] == [18, 6, 6]


# -- calibration -----------------------------------------------------------------------------------
def test_temperature_scaling_lowers_the_calibration_error_of_an_overconfident_classifier():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=1.5, size=8000)
    labels = (rng.random(8000) < sigmoid(true_logits)).astype(float)
    overconfident = 4.0 * true_logits  # the right ranking, four times too sure
    val, test = slice(0, 4000), slice(4000, None)
    temperature = fit_temperature(overconfident[val], labels[val])
    assert temperature == pytest.approx(4.0, rel=0.1)
    before = expected_calibration_error(sigmoid(overconfident[test]), labels[test])
    after = expected_calibration_error(sigmoid(overconfident[test] / temperature), labels[test])
    assert before > 0.1
    assert after < 0.03
    # a calibrated classifier keeps T near 1
    assert fit_temperature(true_logits[val], labels[val]) == pytest.approx(1.0, abs=0.1)


# -- training and prediction through the program -------------------------------------------------------
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('discriminator')
    arrays = labelled_samples()
    (root / 'train').mkdir()
    write_npz(arrays, root / 'train' / contract.STRUCTURES_FILE)
    (root / 'train' / contract.CONFIG_FILE).write_text(json.dumps(TINY_TRAINING))
    code = program.main(['train', '--input', str(root / 'train'), '--output', str(root / 'trained')])
    assert code == 0
    return root, arrays


def test_the_labels_of_the_toy_set_hold_both_classes():
    labels = labelled_samples().labels[MATCH_LABEL]
    assert 0.3 < labels.mean() < 0.7


def test_train_task_lowers_the_loss_and_writes_a_calibrated_model(trained):
    root, arrays = trained
    out = root / 'trained'
    metrics = json.loads((out / contract.METRICS_FILE).read_text())
    losses = [row['train_loss'] for row in metrics['history'][0]]
    assert np.mean(losses[-3:]) < 0.9 * losses[0]
    assert all('val_bce' in row for row in metrics['history'][0])
    checkpoint = load_checkpoint(out / contract.MODEL_FILE)
    assert checkpoint['architecture'] == 'discriminator' and checkpoint['target'] == MATCH_LABEL
    assert checkpoint['temperature'] == metrics['temperature'] > 0
    assert checkpoint['hyperparameters']['training']['loss'] == 'bce'
    val = metrics['val']
    assert val['n'] == len(arrays) // 2 and 0.0 <= val['ece'] <= 1.0
    # temperature scaling minimises the validation log loss, so it cannot be worse than T = 1
    assert val['log_loss'] <= val['uncalibrated']['log_loss'] + 1e-9
    metadata = json.loads((out / contract.METADATA_FILE).read_text())
    assert set(contract.METADATA_KEYS) <= set(metadata) and metadata['sha256'] == sha256_file(out / contract.MODEL_FILE)
    assert (out / RELIABILITY_FIGURE).read_bytes().startswith(b'\x89PNG')
    assert (out / contract.LEARNING_CURVE_FIGURE).is_file()


def test_predict_task_writes_calibrated_probabilities(trained):
    root, arrays = trained
    folder = root / 'predict'
    (folder / 'models').mkdir(parents=True)
    (folder / 'models' / 'd.pt').write_bytes((root / 'trained' / contract.MODEL_FILE).read_bytes())
    entry = contract.checkpoint_entry('models/d.pt', sha256_file(folder / 'models' / 'd.pt'))
    (folder / contract.CONFIG_FILE).write_text(json.dumps({contract.MODELS_KEY: [entry]}))
    write_npz(arrays, folder / contract.STRUCTURES_FILE)
    assert program.main(['predict', '--input', str(folder), '--output', str(folder / 'out')]) == 0
    with np.load(folder / 'out' / contract.PREDICTIONS_FILE) as result:
        probability, sigma, status = result['mean'], result['sigma'], result['status']
    assert set(status.tolist()) == {contract.STATUS_OK}
    assert np.all((probability > 0) & (probability < 1)) and np.all(np.isnan(sigma))  # one member: no spread
    checkpoint = load_checkpoint(folder / 'models' / 'd.pt')
    predictor = DiscriminatorPredictor([checkpoint])
    from aiida_hpcai.models.graph import graphs_from_arrays

    logits = predictor.logits(graphs_from_arrays(arrays)[0])[0]
    np.testing.assert_allclose(probability, sigmoid(logits / checkpoint['temperature']), rtol=1e-6)
    summary = json.loads((folder / 'out' / contract.SUMMARY_FILE).read_text())
    assert summary['target'] == MATCH_LABEL and summary['n_ok'] == len(arrays)


def test_probability_is_invariant_to_the_order_of_the_atoms(trained):
    root, _ = trained
    predictor = DiscriminatorPredictor([load_checkpoint(root / 'trained' / contract.MODEL_FILE)])
    structure = rocksalt(5.0, ('Li', 'O'))
    structure.perturb(0.1, min_distance=0.05)
    order = np.random.default_rng(1).permutation(len(structure))
    permuted = Structure(structure.lattice, [structure.species[i] for i in order], structure.frac_coords[order])
    result = predictor.predict(from_pymatgen([structure, permuted]))
    assert result['mean'][0] == pytest.approx(result['mean'][1], abs=1e-6)
    assert 0.0 < result['mean'][0] < 1.0


def test_train_task_refuses_a_label_that_is_not_zero_or_one(tmp_path):
    arrays = synthetic_set(6)
    arrays.labels[MATCH_LABEL] = np.linspace(0.0, 1.0, 6)
    write_npz(arrays, tmp_path / contract.STRUCTURES_FILE)
    (tmp_path / contract.CONFIG_FILE).write_text(json.dumps({**TINY_TRAINING, 'epochs': 1}))
    assert program.main(['train', '--input', str(tmp_path), '--output', str(tmp_path / 'out')]) == 2
    error = json.loads((tmp_path / 'out' / contract.ERROR_FILE).read_text())
    assert error['error'] == contract.MISSING_LABEL and 'must be 0 or 1' in error['message']


def test_a_regressor_refuses_the_classifier_loss(tmp_path):
    from aiida_hpcai.models.training import train_ensemble

    arrays = synthetic_set(6)
    split = {'train': np.arange(4), 'val': np.arange(4, 6), 'test': np.arange(0)}
    with pytest.raises(ValueError, match='trains with the loss l1'):
        train_ensemble(arrays, 'energy', split, tmp_path, 'tiny', {'loss': 'bce', 'progress': False})


# -- the training data from a generator --------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_generator(tmp_path_factory):
    """A tiny EquiCSP trained for two epochs on CsCl-type cells (its samples rarely match: both labels occur)."""
    from aiida_hpcai.models.equicsp.training import train_equicsp

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('generator')
    arrays = synthetic_set(20)
    training = {'epochs': 2, 'batch_size': 8, 'learning_rate': 5e-3, 'seed': 0, 'progress': False, 'modes': 'csp'}
    train_equicsp(arrays, {'train': np.arange(16), 'val': np.arange(16, 20)}, root, 'tiny', training)
    return root / contract.MODEL_FILE, arrays


def test_sample_and_label_labels_each_sample_against_its_own_reference(tiny_generator):
    from aiida_hpcai.models.equicsp.generation import EquiCSPSampler

    path, arrays = tiny_generator
    sampler = EquiCSPSampler(load_checkpoint(path))
    references = from_pymatgen(
        [arrays.to_pymatgen(0), arrays.to_pymatgen(1), rocksalt(4.2, ('Li', 'Na'))], ids=['a', 'b', 'unknown']
    )
    samples, stats = sample_and_label(sampler, references, samples_per_structure=3, steps=5, batch_size=4)
    assert stats['skipped_references'] == {'unknown element': 1}  # Na is not among the generator's elements
    assert stats['n_references'] == 2 and stats['n_samples'] == 6
    assert stats['n_written'] == len(samples) == 6 - sum(stats['invalid'].values()) - stats['refused_by_validation']
    assert set(samples.ids.tolist()) <= {f'{r}#{k}' for r in 'ab' for k in range(3)}
    owner = {'a': 0, 'b': 1}
    expected = label_samples(
        [samples.to_pymatgen(i) for i in range(len(samples))],
        [arrays.to_pymatgen(owner[i.split('#')[0]]) for i in samples.ids],
    )
    np.testing.assert_array_equal(samples.labels[MATCH_LABEL], expected)
    again, _ = sample_and_label(sampler, references, samples_per_structure=3, steps=5, batch_size=4)
    np.testing.assert_array_equal(again.positions, samples.positions)  # seeded


def test_release_discriminator_data_writes_a_labelled_set_and_its_record(tiny_generator, tmp_path, monkeypatch):
    path, arrays = tiny_generator
    split = {'train': np.arange(0, 14), 'val': np.arange(14, 17), 'test': np.arange(17, 20)}
    monkeypatch.setattr(release, 'csp_dataset', lambda name, data_dir=None: (arrays, split, {'name': name}))
    out = tmp_path / 'data.npz'
    argv = ['discriminator-data', '--generator', str(path), '--dataset', 'mp20', '--split', 'train', '--limit', '4']
    record = release.main([*argv, '--samples-per-composition', '2', '--steps', '4', '--no-progress', '--out', str(out)])
    samples = read_npz(out)
    assert record['n_references'] == 4 and record['n_samples'] == 8 and record['n_written'] == len(samples)
    groups = {i.split('#')[0] for i in samples.ids}
    assert groups <= set(arrays.ids[split['train']].tolist()) and len(groups) <= 4
    assert set(np.unique(samples.labels[MATCH_LABEL]).tolist()) <= {0.0, 1.0}
    saved = json.loads((tmp_path / 'data.npz.json').read_text())
    assert saved['generator']['sha256'] == sha256_file(path) and saved['steps'] == 4
    assert saved['dataset']['split'] == 'train' and 'discriminator-data' in saved['run']['command']
    more = tmp_path / 'more.npz'
    release.main([*argv, '--seed', '1', '--steps', '4', '--no-progress', '--exclude', str(out), '--out', str(more)])
    assert not groups & {i.split('#')[0] for i in read_npz(more).ids}  # the references of out are not sampled again
    assert json.loads((tmp_path / 'more.npz.json').read_text())['dataset']['excluded'] == ['data.npz']


# -- shipping --------------------------------------------------------------------------------------------
def test_release_ships_a_discriminator_with_the_record_of_its_samples(trained, tmp_path, monkeypatch):
    from aiida_hpcai.models import checkpoint as checkpoints

    root, _ = trained
    key = f'discriminator_{load_checkpoint(root / "trained" / contract.MODEL_FILE)["dataset"]["name"]}'
    monkeypatch.setattr(checkpoints, 'PRETRAINED_FILES', {**checkpoints.PRETRAINED_FILES, key: 'd.pt'})
    data_record = tmp_path / 'data.npz.json'
    data_record.write_text(json.dumps({'generator': {'sha256': 'abc'}, 'steps': 7, 'n_matched': 3}))
    argv = ['ship', '--run', str(root / 'trained'), '--training-device', 'tiny', '--trained-with', 'release; train']
    with pytest.raises(SystemExit, match='--data-record'):
        release.main([*argv, '--destination', str(tmp_path / 'shipped')])
    record = release.main(
        [*argv, '--destination', str(tmp_path / 'shipped'), '--data-record', str(data_record)]
        + ['--figures', str(tmp_path / 'figures')]
    )
    path = tmp_path / 'shipped' / 'd.pt'
    assert json.loads(path.with_suffix('.json').read_text()) == record and record['sha256'] == sha256_file(path)
    assert record['samples']['steps'] == 7 and record['target'] == MATCH_LABEL
    assert record['temperature'] == load_checkpoint(path)['temperature'] > 0
    assert set(record['metrics']) == {'val'} and 'uncalibrated' in record['metrics']['val']
    for name in ('reliability', 'learning_curve'):
        assert (tmp_path / 'figures' / f'{key}_{name}.png').read_bytes().startswith(b'\x89PNG')
        assert record['figures'][name].endswith(f'{key}_{name}.png')


def test_the_shipped_discriminator_gives_probabilities_invariant_to_the_order_of_the_atoms():
    from aiida_hpcai.models.checkpoint import DEFAULT_DISCRIMINATOR, pretrained_path, pretrained_record

    checkpoint = load_checkpoint(pretrained_path(DEFAULT_DISCRIMINATOR))
    record = pretrained_record(DEFAULT_DISCRIMINATOR)
    assert checkpoint['architecture'] == 'discriminator' and checkpoint['temperature'] == record['temperature']
    predictor = DiscriminatorPredictor([checkpoint])
    structure = rocksalt(4.2, ('Mg', 'O'))
    structure.perturb(0.1, min_distance=0.05)
    order = np.random.default_rng(2).permutation(len(structure))
    permuted = Structure(structure.lattice, [structure.species[i] for i in order], structure.frac_coords[order])
    result = predictor.predict(from_pymatgen([structure, permuted, caesium_chloride(2.6, ('Mg', 'O'))]))
    assert np.all((result['mean'] >= 0.0) & (result['mean'] <= 1.0))
    assert result['mean'][0] == pytest.approx(result['mean'][1], abs=1e-6)
