"""Crysformer's e3nn operations evaluated on per-irrep blocks, for fast training on CPUs.

e3nn's generated code for ``o3.Linear`` and ``o3.TensorProduct`` takes each irrep (and each
path's weights) as a slice of one flat tensor. In the backward pass every slice allocates a
zero tensor the size of the whole input and adds its gradient into it, so a per-edge tensor
product with 15 paths fills 15 per-edge weight tensors with zeros: on two CPU cores that was
46% of Crysformer's training step. Here features travel as lists of ``(batch, 2l+1, mul)``
blocks (components, then channels: channel mixing is then one matrix product over all rows and
components, with no transposed copies), and the two
operations are evaluated from the e3nn modules' own weights and path normalisations, so
parameters and checkpoints are unchanged; a test compares both against e3nn.

The depthwise tensor product also skips the paths whose outputs no later layer reads (``1e`` and
``2o`` for ``0e+1o+2e`` features): e3nn computes them and the message linear discards them.
"""

from __future__ import annotations

from math import prod

import torch
from e3nn import o3
from torch import nn

Blocks = list[torch.Tensor]  # one (batch, 2l+1, mul) tensor per entry of an Irreps
PartedBlock = list[torch.Tensor]  # one block given as (batch, 2l+1, mul_p) parts, channels in order


def split_blocks(features: torch.Tensor, irreps: o3.Irreps) -> Blocks:
    """Flat ``(batch, irreps.dim)`` features in e3nn's layout (channel-major within each irrep) as
    one block per irrep (views: for comparisons with e3nn modules, not for the fast path)."""
    parts = features.split([mul * ir.dim for mul, ir in irreps], dim=1)
    return [part.reshape(len(features), mul, ir.dim).transpose(1, 2) for part, (mul, ir) in zip(parts, irreps)]


def join_blocks(blocks: Blocks) -> torch.Tensor:
    """The inverse of :func:`split_blocks`."""
    return torch.cat([block.transpose(1, 2).reshape(block.shape[0], -1) for block in blocks], dim=1)


def linear_blocks(linear: o3.Linear, blocks: list[torch.Tensor | PartedBlock | None]) -> Blocks:
    """``linear(join_blocks(blocks))`` as blocks of ``linear.irreps_out`` (bias-free linears only).
    Entries of ``blocks`` that no instruction reads may be ``None``; an entry may also be a
    :data:`PartedBlock` (its parts' channels in order), whose parts are mixed into one
    accumulated product instead of being concatenated first."""
    weights = linear.weight.split([prod(ins.path_shape) for ins in linear.instructions])
    out: list[torch.Tensor | None] = [None] * len(linear.irreps_out)
    for ins, weight in zip(linear.instructions, weights):
        weight = weight.view(ins.path_shape) * ins.path_weight
        block = blocks[ins.i_in]
        parts = block if isinstance(block, list) else [block]
        rows, dim = parts[0].shape[:2]
        # one matrix product over all rows and components (per part, accumulated in place)
        start, mixed = 0, out[ins.i_out]
        for part in parts:
            mul_in = part.shape[2]
            part_weight = weight[start : start + mul_in]
            start += mul_in
            part = part.reshape(rows * dim, mul_in)
            mixed = part @ part_weight if mixed is None else mixed.addmm_(part, part_weight)
        out[ins.i_out] = mixed
    like = next(part for part in out if part is not None)
    return [
        block.view(rows, ir.dim, mul) if block is not None else like.new_zeros(rows, ir.dim, mul)
        for block, (mul, ir) in zip(out, linear.irreps_out)
    ]


def check_bias_free(linear: o3.Linear) -> None:
    if linear.bias.numel():
        raise ValueError('linear_blocks evaluates bias-free e3nn linears only')


