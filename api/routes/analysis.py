"""Analysis of a job's trials: parameter importance (:mod:`nas.analysis`)."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request

from api.deps import PrincipalDep, StoreDep
from api.responses import errors
from nas import metrics as trial_metrics
from nas import registry
from nas.analysis import Evaluator, Importances, NotAnalysable, param_importances
from nas.specs import TrialState

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

router = APIRouter(tags=["analysis"])

CACHED_IMPORTANCES = 64
"""Importances kept per process, most recently asked first; a new complete trial makes a new key."""

_CacheKey = tuple[str, int, str, str]


def _cache(request: Request) -> OrderedDict[_CacheKey, Importances]:
    cache = getattr(request.app.state, "importance_cache", None)
    if cache is None:
        cache = request.app.state.importance_cache = OrderedDict()
    return cache


# The metrics importance can rank on: those with a direction.
DirectedMetric = enum.Enum(  # type: ignore[misc]
    "DirectedMetric", {m.name: m.name for m in trial_metrics.METRICS.values() if m.direction != "none"}, type=str
)


def _invalid(field: str, message: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["query", field], "msg": message, "type": "value_error"}])


@router.get("/jobs/{job_id}/importance", response_model=Importances, responses=errors(404, 422))
def importance(
    request: Request,
    job_id: str,
    store: StoreDep,
    principal: PrincipalDep,
    objective: Annotated[
        DirectedMetric | None, Query(description="a metric with a direction (default: the job's first objective)")
    ] = None,
    evaluator: Annotated[Evaluator, Query(description="Optuna's fANOVA, PED-ANOVA or mean decrease in impurity")] = "fanova",
) -> Importances:
    """How much each architecture dimension drives an objective, over the job's complete trials.

    A plain ``def`` route: FastAPI runs it in its thread pool, so the evaluator's second of work
    never blocks the event loop. The answer is kept per job, complete-trial count, objective and
    evaluator. 422 names why when the trials cannot answer (too few complete, nothing varies).
    """
    job = store.get_job(job_id, principal)  # 404 for another owner's job
    objectives = {o["metric"]: o["direction"] for o in job.spec["objectives"]}
    name = objective.value if objective is not None else next(iter(objectives))
    direction = objectives.get(name) or _direction(name)
    key = (job.id, job.n_complete, name, evaluator)
    cache = _cache(request)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    trials, _ = store.list_trials(job.id, principal, TrialState.complete)
    try:
        found = param_importances(trials, name, direction, _declared(job.spec), evaluator, seed=job.spec.get("seed", 0))
    except NotAnalysable as exc:
        raise _invalid("objective", str(exc)) from None
    cache[key] = found
    while len(cache) > CACHED_IMPORTANCES:
        cache.popitem(last=False)
    return found


def _direction(objective: str) -> Literal["maximize", "minimize"]:
    """The direction of a metric the job does not optimise (the query takes only :data:`DirectedMetric`)."""
    direction = trial_metrics.METRICS[objective].direction
    assert direction != "none"
    return direction


def _declared(spec: dict[str, Any]) -> dict[str, BaseDistribution] | None:
    """The dimensions the job's space declares, or ``None`` when it declares none or cannot be made now
    (a stored model deleted since): importances then infer every distribution from the trials."""
    try:
        space = registry.search_spaces.create(spec["search_space"]["name"], spec["search_space"]["params"])
        return space.dimensions()
    except (LookupError, ValueError, NotImplementedError):
        return None
