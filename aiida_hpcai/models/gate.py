"""The gate activation of Crysformer, evaluated on per-irrep blocks.

This is e3nn's :class:`~e3nn.nn.Gate` (scalars through a normalised activation, each gated irrep
scaled by a normalised activation of its own gate scalar) written for the block layout of
:mod:`.irreps_blocks`: it takes the blocks of ``[scalars+gates (one 0e block) | gated...]`` and
returns the blocks of ``[scalars | gated...]``. e3nn's Gate slices a flat input through an
``Extract`` module and scales through an element-wise tensor product, several times the
arithmetic on a CPU, and it estimates each activation's normalisation constant from a million
random samples every time one is built (half of a model's build time); here each constant is
estimated once per process with e3nn's own :class:`~e3nn.math.normalize2mom` (a fixed-seed sample,
so the same value). A test compares the output with e3nn's Gate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from e3nn import o3
from e3nn.math import normalize2mom
from torch import nn

from .irreps_blocks import Blocks


@functools.cache
def second_moment_scale(activation: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """The factor e3nn multiplies ``activation`` by so that its output has unit second moment
    for standard normal input (1.0 where e3nn leaves the function unscaled)."""
    normalised = normalize2mom(activation)
    return 1.0 if normalised._is_id else normalised.cst


class BlockGate(nn.Module):
    """e3nn's Gate with ``num_scalars`` ``0e`` scalars and one ``0e`` gate per gated irrep."""

    def __init__(
        self,
        num_scalars: int,
        irreps_gated: o3.Irreps,
        scalar_activation=nn.functional.silu,
        gate_activation=torch.sigmoid,
    ):
        super().__init__()
        irreps_gated = o3.Irreps(irreps_gated)
        if any(ir.l == 0 for _, ir in irreps_gated):
            raise ValueError(f'BlockGate gates l > 0 irreps only, got {irreps_gated}')
        self.gated_muls = [mul for mul, _ in irreps_gated]
        num_gates = sum(self.gated_muls)
        self.irreps_scalars = o3.Irreps(f'{num_scalars}x0e')
        self.irreps_gates = o3.Irreps(f'{num_gates}x0e') if num_gates else o3.Irreps('')
        self.irreps_gated = irreps_gated
        self.irreps_in = (self.irreps_scalars + self.irreps_gates + irreps_gated).simplify()
        self.irreps_out = self.irreps_scalars + irreps_gated
        self.scalar_activation, self.gate_activation = scalar_activation, gate_activation
        self.scalar_scale = second_moment_scale(scalar_activation)
        self.gate_scale = second_moment_scale(gate_activation)
        # e3nn's Gate holds its (parameter-free) gating product as ``mul``; the same module stays
        # here so that checkpoints keep their state-dict keys
        self.mul = o3.ElementwiseTensorProduct(irreps_gated, self.irreps_gates) if num_gates else None

    def forward(self, blocks: Blocks) -> Blocks:
        scalars_and_gates, gated = blocks[0], blocks[1:]  # (batch, 1, scalars + gates), (batch, 2l+1, mul)...
        if not self.gated_muls:
            return [self.scalar_activation(scalars_and_gates) * self.scalar_scale]
        scalars, gates = scalars_and_gates.split([self.irreps_scalars.dim, sum(self.gated_muls)], dim=2)
        gates = (self.gate_activation(gates) * self.gate_scale).split(self.gated_muls, dim=2)
        return [
            self.scalar_activation(scalars) * self.scalar_scale,
            *(block * gate for block, gate in zip(gated, gates)),
        ]
