"""Gradual magnitude pruning (Zhu & Gupta, 2017, "To prune, or not to prune").

From step t0, every Δt steps and n times, the smallest-magnitude weights are masked to reach

    s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(n·Δt))³   for t ∈ {t0, t0+Δt, …, t0+nΔt},

where s_f is the ``sparsity`` param (``final_sparsity``, TensorFlow's ``PolynomialDecay`` name, is
accepted as an alias), so sparsity rises fast at first, while the network is redundant, and slowly near the end. Masks
are recomputed at each update from the current magnitudes; masked weights are zero and receive
no updates, so they stay pruned (as in the paper's TensorFlow ``model_pruning``).

Per-layer patterns a search space sets (``layer_patterns``) are honoured as by one-shot
magnitude pruning (:mod:`nas.sparse.magnitude`): a dense weight is never pruned, a channel weight
loses whole output channels along the same schedule, and an N:M weight takes its N:M mask from
t0 on (its density is the pattern's, so it has no schedule to follow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.sparse.base import Sparsifier, accept_alias

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_UPDATES = 10
"""Short runs shrink Δt so the schedule still takes at least this many steps (the paper's runs take far more)."""


class GradualMagnitudePruning(Sparsifier):
    """Zhu & Gupta's gradual magnitude pruning: sparsity follows a cubic schedule from s_i to s_f."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sparsity: float = Field(
            0.9,
            ge=0.0,
            lt=1.0,
            description="s_f: fraction of the prunable weights that are zero at the end of the schedule "
            "(alias: final_sparsity)",
        )
        initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="s_i: sparsity of the first update, at t0")
        start: float = Field(
            0.1, ge=0.0, le=1.0, description="t0 as a fraction of the training steps: prune after some dense training"
        )
        end: float = Field(
            0.7,
            ge=0.0,
            le=1.0,
            description="fraction of the training steps by which s_f is reached (t0 + nΔt); the rest fine-tunes",
        )
        frequency: int = Field(
            100,
            ge=1,
            le=100_000,
            description=f"Δt, steps between mask updates (the paper finds 100-1000 insensitive); "
            f"lowered on short runs so that at least {MIN_UPDATES} updates happen",
        )
        scope: Literal["layer", "global"] = Field(
            "layer",
            description="'layer': every weight reaches s_t; 'global': one magnitude threshold over all weights",
        )

        @model_validator(mode="before")
        @classmethod
        def _paper_name(cls, data: Any) -> Any:
            return accept_alias(data, "final_sparsity")

        @model_validator(mode="after")
        def _ordered(self) -> GradualMagnitudePruning.Params:
            if self.initial_sparsity > self.sparsity:
                raise ValueError(f"initial_sparsity {self.initial_sparsity} exceeds sparsity {self.sparsity}")
            if self.start > self.end:
                raise ValueError(f"start {self.start} is after end {self.end}")
            return self

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.t0 = 0
        self.dt = 0
        self.n = 0
        self._targets: dict[str, float] = {}
        self._patterns: dict[str, str] = {}
        self._done = False

    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, layer_sparsity: dict[str, float] | None
    ) -> None:
        """Fix t0, Δt and n for ``total_steps``; weights named in ``layer_sparsity`` head for their own s_f.

        ``layer_patterns`` (set before this call) are checked against the model here, so a pattern
        that cannot apply fails before training.
        """
        from nas.sparse.magnitude import checked_patterns
        from nas.sparse.masks import checked_targets

        p = self.params
        self._targets = checked_targets(model, layer_sparsity)
        self._patterns = checked_patterns(model, self.layer_patterns)
        self.t0 = round(p.start * total_steps)
        span = round(p.end * total_steps) - self.t0
        self.dt = min(p.frequency, max(1, span // MIN_UPDATES))
        self.n = span // self.dt
        self._done = False
        self.on_step(model, 0)

    def sparsity_at(self, step: int, final: float | None = None) -> float | None:
        """s_t towards ``final`` (default s_f) if ``step`` is an update step of the schedule, else ``None``."""
        if step < self.t0 or (step - self.t0) % self.dt or step > self.t0 + self.n * self.dt:
            return None
        s_f = self.params.sparsity if final is None else final
        s_i = min(self.params.initial_sparsity, s_f)
        progress = (step - self.t0) / (self.n * self.dt) if self.n else 1.0
        return s_f + (s_i - s_f) * (1.0 - progress) ** 3

    def on_step(self, model: nn.Module, step: int) -> None:
        if self._done or self.sparsity_at(step) is None:
            return
        from nas.sparse.magnitude import prune_with_patterns

        overrides = {name: self.sparsity_at(step, target) for name, target in self._targets.items()}
        prune_with_patterns(model, self.sparsity_at(step), overrides, self.params.scope, self._patterns)
        self._done = step == self.t0 + self.n * self.dt

    def pattern_of(self, name: str) -> str:
        return self._patterns.get(name, self.pattern)

    def finalize(self, model: nn.Module) -> None:
        """Reach s_f even if training stopped before the schedule's end."""
        if not self._done:
            self.on_step(model, self.t0 + self.n * self.dt)
