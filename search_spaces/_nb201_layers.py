"""Torch modules of the nasbench201 space (NAS-Bench-201's macro network), imported only when a network is built."""

from __future__ import annotations

import torch
from torch import nn

from nas.nasbench201_cell import EDGES
from search_spaces.nasbench201 import CELLS_PER_STAGE, STAGE_CHANNELS


class ReLUConvBN(nn.Sequential):
    """NAS-Bench-201's convolution: ReLU, a bias-free convolution, BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)
        )


class Zero(nn.Module):
    """The ``none`` operation: the edge carries nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _operation(name: str, channels: int) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    return ReLUConvBN(channels, channels, 1 if name == "nor_conv_1x1" else 3)


class Cell(nn.Module):
    """Node ``j`` sums its incoming edges' operations on nodes ``i < j``; the last node is the output."""

    def __init__(self, ops: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_operation(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for to in range(1, 4):
            nodes.append(sum(edge(nodes[frm]) for edge, (node, frm) in zip(self.edges, EDGES) if node == to))
        return nodes[-1]


class Reduction(nn.Module):
    """NAS-Bench-201's residual block between stages: halves the resolution, changes the channels."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


def build_network(ops: tuple[str, ...], in_channels: int, num_classes: int) -> nn.Module:
    """Stem, three stages of cells joined by reduction blocks, BatchNorm-ReLU, global pooling, classifier."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, STAGE_CHANNELS[0], 3, padding=1, bias=False),
                               nn.BatchNorm2d(STAGE_CHANNELS[0])]  # fmt: skip
    for stage, channels in enumerate(STAGE_CHANNELS):
        if stage:
            layers.append(Reduction(STAGE_CHANNELS[stage - 1], channels))
        layers += [Cell(ops, channels) for _ in range(CELLS_PER_STAGE)]
    layers += [nn.BatchNorm2d(STAGE_CHANNELS[-1]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(STAGE_CHANNELS[-1], num_classes)]  # fmt: skip
    return nn.Sequential(*layers)
