"""Jobs: submit, list, read, cancel, and their trials and Pareto front."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.limits import check_resources, check_spec, spec_problems
from api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from api.responses import errors
from api.routes.dashboard_api import get_queries
from api.routes.trials import annotation_refused
from nas import registry
from nas.data.stored import UnknownDataset
from nas.errors import BudgetNotRaised, TooManyJobs
from nas.pareto import pareto_front
from nas.settings import Settings
from nas.specs import Annotation, Budget, Job, JobSpec, JobStatus, JobSummary, Objective, Page, Trial, TrialState
from nas.store.artifacts import remove_job_files

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


def _budget_field(name: str, kind: type) -> Any:
    """A budget field as :class:`~nas.specs.Budget` bounds it (one definition of the bounds)."""
    return Annotated[(kind | None, *Budget.model_fields[name].metadata)]


class BudgetRaise(BaseModel):
    """Budget fields to raise; each only upwards, and within this server's limits."""

    # At least one of them, not null (the route answers 422 otherwise).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["max_trials"], "properties": {"max_trials": {"type": "integer"}}},
        {"required": ["timeout_s"], "properties": {"timeout_s": {"type": "number"}}},
    ]})  # fmt: skip
    max_trials: _budget_field("max_trials", int) = Field(None, description="more trials in all (never fewer)")
    timeout_s: _budget_field("timeout_s", float) = Field(
        None, description="a longer time limit (never shorter); a finished job's counts again from its restart"
    )


class JobChange(Annotation):
    """What the owner may change of a submitted job: its note and user attributes, and its budget."""

    budget: BudgetRaise | None = Field(
        None, description="raise the budget of a running job (its runner picks it up within seconds) or of a "
        "finished one (it is queued again and resumed with its trials)",
    )


def _too_many(exc: TooManyJobs) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after)})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Job, responses=errors(413, 422))
def submit_job(spec: JobSpec, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> Job:
    """Queue a job; 422 if it exceeds a per-job limit or no node of the Ray cluster has the CPUs and GPUs
    one of its trials asks for (``resources``), 429 (with ``Retry-After``) if the owner is at a
    quota: active jobs, jobs created in the last hour, or stored spec bytes."""
    check_spec(spec, settings)
    check_resources(spec, store)
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
        raise _too_many(exc) from None
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


@router.patch("/{job_id}", response_model=Job, responses=errors(404, 422))
def change_job(
    job_id: str, change: JobChange, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Job:
    """Raise a job's budget (``budget.max_trials``, ``budget.timeout_s``): 422 naming the field if
    it would go down or pass this server's limits; 429 if a finished job, queued again, would pass
    its owner's active-job quota. Set its ``note`` (``""`` clears it) and merge ``user_attrs`` (a key
    given as null is removed); 422 naming ``user_attrs`` if they would pass the size cap. The budget
    is checked and raised first, so a refused budget leaves the note and attributes as they were."""
    job = store.get_job(job_id, principal)
    if change.budget is not None:  # the budget first: a refused change of it writes nothing
        raised = change.budget.model_dump(exclude_none=True)
        if not raised:
            raise HTTPException(422, [{"loc": ["body", "budget"], "msg": "name max_trials or timeout_s to raise",
                                       "type": "missing", "input": {}}])  # fmt: skip
        _check_raised_budget(job, raised, settings)
        try:
            job = store.extend_budget(job.id, raised, principal, max_active=settings.limit_active_jobs)
        except BudgetNotRaised as exc:
            raise HTTPException(422, [{"loc": ["body", "budget", exc.field], "msg": str(exc),
                                       "type": "budget_not_raised", "input": raised.get(exc.field)}]) from None  # fmt: skip
        except TooManyJobs as exc:
            raise _too_many(exc) from None
    if change.model_fields_set & {"note", "user_attrs"}:
        try:
            job = store.annotate_job(job.id, change, principal)
        except ValueError as exc:
            raise annotation_refused(exc) from None
    return job


def _check_raised_budget(job: Job, raised: dict[str, float], settings: Settings) -> None:
    """422 if the raised budget passes this server's limits; a limit on the product of the budget
    and the training (trial-epochs) is reported at the budget field the change raised."""
    problems = spec_problems(JobSpec.model_validate({**job.spec, "budget": {**job.spec["budget"], **raised}}), settings)
    for problem in problems:
        if problem["loc"][1:2] == ["training"] and "max_trials" in raised:
            problem.update(loc=["body", "budget", "max_trials"], input=raised["max_trials"])
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
async def delete_job(job_id: str, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> None:
    """Delete a finished job with its trials, their epochs, layers and model files (owner or admin);
    409 while it is queued or running: cancel it first. The latency observations its trials made
    stay (timings, no weights or data): they keep refining the latency predictor."""
    job = await run_in_threadpool(store.delete_job, job_id, principal)
    await run_in_threadpool(remove_job_files, settings, job.id)


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


@router.get(
    "/{job_id}/trials.csv",
    response_class=StreamingResponse,
    responses={**errors(404), 200: {"content": {"text/csv": {}}, "description": "one row per trial"}},
)
def trials_csv(request: Request, job_id: str, principal: PrincipalDep) -> StreamingResponse:
    """Every trial of the job as CSV, in number order: ``id``, ``number``, ``state``, one ``arch.KEY``
    column per architecture key (nested keys dotted), the metrics (in the order of ``GET /catalog``'s
    metrics, then any others by name), ``started_at`` and ``finished_at`` (ISO 8601, UTC). A missing
    value is an empty field."""
    full_id, rows = get_queries(request).trials_csv(job_id, principal)
    return StreamingResponse(rows, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="trials-{full_id}.csv"'})


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
