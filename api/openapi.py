"""The OpenAPI document as this server enforces it, and the ``Allow`` header of a 405.

The models state what holds on every server (plug-in names, metric names, formats); what depends
on the running server is added here, from its :class:`~nas.settings.Settings` (the limits a job
may ask for, stated once there) and its machine (the latency targets present).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from nas.settings import Settings

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _lower_maximum(schema: dict[str, Any], maximum: int) -> None:
    """``maximum`` on ``schema`` (or its non-null ``anyOf`` branch) where it is below the model's own bound."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") in ("integer", "number"):
            branch["maximum"] = min(branch.get("maximum", maximum), maximum)


def server_limits(document: dict[str, Any], settings: Settings) -> None:
    """Write the server's per-job limits (:mod:`api.limits`) into the JobSpec's component schemas."""
    schemas = document["components"]["schemas"]
    for budget in ("Budget", "BudgetRaise"):  # a spec's budget, and a raise of it (PATCH /jobs/{id})
        if budget in schemas:
            _lower_maximum(schemas[budget]["properties"]["max_trials"], settings.limit_trials_per_job)
    _lower_maximum(schemas["TrainingSpec"]["properties"]["epochs"], settings.limit_trial_epochs)
    _lower_maximum(schemas["Constraints"]["properties"]["max_params"], settings.limit_params)


def present_targets(document: dict[str, Any]) -> None:
    """The latency targets this machine has, as the enum of every ``target`` a request body takes; a job's
    may also name one of the caller's agent targets, which no document lists (``GET /targets`` does)."""
    from nas.timing.agent_targets import TARGET_PATTERN
    from nas.timing.targets import available_targets  # imports torch, as spec validation does anyway

    targets = available_targets()
    schemas = document["components"]["schemas"]
    schemas["PredictRequest"]["properties"]["target"]["enum"] = targets
    job_target = schemas["JobSpec"]["properties"]["target"]
    job_target.pop("type", None)
    job_target["anyOf"] = [
        {"enum": targets, "description": "the server's own"},
        {"type": "string", "pattern": TARGET_PATTERN, "description": "one of your agent targets (GET /targets)"},
    ]


def json_errors(document: dict[str, Any]) -> None:
    """Every error answers JSON (``{"detail": ...}``), also on a route whose success is text or a file:
    FastAPI documents a route's error responses in the media type of its success."""
    for operations in document["paths"].values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content")
                if code[0] in "45" and content and "application/json" not in content:
                    response["content"] = {"application/json": next(iter(content.values()))}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve the document with this server's limits and targets, built once on first request."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, openapi_version=app.openapi_version,
                description=app.description, routes=app.routes,
            )  # fmt: skip
            server_limits(document, settings)
            present_targets(document)
            json_errors(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(app: FastAPI, path: str) -> list[str] | None:
    """Every method the document gives the paths that ``path`` matches; None for a path it does not list.

    A 405's ``Allow`` must name them all: Starlette's names only those of the first route matching the path.
    """
    methods: set[str] = set()
    matched = False
    for template, operations in app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path):
            matched = True
            methods |= {method.upper() for method in operations if method in _METHODS}
    return sorted(methods) if matched else None
