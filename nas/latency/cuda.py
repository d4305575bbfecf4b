"""The ``cuda`` target's sparse kernel: 2:4 semi-structured ``Linear`` weights (Ampere and later).

``torch.sparse.to_sparse_semi_structured`` stores a weight with at most two nonzeros in every four
consecutive inputs as compressed values plus metadata, and its matmul runs on sparse tensor cores
(cuSPARSELt or CUTLASS). It takes fp16/bf16 weights whose both dimensions are multiples of 64
(``MIN_DIM``); on the CPU there is no such kernel, so 2:4 sparsity is just 50% unstructured sparsity
there. Everything here refuses to run without a GPU, with the same error as the target itself.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.timing.targets import CUDA, require_target

MIN_DIM = 64


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of four consecutive inputs of the 2-D ``weight`` has at most two nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).view(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def eligible(layer: nn.Module) -> bool:
    """A ``Linear`` whose (masked) weight is 2:4 sparse and whose shape the semi-structured kernels take."""
    if not isinstance(layer, nn.Linear):
        return False
    rows, cols = layer.weight.shape
    return rows % MIN_DIM == 0 and cols % MIN_DIM == 0 and is_two_four(layer.weight.detach())


def to_semi_structured(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """A plain copy of ``model`` on the GPU in ``dtype`` whose eligible ``Linear`` weights are semi-structured.

    Masks (parametrizations) are baked in first; ``model`` itself is left unchanged.
    """
    require_target(CUDA)
    from torch.sparse import to_sparse_semi_structured

    from nas.sparse.inference import plain_copy

    converted = plain_copy(model).to(device="cuda", dtype=dtype).eval()
    for module in converted.modules():
        if eligible(module):
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    return converted


def semi_structured_layers(model: nn.Module) -> list[str]:
    """Names of the ``Linear`` layers of ``model`` whose weight is a semi-structured sparse tensor."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and type(module.weight).__name__.startswith("SparseSemiStructured")
    ]
