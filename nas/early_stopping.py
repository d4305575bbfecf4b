"""Early-stopping rules (entry-point group ``nas.early_stopping``): Ray Tune schedulers for a job.

A rule subclasses :class:`EarlyStoppingRule`: ``Params``, ``check(spec)`` (problems that make it
useless or wrong for the job, each a 422 at its location) and ``scheduler(spec)``, the
``TrialScheduler`` the runner hands to Tune.
The runner records a trial that a rule stopped after an epoch as ``pruned``, with that epoch's
metrics. Rules compare trials on the metrics the trainer reports after every epoch
(:data:`PER_EPOCH`), at the same epoch (Tune's ``time_attr`` is ``"epoch"``), and never stop a
trial at its last epoch, so no finished training is thrown away.

* ``asha``: asynchronous successive halving (``ASHAScheduler``) on one metric, for
  single-objective jobs: at epochs grace_period · reduction_factorᵏ below the last one, only the
  best 1/reduction_factor of the trials that reached that rung go on.
* ``median``: the median stopping rule (``MedianStoppingRule``): stop a trial whose best value so
  far is worse than the median of the other trials' running means at the same epoch.
* ``dominance``: for multi-objective jobs, stop a trial that some trial which ran all its epochs
  Pareto-dominates at the same epoch (as good on every objective, better on one).
* ``none``: Tune's FIFO scheduler; every trial runs to its last epoch.

Ray is imported only when a scheduler is built: the API server validates specs without it.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from nas.metrics import OBJECTIVES, PER_EPOCH
from nas.specs import JobSpec

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

Problem = tuple[tuple[str | int, ...], str]

# Metrics known before training, which the runner records on every trial (``planned`` in the
# Tune trial's config): the dominance rule compares them instead of waiting for the end.
PLANNED: dict[str, str] = {"params": "params", "predicted_latency_ms": "predicted_latency_ms",
                           "latency_ms": "predicted_latency_ms"}


class EarlyStoppingRule(ABC):
    """Base class of registered early-stopping rules; ``Params`` holds their options."""

    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def check(self, spec: JobSpec) -> list[Problem]:
        """Problems that make the rule useless or wrong for ``spec``, each a 422 at its location; none by default."""
        return []

    @abstractmethod
    def scheduler(self, spec: JobSpec) -> TrialScheduler:
        """The Ray Tune scheduler that stops ``spec``'s trials; imports Ray, so only the runner calls it."""


def _mode(spec: JobSpec, metric: str) -> str:
    for objective in spec.objectives:
        if objective.metric == metric:
            return "max" if objective.direction == "maximize" else "min"
    return "min" if metric == "loss" else "max"


class _OneMetricParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str | None = Field(
        None, description="per-epoch metric to rank trials on (accuracy, loss, sparsity); null: the first objective's"
    )
    grace_period: int = Field(1, ge=1, le=1000, description="epochs every trial runs before it may be stopped")


class _OneMetricRule(EarlyStoppingRule):
    """Shared by the single-metric rules: which metric, and the checks on it."""

    Params: ClassVar[type[_OneMetricParams]]
    name: ClassVar[str]
    params: _OneMetricParams

    def metric(self, spec: JobSpec) -> str:
        return self.params.metric or spec.objectives[0].metric

    def check(self, spec: JobSpec) -> list[Problem]:
        problems: list[Problem] = []
        metric = self.metric(spec)
        if metric not in PER_EPOCH:
            where = ("early_stopping", "params", "metric") if self.params.metric else ("early_stopping", "name")
            known = "a metric" if metric in OBJECTIVES else "not a metric"
            problems.append(
                (where, f"{self.name} ranks trials after every epoch, but {metric!r} is {known} reported only when a "
                 f"trial ends; per-epoch metrics: {', '.join(PER_EPOCH)}")
            )
        if self.params.grace_period >= spec.training.epochs:
            problems.append(
                (("early_stopping", "params", "grace_period"),
                 f"grace_period {self.params.grace_period} leaves no epoch to stop at: training.epochs is "
                 f"{spec.training.epochs} and the last epoch always runs")
            )
        return problems


