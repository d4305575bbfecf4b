"""Size, sparsity and FLOP counts of a (masked) model, as the trial metrics report them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.sparse.masks import prunable_layers


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of the prunable weights (``Linear`` and ``Conv2d``) that are zero; 0.0 if there are none."""
    weights = [layer.weight.detach() for layer in prunable_layers(model).values()]
    total = sum(w.numel() for w in weights)
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights)
    return zeros / total if total else 0.0


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """``params``, ``nonzero_params``, ``sparsity``, ``flops`` and ``nonzero_flops`` of ``model``.

    FLOPs are twice the multiply-accumulates of ``Linear`` and ``Conv2d`` layers in one forward
    pass of a single example of ``input_shape`` (no batch dimension), counted by forward hooks so
    that any wiring of the layers is measured as it runs; ``nonzero_flops`` counts only the
    multiply-accumulates with a nonzero weight.
    """
    layers = prunable_layers(model)
    raw_weights = {id(_raw_weight(layer)) for layer in layers.values()}
    params = sum(p.numel() for p in model.parameters())
    nonzero_params = sum(int(torch.count_nonzero(layer.weight)) for layer in layers.values()) + sum(
        int(torch.count_nonzero(p)) for p in model.parameters() if id(p) not in raw_weights
    )

    macs = nonzero_macs = 0

    def count(layer: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs, nonzero_macs
        positions = output.numel() // layer.weight.shape[0]  # output elements per output channel
        macs += positions * layer.weight.numel()
        nonzero_macs += positions * int(torch.count_nonzero(layer.weight))

    handles = [layer.register_forward_hook(count) for layer in layers.values()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {
        "params": params,
        "nonzero_params": nonzero_params,
        "sparsity": weight_sparsity(model),
        "flops": 2 * macs,
        "nonzero_flops": 2 * nonzero_macs,
    }


def layer_report(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per prunable layer: ``name``, weight ``shape``, ``density`` (nonzero fraction), ``pattern``."""
    report = []
    for name, layer in prunable_layers(model).items():
        weight = layer.weight.detach()
        density = int(torch.count_nonzero(weight)) / weight.numel()
        report.append(
            {
                "name": name,
                "shape": list(weight.shape),
                "density": density,
                "pattern": "dense" if density == 1.0 else "unstructured",
            }
        )
    return report


def _raw_weight(layer: nn.Module) -> torch.Tensor:
    """The parameter that holds ``layer.weight``: the one under the mask if the layer is masked."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight
