"""Torch modules of the sparse_cnn space, imported only when a network is built."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class InvertedResidual(nn.Module):
    """MobileNet-v2's block: 1x1 expand, kxk depthwise, 1x1 linear project, each with BatchNorm.

    The expand convolution is left out at expansion 1, as in MobileNet-v2. The input is added to
    the output when the block keeps the shape (stride 1, as many channels out as in). The
    convolutions sit in one ``nn.Sequential`` (``body``), so channel pruning finds the BatchNorm
    after each one.
    """

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[tuple[str, nn.Module]] = []
        if expand != 1:
            layers += [
                ("expand", nn.Conv2d(in_channels, hidden, 1, bias=False)),
                ("expand_bn", nn.BatchNorm2d(hidden)),
                ("expand_act", nn.ReLU6()),
            ]
        layers += [
            ("depthwise", nn.Conv2d(hidden, hidden, kernel, stride, padding=kernel // 2, groups=hidden, bias=False)),
            ("depthwise_bn", nn.BatchNorm2d(hidden)),
            ("depthwise_act", nn.ReLU6()),
            ("project", nn.Conv2d(hidden, out_channels, 1, bias=False)),
            ("project_bn", nn.BatchNorm2d(out_channels)),
        ]
        self.body = nn.Sequential(OrderedDict(layers))
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y
