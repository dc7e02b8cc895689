"""A faster gate activation for Crysformer's per-edge messages.

e3nn's :class:`~e3nn.nn.Gate` splits its input with an ``Extract`` module and scales the gated
irreps through an element-wise tensor product; on the CPU that costs several times the arithmetic.
For the layout :func:`aiida_hpcai.models.crysformer._gate` builds, ``[scalars | gates | gated]``,
the same numbers come from slicing and one indexed multiplication. :class:`SlicedGate` is an e3nn
Gate (same normalised activations, same parameters and state-dict keys, so checkpoints are
unchanged) with that forward pass; a test compares it with e3nn's. (A stacked Clebsch-Gordan kernel
for the depthwise tensor product was tried as well: it matched e3nn to 1e-8 in float64 but was no
faster end to end, so e3nn's tensor product stays.)
"""
from __future__ import annotations

import torch
from e3nn.nn import Gate


class SlicedGate(Gate):
    """e3nn's Gate, evaluated by slicing its ``[scalars | gates | gated]`` input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        expected = (self.irreps_scalars + self.irreps_gates + self.irreps_gated).simplify()
        if self.irreps_in != expected or any(ir.l != 0 for _, ir in self.irreps_gates):
            raise ValueError(f'gate input {self.irreps_in} is not laid out as [scalars | gates | gated]')
        # for each component of the gated irreps, the gate that scales it
        index, first = [torch.zeros(0, dtype=torch.long)], 0
        for mul, ir in self.irreps_gated:
            index.append(first + torch.arange(mul).repeat_interleave(ir.dim))
            first += mul
        self.register_buffer('gate_of_component', torch.cat(index), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        num_scalars, num_gates = self.irreps_scalars.dim, self.irreps_gates.dim
        scalars = self.act_scalars(features[:, :num_scalars])
        if not num_gates:
            return scalars
        gates = self.act_gates(features[:, num_scalars:num_scalars + num_gates])
        return torch.cat([scalars, features[:, num_scalars + num_gates:] * gates[:, self.gate_of_component]], dim=1)
