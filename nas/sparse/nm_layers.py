"""N:M masks and the SR-STE parametrization (Zhou et al., ICLR 2021; ``aojunzz/NM-sparsity``).

Torch code of :mod:`nas.sparse.nm`, imported only when a model is sparsified.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """0/1 mask (dtype of ``weight``) keeping the ``n`` largest ``|w|`` of every ``m`` consecutive input channels.

    Groups run along dim 1, the input-channel axis: a Linear or RNN weight ``(out, in)`` is
    grouped along ``in``; a Conv2d weight ``(out, in/groups, kh, kw)`` along ``in/groups`` for
    every ``(out, kh, kw)``, as the reference code's ``Sparse_NHWC`` permutes to ``(O, H, W, I)``.
    ``ValueError`` if dim 1 is not a multiple of ``m``.
    """
    channels = weight.shape[1]
    if channels % m:
        raise ValueError(
            f"N:M needs the input channels to be a multiple of M={m}; weight {tuple(weight.shape)} has {channels}"
        )
    grouped = weight.detach().abs().movedim(1, -1).unflatten(-1, (channels // m, m))
    mask = torch.zeros_like(grouped).scatter_(-1, grouped.topk(n, dim=-1, sorted=False).indices, 1.0)
    return mask.flatten(-2).movedim(-1, 1)


class _SparseSTE(torch.autograd.Function):
    """Forward ``W ⊙ E``; backward SR-STE ``g(W̃) + λ_W·(1 − E) ⊙ W`` to the dense weight (STE when ``λ_W = 0``)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weight, mask = ctx.saved_tensors
        if ctx.decay:
            grad = grad + ctx.decay * (1 - mask) * weight
        return grad, None, None


class NMMask(nn.Module):
    """Parametrization ``W -> W ⊙ E(W)`` with ``E`` the N:M mask of ``|W|``, recomputed every forward pass.

    As in the reference code the mask follows the dense weight, which keeps receiving the full
    straight-through gradient; ``decay`` is SR-STE's ``λ_W`` (0 gives plain STE). ``mask`` is the
    mask of the last forward pass (a buffer, so it follows ``.to()``).
    """

    def __init__(self, n: int, m: int, decay: float) -> None:
        super().__init__()
        self.n, self.m, self.decay = n, m, decay
        self.register_buffer("mask", None)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        self.mask = nm_mask(weight, self.n, self.m)
        return _SparseSTE.apply(weight, self.mask, self.decay)

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, decay={self.decay}"
