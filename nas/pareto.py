"""Non-dominated trials under a job's objectives, ranked as selection ranks them: ``accuracy`` and
``loss`` on their validation values (:func:`nas.metrics.selected_value`), never on the test split."""

from __future__ import annotations

from collections.abc import Sequence

from nas.metrics import selected_value
from nas.specs import Objective, Trial, TrialState


def _signed(trial: Trial, objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """Selected objective values turned so that larger is better for every one; None when one is missing."""
    values = [selected_value(trial.metrics, o.metric) for o in objectives]
    if None in values:
        return None
    return tuple(v if o.direction == "maximize" else -v for v, o in zip(values, objectives))  # type: ignore[operator]


def pareto_front(trials: Sequence[Trial], objectives: Sequence[Objective]) -> list[Trial]:
    """Complete trials that no other complete trial beats on every objective; ties are all kept.

    Trials are visited best-first in lexicographic order, so anything that dominates a trial was
    visited before it, and (dominance being transitive) it is enough to compare each trial with
    the front found so far: O(n · front · k), not O(n² · k). Returned in the order given.
    """
    scored = [
        (position, values)
        for position, t in enumerate(trials)
        if t.state is TrialState.complete and (values := _signed(t, objectives)) is not None
    ]
    front: list[tuple[int, tuple[float, ...]]] = []
    for position, values in sorted(scored, key=lambda item: item[1], reverse=True):
        dominated = any(all(o >= v for o, v in zip(other, values)) and other != values for _, other in front)
        if not dominated:
            front.append((position, values))
    return [trials[position] for position in sorted(position for position, _ in front)]


def best_trial(trials: Sequence[Trial], objectives: Sequence[Objective]) -> Trial | None:
    """The Pareto-optimal trial that is best on the first objective (its validation value for accuracy or loss)."""
    front = pareto_front(trials, objectives)
    return max(front, key=lambda t: _signed(t, objectives) or (), default=None)
