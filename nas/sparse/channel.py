"""Structured pruning of whole neurons and channels, so the pruned network becomes smaller dense layers.

Li et al. (2017, "Pruning Filters for Efficient ConvNets") rank each layer's filters by the L1
norm of their weights and remove the smallest; Liu et al. (2017, "Network Slimming") rank
channels by the |γ| of the BatchNorm that follows them, after training with an L1 penalty on γ.
Both prune layer by layer and then fine-tune; the classifier's outputs are never pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from nas.sparse.base import OneShotSparsifier

if TYPE_CHECKING:
    import torch
    from torch import nn


class ChannelPruning(OneShotSparsifier):
    """Masks whole output rows of ``Linear`` and output channels of ``Conv2d`` weights once, then fine-tunes.

    ``layer_sparsity`` entries set a weight's own fraction of units removed; one naming the
    classifier is ignored, since its outputs are the classes.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sparsity: float = Field(
            0.5, ge=0.0, lt=1.0, description="fraction of each layer's output units (neurons, channels) removed"
        )
        criterion: Literal["l1", "bn"] = Field(
            "l1",
            description="'l1': L1 norm of a unit's weights (Li et al., 2017); 'bn': |γ| of the BatchNorm right after "
            "the layer (Network Slimming), falling back to l1 for layers without one",
        )
        prune_at: float = Field(
            0.5,
            ge=0.0,
            le=1.0,
            description="fraction of the training steps after which to prune; the rest fine-tunes under the fixed mask",
        )
        slimming: float = Field(
            1e-4,
            ge=0.0,
            description="with criterion 'bn': L1 penalty on the BatchNorm scales γ until pruning (Network Slimming: "
            "1e-4 for VGG, 1e-5 for ResNet/DenseNet); 0 disables it",
        )

    params: Params
    supported_kinds = frozenset({"linear", "conv2d"})
    pattern = "channel"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._layer_sparsity: dict[str, float] = {}
        self._batchnorms: list[nn.Module] = []

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        layer_sparsity: dict[str, float] | None,
    ) -> None:
        from nas.sparse._channel import following_batchnorms
        from nas.sparse.masks import checked_targets

        self._layer_sparsity = checked_targets(model, layer_sparsity)
        use_slimming = self.params.criterion == "bn" and self.params.slimming > 0
        self._batchnorms = list(following_batchnorms(model).values()) if use_slimming else []
        super().attach(model, optimizer, total_steps, layer_sparsity)

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        if not self._pruned and self._batchnorms:
            from nas.sparse._channel import slimming_penalty

            slimming_penalty(self._batchnorms, self.params.slimming)

    def _prune(self, model: nn.Module) -> None:
        from nas.sparse._channel import prune_channels

        prune_channels(model, self.params.sparsity, self._layer_sparsity, self.params.criterion)
