"""Torch side of channel pruning (imported lazily by :mod:`nas.sparse.channel`): unit scores and row masks."""

from __future__ import annotations

import torch
from torch import nn

from nas.sparse.masks import prunable_weights, set_mask

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYERS = (nn.Linear, nn.Conv2d)


def following_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """Weight name -> the affine BatchNorm right after its ``Linear``/``Conv2d`` in an ``nn.Sequential``.

    Only a BatchNorm over exactly the layer's output units counts, so its scale γ_c belongs to unit c.
    """
    found: dict[str, nn.Module] = {}
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (name, layer), (_, after) in zip(children, children[1:]):
            if (
                isinstance(layer, _LAYERS)
                and isinstance(after, _BATCHNORMS)
                and after.affine
                and after.num_features == layer.weight.shape[0]
            ):
                found[f"{prefix}.{name}.weight" if prefix else f"{name}.weight"] = after
    return found


def unit_scores(weight: torch.Tensor, batchnorm: nn.Module | None) -> torch.Tensor:
    """Each output unit's importance: |γ| of its BatchNorm (Liu et al., 2017), else its L1 norm (Li et al., 2017)."""
    if batchnorm is not None:
        return batchnorm.weight.detach().abs()
    return weight.detach().abs().flatten(1).sum(dim=1)


def channel_mask(weight: torch.Tensor, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0/1 mask of ``weight``'s shape zeroing the ``round(sparsity * units)`` lowest-scoring output units.

    At least one unit survives, so a layer never disconnects the network; ties go by position.
    """
    units = weight.shape[0]
    removed = min(round(sparsity * units), units - 1)
    keep = torch.ones(units, dtype=torch.bool, device=weight.device)
    keep[torch.argsort(scores, stable=True)[:removed]] = False
    return keep.view(-1, *[1] * (weight.dim() - 1)).expand_as(weight)


def prune_channels(model: nn.Module, sparsity: float, overrides: dict[str, float], criterion: str) -> None:
    """Mask whole output units of every ``Linear``/``Conv2d`` weight but the last (the classifier's).

    ``overrides`` give some weights their own fraction of units removed. With ``criterion="bn"``
    a weight without a following BatchNorm is scored by L1 norm instead.
    """
    owners = {name: owner for name, owner in prunable_weights(model).items() if isinstance(owner[0], _LAYERS)}
    batchnorms = following_batchnorms(model) if criterion == "bn" else {}
    for name in list(owners)[:-1]:
        module, attr = owners[name]
        weight = getattr(module, attr)
        scores = unit_scores(weight, batchnorms.get(name))
        set_mask(module, attr, channel_mask(weight, scores, overrides.get(name, sparsity)))


def slimming_penalty(batchnorms: list[nn.Module], strength: float) -> None:
    """Add the subgradient of ``strength * Σ|γ|`` to the BatchNorm scales' gradients (Network Slimming)."""
    with torch.no_grad():
        for bn in batchnorms:
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight), alpha=strength)
