"""``GET /metrics``: Prometheus text for operators, read with an admin key.

Job and trial counts are read from the database at scrape time (one aggregate query each), so
every server of a cluster reports the same totals and nothing drifts after a restart. Trial
durations are a histogram the runner of this process feeds (see :mod:`nas.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.deps import PrincipalDep
from api.responses import ErrorDetail, errors
from nas.metrics import TRIAL_DURATION
from nas.specs import JobStatus, TrialState
from nas.store import Store

router = APIRouter(tags=["health"])


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
        # No latency predictor is registered yet; the family is declared so that dashboards and
        # alerts can be written now, and it gains a sample per target once a predictor exists.
        yield GaugeMetricFamily(
            "nas_latency_predictor_error",
            "Mean absolute relative error of the latency predictor against measurements, by target.",
            labels=["target"],
        )


def metrics_registry(store: Store) -> CollectorRegistry:
    """A registry per app (tests build many apps) holding the store counts, trial durations and
    this process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    registry.register(TRIAL_DURATION)
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
