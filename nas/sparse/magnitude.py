"""One-shot magnitude pruning (Han et al., 2015): train, prune the smallest weights once, fine-tune."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from nas.sparse.base import OneShotSparsifier

if TYPE_CHECKING:
    import torch
    from torch import nn


class MagnitudePruning(OneShotSparsifier):
    """Zeroes the smallest-magnitude weights once, part-way through training, then fine-tunes under that mask."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sparsity: float = Field(
            0.9, ge=0.0, lt=1.0, description="fraction of the prunable weights set to zero (1.0 would remove every weight)"
        )
        scope: Literal["layer", "global"] = Field(
            "layer",
            description="'layer': every layer loses exactly that fraction; 'global': one magnitude threshold over all layers",
        )
        prune_at: float = Field(
            0.5,
            ge=0.0,
            le=1.0,
            description="fraction of the training steps after which to prune; the rest fine-tunes under the fixed mask",
        )

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._layer_sparsity: dict[str, float] = {}

    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, layer_sparsity: dict[str, float] | None
    ) -> None:
        """Weights named in ``layer_sparsity`` get their own target, in either scope; the rest get ``sparsity``."""
        from nas.sparse.masks import checked_targets

        self._layer_sparsity = checked_targets(model, layer_sparsity)
        super().attach(model, optimizer, total_steps, layer_sparsity)

    def _prune(self, model: nn.Module) -> None:
        from nas.sparse.masks import magnitude_prune

        magnitude_prune(model, self.params.sparsity, self._layer_sparsity, self.params.scope)
