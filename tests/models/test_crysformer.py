"""Crysformer: symmetry of its predictions, gradient flow, features, configs."""

import numpy as np
import pytest
import torch
from e3nn import o3
from e3nn.nn import Gate

from aiida_hpcai.models import features
from aiida_hpcai.models.crysformer import (
    PRESETS,
    Crysformer,
    count_parameters,
    enable_mc_dropout,
    resolve_config,
    segment_softmax,
)
from aiida_hpcai.models.graph import collate, neighbour_graph
from aiida_hpcai.models.irreps_blocks import join_blocks, split_blocks

CELL = np.array([[4.1, 0.2, 0.1], [0.3, 5.0, 0.2], [0.1, 0.4, 6.2]])
NUMBERS = np.array([8, 26, 26, 3])
POSITIONS = np.random.default_rng(0).random((4, 3)) @ CELL


def _rotation(seed=1):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture(scope='module')
def model64():
    torch.manual_seed(0)
    model = Crysformer('tiny').double().eval()
    return model


def _predict(model, numbers, positions, cell):
    graph = neighbour_graph(numbers, positions, cell)
    with torch.no_grad():
        return model(collate([graph], dtype=torch.float64)).item()


def test_invariant_to_rotation_translation_permutation_and_supercell(model64):
    reference = _predict(model64, NUMBERS, POSITIONS, CELL)
    rotation = _rotation()
    assert _predict(model64, NUMBERS, POSITIONS @ rotation.T, CELL @ rotation.T) == pytest.approx(reference, abs=1e-5)
    # an improper rotation (with inversion) as well
    assert _predict(model64, NUMBERS, -POSITIONS @ rotation.T, -CELL @ rotation.T) == pytest.approx(reference, abs=1e-5)
    assert _predict(model64, NUMBERS, POSITIONS + [1.7, -3.1, 0.4], CELL) == pytest.approx(reference, abs=1e-5)
    order = [2, 0, 3, 1]
    assert _predict(model64, NUMBERS[order], POSITIONS[order], CELL) == pytest.approx(reference, abs=1e-5)
    supercell = CELL.copy()
    supercell[0] *= 2
    doubled = np.concatenate([POSITIONS, POSITIONS + CELL[0]])
    assert _predict(model64, np.tile(NUMBERS, 2), doubled, supercell) == pytest.approx(reference, abs=1e-5)
    # another choice of unit cell for the same lattice: c' = c + a
    sheared = CELL.copy()
    sheared[2] += CELL[0]
    assert _predict(model64, NUMBERS, POSITIONS, sheared) == pytest.approx(reference, abs=1e-5)


