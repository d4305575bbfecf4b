"""The sparsifier contract: hooks the trainer calls around training."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from torch import nn


class Sparsifier:
    """Base class of registered sparsifiers; every hook is a no-op, so subclasses override only what they use.

    The trainer calls ``attach`` once before training, ``on_step`` after every optimizer step,
    ``on_epoch_end`` after every epoch and ``finalize`` once after the last step, before the
    final evaluation. Prunable weights are those of ``Linear`` and ``Conv2d`` layers.
    """

    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def attach(self, model: nn.Module, total_steps: int, layer_sparsity: dict[str, float] | None) -> None:
        """Prepare for ``total_steps`` optimizer steps; ``layer_sparsity`` maps layer names to targets."""

    def on_step(self, model: nn.Module, step: int) -> None:
        """After optimizer step number ``step`` (1 .. total_steps)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """After epoch number ``epoch`` (1-based), before it is evaluated."""

    def finalize(self, model: nn.Module) -> None:
        """After training; the masks must be final when this returns."""
