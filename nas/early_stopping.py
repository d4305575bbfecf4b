"""Early-stopping rules (entry-point group ``nas.early_stopping``): which trials a job stops early.

A rule subclasses :class:`EarlyStoppingRule`: ``Params`` and ``check(spec)`` (problems that make
it useless or wrong for the job, each a 422 at its location). The runner carries a rule out with
a Ray Tune ``TrialScheduler``: :func:`workers.schedulers.tune_scheduler` builds the built-in
rules' schedulers, and a rule from outside the project brings its own in ``scheduler(spec)``.
The runner records a trial that a rule stopped after an epoch as ``pruned``, with that epoch's
metrics. Rules compare trials on the metrics the trainer reports after every epoch
(:data:`PER_EPOCH`), at the same epoch (Tune's ``time_attr`` is ``"epoch"``), and never stop a
trial at its last epoch, so no finished training is thrown away. An ``accuracy`` or ``loss``
objective is ranked on its validation value (:func:`nas.metrics.selection_metric`): epochs are
never evaluated on the test split.

* ``asha``: asynchronous successive halving (``ASHAScheduler``) on one metric, for
  single-objective jobs: at epochs grace_period · reduction_factorᵏ below the last one, only the
  best 1/reduction_factor of the trials that reached that rung go on.
* ``median``: the median stopping rule (``MedianStoppingRule``): stop a trial whose best value so
  far is worse than the median of the other trials' running means at the same epoch.
* ``dominance``: for multi-objective jobs, stop a trial that some trial which ran all its epochs
  Pareto-dominates at the same epoch (as good on every objective, better on one).
* ``none``: Tune's FIFO scheduler; every trial runs to its last epoch.

The rules hold no Ray code: the API server validates specs and lists them without Ray, and
``nas`` never imports it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from nas.metrics import METRICS, PER_EPOCH, selection_metric
from nas.specs import JobSpec

Problem = tuple[tuple[str | int, ...], str]

# Metrics known before training, which the runner records on every trial (``planned`` in the
# Tune trial's config): the dominance rule compares them instead of waiting for the end.
PLANNED: dict[str, str] = {"params": "params", "predicted_latency_ms": "predicted_latency_ms",
                           "latency_ms": "predicted_latency_ms"}


class EarlyStoppingRule:
    """Base class of registered early-stopping rules; ``Params`` holds their options."""

    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def check(self, spec: JobSpec) -> list[Problem]:
        """Problems that make the rule useless or wrong for ``spec``, each a 422 at its location; none by default."""
        return []

    def scheduler(self, spec: JobSpec) -> Any:
        """The Ray Tune ``TrialScheduler`` of a rule from outside the project, which imports Ray in here.

        Only the runner calls it, through :func:`workers.schedulers.tune_scheduler`, which builds
        the built-in rules' schedulers itself.
        """
        raise NotImplementedError(f"{type(self).__name__} brings no Ray Tune scheduler")


def mode_of(spec: JobSpec, metric: str) -> str:
    """``"max"`` or ``"min"``: how ``spec`` ranks the per-epoch ``metric`` (the direction of the objective
    selected on it, else the metric's own: losses fall, others rise)."""
    for objective in spec.objectives:
        if selection_metric(objective.metric) == metric:
            return "max" if objective.direction == "maximize" else "min"
    known = METRICS.get(metric)
    return "min" if known is not None and known.direction == "minimize" else "max"


class _OneMetricParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str | None = Field(
        None, description="metric to rank trials on after every epoch: accuracy or loss (ranked on their validation "
        "values, val_accuracy and val_loss), or sparsity; null: the first objective's"
    )
    grace_period: int = Field(1, ge=1, le=1000, description="epochs every trial runs before it may be stopped")


class _OneMetricRule(EarlyStoppingRule):
    """Shared by the single-metric rules: which metric, and the checks on it."""

    Params: ClassVar[type[_OneMetricParams]]
    name: ClassVar[str]
    params: _OneMetricParams

    def metric(self, spec: JobSpec) -> str:
        """The per-epoch metric this rule ranks on: an accuracy or loss objective's validation value."""
        return selection_metric(self.params.metric or spec.objectives[0].metric)

    def check(self, spec: JobSpec) -> list[Problem]:
        problems: list[Problem] = []
        metric = self.metric(spec)
        if metric not in PER_EPOCH:
            where = ("early_stopping", "params", "metric") if self.params.metric else ("early_stopping", "name")
            known = METRICS.get(metric)
            if known is not None and known.split == "test":
                why = f"{metric!r} is measured on the test split, once, when a trial ends, and nothing ranks on it"
            else:
                why = f"{metric!r} is {'a metric' if known else 'not a metric'} reported only when a trial ends"
            problems.append(
                (where, f"{self.name} ranks trials after every epoch, but {why}; per-epoch metrics: "
                 f"{', '.join(PER_EPOCH)} (accuracy and loss name val_accuracy and val_loss)")
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


class Median(_OneMetricRule):
    """The median stopping rule (Ray Tune's MedianStoppingRule) on one per-epoch metric."""

    name = "median"

    class Params(_OneMetricParams):
        min_samples_required: int = Field(3, ge=1, le=1000, description="other trials needed at an epoch to compare")

    params: Params


class Dominance(EarlyStoppingRule):
    """Stops a trial Pareto-dominated at the same epoch by a trial that ran all its epochs (multi-objective)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        grace_period: int = Field(1, ge=1, le=1000, description="epochs every trial runs before it may be stopped")
        min_complete: int = Field(1, ge=1, le=1000, description="trials that ran all epochs before any is stopped")

    params: Params

    def check(self, spec: JobSpec) -> list[Problem]:
        comparable = [
            o.metric for o in spec.objectives if selection_metric(o.metric) in PER_EPOCH or o.metric in PLANNED
        ]
        problems: list[Problem] = []
        if not any(selection_metric(o.metric) in PER_EPOCH for o in spec.objectives):
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


class NoEarlyStopping(EarlyStoppingRule):
    """Every trial runs to its last epoch (Tune's FIFO scheduler)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")


def dominates(a: list[float], b: list[float], maximize: list[bool]) -> bool:
    """Pareto dominance: ``a`` is as good as ``b`` on every objective and better on one."""
    signed = [(x, y) if up else (-x, -y) for x, y, up in zip(a, b, maximize)]
    return all(x >= y for x, y in signed) and any(x > y for x, y in signed)
