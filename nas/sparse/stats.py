"""Size, sparsity and FLOP counts of a (masked) model, as the trial metrics report them.

Every count reads weights as the forward pass sees them (``getattr(module, attr)``), so any
parametrization — a hard mask or a method's own scores — is accounted for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from nas.sparse.masks import get_mask, prunable_weights

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from nas.sparse.base import Sparsifier


def weight_densities(model: nn.Module) -> dict[str, float]:
    """Nonzero fraction of every prunable weight, by weight name."""
    return {
        name: int(torch.count_nonzero(w := getattr(module, attr).detach())) / w.numel()
        for name, (module, attr) in prunable_weights(model).items()
    }


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of all prunable weights together that are zero; 0.0 if there are none."""
    weights = [getattr(module, attr).detach() for module, attr in prunable_weights(model).values()]
    total = sum(w.numel() for w in weights)
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights)
    return zeros / total if total else 0.0


def _effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter as the forward pass sees it: parametrized tensors once, their internals not at all."""
    plain = [p for name, p in model.named_parameters() if "parametrizations" not in name.split(".")]
    parametrized = [
        getattr(module, attr).detach()
        for module in model.modules()
        if parametrize.is_parametrized(module)
        for attr in module.parametrizations
    ]
    return plain + parametrized


def _time_steps(inputs: tuple[Any, ...]) -> int:
    """Cell applications per layer and direction: sequence length times batch size."""
    x = inputs[0]
    if isinstance(x, PackedSequence):
        return int(x.batch_sizes.sum())
    return x.shape[:-1].numel()  # (seq, batch), (batch, seq) or unbatched (seq,)


def run_hooked(model: nn.Module, input_shape: tuple[int, ...], hooks: Iterable[RemovableHandle]) -> None:
    """Pass one all-zero example of ``input_shape`` (batch size 1) through ``model`` without gradients,
    then remove ``hooks`` (the hooks registered to observe that pass), even if it raised."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """``params``, ``nonzero_params``, ``sparsity``, ``flops`` and ``nonzero_flops`` of ``model``.

    FLOPs are twice the multiply-accumulates with prunable weights in one forward pass of a
    single example of ``input_shape`` (no batch dimension), counted by forward hooks so that any
    wiring is measured as it runs: ``Linear``/``Conv2d`` once per output position, RNN weights
    (all gates) once per time step. ``nonzero_flops`` counts only those with a nonzero weight.
    """
    tensors = _effective_tensors(model)
    owners: dict[nn.Module, list[str]] = {}
    for module, attr in prunable_weights(model).values():
        owners.setdefault(module, []).append(attr)

    macs = nonzero_macs = 0

    def count(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal macs, nonzero_macs
        weights = [getattr(module, attr) for attr in owners[module]]
        if isinstance(module, nn.RNNBase):
            positions = _time_steps(inputs)
        else:  # output elements per output channel
            positions = output.numel() // weights[0].shape[0]
        macs += positions * sum(w.numel() for w in weights)
        nonzero_macs += positions * sum(int(torch.count_nonzero(w)) for w in weights)

    handles = [module.register_forward_hook(count) for module in owners]
    was_training = model.training
    model.eval()
    try:
        run_hooked(model, input_shape, handles)
    finally:
        model.train(was_training)
    return {
        "params": sum(t.numel() for t in tensors),
        "nonzero_params": sum(int(torch.count_nonzero(t)) for t in tensors),
        "sparsity": weight_sparsity(model),
        "flops": 2 * macs,
        "nonzero_flops": 2 * nonzero_macs,
    }


def layer_report(model: nn.Module, sparsifier: Sparsifier | None = None) -> list[dict[str, Any]]:
    """One entry per prunable weight: ``name``, ``shape``, ``density`` (nonzero fraction) and ``pattern``.

    ``pattern`` is ``"dense"`` at density 1, the sparsifier's ``pattern_of(name)`` for a masked
    weight, and ``"unstructured"`` otherwise.
    """
    report = []
    for name, (module, attr) in prunable_weights(model).items():
        weight = getattr(module, attr).detach()
        density = int(torch.count_nonzero(weight)) / weight.numel()
        if density == 1.0:
            pattern = "dense"
        elif sparsifier is not None and get_mask(module, attr) is not None:
            pattern = sparsifier.pattern_of(name)
        else:
            pattern = "unstructured"
        report.append({"name": name, "shape": list(weight.shape), "density": density, "pattern": pattern})
    return report
