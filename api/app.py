"""Builds the FastAPI application around a store; the server wires in the dispatcher."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import known_query_only
from api.metrics import metrics_registry
from api.metrics import router as metrics_router
from api.messages import shape
from api.openapi import allowed_methods, install_openapi
from api.ratelimit import FailureLimiter
from api.request_context import RequestContext, install_log_record_factory
from api.workpool import POOLS
from api.routes import agents, analysis, catalog, dashboard, dashboard_api, datasets, events, jobs, keys, models, targets, trials
from api.routes.latency import router as latency_router
from api.routes.latency import warm_up
from nas import __version__
from nas.errors import AmbiguousId, IllegalTransition, NotFound
from nas.settings import Settings
from nas.signing import ServerSecret
from nas.store import Store

API_PREFIX = "/api/v1"
_ECHO_CHARS = 1000  # of a string an error repeats
_ECHO_ITEMS = 100  # of a list or mapping


def encodable(value: Any) -> Any:
    """``value`` as JSON can always carry it: non-finite floats and huge integers as text, bytes decoded
    or summarised, strings without lone surrogates, long strings and collections cut short."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:_ECHO_CHARS].encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {str(encodable(k)): encodable(v) for k, v in list(value.items())[:_ECHO_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [encodable(v) for v in value[:_ECHO_ITEMS]]
    return encodable(str(value))


class BodySizeLimit:
    """413 (JSON ``detail``) for a request body over ``max_bytes``, declared or sent chunked.

    ``streamed`` names the routes (``(method, path)``) that stream their bodies to disk and count
    them as they arrive, with the most each may declare and the answer past it: their bodies are
    never buffered here.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, streamed: dict[tuple[str, str], tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed or {}

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        await JSONResponse({"detail": detail}, 413)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streamed = self.streamed.get((scope["method"], scope["path"].rstrip("/")))
        max_bytes, detail = streamed or (self.max_bytes, f"request body larger than {self.max_bytes} bytes")
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            # The HTTP server holds the client to the length it declared.
            if declared.strip().isdigit() and int(declared) > max_bytes:
                await self._reject(scope, receive, send, detail)
            else:
                await self.app(scope, receive, send)
            return
        if streamed is not None:  # the route counts what arrives
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read the body up to the limit, then hand it on.
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send, detail)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    yield
    for name in POOLS:  # the worker processes of expensive requests end with the app
        pool = getattr(app.state, name, None)
        if pool is not None:
            pool.shutdown()


def create_app(store: Store, settings: Settings) -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="sparse-nas",
        version=__version__,
        description="Neural architecture search for sparse neural networks.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        # Swagger UI loads its scripts from a CDN: off unless NAS_API_DOCS=1 asks for it.
        docs_url=f"{API_PREFIX}/docs" if settings.api_docs else None,
        redoc_url=None,
    )
    # Dataset and model uploads stream to disk: the route counts the file against NAS_LIMIT_UPLOAD_BYTES
    # (NAS_LIMIT_MODEL_BYTES).
    upload, model = settings.limit_upload_bytes, settings.limit_model_bytes
    streamed = {
        ("POST", f"{API_PREFIX}/datasets"): (upload + datasets.FORM_OVERHEAD_BYTES, datasets.too_large(upload)),
        ("POST", f"{API_PREFIX}/models"): (model + datasets.FORM_OVERHEAD_BYTES, models.too_large(model)),
    }
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, streamed=streamed)
    if settings.cors_origins:  # closed unless origins are named: no CORS headers at all
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Outermost, so that every answer (a 413 or CORS preflight too) carries a request id.
    app.add_middleware(RequestContext)
    install_log_record_factory()
    app.state.store = store
    app.state.settings = settings
    install_openapi(app, settings)
    app.state.metrics_registry = metrics_registry(store)
    app.state.auth_limiter = FailureLimiter(settings.auth_failures_per_minute)
    app.state.key_use_noted = {}  # key id -> when this process last stamped its last use (api.deps)
    assert settings.secret_file is not None  # Settings fills it in
    app.state.secret = ServerSecret(settings.secret_file)
    # Every API route refuses query parameters it does not take, as the OpenAPI document says.
    strict = [Depends(known_query_only)]
    for router in (jobs.router, trials.router, datasets.router, models.router, catalog.router, keys.router,
                   keys.whoami_router):
        app.include_router(router, prefix=API_PREFIX, dependencies=strict)
    for router in (dashboard_api.router, events.router, analysis.router, agents.router, targets.router):
        app.include_router(router, prefix=API_PREFIX, dependencies=strict)
    app.include_router(latency_router, prefix=API_PREFIX, dependencies=strict)
    app.include_router(dashboard.router)  # the web dashboard at /
    app.include_router(metrics_router, prefix=API_PREFIX)
    app.include_router(metrics_router, include_in_schema=False)  # Prometheus' default path

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Each error echoes its input; NaN, a huge integer or undecodable bytes must not turn
        # the 422 into a 500 while it is encoded.
        route = request.scope.get("route")
        body_field = getattr(route, "body_field", None)
        model = getattr(body_field.field_info, "annotation", None) if body_field is not None else None
        query = route.dependant.query_params if isinstance(route, APIRoute) else []
        forms = {p.alias: p.field_info.description for p in query if p.field_info.description}
        model = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        shaped = shape(exc.errors(), model, exc.body, forms)
        errors = [{k: encodable(v) for k, v in e.items()} for e in shaped]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(NotFound)
    def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(AmbiguousId)
    def _ambiguous(request: Request, exc: AmbiguousId) -> JSONResponse:
        where = next((name for name, value in request.path_params.items() if value == exc.prefix), None)
        error = {"type": "id_ambiguous", "loc": ["path", where] if where else ["path"], "msg": str(exc), "input": exc.prefix}
        return JSONResponse({"detail": [error]}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 for a body it cannot decode (bytes that are not UTF-8, JSON nested
        # past Python's recursion limit); such a body is invalid like malformed JSON, so 422.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            deep = isinstance(exc.__cause__, RecursionError)
            message = "JSON nested too deeply" if deep else "the body is not valid UTF-8 JSON"
            error = {"type": "json_invalid", "loc": ["body"], "msg": message, "input": None}
            return JSONResponse({"detail": [error]}, status.HTTP_422_UNPROCESSABLE_CONTENT)
        allow = allowed_methods(request.app, request.url.path) if exc.status_code == 405 else None
        if allow:  # every method the path takes, not only the first matching route's
            return JSONResponse({"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(allow)})
        return await http_exception_handler(request, exc)

    @app.exception_handler(IllegalTransition)
    def _conflict(request: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

    return app
