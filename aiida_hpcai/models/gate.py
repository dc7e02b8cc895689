"""The gate activation of Crysformer, evaluated on per-irrep blocks.

e3nn's :class:`~e3nn.nn.Gate` splits its flat input with an ``Extract`` module and scales the
gated irreps through an element-wise tensor product; on the CPU that costs several times the
arithmetic, and its slices make the backward pass fill whole-input zero tensors (see
:mod:`.irreps_blocks`). :class:`BlockGate` is an e3nn Gate (same normalised activations, same
parameters and state-dict keys, so checkpoints are unchanged) whose forward pass takes the blocks
of its input ``[scalars+gates (one 0e block) | gated...]`` and returns the blocks of its output
``[scalars | gated...]``; a test compares it with e3nn's.
"""
from __future__ import annotations

from e3nn import o3
from e3nn.nn import Gate

from .irreps_blocks import Blocks


class BlockGate(Gate):
    """e3nn's Gate on blocks: scalars and gates share the first (``0e``) block of the input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        scalar = o3.Irrep('0e')
        if (any(ir != scalar for _, ir in self.irreps_scalars + self.irreps_gates)
                or len(self.irreps_scalars) != 1 or len(self.irreps_gates) > 1
                or any(ir.l == 0 for _, ir in self.irreps_gated)):
            raise ValueError(f'BlockGate needs 0e scalars, 0e gates and l > 0 gated irreps, got {self.irreps_in}')
        self.num_scalars = self.irreps_scalars.num_irreps
        self.gated_muls = [mul for mul, _ in self.irreps_gated]

    def forward(self, blocks: Blocks) -> Blocks:
        scalars_and_gates, gated = blocks[0], blocks[1:]
        batch = scalars_and_gates.shape[0]
        if not self.gated_muls:
            return [self.act_scalars(scalars_and_gates.reshape(batch, -1)).unsqueeze(2)]
        scalars, gates = scalars_and_gates.reshape(batch, -1).split([self.num_scalars, sum(self.gated_muls)], dim=1)
        gates = self.act_gates(gates).split(self.gated_muls, dim=1)
        return [self.act_scalars(scalars).unsqueeze(2),
                *(block * gate.unsqueeze(2) for block, gate in zip(gated, gates))]
