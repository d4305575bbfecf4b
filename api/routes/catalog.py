"""The catalog, generated from the registries, and liveness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import PrincipalDep, StoreDep
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
