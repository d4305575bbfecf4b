"""Jobs: submit, list, read, cancel, and their trials and Pareto front."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.pagination import decode_cursor, encode_cursor
from nas import registry
from nas.pareto import pareto_front
from nas.specs import Job, JobSpec, JobStatus, Page, Trial, TrialState

router = APIRouter(prefix="/jobs", tags=["jobs"])

Limit = Annotated[int, Query(ge=1, le=1000)]


class JobPage(Page):
    items: list[Job]


class TrialPage(Page):
    items: list[Trial]


class TrialList(BaseModel):
    items: list[Trial]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Job)
def submit_job(spec: JobSpec, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> Job:
    dataset = registry.datasets.create(spec.dataset.name, spec.dataset.params)
    try:
        dataset.check_available(settings.data_dir)
    except ValueError as exc:
        raise HTTPException(
            422,
            [{"loc": ["body", "dataset", "name"], "msg": str(exc), "type": "value_error"}],
        ) from None
    return store.create_job(spec, principal.owner)


@router.get("", response_model=JobPage)
def list_jobs(
    store: StoreDep,
    principal: PrincipalDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> JobPage:
    jobs, next_seq = store.list_jobs(principal, status_, limit, decode_cursor(cursor))
    return JobPage(items=jobs, next_cursor=encode_cursor(next_seq))


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: str, store: StoreDep, principal: PrincipalDep) -> Job:
    return store.get_job(job_id, principal)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=Job)
def cancel_job(job_id: str, store: StoreDep, principal: PrincipalDep) -> Job:
    return store.request_cancel(job_id, principal)


@router.get("/{job_id}/trials", response_model=TrialPage)
def list_trials(
    job_id: str,
    store: StoreDep,
    principal: PrincipalDep,
    state: TrialState | None = None,
    limit: Limit = 100,
    cursor: str | None = None,
) -> TrialPage:
    trials, next_number = store.list_trials(job_id, principal, state, limit, decode_cursor(cursor))
    return TrialPage(items=trials, next_cursor=encode_cursor(next_number))


@router.get("/{job_id}/pareto", response_model=TrialList)
def pareto(job_id: str, store: StoreDep, principal: PrincipalDep) -> TrialList:
    job = store.get_job(job_id, principal)
    trials, _ = store.list_trials(job_id, principal, TrialState.complete)
    objectives = JobSpec.model_validate(job.spec).objectives
    return TrialList(items=pareto_front(trials, objectives))
