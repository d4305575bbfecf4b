"""Lottery tickets: iterative magnitude pruning with resetting or rewinding, inside one trial.

Frankle & Carbin (ICLR 2019, "The Lottery Ticket Hypothesis"): train, prune p% of the surviving
weights of every layer by magnitude (20% of the hidden layers, 10% of the output layer for
LeNet-300-100), reset the survivors to their initial values θ0, repeat. Frankle et al. (2019,
"Stabilizing the Lottery Ticket Hypothesis") rewind to θk, the weights after k steps, instead.
The trial's steps are split into ``rounds + 1`` equal training runs, the first one dense. Given a
``sparsity``, like the other sparsifiers, every weight ends at exactly that sparsity, the rate per
round following from it.

Importing this module does not import torch (the API server imports it to validate specs); the
torch operations live in :mod:`nas.sparse.imp`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.sparse.base import Sparsifier

if TYPE_CHECKING:
    import torch
    from torch import nn


RATE_HIDDEN = 0.2
"""Default per-round rate of every prunable weight but the output layer (Frankle & Carbin, LeNet-300-100)."""
RATE_OUTPUT = 0.1
"""Default per-round rate of the output layer."""


def _or(rate: float | None, default: float) -> float:
    return default if rate is None else rate


def survivors_by_rate(n: int, rate: float, rounds: int) -> list[int]:
    """Surviving weights of an ``n``-weight layer before round 1 and after each round.

    Every round prunes ``round(rate * survivors)`` of the survivors (Frankle & Carbin: "p% of the
    remaining weights"), so after r rounds about ``n * (1 - rate) ** r`` remain; a layer never
    loses its last weight.
    """
    counts = [n]
    for _ in range(rounds):
        counts.append(max(1, counts[-1] - round(rate * counts[-1])))
    return counts


def survivors_to_target(n: int, sparsity: float, rounds: int) -> list[int]:
    """Like :func:`survivors_by_rate`, for a layer that must end at exactly ``sparsity``.

    The per-round rate is the constant ``1 - (1 - sparsity) ** (1 / rounds)``, so the layer shrinks
    geometrically, as under a fixed rate, and lands on ``round(n * (1 - sparsity))`` survivors.
    """
    return [max(1, round(n * (1 - sparsity) ** (j / rounds))) for j in range(rounds + 1)]


class LotteryTicket(Sparsifier):
    """Iterative magnitude pruning (Frankle & Carbin 2019): prune survivors layer-wise per round, rewind to θ0 or θk."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        rounds: int = Field(
            3,
            ge=1,
            le=100,
            description="pruning rounds; the trial's steps form rounds + 1 equal training runs, the first one dense",
        )
        sparsity: float | None = Field(
            None,
            ge=0.0,
            lt=1.0,
            description="fraction of every prunable weight that is zero after the last round, each round pruning "
            "the constant fraction 1 - (1 - sparsity)^(1/rounds) of the survivors; null: prune by rate_hidden "
            "and rate_output instead (Frankle & Carbin's per-round rates)",
        )
        rate_hidden: float | None = Field(
            None,
            gt=0.0,
            lt=1.0,
            description=f"fraction of its surviving weights each prunable weight but the output layer loses per round; "
            f"null: {RATE_HIDDEN} (Frankle & Carbin's LeNet rate) unless sparsity is given",
        )
        rate_output: float | None = Field(
            None,
            ge=0.0,
            lt=1.0,
            description=f"fraction of the output layer's surviving weights it loses per round; null: {RATE_OUTPUT} "
            "unless sparsity is given",
        )
        output_layer: str | None = Field(
            None,
            min_length=1,
            description="weight name of the output layer (e.g. 'out.weight'); null: the last prunable weight",
        )
        rewind_steps: int = Field(
            0,
            ge=0,
            description="k: survivors are reset to the weights after k steps (0: the initial weights θ0); "
            "k must fall inside the first, dense training run",
        )
        reinit: bool = Field(
            False,
            description="random re-initialisation control: survivors are re-drawn from each layer's initialiser "
            "instead of rewound",
        )
        seed: int = Field(0, ge=0, description="seed of the re-initialisation draws (reinit only)")

        @model_validator(mode="after")
        def _rewind_or_reinit(self) -> LotteryTicket.Params:
            if self.sparsity is not None and (self.rate_hidden is not None or self.rate_output is not None):
                raise ValueError("give sparsity or the per-round rates (rate_hidden, rate_output), not both")
            if self.reinit and self.rewind_steps:
                raise ValueError("rewind_steps has no effect when reinit is true: re-drawn weights are not rewound")
            return self

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.round = 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._run_ends: list[int] = []
        self._survivors: dict[str, list[int]] = {}
        self._rewind_state: dict[str, torch.Tensor] = {}
        self._template: nn.Module | None = None
        self._rng_state: torch.Tensor | None = None

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        layer_sparsity: dict[str, float] | None,
    ) -> None:
        """Plan the rounds; a weight named in ``layer_sparsity`` (else every weight, given ``sparsity``) ends at
        exactly that sparsity after the last round."""
        from nas.sparse.masks import checked_targets, prunable_weights

        p = self.params
        weights = prunable_weights(model)
        targets = checked_targets(model, layer_sparsity)
        if p.output_layer is not None and p.output_layer not in weights:
            raise ValueError(f"output_layer {p.output_layer!r} is not a prunable weight of the model: {list(weights)}")
        if total_steps < p.rounds + 1:
            raise ValueError(f"{total_steps} training steps cannot make {p.rounds + 1} training runs (rounds + 1)")
        self._run_ends = [j * total_steps // (p.rounds + 1) for j in range(1, p.rounds + 1)]
        if p.rewind_steps >= self._run_ends[0]:
            raise ValueError(
                f"rewind_steps {p.rewind_steps} must fall inside the first training run, "
                f"which ends at step {self._run_ends[0]}"
            )
        output = p.output_layer or list(weights)[-1]
        self._survivors = {}
        for name, (module, attr) in weights.items():
            n = getattr(module, attr).numel()
            if name in targets or p.sparsity is not None:
                self._survivors[name] = survivors_to_target(n, targets.get(name, p.sparsity), p.rounds)
            else:
                rate = _or(p.rate_output, RATE_OUTPUT) if name == output else _or(p.rate_hidden, RATE_HIDDEN)
                self._survivors[name] = survivors_by_rate(n, rate, p.rounds)
        self._optimizer = optimizer
        self.round = 0
        if p.reinit:
            import copy

            import torch

            self._template = copy.deepcopy(model)
            self._rng_state = torch.Generator().manual_seed(p.seed).get_state()
        elif p.rewind_steps == 0:
            self._save_rewind_point(model)

    def on_step(self, model: nn.Module, step: int) -> None:
        """Save θk at step k; at the end of each training run, prune and rewind."""
        if step == self.params.rewind_steps and not self.params.reinit:
            self._save_rewind_point(model)
        if self.round < self.params.rounds and step >= self._run_ends[self.round]:
            self._prune(model)
            self._rewind(model)

    def finalize(self, model: nn.Module) -> None:
        """If training stopped short of the planned steps, prune the remaining rounds without retraining."""
        while self.round < self.params.rounds:
            self._prune(model)

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """``round``: pruning rounds done so far (0 during the dense run)."""
        return {"round": float(self.round)}

    def _save_rewind_point(self, model: nn.Module) -> None:
        from nas.sparse.imp import clone_state

        self._rewind_state = clone_state(model)

    def _prune(self, model: nn.Module) -> None:
        """Round ``self.round + 1``: each weight keeps its planned number of largest-magnitude survivors."""
        from nas.sparse.imp import prune_survivors
        from nas.sparse.masks import get_mask, prunable_weights, raw_weight, set_mask

        self.round += 1
        for name, (module, attr) in prunable_weights(model).items():
            keep = self._survivors[name][self.round]
            if keep < self._survivors[name][self.round - 1]:
                set_mask(module, attr, prune_survivors(raw_weight(module, attr), get_mask(module, attr), keep))

    def _rewind(self, model: nn.Module) -> None:
        """Survivors back to θk (or freshly drawn), pruned weights zero, optimizer state cleared."""
        from nas.sparse.imp import live_state, load_state, redraw
        from nas.sparse.masks import masks, prunable_weights, set_mask

        current = masks(model)
        if self.params.reinit:
            assert self._template is not None and self._rng_state is not None
            self._rng_state = redraw(self._template, self._rng_state)
            state = live_state(self._template)
        else:
            state = self._rewind_state
        load_state(model, state)
        for name, (module, attr) in prunable_weights(model).items():
            if name in current:
                set_mask(module, attr, current[name])  # zeroes the rewound values of pruned weights
        assert self._optimizer is not None
        self._optimizer.state.clear()
