"""Physically remove output units that are gone, turning a unit-pruned network into smaller dense layers.

Within an ``nn.Sequential``, a producer (``Linear``/``Conv2d``) feeds a consumer of the same kind
through channel-wise modules only (activations, BatchNorm, pooling, dropout, ``Flatten``). Unit c
of the producer can go, with the matching input columns of the consumer, when

* the consumer never reads it (its columns for c are all zero), or
* the producer's row c is all zero, so the unit outputs a constant (its bias through the
  channel-wise modules): that constant's contribution is folded into the consumer's bias, which
  is exact whenever it is the same at every output position (always for a ``Linear`` consumer;
  for a convolution only if padding does not make it vary, which is checked, not assumed).

Grouped convolutions are left as they are. The function computed does not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nas.sparse.stats import run_hooked

_LAYERS = (nn.Linear, nn.Conv2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CHANNELWISE = (
    *_BATCHNORMS,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
)  # fmt: skip


@dataclass
class Link:
    """``seq[producer] -> seq[between...] -> seq[consumer]``, children named within one Sequential."""

    seq: nn.Sequential
    producer: str
    between: list[str]
    consumer: str


def shrink(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Remove every removable unit of ``model`` (in eval mode) in place, until none is left."""
    shapes = _output_shapes(model, input_shape)
    while any([_shrink_link(link, shapes) for link in find_links(model)]):
        pass


def find_links(model: nn.Module) -> list[Link]:
    """Producer-consumer pairs joined by channel-wise modules only, with one ``Flatten`` iff a conv feeds a Linear."""
    links = []
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
    between = [link.seq.get_submodule(name) for name in link.between]
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
        for module in between:
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
    for name, module in zip(link.between, between):
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
