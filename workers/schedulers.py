"""Ray Tune schedulers that carry out the early-stopping rules of :mod:`nas.early_stopping`.

The rules (params and submission checks) live in ``nas``, which never imports Ray; the runner
asks :func:`tune_scheduler` for the scheduler it hands to Tune. The classes are defined at module
level, so pickle finds them by name, as Tune's experiment checkpoints need.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

from nas.early_stopping import ASHA, PLANNED, Dominance, EarlyStoppingRule, Median, NoEarlyStopping, dominates, mode_of
from nas.metrics import PER_EPOCH, selection_metric
from nas.specs import JobSpec


def tune_scheduler(rule: EarlyStoppingRule, spec: JobSpec) -> TrialScheduler:
    """The scheduler that stops ``spec``'s trials by ``rule``; a rule from outside the project brings its own."""
    if isinstance(rule, ASHA):
        metric = rule.metric(spec)
        return ASHASparingLastEpoch(
            last_epoch=spec.training.epochs,
            time_attr="epoch",
            metric=metric,
            mode=mode_of(spec, metric),
            max_t=spec.training.epochs,
            grace_period=min(rule.params.grace_period, spec.training.epochs),
            reduction_factor=rule.params.reduction_factor,
            brackets=rule.params.brackets,
            stop_last_trials=False,  # a trial at its last epoch still has its final report to send
        )
    if isinstance(rule, Median):
        metric = rule.metric(spec)
        return MedianSparingLastEpoch(
            last_epoch=spec.training.epochs,
            time_attr="epoch",
            metric=metric,
            mode=mode_of(spec, metric),
            grace_period=rule.params.grace_period,
            min_samples_required=rule.params.min_samples_required,
            hard_stop=True,
        )
    if isinstance(rule, Dominance):
        return DominanceScheduler(
            objectives=[(selection_metric(o.metric), o.direction == "maximize") for o in spec.objectives],
            last_epoch=spec.training.epochs,
            grace_period=rule.params.grace_period,
            min_complete=rule.params.min_complete,
        )
    if isinstance(rule, NoEarlyStopping):
        return Fifo()
    scheduler = rule.scheduler(spec)
    if not isinstance(scheduler, TrialScheduler):
        raise TypeError(f"{type(rule).__name__}.scheduler returned {scheduler!r}, not a Ray Tune TrialScheduler")
    return scheduler


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

    Per-epoch objectives (validation accuracy or loss, sparsity) are compared at that epoch; ``params``
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


class Fifo(FIFOScheduler):
    """Tune's first-in-first-out scheduling, choosing the next trial in constant time.

    ``FIFOScheduler`` scans every trial of the experiment, finished ones first, at every controller
    step: a job of 10,000 trials spent most of its controller time there. This keeps the trials
    added and not yet started in order instead (the runner never pauses a trial).
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiting: deque[Trial] = deque()

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._waiting.append(trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        while self._waiting and self._waiting[0].status != Trial.PENDING:
            self._waiting.popleft()  # started, or ended before it started
        return self._waiting[0] if self._waiting else None
