"""Process-wide Prometheus metrics that the runner feeds as trials finish.

They live in ``nas`` (not ``api``) so that the workers can record them without importing the API;
``api.metrics`` exposes them with the counts it reads from the store at scrape time. Like every
Prometheus counter they start from zero when the process starts.
"""

from __future__ import annotations

from prometheus_client import Histogram

from nas.specs import Trial

# Trials run from seconds (digits) to hours (CIFAR-10 for many epochs).
TRIAL_DURATION = Histogram(
    "nas_trial_duration_seconds",
    "Wall time of finished trials, from their (last) start to their end, by final state.",
    ["state"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, float("inf")),
    registry=None,
)


def observe_trial(trial: Trial) -> None:
    """Record a finished trial's duration; trials that never started (infeasible) are skipped."""
    if trial.started_at is not None and trial.finished_at is not None:
        seconds = (trial.finished_at - trial.started_at).total_seconds()
        TRIAL_DURATION.labels(state=trial.state.value).observe(max(seconds, 0.0))
