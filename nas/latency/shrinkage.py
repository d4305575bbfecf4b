"""Which units the inference converter's shrinking would remove, worked out without copying the model.

:func:`nas.sparse.shrink.shrink` rebuilds smaller dense layers, which costs a deep copy, new
layers and float64 products: tens of milliseconds for a small MLP, more than a prediction may
take. The predictor only needs the resulting shapes and nonzeros, so :func:`shrink_plan` runs the
same rule on boolean masks: along each producer -> channel-wise modules -> consumer link of an
``nn.Sequential`` (the converter's own links), a unit goes when the producer's row is all zero or
the consumer never reads it, repeated until nothing changes. (The converter keeps a dead unit
whose constant output varies over a padded convolution's border; that rare case is not modelled.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Kept:
    """A layer's kept output units (weight rows) and kept inputs (weight dim 1)."""

    rows: torch.Tensor
    cols: torch.Tensor

    def weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The part of ``weight`` that stays."""
        return weight[self.rows][:, self.cols]

    @property
    def fraction(self) -> float:
        return float(self.rows.float().mean())


def shrink_plan(model: nn.Module, row_limits: Mapping[str, int] | None = None) -> dict[nn.Module, Kept]:
    """Kept rows and columns of every ``Linear``/``Conv2d`` that shrinking would change.

    ``row_limits`` (weight name -> units) treats only the first units of those weights as nonzero:
    a channel-pruned model whose masks are not made yet.
    """
    from nas.sparse.shrink import find_links

    links = find_links(model)
    if not links:
        return {}
    names = {module: path for path, module in model.named_modules()}
    nonzero: dict[nn.Module, torch.Tensor] = {}
    kept: dict[nn.Module, Kept] = {}

    def state(module: nn.Module) -> tuple[torch.Tensor, Kept]:
        if module not in nonzero:
            with torch.no_grad():
                mask = module.weight.detach() != 0
            limit = (row_limits or {}).get(f"{names[module]}.weight")
            if limit is not None:
                mask = mask.clone()
                mask[limit:] = False
            nonzero[module] = mask
            kept[module] = Kept(torch.ones(mask.shape[0], dtype=torch.bool), torch.ones(mask.shape[1], dtype=torch.bool))
        return nonzero[module], kept[module]

    changed = True
    while changed:
        changed = False
        for link in links:
            producer, consumer = link.seq.get_submodule(link.producer), link.seq.get_submodule(link.consumer)
            units = producer.weight.shape[0]
            if consumer.weight.shape[1] % units:
                continue
            produced, p_kept = state(producer)
            consumed, c_kept = state(consumer)
            live = (produced & _columns(p_kept.cols, produced)).flatten(1).any(dim=1)
            reading = consumed & p_rows(c_kept.rows, consumed) & _columns(c_kept.cols, consumed)
            reads = reading.reshape(consumed.shape[0], units, -1).any(dim=2).any(dim=0)
            remove = (~reads | ~live) & p_kept.rows
            if isinstance(consumer, nn.Conv2d) and any(pad > 0 for pad in consumer.padding):
                # a dead unit still outputs a constant (its bias through the modules between); over a
                # padded convolution that constant's contribution varies at the border, so it stays
                remove &= ~(~live & reads & _constant_nonzero(producer, link.modules_between()))
            if not bool(remove.any()):
                continue
            if bool((p_kept.rows & ~remove).sum() == 0):
                first = int(torch.nonzero(p_kept.rows)[0])
                remove[first] = False  # a layer keeps at least one unit, as the converter does
                if not bool(remove.any()):
                    continue
            p_kept.rows &= ~remove
            c_kept.cols &= ~remove.repeat_interleave(consumer.weight.shape[1] // units)
            changed = True
    return {module: k for module, k in kept.items() if not (bool(k.rows.all()) and bool(k.cols.all()))}


def _constant_nonzero(producer: nn.Module, between: list[nn.Module]) -> torch.Tensor:
    """Per unit: whether a dead unit's output (its bias through the channel-wise ``between``) is nonzero."""
    units = producer.weight.shape[0]
    bias = producer.bias.detach() if producer.bias is not None else torch.zeros(units)
    size = max([2] + [_window(m) for m in between])
    modes = [m.training for m in between]
    try:
        with torch.no_grad():
            x = bias.view(1, units, 1, 1).expand(1, units, size, size)
            for module in between:
                module.eval()
                x = module(x)
    finally:
        for module, mode in zip(between, modes):
            module.train(mode)
    return (x != 0).reshape(1, units, -1).any(dim=2)[0]


def _window(module: nn.Module) -> int:
    kernel = getattr(module, "kernel_size", 1)
    return max(kernel) if isinstance(kernel, tuple) else int(kernel)


def _columns(cols: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return cols.view(1, -1, *[1] * (like.dim() - 2))


def p_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return rows.view(-1, *[1] * (like.dim() - 1))