def test_prediction_depends_on_structure(model64):
    reference = _predict(model64, NUMBERS, POSITIONS, CELL)
    assert _predict(model64, NUMBERS, POSITIONS, CELL * 1.05) != pytest.approx(reference, abs=1e-6)
    assert _predict(model64, [8, 26, 27, 3], POSITIONS, CELL) != pytest.approx(reference, abs=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Crysformer('tiny').double()
    model.train()
    graphs = [neighbour_graph(NUMBERS, POSITIONS, CELL), neighbour_graph([84], [[0, 0, 0]], np.eye(3) * 3.35)]
    loss = model(collate(graphs, dtype=torch.float64)).pow(2).sum()
    loss.backward()
    # Structurally inert, and only these: the first block's l > 0 layer-norm scales (node
    # features start as pure scalars, so their input is zero) and the l > 0 scales of the last
    # FFN norm and of the output norm (the readout reads only the 0e channels).
    last = len(model.blocks) - 1
    inert = {
        name
        for name, _ in model.named_parameters()
        if not name.endswith('.0')
        and (
            name.startswith(
                ('blocks.0.norm_attention.weights.', f'blocks.{last}.norm_ffn.weights.', 'norm_out.weights.')
            )
        )
    }
    assert len(inert) == 6
    active = [(name, p) for name, p in model.named_parameters() if name not in inert]
    assert not [name for name, p in active if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not [name for name, p in active if p.grad.abs().max() == 0]


def test_norm_floor_keeps_float32_close_to_float64_on_a_cubic_site():
    """Rock salt: every site is cubic, so l > 0 features are rounding noise; the plain per-degree norm
    amplifies that noise in float32 (1e-6 to 1e-5 here for these seeds), the floored norm does not."""
    cell = np.eye(3) * 5.6
    fractions = np.array(
        [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
    )
    graph = neighbour_graph(np.array([11] * 4 + [17] * 4), fractions @ cell, cell)
    assert PRESETS['cpu'].norm_floor > 0
    for seed in range(3):
        torch.manual_seed(seed)
        model = Crysformer('cpu').eval()
        with torch.no_grad():
            single = model(collate([graph])).item()
            double = model.double()(collate([graph], dtype=torch.float64)).item()
        assert abs(single - double) < 3e-7, seed


def test_mc_dropout_samples_differ_and_eval_is_deterministic():
    torch.manual_seed(0)
    model = Crysformer('tiny')
    batch = collate([neighbour_graph(NUMBERS, POSITIONS, CELL)])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))
        enable_mc_dropout(model)
        samples = torch.stack([model(batch) for _ in range(8)])
        assert samples.std() > 0
        # readout only: the blocks are deterministic, the readout's samples differ
        enable_mc_dropout(model, readout_only=True)
        atom_scalars = model.atom_scalars(batch)
        assert torch.equal(atom_scalars, model.atom_scalars(batch))
        readout_samples = torch.stack([model.readout_mean(atom_scalars, batch) for _ in range(8)])
        assert readout_samples.std() > 0
        model.eval()
        torch.testing.assert_close(model.readout_mean(model.atom_scalars(batch), batch), model(batch))
    assert not model.training


def test_segment_softmax_normalises_per_segment_and_is_stable():
    logits = torch.tensor([[1000.0, 0.0], [1001.0, 1.0], [-5.0, 3.0]])
    segments = torch.tensor([0, 0, 1])
    weights = segment_softmax(logits, segments, 2)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights[:2].sum(0), torch.ones(2))
    torch.testing.assert_close(weights[2], torch.ones(2))
    torch.testing.assert_close(weights[1, 0], torch.sigmoid(torch.tensor(1.0)))


def test_presets_and_parameter_counts():
    counts = {name: count_parameters(Crysformer(name)) for name in PRESETS}
    assert counts['tiny'] < counts['cpu'] < counts['paper']
    assert 2_000_000 < counts['paper'] < 5_000_000
    config = resolve_config({'preset': 'tiny', 'num_blocks': 3})
    assert config.num_blocks == 3 and config.irreps_hidden == PRESETS['tiny'].irreps_hidden
    with pytest.raises(ValueError):
        resolve_config({'not_an_option': 1})
    with pytest.raises(ValueError):
        resolve_config('huge')


def test_shipped_element_table_matches_pymatgen():
    shipped = np.load(features.TABLE_FILE)
    np.testing.assert_array_equal(shipped, features.build_element_table())
    # every element has exactly one bin set in each of the nine segments
    assert np.all(shipped[1:].sum(axis=1) == len(features.SEGMENTS))
    assert shipped.shape == (features.MAX_ATOMIC_NUMBER + 1, features.NUM_FEATURES)
    with pytest.raises(ValueError):
        features.element_features([0])


@pytest.mark.parametrize('preset', ['tiny', 'cpu', 'paper'])
def test_block_gate_matches_e3nn_gate(preset):
    """The gate evaluated on blocks gives e3nn's Gate output (same activations, same layout)."""
    torch.manual_seed(0)
    model = Crysformer(preset)
    block = model.blocks[0]
    for module in (block.attention.gate, block.ffn.gate):
        reference = Gate(
            module.irreps_scalars, [torch.nn.functional.silu], module.irreps_gates, [torch.sigmoid], module.irreps_gated
        )
        assert module.irreps_in == reference.irreps_in and module.irreps_out == reference.irreps_out
        inputs = torch.randn(40, module.irreps_in.dim)
        outputs = join_blocks(module(split_blocks(inputs, module.irreps_in)))
        torch.testing.assert_close(outputs, reference(inputs), atol=1e-6, rtol=1e-6)


