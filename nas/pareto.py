"""Non-dominated trials under a job's objectives."""

from __future__ import annotations

from collections.abc import Sequence

from nas.specs import Objective, Trial, TrialState


def _signed(trial: Trial, objectives: Sequence[Objective]) -> tuple[float, ...]:
    """Objective values turned so that larger is better for every one."""
    return tuple(
        trial.metrics[o.metric] if o.direction == "maximize" else -trial.metrics[o.metric] for o in objectives
    )


def pareto_front(trials: Sequence[Trial], objectives: Sequence[Objective]) -> list[Trial]:
    """Complete trials that no other complete trial beats on every objective.

    O(n² · k), fine for the thousands of trials a job holds; ties are all kept.
    """
    scored = [
        (t, _signed(t, objectives))
        for t in trials
        if t.state is TrialState.complete and all(o.metric in t.metrics for o in objectives)
    ]
    front = []
    for trial, values in scored:
        dominated = any(
            all(o >= v for o, v in zip(other, values)) and other != values for _, other in scored
        )
        if not dominated:
            front.append(trial)
    return front


def best_trial(trials: Sequence[Trial], objectives: Sequence[Objective]) -> Trial | None:
    """The Pareto-optimal trial that is best on the first objective."""
    front = pareto_front(trials, objectives)
    return max(front, key=lambda t: _signed(t, objectives), default=None)
