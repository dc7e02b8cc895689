"""The EquiCSP denoiser: a periodic E(3)-invariant/equivariant message-passing network (CSPNet-style).

Inputs per crystal: the Gram matrix ``G = L L^T`` of the (noisy) lattice, the time ``t``; per atom:
fractional coordinates ``F`` and a type vector over the model's K elements (a clean one-hot when the
composition is given, CSP; a noisy one otherwise, ab initio) with a per-crystal flag saying which.
Outputs: ``eps`` of the six lattice parameters (B, 6), the coordinates' score (n, 3), ``eps`` of the
type vectors (n, K).

Symmetries, each by construction:

- **rotations and reflections** of the Cartesian frame: the lattice enters only through ``G``;
- **periodic translations**: only differences ``d_ij = F_j - F_i`` enter, through a Fourier
  embedding ``sin/cos(2 pi k d)`` with integer ``k`` (so ``d`` and ``d + 1`` look alike);
- **atom permutations**: a fully connected graph inside each crystal, sums and means over atoms;
- **permutations of the lattice axes** (what EquiCSP adds over DiffCSP): each axis gets its own
  token from its own coordinate difference, length and opposite angle, each ordered pair of axes a
  pair token (``d_a +- d_b`` and the angle between them), all through shared weights and summed over
  axes, a DeepSets over the three axes. The per-axis outputs (score components, each axis's lattice
  ``eps``) come from the same shared heads applied to each axis's tokens, so permuting the axes of
  the input permutes the output alike. EquiCSP's code encourages this with an extra loss term on
  randomly permuted copies; here it holds exactly, so that term would be zero and is left out.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..diffusion import segment_mean

# the ordered pairs of axes, and for each axis the two pairs of the other two axes
_PAIRS = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
_OPPOSITE_PAIRS = [[_PAIRS.index((1, 2)), _PAIRS.index((2, 1))], [_PAIRS.index((0, 2)), _PAIRS.index((2, 0))],
                   [_PAIRS.index((0, 1)), _PAIRS.index((1, 0))]]  # fmt: skip


class JsonOptions:
    """``to_dict``/``from_dict`` of a dataclass of JSON values; ``from_dict`` refuses unknown keys."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f'unknown {cls.__name__} keys: {sorted(unknown)}')
        return cls(**values)


@dataclasses.dataclass
class EquiCSPConfig(JsonOptions):
    """Architecture and diffusion hyperparameters (JSON-serialisable, stored in every checkpoint)."""

    hidden_dim: int = 128
    num_layers: int = 4
    num_freqs: int = 16  # Fourier frequencies k = 1..num_freqs of the coordinate differences
    time_dim: int = 64
    timesteps: int = 1000
    sigma_begin: float = 0.005  # wrapped-normal widths of the coordinates' noise (DiffCSP)
    sigma_end: float = 0.5


PRESETS: dict[str, EquiCSPConfig] = {
    # tests: trains and samples in seconds
    'tiny': EquiCSPConfig(hidden_dim=16, num_layers=2, num_freqs=3, time_dim=8),
    # trainable on a 2-core CPU in a few hours (perov_5, MP <= 20 atoms)
    'cpu': EquiCSPConfig(),
    # EquiCSP's published decoder: hidden 512, 6 layers, 128 frequencies, time embedding 256
    'paper': EquiCSPConfig(hidden_dim=512, num_layers=6, num_freqs=128, time_dim=256),
}


