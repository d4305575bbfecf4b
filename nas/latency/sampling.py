"""Layer samples for calibration: random configurations of every layer kind, and their neighbours.

Configurations are plain dicts (JSON), drawn from a prior over the shapes small searched networks
use (log-uniform channels and widths, fully connected layers up to 4096 wide, kernel sizes 1-7, densities on the sparsity ladder
0.5 ... 0.01 with unstructured, N:M and row patterns). :func:`neighbours` implements nn-Meter's
adaptive step: around a configuration the predictor got wrong, channels are redrawn from
[0.4 C, 1.2 C] and the density moved along the ladder, so sampling concentrates where errors are.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.latency.features import Layer, trace

DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
ELEMENTWISE_MODULES: dict[str, Callable[[], nn.Module]] = {
    "Identity": nn.Identity, "Dropout": nn.Dropout, "Flatten": nn.Flatten, "ReLU": nn.ReLU, "ReLU6": nn.ReLU6,
    "LeakyReLU": nn.LeakyReLU, "ELU": nn.ELU, "GELU": nn.GELU, "SiLU": nn.SiLU, "Tanh": nn.Tanh,
    "Sigmoid": nn.Sigmoid, "Hardswish": nn.Hardswish, "Hardtanh": nn.Hardtanh, "Softplus": nn.Softplus,
    "PReLU": nn.PReLU, "Softmax": lambda: nn.Softmax(dim=-1), "LogSoftmax": lambda: nn.LogSoftmax(dim=-1),
    "Mish": nn.Mish, "SELU": nn.SELU, "CELU": nn.CELU, "Hardsigmoid": nn.Hardsigmoid,
}  # fmt: skip
FUNCTIONAL: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {
    "add": lambda x, y: x + y, "mul": lambda x, y: x * y, "sub": lambda x, y: x - y, "div": lambda x, y: x / y,
    "cat": lambda x, y: torch.cat([x, y], dim=1), "view": lambda x, y: x.reshape(x.shape[0], -1),
    "relu": lambda x, y: F.relu(x), "sigmoid": lambda x, y: torch.sigmoid(x), "tanh": lambda x, y: torch.tanh(x),
    "mean": lambda x, y: x.mean(dim=-1), "sum": lambda x, y: x.sum(dim=-1), "softmax": lambda x, y: x.softmax(-1),
    "flatten": lambda x, y: torch.flatten(x, 1), "transpose": lambda x, y: x.transpose(-1, -2),
}  # fmt: skip
SAMPLED_KINDS = ("linear", "conv", "csr_linear", "csr_conv", "rnn", "norm", "pool", "elementwise")


def _log_int(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _density(rng: random.Random) -> float:
    if rng.random() < 0.6:
        return rng.choice(DENSITIES)
    return math.exp(rng.uniform(math.log(0.01), math.log(0.7)))


def sample_config(kind: str, rng: random.Random, batch_size: int = 1, max_flops: float = 2e8) -> dict[str, Any]:
    """A random configuration of ``kind`` whose dense FLOPs stay under ``max_flops``."""
    for _ in range(200):
        config = _draw(kind, rng, batch_size)
        if _dense_flops(config) <= max_flops:
            return config
    return config


def _draw(kind: str, rng: random.Random, batch: int) -> dict[str, Any]:
    if kind in ("linear", "csr_linear"):
        config: dict[str, Any] = {
            "kind": kind, "k": _log_int(rng, 4, 4096), "n": _log_int(rng, 4, 4096), "batch": batch,
            "seq": rng.choice([1] * 6 + [4, 8, 16, 32]), "bias": rng.random() < 0.9,
        }  # fmt: skip
        if kind == "linear":
            config["functional"] = rng.random() < 0.1
        else:
            _sparsity(config, rng)
        return config
    if kind in ("conv", "csr_conv"):
        depthwise = kind == "conv" and rng.random() < 0.2
        cin = _log_int(rng, 1, 256)
        k = rng.choice([1, 1, 3, 3, 3, 5, 7])
        config = {
            "kind": kind, "cin": cin, "cout": cin if depthwise else _log_int(rng, 4, 256), "hw": _log_int(rng, 4, 64),
            "k": k, "stride": rng.choice([1, 1, 1, 2]), "padding": k // 2 if rng.random() < 0.8 else 0,
            "groups": cin if depthwise else 1, "batch": batch, "conv1d": kind == "conv" and rng.random() < 0.08,
            "bias": rng.random() < 0.5,
        }  # fmt: skip
        config["hw"] = max(config["hw"], k)
        if kind == "conv" and not depthwise and rng.random() < 0.08:
            groups = rng.choice([2, 4])
            config["cin"] = max(groups, cin // groups * groups)
            config["cout"] = max(groups, config["cout"] // groups * groups)
            config["groups"] = groups
        if kind == "csr_conv":
            _sparsity(config, rng)
        return config
    if kind == "rnn":
        return {
            "kind": kind, "mode": rng.choice(["LSTM", "GRU", "RNN"]), "input": _log_int(rng, 4, 512),
            "hidden": _log_int(rng, 8, 512), "steps": _log_int(rng, 1, 64), "layers": rng.choice([1, 1, 2]),
            "bidirectional": rng.random() < 0.2, "batch_first": rng.random() < 0.5, "batch": batch,
        }  # fmt: skip
    if kind == "norm":
        op = rng.choice(["BatchNorm2d", "BatchNorm2d", "BatchNorm1d", "LayerNorm", "GroupNorm"])
        return {"kind": kind, "op": op, "c": _log_int(rng, 2, 256), "hw": _log_int(rng, 1, 64), "batch": batch}
    if kind == "pool":
        op = rng.choice(["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "MaxPool1d",
                         "AdaptiveAvgPool1d"])  # fmt: skip
        return {
            "kind": kind, "op": op, "c": _log_int(rng, 1, 256), "hw": _log_int(rng, 2, 64), "batch": batch,
            "k": rng.choice([2, 2, 3]), "out": rng.choice([1, 1, 2, 4]),
        }  # fmt: skip
    if kind == "elementwise":
        functional = rng.random() < 0.4
        op = rng.choice(sorted(FUNCTIONAL)) if functional else rng.choice(sorted(ELEMENTWISE_MODULES))
        return {
            "kind": kind, "op": op, "functional": functional, "c": _log_int(rng, 1, 256),
            "hw": _log_int(rng, 1, 64), "batch": batch,
        }  # fmt: skip
    raise ValueError(f"unknown layer kind {kind!r}")


def _sparsity(config: dict[str, Any], rng: random.Random) -> None:
    inner = config.get("k", 0) if config["kind"] == "csr_linear" else config["cin"] * config["k"] ** 2
    roll = rng.random()
    if roll < 0.15 and inner % 4 == 0:
        n = rng.choice([1, 2])
        config.update(pattern="nm", nm=n, density=n / 4)
    elif roll < 0.3:
        config.update(pattern="rows", density=_density(rng), dead_rows=rng.uniform(0.1, 0.5))
    else:
        config.update(pattern="unstructured", density=_density(rng))


def _dense_flops(config: dict[str, Any]) -> float:
    kind, batch = config["kind"], config["batch"]
    if kind in ("linear", "csr_linear"):
        return 2.0 * batch * config["seq"] * config["k"] * config["n"]
    if kind in ("conv", "csr_conv"):
        out = max(1, (config["hw"] + 2 * config["padding"] - config["k"]) // config["stride"] + 1)
        spatial = out if config.get("conv1d") else out * out
        return 2.0 * batch * config["cout"] * spatial * config["cin"] // config["groups"] * config["k"] ** 2
    if kind == "rnn":
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[config["mode"]]
        dirs = 2 if config["bidirectional"] else 1
        h = config["hidden"]
        return 2.0 * gates * h * (config["input"] + h * config["layers"] * dirs) * config["steps"] * batch * dirs
    return 1.0 * batch * config["c"] * config["hw"] ** 2


def neighbours(config: dict[str, Any], rng: random.Random, count: int, max_flops: float = 2e8) -> list[dict[str, Any]]:
    """``count`` configurations near ``config``: channels from [0.4 C, 1.2 C], density one ladder step away."""
    found = []
    for _ in range(count * 5):
        if len(found) == count:
            break
        near = dict(config)
        for key in ("k", "n", "cin", "cout", "c", "hidden", "input") if config["kind"] not in ("conv", "csr_conv") \
                else ("cin", "cout"):  # fmt: skip
            if key in near and isinstance(near[key], int) and near[key] > 1:
                near[key] = max(1, int(round(near[key] * rng.uniform(0.4, 1.2))))
        if config["kind"] == "conv" and config["groups"] > 1:
            if config["groups"] == config["cin"]:
                near["cout"] = near["groups"] = near["cin"]
            else:
                g = config["groups"]
                near["cin"] = max(g, near["cin"] // g * g)
                near["cout"] = max(g, near["cout"] // g * g)
        if "density" in near and near.get("pattern") != "nm":
            near["density"] = min(0.7, max(0.005, near["density"] * math.exp(rng.uniform(-0.7, 0.7))))
        if near.get("pattern") == "nm":
            inner = near.get("k", 0) if near["kind"] == "csr_linear" else near["cin"] * near["k"] ** 2
            if inner % 4:
                near.update(pattern="unstructured")
        if config.get("semi"):  # the semi-structured kernels take multiples of 64 only
            near["k"], near["n"] = (max(64, round(near[key] / 64) * 64) for key in ("k", "n"))
        if _dense_flops(near) <= max_flops:
            found.append(near)
    return found


class _Functional(nn.Module):
    """Wraps one torch call so the tracer sees it as a call between layers."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], Any], second: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.second = second
        self.unused = nn.Identity()  # a child, so this reads as a container

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn(x, self.second)


