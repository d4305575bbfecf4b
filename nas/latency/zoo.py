"""Whole-model families for calibrating the correction and for evaluating the predictor.

Six families of the small networks this service searches, none taken from a search space, so that
held-out-family evaluation means something: MLPs, plain CNNs, depthwise-separable CNNs
(MobileNet-like), residual CNNs (functional adds between layers), recurrent classifiers and CNNs
with a GRU head. Each model is drawn dense or sparse (unstructured masks at a density from the
sparsity ladder, 2:4 masks, or whole output channels), sparsity made with the project's own mask
parametrizations, as trained trials hold it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

FAMILIES = ("mlp", "cnn", "dwsep", "resnet", "rnn", "cnn_gru")
SPARSE_DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)


@dataclass
class ZooModel:
    """A sampled model with what it was drawn from."""

    model: nn.Module
    input_shape: tuple[int, ...]
    family: str
    config: dict[str, Any] = field(default_factory=dict)


def _log_int(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _activation(rng: random.Random) -> nn.Module:
    return rng.choice([nn.ReLU, nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.ReLU6])()


def _mlp(rng: random.Random) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    shape = rng.choice([(1, 8, 8), (1, 28, 28), (3, 16, 16), (64,)])
    features = math.prod(shape)
    widths = [_log_int(rng, 16, 4096) for _ in range(rng.randint(1, 3))]
    layers: list[nn.Module] = [nn.Flatten()]
    for width in widths:
        layers.append(nn.Linear(features, width))
        if rng.random() < 0.3:
            layers.append(nn.BatchNorm1d(width))
        layers.append(_activation(rng))
        if rng.random() < 0.3:
            layers.append(nn.Dropout(0.1))
        features = width
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers), shape, {"widths": widths}


def _cnn(rng: random.Random) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    shape = rng.choice([(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 16, 16)])
    channels, size = shape[0], shape[1]
    layers: list[nn.Module] = []
    blocks = rng.randint(1, 3)
    widths = []
    for _ in range(blocks):
        width = _log_int(rng, 4, 96)
        k = rng.choice([3, 3, 5, 1])
        layers.append(nn.Conv2d(channels, width, k, padding=k // 2))
        if rng.random() < 0.5:
            layers.append(nn.BatchNorm2d(width))
        layers.append(_activation(rng))
        if size >= 4 and rng.random() < 0.7:
            layers.append(rng.choice([nn.MaxPool2d, nn.AvgPool2d])(2))
            size //= 2
        channels = width
        widths.append(width)
    if rng.random() < 0.4:
        layers.append(nn.AdaptiveAvgPool2d(rng.choice([1, 2])))
        size = layers[-1].output_size
    layers.append(nn.Flatten())
    flat = channels * size * size
    if rng.random() < 0.5:
        hidden = _log_int(rng, 32, 256)
        layers += [nn.Linear(flat, hidden), nn.ReLU()]
        flat = hidden
    layers.append(nn.Linear(flat, 10))
    return nn.Sequential(*layers), shape, {"widths": widths}


def _dwsep(rng: random.Random) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    shape = rng.choice([(3, 32, 32), (1, 28, 28), (3, 16, 16)])
    width = _log_int(rng, 8, 32)
    layers: list[nn.Module] = [nn.Conv2d(shape[0], width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU6()]
    widths = [width]
    for _ in range(rng.randint(1, 4)):
        stride = rng.choice([1, 1, 2])
        out = min(256, int(width * rng.choice([1, 1.5, 2])))
        layers += [
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=width, bias=False), nn.BatchNorm2d(width),
            nn.ReLU6(), nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU6(),
        ]  # fmt: skip
        width = out
        widths.append(out)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers), shape, {"widths": widths}


class _Residual(nn.Module):
    """``relu(x + body(x))``: the add and relu run between layers, as functional calls."""

    def __init__(self, channels: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class _ResNet(nn.Module):
    def __init__(self, shape: tuple[int, ...], width: int, blocks: int, batchnorm: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(shape[0], width, 3, padding=1)
        self.blocks = nn.ModuleList(_Residual(width, batchnorm) for _ in range(blocks))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(torch.flatten(x.mean(dim=(2, 3)), 1))


def _resnet(rng: random.Random) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    shape = rng.choice([(1, 8, 8), (3, 16, 16), (1, 28, 28), (3, 32, 32)])
    width, blocks = _log_int(rng, 4, 48), rng.randint(1, 3)
    return _ResNet(shape, width, blocks, rng.random() < 0.5), shape, {"width": width, "blocks": blocks}


class _RecurrentClassifier(nn.Module):
    """An RNN over a sequence of feature vectors and a linear head on the last step."""

    def __init__(self, cell: str, features: int, hidden: int, layers: int, bidirectional: bool) -> None:
        super().__init__()
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[cell]
        self.rnn = cls(features, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _rnn(rng: random.Random) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    steps, features = rng.choice([(8, 8), (28, 28), (16, 32), (32, 16)])
    cell, hidden = rng.choice(["LSTM", "GRU", "GRU", "RNN"]), _log_int(rng, 16, 256)
    layers, bidirectional = rng.choice([1, 1, 2]), rng.random() < 0.25
    model = _RecurrentClassifier(cell, features, hidden, layers, bidirectional)
    return model, (steps, features), {"cell": cell, "hidden": hidden, "layers": layers}


class _ConvGRU(nn.Module):
    """Convolutions over an image, its columns read as a sequence by a GRU, and a linear head."""

    def __init__(self, shape: tuple[int, ...], widths: list[int], hidden: int) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        channels = shape[0]
        for width in widths:
            convs += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*convs)
        height = shape[1] // 2 ** len(widths)
        self.gru = nn.GRU(channels * height, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.permute(0, 3, 1, 2).flatten(2)  # (batch, width, channels * height)
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _cnn_gru(rng: random.Random) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    shape = rng.choice([(1, 28, 28), (1, 16, 16), (3, 32, 32)])
    widths = [_log_int(rng, 4, 48) for _ in range(rng.randint(1, 2))]
    hidden = _log_int(rng, 16, 128)
    return _ConvGRU(shape, widths, hidden), shape, {"widths": widths, "hidden": hidden}


_BUILDERS = {"mlp": _mlp, "cnn": _cnn, "dwsep": _dwsep, "resnet": _resnet, "rnn": _rnn, "cnn_gru": _cnn_gru}


def sparsify(model: nn.Module, rng: random.Random, sparsity: dict[str, Any]) -> None:
    """Mask ``model``'s ``Linear``/``Conv2d`` weights (RNN weights stay dense, as in inference) in place.

    ``sparsity``: ``{"pattern": "dense"}``, ``{"pattern": "unstructured", "density": d}`` (magnitude
    masks), ``{"pattern": "nm"}`` (2:4 along input channels where they divide by 4), or
    ``{"pattern": "channel", "density": d}`` (the lowest-norm output units of every layer but the last).
    """
    from nas.sparse.nm_layers import nm_mask
    from nas.sparse.masks import set_mask

    pattern = sparsity["pattern"]
    if pattern == "dense":
        return
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for i, layer in enumerate(layers):
        weight = layer.weight.detach()
        if pattern == "unstructured":
            keep = max(1, int(round(sparsity["density"] * weight.numel())))
            threshold = weight.abs().flatten().kthvalue(weight.numel() - keep + 1).values
            mask = weight.abs() >= threshold
        elif pattern == "nm":
            if weight.shape[1] % 4:
                continue
            mask = nm_mask(weight, 2, 4).bool()
        elif pattern == "channel":
            if i == len(layers) - 1 or getattr(layer, "groups", 1) > 1:
                continue
            norms = weight.flatten(1).norm(dim=1)
            keep = max(1, int(round(sparsity["density"] * weight.shape[0])))
            mask = torch.zeros_like(weight, dtype=torch.bool)
            mask[norms.topk(keep).indices] = True
        else:
            raise ValueError(f"unknown sparsity pattern {pattern!r}")
        set_mask(layer, "weight", mask)


def sample_sparsity(rng: random.Random, densities: tuple[float, ...] = SPARSE_DENSITIES) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.25:
        return {"pattern": "dense"}
    if roll < 0.8:
        return {"pattern": "unstructured", "density": rng.choice(densities)}
    if roll < 0.9:
        return {"pattern": "nm", "density": 0.5}
    return {"pattern": "channel", "density": rng.choice([0.75, 0.5, 0.25])}


def sample(family: str, rng: random.Random, sparsity: dict[str, Any] | None = None, seed: int = 0) -> ZooModel:
    """One model of ``family`` with random weights and the given (or a random) sparsity."""
    torch.manual_seed(seed)
    model, shape, config = _BUILDERS[family](rng)
    sparsity = sparsity or sample_sparsity(rng)
    sparsify(model, rng, sparsity)
    return ZooModel(model.eval(), shape, family, {**config, "sparsity": sparsity})
