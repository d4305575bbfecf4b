"""Weight masks as parametrizations, so the forward pass always sees ``weight * mask``.

Because the mask multiplies the weight inside the forward pass, masked weights stay exactly zero
whatever the optimizer does to the underlying parameter (momentum, Adam moments, weight decay),
and their gradients are exactly zero too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

PRUNABLE = (nn.Linear, nn.Conv2d)


class WeightMask(nn.Module):
    """Multiplies a weight by a fixed 0/1 mask; a buffer, so it follows ``.to()`` and ``state_dict``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``Linear`` and ``Conv2d`` layers of ``model`` by ``named_modules`` name, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, PRUNABLE)}


def get_mask(layer: nn.Module) -> torch.Tensor | None:
    """The 0/1 mask on ``layer.weight``, or ``None`` if it has none."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return next((p.mask for p in layer.parametrizations.weight if isinstance(p, WeightMask)), None)


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask in ``model``, keyed by the name of the layer it masks."""
    return {name: mask for name, module in model.named_modules() if (mask := get_mask(module)) is not None}


def set_mask(layer: nn.Module, mask: torch.Tensor) -> None:
    """Mask ``layer.weight`` with ``mask`` (nonzero = keep), replacing an earlier mask.

    The underlying parameter is zeroed where masked too, so it is clean however it is read later;
    it stays the same ``Parameter`` object, so an optimizer built earlier keeps updating it.
    """
    weight = layer.weight
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    mask = mask.detach().to(device=weight.device).bool().to(weight.dtype)
    with torch.no_grad():
        current = get_mask(layer)
        if current is None:
            parametrize.register_parametrization(layer, "weight", WeightMask(mask))
        else:
            current.copy_(mask)
        layer.parametrizations.weight.original.mul_(mask)


def strip_masks(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight and drop the parametrization, leaving plain layers (e.g. for export)."""
    for name in masks(model):
        parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=True)
    return model


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing exactly ``round(sparsity * n)`` of the smallest-magnitude entries.

    ``n`` counts all the given weights together, so one weight gives layer-wise pruning and
    several give a single global threshold. Ties are broken by position, so the count is exact.
    """
    if not weights:
        return {}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[: round(sparsity * flat.numel())]] = False
    parts = keep.split([w.numel() for w in weights.values()])
    return {name: part.view_as(w) for (name, w), part in zip(weights.items(), parts)}
