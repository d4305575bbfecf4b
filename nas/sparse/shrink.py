"""Physically remove output units that are gone, turning a unit-pruned network into smaller dense layers.

Within an ``nn.Sequential``, or along a chain of an ``fx.GraphModule``'s graph (a network converted
from ONNX), a producer (``Linear``/``Conv2d``) feeds a consumer of the same kind through
channel-wise modules or functions only (activations, BatchNorm, pooling, dropout, ``Flatten``),
each read by the next step alone. Unit c of the producer can go, with the matching input columns
of the consumer, when

* the consumer never reads it (its columns for c are all zero), or
* the producer's row c is all zero, so the unit outputs a constant (its bias through the
  channel-wise modules): that constant's contribution is folded into the consumer's bias, which
  is exact whenever it is the same at every output position (always for a ``Linear`` consumer;
  for a convolution only if padding does not make it vary, which is checked, not assumed).

Grouped convolutions are left as they are. The function computed does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from nas.sparse.stats import run_hooked

_LAYERS = (nn.Linear, nn.Conv2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CHANNELWISE = (
    *_BATCHNORMS,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
)  # fmt: skip


# Functions of a graph that act on every channel alike, as the modules above do; pooling's first
# argument after the input is its kernel size.
_CHANNELWISE_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.hardsigmoid,
    torch.sigmoid, torch.tanh, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.flatten,
})  # fmt: skip
_POOLS = frozenset({F.max_pool2d, F.avg_pool2d})


@dataclass
class Link:
    """``seq[producer] -> between... -> seq[consumer]``: layers named within ``seq``, a Sequential or a GraphModule.

    ``between`` names the channel-wise submodules in between (BatchNorm among them shrinks too);
    ``steps``, for a graph, is every step in between in order, its functions as modules.
    """

    seq: nn.Module
    producer: str
    between: list[str]
    consumer: str
    steps: list[nn.Module] | None = None

    def modules_between(self) -> list[nn.Module]:
        """What the producer's output goes through before the consumer, in order."""
        if self.steps is not None:
            return self.steps
        return [self.seq.get_submodule(name) for name in self.between]


class _Call(nn.Module):
    """A function node of a graph as a module: what folding a dead unit's constant runs."""

    def __init__(self, fn: Callable[..., torch.Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.kernel_size = args[0] if fn in _POOLS and args else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args, **self.kwargs)


def shrink(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Remove every removable unit of ``model`` (in eval mode) in place, until none is left."""
    shapes = _output_shapes(model, input_shape)
    while any([_shrink_link(link, shapes) for link in find_links(model)]):
        pass


def find_links(model: nn.Module) -> list[Link]:
    """Producer-consumer pairs joined by channel-wise modules only, with one ``Flatten`` iff a conv feeds a Linear."""
    links = _graph_links(model) if isinstance(model, fx.GraphModule) else []
    for seq in (m for m in model.modules() if isinstance(m, nn.Sequential)):
        children = list(seq.named_children())
        for i, (name, producer) in enumerate(children):
            if not _plain(producer):
                continue
            j = i + 1
            while j < len(children) and _is_channelwise(children[j][1]):
                j += 1
            if j == len(children) or not _plain(children[j][1]):
                continue
            between = [n for n, _ in children[i + 1 : j]]
            flattens = [m for _, m in children[i + 1 : j] if isinstance(m, nn.Flatten)]
            consumer = children[j][1]
            if isinstance(producer, nn.Conv2d) and (len(flattens) == 1) != isinstance(consumer, nn.Linear):
                continue
            links.append(Link(seq, name, between, children[j][0]))
    return links


def _graph_links(graph_module: fx.GraphModule) -> list[Link]:
    """The links of a graph: from each plain layer, a chain of channel-wise steps, each the only reader of the
    one before and taking it as its first argument, up to the next plain layer."""
    modules = dict(graph_module.named_modules())
    links = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or "." in node.target or not _plain(modules[node.target]):
            continue
        names: list[str] = []
        steps: list[nn.Module] = []
        flattens, current = 0, node
        while len(current.users) == 1:
            (user,) = current.users
            rest = (*user.args[1:], *user.kwargs.values())
            if not user.args or user.args[0] is not current or any(isinstance(a, fx.Node) for a in rest):
                break
            if user.op == "call_module":
                module = modules[user.target]
                if _plain(module) and "." not in user.target:
                    if not isinstance(modules[node.target], nn.Conv2d) or (flattens == 1) == isinstance(module, nn.Linear):
                        links.append(Link(graph_module, node.target, names, user.target, steps))
                    break
                if not _is_channelwise(module):
                    break
                names.append(user.target)
                steps.append(module)
                flattens += isinstance(module, nn.Flatten)
            elif user.op == "call_function" and user.target in _CHANNELWISE_FUNCTIONS:
                if user.target is torch.flatten and (tuple(user.args[1:]), user.kwargs) not in (((1,), {}), ((1, -1), {})):
                    break
                steps.append(_Call(user.target, tuple(user.args[1:]), dict(user.kwargs)))
                flattens += user.target is torch.flatten
            else:
                break
            current = user
    return links


def _plain(module: nn.Module) -> bool:
    return isinstance(module, _LAYERS) and getattr(module, "groups", 1) == 1


def _is_channelwise(module: nn.Module) -> bool:
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if isinstance(module, nn.PReLU):
        return module.num_parameters == 1
    return isinstance(module, _CHANNELWISE)


def _output_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, torch.Size]:
    """Each layer's output shape for one example (batch size 1)."""
    shapes: dict[nn.Module, torch.Size] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        shapes.setdefault(module, output.shape)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _LAYERS)]
    run_hooked(model, input_shape, hooks)
    return shapes


