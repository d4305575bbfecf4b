"""Static random sparsity: the control every sparse-training paper compares against.

Each prunable weight gets a uniformly random mask at its density before training, and the mask
never changes (the "Static" baseline of RigL, Evci et al. 2020, §4; SET's initial topology,
Mocanu et al. 2018). Densities per layer follow the same rules as RigL/SET (:mod:`nas.sparse.rigl`),
so a comparison at equal ``sparsity`` and ``distribution`` changes only how the mask is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from nas.sparse.base import Sparsifier
from nas.sparse.rigl import Distribution, target_densities

if TYPE_CHECKING:
    import torch
    from torch import nn


class RandomMask(Sparsifier):
    """A fixed random mask per layer, drawn before training at the target's per-layer densities."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sparsity: float = Field(0.9, ge=0.0, lt=1.0, description="fraction of the prunable weights that are zero")
        distribution: Distribution = Field(
            "erk",
            description="how the nonzeros are spread over layers: 'erk' (Erdős–Rényi-Kernel, RigL's default, so that "
            "'random' is RigL's static control) or 'uniform' (same density per layer)",
        )

    params: Params

    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, layer_sparsity: dict[str, float] | None
    ) -> None:
        """Mask every weight at random; weights named in ``layer_sparsity`` get their own sparsity, the rest
        share ``sparsity`` by ``distribution``. Drawn from torch's global generator, which the trainer seeds
        per trial, so a trial reproduces its masks."""
        from nas.sparse._dst import random_keep, weight_shapes
        from nas.sparse.masks import checked_targets, prunable_weights, set_mask

        densities = target_densities(
            weight_shapes(model), self.params.sparsity, self.params.distribution, checked_targets(model, layer_sparsity)
        )
        for name, (module, attr) in prunable_weights(model).items():
            set_mask(module, attr, random_keep(getattr(module, attr), densities[name]))
