"""``GET /metrics``: Prometheus text for operators, read with an admin key.

Everything job- and trial-related is read from the database at scrape time, so every API process
of a cluster reports the same values, whichever process ran the trials, and nothing drifts after
a restart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.deps import PrincipalDep
from api.responses import ErrorDetail, errors
from nas.specs import JobStatus, TrialState
from nas.store import Store

router = APIRouter(tags=["health"])

# Trials run from seconds (digits) to hours (CIFAR-10 for many epochs).
TRIAL_DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, float("inf"))


class StoreCollector(Collector):
    """Counts of jobs and trials, computed from the store whenever Prometheus scrapes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        jobs = self.store.count_jobs_by_status()
        trials = self.store.count_trials_by_state()
        by_status = GaugeMetricFamily("nas_jobs", "Jobs by status, over every owner.", labels=["status"])
        for job_status in JobStatus:
            by_status.add_metric([job_status.value], jobs.get(job_status, 0))
        yield by_status
        by_state = GaugeMetricFamily("nas_trials", "Trials by state, over every job.", labels=["state"])
        for state in TrialState:
            by_state.add_metric([state.value], trials.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "nas_queue_depth", "Jobs waiting for a dispatcher to start them.", value=jobs.get(JobStatus.queued, 0)
        )
        yield self._durations()
        errors = GaugeMetricFamily(
            "nas_latency_predictor_error",
            "Mean absolute relative error of predicted against measured latency over the latest "
            "1,000 complete trials, by target.",
            labels=["target"],
        )
        by_target: dict[str, list[float]] = defaultdict(list)
        for target, predicted, measured in self.store.latency_predictions():
            by_target[target].append(abs(predicted - measured) / measured)
        for target, relative in sorted(by_target.items()):
            errors.add_metric([target], sum(relative) / len(relative))
        yield errors

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "nas_trial_duration_seconds",
            "Wall time of finished trials, from their (last) start to their end, by final state.",
            labels=["state"],
        )
        by_state: dict[TrialState, list[float]] = defaultdict(list)
        for state, seconds in self.store.trial_durations():
            by_state[state].append(seconds)
        for state, durations in sorted(by_state.items(), key=lambda item: item[0].value):
            counts = [sum(1 for d in durations if d <= bound) for bound in TRIAL_DURATION_BUCKETS]
            family.add_metric(
                [state.value],
                buckets=[(_bound_label(b), c) for b, c in zip(TRIAL_DURATION_BUCKETS, counts)],
                sum_value=sum(durations),
            )
        return family


def _bound_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def metrics_registry(store: Store) -> CollectorRegistry:
    """A registry per app (tests build many apps) holding what the store says and this process's
    CPU and memory."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    ProcessCollector(registry=registry)
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition"},
        403: {"model": ErrorDetail, "description": "the key is not an admin key"},
        **errors(),
    },
)
def metrics(request: Request, principal: PrincipalDep) -> Response:
    """Prometheus metrics; the counts span every owner, so an admin key is required."""
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "metrics span every owner: use an admin API key")
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
