"""The sparsifier contract: hooks the trainer calls around training, and the submission-time check."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    import torch
    from torch import nn

ALL_KINDS: frozenset[str] = frozenset({"linear", "conv2d", "lstm", "gru", "rnn"})

Problem = tuple[tuple[str | int, ...], str]
"""A location inside the sparsifier spec (e.g. ``("params", "m")``) and what is wrong there."""


def accept_alias(data: Any, alias: str, convert: Callable[[Any], Any] = lambda value: value) -> Any:
    """Raw ``Params`` input with a paper's name for the target sparsity (``alias``) given as ``sparsity``.

    Every sparsifier that aims at a sparsity calls it ``sparsity``, so switching sparsifiers keeps
    the knob; the papers' names stay accepted on input (``convert`` maps the alias's value to a
    sparsity), and the stored spec carries ``sparsity``. Giving both names is refused.
    """
    if not isinstance(data, dict) or alias not in data:
        return data
    if "sparsity" in data:
        raise ValueError(f"give sparsity or its alias {alias}, not both")
    rest = {key: value for key, value in data.items() if key != alias}
    return {**rest, "sparsity": convert(data[alias])}


@dataclass(frozen=True)
class WeightSpec:
    """One prunable weight a search space can produce, across all of its architectures.

    Lets a sparsifier refuse a job at submission (``Sparsifier.check``) without building a model.
    """

    name: str  # state_dict path, e.g. "fc1.weight"
    kind: str  # "linear" | "conv2d" | "lstm" | "gru" | "rnn"
    in_features: frozenset[int]  # possible fan-in per output unit along the input-channel axis
    kernel_size: int = 1  # Conv2d kh*kw, 1 otherwise
    # the patterns the space's architectures may give the weight (``layer_patterns``); None: it fixes none
    patterns: frozenset[str] | None = None


class Sparsifier:
    """Base class of registered sparsifiers; every hook is a no-op, so subclasses override only what they use.

    Per step the trainer calls ``zero_grad``, forward, ``backward``, ``on_after_backward``,
    ``optimizer.step()``, ``on_step``; ``attach`` comes once before training (after the
    optimizer is built), ``on_epoch_end`` after every epoch and ``finalize`` once after the last
    step, before the final evaluation. Weights are named by their ``state_dict`` path
    (``"fc0.weight"``, ``"rnn.weight_hh_l0"``); see :mod:`nas.sparse.masks`.
    """

    Params: ClassVar[type[BaseModel]]
    supported_kinds: ClassVar[frozenset[str]] = ALL_KINDS
    pattern: ClassVar[str] = "unstructured"
    layer_patterns: dict[str, str] | None = None  # weight name -> pattern, set by the trainer before attach

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        layer_sparsity: dict[str, float] | None,
    ) -> None:
        """Prepare for ``total_steps`` optimizer steps; ``layer_sparsity`` maps weight names to target sparsities."""

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        """After ``loss.backward()`` of step ``step`` (1-based), before ``optimizer.step()``."""

    def on_step(self, model: nn.Module, step: int) -> None:
        """After optimizer step number ``step`` (1 .. total_steps)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """After epoch number ``epoch`` (1-based), before it is evaluated."""

    def finalize(self, model: nn.Module) -> None:
        """After training; the masks must be final when this returns."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra metrics the trainer reports after every epoch (e.g. mask flips); none by default."""
        return {}

    def pattern_of(self, name: str) -> str:
        """How the masked weight ``name`` is reported in the trial's layers: ``"unstructured"``, ``"2:4"``, ..."""
        return self.pattern

    def check(self, weights: list[WeightSpec]) -> list[Problem]:
        """Problems running on ``weights``, each located inside the sparsifier spec; none means compatible.

        The default refuses weight kinds outside ``supported_kinds``.
        """
        return [
            (("name",), f"{w.name} is a {w.kind} weight, which this sparsifier does not support "
             f"(supported: {', '.join(sorted(self.supported_kinds))})")
            for w in weights
            if w.kind not in self.supported_kinds
        ]  # fmt: skip


class OneShotSparsifier(Sparsifier, ABC):
    """Prunes once, after ``round(params.prune_at * total_steps)`` optimizer steps, then fine-tunes under that mask.

    Subclasses implement :meth:`_prune` and have a ``prune_at`` fraction in their ``Params``; one
    that overrides ``attach`` sets up what ``_prune`` needs first, then calls ``super().attach``.
    """

    def __init__(self, params: BaseModel) -> None:
        super().__init__(params)
        self._prune_step = 0
        self._pruned = False

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        layer_sparsity: dict[str, float] | None,
    ) -> None:
        """Fix the pruning step for ``total_steps``; a pruning step of 0 prunes here, before training."""
        self._prune_step = round(self.params.prune_at * total_steps)
        self._pruned = False
        if self._prune_step == 0:
            self._prune_once(model)

    def on_step(self, model: nn.Module, step: int) -> None:
        if not self._pruned and step >= self._prune_step:
            self._prune_once(model)

    def finalize(self, model: nn.Module) -> None:
        if not self._pruned:  # training ran fewer steps than announced
            self._prune_once(model)

    def _prune_once(self, model: nn.Module) -> None:
        self._prune(model)
        self._pruned = True

    @abstractmethod
    def _prune(self, model: nn.Module) -> None:
        """Mask ``model``: runs once per training run, at the pruning step or else in ``finalize``."""
