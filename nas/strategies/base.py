"""The strategy contract: propose architectures, learn from finished trials.

A strategy holds no threads, never sleeps and never touches the database; the runner feeds it
the job's trial history, so a restarted job continues exactly where it stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from nas.specs import JobSpec, Trial


@dataclass
class TrialPlan:
    """What to run next: an architecture, optionally derived from a parent trial."""

    arch: dict[str, Any]
    parent_id: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """Base class of registered strategies (``Params`` holds their options)."""

    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel, space: Any, spec: JobSpec) -> None:
        self.params = params
        self.space = space
        self.spec = spec

    @abstractmethod
    def ask(self) -> TrialPlan | None:
        """The next plan, or ``None`` when the strategy has nothing more to propose."""

    def tell(self, trial: Trial) -> None:
        """Learn from a finished trial (complete, pruned, failed or infeasible)."""

    @classmethod
    def from_history(cls, params: BaseModel, space: Any, spec: JobSpec, trials: Iterable[Trial]) -> Strategy:
        """Rebuild the strategy's state from every trial the job already has."""
        strategy = cls(params, space, spec)
        for trial in trials:
            strategy.replay(trial)
        return strategy

    def replay(self, trial: Trial) -> None:
        """Account for a trial created by an earlier run of this job; finished ones are told."""
        if trial.state.finished:
            self.tell(trial)
