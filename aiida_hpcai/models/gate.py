"""A faster gate activation for Crysformer's per-edge messages.

e3nn's :class:`~e3nn.nn.Gate` splits its input with an ``Extract`` module and scales the gated
irreps through an element-wise tensor product; on the CPU that costs several times the arithmetic.
For the layout :func:`aiida_hpcai.models.crysformer._gate` builds, ``[scalars | gates | gated]``,
the same numbers come from slicing and one indexed multiplication. :func:`gate` reads the e3nn
module (its normalised activations and layout), so checkpoints are unchanged; a test compares it
with e3nn. (A stacked Clebsch-Gordan kernel for the depthwise tensor product was tried as well: it
matched e3nn to 1e-8 in float64 but was no faster end to end, so e3nn's tensor product stays.)
"""
from __future__ import annotations

import torch


def gate(module, features: torch.Tensor, gate_of_component: torch.Tensor) -> torch.Tensor:
    """``module(features)`` for an e3nn Gate whose input is laid out ``[scalars | gates | gated]``.

    ``gate_of_component`` (from :func:`gate_index`) gives, for each component of the gated irreps, the
    gate that scales it.
    """
    num_scalars, num_gates = module.irreps_scalars.dim, module.irreps_gates.dim
    scalars = module.act_scalars(features[:, :num_scalars])
    if not num_gates:
        return scalars
    gates = module.act_gates(features[:, num_scalars:num_scalars + num_gates])
    return torch.cat([scalars, features[:, num_scalars + num_gates:] * gates[:, gate_of_component]], dim=1)


def gate_index(module) -> torch.Tensor:
    """For each component of ``module``'s gated irreps, the index of its gate; checks the layout."""
    expected = (module.irreps_scalars + module.irreps_gates + module.irreps_gated).simplify()
    if module.irreps_in != expected or any(ir.l != 0 for _, ir in module.irreps_gates):
        raise ValueError(f'gate input {module.irreps_in} is not laid out as [scalars | gates | gated]')
    index, first = [torch.zeros(0, dtype=torch.long)], 0
    for mul, ir in module.irreps_gated:
        index.append(first + torch.arange(mul).repeat_interleave(ir.dim))
        first += mul
    return torch.cat(index)
