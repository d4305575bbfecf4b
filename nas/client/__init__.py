"""Python SDK for the sparse-nas REST API: :class:`Client` and :class:`AsyncClient`.

Light on purpose: importing it pulls in neither torch nor ray, so notebooks and CI scripts can
drive a remote server (uploading arrays as a dataset needs numpy, imported then). Results are
the pydantic models of :mod:`nas.specs` (:class:`Job`, :class:`Trial`) and
:mod:`nas.client.models` (:class:`Dataset` and :class:`Model` among them); failures raise the classes of
:mod:`nas.client.errors`, all :class:`NasError`. :data:`METRICS` says what each trial metric
means (unit, direction, kind); a :class:`Trial`'s integer metrics are ``int``.
"""

from __future__ import annotations

from nas.client._base import DEFAULT_URL, MODEL_FORMATS, RetryPolicy, dashboard_url, load_spec
from nas.client.aio import AsyncClient
from nas.client.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    ConnectionFailed,
    FieldError,
    NasError,
    NotFoundError,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    SpecError,
    ValidationError,
    WaitTimeout,
)
from nas.client.models import Dataset, DatasetPage, Event, Identity, JobPage, Model, ModelPage, TrialPage
from nas.client.sync import Client
from nas.metrics import METRICS, Metric
from nas.specs import Job, JobOutline, JobSpec, JobStatus, JobSummary, LayerInfo, Trial, TrialState

__all__ = [
    "DEFAULT_URL",
    "MODEL_FORMATS",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "ConnectionFailed",
    "Dataset",
    "DatasetPage",
    "Event",
    "FieldError",
    "Identity",
    "Job",
    "JobOutline",
    "JobPage",
    "JobSpec",
    "JobStatus",
    "JobSummary",
    "LayerInfo",
    "METRICS",
    "Metric",
    "Model",
    "ModelPage",
    "NasError",
    "NotFoundError",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "SpecError",
    "Trial",
    "TrialPage",
    "TrialState",
    "ValidationError",
    "WaitTimeout",
    "dashboard_url",
    "load_spec",
]
