"""JSON the web dashboard reads besides the core API: table pages, chart columns, densities, curves.

Each route checks ownership like the job routes (another owner's job answers 404) and does its
sorting, filtering and paging in SQL (:mod:`api.queries`), so a job with 10,000 trials
costs one page of rows per request.
"""

from __future__ import annotations

import enum
import math
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.pagination import Cursor, decode_cursor, encode_cursor
from api.queries import (
    CHART_METRICS,
    BadQuery,
    DashboardQueries,
    METRIC_NAME,
    SORT_COLUMNS,
    DensityMatrix,
    JobColumns,
    TrialFilter,
    TrialHistory,
    TrialPoints,
    TrialSummary,
    TrialTable,
)
from api.responses import errors
from nas.metrics import METRICS, selection_metric
from nas.specs import Job, JobStatus, JobSummary, Objective, Page, TrialState
from nas.store import Principal, Store

router = APIRouter(tags=["dashboard"])

# What api.queries reads, as the OpenAPI document states it (whitespace as spaces and tabs, values as
# printable ASCII); whether a name exists depends on the job, and an unknown one answers 422 listing them.
_NUMBER = r"[+-]?(?:[0-9]{1,20}\.?[0-9]{0,20}|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,2})?"  # always finite
_KEY = r"[A-Za-z_][A-Za-z0-9_.]{0,127}"
FilterText = Annotated[
    str, StringConstraints(pattern=rf"^[ \t]*{_KEY}[ \t]*(?:(?:>=|<=|>|<)[ \t]*{_NUMBER}|!?=[ \t]*[!-~]+)[ \t]*$")
]
SortKey = Annotated[
    str,
    Query(
        max_length=160, pattern=rf"^(?:{'|'.join(SORT_COLUMNS)}|metrics\.{METRIC_NAME.pattern}|arch\.{_KEY})$",
        description="number, state, created_at, started_at, finished_at, updated_at, metrics.NAME or arch.KEY",
    ),
]
MetricName = enum.Enum("MetricName", {name: name for name in METRICS}, type=str)  # type: ignore[misc]

MAX_HISTORY_TRIALS = 20
Order = Literal["asc", "desc"]


def get_queries(request: Request) -> DashboardQueries:
    """One :class:`DashboardQueries` per app, made on first use."""
    queries = getattr(request.app.state, "dashboard_queries", None)
    if queries is None:
        queries = request.app.state.dashboard_queries = DashboardQueries(request.app.state.store)
    return queries


def _invalid(where: tuple[str | int, ...], message: str) -> HTTPException:
    return HTTPException(422, [{"loc": list(where), "msg": message, "type": "value_error"}])


# -- jobs overview ---------------------------------------------------------------------------


class BestTrial(BaseModel):
    id: str
    number: int
    metrics: dict[str, Any]


class JobOverviewItem(JobSummary):
    """A job with its best trial's metrics, without its spec: one row of the dashboard's jobs list,
    and what event streams send."""

    best_trial: BestTrial | None = None
    max_trials: int | None = Field(None, description="the job's budget of trials")


class JobOverview(JobOverviewItem):
    """One job with its best trial's metrics and its spec."""

    spec: dict[str, Any] = Field(description="the validated JobSpec, every default filled in")


class JobOverviewPage(Page):
    items: list[JobOverviewItem]


def overviews(queries: DashboardQueries, jobs: list[Job]) -> list[JobOverview]:
    """The jobs with their best trials (one query); lists and streams send them as :class:`JobOverviewItem`."""
    best = queries.best_metrics([j.best_trial_id for j in jobs if j.best_trial_id])
    items = []
    for job in jobs:
        found = best.get(job.best_trial_id or "")
        items.append(
            JobOverview(
                **job.model_dump(),
                best_trial=BestTrial(id=job.best_trial_id, number=found[0], metrics=found[1]) if found else None,
                max_trials=job.outline.max_trials,
            )
        )
    return items


@router.get("/dashboard/jobs", response_model=JobOverviewPage, responses=errors(422))
def list_job_overviews(
    request: Request,
    store: StoreDep,
    principal: PrincipalDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Cursor = None,
) -> JobOverviewPage:
    """The jobs list, newest first, each with its best trial's metrics (one extra query per page)."""
    jobs, next_seq = store.list_jobs(principal, status_, limit, decode_cursor(request, cursor, "jobs"))
    return JobOverviewPage(items=overviews(get_queries(request), jobs), next_cursor=encode_cursor(request, next_seq, "jobs"))


