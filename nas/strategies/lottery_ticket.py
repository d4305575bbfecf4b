"""Lottery-ticket chains: iterative magnitude pruning, one trial per round, several chains side by side.

Frankle & Carbin (ICLR 2019): train, prune p% of each layer's surviving weights by magnitude, reset
the survivors to their initial values θ0, repeat; Frankle et al. (2019, "Stabilizing the LTH")
rewind to θk, the weights after k steps, instead. Each round is a trial whose parent is the
previous round (``parent_id``), so a chain of ``rounds + 1`` trials (the first one dense) ends at
sparsity about ``1 - (1 - p) ** rounds``. Chains differ by architecture (each samples its own from
the space), by seed, or by rate, and run side by side: the strategy proposes the next round of
every chain whose last round has finished and waits (``WAIT``) while all chains are training.

A trial's arch is the space's architecture plus ``lottery_chain``, ``lottery_round`` and the
chain's ``lottery_rate``; :meth:`LotteryTicket.space_arch` strips them. The job's sparsifier is not used: the rounds prune.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import WAIT, Problem, Strategy, TrialPlan, _Wait

if TYPE_CHECKING:
    from nas.search_space import SearchSpace
    from nas.training import TrialOutcome

CHAIN_KEY = "lottery_chain"
ROUND_KEY = "lottery_round"
RATE_KEY = "lottery_rate"
_UNBUILDABLE_SPACES = frozenset({"dass_darts"})  # a differentiable supernet: its trials are searches, not networks


@dataclass
class _Chain:
    arch: dict[str, Any]
    last_done: str | None = None  # id of the last complete round
    rounds_done: int = -1  # number of that round; -1: none yet
    in_flight: bool = False  # a round of this chain is created and not finished
    ended: bool = False  # a round failed, was pruned or infeasible: no parent for the next one
    created: set[int] = field(default_factory=set)


class LotteryTicket(Strategy):
    """Iterative magnitude pruning chains (Frankle & Carbin 2019): one trial per round, rewinding to θ0 or θk."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        n_chains: int = Field(2, ge=1, le=64, description="chains run side by side")
        rounds: int = Field(
            4, ge=1, le=50, description="pruning rounds per chain after the dense round 0 (a chain has rounds + 1 trials)"
        )
        rate: float = Field(
            0.2, gt=0.0, lt=1.0, description="fraction of a layer's surviving weights pruned per round (paper: 0.2 for FC)"
        )
        rate_output: float = Field(
            0.1, ge=0.0, lt=1.0, description="fraction of the output layer's survivors pruned per round (paper: 0.1)"
        )
        rates: list[float] | None = Field(
            None, description="a rate per chain (overrides rate), to compare pruning rates side by side"
        )
        rewind_step: int = Field(
            0, ge=0, description="k: survivors are reset to the weights after k optimizer steps (0: θ0, the original LTH)"
        )
        seeds: list[int] | None = Field(
            None, description="a seed per chain (θ0 and data order); default: the chain's index"
        )
        same_arch: bool = Field(
            False, description="every chain trains the same sampled architecture (then chains differ by seed or rate)"
        )
        scope: Literal["layer", "global"] = Field(
            "layer", description="prune each layer by its own magnitudes (paper) or by one threshold over all but the output layer (open_lth)"
        )

        @model_validator(mode="after")
        def _per_chain_lists(self) -> LotteryTicket.Params:
            for name in ("rates", "seeds"):
                values = getattr(self, name)
                if values is not None and len(values) != self.n_chains:
                    raise ValueError(f"{name} has {len(values)} entries but n_chains is {self.n_chains}")
            if self.rates is not None and not all(0.0 < r < 1.0 for r in self.rates):
                raise ValueError(f"rates must lie strictly between 0 and 1: {self.rates}")
            if self.seeds is not None and any(s < 0 for s in self.seeds):
                raise ValueError(f"seeds must not be negative: {self.seeds}")
            return self

    params: Params

    def __init__(self, params: Params, space: SearchSpace, spec: JobSpec) -> None:
        super().__init__(params, space, spec)
        archs = [self._sample(0 if params.same_arch else c) for c in range(params.n_chains)]
        self._chains = [_Chain(arch=arch) for arch in archs]

    # -- planning ---------------------------------------------------------------------------

    def ask(self) -> TrialPlan | _Wait | None:
        """The root of the next chain not started, else the next round of a chain whose last round finished."""
        for c, chain in enumerate(self._chains):
            if not chain.created:
                return self._plan(c, 0, None)
        waiting = False
        for c, chain in enumerate(self._chains):
            if chain.ended or chain.rounds_done >= self.params.rounds:
                continue
            if chain.in_flight:
                waiting = True
                continue
            return self._plan(c, chain.rounds_done + 1, chain.last_done)
        return WAIT if waiting else None

    def tell(self, trial: Trial) -> None:
        c, r = self._where(trial)
        chain = self._chains[c]
        chain.in_flight = False
        if trial.state is TrialState.complete and r > chain.rounds_done:
            chain.last_done, chain.rounds_done = trial.id, r
        elif trial.state is not TrialState.complete:
            chain.ended = True

    def replay(self, trial: Trial) -> None:
        """A trial of an earlier run: its chain and round are taken; a finished one is told, others are in flight."""
        c, r = self._where(trial)
        chain = self._chains[c]
        chain.arch = self.space_arch(trial.arch)
        chain.created.add(r)
        chain.in_flight = True
        if trial.state.finished:
            self.tell(trial)

    def _plan(self, chain: int, round_: int, parent: str | None) -> TrialPlan:
        c = self._chains[chain]
        c.created.add(round_)
        c.in_flight = True
        arch = {**c.arch, CHAIN_KEY: chain, ROUND_KEY: round_, RATE_KEY: self._rate(chain)}
        return TrialPlan(arch=arch, parent_id=parent, tags={"chain": chain, "round": round_})

    def _rate(self, chain: int) -> float:
        return self.params.rates[chain] if self.params.rates is not None else self.params.rate

    def _sample(self, chain: int) -> dict[str, Any]:
        # One generator per chain, seeded by (job seed, chain): a restarted job draws the same archs.
        return self.space.sample(random.Random(f"{self.spec.seed}:lottery:{chain}"))

    def _where(self, trial: Trial) -> tuple[int, int]:
        c, r = trial.arch.get(CHAIN_KEY), trial.arch.get(ROUND_KEY)
        if not isinstance(c, int) or not 0 <= c < len(self._chains) or not isinstance(r, int) or r < 0:
            raise ValueError(f"trial {trial.number} is not a round of this job's lottery chains: arch {trial.arch}")
        return c, r

    # -- hooks ------------------------------------------------------------------------------

    @classmethod
    def space_arch(cls, arch: dict[str, Any]) -> dict[str, Any]:
        """The search-space architecture of a round (its arch without the chain, round and rate keys)."""
        return {k: v for k, v in arch.items() if k not in (CHAIN_KEY, ROUND_KEY, RATE_KEY)}

    @classmethod
    def planned_density(cls, arch: dict[str, Any]) -> float | None:
        """Round r keeps about ``(1 - rate) ** r`` of the weights (the output layer a little more)."""
        return (1.0 - float(arch[RATE_KEY])) ** int(arch[ROUND_KEY])

    @classmethod
    def check_spec(cls, params: BaseModel, spec: JobSpec) -> list[Problem]:
        """Refuse spaces whose architectures are not standalone networks, and budgets that cut every chain short."""
        assert isinstance(params, cls.Params)
        problems: list[Problem] = []
        if spec.search_space.name in _UNBUILDABLE_SPACES:
            problems.append(
                (
                    ("search_space", "name"),
                    f"lottery_ticket prunes standalone networks; search space {spec.search_space.name!r} does not "
                    "build one per architecture (use e.g. sparse_mlp, sparse_cnn or supernet)",
                )
            )
        needed = params.n_chains * (params.rounds + 1)
        if spec.budget.max_trials < needed:
            problems.append(
                (
                    ("budget", "max_trials"),
                    f"{params.n_chains} lottery chains of {params.rounds} rounds need {needed} trials "
                    f"(n_chains x (rounds + 1)); budget.max_trials is {spec.budget.max_trials}",
                )
            )
        return problems

    @classmethod
    def run_trial(
        cls,
        spec: JobSpec,
        arch: dict[str, Any],
        data_dir: Path,
        report: Callable[[int, dict[str, float]], None],
        parent_model: bytes | None,
    ) -> TrialOutcome:
        """Round ``arch["lottery_round"]`` of chain ``arch["lottery_chain"]``: dense training, or prune, rewind and train."""
        from nas.supertickets.imp import RoundPlan, run_round

        p = cls.Params.model_validate(spec.strategy.params)
        chain, round_ = arch[CHAIN_KEY], arch[ROUND_KEY]
        plan = RoundPlan(
            chain=chain,
            round=round_,
            seed=p.seeds[chain] if p.seeds is not None else chain,
            rate=p.rates[chain] if p.rates is not None else p.rate,
            rate_output=p.rate_output,
            rewind_step=p.rewind_step,
            scope=p.scope,
        )
        return run_round(spec, plan, cls.space_arch(arch), data_dir, report, parent_model)
