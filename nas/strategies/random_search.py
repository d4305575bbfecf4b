"""Random search: the neutral baseline of sparse architecture search (Farahani, 2024)."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from nas.arch import fingerprint
from nas.specs import Trial
from nas.strategies.base import Strategy, TrialPlan


class RandomSearch(Strategy):
    """Uniform random samples of the search space; reproducible from the job's seed."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        max_resample: int = Field(
            20, ge=0, le=1000, description="draws to try before accepting an architecture already tried"
        )

    params: Params

    def __init__(self, params: Params, space: object, spec: object) -> None:
        super().__init__(params, space, spec)  # type: ignore[arg-type]
        self._asked = 0
        self._seen: set[str] = set()

    def ask(self) -> TrialPlan:
        # One generator per proposal, seeded by (job seed, proposal index): a restarted job
        # draws the same sequence without having to replay the generator's state.
        rng = random.Random(f"{self.spec.seed}:{self._asked}")
        self._asked += 1
        arch = self.space.sample(rng)
        for _ in range(self.params.max_resample):
            if fingerprint(arch) not in self._seen:
                break
            arch = self.space.sample(rng)
        self._seen.add(fingerprint(arch))
        return TrialPlan(arch=arch)

    def replay(self, trial: Trial) -> None:
        self._asked += 1
        self._seen.add(fingerprint(trial.arch))
