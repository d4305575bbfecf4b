"""HYDRA's score-masked weights (Sehwag et al., NeurIPS 2020), as DASS uses them (Mousavi et al., 2023).

Every masked weight ``W`` gets a learnable score ``S`` of its shape; the forward pass uses
``W ⊙ TopK(|S|, k)``, where the top-k mask keeps the ``numel − int((1 − k)·numel)`` largest
``|S|`` of the layer (HYDRA's ``GetSubnet``: it zeroes the lowest ``int((1 − k)·numel)``).
The mask is a step function, so its gradient is passed straight through:
``∂L/∂|S| := ∂L/∂M = ∂L/∂(W ⊙ M) ⊙ W``, and autograd carries it through ``|·|`` to ``S``.

The mechanism is a parametrization, :class:`ScoreMask`, whose ``original`` is ``W`` and which
holds ``S``; it exposes the current ``mask``, so :func:`nas.sparse.masks.get_mask` sees it.
:class:`SparseLinear` and :class:`SparseConv2d` are ``nn.Linear`` / ``nn.Conv2d`` with a
:class:`ScoreMask` already on their weight: the layers DASS's search space is built from.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize


def topk_mask(scores: torch.Tensor, k: float) -> torch.Tensor:
    """0/1 mask (dtype of ``scores``) keeping the ``numel − int((1 − k)·numel)`` largest ``scores``.

    The count is HYDRA's ``GetSubnet`` formula to the letter, float rounding of ``(1 − k)·numel``
    included; ties are broken by ``topk``, so the count is always exact.
    """
    keep = scores.numel() - int((1 - k) * scores.numel())
    mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
    mask[scores.flatten().topk(keep, sorted=False).indices] = 1
    return mask.view_as(scores)


class _TopKStraightThrough(torch.autograd.Function):
    """HYDRA's ``GetSubnet``: the top-k mask forward, the incoming gradient unchanged backward."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, k: float) -> torch.Tensor:
        return topk_mask(scores, k)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def scaled_scores(weight: torch.Tensor) -> torch.Tensor:
    """HYDRA's ``--scaled-score-init``: ``S = sqrt(6 / fan_in) · W / max|W|``.

    Scores start proportional to the weights (so the first mask is the magnitude mask) at the
    scale of a Kaiming-uniform initialisation.
    """
    fan_in = nn.init._calculate_correct_fan(weight, "fan_in")
    weight = weight.detach()
    return math.sqrt(6 / fan_in) * weight / weight.abs().max().clamp_min(torch.finfo(weight.dtype).tiny)


class ScoreMask(nn.Module):
    """Parametrization ``W -> W ⊙ TopK(|S|, k)`` holding the learnable scores ``S``.

    ``k`` is the fraction of the weight kept, in (0, 1]; ``k = 1`` keeps every weight (DASS's
    dense pre-training phase).
    """

    def __init__(self, scores: torch.Tensor, k: float) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores.detach().clone())
        self.k = k

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _TopKStraightThrough.apply(self.scores.abs(), self.k)

    @property
    def mask(self) -> torch.Tensor:
        """The 0/1 mask the forward pass applies now."""
        return topk_mask(self.scores.detach().abs(), self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def get_score_mask(module: nn.Module, attr: str) -> ScoreMask | None:
    """The :class:`ScoreMask` on ``module.<attr>``, or ``None``."""
    if not parametrize.is_parametrized(module, attr):
        return None
    return next((p for p in module.parametrizations[attr] if isinstance(p, ScoreMask)), None)


def add_score_mask(module: nn.Module, attr: str, k: float) -> ScoreMask:
    """Put a :class:`ScoreMask` keeping ``k`` with scaled scores on ``module.<attr>``.

    An existing one (e.g. a :class:`SparseLinear`'s) is reused with its scores and set to ``k``,
    so scores are never stacked.
    """
    existing = get_score_mask(module, attr)
    if existing is not None:
        existing.k = k
        return existing
    parametrization = ScoreMask(scaled_scores(getattr(module, attr)), k)
    parametrize.register_parametrization(module, attr, parametrization)
    return parametrization


class _ScoredWeight:
    """Mixin for a layer whose ``weight`` carries a :class:`ScoreMask`; scores start Kaiming-normal (DASS)."""

    def _add_scores(self, k: float) -> None:
        scores = torch.empty_like(self.weight)
        nn.init.kaiming_normal_(scores)
        parametrize.register_parametrization(self, "weight", ScoreMask(scores, k))

    @property
    def score_mask(self) -> ScoreMask:
        found = get_score_mask(self, "weight")
        if found is None:
            raise AttributeError(f"{type(self).__name__}'s weight no longer has scores (its mask was fixed)")
        return found

    @property
    def scores(self) -> nn.Parameter:
        return self.score_mask.scores

    @property
    def k(self) -> float:
        return self.score_mask.k

    @k.setter
    def k(self, k: float) -> None:
        self.score_mask.k = k


class SparseLinear(_ScoredWeight, nn.Linear):
    """``nn.Linear`` computing with ``W ⊙ TopK(|S|, k)`` (HYDRA's ``SubnetLinear``)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, k: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._add_scores(k)


class SparseConv2d(_ScoredWeight, nn.Conv2d):
    """``nn.Conv2d`` computing with ``W ⊙ TopK(|S|, k)`` (HYDRA's ``SubnetConv``); grouped and depthwise too."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Any, *args: Any, k: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, *args, **kwargs)
        self._add_scores(k)
