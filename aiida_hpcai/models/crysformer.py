"""Crysformer: an SE(3)-equivariant graph attention transformer for crystal properties.

The network follows the Equiformer recipe on periodic k-nearest-neighbour graphs
(:mod:`aiida_hpcai.models.graph`):

1. **Node embedding**: the fixed per-element k-hot vector (:mod:`.features`) through a linear
   layer gives the scalar (``0e``) channels; higher-order channels start at zero.
2. **Edge embedding** (seed paper eqs. 1-3): a Gaussian radial basis of ``|r_ij|`` times a smooth
   cosine envelope, the spherical harmonics ``Y(r_ij / |r_ij|)`` up to ``l_max``, and a message
   ``x_ij = W_src h_j + W_dst h_i`` from source and target node features (equivariant linears).
3. **Equivariant graph attention** (each block): ``x_ij`` is combined with ``Y`` in a depthwise
   tensor product whose weights come from an MLP of the radial basis. A linear map splits the
   result into (a) scalars that give, per head, ``a_ij = w_h . LeakyReLU(s_ij)``, normalised by a
   softmax over the neighbours of ``i`` (segment softmax, max-subtracted with
   ``scatter_reduce('amax')``), and (b) values that go through an equivariant gate
   (``e3nn.nn.Gate``) and a linear layer. Messages ``a_ij v_ij`` are summed onto ``i`` with
   ``index_add_``.
4. Pre-norm residual blocks: ``h += Attention(LN(h))``, ``h += FFN(LN(h))`` with an equivariant
   layer norm and a gated feed-forward network.
5. **Invariant readout**: the ``0e`` channels of the final normalised features through an MLP,
   averaged over the atoms of each structure (an intensive property, so a supercell gives the
   same prediction as its primitive cell).

Irreps carry parity: vectors are ``1o`` (odd), as the spherical harmonics of an edge vector are,
so the network is E(3)-equivariant (rotations and inversion). The seed paper writes its hidden
irreps as ``128x0e+64x1e+32x2e``; with ``1e`` the first block could not turn ``Y_1(r_ij)`` into
vector features at all, so we use ``1o`` at the same sizes.

Dropout acts on the attention weights and in the readout MLP; :func:`enable_mc_dropout` turns
it on at prediction time for MC-dropout uncertainty (everywhere, or in the readout only, whose
samples then share one pass of the blocks: :meth:`Crysformer.atom_scalars`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import e3nn
import torch
from e3nn import o3
from torch import nn

from .features import NUM_FEATURES, element_table
from .gate import BlockGate
from .graph import GraphBatch
from .irreps_blocks import Blocks, DepthwiseCoupling, check_bias_free, linear_blocks


@dataclasses.dataclass
class CrysformerConfig:
    """Architecture hyperparameters (all JSON-serialisable, stored in every checkpoint)."""

    irreps_hidden: str = '64x0e+16x1o+8x2e'
    num_blocks: int = 3
    num_heads: int = 4
    l_max: int = 2
    num_basis: int = 16
    cutoff: float = 8.0  # Angstrom: radial basis span and envelope cutoff
    radial_hidden: int = 32
    attention_channels: int = 8  # scalar channels per head that form the attention logit
    ffn_multiplier: int = 2
    readout_hidden: int = 64
    dropout: float = 0.1
    num_neighbours: int = 12
    # l > 0 layer-norm denominators get this fraction of the scalar channels' power added (see
    # EquivariantLayerNorm); 0.0 is the plain per-degree norm the first checkpoints were trained with
    norm_floor: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CrysformerConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f'unknown Crysformer config keys: {sorted(unknown)}')
        return cls(**values)


PRESETS: dict[str, CrysformerConfig] = {
    # tests: a forward pass on a handful of structures in milliseconds
    'tiny': CrysformerConfig(
        irreps_hidden='16x0e+4x1o+2x2e',
        num_blocks=2,
        num_heads=2,
        num_basis=8,
        radial_hidden=16,
        attention_channels=4,
        readout_hidden=16,
        dropout=0.1,
        norm_floor=0.01,
    ),
    # trainable on a 2-core CPU; also what the shipped pretrained models use
    'cpu': CrysformerConfig(norm_floor=0.01),
    # the seed paper's size: 128x0e+64x1o+32x2e, 6 blocks, 4 heads, l_max 2
    # (3.4M parameters, near the seed paper's ~3.5M; its FFN/radial widths are not given, ours
    # were chosen to reach that count)
    'paper': CrysformerConfig(
        irreps_hidden='128x0e+64x1o+32x2e',
        num_blocks=6,
        num_heads=4,
        num_basis=32,
        radial_hidden=128,
        attention_channels=32,
        ffn_multiplier=4,
        readout_hidden=256,
        dropout=0.1,
        norm_floor=0.01,
    ),
}


def resolve_config(config: str | dict | CrysformerConfig) -> CrysformerConfig:
    """A preset name, a dict (optionally with ``'preset'`` as base) or a config object."""
    if isinstance(config, CrysformerConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f'unknown model config {config!r}; presets: {sorted(PRESETS)}')
        return dataclasses.replace(PRESETS[config])
    values = dict(config)
    base = PRESETS[values.pop('preset')].to_dict() if 'preset' in values else {}
    base.update(values)
    return CrysformerConfig.from_dict(base)


# -- building blocks ----------------------------------------------------------------------------
class GaussianBasis(nn.Module):
    """Gaussians on [0, cutoff] times a cosine envelope that goes smoothly to 0 at the cutoff."""

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer('centres', torch.linspace(0.0, cutoff, num_basis))
        self.width = cutoff / (num_basis - 1)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        basis = torch.exp(-0.5 * ((distances[:, None] - self.centres) / self.width) ** 2)
        envelope = 0.5 * (torch.cos(math.pi * distances / self.cutoff) + 1.0) * (distances < self.cutoff)
        return basis * envelope[:, None]


class RadialMLP(nn.Module):
    def __init__(self, num_basis: int, hidden: int, num_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_basis, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, num_out)
        )

    def forward(self, basis: torch.Tensor) -> torch.Tensor:
        return self.net(basis)


class EquivariantLayerNorm(nn.Module):
    """Layer norm that respects rotations (Equiformer): scalars are centred and scaled; each
    l > 0 block is divided by the root-mean-square norm of its channels; learnable per-channel
    scales (and biases for scalars only).

    ``floor`` adds that fraction of the (centred) scalar power to every l > 0 denominator. Without
    it, an atom whose site symmetry forbids l > 0 features (a cubic site) has only rounding noise
    there, and each norm scales that noise up to O(1) (by up to ``1/sqrt(eps)``): the float32 and
    float64 predictions of the first shipped models differed by up to 0.03 eV/atom (formation
    energy) and 0.3 eV (band gap). With the floor the noise stays relative to the scalars, while
    genuine l > 0 features (comparable to the scalars) are normalised nearly as before.
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5, floor: float = 0.0):
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        if self.irreps[0].ir != o3.Irrep('0e'):
            raise ValueError(f'the layer norm expects the 0e channels first: {self.irreps}')
        self.eps = eps
        self.floor = floor
        self.weights = nn.ParameterList([nn.Parameter(torch.ones(mul)) for mul, _ in self.irreps])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(mul)) for mul, ir in self.irreps if ir.l == 0])

    def forward(self, blocks: Blocks) -> Blocks:
        out, bias_index, scalar_power = [], 0, 0.0
        for index, ((_, ir), block) in enumerate(zip(self.irreps, blocks)):
            if ir.l == 0:
                block = block - block.mean(dim=2, keepdim=True)
                norm = block.pow(2).mean(dim=(1, 2), keepdim=True)
                scalar_power = norm
            else:
                norm = block.pow(2).sum(dim=1, keepdim=True).mean(dim=2, keepdim=True)
                if self.floor:
                    norm = norm + self.floor * scalar_power
            block = block * torch.rsqrt(norm + self.eps) * self.weights[index]
            if ir.l == 0:
                block = block + self.biases[bias_index]
                bias_index += 1
            out.append(block)
        return out


