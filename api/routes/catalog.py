"""The catalog, generated from the registries; liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.responses import errors
from nas import __version__, registry
from nas.latency import describe_targets
from nas.metrics import METRICS
from nas.specs import JobSpec

router = APIRouter(tags=["catalog"])


@router.get("/catalog", responses=errors())
def catalog(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "search_spaces": registry.search_spaces.describe(),
        "strategies": registry.strategies.describe(),
        "sparsifiers": registry.sparsifiers.describe(),
        "datasets": registry.datasets.describe(),
        "early_stopping": registry.early_stopping.describe(),
        "targets": describe_targets(),
        "metrics": [metric.model_dump() for metric in METRICS.values()],
        "job_spec_schema": JobSpec.model_json_schema(),
    }


@router.get("/healthz", tags=["health"])
async def healthz(store: StoreDep) -> dict[str, str]:
    with store.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}


class Readiness(BaseModel):
    """Whether a job submitted here will run, and if not, what is missing."""

    ready: bool
    database: bool
    dispatcher: bool  # this server's dispatcher (or, for an API without one, any) beat recently
    ray: bool  # and that dispatcher's Ray cluster answered then


@router.get(
    "/readyz", tags=["health"], responses={503: {"model": Readiness, "description": "not ready: see which part is down"}}
)
def readyz(store: StoreDep, settings: SettingsDep, response: Response) -> Readiness:
    """Readiness: 200 when jobs run, 503 when not. ``nas serve`` follows its own dispatcher; an API
    started without one (``--max-jobs 0``) is ready while any dispatcher with a live Ray serves its
    database. The dispatchers' heartbeats in the database tell, so no API process talks to Ray."""
    try:
        live = store.live_dispatchers()
    except SQLAlchemyError:
        live, database = {}, False
    else:
        database = True
    if settings.dispatcher_id is not None:
        live = {k: v for k, v in live.items() if k == settings.dispatcher_id}
    answer = Readiness(ready=any(live.values()), database=database, dispatcher=bool(live), ray=any(live.values()))
    if not answer.ready:
        response.status_code = 503
    return answer