class ASHA(_OneMetricRule):
    """Asynchronous successive halving (Ray Tune's ASHAScheduler) on one per-epoch metric."""

    name = "asha"

    class Params(_OneMetricParams):
        reduction_factor: float = Field(3.0, gt=1.0, le=100.0, description="1/fraction of trials kept at each rung")
        brackets: int = Field(1, ge=1, le=10, description="brackets of different grace periods (Hyperband)")

    params: Params

    def scheduler(self, spec: JobSpec) -> TrialScheduler:
        metric = self.metric(spec)
        return _classes().ASHASparingLastEpoch(
            last_epoch=spec.training.epochs,
            time_attr="epoch",
            metric=metric,
            mode=_mode(spec, metric),
            max_t=spec.training.epochs,
            grace_period=min(self.params.grace_period, spec.training.epochs),
            reduction_factor=self.params.reduction_factor,
            brackets=self.params.brackets,
            stop_last_trials=False,  # a trial at its last epoch still has its final report to send
        )


class Median(_OneMetricRule):
    """The median stopping rule (Ray Tune's MedianStoppingRule) on one per-epoch metric."""

    name = "median"

    class Params(_OneMetricParams):
        min_samples_required: int = Field(3, ge=1, le=1000, description="other trials needed at an epoch to compare")

    params: Params

    def scheduler(self, spec: JobSpec) -> TrialScheduler:
        metric = self.metric(spec)
        return _classes().MedianSparingLastEpoch(
            last_epoch=spec.training.epochs,
            time_attr="epoch",
            metric=metric,
            mode=_mode(spec, metric),
            grace_period=self.params.grace_period,
            min_samples_required=self.params.min_samples_required,
            hard_stop=True,
        )


