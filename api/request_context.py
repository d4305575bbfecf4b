"""Request ids: every request gets one, every log record made while serving it carries it.

The middleware takes a well-formed ``X-Request-ID`` from the caller (so a proxy's id carries
through) or makes one, returns it in the response header, writes one access-log line per request,
and answers an unhandled exception with a JSON 500 that quotes the id, so a user can report it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Health checks and scrapes arrive every few seconds; their access lines are logged at DEBUG.
_QUIET_PATHS = frozenset({"/healthz", "/metrics", "/api/v1/healthz", "/api/v1/readyz", "/api/v1/metrics"})

# The fields of the request being served; a dict shared by the threads that serve it, so that
# ``note_owner`` (called from a sync dependency in a worker thread) is seen by the middleware.
_context: ContextVar[dict[str, str] | None] = ContextVar("nas_request_context", default=None)
access_log = logging.getLogger("nas.access")
log = logging.getLogger(__name__)


def note_owner(owner: str) -> None:
    """Name the authenticated owner in the current request's log records."""
    fields = _context.get()
    if fields is not None:
        fields["owner"] = owner


def current_request_id() -> str | None:
    fields = _context.get()
    return fields["request_id"] if fields is not None else None


def install_log_record_factory() -> None:
    """Add ``request_id`` (and ``owner`` once known) to every record made while serving a request.

    A record factory rather than a handler filter, so that every handler (pytest's ``caplog``
    among them) sees the fields. Installing it again changes nothing.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "adds_request_context", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _context.get()
        if fields is not None:
            record.__dict__.update(fields)
        return record

    factory.adds_request_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class RequestContext:
    """ASGI middleware: the request id, the access log and JSON 500s; outermost in the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get(HEADER, "")
        request_id = offered if _VALID_ID.fullmatch(offered) else uuid.uuid4().hex
        fields = {"request_id": request_id}
        token = _context.set(fields)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise  # too late for an error response; the server closes the connection
            body = {"detail": "internal server error", "request_id": request_id}
            await JSONResponse(body, 500, headers={HEADER: request_id})(scope, receive, send)
        finally:
            duration_ms = round((time.perf_counter() - start) * 1000, 2)
            level = logging.DEBUG if scope["path"] in _QUIET_PATHS and status < 400 else logging.INFO
            access_log.log(
                level,
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status,
                duration_ms,
                extra={"method": scope["method"], "path": scope["path"], "status": status, "duration_ms": duration_ms},
            )
            _context.reset(token)