def _e3nn_attention(attention, features, edge_sh, edge_basis, source, target):
    """Graph attention written with the e3nn modules' own forward passes on flat features."""
    message = attention.linear_source(features)[source] + attention.linear_target(features)[target]
    message = attention.tensor_product(message, edge_sh, attention.radial(edge_basis))
    message = attention.linear_message(message)
    logit_scalars = message[:, : attention.num_logit_scalars].reshape(
        -1, attention.num_heads, attention.attention_vector.shape[1]
    )
    logits = (torch.nn.functional.leaky_relu(logit_scalars, 0.2) * attention.attention_vector).sum(dim=-1)
    weights = segment_softmax(logits, target, features.shape[0])
    gate = attention.gate
    reference_gate = Gate(
        gate.irreps_scalars, [torch.nn.functional.silu], gate.irreps_gates, [torch.sigmoid], gate.irreps_gated
    ).to(features.dtype)
    values = attention.linear_value(reference_gate(message[:, attention.num_logit_scalars :]))
    # head of each component: contiguous channel groups of every irrep
    heads = torch.cat(
        [(torch.arange(mul) * attention.num_heads // mul).repeat_interleave(ir.dim) for mul, ir in attention.irreps]
    )
    values = values * weights[:, heads]
    return attention.linear_out(torch.zeros_like(features).index_add_(0, target, values))


@pytest.mark.parametrize('preset', ['tiny', 'cpu'])
def test_block_evaluation_matches_e3nn_modules(preset):
    """Attention and feed-forward layers evaluated on blocks (the fast path) give what e3nn's
    tensor product and linears give for the same parameters, values and gradients (to the
    precision of the float32 Clebsch-Gordan tables both build)."""
    torch.manual_seed(0)
    model = Crysformer(preset).double().eval()
    layer = model.blocks[0]
    graph = collate(
        [neighbour_graph(NUMBERS, POSITIONS, CELL), neighbour_graph([84], [[0, 0, 0]], np.eye(3) * 3.35)],
        dtype=torch.float64,
    )
    edge_sh = o3.spherical_harmonics(model.irreps_sh, graph.vectors, normalize=True, normalization='component')
    edge_basis = model.basis(graph.vectors.norm(dim=1))
    features = torch.randn(len(graph.numbers), model.irreps.dim, dtype=torch.float64, requires_grad=True)

    fast = join_blocks(
        layer.attention(split_blocks(features, model.irreps), edge_sh, edge_basis, graph.source, graph.target)
    )
    reference = _e3nn_attention(layer.attention, features, edge_sh, edge_basis, graph.source, graph.target)
    torch.testing.assert_close(fast, reference, atol=1e-7, rtol=1e-6)
    weights = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * weights).sum(), [features, layer.attention.radial.net[0].weight])
    reference_grads = torch.autograd.grad((reference * weights).sum(), [features, layer.attention.radial.net[0].weight])
    for fast_grad, reference_grad in zip(fast_grads, reference_grads):
        torch.testing.assert_close(fast_grad, reference_grad, atol=1e-7, rtol=1e-6)

    ffn = layer.ffn
    reference_gate = Gate(
        ffn.gate.irreps_scalars,
        [torch.nn.functional.silu],
        ffn.gate.irreps_gates,
        [torch.sigmoid],
        ffn.gate.irreps_gated,
    ).double()
    torch.testing.assert_close(
        join_blocks(ffn(split_blocks(features, model.irreps))),
        ffn.linear_out(reference_gate(ffn.linear_in(features))),
        atol=1e-7,
        rtol=1e-6,
    )
