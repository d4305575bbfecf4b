"""Torch operations of iterative magnitude pruning (:mod:`nas.sparse.lottery`): prune, save, rewind, re-draw."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from nas.sparse.masks import magnitude_masks


def prune_survivors(weight: torch.Tensor, mask: torch.Tensor | None, keep: int) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` largest-magnitude entries of ``weight`` among those ``mask`` keeps.

    Only survivors are ranked, so a pruned weight never comes back, even where a survivor is exactly 0.
    """
    alive = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.bool()
    survivors = weight.detach()[alive]
    n = survivors.numel()
    if not 0 < keep <= n:
        raise ValueError(f"cannot keep {keep} of {n} surviving weights")
    new = torch.zeros_like(alive)
    new[alive] = magnitude_masks({"survivors": survivors}, (n - keep) / n)["survivors"]
    return new


def live_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers (the tensors themselves) by plain ``state_dict`` name.

    A masked weight appears under its own name ("fc0.weight") as its raw tensor, so a state saved
    before pruning loads into the masked model; masks and other parametrization tensors are left out.
    """
    state = {}
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        parts = name.split(".")
        if "parametrizations" in parts:
            at = parts.index("parametrizations")
            if parts[at + 2 :] != ["original"]:
                continue
            name = ".".join([*parts[:at], parts[at + 1]])
        state[name] = tensor
    return state


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of :func:`live_state`, to rewind to later."""
    return {name: tensor.detach().clone() for name, tensor in live_state(model).items()}


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (plain names, as :func:`live_state` gives) into the model's tensors, bit for bit."""
    live = live_state(model)
    if live.keys() != state.keys():
        missing, unexpected = sorted(live.keys() - state.keys()), sorted(state.keys() - live.keys())
        raise ValueError(f"state does not fit the model: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for name, tensor in live.items():
            tensor.copy_(state[name])


def redraw(template: nn.Module, rng_state: torch.Tensor) -> torch.Tensor:
    """Re-initialise ``template`` in place with each module's own ``reset_parameters``, from ``rng_state``.

    Frankle & Carbin's control samples a new θ0' from the initialisation distribution; drawing from a
    private generator state leaves the trainer's random stream untouched. Returns the advanced state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng_state)
        for module in template.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        return torch.get_rng_state()
