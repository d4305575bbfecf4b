"""The strategy contract: propose architectures, learn from finished trials.

A strategy holds no threads, never sleeps and never touches the database; the runner feeds it
the job's trial history, so a restarted job continues exactly where it stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pydantic import BaseModel

from nas.specs import JobSpec, Trial

if TYPE_CHECKING:
    from nas.search_space import SearchSpace
    from nas.training import TrialOutcome

Problem = tuple[tuple[str | int, ...], str]
"""A location inside the job spec (e.g. ``("search_space", "name")``) and what is wrong there."""


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"


WAIT: Final = _Wait()
"""What ``ask`` returns when its next plan depends on trials still running (a child needs its parent)."""


@dataclass
class TrialPlan:
    """What to run next: an architecture, optionally derived from a parent trial."""

    arch: dict[str, Any]
    parent_id: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """Base class of registered strategies (``Params`` holds their options)."""

    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel, space: SearchSpace, spec: JobSpec) -> None:
        self.params = params
        self.space = space
        self.spec = spec

    @abstractmethod
    def ask(self) -> TrialPlan | _Wait | None:
        """The next plan; ``WAIT`` when the next one needs running trials to finish first; ``None`` when done."""

    def tell(self, trial: Trial) -> None:
        """Learn from a finished trial (complete, pruned, failed or infeasible)."""

    @classmethod
    def check_spec(cls, params: BaseModel, spec: JobSpec) -> list[Problem]:
        """Problems that make ``spec`` impossible for this strategy; each becomes a 422 at its location."""
        return []

    @classmethod
    def space_arch(cls, arch: dict[str, Any]) -> dict[str, Any]:
        """The part of a trial's arch the search space builds; strategies may add keys of their own
        (a lottery round's number, a ticket's kind)."""
        return arch

    @classmethod
    def planned_density(cls, arch: dict[str, Any]) -> float | None:
        """The fraction of weights the trial of ``arch`` will keep, when the strategy decides it
        (a lottery round prunes further each round); ``None`` leaves it to the space and sparsifier."""
        return None

    @classmethod
    def run_trial(
        cls,
        spec: JobSpec,
        arch: dict[str, Any],
        data_dir: Path,
        report: Callable[[int, dict[str, float]], None],
        parent_model: bytes | None,
    ) -> TrialOutcome:
        """Train one trial on a worker. The default trains ``arch`` under the job's sparsifier.

        Strategies whose trials train differently (a supernet, a pruning round that starts from
        its parent's weights) override this; ``parent_model`` holds the saved model of the trial's
        parent, when it has one.
        """
        from nas.training import run_trial

        return run_trial(spec, arch, data_dir, report)

    @classmethod
    def trains_each_architecture(cls, params: BaseModel) -> bool:
        """Whether every trial of a job with ``params`` trains its architecture from scratch the default
        way, so a tabular benchmark (:mod:`nas.data.tabular`) can look the trial up instead. A strategy that
        overrides :meth:`run_trial` trains some other way (a supernet, a round from its parent's weights)
        unless it says otherwise here."""
        return not any("run_trial" in vars(c) for c in cls.__mro__ if c is not Strategy and issubclass(c, Strategy))

    @classmethod
    def from_history(cls, params: BaseModel, space: SearchSpace, spec: JobSpec, trials: Iterable[Trial]) -> Strategy:
        """Rebuild the strategy's state from every trial the job already has."""
        strategy = cls(params, space, spec)
        for trial in trials:
            strategy.replay(trial)
        return strategy

    def replay(self, trial: Trial) -> None:
        """Account for a trial created by an earlier run of this job; finished ones are told."""
        if trial.state.finished:
            self.tell(trial)
