"""Jobs: submit, list, read, cancel, and their trials and Pareto front."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.limits import check_spec
from api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from api.responses import errors
from api.routes.dashboard_api import get_queries
from nas import registry
from nas.data.stored import UnknownDataset
from nas.errors import TooManyJobs
from nas.pareto import pareto_front
from nas.specs import Job, JobSpec, JobStatus, JobSummary, Objective, Page, Trial, TrialState

router = APIRouter(prefix="/jobs", tags=["jobs"])

# Point reads and single-row writes are ``async def``: their indexed queries take about a millisecond,
# less than FastAPI's hand-off of a plain ``def`` route to its thread pool and back (BENCHMARKS.md,
# Load). Routes that do real work (validating and limiting a spec, the Pareto front) stay in the pool.


class JobPage(Page):
    items: list[JobSummary] = Field(description="jobs without their specs; GET /jobs/{id} has the spec")


class TrialPage(Page):
    items: list[Trial]


class TrialList(BaseModel):
    items: list[Trial]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Job, responses=errors(413, 422))
def submit_job(spec: JobSpec, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> Job:
    """Queue a job; 422 if it exceeds a per-job limit, 429 (with ``Retry-After``) if the owner is at a
    quota: active jobs, jobs created in the last hour, or stored spec bytes."""
    check_spec(spec, settings)
    dataset = registry.datasets.create(spec.dataset.name, spec.dataset.params)
    try:
        dataset.check_available(settings.data_dir)
    except ValueError as exc:
        raise HTTPException(
            422,
            [{"loc": ["body", "dataset", "name"], "msg": str(exc), "type": "value_error"}],
        ) from None
    try:
        return store.create_job(
            spec, principal.owner, max_active=settings.limit_active_jobs, max_per_hour=settings.limit_jobs_per_hour,
            max_spec_bytes=settings.limit_owner_spec_bytes,
        )  # fmt: skip
    except TooManyJobs as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after)}
        ) from None
    except UnknownDataset as exc:  # deleted while the spec was checked
        raise HTTPException(
            422, [{"loc": ["body", "dataset", "params", "id"], "msg": str(exc), "type": "dataset_unknown"}]
        ) from None


@router.get("", response_model=JobPage, responses=errors(422))
async def list_jobs(
    request: Request,
    store: StoreDep,
    principal: PrincipalDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JobPage:
    jobs, next_seq = store.list_jobs(principal, status_, limit, decode_cursor(request, cursor, "jobs"))
    return JobPage(items=jobs, next_cursor=encode_cursor(request, next_seq, "jobs"))


@router.get("/{job_id}", response_model=Job, responses=errors(404))
async def get_job(job_id: str, store: StoreDep, principal: PrincipalDep) -> Job:
    return store.get_job(job_id, principal)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=Job, responses=errors(404, 409))
async def cancel_job(job_id: str, store: StoreDep, principal: PrincipalDep) -> Job:
    return store.request_cancel(job_id, principal)


@router.get("/{job_id}/trials", response_model=TrialPage, responses=errors(404, 422))
async def list_trials(
    request: Request,
    job_id: str,
    store: StoreDep,
    principal: PrincipalDep,
    state: TrialState | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> TrialPage:
    scope = f"trials:{job_id}"
    trials, next_number = store.list_trials(job_id, principal, state, limit, decode_cursor(request, cursor, scope))
    return TrialPage(items=trials, next_cursor=encode_cursor(request, next_number, scope))


@router.get("/{job_id}/pareto", response_model=TrialList, responses=errors(404))
def pareto(request: Request, job_id: str, store: StoreDep, principal: PrincipalDep) -> TrialList:
    """The front is computed once per change of the job's trials: it is kept with the job's
    column snapshot (:class:`~api.queries.ColumnCache`), which any trial change replaces."""
    queries = get_queries(request)
    columns = queries.columns(job_id, principal)  # 404 for another owner's job
    if "pareto" not in columns.derived:
        objectives = [Objective.model_validate(o) for o in queries.job_spec(job_id, principal)["objectives"]]
        trials, _ = store.list_trials(job_id, principal, TrialState.complete)
        columns.derived["pareto"] = pareto_front(trials, objectives)
    return TrialList(items=columns.derived["pareto"])
