"""Weight masks as parametrizations, so the forward pass always sees ``weight * mask``.

Because the mask multiplies the weight inside the forward pass, masked weights stay exactly zero
whatever the optimizer does to the underlying parameter (momentum, Adam moments, weight decay),
and their gradients are exactly zero too. The same holds for the weights of ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN``, which read their (parametrized) weights on every forward pass.

A prunable weight is named by its ``state_dict`` path: ``"fc0.weight"``, ``"rnn.weight_hh_l0"``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "linear"),
    (nn.Conv2d, "conv2d"),
    (nn.LSTM, "lstm"),
    (nn.GRU, "gru"),
    (nn.RNN, "rnn"),
)


class WeightMask(nn.Module):
    """Multiplies a weight by a fixed 0/1 mask; a buffer, so it follows ``.to()`` and ``state_dict``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def weight_kind(module: nn.Module) -> str:
    """``"linear"``, ``"conv2d"``, ``"lstm"``, ``"gru"`` or ``"rnn"``; ``ValueError`` for other modules."""
    for cls, kind in _KINDS:
        if isinstance(module, cls):
            return kind
    raise ValueError(f"{type(module).__name__} has no prunable weights")


def _weight_attrs(module: nn.Module) -> list[str]:
    """The prunable weight attributes of one module: ``weight``, or an RNN's input and recurrent weights."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return ["weight"]
    if isinstance(module, nn.RNNBase):
        return [n for n in module._flat_weights_names if n.startswith(("weight_ih_l", "weight_hh_l"))]
    return []


def prunable_weights(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Every prunable weight of ``model``, ``name -> (owning module, attribute)``, in module order.

    Biases (and LSTM projection weights) are never pruned.
    """
    return {
        f"{prefix}.{attr}" if prefix else attr: (module, attr)
        for prefix, module in model.named_modules()
        for attr in _weight_attrs(module)
    }


def raw_weight(module: nn.Module, attr: str) -> nn.Parameter:
    """The trainable tensor behind ``module.<attr>``: the parametrization's ``original`` when there is one."""
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def get_mask(module: nn.Module, attr: str) -> torch.Tensor | None:
    """The current 0/1 mask of ``module.<attr>``: the product of every parametrization's ``mask``
    on it (a score mask of a SparseLinear and a sparsifier's mask stack), else ``None``."""
    if not parametrize.is_parametrized(module, attr):
        return None
    found = [p.mask for p in module.parametrizations[attr] if getattr(p, "mask", None) is not None]
    if not found:
        return None
    combined = found[0]
    for mask in found[1:]:
        combined = combined * mask
    return combined


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask in ``model``, keyed by the name of the weight it masks."""
    return {
        name: mask
        for name, (module, attr) in prunable_weights(model).items()
        if (mask := get_mask(module, attr)) is not None
    }


def set_mask(module: nn.Module, attr: str, mask: torch.Tensor) -> None:
    """Mask ``module.<attr>`` with ``mask`` (nonzero = keep), replacing an earlier ``WeightMask``.

    The underlying parameter is zeroed where masked too, so it is clean however it is read later;
    it stays the same ``Parameter`` object, so an optimizer built earlier keeps updating it.
    """
    weight = raw_weight(module, attr)
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    mask = mask.detach().to(device=weight.device).bool().to(weight.dtype)
    with torch.no_grad():
        current = _weight_mask(module, attr)
        if current is None:
            parametrize.register_parametrization(module, attr, WeightMask(mask))
        else:
            current.mask.copy_(mask)
        weight.mul_(mask)


def harden_mask(module: nn.Module, attr: str, mask: torch.Tensor) -> None:
    """Replace every parametrization on ``module.<attr>`` by a hard :class:`WeightMask` of ``mask``.

    For fixing the mask of a parametrization that computes its own (scores, N:M): given the mask
    that parametrization applies, the forward pass sees the same values before and after. The
    weight goes back to its underlying parameter, the same ``Parameter`` object (see :func:`set_mask`).
    """
    parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    set_mask(module, attr, mask)


def _weight_mask(module: nn.Module, attr: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, attr):
        return None
    return next((p for p in module.parametrizations[attr] if isinstance(p, WeightMask)), None)


def strip_masks(model: nn.Module) -> nn.Module:
    """Bake every masked weight into a plain parameter and drop its parametrizations (e.g. for export)."""
    for module, attr in [prunable_weights(model)[name] for name in masks(model)]:
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing exactly ``round(sparsity * n)`` of the smallest-magnitude entries.

    ``n`` counts all the given weights together, so one weight gives layer-wise pruning and
    several give a single global threshold (Han et al., 2015). Ties are broken by position, so
    the count is exact.
    """
    if not weights:
        return {}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[: round(sparsity * flat.numel())]] = False
    parts = keep.split([w.numel() for w in weights.values()])
    return {name: part.view_as(w) for (name, w), part in zip(weights.items(), parts)}


def checked_targets(model: nn.Module, layer_sparsity: dict[str, float] | None) -> dict[str, float]:
    """``layer_sparsity`` as a dict, after checking that it names only prunable weights of ``model``."""
    unknown = sorted(set(layer_sparsity or {}) - set(prunable_weights(model)))
    if unknown:
        raise ValueError(f"layer_sparsity names weights the model does not have: {unknown}")
    return dict(layer_sparsity or {})


def magnitude_prune(model: nn.Module, sparsity: float, overrides: dict[str, float], scope: str) -> None:
    """Mask the smallest-magnitude weights of ``model``: ``overrides`` give some weights their own sparsity.

    ``scope="layer"``: every other weight loses ``sparsity`` of its entries; ``"global"``: one
    threshold over all the other weights together. Magnitudes are those the forward pass sees, so
    weights masked before are the first to go again.
    """
    owners = prunable_weights(model)
    weights = {name: getattr(module, attr) for name, (module, attr) in owners.items()}
    if scope == "layer":
        groups = [({name: w}, overrides.get(name, sparsity)) for name, w in weights.items()]
    else:
        groups = [({name: weights[name]}, target) for name, target in overrides.items()]
        groups.append(({name: w for name, w in weights.items() if name not in overrides}, sparsity))
    for group, target in groups:
        for name, mask in magnitude_masks(group, target).items():
            set_mask(*owners[name], mask)