def _masked(weight: torch.Tensor, config: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """``weight`` with the configuration's sparsity pattern and density applied."""
    rows = weight.shape[0]
    flat = weight.reshape(rows, -1)
    if config["pattern"] == "nm":
        n = config["nm"]
        groups = flat.abs().view(rows, -1, 4)
        keep = torch.zeros_like(groups).scatter_(-1, groups.topk(n, dim=-1).indices, 1.0)
        return (flat * keep.view_as(flat)).view_as(weight)
    mask = torch.zeros(flat.numel())
    density = config["density"]
    live_rows = rows
    if config["pattern"] == "rows":
        dead = min(rows - 1, int(config["dead_rows"] * rows))
        live_rows = rows - dead
        density = min(1.0, density * rows / max(live_rows, 1))
    live = torch.arange(live_rows * flat.shape[1])
    keep = max(1, min(live.numel() - 1, int(round(density * live.numel()))))
    chosen = live[torch.randperm(live.numel(), generator=generator)[:keep]]
    mask[chosen] = 1.0
    return (flat * mask.view_as(flat)).view_as(weight)


def semi_structured_config(rng: random.Random, batch_size: int = 1) -> dict[str, Any]:
    """A ``Linear`` with a 2:4 weight in fp16, dimensions multiples of 64 (the ``cuda`` target's sparse kernel)."""
    return {
        "kind": "linear", "k": 64 * rng.randint(1, 64), "n": 64 * rng.randint(1, 64), "batch": batch_size,
        "seq": rng.choice([1, 1, 16, 64]), "bias": True, "functional": False, "semi": True,
    }  # fmt: skip


def _module(config: dict[str, Any], generator: torch.Generator) -> tuple[nn.Module, tuple[int, ...]]:
    """The module of ``config`` (weights from the global seed, masks from ``generator``) and its input
    shape without the batch axis (for a time-major RNN: its batch-first shape, as traced)."""
    from nas.sparse.csr import CSRConv2d, CSRLinear

    kind, batch = config["kind"], config["batch"]
    if kind in ("linear", "csr_linear"):
        shape = (config["k"],) if config["seq"] == 1 else (config["seq"], config["k"])
        module: nn.Module = nn.Linear(config["k"], config["n"], bias=config["bias"])
        if kind == "csr_linear":
            with torch.no_grad():
                module.weight.copy_(_masked(module.weight, config, generator))
            module = CSRLinear(module)
        elif config.get("functional"):
            weight, bias = module.weight.detach(), None if module.bias is None else module.bias.detach()
            module = _Functional(lambda x, _: F.linear(x, weight, bias), torch.zeros(1))
    elif kind in ("conv", "csr_conv"):
        if config.get("conv1d"):
            module = nn.Conv1d(config["cin"], config["cout"], config["k"], config["stride"], config["padding"],
                               groups=config["groups"], bias=config["bias"])  # fmt: skip
            shape = (config["cin"], config["hw"])
        else:
            module = nn.Conv2d(config["cin"], config["cout"], config["k"], config["stride"], config["padding"],
                               groups=config["groups"], bias=config["bias"])  # fmt: skip
            shape = (config["cin"], config["hw"], config["hw"])
        if kind == "csr_conv":
            with torch.no_grad():
                module.weight.copy_(_masked(module.weight, config, generator))
            module = CSRConv2d(module)
    elif kind == "rnn":
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[config["mode"]]
        module = cls(config["input"], config["hidden"], config["layers"], batch_first=config["batch_first"],
                     bidirectional=config["bidirectional"])  # fmt: skip
        shape = (config["steps"], config["input"]) if config["batch_first"] else (config["steps"], config["input"])
    elif kind == "norm":
        c, hw = config["c"], config["hw"]
        module, shape = {
            "BatchNorm2d": (nn.BatchNorm2d(c), (c, hw, hw)),
            "BatchNorm1d": (nn.BatchNorm1d(c), (c,)),
            "LayerNorm": (nn.LayerNorm(c), (hw, c)),
            "GroupNorm": (nn.GroupNorm(1 if c % 2 else 2, c), (c, hw, hw)),
        }[config["op"]]
    elif kind == "pool":
        c, hw, k, out = config["c"], config["hw"], config["k"], config["out"]
        module, shape = {
            "MaxPool2d": (nn.MaxPool2d(k), (c, max(hw, k), max(hw, k))),
            "AvgPool2d": (nn.AvgPool2d(k), (c, max(hw, k), max(hw, k))),
            "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d(out), (c, hw, hw)),
            "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d(out), (c, hw, hw)),
            "MaxPool1d": (nn.MaxPool1d(k), (c, max(hw, k) * 4)),
            "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d(out), (c, hw * 4)),
        }[config["op"]]
    elif kind == "elementwise":
        c, hw = config["c"], config["hw"]
        shape = (c, hw, hw) if hw > 1 else (c,)
        if config["functional"]:
            second = torch.rand(batch, *shape, generator=generator) + 0.5
            module = _Functional(FUNCTIONAL[config["op"]], second)
        else:
            module = ELEMENTWISE_MODULES[config["op"]]()
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    return module, shape


def build(config: dict[str, Any], seed: int = 0, device: str = "cpu") -> tuple[Callable[[], Any], Layer]:
    """The call to time for ``config`` on ``device`` and its traced :class:`Layer` (features as ``predict``
    computes them)."""
    generator = torch.Generator().manual_seed(seed)
    kind, batch = config["kind"], config["batch"]
    torch.manual_seed(seed)
    module, shape = _module(config, generator)
    if kind == "rnn" and not config["batch_first"]:
        return _rnn_time_major(module, config, generator)
    module.eval()
    x = torch.randn(batch, *shape, generator=generator)
    if device != "cpu":
        module, x = _on_device(module, x, config, device)
    layers = trace(module, shape, batch).layers
    if len(layers) != 1:
        raise RuntimeError(f"a {kind} sample traced as {len(layers)} layers")
    if isinstance(module, _Functional):
        fn, second = module.fn, module.second
        return (lambda: fn(x, second)), layers[0]
    return (lambda: module(x)), layers[0]


def module_sample(config: dict[str, Any], seed: int = 0) -> tuple[nn.Module, tuple[int, ...], Layer]:
    """``config`` as a small model to time whole (exported to ONNX, or timed through agents): the module,
    its input shape without the batch axis, and its traced :class:`Layer`. A CSR sample stays CSR (an
    ONNX export stores it dense); an RNN runs batch-first, the layout exports take."""
    if config["kind"] == "rnn":
        config = {**config, "batch_first": True}
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module, shape = _module(config, generator)
    module.eval()
    layers = trace(module, shape, config["batch"]).layers
    if len(layers) != 1:
        raise RuntimeError(f"a {config['kind']} sample traced as {len(layers)} layers")
    return module, shape, layers[0]


def _on_device(module: nn.Module, x: torch.Tensor, config: dict[str, Any], device: str) -> tuple[nn.Module, torch.Tensor]:
    """``module`` and ``x`` moved to ``device``; a ``semi`` Linear gets a 2:4 fp16 semi-structured weight."""
    module, x = module.to(device), x.to(device)
    if isinstance(module, _Functional):
        module.second = module.second.to(device)
    if config.get("semi"):
        from torch.sparse import to_sparse_semi_structured

        module, x = module.half(), x.half()
        with torch.no_grad():
            weight = module.weight.detach()
            groups = weight.abs().view(weight.shape[0], -1, 4)
            keep = torch.zeros_like(groups).scatter_(-1, groups.topk(2, dim=-1).indices, 1.0).view_as(weight)
            module.weight = nn.Parameter(to_sparse_semi_structured(weight * keep), requires_grad=False)
    return module, x


def _rnn_time_major(module: nn.RNNBase, config: dict[str, Any], generator: torch.Generator) -> tuple[Callable[[], Any], Layer]:
    """A time-major RNN sample: its input is ``(steps, batch, input)``, so it is traced on that shape directly."""
    module.eval()
    x = torch.randn(config["steps"], config["batch"], config["input"], generator=generator)

    class _TimeMajor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = module

        def forward(self, z: torch.Tensor) -> Any:
            return self.rnn(z.transpose(0, 1))

    layers = [l for l in trace(_TimeMajor(), (config["steps"], config["input"]), config["batch"]).layers if l.kind == "rnn"]
    return (lambda: module(x)), layers[0]


_CHAIN_ACTIVATIONS = ("ReLU", "ReLU", "GELU", "Tanh", "SiLU", "ReLU6", "Sigmoid")


def sample_chain(rng: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """A short random stack of layers from this module's prior, for timing layers inside a model (after
    the layer before them) on shapes no calibration family has: fully connected stacks up to 4096
    wide, convolution stacks (with BatchNorm, activations, pooling) and recurrent layers with a head."""
    roll = rng.random()
    layers: list[nn.Module] = []
    if roll < 0.4:
        width = _log_int(rng, 16, 4096)
        shape: tuple[int, ...] = (width,)
        for _ in range(rng.randint(1, 4)):
            out = _log_int(rng, 8, 4096)
            while width * out > 8_000_000:
                out //= 2
            layers += [nn.Linear(width, out), ELEMENTWISE_MODULES[rng.choice(_CHAIN_ACTIVATIONS)]()]
            if rng.random() < 0.2:
                layers.append(nn.BatchNorm1d(out))
            width = out
    elif roll < 0.8:
        channels, size = rng.choice([1, 3, 8, 16]), rng.choice([8, 16, 28, 32])
        shape = (channels, size, size)
        for _ in range(rng.randint(1, 4)):
            out, k = _log_int(rng, 4, 128), rng.choice([1, 3, 3, 5])
            depthwise = rng.random() < 0.25 and channels > 1
            out = channels if depthwise else out
            layers.append(nn.Conv2d(channels, out, k, padding=k // 2, groups=channels if depthwise else 1))
            if rng.random() < 0.5:
                layers.append(nn.BatchNorm2d(out))
            layers.append(ELEMENTWISE_MODULES[rng.choice(_CHAIN_ACTIVATIONS)]())
            if size >= 8 and rng.random() < 0.5:
                layers.append(rng.choice([nn.MaxPool2d, nn.AvgPool2d])(2))
                size //= 2
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, _log_int(rng, 2, 256))]
    else:
        steps, features = _log_int(rng, 2, 48), _log_int(rng, 4, 256)
        shape = (steps, features)
        cls = rng.choice([nn.LSTM, nn.GRU, nn.RNN])
        hidden = _log_int(rng, 8, 512)
        layers += [_LastStep(cls(features, hidden, rng.choice([1, 1, 2]), batch_first=True)), nn.Linear(hidden, 10)]
    return nn.Sequential(*layers).eval(), shape


class _LastStep(nn.Module):
    """An RNN's output at its last step (the slicing runs between layers, as in a classifier)."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0][:, -1]