@router.get("/dashboard/jobs/{job_id}", response_model=JobOverview, responses=errors(404))
def job_overview(request: Request, job_id: str, store: StoreDep, principal: PrincipalDep) -> JobOverview:
    """One job with its best trial's metrics."""
    return overviews(get_queries(request), [store.get_job(job_id, principal)])[0]


# -- trials table ----------------------------------------------------------------------------


@router.get("/jobs/{job_id}/trials/table", response_model=TrialTable, responses=errors(404, 422))
def trial_table(
    request: Request,
    job_id: str,
    principal: PrincipalDep,
    state: Annotated[list[TrialState], Query(description="keep only these states (repeatable)")] = [],  # noqa: B006
    filter: Annotated[
        list[FilterText],
        Query(
            description="NAME OP VALUE (repeatable; all must hold): NAME a metric or an architecture key (arch.KEY where "
                        "a metric has the same name), OP one of >= <= > < = !=, VALUE a number, or a word for = and != "
                        "(sparsity>=0.9, depth=2, width_0>=128, activation=relu)",
            max_length=20,
        ),
    ] = [],  # noqa: B006
    sort: SortKey = "number",
    order: Order = "asc",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSONResponse:
    """A page of a job's trials, sorted and filtered on the server, with the total that match. A name
    that is neither a metric nor one of the job's architecture keys answers 422 listing the valid
    ones, the nearest first."""
    try:
        filters = [TrialFilter.parse(text) for text in filter]
    except ValueError as exc:
        raise _invalid(("query", "filter"), str(exc)) from None
    try:
        page = get_queries(request).trial_table(job_id, principal, state, filters, sort, order, offset, limit)
    except BadQuery as exc:
        raise _invalid(("query", exc.field), str(exc)) from None
    return JSONResponse(page)  # already JSON-ready: skips re-validating every row


# -- charts ----------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/points", response_model=TrialPoints, responses=errors(404, 422))
def trial_points(
    request: Request,
    job_id: str,
    principal: PrincipalDep,
    metric: Annotated[list[MetricName], Query(description="metrics to return (repeatable); default: the chart metrics and the objectives", max_length=32)] = [],  # noqa: B006
) -> JSONResponse:
    """Chosen metrics of every trial of the job as columns, for the charts."""
    queries = get_queries(request)
    names = [m.value for m in metric]
    if not names:
        spec = queries.job_spec(job_id, principal)
        objectives = [o.get("metric", "") for o in spec.get("objectives", [])]
        names = [*CHART_METRICS, *objectives, *map(selection_metric, objectives)]  # what the front ranks on
    try:
        return JSONResponse(queries.points(job_id, principal, names))
    except ValueError as exc:
        raise _invalid(("query", "metric"), str(exc)) from None


class HypervolumePoint(BaseModel):
    trial_id: str
    number: int
    finished_at: float | None
    hypervolume: float


class HypervolumeHistory(BaseModel):
    """Hypervolume of the Pareto front of the objectives over time: a step each time a trial improved it.

    Every objective is scaled to the range the job's complete trials span (so the value is unit-free,
    at most 1.0201 for two objectives); the reference point lies 1 % beyond the worst value of each.
    ``items`` holds the trials that changed the hypervolume, in finishing order, and the last
    complete trial, so that a step chart reaches the present.
    """

    objectives: list[Objective]
    complete: int = Field(description="complete trials with every objective")
    items: list[HypervolumePoint]


def _ranked(columns: JobColumns, objective: str) -> np.ndarray:
    """``objective`` per trial as the Pareto front ranks it (:func:`nas.metrics.selected_value`, column-wise):
    validation accuracy or loss, the objective itself for a trial recorded before validation splits."""
    selected = columns.metric(selection_metric(objective))
    return np.where(np.isnan(selected), columns.metric(objective), selected)


def hypervolume_history(columns: JobColumns, objectives: list[Objective]) -> tuple[int, list[HypervolumePoint]]:
    """Recomputed (optuna's exact algorithm) only when a trial enters the front."""
    from optuna._hypervolume import compute_hypervolume

    ranked = [_ranked(columns, o.metric) for o in objectives]
    values = np.column_stack(
        [v if o.direction == "minimize" else -v for v, o in zip(ranked, objectives)]
    ) if objectives else np.empty((len(columns.ids), 0))
    rows = np.flatnonzero((columns.state == TrialState.complete.value) & ~np.isnan(values).any(axis=1)) if objectives else np.array([], int)
    if not rows.size:
        return 0, []
    finished = np.nan_to_num(columns.times["finished_at"][rows], nan=0.0)
    rows = rows[np.lexsort((columns.number[rows], finished))]
    low, high = values[rows].min(axis=0), values[rows].max(axis=0)
    scaled = (values[rows] - low) / np.where(high > low, high - low, 1.0)
    reference = np.full(len(objectives), 1.01)
    front: list[tuple[float, ...]] = []
    volume, history = 0.0, []

    def point(i: int) -> HypervolumePoint:
        finished_at = columns.times["finished_at"][i]
        return HypervolumePoint(
            trial_id=columns.ids[i], number=int(columns.number[i]),
            finished_at=None if np.isnan(finished_at) else float(finished_at), hypervolume=volume,
        )

    for k, i in enumerate(rows):
        p = tuple(scaled[k].tolist())
        if any(all(f <= v for f, v in zip(q, p)) for q in front):
            continue  # dominated (or equal): the front and its hypervolume stay
        front = [q for q in front if not all(v <= f for v, f in zip(p, q))] + [p]
        volume = float(compute_hypervolume(np.array(front), reference, assume_pareto=True))
        history.append(point(int(i)))
    if history[-1].trial_id != columns.ids[rows[-1]]:
        history.append(point(int(rows[-1])))
    return len(rows), history


@router.get("/jobs/{job_id}/hypervolume", response_model=HypervolumeHistory, responses=errors(404))
def job_hypervolume(request: Request, job_id: str, principal: PrincipalDep) -> HypervolumeHistory:
    queries = get_queries(request)
    spec = queries.job_spec(job_id, principal)
    objectives = [Objective.model_validate(o) for o in spec.get("objectives", [])]
    columns = queries.columns(job_id, principal)
    key = "hypervolume:" + ",".join(f"{o.metric}:{o.direction}" for o in objectives)
    if key not in columns.derived:  # a snapshot never changes: its hypervolume is computed once
        columns.derived[key] = hypervolume_history(columns, objectives)
    complete, items = columns.derived[key]
    return HypervolumeHistory(objectives=objectives, complete=complete, items=items)


@router.get("/jobs/{job_id}/density", response_model=DensityMatrix, responses=errors(404, 422))
def density(
    request: Request,
    job_id: str,
    principal: PrincipalDep,
    sort: SortKey = "number",
    order: Order = "asc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    """Per-layer density of up to ``limit`` trials (those that reported layers), in the given order."""
    try:
        return JSONResponse(get_queries(request).density_matrix(job_id, principal, sort, order, limit))
    except ValueError as exc:
        raise _invalid(("query", "sort"), str(exc)) from None


class HistoryList(BaseModel):
    items: list[TrialHistory]


@router.get("/jobs/{job_id}/history", response_model=HistoryList, responses=errors(404, 422))
def histories(
    request: Request,
    job_id: str,
    principal: PrincipalDep,
    trial: Annotated[list[str], Query(description=f"trial ids (repeatable, at most {MAX_HISTORY_TRIALS})", max_length=MAX_HISTORY_TRIALS)] = [],  # noqa: B006
) -> HistoryList:
    """Per-epoch metrics of chosen trials of the job, for learning curves."""
    return HistoryList(items=get_queries(request).histories(job_id, list(dict.fromkeys(trial)), principal))


# -- lineage ---------------------------------------------------------------------------------


class Lineage(BaseModel):
    """A trial's ancestors (parent first) and children."""

    ancestors: list[TrialSummary]
    children: list[TrialSummary]


def _lineage(queries: DashboardQueries, store: Store, trial_id: str, principal: Principal) -> Lineage:
    trial = store.get_trial(trial_id, principal)
    ancestors: list[dict[str, Any]] = []
    parent, seen = trial.parent_id, {trial.id}
    while parent and parent not in seen and len(ancestors) < 100:
        seen.add(parent)
        found = queries.summaries([parent], principal)
        if not found:
            break
        ancestors.append(found[0])
        parent = found[0]["parent_id"]
    return Lineage.model_validate({"ancestors": ancestors, "children": queries.children(trial.id, trial.job_id)})


@router.get("/trials/{trial_id}/lineage", response_model=Lineage, responses=errors(404))
def lineage(request: Request, trial_id: str, store: StoreDep, principal: PrincipalDep) -> Lineage:
    return _lineage(get_queries(request), store, trial_id, principal)


# -- YAML ------------------------------------------------------------------------------------


class YamlText(BaseModel):
    yaml: str = Field(description="a JobSpec as YAML (or JSON); at most NAS_LIMIT_YAML_BYTES bytes and "
                                  "NAS_LIMIT_YAML_DEPTH levels of nesting")


class ParsedSpec(BaseModel):
    spec: dict[str, Any]


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where present: C speed, same safe types
_LARGEST_INT = 2**63 - 1


def _check_yaml_shape(text: str, max_depth: int) -> None:
    """Refuse nesting past ``max_depth`` and aliases, reading events only as far as the first problem.

    An alias repeats a subtree (nested ones grow the JSON answer exponentially); deep nesting
    costs the parser time and the constructor its stack. Nothing is constructed here.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise _invalid(("body", "yaml"), "YAML anchors and aliases (*name) are not supported in a job spec")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > max_depth:
                raise _invalid(("body", "yaml"), f"YAML nested deeper than this server's limit of {max_depth} "
                                                 f"levels (NAS_LIMIT_YAML_DEPTH)")  # fmt: skip
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _unencodable(value: Any, path: tuple[str, ...] = ()) -> str | None:
    """Where ``value`` holds a number JSON cannot carry faithfully (NaN, infinity, past 64 bits), if anywhere."""
    if isinstance(value, dict):
        return next((found for k, v in value.items() if (found := _unencodable(v, (*path, str(k)))) is not None), None)
    if isinstance(value, list):
        return next((found for i, v in enumerate(value) if (found := _unencodable(v, (*path, str(i)))) is not None), None)
    if isinstance(value, float) and not math.isfinite(value) or isinstance(value, int) and abs(value) > _LARGEST_INT:
        return ".".join(path) or "the document"
    return None


@router.post("/specs/parse", response_model=ParsedSpec, responses=errors(413, 422))
def parse_yaml(body: YamlText, principal: PrincipalDep, settings: SettingsDep) -> ParsedSpec:
    """Parse a YAML job spec into JSON (safe loader only), for the dashboard's paste box.

    Its size and nesting are checked before anything is built (413 and 422 naming the limit).
    Nothing is validated beyond being a mapping of plain JSON values: the browser submits the
    result to ``POST /jobs``, whose 422 names the offending field.
    """
    size = len(body.yaml.encode())
    if size > settings.limit_yaml_bytes:
        raise HTTPException(413, f"the YAML is {size} bytes, over this server's limit of "
                                 f"{settings.limit_yaml_bytes} (NAS_LIMIT_YAML_BYTES)")  # fmt: skip
    try:
        _check_yaml_shape(body.yaml, settings.limit_yaml_depth)
        data = yaml.load(body.yaml, Loader=_SafeLoader)  # noqa: S506 (a safe loader)
    except RecursionError:
        raise _invalid(("body", "yaml"), "YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise _invalid(("body", "yaml"), f"not valid YAML{where}: {problem}") from None
    except (ValueError, OverflowError) as exc:  # a 5,000-digit integer, a date out of range
        raise _invalid(("body", "yaml"), f"a value YAML cannot convert: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise _invalid(("body", "yaml"), "a job spec is a mapping (name: ..., search_space: ..., dataset: ...)")
    bad = _unencodable(data)
    if bad is not None:
        raise _invalid(("body", "yaml"), f"{bad}: numbers must be finite and fit in 64 bits")
    return ParsedSpec(spec=data)


__all__ = ["JobOverview", "JobOverviewItem", "get_queries", "overviews", "router"]
