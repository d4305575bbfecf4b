"""DARTS networks (Liu et al., ICLR 2019) whose every conv is a ``SparseConv2d`` and classifier a ``SparseLinear``.

As in DASS's code, HYDRA's score-masked layers replace DARTS's convolutions everywhere: stem,
preprocessing, separable and dilated convs, and the factorized reductions. Two networks share the
cells' wiring (:mod:`nas.dass.layout` names the modules):

* :class:`Supernet`: every edge mixes all operations with the softmax of α (``alphas_normal``,
  ``alphas_reduce``, ``1e-3·N(0, 1)`` at init); BatchNorm without affine parameters, as DARTS searches.
* :class:`DerivedNetwork`: the cell a genotype names, two operations per node, affine BatchNorm.

Both are built dense (every mask keeps ``k = 1``); the search or the job's sparsifier prunes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.dass.genotype import CELL_TYPES, EDGES_PER_NODE, Genotype, edge_count
from nas.dass.layout import KERNELS, CellPlan, NetworkPlan
from nas.sparse.layers import SparseConv2d, SparseLinear


class Zero(nn.Module):
    """DARTS's ``none``: zeros of the output's shape (subsampled when the edge reduces)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two strided 1×1 convs, the second shifted by one pixel, concatenated.

    The input is padded by one row and column before the shift, so odd sizes (7×7 on MNIST) give
    both halves the same output size.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = SparseConv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = SparseConv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def relu_conv_bn(c_in: int, c_out: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(inplace=False), SparseConv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


def _sep_conv(c: int, k: int, stride: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        SparseConv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=False),
        SparseConv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=affine),
        nn.ReLU(inplace=False),
        SparseConv2d(c, c, k, stride=1, padding=k // 2, groups=c, bias=False),
        SparseConv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=affine),
    )


def _dil_conv(c: int, k: int, stride: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        SparseConv2d(c, c, k, stride=stride, padding=k - 1, dilation=2, groups=c, bias=False),
        SparseConv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=affine),
    )


def make_op(op: str, c: int, stride: int, affine: bool, in_supernet: bool) -> nn.Module:
    """One DARTS operation on ``c`` channels; a supernet's pools get DARTS's BatchNorm without affine parameters."""
    if op == "none":
        return Zero(stride)
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        pool: nn.Module = (
            nn.MaxPool2d(3, stride=stride, padding=1)
            if op == "max_pool_3x3"
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        )
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if in_supernet else pool
    if op == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if op.startswith("sep_conv"):
        return _sep_conv(c, KERNELS[op], stride, affine)
    if op.startswith("dil_conv"):
        return _dil_conv(c, KERNELS[op], stride, affine)
    raise ValueError(f"unknown operation {op!r}")


def _preprocess(cell: CellPlan, affine: bool) -> tuple[nn.Module, nn.Module]:
    first = (
        FactorizedReduce(cell.c_prev_prev, cell.c, affine)
        if cell.reduction_prev
        else relu_conv_bn(cell.c_prev_prev, cell.c, affine)
    )
    return first, relu_conv_bn(cell.c_prev, cell.c, affine)


class MixedOp(nn.Module):
    """Every operation on one edge, summed with the edge's softmax weights."""

    def __init__(self, ops: Sequence[str], c: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_op(op, c, stride, affine=False, in_supernet=True) for op in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
    def __init__(self, cell: CellPlan, nodes: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.nodes = nodes
        self.preprocess0, self.preprocess1 = _preprocess(cell, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(ops, cell.c, 2 if cell.reduction and state < 2 else 1)
            for node in range(nodes)
            for state in range(node + 2)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            states.append(sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)


class DerivedCell(nn.Module):
    def __init__(self, cell: CellPlan, gene: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self.preprocess0, self.preprocess1 = _preprocess(cell, affine=True)
        self.inputs = [state for _, state in gene]
        self.edges = nn.ModuleList(
            make_op(op, cell.c, 2 if cell.reduction and state < 2 else 1, affine=True, in_supernet=False)
            for op, state in gene
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.inputs) // EDGES_PER_NODE):
            edges = range(EDGES_PER_NODE * node, EDGES_PER_NODE * (node + 1))
            states.append(sum(self.edges[e](states[self.inputs[e]]) for e in edges))
        return torch.cat(states[2:], dim=1)


class _Network(nn.Module):
    """Stem, cells, global average pooling and a ``SparseLinear`` classifier."""

    def __init__(self, net: NetworkPlan, num_classes: int, stem_stride: int, cells: list[nn.Module]) -> None:
        super().__init__()
        self.reductions = [cell.reduction for cell in net.cells]
        self.stem = nn.Sequential(
            SparseConv2d(net.c_in, net.c_stem, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(net.c_stem)
        )
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = SparseLinear(net.c_out, num_classes)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x).flatten(1))


class Supernet(_Network):
    """The one-shot network DASS searches: mixed operations on every edge, α as parameters."""

    def __init__(self, net: NetworkPlan, num_classes: int, stem_stride: int, ops: Sequence[str]) -> None:
        super().__init__(net, num_classes, stem_stride, [SearchCell(cell, net.nodes, ops) for cell in net.cells])
        self.ops = tuple(ops)
        self.nodes = net.nodes
        shape = (edge_count(net.nodes), len(ops))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(shape))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normal, reduce = F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell, reduction in zip(self.cells, self.reductions):
            s0, s1 = s1, cell(s0, s1, reduce if reduction else normal)
        return self._head(s1)

    def genotype(self) -> Genotype:
        """The derived cell of the current α (DARTS's ``genotype()``)."""
        from nas.dass.genotype import derive

        with torch.no_grad():
            weights = {
                cell: F.softmax(alpha, dim=-1).tolist()
                for cell, alpha in zip(CELL_TYPES, (self.alphas_normal, self.alphas_reduce))
            }
        return derive(weights, self.nodes, self.ops)


class DerivedNetwork(_Network):
    """The network of one genotype: its normal and reduction cells stacked as the supernet's were."""

    def __init__(self, net: NetworkPlan, num_classes: int, stem_stride: int, genotype: Genotype) -> None:
        cells = [DerivedCell(cell, genotype.reduce if cell.reduction else genotype.normal) for cell in net.cells]
        super().__init__(net, num_classes, stem_stride, cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self._head(s1)
