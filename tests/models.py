"""Small networks shared by the sparsity tests."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def lenet(in_features: int = 784, seed: int = 0) -> nn.Sequential:
    """LeNet-300-100 with the layer names of the sparse_mlp search space."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("fc0", nn.Linear(in_features, 300)),
                ("act0", nn.ReLU()),
                ("fc1", nn.Linear(300, 100)),
                ("act1", nn.ReLU()),
                ("out", nn.Linear(100, 10)),
            ]
        )
    )