class DepthwiseCoupling(nn.Module):
    """An e3nn channel-wise ('uvu') tensor product of node features with edge spherical harmonics,
    per-edge path weights, restricted to the output irreps listed in ``used_outputs`` (indices of
    ``tensor_product.irreps_out.simplify()``). Returns :data:`PartedBlock` entries aligned with
    that simplified irreps (``None`` for the unused ones), channels in e3nn's order."""

    def __init__(self, tensor_product: o3.TensorProduct, used_outputs: set[int]):
        super().__init__()
        tp = tensor_product
        if any(ins.connection_mode != 'uvu' or not ins.has_weight for ins in tp.instructions) or tp.shared_weights:
            raise ValueError('DepthwiseCoupling evaluates per-edge weighted uvu tensor products only')
        if any(mul != 1 for mul, _ in tp.irreps_in2):
            raise ValueError('the second input (spherical harmonics) must have multiplicity 1')
        # which simplified output each (sorted, unsimplified) output of the tensor product joins
        simplified, merged_into = [], []
        for _mul, ir in tp.irreps_out:
            if not simplified or simplified[-1] != ir:
                simplified.append(ir)
            merged_into.append(len(simplified) - 1)
        self.num_outputs = len(simplified)
        self.weight_sizes = [prod(ins.path_shape) for ins in tp.instructions]
        sh_offsets = [s.start for s in tp.irreps_in2.slices()]
        dim_sh = tp.irreps_in2.dim
        # per first-input irrep: its used paths (instruction, output) and the Clebsch-Gordan
        # coefficients of all of them contracted with the harmonics in one matrix
        self.paths: list[list[tuple[int, int, int, int]]] = []  # (instruction, output, simplified output, dim)
        for i, (_, ir_in) in enumerate(tp.irreps_in1):
            used = sorted(
                (ins.i_out, n)
                for n, ins in enumerate(tp.instructions)
                if ins.i_in1 == i and merged_into[ins.i_out] in used_outputs
            )
            paths, blocks_cg = [], []
            for i_out, n in used:
                ins = tp.instructions[n]
                l_sh, ir_out = tp.irreps_in2[ins.i_in2].ir.l, tp.irreps_out[i_out].ir
                cg = torch.zeros(ir_in.dim, dim_sh, ir_out.dim, dtype=torch.float64)
                cg[:, sh_offsets[ins.i_in2] : sh_offsets[ins.i_in2] + 2 * l_sh + 1] = (
                    o3.wigner_3j(ir_in.l, l_sh, ir_out.l, dtype=torch.float64) * ins.path_weight
                )
                paths.append((n, i_out, merged_into[i_out], ir_out.dim))
                blocks_cg.append(cg)
            self.paths.append(paths)
            coupling = torch.cat(blocks_cg, dim=2) if blocks_cg else torch.zeros(ir_in.dim, dim_sh, 0)
            # stored as (harmonics, output components x input components), ready to contract with Y
            coupling = coupling.permute(1, 2, 0).reshape(dim_sh, -1)
            self.register_buffer(f'coupling_{i}', coupling.to(torch.get_default_dtype()), persistent=False)

    def forward(self, blocks: Blocks, edge_sh: torch.Tensor, edge_weights: torch.Tensor) -> list[PartedBlock | None]:
        weights = edge_weights.split(self.weight_sizes, dim=1)
        pieces: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(self.num_outputs)]
        for i, (block, paths) in enumerate(zip(blocks, self.paths)):
            if not paths:
                continue
            d_in = block.shape[1]
            # (edges, output components, d_in): the harmonics contracted with every used path's coefficients
            operator = (edge_sh @ getattr(self, f'coupling_{i}')).view(len(edge_sh), -1, d_in)
            sizes = [dim for *_, dim in paths]
            if d_in == 1:
                # scalars: each path is an outer product; weighting the (edges, 1, mul) inputs first
                # costs less than weighting the outputs, and a batched product with one inner
                # dimension is slower than broadcasting
                for (n, i_out, output, _), path_operator in zip(paths, operator.split(sizes, dim=1)):
                    pieces[output].append((i_out, path_operator * (block * weights[n].unsqueeze(1))))
                continue
            for (n, i_out, output, _), part in zip(paths, torch.bmm(operator, block).split(sizes, dim=1)):
                pieces[output].append((i_out, part * weights[n].unsqueeze(1)))
        # channels of one simplified output follow e3nn's (sorted output) order; the parts stay
        # separate (the profiler put concatenating these per-edge outputs at 13% of a forward pass)
        return [[part for _, part in sorted(parts, key=lambda item: item[0])] if parts else None for parts in pieces]