class Dominance(EarlyStoppingRule):
    """Stops a trial Pareto-dominated at the same epoch by a trial that ran all its epochs (multi-objective)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        grace_period: int = Field(1, ge=1, le=1000, description="epochs every trial runs before it may be stopped")
        min_complete: int = Field(1, ge=1, le=1000, description="trials that ran all epochs before any is stopped")

    params: Params

    def check(self, spec: JobSpec) -> list[Problem]:
        comparable = [o.metric for o in spec.objectives if o.metric in PER_EPOCH or o.metric in PLANNED]
        problems: list[Problem] = []
        if not any(o.metric in PER_EPOCH for o in spec.objectives):
            problems.append(
                (("early_stopping", "name"),
                 f"dominance compares trials after every epoch, but none of the objectives is reported per epoch "
                 f"(per-epoch: {', '.join(PER_EPOCH)})")
            )
        elif len(comparable) < len(spec.objectives):
            missing = [o.metric for o in spec.objectives if o.metric not in comparable]
            problems.append(
                (("early_stopping", "name"),
                 f"dominance cannot compare a running trial on {', '.join(missing)}: known neither per epoch nor "
                 f"before training (comparable: {', '.join((*PER_EPOCH, *PLANNED))})")
            )
        if self.params.grace_period >= spec.training.epochs:
            problems.append(
                (("early_stopping", "params", "grace_period"),
                 f"grace_period {self.params.grace_period} leaves no epoch to stop at: training.epochs is "
                 f"{spec.training.epochs} and the last epoch always runs")
            )
        return problems

    def scheduler(self, spec: JobSpec) -> TrialScheduler:
        return _classes().DominanceScheduler(
            objectives=[(o.metric, o.direction == "maximize") for o in spec.objectives],
            last_epoch=spec.training.epochs,
            grace_period=self.params.grace_period,
            min_complete=self.params.min_complete,
        )


class NoEarlyStopping(EarlyStoppingRule):
    """Every trial runs to its last epoch (Tune's FIFO scheduler)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def scheduler(self, spec: JobSpec) -> TrialScheduler:
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()


def dominates(a: list[float], b: list[float], maximize: list[bool]) -> bool:
    """Pareto dominance: ``a`` is as good as ``b`` on every objective and better on one."""
    signed = [(x, y) if up else (-x, -y) for x, y, up in zip(a, b, maximize)]
    return all(x >= y for x, y in signed) and any(x > y for x, y in signed)


@functools.cache
def _classes() -> Any:
    """The Tune scheduler subclasses, defined on first use so that importing this module needs no Ray.

    They are published as attributes of this module (``__getattr__`` below), so pickle finds them
    by name, as Tune's experiment checkpoints need.
    """
    from types import SimpleNamespace

    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

    class ASHASparingLastEpoch(AsyncHyperBandScheduler):
        """Ray's ASHA, except that a trial at its last epoch is never stopped: ASHA has a rung at
        ``max_t`` itself, and ``stop_last_trials=False`` does not keep it from cutting there."""

        def __init__(self, last_epoch: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._last_epoch = last_epoch

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and result.get("epoch", 0) >= self._last_epoch:
                self._num_stopped -= 1
                return TrialScheduler.CONTINUE
            return decision

    class MedianSparingLastEpoch(MedianStoppingRule):
        """Ray's median stopping rule, except that a trial at its last epoch is never stopped and
        a trial without enough others to compare with runs on (Ray would pause it for a waiting
        trial; our trials keep no checkpoint to resume from)."""

        def _on_insufficient_samples(self, tune_controller: Any, trial: Any, time: float) -> str:
            return TrialScheduler.CONTINUE

        def __init__(self, last_epoch: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._last_epoch = last_epoch

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and result.get("epoch", 0) >= self._last_epoch:
                self._stopped_trials.discard(trial)
                return TrialScheduler.CONTINUE
            return decision

    class DominanceScheduler(FIFOScheduler):
        """Stops a trial when a trial that ran all epochs dominated it at the same epoch.

        Per-epoch objectives (accuracy, loss, sparsity) are compared at that epoch; ``params``
        and ``latency_ms`` are compared as planned before training (``predicted_latency_ms`` for
        latency, on both sides), from the ``planned`` metrics in the trial's config. A trial
        missing a value for some objective is never stopped.
        """

        def __init__(
            self, objectives: list[tuple[str, bool]], last_epoch: int, grace_period: int = 1, min_complete: int = 1
        ) -> None:
            super().__init__()
            self._objectives = objectives
            self._maximize = [up for _, up in objectives]
            self._last_epoch = last_epoch
            self._grace_period = grace_period
            self._min_complete = min_complete
            self._history: dict[str, dict[int, dict[str, float]]] = {}  # trial id -> epoch -> metrics
            self._planned: dict[str, dict[str, float]] = {}
            self._complete: set[str] = set()  # trials that reported their last epoch
            self.stopped: list[tuple[str, int]] = []  # (trial id, epoch), for inspection

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if "epoch" not in result:
                return TrialScheduler.CONTINUE  # the final report
            epoch = int(result["epoch"])
            trial_id = trial.trial_id
            self._history.setdefault(trial_id, {})[epoch] = {
                m: float(result[m]) for m, _ in self._objectives if m in PER_EPOCH and m in result
            }
            self._planned[trial_id] = dict((trial.config or {}).get("planned") or {})
            if epoch >= self._last_epoch:
                self._complete.add(trial_id)
                return TrialScheduler.CONTINUE
            if epoch < self._grace_period or len(self._complete) < self._min_complete:
                return TrialScheduler.CONTINUE
            mine = self._values(trial_id, epoch)
            if mine is None:
                return TrialScheduler.CONTINUE
            for other in self._complete:
                theirs = self._values(other, epoch)
                if theirs is not None and dominates(theirs, mine, self._maximize):
                    self.stopped.append((trial_id, epoch))
                    return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def _values(self, trial_id: str, epoch: int) -> list[float] | None:
            at_epoch = self._history.get(trial_id, {}).get(epoch, {})
            planned = self._planned.get(trial_id, {})
            values = []
            for metric, _ in self._objectives:
                if metric in PER_EPOCH:
                    value = at_epoch.get(metric)
                else:
                    value = planned.get(PLANNED.get(metric, metric))
                if value is None:
                    return None
                values.append(float(value))
            return values

    classes = (ASHASparingLastEpoch, MedianSparingLastEpoch, DominanceScheduler)
    for cls in classes:
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return SimpleNamespace(**{cls.__name__: cls for cls in classes})


def __getattr__(name: str) -> Any:
    if name in ("ASHASparingLastEpoch", "MedianSparingLastEpoch", "DominanceScheduler"):
        return getattr(_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
