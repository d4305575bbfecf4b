"""Torch side of dynamic sparse training (:mod:`nas.sparse.rigl`): random initial masks, the dense
gradient RigL grows by, and the drop-and-grow update with its optimizer-state reset.

Masks are the hard ``WeightMask`` parametrizations of :mod:`nas.sparse.masks`, so inactive weights are
exactly zero in every forward pass and their raw gradient is zero. RigL needs the gradient of the loss
with respect to the *effective* (masked) weight at inactive positions too, so a forward hook on each
weight's parametrization retains the gradient of its output at update steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nas.sparse.masks import get_mask, prunable_weights, raw_weight, set_mask
from nas.sparse.rigl import keep_count


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of every prunable weight of ``model``, by weight name, in module order."""
    return {name: tuple(getattr(module, attr).shape) for name, (module, attr) in prunable_weights(model).items()}


def random_keep(weight: torch.Tensor, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of ``weight``'s shape keeping :func:`keep_count` entries, drawn uniformly from ``generator``
    (torch's global generator if ``None``)."""
    keep = torch.zeros(weight.numel(), dtype=torch.bool)
    keep[torch.randperm(weight.numel(), generator=generator)[: keep_count(weight.numel(), density)]] = True
    return keep.view(weight.shape)


class DynamicMasks:
    """The masks of one model under dynamic sparse training, and the optimizer whose state they reset.

    Weights at density 1 (ERK makes small layers dense) get no mask and never change, as in the RigL
    code, where dropping from a full mask can only regrow the same weights.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        densities: dict[str, float],
        generator: torch.Generator,
        capture_gradients: bool,
    ) -> None:
        self.capture = False  # retain the effective weights' gradients in the next forward pass
        self._optimizer = optimizer
        self._generator = generator
        self._weights = {name: mw for name, mw in prunable_weights(model).items() if densities[name] < 1.0}
        self._outputs: dict[str, list[torch.Tensor]] = {name: [] for name in self._weights}
        self._grads: dict[str, torch.Tensor] = {}
        self._hooks: list[RemovableHandle] = []
        for name, (module, attr) in self._weights.items():
            set_mask(module, attr, random_keep(getattr(module, attr), densities[name], generator))
            if capture_gradients:
                parametrization = module.parametrizations[attr]
                self._hooks.append(parametrization.register_forward_hook(self._retainer(name)))

    def _retainer(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        """Forward hook on a weight's parametrization: keep its output, with its gradient, while capturing."""

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.capture and output.requires_grad:
                output.retain_grad()
                self._outputs[name].append(output)

        return hook

    def read_gradients(self) -> None:
        """Store dL/d(effective weight) of the last backward pass, inactive positions included.

        A module may evaluate its weight several times per forward (``nn.LSTM`` does); only the
        evaluations that reached the loss carry a gradient, and they are summed.
        """
        for name, outputs in self._outputs.items():
            grads = [out.grad for out in outputs if out.grad is not None]
            module, attr = self._weights[name]
            self._grads[name] = sum(grads) if grads else torch.zeros_like(getattr(module, attr))
            outputs.clear()

    @torch.no_grad()
    def drop_and_grow(self, fraction: float, grow: Literal["gradient", "random"]) -> None:
        """Per weight, drop ``⌊fraction · n_active⌋`` smallest-|W| active entries and grow as many inactive ones.

        RigL (Evci et al. 2020, Alg. 1; ``sparse_optimizers_base._get_update_op``): grow candidates are all
        entries not kept after the drop, scored by |dense gradient| (RigL) or uniformly at random (SET).
        Entries that were inactive before the update start at zero with zeroed optimizer state
        (``grow_init='zeros'``, ``reset_momentum``); an entry dropped and regrown at once is left as it was.
        """
        for name, (module, attr) in self._weights.items():
            active = get_mask(module, attr).bool()
            n = math.floor(fraction * int(active.sum()))
            if n == 0:
                continue
            flat_active = active.flatten()
            drop_score = getattr(module, attr).abs().flatten().masked_fill(~flat_active, math.inf)
            kept = flat_active.clone()
            kept[torch.topk(drop_score, n, largest=False).indices] = False
            if grow == "gradient":
                if name not in self._grads:
                    raise RuntimeError("RigL needs the dense gradient: the trainer must call on_after_backward")
                grow_score = self._grads[name].abs().flatten()
            else:
                grow_score = torch.rand(flat_active.numel(), generator=self._generator).to(flat_active.device)
            new = kept.clone()
            new[torch.topk(grow_score.masked_fill(kept, -math.inf), n).indices] = True
            fresh = (new & ~flat_active).view(active.shape)
            raw = raw_weight(module, attr)
            raw.masked_fill_(fresh, 0.0)
            for value in self._optimizer.state.get(raw, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == raw.shape:
                    value.masked_fill_(fresh, 0.0)
            set_mask(module, attr, new.view(active.shape))
        self._grads.clear()

    def close(self) -> None:
        """Remove the gradient hooks and drop what they retained."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self.capture = False
        for outputs in self._outputs.values():
            outputs.clear()