def _shrink_link(link: Link, shapes: dict[nn.Module, torch.Size]) -> bool:
    """Remove the removable units between one producer and its consumer; whether any went."""
    producer, consumer = link.seq.get_submodule(link.producer), link.seq.get_submodule(link.consumer)
    if producer not in shapes or (isinstance(producer, nn.Linear) and len(shapes[producer]) != 2):
        return False  # never ran, or a Linear over a sequence, whose units are not dim 1
    units = producer.weight.shape[0]
    if consumer.weight.shape[1] % units:
        return False
    reads = (consumer.weight != 0).view(consumer.weight.shape[0], units, -1).any(dim=2).any(dim=0)
    dead = ~(producer.weight != 0).flatten(1).any(dim=1)
    remove = ~reads | dead
    if remove.all():
        remove[0] = False  # a layer keeps at least one unit

    # What the removed dead units that the consumer reads add to its output: their constant (the
    # producer's bias through the channel-wise modules) in the consumer's input layout, times its weight.
    spatial = shapes[producer][2:]
    bias = producer.bias.detach() if producer.bias is not None else torch.zeros(units)
    with torch.no_grad():
        constant = bias.view(1, units, *[1] * len(spatial)).expand(1, units, *spatial)
        for module in link.modules_between():
            constant = module(constant)
    per_unit = constant.shape[1] // units  # 1, or h*w after a Flatten
    constant = constant.double() * _spread(remove & reads, per_unit, constant)
    contribution = _apply_without_bias(consumer, constant)
    uniform = contribution.dim() == 2 or torch.equal(contribution, contribution[..., :1, :1].expand_as(contribution))
    if not uniform:
        remove &= ~(constant != 0).reshape(units, -1).any(dim=1)  # padding makes it vary: keep those units
        contribution = torch.zeros_like(contribution)
    keep = ~remove
    if keep.all():
        return False

    folded = contribution.flatten(2)[0, :, 0] if contribution.dim() > 2 else contribution[0]
    setattr(link.seq, link.producer, _take_outputs(producer, keep))
    for name in link.between:
        module = link.seq.get_submodule(name)
        if isinstance(module, _BATCHNORMS):
            setattr(link.seq, name, _take_batchnorm(module, keep))
    columns = keep.repeat_interleave(consumer.weight.shape[1] // units)
    setattr(link.seq, link.consumer, _take_inputs(consumer, columns, folded))
    shapes[link.seq.get_submodule(link.producer)] = shapes[producer]
    shapes[link.seq.get_submodule(link.consumer)] = shapes[consumer]
    return True


def _spread(units: torch.Tensor, per_unit: int, like: torch.Tensor) -> torch.Tensor:
    """A per-unit 0/1 vector laid out like ``like`` (``(1, units, ...)`` or flattened ``(1, units * per_unit)``)."""
    if like.dim() == 2:
        return units.repeat_interleave(per_unit).view(1, -1).to(like.dtype)
    return units.view(1, -1, *[1] * (like.dim() - 2)).to(like.dtype)


def _apply_without_bias(consumer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The consumer's weight applied to ``x`` in float64, so the folded bias is as exact as it can be."""
    weight = consumer.weight.detach().double()
    if isinstance(consumer, nn.Linear):
        return nn.functional.linear(x, weight)
    return consumer._conv_forward(x, weight, None)


def _take_outputs(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    bias = None if layer.bias is None else layer.bias.detach()[keep]
    return _rebuilt(layer, layer.weight.detach()[keep], bias)


def _take_inputs(layer: nn.Module, keep: torch.Tensor, folded: torch.Tensor) -> nn.Module:
    bias = folded if layer.bias is None else layer.bias.detach().double() + folded
    return _rebuilt(layer, layer.weight.detach()[:, keep], None if layer.bias is None and not bias.any() else bias)


def _rebuilt(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A plain ``Linear``/``Conv2d`` like ``layer`` with the given weight and bias."""
    factory = {"dtype": weight.dtype, "device": weight.device}
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **factory)
    else:
        new = nn.Conv2d(
            weight.shape[1], weight.shape[0], layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            bias=bias is not None, padding_mode=layer.padding_mode, **factory,
        )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.train(layer.training)


def _take_batchnorm(bn: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(bn)(int(keep.sum()), bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device=keep.device)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(bn, name) is not None:
                getattr(new, name).copy_(getattr(bn, name)[keep])
        if bn.track_running_stats:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)