def _gate(irreps_out: o3.Irreps) -> tuple[o3.Irreps, BlockGate]:
    """A Gate whose output is ``irreps_out``; returns (irreps its input must have, the gate)."""
    irreps_out = o3.Irreps(irreps_out).simplify()
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    if scalars != o3.Irreps(f'{scalars.num_irreps}x0e'):
        raise ValueError(f'Crysformer features carry even scalars (0e) only, got {irreps_out}')
    gate = BlockGate(scalars.num_irreps, o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0]))
    return gate.irreps_in, gate


def _depthwise_tensor_product(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, l_max: int) -> o3.TensorProduct:
    """Channel-wise ('uvu') tensor product with per-edge weights, as in NequIP / Equiformer."""
    irreps_mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out.l <= l_max:
                    instructions.append((i, j, len(irreps_mid), 'uvu', True))
                    irreps_mid.append((mul, ir_out))
    irreps_mid = o3.Irreps(irreps_mid)
    irreps_sorted, permutation, _ = irreps_mid.sort()
    instructions = [(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions]
    return o3.TensorProduct(
        irreps_in, irreps_sh, irreps_sorted, instructions, internal_weights=False, shared_weights=False
    )


def segment_softmax(logits: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``logits`` (n_edges, heads) over edges that share a segment (target atom)."""
    heads = logits.shape[1]
    maximum = torch.full((num_segments, heads), -torch.inf, dtype=logits.dtype, device=logits.device)
    maximum = maximum.scatter_reduce(0, segments[:, None].expand(-1, heads), logits, reduce='amax', include_self=True)
    weights = torch.exp(logits - maximum[segments].detach())
    total = torch.zeros((num_segments, heads), dtype=logits.dtype, device=logits.device)
    total.index_add_(0, segments, weights)
    return weights / total[segments].clamp_min(1e-16)


class GraphAttention(nn.Module):
    """Equivariant graph attention (one Equiformer-style attention layer).

    The e3nn modules hold the parameters; the forward pass evaluates them on per-irrep blocks
    (:mod:`.irreps_blocks`), which gives the same numbers faster."""

    def __init__(self, irreps: o3.Irreps, irreps_sh: o3.Irreps, config: CrysformerConfig):
        super().__init__()
        self.irreps = irreps
        self.num_heads = config.num_heads
        if any(mul % config.num_heads for mul, _ in irreps):
            raise ValueError(f'every multiplicity must be divisible by num_heads={config.num_heads}: {irreps}')
        self.linear_source = o3.Linear(irreps, irreps)
        self.linear_target = o3.Linear(irreps, irreps)
        self.tensor_product = _depthwise_tensor_product(irreps, irreps_sh, config.l_max)
        self.radial = RadialMLP(config.num_basis, config.radial_hidden, self.tensor_product.weight_numel)
        gate_in, self.gate = _gate(irreps)
        self.num_logit_scalars = config.num_heads * config.attention_channels
        self.linear_message = o3.Linear(
            self.tensor_product.irreps_out.simplify(), o3.Irreps(f'{self.num_logit_scalars}x0e') + gate_in
        )
        self.attention_vector = nn.Parameter(
            torch.randn(config.num_heads, config.attention_channels) / math.sqrt(config.attention_channels)
        )
        self.linear_value = o3.Linear(irreps, irreps)
        self.attention_dropout = nn.Dropout(config.dropout)
        self.linear_out = o3.Linear(irreps, irreps)
        for linear in (self.linear_source, self.linear_target, self.linear_message, self.linear_value, self.linear_out):
            check_bias_free(linear)
        # the message linear's first output block is the logit scalars, the rest the gate's input
        self.coupling = DepthwiseCoupling(self.tensor_product, {ins.i_in for ins in self.linear_message.instructions})

    def forward(self, blocks: Blocks, edge_sh, edge_basis, source, target) -> Blocks:
        num_nodes = blocks[0].shape[0]
        message = [
            from_source.index_select(0, source) + from_target.index_select(0, target)
            for from_source, from_target in zip(
                linear_blocks(self.linear_source, blocks), linear_blocks(self.linear_target, blocks)
            )
        ]
        coupled = self.coupling(message, edge_sh, self.radial(edge_basis))
        logit_scalars, *gate_in = linear_blocks(self.linear_message, coupled)
        logit_scalars = logit_scalars.reshape(-1, self.num_heads, self.attention_vector.shape[1])
        logits = (nn.functional.leaky_relu(logit_scalars, 0.2) * self.attention_vector).sum(dim=-1)
        attention = self.attention_dropout(segment_softmax(logits, target, num_nodes))
        values = linear_blocks(self.linear_value, self.gate(gate_in))
        # each head weights its contiguous group of channels of every irrep
        weighted = [
            (block.reshape(*block.shape[:2], self.num_heads, -1) * attention[:, None, :, None]).reshape(block.shape)
            for block in values
        ]
        aggregated = [block.new_zeros(num_nodes, *block.shape[1:]).index_add_(0, target, block) for block in weighted]
        return linear_blocks(self.linear_out, aggregated)


class FeedForward(nn.Module):
    def __init__(self, irreps: o3.Irreps, multiplier: int):
        super().__init__()
        wide = o3.Irreps([(mul * multiplier, ir) for mul, ir in irreps])
        gate_in, self.gate = _gate(wide)
        self.linear_in = o3.Linear(irreps, gate_in)
        self.linear_out = o3.Linear(wide, irreps)
        check_bias_free(self.linear_in)
        check_bias_free(self.linear_out)

    def forward(self, blocks: Blocks) -> Blocks:
        return linear_blocks(self.linear_out, self.gate(linear_blocks(self.linear_in, blocks)))


class TransformerBlock(nn.Module):
    def __init__(self, irreps: o3.Irreps, irreps_sh: o3.Irreps, config: CrysformerConfig):
        super().__init__()
        self.norm_attention = EquivariantLayerNorm(irreps, floor=config.norm_floor)
        self.attention = GraphAttention(irreps, irreps_sh, config)
        self.norm_ffn = EquivariantLayerNorm(irreps, floor=config.norm_floor)
        self.ffn = FeedForward(irreps, config.ffn_multiplier)

    def forward(self, blocks: Blocks, edge_sh, edge_basis, source, target) -> Blocks:
        update = self.attention(self.norm_attention(blocks), edge_sh, edge_basis, source, target)
        blocks = [block + change for block, change in zip(blocks, update)]
        return [block + change for block, change in zip(blocks, self.ffn(self.norm_ffn(blocks)))]


@contextlib.contextmanager
def _unoptimised_e3nn_codegen():
    """e3nn optimises the einsums of the code it generates for every layer while building it (more
    than half of the build time); Crysformer evaluates its layers on blocks (:mod:`.irreps_blocks`)
    and never runs that code, so it is built plain. Parameters and their initial values are unchanged."""
    saved = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(optimize_einsums=False)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(**saved)


class Crysformer(nn.Module):
    """Predicts one intensive scalar per structure (in the units the caller standardised to)."""

    def __init__(self, config: str | dict | CrysformerConfig = 'cpu'):
        super().__init__()
        with _unoptimised_e3nn_codegen():
            self._build(resolve_config(config))

    def _build(self, config: CrysformerConfig) -> None:
        self.config = config
        irreps = o3.Irreps(self.config.irreps_hidden).simplify()
        if any(ir.l > self.config.l_max for _, ir in irreps):
            raise ValueError('irreps_hidden has orders above l_max')
        self.irreps = irreps
        self.irreps_sh = o3.Irreps.spherical_harmonics(self.config.l_max)
        self.num_scalars = sum(mul for mul, ir in irreps if ir == o3.Irrep('0e'))
        self.register_buffer('element_features', torch.from_numpy(element_table()), persistent=False)
        self.embedding = nn.Linear(NUM_FEATURES, self.num_scalars)
        self.basis = GaussianBasis(self.config.num_basis, self.config.cutoff)
        self.blocks = nn.ModuleList(
            TransformerBlock(irreps, self.irreps_sh, self.config) for _ in range(self.config.num_blocks)
        )
        self.norm_out = EquivariantLayerNorm(irreps, floor=config.norm_floor)
        hidden = self.config.readout_hidden
        self.readout = nn.Sequential(
            nn.Linear(self.num_scalars, hidden), nn.SiLU(), nn.Dropout(self.config.dropout), nn.Linear(hidden, 1)
        )
        # which block of the (sorted, simplified) features holds the 0e channels
        self.scalar_block = next(i for i, (_, ir) in enumerate(irreps) if ir == o3.Irrep('0e'))

    @property
    def max_atomic_number(self) -> int:
        return self.element_features.shape[0] - 1

    def forward(self, graph: GraphBatch) -> torch.Tensor:
        return self.readout_mean(self.atom_scalars(graph), graph)

    def atom_scalars(self, graph: GraphBatch) -> torch.Tensor:
        """The normalised ``0e`` channels of the last block, ``(atoms, channels)``: all the readout reads."""
        vectors = graph.vectors
        distances = vectors.norm(dim=1)
        edge_sh = o3.spherical_harmonics(self.irreps_sh, vectors, normalize=True, normalization='component')
        edge_basis = self.basis(distances)
        scalars = self.embedding(self.element_features[graph.numbers].to(vectors.dtype))
        features = [
            scalars.unsqueeze(1) if i == self.scalar_block else scalars.new_zeros(len(scalars), ir.dim, mul)
            for i, (mul, ir) in enumerate(self.irreps)
        ]
        for block in self.blocks:
            features = block(features, edge_sh, edge_basis, graph.source, graph.target)
        return self.norm_out(features)[self.scalar_block].squeeze(1)

    def readout_mean(self, atom_scalars: torch.Tensor, graph: GraphBatch) -> torch.Tensor:
        """The readout MLP per atom, averaged over each structure's atoms."""
        per_atom = self.readout(atom_scalars).squeeze(-1)
        total = torch.zeros(graph.num_graphs, dtype=per_atom.dtype, device=per_atom.device).index_add_(
            0, graph.batch, per_atom
        )
        counts = torch.bincount(graph.batch, minlength=graph.num_graphs).clamp_min(1)
        return total / counts

    def blocks_to_freeze(self, count: int) -> list[nn.Module]:
        """The embedding and the first ``count`` blocks (what fine-tuning may keep fixed)."""
        return [self.embedding, *self.blocks[:count]] if count > 0 else []


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def enable_mc_dropout(model: nn.Module, enabled: bool = True, readout_only: bool = False) -> None:
    """Switch dropout layers on (MC dropout) while the rest stays in evaluation mode; with
    ``readout_only`` only the readout MLP's dropout, so that samples share one pass of the blocks."""
    model.eval()
    if enabled:
        for module in (model.readout if readout_only else model).modules():
            if isinstance(module, nn.Dropout):
                module.train()
