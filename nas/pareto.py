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


def non_dominated(points: Sequence[tuple[float, ...]]) -> list[int]:
    """Positions of the points that no other point beats on every coordinate, larger being better;
    equal points are all kept. In the order given.

    Points are visited best-first in lexicographic order, so anything that dominates a point was
    visited before it, and (dominance being transitive) it is enough to compare each point with
    the front found so far: O(n · front · k), not O(n² · k).
    """
    front: list[int] = []
    for position in sorted(range(len(points)), key=lambda i: points[i], reverse=True):
        values = points[position]
        if not any(all(o >= v for o, v in zip(points[f], values)) and points[f] != values for f in front):
            front.append(position)
    return sorted(front)


def pareto_front(trials: Sequence[Trial], objectives: Sequence[Objective]) -> list[Trial]:
    """Complete trials that no other complete trial beats on every objective; ties are all kept.
    Returned in the order given."""
    scored = [
        (t, values)
        for t in trials
        if t.state is TrialState.complete and (values := _signed(t, objectives)) is not None
    ]
    return [scored[i][0] for i in non_dominated([values for _, values in scored])]


def best_trial(trials: Sequence[Trial], objectives: Sequence[Objective]) -> Trial | None:
    """The Pareto-optimal trial that is best on the first objective (its validation value for accuracy or loss)."""
    front = pareto_front(trials, objectives)
    return max(front, key=lambda t: _signed(t, objectives) or (), default=None)