def resolve_config(config: str | dict | EquiCSPConfig) -> EquiCSPConfig:
    """A preset name, a dict (optionally with ``'preset'`` as base) or a config object."""
    if isinstance(config, EquiCSPConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f'unknown EquiCSP preset {config!r}; known: {sorted(PRESETS)}')
        return dataclasses.replace(PRESETS[config])
    values = dict(config)
    base = PRESETS[values.pop('preset')].to_dict() if 'preset' in values else {}
    return EquiCSPConfig.from_dict({**base, **values})


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, outputs), nn.SiLU())


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the (integer) time, as in 'Attention is all you need'."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / max(half - 1, 1))
    angles = t.to(frequencies.dtype)[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def fourier(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """``[sin(2 pi k x), cos(2 pi k x)]`` for k = 1..num_freqs along a new last axis: periodic in x."""
    k = torch.arange(1, num_freqs + 1, dtype=x.dtype, device=x.device)
    angles = 2 * math.pi * x[..., None] * k
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def full_edges(num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j) of atoms of the same crystal, self pairs included: (receivers, senders)."""
    starts = torch.cumsum(num_atoms, 0) - num_atoms
    index = torch.repeat_interleave(torch.arange(len(num_atoms), device=num_atoms.device), num_atoms)
    per_atom = num_atoms[index]  # each atom receives from every atom of its crystal
    receivers = torch.repeat_interleave(torch.arange(len(index), device=num_atoms.device), per_atom)
    first_edge = torch.cumsum(per_atom, 0) - per_atom
    position = torch.arange(len(receivers), device=num_atoms.device) - first_edge[receivers]
    senders = starts[index[receivers]] + position
    return receivers, senders


def edge_messages(mlp: nn.Sequential, h, geometry, receivers, senders):
    """``mlp(cat[h[receivers], h[senders], geometry])`` for an ``_mlp`` of input ``3 H``, computed as
    ``W_r h + W_s h`` per atom, gathered per edge, plus ``W_g geometry``: the same sum of products with
    the receiver and sender parts done once per atom instead of once per edge (a crystal of n atoms has
    n^2 edges), the costliest product of sampling."""
    first = mlp[0]
    receiver, sender, edge = first.weight.split(h.shape[-1], dim=1)  # contiguous copies are H x H: cheap
    pre = (
        torch.nn.functional.linear(h, receiver.contiguous())[receivers]
        + torch.nn.functional.linear(h, sender.contiguous())[senders]
        + torch.nn.functional.linear(geometry, edge.contiguous(), first.bias)
    )
    return mlp[1:](pre)


class _Layer(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.edge = _mlp(3 * hidden, hidden, hidden)
        self.node = _mlp(2 * hidden, hidden, hidden)

    def forward(self, h, geometry, receivers, senders):
        normed = self.norm(h)
        messages = edge_messages(self.edge, normed, geometry, receivers, senders)
        return h + self.node(torch.cat([normed, segment_mean(messages, receivers, len(h))], -1))


class EquiCSPDenoiser(nn.Module):
    """``forward(t, types, known, frac, gram, num_atoms, batch) -> (eps_lattice, score, eps_types)``."""

    def __init__(self, config: EquiCSPConfig, num_elements: int):
        super().__init__()
        self.config, self.num_elements = config, num_elements
        hidden, freqs = config.hidden_dim, config.num_freqs
        self.node_in = nn.Linear(num_elements + 1 + config.time_dim, hidden)
        self.axis_token = _mlp(2 * freqs + 2, hidden, hidden)  # Fourier(d_a), log length a, cos(angle opposite a)
        self.pair_token = _mlp(4 * freqs + 3, hidden, hidden)  # Fourier(d_a +- d_b), log lengths a, b, cos(a, b)
        self.layers = nn.ModuleList(_Layer(hidden) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.out_edge = _mlp(3 * hidden, hidden, hidden)
        self.score_axis, self.score_edge = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden, bias=False)
        self.score_out = nn.Linear(hidden, 1, bias=False)
        self.lattice_axis, self.lattice_edge = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden, bias=False)
        self.lattice_out = nn.Sequential(nn.Linear(3 * hidden + 2, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.type_out = nn.Linear(hidden, num_elements)

    def forward(self, t, types, known, frac, gram, num_atoms, batch):
        size = len(num_atoms)
        receivers, senders = full_edges(num_atoms)
        edge_crystal = batch[receivers]
        dtype = frac.dtype

        # invariants of the lattice: log length per cube root of the atom count, cosines of the angles
        squares = torch.diagonal(gram, dim1=-2, dim2=-1).clamp(min=1e-12)
        log_length = 0.5 * torch.log(squares) - torch.log(num_atoms.to(dtype))[:, None] / 3
        cosine = gram / torch.sqrt(squares[:, :, None] * squares[:, None, :])
        opposite = torch.stack([cosine[:, 1, 2], cosine[:, 0, 2], cosine[:, 0, 1]], -1)
        axis_lattice = torch.stack([log_length, opposite], -1)  # (B, 3, 2)
        a_index, b_index = [a for a, _ in _PAIRS], [b for _, b in _PAIRS]
        pair_lattice = torch.stack(
            [log_length[:, a_index], log_length[:, b_index], cosine[:, a_index, b_index]], -1
        )  # (B, 6, 3)

        # geometric tokens of each edge: per axis and per ordered pair of axes (no learned state)
        d = frac[senders] - frac[receivers]
        axis_tokens = self.axis_token(torch.cat([fourier(d, self.config.num_freqs), axis_lattice[edge_crystal]], -1))
        pair_input = torch.cat(
            [
                fourier(d[:, a_index] + d[:, b_index], self.config.num_freqs),
                fourier(d[:, a_index] - d[:, b_index], self.config.num_freqs),
                pair_lattice[edge_crystal],
            ],
            -1,
        )
        pair_tokens = self.pair_token(pair_input)  # (E, 6, H)
        geometry = axis_tokens.sum(1) + pair_tokens.sum(1)

        h = self.node_in(
            torch.cat(
                [types, known.to(dtype)[batch, None], time_embedding(t, self.config.time_dim).to(dtype)[batch]], -1
            )
        )
        for layer in self.layers:
            h = layer(h, geometry, receivers, senders)
        h = self.final_norm(h)
        messages = edge_messages(self.out_edge, h, geometry, receivers, senders)

        # per axis: the shared heads on that axis's tokens, gated by the (axis-free) edge messages
        score_edges = self.score_out(
            torch.nn.functional.silu(self.score_axis(axis_tokens) + self.score_edge(messages)[:, None])
        )
        score = segment_mean(score_edges[..., 0], receivers, len(h))
        axis_summary = segment_mean(
            torch.nn.functional.silu(self.lattice_axis(axis_tokens) + self.lattice_edge(messages)[:, None]),
            edge_crystal,
            size,
        )
        pair_summary = segment_mean(pair_tokens, edge_crystal, size)
        opposite_pairs = pair_summary[:, _OPPOSITE_PAIRS].sum(2)  # (B, 3, H): the two pairs facing each axis
        crystal = segment_mean(h, batch, size)[:, None].expand(-1, 3, -1)
        lattice = self.lattice_out(torch.cat([crystal, axis_summary, opposite_pairs, axis_lattice], -1))  # (B, 3, 2)
        eps_lattice = torch.cat([lattice[..., 0], lattice[..., 1]], -1)
        return eps_lattice, score, self.type_out(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
